"""The public checkpoints the shipped recipes name, with where each comes from.

Every entry is the publisher's own file: torchvision's ``download.pytorch.org/models``,
OpenMMLab's ``download.openmmlab.com`` (mmdetection/mmsegmentation metafiles, mmcv's
``open-mmlab://`` and ``mmcls://`` tables), mdistiller's GitHub release and DeiT's
``dl.fbaipublicfiles.com``. ``paths`` are where the recipes expect the file (relative to the
folder ``kdforge train`` runs in); :func:`kdforge.weights.recipes.recipe_weights` finds which
recipes use each. The hash is the one the publisher put in the file name (the first hex
digits of its sha256, as ``torch.hub`` checks); mdistiller's tar carries none.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from kdforge.errors import ConfigError

__all__ = ["CATALOGUE", "CONVERSIONS", "EXCLUDED", "Entry", "entry_for_path", "get_entries"]

# how a downloaded file becomes the files of `paths`: kept as is, converted by
# `kdforge convert KIND` (kdforge.commands.convert.CONVERTERS), or unpacked
CONVERSIONS = ("none", "mmdet", "mmseg", "timm", "untar")
_HASH = re.compile(r"-([0-9a-f]{8,})\.[a-z]+$")  # torch.hub's rule: name-<sha256 prefix>.ext


@dataclass(frozen=True)
class Entry:
    """One downloadable checkpoint.

    Attributes:
        name: what ``kdforge weights fetch`` takes.
        url: the publisher's URL.
        convert: one of :data:`CONVERSIONS`.
        paths: the files the recipes expect, relative to the working folder.
        model: the zoo model(s) whose weights the file holds (``backbone of ...`` for a
            ``backbone_pretrained`` initialisation).
        source: where the URL is published.
        size_mb: the publisher's stated size, where it states one.
    """

    name: str
    url: str
    convert: str
    paths: tuple[str, ...]
    model: str
    source: str
    size_mb: float | None = None

    @property
    def filename(self) -> str:
        """The publisher's file name (the last part of the URL)."""
        return PurePosixPath(self.url).name

    @property
    def sha256(self) -> str | None:
        """The sha256 prefix in the publisher's file name, or None where it has none."""
        match = _HASH.search(self.filename)
        return match.group(1) if match else None

    @property
    def download_path(self) -> str:
        """Where the publisher's file is saved: the recipes' path itself when it is used as
        is, else ``download_ckpts/<its name>`` (kept, so a conversion can be redone)."""
        return self.paths[0] if self.convert == "none" else f"download_ckpts/{self.filename}"


_TV = "https://download.pytorch.org/models/"
_TV_OLD = "torchvision's model_urls before 0.10 (IMAGENET1K_V1 weights)"
_MMCV = "https://download.openmmlab.com/pretrain/third_party/"
_MMDET = "https://download.openmmlab.com/mmdetection/v2.0/"
_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/"
_CIFAR = [
    ("resnet56", "resnet56_vanilla"),
    ("resnet110", "resnet110_vanilla"),
    ("resnet32x4", "resnet32x4_vanilla"),
    ("ResNet50", "ResNet50_vanilla"),
    ("wrn_40_2", "wrn_40_2_vanilla"),
    ("vgg13", "vgg13_vanilla"),
]


def _tv(name: str, file: str) -> Entry:
    return Entry(name, _TV + file, "none", (f"download_ckpts/imagenet/{file}",), name, _TV_OLD)


def _mmdet(name: str, url: str, model: str, *paths: str) -> Entry:
    source = f"mmdetection configs/{url.split('/')[0]}/metafile.yml ({name})"
    return Entry(name, _MMDET + url, "mmdet", paths, model, source)


def _mmseg(name: str, url: str, model: str, path: str) -> Entry:
    source = f"mmsegmentation configs/{url.split('/')[0]}/metafile.yaml ({name})"
    return Entry(name, _MMSEG + url, "mmseg", (path,), model, source)


CATALOGUE: tuple[Entry, ...] = (
    # --- classification teachers and ImageNet backbones -----------------------------------
    Entry(
        "cifar_teachers",
        "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/"
        "cifar_teachers.tar",
        "untar",
        tuple(f"download_ckpts/cifar_teachers/{d}/ckpt_epoch_240.pth" for _, d in _CIFAR),
        ", ".join(m for m, _ in _CIFAR),
        "mdistiller README (release 'checkpoints'; untar in download_ckpts)",
    ),
    _tv("resnet18", "resnet18-5c106cde.pth"),
    _tv("resnet34", "resnet34-333f7ec4.pth"),
    _tv("resnet50", "resnet50-19c8e357.pth"),
    _tv("resnet101", "resnet101-5d3b4d8f.pth"),
    Entry(
        "swin_tiny_patch4_window7_224",
        "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
        "swin_tiny_patch4_window7_224.pth",
        "none",
        ("download_ckpts/imagenet/swin_tiny_patch4_window7_224.pth",),
        "backbone of retinanet_swin_t_fpn",
        "mmdetection configs/swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py (official release)",
    ),
    Entry(
        "vit_b_16",
        _TV + "vit_b_16-c867db91.pth",
        "none",
        ("download_ckpts/vit_b_16-c867db91.pth",),
        "vit_b_16",
        "torchvision ViT_B_16_Weights.IMAGENET1K_V1",
        size_mb=330.285,  # its _file_size
    ),
    Entry(
        "deit_tiny_patch16_224",
        "https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth",
        "timm",
        ("download_ckpts/vit_ti_16.pth",),
        "vit_ti_16",
        "DeiT models.py (the recipe's suggested ViT-Ti/16; no torchvision-layout file exists)",
    ),
    Entry(
        "resnet50_caffe",
        _MMCV + "resnet50_caffe-788b5fa3.pth",
        "none",
        ("download_ckpts/imagenet/resnet50_caffe-788b5fa3.pth",),
        "backbone of *_r50_fpn (style=caffe)",
        "mmcv model_zoo/open_mmlab.json: open-mmlab://detectron/resnet50_caffe",
    ),
    Entry(
        "resnet101_caffe",
        _MMCV + "resnet101_caffe-3ad79236.pth",
        "none",
        ("download_ckpts/imagenet/resnet101_caffe-3ad79236.pth",),
        "backbone of *_r101_fpn (style=caffe)",
        "mmcv model_zoo/open_mmlab.json: open-mmlab://detectron/resnet101_caffe",
    ),
    Entry(
        "resnext101_32x4d",
        _MMCV + "resnext101_32x4d-a5af3160.pth",
        "none",
        ("download_ckpts/imagenet/resnext101_32x4d-a5af3160.pth",),
        "backbone of reppoints_moment_x101_32x4d_dcn_fpn_gn",
        "mmcv model_zoo/open_mmlab.json: open-mmlab://resnext101_32x4d",
    ),
    Entry(
        "resnext101_64x4d",
        _MMCV + "resnext101_64x4d-ee2c6f71.pth",
        "none",
        ("download_ckpts/imagenet/resnext101_64x4d-ee2c6f71.pth",),
        "backbone of cascade_mask_rcnn_x101_64x4d_fpn",
        "mmcv model_zoo/open_mmlab.json: open-mmlab://resnext101_64x4d",
    ),
    Entry(
        "resnet18_v1c",
        _MMCV + "resnet18_v1c-b5776b93.pth",
        "none",
        ("checkpoints/imagenet/resnet18_v1c-b5776b93.pth",),
        "backbone of pspnet_r18, deeplabv3_r18",
        "mmcv model_zoo/open_mmlab.json: open-mmlab://resnet18_v1c",
    ),
    Entry(
        "resnet101_v1c",
        _MMCV + "resnet101_v1c-e67eebb6.pth",
        "none",
        ("checkpoints/imagenet/resnet101_v1c-e67eebb6.pth",),
        "backbone of pspnet_r101, deeplabv3_r101",
        "mmcv model_zoo/open_mmlab.json: open-mmlab://resnet101_v1c",
    ),
    Entry(
        "mobilenet_v2_mmcls",
        "https://download.openmmlab.com/mmclassification/v0/mobilenet_v2/"
        "mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth",
        "none",
        ("checkpoints/imagenet/mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth",),
        "backbone of pspnet_mobilenetv2, deeplabv3_mobilenetv2",
        "mmcv model_zoo/mmcls.json: mmcls://mobilenet_v2",
    ),
    # --- COCO detectors (mmdetection 3.x config names; the files keep their 2.x names) ----
    _mmdet(
        "retinanet_r50_fpn_1x_coco",
        "retinanet/retinanet_r50_fpn_1x_coco/retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth",
        "retinanet_r50_fpn",
        "checkpoints/coco/retinanet_r50_fpn_1x_coco.safetensors",
    ),
    _mmdet(
        "retinanet_r101_fpn_2x_coco",
        "retinanet/retinanet_r101_fpn_2x_coco/retinanet_r101_fpn_2x_coco_20200131-5560aee8.pth",
        "retinanet_r101_fpn",
        "checkpoints/coco/retinanet_r101_fpn_2x_coco.safetensors",
        "checkpoints/coco/retinanet_r101_fpn_2x.safetensors",
    ),
    _mmdet(
        "retinanet_x101-64x4d_fpn_1x_coco",
        "retinanet/retinanet_x101_64x4d_fpn_1x_coco/"
        "retinanet_x101_64x4d_fpn_1x_coco_20200130-366f5af1.pth",
        "retinanet_x101_64x4d_fpn",
        "checkpoints/coco/retinanet_x101_64x4d_fpn_1x.safetensors",
    ),
    _mmdet(
        "reppoints-moment_x101-dconv-c3-c5_fpn-gn_head-gn_2x_coco",
        "reppoints/reppoints_moment_x101_fpn_dconv_c3-c5_gn-neck%2Bhead_2x_coco/"
        "reppoints_moment_x101_fpn_dconv_c3-c5_gn-neck%2Bhead_2x_coco_20200329-f87da1ea.pth",
        "reppoints_moment_x101_32x4d_dcn_fpn_gn",
        "checkpoints/coco/reppoints_moment_x101_32x4d_dcn_fpn_gn_2x.safetensors",
    ),
    _mmdet(
        "fcos_r101-caffe_fpn_gn-head_ms-640-800-2x_coco",
        "fcos/fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco/"
        "fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco-511424d6.pth",
        "fcos_r101_fpn",
        "checkpoints/coco/fcos_r101-caffe_fpn_gn-head_ms-640-800-2x_coco.safetensors",
        "checkpoints/coco/fcos_r101_fpn_ms-2x.safetensors",
    ),
    _mmdet(
        "fcos_x101-64x4d_fpn_gn-head_ms-640-800-2x_coco",
        "fcos/fcos_x101_64x4d_fpn_gn-head_mstrain_640-800_2x_coco/"
        "fcos_x101_64x4d_fpn_gn-head_mstrain_640-800_2x_coco-ede514a8.pth",
        "fcos_x101_64x4d_fpn",
        "checkpoints/coco/fcos_x101_64x4d_fpn_ms-2x.safetensors",
    ),
    _mmdet(
        "atss_r101_fpn_1x_coco",
        "atss/atss_r101_fpn_1x_coco/atss_r101_fpn_1x_20200825-dfcadd6f.pth",
        "atss_r101_fpn",
        "checkpoints/coco/atss_r101_fpn_1x_coco.safetensors",
    ),
    _mmdet(
        "gfl_r50_fpn_1x_coco",
        "gfl/gfl_r50_fpn_1x_coco/gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth",
        "gfl_r50_fpn",
        "checkpoints/coco/gfl_r50_fpn_1x_coco.safetensors",
    ),
    _mmdet(
        "gfl_r101_fpn_ms-2x_coco",
        "gfl/gfl_r101_fpn_mstrain_2x_coco/gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth",
        "gfl_r101_fpn",
        "checkpoints/coco/gfl_r101_fpn_ms-2x_coco.safetensors",
        "checkpoints/coco/gfl_r101_fpn_ms-2x.safetensors",
    ),
    _mmdet(
        "faster-rcnn_r101_fpn_2x_coco",
        "faster_rcnn/faster_rcnn_r101_fpn_2x_coco/"
        "faster_rcnn_r101_fpn_2x_coco_bbox_mAP-0.398_20200504_210455-1d2dac9c.pth",
        "faster_rcnn_r101_fpn",
        "checkpoints/coco/faster_rcnn_r101_fpn_2x.safetensors",
    ),
    _mmdet(
        "cascade_mask_rcnn_x101_64x4d_fpn_20e_coco",
        "cascade_rcnn/cascade_mask_rcnn_x101_64x4d_fpn_20e_coco/"
        "cascade_mask_rcnn_x101_64x4d_fpn_20e_coco_20200512_161033-bdb5126a.pth",
        "cascade_mask_rcnn_x101_64x4d_fpn",
        "checkpoints/coco/cascade_mask_rcnn_x101_64x4d_fpn_20e.safetensors",
    ),
    # --- Cityscapes segmenters (mmsegmentation 1.x config names) ---------------------------
    _mmseg(
        "pspnet_r101-d8_4xb2-80k_cityscapes-512x1024",
        "pspnet/pspnet_r101-d8_512x1024_80k_cityscapes/"
        "pspnet_r101-d8_512x1024_80k_cityscapes_20200606_112211-e1e1100f.pth",
        "pspnet_r101",
        "checkpoints/cityscapes/pspnet_r101-d8_4xb2-80k_512x1024.safetensors",
    ),
    _mmseg(
        "deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024",
        "deeplabv3/deeplabv3_r101-d8_512x1024_80k_cityscapes/"
        "deeplabv3_r101-d8_512x1024_80k_cityscapes_20200606_113503-9e428899.pth",
        "deeplabv3_r101",
        "checkpoints/cityscapes/deeplabv3_r101-d8_4xb2-80k_512x1024.safetensors",
    ),
)

# Paths a recipe may name that no publisher provides (weights the user trains or converts
# themselves): path -> what to do instead.
EXCLUDED: dict[str, str] = {
    "checkpoints/coco/retinanet_swin-t-p4-w7_fpn_1x_coco.safetensors": (
        "CrossKD's Swin-T teacher is on Google Drive (CrossKD README), which gives no stable "
        "file URL: download it by hand, then `kdforge convert mmdet <its .pth>` to this path"
    ),
    "checkpoints/objects365v2/retinanet_r101_fpn_1x.safetensors": (
        "neither CanKD nor mmdetection publishes this teacher: train the recipe "
        "objects365v2/retinanet/retinanet_r101_fpn_1x, then `kdforge export` its run here"
    ),
    "checkpoints/coco/dino_4scale_r101_12e.safetensors": (
        "neither CanKD nor mmdetection publishes a DINO R-101: train the recipe "
        "coco/dino/dino-4scale_r101_8xb2-12e_coco, then `kdforge export` its run here"
    ),
    "checkpoints/coco/grounding_dino_r101_1x.safetensors": (
        "neither CanKD nor mmdetection publishes a Grounding DINO R-101: train the recipe "
        "coco/grounding_dino/grounding_dino_r101_scratch_1x_coco, then `kdforge export` its run "
        "here"
    ),
    "download_ckpts/bert-base-uncased": (
        "a folder, not one file: with `pip install kdforge[grounding]` and hub access, save "
        "bert-base-uncased there as mmdetection's grounding_dino README does (BertConfig, "
        "BertModel with add_pooling_layer=False and AutoTokenizer, each from_pretrained"
        "('bert-base-uncased') then save_pretrained(<this path>))"
    ),
}


def get_entries(names: list[str]) -> list[Entry]:
    """The entries called ``names``, in that order.

    Raises:
        ConfigError: an unknown name, with the close matches.
    """
    by_name = {e.name: e for e in CATALOGUE}
    for name in names:
        if name not in by_name:
            close = difflib.get_close_matches(name, by_name, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(
                f"no weights called {name!r}; {hint}(`kdforge weights` lists the names)"
            )
    return [by_name[name] for name in dict.fromkeys(names)]


def entry_for_path(path: str) -> Entry | None:
    """The entry that provides ``path`` (as a recipe names it), or None."""
    key = PurePosixPath(path).as_posix()
    return next((e for e in CATALOGUE if key in e.paths), None)

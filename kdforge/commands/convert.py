"""``kdforge convert``: an OpenMMLab checkpoint mapped onto a kdforge model, in a file that
names the model (``kdforge.load_model(DST)`` rebuilds it)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from kdforge.commands._args import keyword_value
from kdforge.errors import ConfigError

__all__ = ["CONVERTERS", "convert"]

HELP = "convert an OpenMMLab or timm checkpoint to a kdforge model file"
DESCRIPTION = (
    "Map an mmdetection (RetinaNet/FCOS/ATSS/GFL, ResNet/ResNeXt FPN) or mmsegmentation "
    "(PSPNet/DeepLabV3 -d8) checkpoint onto the kdforge model. The model and its keywords "
    "come from the weights and from the config name the file name carries (e.g. "
    "fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco_20200603-67b3859f.pth: "
    "caffe style, norm_on_bbox, centerness_on_reg, ...); settings that neither gives are "
    "refused, not guessed: pass them with --kwarg or name the config with --config. The "
    "output stores the model name and keywords: kdforge.load_model(DST) rebuilds it. "
    "Unmatched keys are listed and nothing is written. `kdforge convert timm` maps a timm "
    "ViT-Ti/S/B patch-16 224 checkpoint (DeiT's too) onto the zoo's vit_{ti,s,b}_16."
)

# kind -> "module:function" with convert_mmdet's signature, returning a Conversion
CONVERTERS = {
    "mmdet": "kdforge.models.detection.convert:convert_mmdet",
    "mmseg": "kdforge.models.segmentation.convert:convert_mmseg",
    "timm": "kdforge.models.vit.convert:convert_timm",
}


def convert(
    kind: str,
    src: str | Path,
    dst: str | Path,
    *,
    config: str | None = None,
    model: str | None = None,
    **overrides: Any,
) -> Path:
    """Convert the OpenMMLab (or timm) checkpoint ``src`` and write it to ``dst``, naming its
    model.

    Args:
        kind: ``"mmdet"``, ``"mmseg"`` or ``"timm"``.
        src: the OpenMMLab ``.pth`` checkpoint (timm: ``.pth``/``.bin``/``.safetensors``).
        dst: ``.safetensors`` (model name and keywords in its metadata) or ``.pth``.
        config: the OpenMMLab config name the checkpoint was trained with, when the file
            name of ``src`` is not it.
        model: a registered model name instead of the one the weights describe.
        **overrides: builder keywords that win over those of the weights and the name
            (``norm_on_bbox=True``, ``style="caffe"`` ...).

    Returns:
        The written path; ``kdforge.load_model(path)`` rebuilds the model with its weights.

    Raises:
        CheckpointError: settings that cannot be read (the message names them), or a
            checkpoint that does not fit the model.
    """
    from kdforge.engine.export import output_path
    from kdforge.models.loading import model_metadata, save_weights

    if kind not in CONVERTERS:
        raise ConfigError(f"unknown converter {kind!r}; known: {', '.join(sorted(CONVERTERS))}")
    out = output_path(dst, "DST")
    module, function = CONVERTERS[kind].split(":")
    result = getattr(importlib.import_module(module), function)(
        src, config=config, model=model, **overrides
    )
    kwargs = dict(result.kwargs)
    num_classes = kwargs.pop("num_classes", None)
    print(f"{kind} checkpoint {src} -> {result.name}")
    for source in ("weights", "file name", "option"):
        chosen = {k: v for k, v in result.kwargs.items() if result.origin[k] == source}
        if chosen:
            print(f"  from the {source}: " + ", ".join(f"{k}={v!r}" for k, v in chosen.items()))
    metadata = model_metadata(result.name, num_classes, kwargs, converted_from=kind)
    save_weights(result.state, out, metadata)
    print(f"wrote {out} ({len(result.state)} tensors); kdforge.load_model({str(out)!r})")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(CONVERTERS), help="which library wrote SRC")
    parser.add_argument("src", help="the OpenMMLab .pth (or timm ViT) checkpoint")
    parser.add_argument("dst", help="output file (.safetensors, or .pth for torch.save)")
    parser.add_argument(
        "--config",
        help="the OpenMMLab config name the checkpoint was trained with, when its file "
        "name is not it (e.g. fcos_r50-caffe_fpn_gn-head_1x_coco)",
    )
    parser.add_argument("--model", help="a registered model name instead of the detected one")
    parser.add_argument(
        "--kwarg",
        nargs="+",
        action="extend",
        type=keyword_value,
        default=[],
        metavar="KEY=VALUE",
        help="builder keywords, winning over the weights and the name (norm_on_bbox=true "
        "style=caffe ...)",
    )


def run(args: argparse.Namespace) -> None:
    overrides = dict(args.kwarg)
    convert(args.kind, args.src, args.dst, config=args.config, model=args.model, **overrides)

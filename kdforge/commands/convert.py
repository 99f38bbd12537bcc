"""``kdforge convert``: an OpenMMLab checkpoint mapped onto kdforge's parameter names."""

from __future__ import annotations

import argparse

HELP = "convert an OpenMMLab checkpoint to kdforge's keys"
DESCRIPTION = (
    "Map an mmdetection (RetinaNet/FCOS/ATSS/GFL, ResNet/ResNeXt FPN) or mmsegmentation "
    "(PSPNet/DeepLabV3) checkpoint onto the kdforge model; unmatched keys are listed and "
    "nothing is written."
)

CONVERTERS = {
    "mmdet": "kdforge.models.detection.convert:convert_mmdet_checkpoint",
    "mmseg": "kdforge.models.segmentation.convert:convert_mmseg_checkpoint",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(CONVERTERS), help="which OpenMMLab project")
    parser.add_argument("src", help="the OpenMMLab .pth checkpoint")
    parser.add_argument("dst", help="output file (.safetensors, or .pth for torch.save)")


def run(args: argparse.Namespace) -> None:
    import importlib

    import torch
    from safetensors.torch import save_file

    from kdforge.engine.export import output_path

    module, function = CONVERTERS[args.kind].split(":")
    state = getattr(importlib.import_module(module), function)(args.src)
    out = output_path(args.dst, "DST")
    if out.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    else:
        torch.save(state, out)
    print(f"wrote {out} ({len(state)} tensors); load it with create_model(name, pretrained=...)")

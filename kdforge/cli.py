"""The ``kdforge`` command: train, eval, export, probe, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

EXAMPLES = """examples:
  kdforge train configs/cifar100/kd/resnet32x4_resnet8x4.yaml --set data.root=~/data
  torchrun --nproc_per_node 4 -m kdforge train RECIPE.yaml
  kdforge train --resume runs/resnet32x4_resnet8x4-20261121-101500
  kdforge eval RECIPE.yaml --checkpoint runs/.../best.pt
  kdforge export runs/... --out student.safetensors
  kdforge export runs/... --out student.onnx --format onnx
  kdforge probe --teacher resnet32x4 --student resnet8x4
  kdforge visualize features RECIPE.yaml --checkpoint runs/.../best.pt --images a.png
  kdforge confusion-matrix RECIPE.yaml --checkpoint runs/.../best.pt
  kdforge robustness RECIPE.yaml --checkpoint runs/.../best.pt --max-batches 5
  kdforge compare runs/baseline runs/kd
  kdforge demo
  kdforge demo --task detection
  kdforge demo --task segmentation
"""


CONVERTERS = {
    "mmdet": "kdforge.models.detection.convert:convert_mmdet_checkpoint",
    "mmseg": "kdforge.models.segmentation.convert:convert_mmseg_checkpoint",
}

VISUALIZE_HELP = {
    "cam": "class activation maps of teacher and student for the top classes (CAT-KD)",
    "attention": "the ViT teacher's and the student projector's attention maps (CAKD)",
    "features": "teacher and student feature maps at chosen layers and their difference "
    "(per-position L2 norm over channels, or mean |x|; min-max normalised)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdforge",
        description="Knowledge distillation in plain PyTorch.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a student (alone or distilled) from a recipe",
        description="Train from a YAML recipe; each epoch writes last.pt/best.pt, "
        "a JSONL log and TensorBoard events to the run folder.",
    )
    p.add_argument("config", nargs="?", help="recipe YAML (optional with --resume)")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override recipe keys, e.g. --set optim.lr=0.1 data.root=~/data",
    )
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last.pt with its saved config"
    )

    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on the validation set",
        description="The student's (or teacher's) validation metrics: top-1/top-5, COCO box AP "
        "or mIoU, by the recipe's task.",
    )
    p.add_argument("config", help="recipe YAML")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a kdforge run checkpoint (.pt), an export (.safetensors) or any "
        "weights file the model loads",
    )
    p.add_argument(
        "--model",
        choices=["student", "teacher"],
        default="student",
        help="which model of the recipe to build (default student)",
    )
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")

    p = sub.add_parser(
        "export",
        help="write the student of a run as .safetensors or ONNX",
        description="Student weights only (connectors dropped); load them with "
        "kdforge.create_model(name, pretrained=OUT). --format onnx writes the graph of a "
        "classification or segmentation student (dynamic batch) and checks it against "
        "PyTorch with onnxruntime (pip install 'kdforge[onnx]').",
    )
    p.add_argument("run_dir", help="run folder (or a checkpoint file)")
    p.add_argument("--out", required=True, help="output .safetensors or .onnx path")
    p.add_argument("--which", choices=["best", "last"], default="best")
    p.add_argument(
        "--format",
        choices=["safetensors", "onnx"],
        help="default: onnx for an --out ending in .onnx, else safetensors",
    )
    p.add_argument(
        "--input-size",
        nargs=3,
        type=int,
        metavar=("C", "H", "W"),
        help="ONNX input size (default: the model's own, e.g. 3 32 32 for CIFAR)",
    )

    p = sub.add_parser(
        "probe",
        help="list module paths and output shapes to pick taps",
        description="Print every module path of teacher and student with its "
        "output shape, from a recipe or from zoo names.",
    )
    p.add_argument("config", nargs="?", help="recipe YAML (or use --teacher/--student)")
    p.add_argument("--teacher", help="zoo model name")
    p.add_argument("--student", help="zoo model name")
    p.add_argument(
        "--input-size",
        nargs=3,
        type=int,
        metavar=("C", "H", "W"),
        help="input size (default: the model's own, e.g. 3 32 32 for CIFAR)",
    )

    p = sub.add_parser(
        "convert",
        help="convert an OpenMMLab checkpoint to kdforge's keys",
        description="Map an mmdetection (RetinaNet/FCOS/ATSS/GFL, ResNet/ResNeXt FPN) or "
        "mmsegmentation (PSPNet/DeepLabV3) checkpoint onto the kdforge model; unmatched keys "
        "are listed and nothing is written.",
    )
    p.add_argument("kind", choices=sorted(CONVERTERS), help="which OpenMMLab project")
    p.add_argument("src", help="the OpenMMLab .pth checkpoint")
    p.add_argument("dst", help="output file (.safetensors, or .pth for torch.save)")

    p = sub.add_parser(
        "cityscapes-trainids",
        help="write Cityscapes *_labelTrainIds.png from *_labelIds.png",
        description="The 34 Cityscapes label ids to the 19 training ids (255 = ignored), as "
        "cityscapesScripts' createTrainIdLabelImgs does.",
    )
    p.add_argument("root", help="the Cityscapes folder (holding gtFine/)")
    p.add_argument("--overwrite", action="store_true", help="replace existing train-id files")

    p = sub.add_parser(
        "visualize",
        help="draw what a model attends to as PNGs",
        description="Pictures of teacher and student side by side, per image.",
    )
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    for name, text in VISUALIZE_HELP.items():
        v = what.add_parser(name, help=text, description=text)
        v.add_argument("config", help="recipe YAML (teacher and student)")
        v.add_argument("--checkpoint", help="student weights: run checkpoint or export")
        v.add_argument("--images", nargs="+", required=True, help="image files to draw")
        v.add_argument("--out", default="visualize", help="output folder for the PNGs")
        v.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
        if name != "features":
            v.add_argument("--top-k", type=int, default=3, help="classes (or heads) per image")
            continue
        v.add_argument(
            "--layers",
            nargs="+",
            metavar="PATH",
            help="module paths, one row each: PATH (both models) or TEACHER_PATH,STUDENT_PATH "
            "(default: a detector's FPN levels, else each model's last stage)",
        )
        v.add_argument("--reduce", choices=["l2", "abs_mean"], default="l2", help="over channels")

    p = sub.add_parser(
        "confusion-matrix",
        help="the confusion matrix on the validation set (PNG and CSV)",
        description="Rows true class, columns predicted: images (classification), labelled "
        "pixels (segmentation), or boxes by mmdetection's rules (detection: score >= 0.3, "
        "IoU >= 0.5, plus a background row and column). The PNG is normalised per row.",
    )
    p.add_argument("config", help="recipe YAML")
    p.add_argument("--checkpoint", help="weights of --model: run checkpoint or export")
    p.add_argument("--model", choices=["student", "teacher"], default="student")
    p.add_argument("--out", default="confusion", help="output folder")
    p.add_argument("--top-k", type=int, default=10, help="most confused pairs to list")
    p.add_argument("--score-thr", type=float, default=0.3, help="detection score threshold")
    p.add_argument("--iou-thr", type=float, default=0.5, help="detection IoU to match")
    p.add_argument("--max-batches", type=int, help="only the first batches (quick checks)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")

    p = sub.add_parser(
        "robustness",
        help="the metric under 15 corruptions x 5 severities (ImageNet-C / COCO-C)",
        description="Evaluate on the validation set corrupted on the fly (deterministic per "
        "seed and image) and report each corruption and severity, mPC (their mean) and rPC "
        "(mPC / clean) as a table, CSV and PNG.",
    )
    p.add_argument("config", help="recipe YAML")
    p.add_argument("--checkpoint", help="weights of --model: run checkpoint or export")
    p.add_argument("--model", choices=["student", "teacher"], default="student")
    p.add_argument("--out", default="robustness", help="output folder")
    p.add_argument("--corruptions", nargs="+", metavar="NAME", help="a subset (default all 15)")
    p.add_argument(
        "--severities", nargs="+", type=int, metavar="S", help="a subset of 1..5 (default all)"
    )
    p.add_argument("--max-batches", type=int, help="only the first batches of each evaluation")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")

    p = sub.add_parser(
        "compare",
        help="compare runs (e.g. baseline vs distilled): a table and a PNG of curves",
        description="Read each run folder's config.yaml and log.jsonl; print the final and "
        "best validation metric of each and draw the validation and training-loss curves.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--out", default="compare", help="output folder (compare.csv, compare.png)")

    p = sub.add_parser(
        "demo",
        help="a small real distillation on CPU (digits data set)",
        description="Train a teacher, a student alone and a KD student on "
        "scikit-learn's handwritten digits; print a table and draw the curves. With --task "
        "detection: train a small GFL detector on generated shapes and report its COCO AP; with "
        "--task segmentation: a PSPNet on generated shapes, its mIoU.",
    )
    p.add_argument(
        "--task", choices=("classification", "detection", "segmentation"), default="classification"
    )
    p.add_argument(
        "--out", default=None, help="folder for the results (runs/demo, runs/demo_<task>)"
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default: demo's)")
    p.add_argument("--seed", type=int, default=0)

    from kdforge.bench import add_arguments as bench_arguments  # torch is imported already

    p = sub.add_parser(
        "bench",
        help="time a training step of each method and teacher option",
        description="Speed and peak memory of a training step per method and teacher "
        "option; prints one table and writes benchmarks/results.json.",
    )
    bench_arguments(p)

    p = sub.add_parser(
        "cache-teacher",
        help="store a recipe's teacher outputs per sample and epoch (train with teacher.cache)",
        description="Run the teacher over N augmented epochs of the training set and store "
        "the augmentation parameters and the outputs the loss terms need (see kdforge.cache); "
        "--check compares a stored cache against the live teacher.",
    )
    p.add_argument("config", help="recipe YAML")
    p.add_argument("--epochs", type=int, default=None, help="epochs to store (default: all)")
    p.add_argument("--out", default=None, help="cache folder (default: runs/<recipe>-cache)")
    p.add_argument("--topk", type=int, default=None, help="logits kept (default: min(K, 100))")
    p.add_argument("--check", action="store_true", help="check --out against the live teacher")
    p.add_argument("--samples", type=int, default=32, help="samples --check recomputes")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    return parser


def _train(args: argparse.Namespace) -> None:
    from kdforge.config import ConfigError, load_config
    from kdforge.engine.build import build_trainer
    from kdforge.engine.distributed import cleanup_distributed

    if args.resume:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; not a kdforge run")
        if args.config:
            print(f"--resume: using {saved}; {args.config} is ignored", file=sys.stderr)
        cfg = load_config(saved, args.overrides)
        name = Path(args.resume).name
    elif args.config:
        cfg = load_config(args.config, args.overrides)
        name = Path(args.config).stem
    else:
        raise ConfigError("kdforge train needs a recipe (CONFIG) or --resume RUN_DIR")
    try:
        trainer = build_trainer(cfg, recipe_name=name, resume=args.resume)
        metrics = trainer.fit()
        if trainer.dist.is_main:
            shown = " ".join(f"{k}={v:.2f}" for k, v in metrics.items() if k != "count")
            print(f"done: {trainer.run_dir} {shown}")
    finally:
        cleanup_distributed()


def _eval(args: argparse.Namespace) -> None:
    from kdforge.analysis._common import load_model, task_of, validation_loader
    from kdforge.config import load_config

    cfg = load_config(args.config, args.overrides)
    task = task_of(cfg)
    val_loader, device = validation_loader(cfg)
    model = load_model(cfg, args.model, args.checkpoint, val_loader.dataset.num_classes)
    metrics = task.evaluate(model.to(device), val_loader, device, None, cfg.train.max_eval_batches)
    model_cfg = cfg[args.model]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    counted = "labelled pixels" if cfg.task == "segmentation" else "images"
    print(f"{model_cfg.name} ({args.checkpoint}) on {metrics['count']} {counted}: {shown}")
    if "table" in metrics:  # segmentation: the per-class IoU table
        print(metrics["table"])


def _probe(args: argparse.Namespace) -> None:
    import torch

    from kdforge.config import load_config
    from kdforge.models import create_model, get_model_info
    from kdforge.tools.probe import format_probe, probe_model

    if args.config:
        cfg = load_config(args.config)
        names = {"teacher": cfg.teacher.name, "student": cfg.student.name}
    else:
        names = {"teacher": args.teacher, "student": args.student}
    names = {role: name for role, name in names.items() if name}
    if not names:
        raise SystemExit("kdforge probe needs a recipe or --teacher/--student NAME")
    for role, name in names.items():
        info = get_model_info(name)
        size = tuple(args.input_size or info.input_size)
        model = create_model(name)
        rows = probe_model(model, torch.zeros(1, *size))
        print(format_probe(f"{role}: {name} on input 1x{'x'.join(map(str, size))}", rows))
        print()


def _export(args: argparse.Namespace) -> None:
    from kdforge.tools.export import export_onnx, export_student

    onnx = args.format == "onnx" or (args.format is None and args.out.endswith(".onnx"))
    if not onnx:
        print(f"wrote {export_student(args.run_dir, args.out, args.which)}")
        return
    out, error = export_onnx(args.run_dir, args.out, args.which, args.input_size)
    print(f"wrote {out} (onnxruntime matches PyTorch: max abs difference {error:.2g})")


def _convert(args: argparse.Namespace) -> None:
    import importlib

    import torch
    from safetensors.torch import save_file

    module, function = CONVERTERS[args.kind].split(":")
    state = getattr(importlib.import_module(module), function)(args.src)
    out = Path(args.dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    else:
        torch.save(state, out)
    print(f"wrote {out} ({len(state)} tensors); load it with create_model(name, pretrained=...)")


def _cityscapes_trainids(args: argparse.Namespace) -> None:
    from kdforge.data.cityscapes import make_train_ids

    written = make_train_ids(args.root, overwrite=args.overwrite)
    print(f"wrote {written} *_labelTrainIds.png files under {args.root}")


def _visualize(args: argparse.Namespace) -> None:
    if args.what == "features":
        from kdforge.analysis.features import visualize_features

        paths = visualize_features(
            args.config,
            args.checkpoint,
            args.images,
            args.out,
            args.layers,
            args.reduce,
            args.overrides,
        )
        for path in paths:
            print(f"wrote {path}")
        return
    if args.what == "cam":
        from kdforge.tools.cam import visualize_cam as draw
    else:
        from kdforge.tools.attention import visualize_attention as draw
    for path in draw(
        args.config, args.checkpoint, args.images, args.out, args.top_k, args.overrides
    ):
        print(f"wrote {path}")


def _confusion_matrix(args: argparse.Namespace) -> None:
    from kdforge.analysis.confusion import run_confusion_matrix

    png, csv, pairs = run_confusion_matrix(
        args.config,
        args.checkpoint,
        args.out,
        args.model,
        args.top_k,
        args.score_thr,
        args.iou_thr,
        args.max_batches,
        args.overrides,
    )
    if pairs:
        print(f"most confused (true -> predicted), top {args.top_k}:")
        for true, predicted, count, share in pairs:
            print(f"  {true} -> {predicted}: {count} ({share:.1%} of {true})")
    print(f"wrote {png}\nwrote {csv}")


def _robustness(args: argparse.Namespace) -> None:
    from kdforge.analysis.robustness import format_robustness, run_robustness

    result, csv, png = run_robustness(
        args.config,
        args.checkpoint,
        args.out,
        args.corruptions,
        args.severities,
        args.max_batches,
        args.model,
        args.seed,
        args.overrides,
    )
    print(format_robustness(result))
    print(f"wrote {csv}\nwrote {png}")


def _compare(args: argparse.Namespace) -> None:
    from kdforge.analysis.compare import run_compare

    table, csv, png = run_compare(args.runs, args.out)
    print(table)
    print(f"wrote {csv}\nwrote {png}")


def _demo(args: argparse.Namespace) -> None:
    if args.task == "detection":
        from kdforge.demo_detection import run_detection_demo

        out = args.out or "runs/demo_detection"
        run_detection_demo(out_dir=out, epochs=args.epochs, seed=args.seed)
        return
    if args.task == "segmentation":
        from kdforge.demo_segmentation import run_segmentation_demo

        out = args.out or "runs/demo_segmentation"
        run_segmentation_demo(out_dir=out, epochs=args.epochs, seed=args.seed)
        return
    from kdforge.demo import run_demo

    run_demo(out_dir=args.out or "runs/demo", epochs=args.epochs, seed=args.seed)


def _bench(args: argparse.Namespace) -> None:
    from kdforge.bench import run

    run(args)


def _cache_teacher(args: argparse.Namespace) -> None:
    from kdforge.cache import check_cache, write_cache
    from kdforge.config import load_config

    cfg = load_config(args.config, args.overrides)
    out = args.out or f"runs/{Path(args.config).stem}-cache"
    if args.check:
        worst = check_cache(cfg, out, args.samples)
        shown = ", ".join(f"{k} {v:.3g}" for k, v in worst.items())
        print(f"{out} matches the live teacher (largest differences: {shown})")
        return
    epochs = args.epochs or cfg.schedule.epochs
    write_cache(cfg, out, epochs, args.topk)
    print(f"wrote {out}; train with --set teacher.cache={out}")


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "export": _export,
    "probe": _probe,
    "convert": _convert,
    "cityscapes-trainids": _cityscapes_trainids,
    "visualize": _visualize,
    "confusion-matrix": _confusion_matrix,
    "robustness": _robustness,
    "compare": _compare,
    "demo": _demo,
    "bench": _bench,
    "cache-teacher": _cache_teacher,
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``kdforge`` command."""
    args = _parser().parse_args(argv)
    from kdforge.config import ConfigError

    try:
        COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError, FileExistsError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise SystemExit(f"kdforge {args.command}: error: {message}") from None


if __name__ == "__main__":
    main()

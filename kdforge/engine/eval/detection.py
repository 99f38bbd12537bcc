"""Detector evaluation: COCO bbox AP (AP, AP50, AP75, APs, APm, APl) with pycocotools, mask
AP (``segm_AP`` ...) for detectors that predict masks, and mmdetection's confusion matrix."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn

from kdforge.data.coco import CocoDetection, read_coco_json
from kdforge.data.det_transforms import rescale_boxes
from kdforge.errors import DataError
from kdforge.models.detection.boxes import bbox_overlaps
from kdforge.models.detection.mask_head import paste_masks

__all__ = [
    "METRICS",
    "detection_confusion",
    "encode_masks",
    "evaluate_coco",
    "evaluate_detector",
    "to_coco_results",
]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[:6]


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def encode_masks(masks: Tensor | np.ndarray) -> list[dict[str, Any]]:
    """``(M, H, W)`` binary masks -> COCO RLEs (``{"size", "counts"}``, counts as text)."""
    masks = np.asfortranarray(_numpy(masks).astype(np.uint8).transpose(1, 2, 0))
    rles = mask_util.encode(masks) if masks.shape[2] else []
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]


def to_coco_results(
    predictions: Iterable[Mapping[str, Any]], label2cat: Mapping[int, int]
) -> list[dict[str, Any]]:
    """Per-image predictions -> the COCO results list ``[{image_id, category_id, bbox, score}]``.

    Args:
        predictions: ``{"image_id": int, "boxes": (M, 4) xyxy in original-image pixels,
            "scores": (M,), "labels": (M,) contiguous labels}``; tensors or arrays; an
            optional ``"segmentation"`` (M RLEs, :func:`encode_masks`) is carried over.
        label2cat: Contiguous label -> COCO category id (``CocoDetection.label2cat``).

    Returns:
        One dict per box, ``bbox`` as ``[x, y, w, h]`` rounded to 1e-3 px.
    """
    results = []
    for pred in predictions:
        boxes = _numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)
        scores, labels = _numpy(pred["scores"]).reshape(-1), _numpy(pred["labels"]).reshape(-1)
        image_id = int(pred["image_id"])
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                f"{len(labels)} labels; expected equal counts"
            )
        unknown = sorted({int(v) for v in labels} - set(label2cat))
        if unknown:
            raise ValueError(
                f"image {image_id}: labels {unknown} are outside 0..{len(label2cat) - 1}"
            )
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).round(3)
        rles = pred.get("segmentation")
        for i, (box, score, label) in enumerate(zip(xywh, scores, labels, strict=True)):
            result = {
                "image_id": image_id,
                "category_id": label2cat[int(label)],
                "bbox": box.tolist(),
                "score": round(float(score), 5),
            }
            if rles is not None:
                result["segmentation"] = rles[i]
            results.append(result)
    return results


def _ground_truth(coco_gt: str | Path | CocoDetection) -> tuple[COCO, dict[int, int], list[int]]:
    """``(COCO index, label2cat, image ids to evaluate)`` for a JSON path or a data set
    (a ``CocoDetection``, or a wrapper that reads its ``ann_file``, ``label2cat``, ``images``)."""
    is_path = isinstance(coco_gt, (str, Path))
    path = Path(coco_gt) if is_path else coco_gt.ann_file
    gt = COCO()
    gt.dataset = read_coco_json(path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    if not is_path:
        return gt, coco_gt.label2cat, [img["id"] for img in coco_gt.images]
    return gt, dict(enumerate(sorted(gt.getCatIds()))), sorted(gt.getImgIds())


def evaluate_coco(
    predictions: Iterable[Mapping[str, Any]],
    coco_gt: str | Path | CocoDetection,
    out_json: str | Path | None = None,
    image_ids: Iterable[int] | None = None,
    verbose: bool = False,
    iou_type: str = "bbox",
) -> dict[str, float]:
    """COCO bbox (or mask) metrics of per-image predictions against a ground-truth file.

    Args:
        predictions: ``{"image_id", "boxes" (M, 4) xyxy original pixels, "scores", "labels"}``
            per image, labels contiguous (see ``to_coco_results``).
        coco_gt: The instances JSON, or a ``CocoDetection`` (its file, label mapping and images).
        out_json: If given, the standard COCO results JSON is written there.
        image_ids: Images to evaluate; default every image of ``coco_gt``.
        verbose: Print pycocotools' summary table.
        iou_type: ``"bbox"``, or ``"segm"`` for the predictions' ``"segmentation"`` RLEs
            (their boxes are left out, as mmdetection does, so that the object sizes are
            the masks' areas).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in [0, 1]; -1 where the ground truth has
        no object of that size (pycocotools' convention). No detections at all give 0.
    """
    gt, label2cat, default_ids = _ground_truth(coco_gt)
    results = to_coco_results(predictions, label2cat)
    if iou_type == "segm":
        _check_segm(gt, results)
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    strays = sorted({r["image_id"] for r in results} - set(gt.getImgIds()))
    if strays:
        raise ValueError(f"predictions for image ids {strays[:10]} absent from the ground truth")
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(results))
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": [], "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.imgIds = sorted(default_ids if image_ids is None else image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(METRICS, evaluator.stats[:6], strict=True)}


def _check_segm(gt: COCO, results: list[dict[str, Any]]) -> None:
    """Mask AP needs masks on both sides: refuse before pycocotools fails obscurely."""
    if any("segmentation" not in a for a in gt.dataset["annotations"]):
        raise DataError(
            "mask AP needs a 'segmentation' on every ground-truth annotation; this "
            "annotation file has boxes only: evaluate with iou_type='bbox'"
        )
    if any("segmentation" not in r for r in results):
        raise ValueError("mask AP needs predictions with 'segmentation' (encode_masks)")


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """COCO bbox AP of a detector over ``loader`` (a ``CocoDetection`` loader), and mask AP
    (``segm_AP`` ...) when its predictions carry ``"mask_probs"``.

    Boxes are mapped back to original-image pixels and the mask probabilities pasted into
    them at the original size, thresholded at the RoI head's ``mask_thr_binary``
    (mmdetection's ``rescale=True``), then RLE-encoded; every process's predictions are
    gathered and scored once with pycocotools. Metrics are in [0, 1], as mmdetection's.
    """
    mask_thr = getattr(getattr(model, "roi_head", None), "mask_thr_binary", 0.5)
    was_training = model.training
    model.eval()
    predictions = []
    for i, (images, targets) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            outputs = model(images.to(device, non_blocking=True))
        results = model.predict(outputs, [t["img_shape"] for t in targets])
        for result, target in zip(results, targets, strict=True):
            boxes = rescale_boxes(result["boxes"].float().cpu(), target)
            pred = {
                "image_id": target["image_id"],
                "boxes": boxes,
                "scores": result["scores"].float().cpu(),
                "labels": result["labels"].cpu(),
            }
            if "mask_probs" in result:
                probs = result["mask_probs"].float().cpu()
                probs = probs.flip(-1) if target["flip"] else probs
                masks = paste_masks(probs, boxes, tuple(target["orig_size"]), mask_thr)
                pred["segmentation"] = encode_masks(masks)
            predictions.append(pred)
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, predictions)
        predictions = [p for part in gathered for p in part]
    image_ids = [p["image_id"] for p in predictions]
    metrics = evaluate_coco(predictions, loader.dataset, image_ids=image_ids)
    if predictions and all("segmentation" in p for p in predictions):
        segm = evaluate_coco(predictions, loader.dataset, image_ids=image_ids, iou_type="segm")
        metrics |= {f"segm_{name}": value for name, value in segm.items()}
    return metrics | {"count": len(image_ids)}


def detection_confusion(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    score_thr: float = 0.3,
    iou_thr: float = 0.5,
) -> Tensor:
    """One image's ``(K + 1, K + 1)`` counts by mmdetection's rules; index ``K`` is background.

    As ``tools/analysis_tools/confusion_matrix.py``: every detection scoring at least
    ``score_thr`` counts once for each ground truth it overlaps with IoU >= ``iou_thr``, at
    ``[gt label, det label]``; a detection overlapping none counts at ``[K, det label]``; a
    ground truth that no detection of its own label matched counts at ``[gt label, K]``.

    Args:
        boxes, scores, labels: detections, ``(M, 4)`` xyxy, ``(M,)``, ``(M,)``.
        gt_boxes, gt_labels: ground truths, ``(G, 4)`` xyxy in the same pixels, ``(G,)``.
        num_classes: ``K``.
        score_thr: detections scoring less are ignored.
        iou_thr: the IoU at which a detection matches a ground truth.
    """
    matrix = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64)
    keep = scores >= score_thr
    boxes, labels = boxes[keep].float(), labels[keep].long()
    gt_labels = gt_labels.long()
    if len(gt_boxes) and len(boxes):
        matched = bbox_overlaps(boxes, gt_boxes.float()) >= iou_thr  # (M, G)
    else:
        matched = torch.zeros(len(boxes), len(gt_boxes), dtype=torch.bool)
    for i, label in enumerate(labels.tolist()):
        gts = matched[i].nonzero().flatten().tolist()
        for j in gts:
            matrix[gt_labels[j], label] += 1
        if not gts:
            matrix[num_classes, label] += 1  # a false positive on background
    found = (matched & (labels[:, None] == gt_labels[None])).any(dim=0)  # (G,)
    for label in gt_labels[~found].tolist():
        matrix[label, num_classes] += 1  # missed
    return matrix

"""The Mask R-CNN mask branch (He et al., 2017), as mmdetection 3.x's ``FCNMaskHead`` with
``mask_target`` (``BitmapMasks.crop_and_resize``), ``mask_cross_entropy`` and the paste of
``_do_paste_mask``.

Head: four 3x3 convs (256, ReLU), a 2x2 stride-2 transposed conv (``upsample``, ReLU) and
a 1x1 ``conv_logits`` with one channel per class: ``(K, 256, 14, 14) -> (K, C, 28, 28)``.
Targets: each positive RoI, clipped to the image, crops its ground-truth mask with
RoIAlign (aligned, adaptive sampling, spatial scale 1) to ``28 x 28``, thresholded at 0.5.
Loss: BCE with logits on the channel of the RoI's class, averaged over all its pixels.
Test: sigmoid probabilities are pasted into the image by bilinear sampling at the pixel
centres and thresholded (``mask_thr_binary`` 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.models.detection._dense_head import ConvModule
from kdforge.models.detection.coders import clip_boxes
from kdforge.models.detection.roi_align import roi_align

__all__ = ["FCNMaskHead", "mask_loss", "mask_targets", "paste_masks"]


class FCNMaskHead(nn.Module):
    """``convs.{0..3}.conv``, ``upsample`` and ``conv_logits`` (mmdetection's names).

    Init as mmdetection/mmcv: the convs, ``upsample`` and ``conv_logits`` Kaiming-normal
    (fan out, ReLU), biases 0.

    Args:
        num_classes: object classes (one mask channel each).
        in_channels: pooled RoI feature channels.
        conv_out_channels: width of the convs and of ``upsample``.
        num_convs: 3x3 convs before the upsampling.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        conv_out_channels: int = 256,
        num_convs: int = 4,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels, 3, 1, 1)
            for i in range(num_convs)
        )
        last = conv_out_channels if num_convs else in_channels
        self.upsample = nn.ConvTranspose2d(last, conv_out_channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(conv_out_channels, num_classes, 1)
        for m in [*(c.conv for c in self.convs), self.upsample, self.conv_logits]:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(K, C_in, S, S)`` -> ``(K, num_classes, 2S, 2S)`` mask logits."""
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


def mask_targets(rois: Tensor, gt_masks: Tensor, gt_inds: Tensor, mask_size: int = 28) -> Tensor:
    """Binary ``(P, S, S)`` float targets of ``(P, 4)`` positive RoIs of one image.

    Args:
        rois: positive RoIs in image pixels (clipped here to the mask's ``(H, W)``).
        gt_masks: ``(G, H, W)`` bool or 0/1 ground-truth masks of the image.
        gt_inds: ``(P,)`` 0-based index of each RoI's ground truth.
        mask_size: output side ``S`` (28).
    """
    if rois.shape[0] == 0:
        return rois.new_zeros(0, mask_size, mask_size)
    height, width = gt_masks.shape[-2:]
    boxes = clip_boxes(rois.float(), (height, width))
    # the ground-truth index is the RoI's batch index into the (G, 1, H, W) masks
    crops = roi_align(
        gt_masks[:, None].to(boxes.device, torch.float32),
        torch.cat((gt_inds[:, None].to(boxes), boxes), 1),
        mask_size,
        1.0,
        0,
        True,
    )
    return (crops[:, 0] >= 0.5).float()


def mask_loss(mask_pred: Tensor, targets: Tensor, labels: Tensor) -> Tensor:
    """Mean BCE with logits of ``(P, C, S, S)`` logits' ``labels`` channels vs ``(P, S, S)``
    targets (mmdetection's ``mask_cross_entropy``); 0 with a graph when ``P == 0``."""
    if labels.numel() == 0:
        return mask_pred.sum() * 0
    pred = mask_pred[torch.arange(labels.numel(), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(pred.float(), targets.to(pred.dtype))


def paste_masks(
    probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """``(n, S, S)`` probabilities in their ``(n, 4)`` boxes -> ``(n, H, W)`` bool masks.

    Pixel centres are sampled bilinearly (``grid_sample``, ``align_corners=False``, zeros
    outside) within one pixel around each box; pixels farther away are 0 (their samples
    are beyond half a mask cell, where the interpolation cannot reach 0.5).
    """
    height, width = image_size
    out = torch.zeros(len(boxes), height, width, dtype=torch.bool, device=probs.device)
    for i, (box, prob) in enumerate(zip(boxes.float(), probs.float(), strict=True)):
        x0, y0 = (box[:2].floor() - 1).clamp(min=0).int().tolist()
        x1 = int(min(box[2].ceil().item() + 1, width))
        y1 = int(min(box[3].ceil().item() + 1, height))
        if x1 <= x0 or y1 <= y0 or box[2] <= box[0] or box[3] <= box[1]:
            continue
        ys = torch.arange(y0, y1, device=probs.device, dtype=torch.float32) + 0.5
        xs = torch.arange(x0, x1, device=probs.device, dtype=torch.float32) + 0.5
        gy = (ys - box[1]) / (box[3] - box[1]) * 2 - 1
        gx = (xs - box[0]) / (box[2] - box[0]) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)  # (h, w, 2) as (x, y)
        sampled = F.grid_sample(prob[None, None], grid[None], align_corners=False)[0, 0]
        out[i, y0:y1, x0:x1] = sampled >= threshold
    return out

"""Heart and lung segmentation on the DenseNet-121 features, and the cardiothoracic ratio measured on the masks.

    final features (stride 32) --up+skip(denseblock3, s16)--up+skip(denseblock2, s8)--up+skip(denseblock1, s4)
        --up+skip(relu0, s2)--> 1x1 conv --bilinear--> mask logits [N, 3, S, S]: heart, left lung, right lung

`ctr_from_masks` is the definition the labels use (cxr.runtime.anatomy.ctr_reference is its numpy twin): the heart's
horizontal extent (first to last occupied column, +1) over the largest horizontal extent of one row of the union of
both lungs. It is written with Where/ReduceMin/ReduceMax only, so it traces into an opset-17 ONNX graph and every
runtime gets the ratio from the model itself. An empty heart or empty lungs give NaN (not measurable). A model's masks
are measured after `main_parts` keeps each structure's main piece (`measured_masks`): on one-piece manual masks that
changes nothing, on a predicted mask it drops the stray islands that would otherwise set an extent.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cxr.runtime.anatomy import main_part_geometry

STRUCTURES = ("heart", "left_lung", "right_lung")
DECODER_WIDTHS = (128, 64, 32, 16)
"""Output channels of the four up-sampling stages (stride 16, 8, 4, 2): light next to DenseNet-121's 7M weights."""


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class UNetDecoder(nn.Module):
    """A U-Net-style decoder over DenseNet feature maps (skips at stride 2, 4, 8, 16; bottom at stride 32)."""

    def __init__(self, channels: list[int], widths: tuple[int, ...] = DECODER_WIDTHS, n_out: int = len(STRUCTURES)):
        super().__init__()
        *skip_chans, bottom = channels
        if len(skip_chans) != len(widths):
            raise ValueError(f"expected {len(widths)} skip feature maps, got {len(skip_chans)}")
        self.bottom = nn.Sequential(*_conv_bn_relu(bottom, widths[0], k=1))
        self.reduce = nn.ModuleList()
        self.blocks = nn.ModuleList()
        cin = widths[0]
        # skips arrive shallow-first (s2, s4, s8, s16); the decoder walks them deep-first
        for skip_c, width in zip(reversed(skip_chans), widths):
            reduced = max(width // 2, 8)
            # dense-block outputs are raw concatenations (their BN-ReLU sits in the next layer): normalise first
            self.reduce.append(nn.Sequential(nn.BatchNorm2d(skip_c), nn.ReLU(inplace=True),
                                             nn.Conv2d(skip_c, reduced, 1, bias=False)))
            self.blocks.append(nn.Sequential(*_conv_bn_relu(cin + reduced, width), *_conv_bn_relu(width, width)))
            cin = width
        self.out = nn.Conv2d(cin, n_out, 1)

    def forward(self, features: torch.Tensor, skips: list[torch.Tensor], size) -> torch.Tensor:
        x = self.bottom(features)
        for skip, reduce, block in zip(reversed(skips), self.reduce, self.blocks):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, reduce(skip)], dim=1))
        return F.interpolate(self.out(x), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, has_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Soft Dice + BCE per structure, averaged over the images that have masks: (loss, number of such images).
    Images without masks contribute nothing (the classifier alone learns from them)."""
    weight = has_mask.float()
    n = int(has_mask.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=(1, 2, 3))
    prob = torch.sigmoid(logits.float())
    inter = (prob * target).sum(dim=(2, 3))
    denom = prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3))
    dice = 1.0 - ((2.0 * inter + 1.0) / (denom + 1.0)).mean(dim=1)
    return ((bce + dice) * weight).sum() / n, n


def binary_masks(mask_logits: torch.Tensor) -> torch.Tensor:
    """Masks at probability 0.5, as uint8 0/1 [N, 3, S, S]."""
    return (torch.sigmoid(mask_logits) >= 0.5).to(torch.uint8)


def main_parts(masks: torch.Tensor) -> torch.Tensor:
    """Each structure's main part of 0/1 masks [N, C, H, W] (same dtype back): the pixels of the 8-connected part,
    on the grid of 4x4 cells, that holds the densest neighbourhood of the mask (a box a quarter of the image wide);
    stray islands elsewhere are dropped. Manual masks are one piece each, so their ratio is unchanged; a predicted
    mask's islands (a blob below the diaphragm called heart, lung specks at the edge) would otherwise set its extent.

    Traceable into opset 17 (MaxPool, AveragePool, ArgMax, Equal, Mul, Resize): the part grows from its seed cell by
    one cell per step, as many steps as the coarse grid is high plus wide. cxr.runtime.anatomy.main_parts_reference
    is the numpy twin."""
    n, c, h, w = masks.shape
    f, box, steps = main_part_geometry(h, w)
    m = masks.float()
    coarse = F.max_pool2d(m, f, f, ceil_mode=True)
    hc, wc = coarse.shape[-2:]
    density = F.avg_pool2d(coarse, box, 1, box // 2, count_include_pad=True) * coarse
    seed_at = density.flatten(2).argmax(dim=2, keepdim=True)
    cells = torch.arange(hc * wc, device=masks.device).reshape(1, 1, -1)
    part = (cells == seed_at).float().reshape(n, c, hc, wc) * coarse  # no seed where the mask is empty
    for _ in range(steps):
        part = F.max_pool2d(part, 3, 1, 1) * coarse
    keep = part.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)[:, :, :h, :w]
    return (m * keep).to(masks.dtype)


def measured_masks(mask_logits: torch.Tensor) -> torch.Tensor:
    """The masks the model outputs and measures: at probability 0.5, each structure's main part (uint8 0/1)."""
    return main_parts(binary_masks(mask_logits))


def _extent(occupied: torch.Tensor, dim: int) -> torch.Tensor:
    """first-to-last occupied index + 1 along `dim` (0 where nothing is occupied) of a 0/1 float tensor."""
    size = occupied.shape[dim]
    shape = [1] * occupied.dim()
    shape[dim] = size
    idx = torch.arange(size, dtype=torch.float32, device=occupied.device).reshape(shape)
    on = occupied > 0
    first = torch.where(on, idx, torch.full_like(idx, float(size))).amin(dim=dim)
    last = torch.where(on, idx, torch.full_like(idx, -1.0)).amax(dim=dim)
    return torch.clamp(last - first + 1.0, min=0.0)


def ctr_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Cardiothoracic ratio float32 [N] from 0/1 masks [N, 3, H, W] (heart, left lung, right lung); NaN where the
    heart or the lungs are empty."""
    m = masks.float()
    heart_w = _extent(m[:, 0].amax(dim=1), dim=1)  # column occupancy of the heart
    lungs = torch.maximum(m[:, 1], m[:, 2])
    thorax_w = _extent(lungs, dim=2).amax(dim=1)  # widest row of the union of both lungs
    ratio = heart_w / torch.clamp(thorax_w, min=1.0)
    valid = (heart_w > 0) & (thorax_w > 0)
    return torch.where(valid, ratio, torch.full_like(ratio, float("nan")))


@torch.no_grad()
def dice_per_structure(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice [N, 3] of 0/1 masks; 1.0 where both are empty."""
    p, t = pred.float(), target.float()
    inter = (p * t).sum(dim=(2, 3))
    denom = p.sum(dim=(2, 3)) + t.sum(dim=(2, 3))
    return torch.where(denom > 0, 2.0 * inter / torch.clamp(denom, min=1.0), torch.ones_like(denom))


@torch.no_grad()
def dice_lungs(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice [N] of the union of both lungs."""
    p = torch.maximum(pred[:, 1], pred[:, 2]).float()
    t = torch.maximum(target[:, 1], target[:, 2]).float()
    inter = (p * t).sum(dim=(1, 2))
    denom = p.sum(dim=(1, 2)) + t.sum(dim=(1, 2))
    return torch.where(denom > 0, 2.0 * inter / torch.clamp(denom, min=1.0), torch.ones_like(denom))

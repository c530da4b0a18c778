"""The model: DenseNet-121 features + Dropout(0.2) + Linear(1024, 1), taking uint8 [N, 1, S, S].

Scaling to [0, 1], the recipe's mean/std normalization and the grey-to-3-channel step happen inside `forward`, so
the exported ONNX file takes exactly what cxr.runtime.preprocess produces. The first convolution is adapted to one
channel by summing its RGB weights, which equals feeding the grey image copied to three channels.

With `seg_head=True` a light U-Net-style decoder (cxr.train.anatomy) reads the dense blocks through skip connections
and predicts heart, left lung and right lung; the classifier head is unchanged, and without the decoder the module
(and its state dict) is exactly the recipe's.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torchvision.models import DenseNet, densenet121

from cxr.runtime.errors import CxrError
from cxr.runtime.preprocess import Normalization
from cxr.train.config import ARCHS

log = logging.getLogger(__name__)



class InitWeightsError(CxrError, RuntimeError):
    """Initial weights cannot be had (offline, missing file, wrong architecture)."""


class CardiomegalyNet(nn.Module):
    """uint8 [N, 1, S, S] -> logit [N] (cardiomegaly)."""

    def __init__(self, arch: str = "densenet121", dropout: float = 0.2,
                 normalization: Normalization = Normalization(), seg_head: bool = False):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        self.arch = arch
        net = _densenet(arch)
        self.features = net.features
        self.num_features = net.classifier.in_features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, 1))
        self.register_buffer("mean", torch.tensor(float(normalization.mean)), persistent=True)
        self.register_buffer("std", torch.tensor(float(normalization.std)), persistent=True)
        adapt_first_conv_to_gray(self)
        self.seg_head = bool(seg_head)
        if self.seg_head:
            from cxr.train.anatomy import UNetDecoder

            self.decoder = UNetDecoder(skip_channels(self.features))

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(self.head[1].weight.dtype) / 255.0
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, image: torch.Tensor, all_outputs: bool = False):
        """The classifier's logit [N] (the recipe's forward; the decoder, if any, is not run), or with
        `all_outputs` the dict of `forward_all` (so DistributedDataParallel sees the decoder's pass too)."""
        if all_outputs:
            return self.forward_all(image)
        f = torch.relu(self.features(self.normalize(image)))
        return self.classify(f)

    def classify(self, relu_features: torch.Tensor) -> torch.Tensor:
        f = torch.flatten(nn.functional.adaptive_avg_pool2d(relu_features, 1), 1)
        return self.head(f).squeeze(1)

    def forward_all(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """One pass for everything: 'logit' [N], 'features' (final ReLU features, for the CAM) and, with the
        decoder, 'mask_logits' [N, 3, S, S] (heart, left lung, right lung)."""
        x = self.normalize(image)
        skips = []
        for name, layer in self.features.named_children():
            x = layer(x)
            if name in SKIP_LAYERS:
                skips.append(x)
        f = torch.relu(x)
        out = {"logit": self.classify(f), "features": f}
        if self.seg_head:
            out["mask_logits"] = self.decoder(f, skips, image.shape[-2:])
        return out

    def cam_of(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The class activation map from forward_all's outputs (what the exported graph's `cam` is)."""
        return self.cam(out["features"])

    def cam(self, relu_features: torch.Tensor) -> torch.Tensor:
        """Class activation map of the positive logit: ReLU(sum_c w_c * features_c) [N, h, w] (no bias)."""
        w = self.head[1].weight[0].to(relu_features.dtype)
        return torch.relu(torch.einsum("nchw,c->nhw", relu_features, w))


def mean_probability_logit(logits: torch.Tensor) -> torch.Tensor:
    """logit(mean over dim 0 of sigmoid(logits)), written in log space so it stays exact where a member is sure
    (no 1 - p rounding to 0 in float32). NaN logits (a member that cannot decide) are left out; NaN where all are."""
    valid = ~torch.isnan(logits)
    x = torch.where(valid, logits, torch.zeros_like(logits))
    soft = torch.log1p(torch.exp(-torch.abs(x)))
    neg_inf = torch.full_like(x, float("-inf"))
    log_p = torch.where(valid, -(torch.relu(-x) + soft), neg_inf)  # log sigmoid(x)
    log_q = torch.where(valid, -(torch.relu(x) + soft), neg_inf)  # log (1 - sigmoid(x))
    return _logsumexp0(log_p) - _logsumexp0(log_q)  # the 1/K of both means cancels


def _logsumexp0(a: torch.Tensor) -> torch.Tensor:
    top = a.amax(dim=0)
    return top + torch.log(torch.exp(a - top).sum(dim=0))


class CardiomegalyEnsemble(nn.Module):
    """Several CardiomegalyNet of one split used as one model (cxr-ensemble): uint8 [N, 1, S, S] -> the logit of the
    members' mean probability, each member's under its own decision (cxr.train.decision.Decision); forward_all adds
    the mean of the members' mask probabilities (as logits) and of their activation maps (each scaled to its own
    maximum), so the export wrapper, evaluation and validation treat it as one CardiomegalyNet. A member whose
    decision cannot be made on an image (a ratio not measurable) is left out of that image's mean."""

    def __init__(self, members: Sequence[CardiomegalyNet], decisions: Sequence):
        super().__init__()
        if len(members) < 2 or len(members) != len(decisions):
            raise ValueError("an ensemble needs two or more members, each with its decision")
        seg = {bool(m.seg_head) for m in members}
        if len(seg) != 1:
            raise ValueError("every member must have the segmentation head, or none")
        self.members = nn.ModuleList(members)
        self.decisions = list(decisions)
        self.seg_head = seg.pop()
        self.arch = members[0].arch

    def forward(self, image: torch.Tensor, all_outputs: bool = False):
        out = self.forward_all(image)
        return out if all_outputs else out["logit"]

    def forward_all(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        from cxr.train.anatomy import ctr_from_masks, measured_masks

        logits, cams, masks = [], [], []
        for member, decision in zip(self.members, self.decisions):
            out = member.forward_all(image)
            cls = out["logit"].float()
            if self.seg_head:
                masks.append(out["mask_logits"].float())
                ctr = ctr_from_masks(measured_masks(masks[-1])) if decision.mode != "classifier" else None
                logits.append(decision.combine(cls, ctr))
            else:
                logits.append(cls)
            cam = member.cam_of(out).float()
            cams.append(cam / torch.clamp(cam.amax(dim=(1, 2), keepdim=True), min=1e-12))
        result = {"logit": mean_probability_logit(torch.stack(logits)), "cam": torch.stack(cams).mean(dim=0)}
        if self.seg_head:
            result["mask_logits"] = mean_probability_logit(torch.stack(masks))
        return result

    def cam_of(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return out["cam"]


SKIP_LAYERS = ("relu0", "denseblock1", "denseblock2", "denseblock3")
"""The feature maps the decoder reads: stride 2, 4, 8 and 16 (the final features, stride 32, are the bottom)."""


def skip_channels(features: nn.Sequential) -> list[int]:
    """Channels of SKIP_LAYERS' outputs and of the final features, found by a dry run on a tiny input."""
    probe = torch.zeros(1, 1, 64, 64)
    chans = []
    with torch.no_grad():
        was = features.training
        features.eval()
        x = probe
        for name, layer in features.named_children():
            x = layer(x)
            if name in SKIP_LAYERS:
                chans.append(int(x.shape[1]))
        features.train(was)
    return chans + [int(x.shape[1])]


def _densenet(arch: str) -> DenseNet:
    if arch == "densenet121":
        return densenet121(weights=None)
    # A small DenseNet for tests that check only mechanics (same code path, far fewer FLOPs).
    return DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2)


def adapt_first_conv_to_gray(model: CardiomegalyNet) -> None:
    """Replace a 3-channel conv0 by a 1-channel one whose weights are the sum over RGB (identical output on grey)."""
    conv = model.features.conv0
    if conv.in_channels == 1:
        return
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    model.features.conv0 = new


_LEGACY_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                                  r"running_var|num_batches_tracked))$")


def rename_legacy_densenet_keys(state: dict) -> dict:
    """The published DenseNet files (densenet121-a639ec97.pth) name layers 'denselayer1.norm.1.weight'; the modules
    are 'denselayer1.norm1.weight' since PyTorch 0.4. torchvision renames them when it loads the file itself; a
    state dict read directly needs the same renaming. Other keys are kept as they are."""
    out = {}
    for key, value in state.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def load_imagenet_features(model: CardiomegalyNet) -> None:
    """ImageNet DenseNet-121 weights from torchvision's cache (or its download); the RGB conv0 summed to grey."""
    if model.arch != "densenet121":
        raise InitWeightsError(f"ImageNet weights exist only for densenet121, not {model.arch}")
    from torchvision.models import DenseNet121_Weights

    try:
        state = DenseNet121_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, OSError, hash errors: all mean "cannot be had here"
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise InitWeightsError(
            f"ImageNet weights for DenseNet-121 could not be loaded ({type(exc).__name__}: {exc}). This machine may "
            f"be offline. Ways out: copy densenet121-a639ec97.pth into {cache} on a machine with internet access, "
            "or pass --init PATH to a local weights file, or train from scratch with --init random "
            "(then raise the learning rate, e.g. --lr 1e-4: the recipe's 1e-5 is a fine-tuning rate).") from None
    ref = densenet121(weights=None)
    try:
        ref.load_state_dict(rename_legacy_densenet_keys(state))
    except RuntimeError as exc:
        raise InitWeightsError(f"ImageNet weights for DenseNet-121 do not fit torchvision's densenet121: "
                               f"{exc}") from None
    conv0 = ref.features.conv0.weight.detach().sum(dim=1, keepdim=True)
    feats = {k: v for k, v in ref.features.state_dict().items() if k != "conv0.weight"}
    model.features.load_state_dict({**feats, "conv0.weight": conv0}, strict=True)


def load_init_file(model: CardiomegalyNet, path: str | Path) -> None:
    """--init PATH: a cxr checkpoint (best.pt/last.pt) or a plain state dict of CardiomegalyNet or torchvision
    DenseNet-121. Loaded with weights_only=True (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise InitWeightsError(f"--init {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InitWeightsError(f"--init {path}: not a loadable weights file ({type(exc).__name__}: {exc})") from None
    state = obj.get("model_state", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise InitWeightsError(f"--init {path}: expected a state dict or a cxr checkpoint")
    state = rename_legacy_densenet_keys(state)  # e.g. torchvision's own densenet121-a639ec97.pth
    if any(k.startswith("head.") for k in state):
        if getattr(model, "seg_head", False) and not any(k.startswith("decoder.") for k in state):
            state = {**{k: v for k, v in model.state_dict().items() if k.startswith("decoder.")}, **state}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InitWeightsError(f"--init {path}: weights do not fit {model.arch}: {exc}") from None
        return
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not feats:
        raise InitWeightsError(f"--init {path}: no 'features.*' weights found")
    w = feats.get("conv0.weight")
    if w is not None and w.shape[1] == 3:
        feats["conv0.weight"] = w.sum(dim=1, keepdim=True)
    try:
        model.features.load_state_dict(feats, strict=True)
    except RuntimeError as exc:
        raise InitWeightsError(f"--init {path}: weights do not fit {model.arch}: {exc}") from None


def build_model(arch: str = "densenet121", dropout: float = 0.2, normalization: Normalization = Normalization(),
                init: str = "random", seg_head: bool = False) -> CardiomegalyNet:
    """Build the model and apply `--init imagenet|random|PATH` (to the DenseNet and head; the decoder starts fresh)."""
    model = CardiomegalyNet(arch=arch, dropout=dropout, normalization=normalization, seg_head=seg_head)
    if init == "imagenet":
        load_imagenet_features(model)
    elif init != "random":
        load_init_file(model, init)
    return model

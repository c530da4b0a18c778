"""The traced graph: a cxr model wrapped so every output (logit, probability, cam, and with the segmentation head
ctr and masks) is computed inside the ONNX file, exported with the TorchScript exporter at the asked opset.

The TorchScript exporter (dynamo=False) is used because the dynamo exporter on torch 2.14 wrote opset 18 and external
data when asked for 17; the opset of the written file is checked either way (cxr.export.validate).
"""

from __future__ import annotations

import io
import warnings

EXPORTER = "torch.onnx.export (TorchScript, dynamo=False)"


class ExportWrapper:
    """Builds the traced module: image uint8 -> logit, probability (the decision's), cam and, with the segmentation
    head, ctr and masks. Every output is computed in the graph so every runtime gets it without torch."""

    @staticmethod
    def outputs(model) -> tuple[str, ...]:
        from cxr.runtime.card import OUTPUT_NAMES

        return OUTPUT_NAMES + (("cam", "ctr", "masks") if getattr(model, "seg_head", False) else ("cam",))

    @staticmethod
    def build(model, decision=None):
        import torch

        from cxr.train.anatomy import ctr_from_masks, measured_masks
        from cxr.train.decision import Decision

        decision = decision or Decision()
        seg = bool(getattr(model, "seg_head", False))
        ensemble = hasattr(model, "members")

        class Wrapper(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, image):
                out = self.inner.forward_all(image)
                cls_logit = out["logit"].float()
                cam = self.inner.cam_of(out).float()
                if not seg:
                    return cls_logit, torch.sigmoid(cls_logit), cam
                masks = measured_masks(out["mask_logits"].float())
                ctr = ctr_from_masks(masks)
                logit = decision.combine(cls_logit, ctr)
                if ensemble:  # no member could decide (each reads a ratio it could not measure): no ratio either,
                    ctr = torch.where(torch.isnan(logit), logit, ctr)  # so cxr-score says no_anatomy
                return logit, torch.sigmoid(logit), cam, ctr, masks

        return Wrapper(model)


def export_graph(model, opset: int, size: int, training: bool = False, decision=None):
    """Trace `model` into an in-memory onnx.ModelProto with outputs logit, probability, cam (and ctr, masks with the
    segmentation head), N dynamic. `training=True` exists only so tests can produce a training-mode file."""
    import onnx
    import torch

    wrapper = ExportWrapper.build(model, decision).train(training)
    names = list(ExportWrapper.outputs(model))
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    dummy = torch.zeros((2, 1, size, size), dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*[Rr]emove usage of this function.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (dummy,), buffer, dynamo=False, opset_version=opset, training=mode,
                          input_names=["image"], output_names=names,
                          dynamic_axes={"image": {0: "N"}, **{n: {0: "N"} for n in names}},
                          do_constant_folding=not training)
    proto = onnx.load_from_string(buffer.getvalue())
    with torch.inference_mode():
        shapes = [tuple(t.shape) for t in wrapper.eval()(dummy)]
    wrapper.train(training)
    _fix_output_shapes(proto, shapes)
    return proto


def _fix_output_shapes(proto, shapes) -> None:
    """Every output dimension but N is fixed by S; the tracer leaves some symbolic (e.g. after a Cast)."""
    for output, shape in zip(proto.graph.output, shapes):
        dims = output.type.tensor_type.shape.dim
        for dim, size in zip(list(dims)[1:], shape[1:]):
            dim.Clear()
            dim.dim_value = int(size)


"""Fixtures shared by the overlay, report and browser tests: an ONNX model with cam, ctr and masks outputs built with
onnx.helper (no torch), and a folder of good, broken and hostile-named images. The tests here check the fixtures.

The "maps" model: probability as the mean-brightness model (tests.onnx_fixtures); cam = the image averaged over
32 x 32 blocks (so the map is hottest where the image is brightest); masks = fixed heart and lung masks; ctr = their
ratio by cxr.runtime.anatomy.ctr_reference.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.runtime.anatomy import ctr_reference
from tests.badfiles import write_bad_files
from tests.onnx_fixtures import default_card

pytest.importorskip("onnx")

HOSTILE_NAMES = [
    "<script>document.title='pwned'<script>.png",
    "<img src=x onerror=\"document.title='pwned'\">.png",
    "\"quoted' name.png",
    "javascript:alert(1).png",
    "ctrl\x01\x1b[31mname\x7f.png",
    "new\nline.png",
    "\u202egnp.evil.png",
    "q</script><script>alert(1)<script>.png",  # a folder 'q<' holding 'script><script>...': the path closes a tag
]
"""Valid PNGs under names (relative paths) a report must show as text and never run."""


def fixed_masks(size: int) -> np.ndarray:
    """uint8 [3, S, S]: a heart in the lower middle, two lungs beside it (CTR about 0.5)."""
    m = np.zeros((3, size, size), np.uint8)
    s = size
    m[0, s // 2: s * 13 // 16, s * 3 // 8: s * 5 // 8 + 1] = 1  # heart
    m[1, s // 8: s * 7 // 8, s // 8: s * 7 // 16] = 1  # left lung (image left)
    m[2, s // 8: s * 7 // 8, s * 9 // 16: s * 7 // 8] = 1  # right lung
    return m


def maps_model(path: Path, size: int = 64, threshold: float = 0.5, outputs=("cam", "ctr", "masks"),
               gain: float = 8.0, ctr_follows_brightness: bool = False) -> Path:
    """Write the maps model (the optional outputs in `outputs`, a subset of cam, ctr, masks) to `path`. With
    `ctr_follows_brightness` its ctr is 0.3 + 0.4 x the image's mean brightness (0-1) instead of the masks' ratio, so
    films differ in ratio."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cxr.runtime.card import CARD_KEY

    masks = fixed_masks(size)
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 1, size, size])
    outs = [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [gain / 255.0]),
             helper.make_tensor("shift", TensorProto.FLOAT, [], [gain * 0.5]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("ctr_value", TensorProto.FLOAT, [], [ctr_reference(masks)]),
             helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
             numpy_helper.from_array(masks[None].astype(np.float32), "mask_const")]
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Mul", ["m", "scale"], ["ms"]),
             helper.make_node("Sub", ["ms", "shift"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["probability"])]
    if "cam" in outputs:
        h = size // 32
        outs.append(helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", h, h]))
        nodes += [helper.make_node("AveragePool", ["x"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]),
                  helper.make_node("Squeeze", ["pooled", "axis1"], ["cam"])]
    if "ctr" in outputs:
        outs.append(helper.make_tensor_value_info("ctr", TensorProto.FLOAT, ["N"]))
        if ctr_follows_brightness:
            inits += [helper.make_tensor("ctr_gain", TensorProto.FLOAT, [], [0.4 / 255.0]),
                      helper.make_tensor("ctr_base", TensorProto.FLOAT, [], [0.3])]
            nodes += [helper.make_node("Mul", ["m", "ctr_gain"], ["m0"]),
                      helper.make_node("Add", ["m0", "ctr_base"], ["ctr"])]
        else:
            nodes += [helper.make_node("Mul", ["m", "zero"], ["m0"]),
                      helper.make_node("Add", ["m0", "ctr_value"], ["ctr"])]
    if "masks" in outputs:
        outs.append(helper.make_tensor_value_info("masks", TensorProto.UINT8, ["N", 3, size, size]))
        nodes += [helper.make_node("Mul", ["x", "zero"], ["x0"]), helper.make_node("Add", ["x0", "one"], ["ones"]),
                  helper.make_node("Mul", ["ones", "mask_const"], ["mf"]),
                  helper.make_node("Cast", ["mf"], ["masks"], to=TensorProto.UINT8)]
    graph = helper.make_graph(nodes, "maps", [inp], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="cxr-tests")
    model.ir_version = 8
    card = default_card(size, threshold)
    object.__setattr__(card, "output_names", ("logit", "probability") + tuple(o for o in ("cam", "ctr", "masks")
                                                                               if o in outputs))
    helper.set_model_props(model, {CARD_KEY: card.to_json()})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def chest_like(h: int = 120, w: int = 100, bright: bool = True) -> np.ndarray:
    """A gray image with a bright blob low in the middle (where the fixed heart mask is): a large one when `bright`
    (after histogram equalization about 60% of the image is bright: the maps model says ~0.7), else a small one
    (~0.05)."""
    img = np.full((h, w), 60, np.uint8)
    axes = (w * 9 // 20, h * 2 // 5) if bright else (w // 5, h // 8)
    cv2.ellipse(img, (w // 2, h * 3 // 5), axes, 0, 0, 360, 230, -1)
    return img


def write_review_folder(folder: Path) -> dict[str, list[str]]:
    """good (bright and dark), broken and hostile-named images under `folder`: {'good', 'bad', 'hostile'} -> paths."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir()
    good = {"bright.png": chest_like(bright=True), "dark.png": chest_like(bright=False),
            "sub/wide.png": chest_like(80, 160), "sub/deep16.png": (chest_like(90, 70).astype(np.uint16) * 257)}
    for rel, img in good.items():
        assert cv2.imwrite(str(folder / rel), img)
    hostile = []
    for i, name in enumerate(HOSTILE_NAMES):
        assert cv2.imwrite(str(folder / "plain.png"), chest_like(bright=i % 2 == 0))
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / "plain.png").rename(folder / name)
        hostile.append(name)
    bad = write_bad_files(folder / "broken")
    return {"good": sorted(good), "bad": sorted(f"broken/{k}" for k in bad), "hostile": sorted(hostile)}


@pytest.fixture()
def review(tmp_path) -> tuple[Path, Path, dict[str, list[str]]]:
    """(maps model, folder of good/bad/hostile images, the folder's names by kind)."""
    model = maps_model(tmp_path / "maps.onnx")
    folder = tmp_path / "xrays"
    return model, folder, write_review_folder(folder)


def test_the_maps_model_honours_the_contract(tmp_path):
    from cxr.runtime.scoring import Scorer

    scorer = Scorer(maps_model(tmp_path / "m.onnx"), device="cpu")
    assert scorer.extra_outputs == ("cam", "ctr", "masks")
    batch = np.zeros((2, 1, 64, 64), np.uint8)
    batch[1, :, 32:, :32] = 255
    out = scorer.run(batch, ("cam", "ctr", "masks"))
    assert out["cam"].shape == (2, 2, 2) and out["masks"].shape == (2, 3, 64, 64)
    assert out["cam"][1, 1, 0] == 255 and out["cam"][1].sum() == 255
    assert out["ctr"] == pytest.approx([ctr_reference(fixed_masks(64))] * 2)
    np.testing.assert_array_equal(out["masks"][0], fixed_masks(64))


def test_the_review_folder_holds_every_kind(tmp_path):
    names = write_review_folder(tmp_path / "f")
    for rel in names["good"] + names["hostile"] + names["bad"]:
        assert (tmp_path / "f" / rel).exists(), rel

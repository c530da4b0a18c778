"""The report's building blocks: escaping, the JSON block, the CSP hashes, intervals, the ROC SVG, overlay links."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from cxr.runtime.report import (
    THUMBS_MANIFEST,
    Report,
    _url,
    content_security_policy,
    roc_svg,
    script_json,
    shown,
    thumbs_dir_for,
    wilson,
)
from cxr.runtime.report_assets import CSS, JS
from cxr.runtime.scoring import ScoreRow


@pytest.mark.parametrize("text, expected", [
    ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    ("a\"b'c&d", "a&quot;b&#x27;c&amp;d"),
    ("ctrl\x01\x1b\x7f", "ctrl\\u0001\\u001b\\u007f"),
    ("\u202eevil", "\\u202eevil"),
    ("bad\udc80byte", "bad\\udc80byte"),
])
def test_shown_escapes_markup_and_makes_controls_visible(text, expected):
    assert shown(text) == expected


def test_script_json_cannot_close_its_block_and_round_trips():
    data = {"p": "q</script><script>alert(1)</script>&\u2028<!--", "n": [1, None]}
    text = script_json(data)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == data


def test_csp_allows_exactly_the_shipped_style_and_script():
    csp = content_security_policy()
    for text in (CSS, JS):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert csp.startswith("default-src 'none';") and "unsafe" not in csp and "img-src 'self'" in csp


def test_the_script_never_uses_innerhtml_or_eval():
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", JS)


@pytest.mark.parametrize("k, n, lo, hi", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0)])
def test_wilson_interval_matches_published_values(k, n, lo, hi):
    a, b = wilson(k, n)
    assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)


def test_wilson_of_nothing_is_undefined():
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_roc_svg_is_numbers_only_and_thinned():
    fpr = [i / 2000 for i in range(2001)]
    svg = roc_svg(fpr, fpr, (0.25, 0.5), 0.5)
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    assert 2 <= len(points) <= 401 and "<circle" in svg and "AUROC 0.500" in svg


@pytest.mark.parametrize("name, encoded", [
    ("javascript:alert(1).png", "./o/javascript%3Aalert%281%29.png"),
    ("a b/<x>.png", "./o/a%20b/%3Cx%3E.png"),
])
def test_overlay_links_are_relative_and_percent_encoded(tmp_path, name, encoded):
    assert _url(tmp_path / "o" / name, tmp_path) == encoded


def test_links_to_overlays_outside_the_report_folder_climb(tmp_path):
    assert _url(tmp_path / "o" / "a.png", tmp_path / "reports") == "../o/a.png"


def test_report_rows_are_small_and_written_atomically(tmp_path):
    rep = Report(tmp_path / "r.html", folder=tmp_path, overlays_dir=tmp_path / "o", labels=True, anatomy=True,
                 masks=True)
    assert thumbs_dir_for(tmp_path / "r.html") == tmp_path / "r_thumbs" and rep.thumbs.is_dir()
    rep.add(ScoreRow("a.dcm", "ok", probability=0.91234567, logit=2.0, label_pred=1, ctr=0.61234), 1)
    rep.add(ScoreRow("b.png", "error", error_code="truncated", error_message="cut"), None)
    assert rep.rows[0] == {"i": 0, "p": "a.dcm", "s": "ok", "pr": 0.912346, "c": 1, "y": 1, "img": 0, "e": "",
                           "ctr": 0.6123, "f": "", "o": "./o/a.dcm.png"}
    assert rep.rows[1]["e"] == "truncated: cut" and "o" not in rep.rows[1]
    rep.write({"folder": "f", "card": {"outputs": ["logit", "probability", "cam"]}})
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "no activation map" not in page
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_thumbnails_folder_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "r_thumbs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="symlink"):
        Report(Path(tmp_path / "r.html"), folder=tmp_path, overlays_dir=None, labels=False, anatomy=False,
               masks=False)


def _report_with(tmp_path: Path, n: int, write: bool = True) -> Report:
    """A report of `n` ok rows, each drawn (two thumbnails), published when `write`."""
    rep = Report(tmp_path / "r.html", folder=tmp_path, overlays_dir=None, labels=False, anatomy=False, masks=False)
    gray = np.full((40, 30), 128, np.uint8)
    for k in range(n):
        i = rep.add(ScoreRow(f"img{k}.png", "ok", probability=0.5, logit=0.0, label_pred=1), None)
        rep.on_drawn(i, gray, np.dstack([gray] * 3))
    if write:
        rep.write({"folder": "f", "card": {}})
    return rep


def _thumbs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "r_thumbs").iterdir())


def _ours(n: int) -> list[str]:
    return sorted(f"{i:06d}{kind}.jpg" for i in range(n) for kind in ("", "o"))


def test_a_smaller_rerun_leaves_only_its_own_thumbnails_and_the_users_files(tmp_path):
    _report_with(tmp_path, 5)
    assert _thumbs(tmp_path) == sorted(_ours(5) + [THUMBS_MANIFEST])
    mine = ["notes.txt", "000050.jpg", "000004.jpeg"]  # the user's, one named like a thumbnail but never written
    for name in mine:
        (tmp_path / "r_thumbs" / name).write_text("keep me")
    (tmp_path / "r_thumbs" / "sub").mkdir()
    _report_with(tmp_path, 2)
    assert _thumbs(tmp_path) == sorted(_ours(2) + mine + ["sub", THUMBS_MANIFEST])
    assert all((tmp_path / "r_thumbs" / name).read_text() == "keep me" for name in mine)
    listed = json.loads((tmp_path / "r_thumbs" / THUMBS_MANIFEST).read_text())
    assert listed["files"] == _ours(2) and listed["report"] == "r.html"


def test_thumbnails_of_a_killed_run_are_listed_before_written_and_cleaned_next_time(tmp_path):
    _report_with(tmp_path, 3, write=False)  # killed: no page, no final manifest
    claimed = json.loads((tmp_path / "r_thumbs" / THUMBS_MANIFEST).read_text())["files"]
    assert set(_ours(3)) <= set(claimed)
    _report_with(tmp_path, 1)
    assert _thumbs(tmp_path) == sorted(_ours(1) + [THUMBS_MANIFEST])


@pytest.mark.parametrize("manifest", ["not json", '{"files": "000001.jpg"}', "[1, 2]",
                                      '{"files": ["../r.html", "notes.txt", "000001.jpg/", "/tmp/000001.jpg"]}'])
def test_a_broken_or_edited_manifest_removes_nothing_but_thumbnail_names(tmp_path, manifest):
    thumbs = tmp_path / "r_thumbs"
    thumbs.mkdir()
    (thumbs / THUMBS_MANIFEST).write_text(manifest)
    for name in ("notes.txt", "000001.jpg"):
        (thumbs / name).write_text("keep me")
    (tmp_path / "r.html").write_text("earlier page")
    _report_with(tmp_path, 0)
    assert _thumbs(tmp_path) == sorted(["000001.jpg", THUMBS_MANIFEST, "notes.txt"])


def test_a_partial_report_says_so_at_the_top(tmp_path):
    rep = _report_with(tmp_path, 2, write=False)
    rep.write({"folder": "f", "card": {}}, partial="interrupted after 2 of 9 file(s); <b>r.csv</b> was not written")
    page = (tmp_path / "r.html").read_text()
    banner = re.search(r'<p class="warn partial" id="partial">(.*?)</p>', page, re.S).group(1)
    assert "interrupted after 2 of 9 file(s); &lt;b&gt;r.csv&lt;/b&gt; was not written" in banner
    assert "covers the rows done" in banner and "<title>partial cxr-score report: f</title>" in page
    _report_with(tmp_path, 2)
    assert 'id="partial"' not in (tmp_path / "r.html").read_text()


def test_an_old_thumbnail_that_cannot_be_removed_stays_listed_and_the_page_is_written(tmp_path, monkeypatch, caplog):
    _report_with(tmp_path, 3)
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self.name == "000002.jpg":
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    (tmp_path / "r.html").unlink()
    _report_with(tmp_path, 1)
    assert (tmp_path / "r.html").is_file() and "could not remove the old thumbnail" in caplog.text
    assert _thumbs(tmp_path) == sorted(_ours(1) + ["000002.jpg", THUMBS_MANIFEST])
    listed = json.loads((tmp_path / "r_thumbs" / THUMBS_MANIFEST).read_text())["files"]
    assert listed == sorted(_ours(1) + ["000002.jpg"])  # tried again next time

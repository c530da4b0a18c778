"""`cxr-score --report report.html`: one self-contained HTML file, and a folder of thumbnails beside it.

The page loads nothing from the network and runs only its own script: a Content-Security-Policy meta tag allows
images from beside the page and exactly the style sheet and script whose SHA-256 it names. Everything a file name
can reach is escaped: the run summary is escaped here, the rows travel in a JSON block (with <, > and & written as
\\u escapes so it cannot close its element) that the script parses with JSON.parse and puts on the page with
textContent. The page shows a few dozen cards at a time, so a folder of thousands of files stays responsive, and the
HTML grows by about a hundred bytes per file: the images are the thumbnails folder's.

A rerun into the same report leaves only its own thumbnails: the folder's `.cxr-thumbs.json` lists the files the
report wrote (claimed in chunks before they are written, so a killed run's are listed too), and the next report
removes those it did not write again, and nothing else. A run stopped by Ctrl-C or SIGTERM still writes the page for
the rows done, marked as partial (`write(..., partial=...)`).

Memory: one small dict per row (no pixels); thumbnails are written as the overlays are drawn.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import os
import re
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import cv2
import numpy as np

from cxr.runtime.overlay import overlay_relpath, write_image_atomic
from cxr.runtime.report_assets import CSS, JS
from cxr.runtime.results import write_json_atomic

logger = logging.getLogger(__name__)

THUMB_SIDE = 192  # the radiograph's thumbnail, longest side in pixels
OVERLAY_THUMB_SIDE = 384  # the overlay shown on the card (twice the card's size, for zoom and high-DPI screens)
JPEG_QUALITY = 82
PAGE_SIZE = 48
ROC_POINTS = 400  # at most this many points of the ROC curve are drawn
THUMBS_MANIFEST = ".cxr-thumbs.json"  # in the thumbnails folder: the files the report wrote there
CLAIM_CHUNK = 256  # thumbnails are listed in the manifest this many rows ahead of being written
_THUMB_NAME = re.compile(r"[0-9]{6}o?\.jpg")  # the only names ever removed, whatever the manifest says
_CONTROL = {c: f"\\u{c:04x}" for c in list(range(0x20)) + list(range(0x7F, 0xA0))
            + [0x61C, 0x200E, 0x200F, 0x2028, 0x2029] + list(range(0x202A, 0x202F)) + list(range(0x2066, 0x206A))}


def thumbs_dir_for(report: Path) -> Path:
    """report.html -> report_thumbs/ beside it."""
    return report.with_name(report.stem + "_thumbs")


def shown(text: Any) -> str:
    """Text for HTML: control and bidi characters as \\uXXXX, undecodable bytes as \\xNN, then HTML-escaped."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(text.translate(_CONTROL), quote=True)


def script_json(data: Any) -> str:
    """JSON safe inside <script type="application/json">: ASCII only, and no <, > or & that could end the block."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def content_security_policy() -> str:
    """Nothing from anywhere, except images from beside the page and this module's own style sheet and script."""
    return (f"default-src 'none'; img-src 'self'; style-src {csp_hash(CSS)}; script-src {csp_hash(JS)}; "
            "base-uri 'none'; form-action 'none'")


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n (NaN, NaN when n == 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _url(path: Path, start: Path) -> str:
    """A relative URL from folder `start` to `path`, every segment percent-encoded (so `javascript:` stays a name)."""
    rel = os.path.relpath(path, start)
    encoded = "/".join(quote(os.fsencode(part), safe="") for part in Path(rel).parts)
    return encoded if encoded.startswith("../") else "./" + encoded


class Report:
    """Collects one small dict per row and the thumbnails; `write(manifest, roc)` publishes the page atomically.

    Creating it creates the thumbnails folder (an OSError there fails before any scoring)."""

    def __init__(self, path: Path, *, folder: Path, overlays_dir: Path | None, labels: bool, anatomy: bool,
                 masks: bool):
        self.path = Path(path)
        self.folder = Path(folder)
        self.thumbs = thumbs_dir_for(self.path)
        if self.thumbs.is_symlink():
            raise OSError(f"{self.thumbs} is a symlink; the report's thumbnails are written only into a real folder")
        self.thumbs.mkdir(exist_ok=True)
        self.overlays_dir = overlays_dir
        self.labels, self.anatomy, self.masks = labels, anatomy, masks
        self.rows: list[dict[str, Any]] = []
        self._earlier = read_thumbs_manifest(self.thumbs)  # what earlier reports wrote here
        self._claimed = set(self._earlier)
        self._written: set[str] = set()
        self._lock = threading.Lock()

    def add(self, row, label: int | None) -> int:
        """Keep what the page shows of `row`; its index (the thumbnails' name)."""
        i = len(self.rows)
        ok = row.ok
        item = {"i": i, "p": row.path, "s": row.status, "pr": round(row.probability, 6) if ok else None,
                "c": int(row.label_pred) if ok else None, "y": label, "img": 0,
                "e": "" if ok else f"{row.error_code}: {row.error_message}"}
        if self.anatomy:
            item["ctr"] = None if row.ctr is None else round(row.ctr, 4)
            item["f"] = row.ctr_flag
        if ok and self.overlays_dir is not None:
            item["o"] = _url(self.overlays_dir / overlay_relpath(row.path, self.folder), self.path.parent)
        self.rows.append(item)
        return i

    def on_drawn(self, index: int, gray: np.ndarray, drawing: np.ndarray) -> None:
        """Write row `index`'s two thumbnails (called from the overlay threads)."""
        params = (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY)
        names = _thumb_names(index)
        with self._lock:
            if not self._claimed.issuperset(names):  # listed before written: a killed run's are cleaned next time
                self._claimed.update(n for i in range(index, index + CLAIM_CHUNK) for n in _thumb_names(i))
                self._save_manifest(self._claimed)
        write_image_atomic(self.thumbs / names[0], _shrink(gray, THUMB_SIDE), params)
        write_image_atomic(self.thumbs / names[1], _shrink(drawing, OVERLAY_THUMB_SIDE), params)
        with self._lock:
            self._written.update(names)
        self.rows[index]["img"] = 1

    def _save_manifest(self, names: set[str]) -> None:
        write_json_atomic(self.thumbs / THUMBS_MANIFEST, {"written_by": "cxr-score --report", "report": self.path.name,
                                                           "files": sorted(names)})

    def remove_stale(self) -> list[str]:
        """Remove the thumbnails earlier reports wrote here that this one did not write again; list those removed.
        Files the report never wrote are left alone; one that cannot be removed stays listed (a warning)."""
        with self._lock:
            removed, kept = [], set()
            for name in sorted(self._earlier - self._written):
                target = self.thumbs / name
                try:
                    if os.path.lexists(target) and not target.is_dir():
                        target.unlink()
                        removed.append(name)
                except OSError as exc:
                    logger.warning("could not remove the old thumbnail %s: %s", target, exc.strerror or exc)
                    kept.add(name)
            self._earlier = kept
            self._claimed = self._written | kept
            self._save_manifest(self._claimed)
        return removed

    def write(self, manifest: Mapping[str, Any], roc: tuple[Sequence[float], Sequence[float]] | None = None, *,
              partial: str | None = None) -> Path:
        """The page, from the run's manifest (cxr.runtime.results.build_manifest) and (fpr, tpr) when labelled, then
        the earlier reports' thumbnails this one did not rewrite are removed. `partial`: why the run stopped early,
        shown at the top of the page (its figures cover the rows done only)."""
        data = {"rows": [{k: (v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v)
                          for k, v in r.items()} for r in self.rows],
                "thumbs": self.thumbs.name, "labels": self.labels, "ctr": self.anatomy, "masks": self.masks,
                "page_size": PAGE_SIZE}
        banner = "" if partial is None else (
            f"<p class=\"warn partial\" id=\"partial\"><strong>Partial report:</strong> {shown(partial)}. Every "
            "count, figure and image below covers the rows done before the run stopped.</p>")
        title = ("partial " if partial is not None else "") + f"cxr-score report: {manifest.get('folder', '')}"
        page = _PAGE.format(csp=html.escape(content_security_policy(), quote=False), css=CSS, js=JS,
                            data=script_json(data), title=shown(title), partial=banner,
                            summary=_summary(manifest), labels=_labels_section(manifest.get("labels"), roc))
        from cxr.runtime.atomic import write_text_atomic

        write_text_atomic(self.path, page)
        stale = self.remove_stale()
        if stale:
            logger.info("removed %d thumbnail(s) of an earlier report from %s", len(stale), self.thumbs)
        return self.path


def _thumb_names(index: int) -> tuple[str, str]:
    """Row `index`'s thumbnails: the radiograph and the overlay."""
    return f"{index:06d}.jpg", f"{index:06d}o.jpg"


def read_thumbs_manifest(thumbs: Path) -> set[str]:
    """The thumbnail names an earlier report listed in `thumbs` (empty when none, or unreadable: then nothing is
    removed). Only names of the report's own pattern count, so an edited manifest cannot remove other files."""
    path = thumbs / THUMBS_MANIFEST
    if not path.is_file():
        return set()
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("%s is unreadable (%s): no earlier thumbnail is removed", path, exc)
        return set()
    return {f for f in files if isinstance(f, str) and _THUMB_NAME.fullmatch(f)} if isinstance(files, list) else set()


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _kv(pairs: Sequence[tuple[str, Any]]) -> str:
    return ("<table class=\"kv\">" + "".join(f"<tr><th>{shown(k)}</th><td>{shown(v)}</td></tr>" for k, v in pairs)
            + "</table>")


def _summary(m: Mapping[str, Any]) -> str:
    card, counts, thr = m.get("card", {}), m.get("counts", {}), m.get("threshold", {})
    model, device, timings = m.get("model", {}), m.get("device", {}), m.get("timings", {})
    card_thr = card.get("threshold", {})
    source = ("the model card: " + f"{card_thr.get('method', '')} {card_thr.get('detail', '')}".strip()
              if thr.get("source") == "card" else f"{thr.get('source')} (the card's is {card_thr.get('value')})")
    codes = ", ".join(f"{c} {n}" for c, n in counts.get("by_error_code", {}).items())
    extras = [o for o in card.get("outputs", []) if o not in ("logit", "probability")]
    training = card.get("training", {})
    run = [("folder", m.get("folder")), ("model", model.get("path")), ("sha256", model.get("sha256")),
           ("started", m.get("started")),
           ("device", f"{device.get('used')} ({', '.join(device.get('providers', []))})"),
           ("threshold", f"{_fmt(thr.get('value'), 4)} from {source}"),
           ("files", f"{counts.get('files')}: {counts.get('ok')} ok, {counts.get('error')} error"
            + (f" ({codes})" if codes else "")),
           ("speed", f"{timings.get('images_per_s')} images/s")]
    shift = m.get("shift_average")
    if shift:
        run.append(("probability", f"mean of {shift.get('drawings')} drawings, the film moved by "
                                   f"{shift.get('pixels')} px (--shift-average)"))
    if counts.get("ctr_flags"):
        run.append(("implausible masks", ", ".join(f"{k} {n}" for k, n in counts["ctr_flags"].items())))
    model_rows = [("task", f"{card.get('task')} (positive: {card.get('positive_label')})"),
                  ("input", f"{card.get('input_size')} x {card.get('input_size')}"),
                  ("decision", (card.get("decision") or {}).get("mode", "classifier")),
                  ("optional outputs", ", ".join(extras) or "none"),
                  ("trained on", _training_data(training.get("data"))),
                  ("exported", f"opset {card.get('export', {}).get('opset')}")]
    note = "" if "cam" in extras else (
        "<p class=\"warn\">This model has no activation map output (exported before cxr 0.2): the overlays show the "
        "radiograph only.</p>")
    return (f"<div class=\"summary\"><div><h2>Run</h2>{_kv(run)}</div><div><h2>Model</h2>{_kv(model_rows)}</div>"
            f"</div>{note}")


def _training_data(data: Any) -> str:
    """A line for the card's training data: its sources and split sizes, not the whole record."""
    if data is None:
        return "not recorded"
    if not isinstance(data, Mapping):
        text = str(data)
        return text if len(text) <= 200 else text[:197] + "..."
    listed = data.get("data_sources")
    sources = [s.get("name") or s.get("kind") or "?" for s in (listed if isinstance(listed, list) else [])
               if isinstance(s, Mapping)]
    sizes = ", ".join(f"{k[2:]} {data[k]}" for k in ("n_train", "n_val", "n_test") if k in data)
    return "; ".join(filter(None, [", ".join(map(str, sources)) or str(data.get("kind", "")), sizes])) or "recorded"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _labels_section(report: Mapping[str, Any] | None, roc) -> str:
    if report is None:
        return ""
    counts = (f"{report['matched']} matched, {report['labelled_not_found']} labelled but not found, "
              f"{report['labelled_not_scored']} labelled but failed, {report['scored_without_label']} scored "
              f"without a label, {report['ignored_lines']} label line(s) ignored"
              + (f", {report['labelled_not_reached']} labelled but not reached before the run stopped"
                 if "labelled_not_reached" in report else ""))
    head = f"<h2>Against the labels</h2><p class=\"note\">{shown(report['file'])}: {shown(counts)}</p>"
    m = report.get("metrics")
    if m is None:
        return head + "<p>No scored file has a label: no metrics.</p>"
    lo, hi = m["auroc_ci95"]
    rows = [("AUROC", _fmt(m["auroc"]), f"{_fmt(lo)} to {_fmt(hi)} (bootstrap)"),
            ("AUPRC", _fmt(m["auprc"]), "")]
    for name, k, n in (("sensitivity", m["tp"], m["tp"] + m["fn"]), ("specificity", m["tn"], m["tn"] + m["fp"]),
                       ("PPV", m["tp"], m["tp"] + m["fp"]), ("NPV", m["tn"], m["tn"] + m["fn"]),
                       ("accuracy", m["tp"] + m["tn"], m["n"])):
        a, b = wilson(k, n)
        rows.append((name, _fmt(k / n if n else math.nan), f"{_fmt(a)} to {_fmt(b)} (Wilson; {k}/{n})"))
    rows.append(("F1", _fmt(m["f1"]), ""))
    table = ("<table class=\"metrics\"><tr><th>metric</th><th>value</th><th>95% interval</th></tr>"
             + "".join(f"<tr><td>{shown(a)}</td><td>{shown(b)}</td><td>{shown(c)}</td></tr>" for a, b, c in rows)
             + "</table>")
    confusion = (f"<p class=\"note\">n={m['n']} ({m['n_positive']} positive); at threshold {m['threshold']:g}: "
                 f"TP {m['tp']}, FP {m['fp']}, TN {m['tn']}, FN {m['fn']}</p>")
    svg = roc_svg(roc[0], roc[1], (1 - m["specificity"], m["sensitivity"]), m["auroc"]) if roc is not None else ""
    return (head + f"<div class=\"summary\"><div>{svg}</div><div>{table}{confusion}</div></div>"
            + _ratio_section(report.get("ctr_agreement")) + _groups_section(report.get("groups")))


def _groups_section(report: Mapping[str, Any] | None) -> str:
    """cxr-score --group-column: one table row per group (the group's value and the column's name shown as text)."""
    if report is None:
        return ""
    rows = []
    ratios = any("ctr_agreement" in g for g in report["groups"])
    for g in report["groups"]:
        lo, hi = g["auroc_ci95"]
        defined = g["auroc"] is not None and math.isfinite(g["auroc"])  # NaN, or null from JSON: one class
        auroc = f"{_fmt(g['auroc'])} ({_fmt(lo)} to {_fmt(hi)})" if defined else "n/a (one class)"
        failed = "".join(f"; {g[k]} {what}" for k, what in (("failed", "failed"), ("not_reached", "not reached"))
                         if g.get(k))
        cells = [f"{g['n']} ({g['n_positive']}){failed}", auroc, _fmt(g["sensitivity"]), _fmt(g["specificity"])]
        if ratios:
            a = g["ctr_agreement"]
            cells.append(f"{_fmt(a['mae'])} ({_fmt(100 * a['within_close'], 0)}% within {a['close']:g}; "
                         f"{a['n']} films)" if a["n"] else "n/a")
        name = shown(g["group"]) if g["group"] else "<em>blank</em>"  # never mistaken for a value '(blank)'
        rows.append(f"<tr><td>{name}</td>" + "".join(f"<td>{shown(c)}</td>" for c in cells) + "</tr>")
    head = ["group", "films (positive)", "AUROC (95% CI)", "sensitivity", "specificity"] + (
        ["ctr error vs manual"] if ratios else [])
    return (f"<h3>By {shown(report['column'])}</h3><table class=\"metrics\"><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def _ratio_section(a: Mapping[str, Any] | None) -> str:
    """cxr-score --ctr-column: the ctr column against the manual ratios, one paragraph (numbers and the column's
    name, shown as text)."""
    if a is None:
        return ""
    if not a["n"]:
        text = f"No film with a manual ratio in column {a['column']!r} has a ctr."
    else:
        lo, hi = a["mae_ci95"]
        text = (f"The ctr column against the manual ratios in column {a['column']!r}, {a['n']} films: mean absolute "
                f"error {_fmt(a['mae'])} (95% CI {_fmt(lo)} to {_fmt(hi)}), {_fmt(100 * a['within_close'], 0)}% "
                f"within {a['close']:g}, bias {_fmt(a['bias'])}, Pearson r {_fmt(a['pearson_r'], 2)}, slope "
                f"{_fmt(a['slope'], 2)}; {a['unflagged']['n']} without a ctr_flag: {_fmt(a['unflagged']['mae'])}; "
                f"{a['not_measured']} not measurable, {a['not_scored']} failed."
                + (" It does not follow the manual ratios: do not use it at this site." if a["follows"] is False
                   else ""))
    return f"<h3>Cardiothoracic ratio</h3><p class=\"note\">{shown(text)}</p>"


def roc_svg(fpr: Sequence[float], tpr: Sequence[float], point: tuple[float, float] | None = None,
            auroc: float | None = None, size: int = 300) -> str:
    """The ROC curve as inline SVG (numbers only; nothing from a file name)."""
    fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
    if fpr.size > ROC_POINTS:  # keep the shape: evenly spaced points plus both ends
        keep = np.unique(np.r_[np.linspace(0, fpr.size - 1, ROC_POINTS).astype(int), fpr.size - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    pad, span = 40, size - 50

    def xy(x: float, y: float) -> str:
        return f"{pad + x * span:.1f},{10 + (1 - y) * span:.1f}"

    pts = " ".join(xy(x, y) for x, y in zip(fpr, tpr))
    ticks = "".join(f"<text x=\"{pad + t * span:.0f}\" y=\"{size - 22}\" text-anchor=\"middle\">{t:g}</text>"
                    f"<text x=\"{pad - 6}\" y=\"{14 + (1 - t) * span:.0f}\" text-anchor=\"end\">{t:g}</text>"
                    for t in (0, 0.5, 1))
    op = ""
    if point is not None and all(math.isfinite(v) for v in point):
        op = f"<circle class=\"op\" cx=\"{xy(*point).split(',')[0]}\" cy=\"{xy(*point).split(',')[1]}\" r=\"4\"/>"
    title = f"ROC curve, AUROC {_fmt(auroc)}" if auroc is not None else "ROC curve"
    return (f"<svg class=\"roc\" width=\"{size}\" height=\"{size}\" viewBox=\"0 0 {size} {size}\" role=\"img\" "
            f"aria-label=\"{title}\"><title>{title}</title>"
            f"<line class=\"axis\" x1=\"{pad}\" y1=\"{10 + span}\" x2=\"{pad + span}\" y2=\"{10 + span}\"/>"
            f"<line class=\"axis\" x1=\"{pad}\" y1=\"10\" x2=\"{pad}\" y2=\"{10 + span}\"/>"
            f"<line class=\"chance\" x1=\"{pad}\" y1=\"{10 + span}\" x2=\"{pad + span}\" y2=\"10\"/>"
            f"<polyline class=\"curve\" points=\"{pts}\"/>{op}{ticks}"
            f"<text x=\"{pad + span / 2:.0f}\" y=\"{size - 6}\" text-anchor=\"middle\">1 - specificity</text>"
            f"<text x=\"12\" y=\"{10 + span / 2:.0f}\" text-anchor=\"middle\" "
            f"transform=\"rotate(-90 12 {10 + span / 2:.0f})\">sensitivity</text>"
            f"<text x=\"{pad + span - 4}\" y=\"{10 + span - 8}\" text-anchor=\"end\">{title}</text></svg>")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>cxr-score report</h1>
{partial}
<p class="note">Research software, not a medical device. Overlays: the model's class activation map (red: where the
positive evidence is strongest, relative to each image's own maximum); where the model has masks, the heart (magenta)
and lung (cyan) contours, the heart's width (yellow) and the widest row of the lungs (green) whose ratio is the CTR.</p>
{summary}
{labels}
<section id="images">
<h2>Images</h2>
<noscript><p class="warn">The image list needs JavaScript (this page's own script only).</p></noscript>
<div id="controls" class="controls hidden">
<label>show <select id="filter">
<option value="all">all files</option><option value="pos">called positive</option>
<option value="neg">called negative</option><option value="err">errors</option>
<option value="fp">false positives (labels)</option><option value="fn">false negatives (labels)</option>
</select></label>
<label>order <select id="order">
<option value="path">by path</option><option value="desc">probability, highest first</option>
<option value="asc">probability, lowest first</option>
</select></label>
<label>path contains <input id="search" type="search" size="24"></label>
<span id="count" class="note"></span>
</div>
<div id="pager-top" class="pager"></div>
<div id="cards" class="grid"></div>
<div id="pager" class="pager"></div>
</section>
<section id="errors" class="hidden">
<h2>Files that could not be scored</h2>
<table class="errors"><thead><tr><th>path</th><th>reason</th></tr></thead><tbody id="errors-body"></tbody></table>
<div id="errors-pager" class="pager"></div>
</section>
<script type="application/json" id="cxr-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""

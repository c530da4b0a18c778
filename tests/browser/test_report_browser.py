"""The HTML report in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright, never a
downloaded browser) opens a report of a folder with good, broken and hostile-named files and checks that the cards and
an overlay show, that filtering and sorting work, that file names appear as text, and that nothing else ran: no
console errors, no dialogs, no CSP violations.

Skips, saying why, where Chromium or the playwright package is absent (`apt-get install chromium`,
`pip install playwright`).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from tests.runtime.test_overlay_fixtures import HOSTILE_NAMES, review  # noqa: E402,F401

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture()
def browser_page(tmp_path):
    """A Playwright page in a fresh Chromium profile; collects console messages, page errors and dialogs."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                               "(pip install playwright; no browser download needed)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.seen = {"console": [], "errors": [], "dialogs": []}
        page.on("console", lambda m: page.seen["console"].append((m.type, m.text)))
        page.on("pageerror", lambda e: page.seen["errors"].append(str(e)))

        def dialog(d):
            page.seen["dialogs"].append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        try:
            yield page
        finally:
            context.close()


@pytest.fixture()
def report(review, tmp_path):
    """(report path, names by kind, labels by path) for a labelled run over the review folder."""
    from cxr.cli.score import main

    model, folder, names = review
    ok = names["good"] + names["hostile"]
    labels = {rel: i % 2 for i, rel in enumerate(ok)}
    with open(tmp_path / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("path", "label"), *labels.items()])
    result = CliRunner().invoke(main, [str(folder), "--out", str(tmp_path / "r.csv"), "--model", str(model),
                                       "--device", "cpu", "--labels", str(tmp_path / "labels.csv"),
                                       "--overlays", str(tmp_path / "o"), "--report", str(tmp_path / "r.html")],
                                catch_exceptions=False)
    assert result.exit_code == 3, result.output
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as fh:
        calls = {r["path"]: r["cardiomegaly"] for r in csv.DictReader(fh)}
    return tmp_path / "r.html", names, labels, calls


def shown_cards(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#cards .card", "cs => cs.map(c => ({cls: c.className, name: c.querySelector('.name').textContent, "
                        "text: c.textContent, visible: c.offsetParent !== null}))")


def choose(page, select: str, value: str) -> list[dict]:
    page.select_option(select, value)
    return shown_cards(page)


def test_report_renders_filters_and_runs_nothing_from_names(browser_page, report):
    page = browser_page
    path, names, labels, calls = report
    page.goto(path.as_uri())
    page.wait_for_selector("#cards .card")
    title = page.title()
    total = len(names["good"] + names["hostile"] + names["bad"])

    cards = shown_cards(page)
    assert len(cards) == total and all(c["visible"] for c in cards)  # 23 files: one page
    assert page.is_visible("svg.roc") and page.is_visible("table.metrics")
    page.wait_for_function("() => [...document.querySelectorAll('#cards img')].some("
                           "i => i.complete && i.naturalWidth > 0 && i.alt.startsWith('overlay'))")
    overlay = page.query_selector("#cards a img[alt^='overlay']")
    assert overlay.is_visible() and overlay.bounding_box()["width"] > 50

    shown_names = {c["name"] for c in cards}
    assert "<script>document.title='pwned'<script>.png" in shown_names  # shown as text, literally
    assert "q</script><script>alert(1)<script>.png" in shown_names
    assert "ctrl\\u0001\\u001b[31mname\\u007f.png" in shown_names  # control characters made visible
    assert "new\\u000aline.png" in shown_names and "\\u202egnp.evil.png" in shown_names
    assert page.eval_on_selector_all("#errors-body tr", "rs => rs.length") == len(names["bad"])

    errors = choose(page, "#filter", "err")
    assert sorted(c["name"] for c in errors) == names["bad"] and all("err" in c["cls"] for c in errors)
    positives = choose(page, "#filter", "pos")
    assert len(positives) == sum(v == "1" for v in calls.values()) > 0
    assert all(" pos" in c["cls"] for c in positives)
    negatives = choose(page, "#filter", "neg")
    assert len(negatives) == sum(v == "0" for v in calls.values()) > 0
    false_pos = choose(page, "#filter", "fp")
    expected_fp = sorted(p for p, y in labels.items() if y == 0 and calls[p] == "1")
    assert expected_fp and sorted(c["name"] for c in false_pos) == sorted(
        next(n for n in shown_names if n == p or n.replace("\\u000a", "\n") == p) for p in expected_fp)
    assert all("FP" in c["text"] for c in false_pos)
    false_neg = choose(page, "#filter", "fn")
    assert all("FN" in c["text"] for c in false_neg)

    page.select_option("#filter", "all")
    ordered = page.eval_on_selector_all("#cards .card", "cs => cs.map(c => c.textContent)")
    choose(page, "#order", "desc")
    probs = page.eval_on_selector_all(
        "#cards .card.pos, #cards .card.neg",
        "cs => cs.map(c => parseFloat(c.querySelector('.fact b').textContent))")
    assert probs == sorted(probs, reverse=True) and len(probs) == total - len(names["bad"])
    assert page.eval_on_selector_all("#cards .card", "cs => cs.map(c => c.textContent)") != ordered

    page.fill("#search", "javascript")
    assert [c["name"] for c in shown_cards(page)] == ["javascript:alert(1).png"]
    page.fill("#search", "")

    assert page.title() == title and "pwned" not in title
    assert page.seen["dialogs"] == [] and page.seen["errors"] == []
    assert [m for m in page.seen["console"] if m[0] in ("error", "warning")] == []
    shot = page.screenshot()
    assert len(shot) > 20_000  # a page with images, not a blank one


def test_pagination_keeps_a_page_of_cards(browser_page, tmp_path):
    """Thousands of rows: one page of cards in the DOM, the pager moves through them."""
    import json
    import re

    from cxr.runtime.report import PAGE_SIZE, Report
    from cxr.runtime.scoring import ScoreRow

    rep = Report(tmp_path / "big.html", folder=tmp_path, overlays_dir=None, labels=False, anatomy=False,
                 masks=False)
    n = 5000
    for i in range(n):
        rep.add(ScoreRow(f"img{i:05d}.png", "ok", probability=(i % 997) / 997, logit=0.0,
                         label_pred=int((i % 997) / 997 >= 0.5)), None)
    rep.write({"folder": "big", "card": {"outputs": ["logit", "probability"]}})
    page = browser_page
    page.goto((tmp_path / "big.html").as_uri())
    page.wait_for_selector("#cards .card")
    assert page.eval_on_selector_all("#cards .card", "cs => cs.length") == PAGE_SIZE
    page.click("#pager button:has-text('next')")
    first = page.eval_on_selector("#cards .card .name", "e => e.textContent")
    assert first == f"img{PAGE_SIZE:05d}.png"
    assert re.search(r"page 2 of %d" % -(-n // PAGE_SIZE), page.text_content("#pager"))
    assert page.seen["errors"] == [] and [m for m in page.seen["console"] if m[0] == "error"] == []
    assert json.loads(page.text_content("#cxr-data"))["rows"][-1]["p"] == f"img{n - 1:05d}.png"

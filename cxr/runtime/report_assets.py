"""The style sheet and the one script of the HTML report, kept as Python strings so they ship with the package and
their SHA-256 hashes can be written into the report's Content-Security-Policy (which then runs nothing else).

The script reads the rows from a JSON block (`JSON.parse`, never eval), builds every element with createElement and
puts file names in with `textContent` only (never innerHTML), and shows control and bidi characters as \\uXXXX.
"""

CSS = ("""
:root { --ok: #1b7f3b; --pos: #b3261e; --err: #7a5b00; --muted: #5f6368; --line: #d7d9dd; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 16px 24px; color: #1f1f1f; background: #fafafa; }
h1 { font-size: 22px; margin: 4px 0 12px; } h2 { font-size: 17px; margin: 22px 0 8px; }
.note { color: var(--muted); } .warn { color: var(--err); }
.summary { display: flex; flex-wrap: wrap; gap: 16px 32px; align-items: flex-start; }
table.kv, table.metrics, table.errors { border-collapse: collapse; }
table.kv th, table.kv td, table.metrics th, table.metrics td, table.errors th, table.errors td {
  text-align: left; padding: 3px 10px 3px 0; vertical-align: top; border-bottom: 1px solid var(--line); }
table.kv th, table.metrics th { color: var(--muted); font-weight: 600; }
table.errors td.path, .name { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
  overflow-wrap: anywhere; white-space: pre-wrap; }
svg.roc { background: #fff; border: 1px solid var(--line); }
svg.roc .curve { fill: none; stroke: #1a73e8; stroke-width: 2; }
svg.roc .chance { stroke: #9aa0a6; stroke-dasharray: 4 4; }
svg.roc .axis { stroke: #5f6368; } svg.roc text { font-size: 11px; fill: #3c4043; }
svg.roc .op { fill: #b3261e; }
.controls { position: sticky; top: 0; background: #fafafa; padding: 8px 0; z-index: 2; display: flex;
  flex-wrap: wrap; gap: 8px 16px; align-items: center; border-bottom: 1px solid var(--line); }
.controls label { display: inline-flex; gap: 6px; align-items: center; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 12px; margin-top: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-left: 5px solid var(--ok); border-radius: 6px;
  padding: 8px; }
.card.pos { border-left-color: var(--pos); } .card.err { border-left-color: var(--err); }
.imgs { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }
.imgs img { width: 100%; height: 160px; object-fit: contain; background: #000; display: block; }
.noimg { height: 160px; display: flex; align-items: center; justify-content: center; background: #eee;
  color: var(--muted); font-size: 12px; text-align: center; }
.facts { display: flex; flex-wrap: wrap; gap: 2px 12px; margin-top: 6px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; font-weight: 600; """
"""background: #e8eaed; }
.badge.FP, .badge.FN { background: #fce8e6; color: var(--pos); } """
""".badge.TP, .badge.TN { background: #e6f4ea; color: var(--ok); }
.pager { display: flex; gap: 8px; align-items: center; margin: 12px 0; }
button, select, input { font: inherit; }
.hidden { display: none; }
""")

JS = (r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("cxr-data").textContent);
  var rows = data.rows, PAGE = data.page_size || 48;
  var state = { filter: "all", order: "path", q: "", page: 0, errPage: 0 };
  function $(id) { return document.getElementById(id); }
  var SHOWN = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
  function visible(text) {
    return String(text).replace(SHOWN, function (c) {
      return "\\u" + ("000" + c.charCodeAt(0).toString(16)).slice(-4);
    });
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }
  function pad(i) { var s = String(i); while (s.length < 6) { s = "0" + s; } return s; }
  function thumb(i, kind) { return encodeURIComponent(data.thumbs) + "/" + pad(i) + kind + ".jpg"; }
  function outcome(r) {
    if (r.s !== "ok" || r.y === null || r.y === undefined) { return ""; }
    return r.c ? (r.y ? "TP" : "FP") : (r.y ? "FN" : "TN");
  }
  var FILTERS = {
    all: function () { return true; },
    pos: function (r) { return r.s === "ok" && r.c === 1; },
    neg: function (r) { return r.s === "ok" && r.c === 0; },
    err: function (r) { return r.s !== "ok"; },
    fp: function (r) { return outcome(r) === "FP"; },
    fn: function (r) { return outcome(r) === "FN"; }
  };
  function selected() {
    var keep = FILTERS[state.filter] || FILTERS.all, q = state.q.toLowerCase();
    var out = rows.filter(function (r) { return keep(r) && (!q || r.p.toLowerCase().indexOf(q) >= 0); });
    if (state.order !== "path") {
      var sign = state.order === "desc" ? -1 : 1;
      out.sort(function (a, b) {
        if (a.pr === null || b.pr === null) { return (a.pr === null) - (b.pr === null); }
        return sign * (a.pr - b.pr);
      });
    }
    return out;
  }
  function fact(box, name, value) {
    var f = el("span", "fact");
    f.appendChild(el("span", "note", name + " "));
    f.appendChild(el("b", null, value));
    box.appendChild(f);
  }
  function image(r, kind, alt) {
    if (!r.img) { return el("div", "noimg", "no image (see the run's warnings)"); }
    var img = el("img");
    img.loading = "lazy"; img.decoding = "async"; img.alt = alt; img.src = thumb(r.i, kind);
    if (kind !== "o") { return img; }
    var a = el("a");
    a.href = r.o || thumb(r.i, kind);
    a.title = "open the overlay";
    a.appendChild(img);
    return a;
  }
  function card(r) {
    var call = r.s === "ok" ? (r.c ? "pos" : "neg") : "err";
    var c = el("article", "card " + call);
    c.setAttribute("data-i", String(r.i));
    if (r.s === "ok") {
      var imgs = el("div", "imgs");
      imgs.appendChild(image(r, "", "radiograph"));
      imgs.appendChild(image(r, "o", "overlay: activation map" + (data.masks ? ", heart and lung contours" : "")));
      c.appendChild(imgs);
    }
    c.appendChild(el("div", "name", visible(r.p)));
    var facts = el("div", "facts");
    if (r.s === "ok") {
      fact(facts, "p", r.pr.toFixed(3));
      fact(facts, "call", r.c ? "cardiomegaly" : "no cardiomegaly");
    } else {
      fact(facts, "error", visible(r.e));
    }
    if (data.ctr && r.s === "ok") { fact(facts, "CTR", r.ctr === null ? "n/a" : """
r"""r.ctr.toFixed(2) + (r.f ? " (" + r.f + ")" : "")); }
    if (data.labels) { fact(facts, "label", r.y === null ? "none" : String(r.y)); }
    var o = outcome(r);
    if (o) { facts.appendChild(el("span", "badge " + o, o)); }
    c.appendChild(facts);
    return c;
  }
  function pager(box, page, pages, total, what, go) {
    box.textContent = "";
    var prev = el("button", null, "previous"), next = el("button", null, "next");
    prev.type = next.type = "button";
    prev.disabled = page <= 0; next.disabled = page >= pages - 1;
    prev.addEventListener("click", function () { go(page - 1); });
    next.addEventListener("click", function () { go(page + 1); });
    box.appendChild(prev);
    box.appendChild(el("span", "pageinfo", "page " + (pages ? page + 1 : 0) + " of " + """
r"""pages + " (" + total + " " + what + ")"));
    box.appendChild(next);
  }
  function render() {
    var list = selected(), pages = Math.ceil(list.length / PAGE);
    state.page = Math.max(0, Math.min(state.page, pages - 1));
    var grid = $("cards");
    grid.textContent = "";
    var frag = document.createDocumentFragment();
    list.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (r) { frag.appendChild(card(r)); });
    grid.appendChild(frag);
    $("count").textContent = list.length + " of " + rows.length + " file(s)";
    var go = function (p) { state.page = p; render(); window.scrollTo(0, $("images").offsetTop); };
    pager($("pager-top"), state.page, pages, list.length, "shown", go);
    pager($("pager"), state.page, pages, list.length, "shown", go);
  }
  function renderErrors() {
    var errs = rows.filter(FILTERS.err), pages = Math.ceil(errs.length / 100);
    var body = $("errors-body");
    body.textContent = "";
    errs.slice(state.errPage * 100, (state.errPage + 1) * 100).forEach(function (r) {
      var tr = el("tr");
      tr.appendChild(el("td", "path", visible(r.p)));
      tr.appendChild(el("td", null, visible(r.e)));
      body.appendChild(tr);
    });
    $("errors").classList.toggle("hidden", errs.length === 0);
    pager($("errors-pager"), state.errPage, pages, errs.length, "error row(s)",
          function (p) { state.errPage = p; renderErrors(); });
  }
  if (!data.labels) {
    ["fp", "fn"].forEach(function (v) { var o = $("filter").querySelector("option[value=" + v + "]"); """
r"""o.disabled = true; });
  }
  $("filter").addEventListener("change", function (e) { state.filter = e.target.value; state.page = 0; render(); });
  $("order").addEventListener("change", function (e) { state.order = e.target.value; state.page = 0; render(); });
  $("search").addEventListener("input", function (e) { state.q = e.target.value; state.page = 0; render(); });
  $("controls").classList.remove("hidden");
  render();
  renderErrors();
}());
""")

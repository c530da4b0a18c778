"""What the model saw, drawn on the radiograph: the activation map as a colour overlay and, for models with masks, the
heart and lung contours and the two horizontal extents of the cardiothoracic ratio with its value.

`render_overlay` draws one image (numpy + OpenCV only). `OverlayWriter` re-reads each scored file in background
threads, draws it, and writes `<DIR>/<relative path>.png` and/or hands the drawing to a report for its thumbnails,
with at most a few images in flight, so scoring never waits on PNG encoding and memory stays flat.

Writing is confined to the folder given: every target is built from the scored file's relative path, each folder
on the way is created inside DIR (an existing symlinked folder is refused, not followed), and a target that is the
scored file itself is refused. Files go to a temporary name and are renamed, so an existing file is replaced, never
written through.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import cv2
import numpy as np

from cxr.runtime import waits
from cxr.runtime.preprocess import to_uint8

logger = logging.getLogger(__name__)

MAX_SIDE = 1024
"""Overlays are drawn on the radiograph shrunk (never enlarged) to this many pixels on its longest side."""
CAM_ALPHA = 0.5  # opacity of the colour map where the activation is at this image's maximum (0 where it is 0)
HEART_BGR = (255, 0, 255)  # magenta
LUNG_BGR = (255, 255, 0)  # cyan
HEART_EXTENT_BGR = (0, 255, 255)  # yellow
THORAX_EXTENT_BGR = (0, 255, 0)  # green
OVERLAY_SUFFIX = ".png"


class OverlayPathError(ValueError):
    """An overlay target that would lie outside the overlays folder or over the scored file."""


# ---- drawing -----------------------------------------------------------------------------------------------------

def display_size(shape: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) of the drawing: the image's own size, shrunk so its longest side is at most `max_side`."""
    h, w = shape
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def display_gray(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """The radiograph as 8-bit gray (the preprocessing's bit-depth rule) at its drawing size."""
    gray = to_uint8(np.asarray(image))
    size = display_size(gray.shape, max_side)
    if (gray.shape[1], gray.shape[0]) != size:
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray


def cam_layer(cam: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(colour BGR uint8 [H, W, 3], opacity float32 [H, W]) for a [h, w] map upsampled to `size` (W, H).

    The map is scaled by its own maximum (a map says where, not how much) and coloured with OpenCV's JET map; the
    opacity follows the map, so regions the model ignored show the bare radiograph."""
    cam = np.nan_to_num(np.asarray(cam, np.float32), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    top = float(cam.max()) if cam.size else 0.0
    norm = cam / top if top > 0 else np.zeros_like(cam)
    up = cv2.resize(norm, size, interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)
    colour = cv2.applyColorMap(np.rint(up * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return colour, (up * CAM_ALPHA).astype(np.float32)


def _mask_up(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 0/1 mask on the model's square grid, upsampled to `size` (W, H) with smooth edges, as uint8 0/1."""
    up = cv2.resize(np.asarray(mask, np.float32), size, interpolation=cv2.INTER_LINEAR)
    return (up >= 0.5).astype(np.uint8)


def _span(occupied: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(occupied)
    return (int(idx[0]), int(idx[-1])) if idx.size else None


def ctr_extents(masks: np.ndarray) -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]:
    """On the mask grid: the heart's horizontal extent (x0, x1, row to draw it on: the heart's middle row) and the
    widest row of the lungs (x0, x1, row), inclusive columns, as cxr.runtime.anatomy measures the CTR."""
    m = np.asarray(masks) > 0
    heart_cols = _span(m[0].any(axis=0))
    heart = None
    if heart_cols is not None:
        rows = _span(m[0].any(axis=1))
        heart = (heart_cols[0], heart_cols[1], (rows[0] + rows[1]) // 2)
    lungs = m[1] | m[2]
    widths = [(s[1] - s[0] + 1, r, s) for r, s in ((r, _span(lungs[r])) for r in range(lungs.shape[0])) if s]
    thorax = None
    if widths:
        _, row, (x0, x1) = max(widths, key=lambda t: (t[0], -t[1]))  # the widest; the highest of equals
        thorax = (x0, x1, row)
    return heart, thorax


def _text(img: np.ndarray, lines: list[str], scale: float) -> None:
    """ASCII lines, white on a dark box, in the top-left corner (OpenCV's built-in Hershey font: no font files)."""
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale * 2))
    y = 0
    for line in lines:
        (tw, th), base = cv2.getTextSize(line, font, scale, thick)
        pad = max(2, th // 3)
        cv2.rectangle(img, (0, y), (tw + 2 * pad, y + th + base + 2 * pad), (0, 0, 0), thickness=-1)
        cv2.putText(img, line, (pad, y + pad + th), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
        y += th + base + 2 * pad


def _extent_line(img: np.ndarray, x0: float, x1: float, y: float, colour, thick: int) -> None:
    tick = 4 * thick
    p0, p1 = (round(x0), round(y)), (round(x1), round(y))
    cv2.line(img, p0, p1, colour, thick, cv2.LINE_AA)
    for x in (p0[0], p1[0]):
        cv2.line(img, (x, p0[1] - tick), (x, p0[1] + tick), colour, thick, cv2.LINE_AA)


def render_overlay(image: np.ndarray, *, cam: np.ndarray | None = None, masks: np.ndarray | None = None,
                   ctr: float | None = None, caption: list[str] | None = None, max_side: int = MAX_SIDE) -> np.ndarray:
    """BGR uint8 drawing of a 2-D grayscale radiograph (uint8 or uint16) with what the model saw.

    `cam` [h, w] and `masks` [3, h, w] are on the model's square input grid (the image squashed to S x S), so they
    are stretched back to the image's own aspect ratio. `caption`: ASCII lines written in the top-left corner.
    """
    gray = display_gray(image, max_side)
    size = (gray.shape[1], gray.shape[0])
    out = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    w, h = size
    thick = max(1, round(max(w, h) / 400))
    if cam is not None:
        colour, alpha = cam_layer(cam, size)
        out = np.rint(out * (1.0 - alpha[..., None]) + colour * alpha[..., None]).astype(np.uint8)
    lines = list(caption or [])
    if masks is not None:
        masks = np.asarray(masks)
        for k, colour in ((0, HEART_BGR), (1, LUNG_BGR), (2, LUNG_BGR)):
            contours, _ = cv2.findContours(_mask_up(masks[k], size), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, thick, cv2.LINE_AA)
        heart, thorax = ctr_extents(masks)
        mh, mw = masks.shape[1:]
        sx, sy = w / mw, h / mh
        for extent, colour in ((thorax, THORAX_EXTENT_BGR), (heart, HEART_EXTENT_BGR)):
            if extent is not None:
                x0, x1, row = extent
                _extent_line(out, x0 * sx, (x1 + 1) * sx - 1, (row + 0.5) * sy, colour, thick + 1)
        lines.append("CTR n/a" if ctr is None or not np.isfinite(ctr) else f"CTR {ctr:.2f}")
    _text(out, lines, scale=max(0.4, max(w, h) / 1400))
    return out


# ---- where overlays go ---------------------------------------------------------------------------------------------

def overlay_relpath(rel: str, folder: Path | None = None) -> str:
    """The overlay's path under DIR for a scored file's relative path: the same path, with `.png` appended unless it
    already ends in .png (`a/b.png` -> `a/b.png`, `a/c.dcm` -> `a/c.dcm.png`).

    Appending keeps two inputs that differ only in suffix apart. Where the folder also holds an input named like an
    appended name (`c.dcm` beside `c.dcm.png`), `.overlay`, `.overlay2`, ... is added until no input has the name.
    """
    if rel.lower().endswith(OVERLAY_SUFFIX):
        return rel
    name, n = rel + OVERLAY_SUFFIX, 1
    while folder is not None and os.path.lexists(folder / name):
        name = f"{rel}.overlay{n if n > 1 else ''}{OVERLAY_SUFFIX}"
        n += 1
    return name


def _check_parts(rel: str) -> tuple[str, ...]:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise OverlayPathError(f"{rel!r} is not a plain relative path")
    return parts


def confined_target(root: Path, rel: str, source: Path | None = None) -> Path:
    """The file `root/rel`, creating its folders inside `root`; refuses (OverlayPathError) a path with '..' or an
    absolute path, a folder on the way that is a symlink or not a folder, and a target that is `source` itself."""
    parts = _check_parts(rel)
    directory = root
    for part in parts[:-1]:
        directory = directory / part
        try:
            os.mkdir(directory)
        except FileExistsError:
            if directory.is_symlink() or not directory.is_dir():
                raise OverlayPathError(f"{directory} is a symlink or not a folder; overlays are written only inside "
                                       f"{root}") from None
    target = directory / parts[-1]
    if not target.parent.resolve().is_relative_to(root.resolve()):  # a link at the target itself is replaced
        raise OverlayPathError(f"{target} would lie outside {root}")
    if source is not None and os.path.lexists(target) and not target.is_symlink():
        try:
            if os.path.samefile(target, source):
                raise OverlayPathError(f"{target} is the scored file itself; it is never overwritten")
        except OSError:
            pass
    return target


def write_image_atomic(path: Path, image: np.ndarray, params: tuple[int, ...] = ()) -> None:
    """Encode `image` by `path`'s suffix and publish it by rename (an existing file or link is replaced, never
    written through)."""
    ok, data = cv2.imencode(path.suffix.lower(), image, list(params))
    if not ok:
        raise OSError(f"OpenCV could not encode {path.suffix} for {path}")
    fd, tmp = tempfile.mkstemp(prefix=".cxr-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.tobytes())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- the background writer -------------------------------------------------------------------------------------

@dataclass
class OverlayStats:
    """What OverlayWriter did: overlays written, files whose drawing failed (with the first few reasons)."""

    written: int = 0
    drawn: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    unfinished: int = 0  # drawings still running when a stopped run gave up waiting for them (close's timeout)
    MAX_KEPT = 20

    def to_dict(self) -> dict:
        out = {"written": self.written, "failed": self.failed, "first_failures": list(self.failures)}
        if self.unfinished:
            out["unfinished"] = self.unfinished
        return out


Drawn = Callable[[int, np.ndarray, np.ndarray], None]
"""on_drawn(index, radiograph gray uint8 at drawing size, overlay BGR): e.g. a report writing its thumbnails."""


class OverlayWriter:
    """Draw scored rows in `workers` background threads, at most `max_pending` at a time (`submit` waits beyond).

    `out_dir`: write each overlay PNG there (None: draw only for `on_drawn`). `folder`: the scored folder the rows'
    paths are relative to (`out_dir` is created if missing). `threshold`: for the caption's call. A failure to read
    or write one file is logged and counted (`stats`), never raised: the results are already written."""

    def __init__(self, folder: Path, out_dir: Path | None, *, threshold: float, on_drawn: Drawn | None = None,
                 workers: int = 1, max_pending: int = 8, max_side: int = MAX_SIDE):
        self.folder = Path(folder)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.threshold = threshold
        self.on_drawn = on_drawn
        self.max_side = max_side
        self.stats = OverlayStats()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-overlay")
        self._queued: set = set()  # submitted drawings not yet done

    def submit(self, row, index: int = 0) -> None:
        """Queue an ok row (error rows are skipped: no overlay, no error). Waits while `max_pending` are queued."""
        if not row.ok:
            return
        waits.acquire(self._slots)  # a signal cuts the wait short (see cxr.runtime.waits)
        try:
            future = self._pool.submit(self._draw, row, index)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._queued.add(future)
        future.add_done_callback(self._done)

    def _done(self, future) -> None:
        with self._lock:
            self._queued.discard(future)
        self._slots.release()

    def _draw(self, row, index: int) -> None:
        from cxr.runtime.imaging import read_image

        source = self.folder / row.path
        try:
            gray = display_gray(read_image(source), self.max_side)
            call = "cardiomegaly" if row.probability >= self.threshold else "no cardiomegaly"
            caption = [f"p={row.probability:.3f} {call} (threshold {self.threshold:.3g})"]
            if row.cam is None:
                caption.append("no activation map in this model")
            drawing = render_overlay(gray, cam=row.cam, masks=row.masks, ctr=row.ctr, caption=caption,
                                     max_side=self.max_side)
            if self.out_dir is not None:
                target = confined_target(self.out_dir, overlay_relpath(row.path, self.folder), source)
                write_image_atomic(target, drawing)
            if self.on_drawn is not None:
                self.on_drawn(index, gray, drawing)
            with self._lock:
                self.stats.drawn += 1
                self.stats.written += self.out_dir is not None
        except Exception as exc:  # noqa: BLE001 - one overlay's failure must not stop the others
            reason = f"{row.path!r}: {type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
            logger.warning("overlay not written for %s", reason)
            with self._lock:
                self.stats.failed += 1
                if len(self.stats.failures) < OverlayStats.MAX_KEPT:
                    self.stats.failures.append(reason)

    def close(self, cancel: bool = False, timeout: float | None = None) -> OverlayStats:
        """Wait for the queued drawings (or drop those not started, with `cancel`); the stats. With `timeout` (a
        stopped run), wait at most that long: a drawing blocked in C (a read from a hung mount) is left running and
        counted in `stats.unfinished`, and its thread ends with the process."""
        if cancel:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            queued = list(self._queued)
        if waits.all_done(queued, timeout):  # a signal cuts the wait short; the drawings go on in the pool's threads
            self._pool.shutdown(wait=True)
        else:
            self._pool.shutdown(wait=False, cancel_futures=True)
            with self._lock:
                self.stats.unfinished = sum(not f.done() for f in self._queued)
        return self.stats

    def __enter__(self) -> "OverlayWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)

"""Scoring with onnxruntime: a validated session (`Scorer`) and a bounded-memory folder pipeline (`score_folder`).

`Scorer` refuses models that break the I/O contract or carry no valid card, and never runs on CPU when CUDA was
asked for. `score_folder` reads and preprocesses images in worker threads (OpenCV and pydicom's decoders release
the GIL for most of their work) while the session runs the previous batch, and turns every per-file failure into an
error row, so one bad image never stops a run.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from cxr.runtime.card import CARD_KEY, INPUT_NAME, OUTPUT_NAMES, ModelCard
from cxr.runtime.errors import ImageError, ModelCardError, ModelLoadError, ProviderError
from cxr.runtime.onnx_scan import MalformedModel, ModelScan, scan_model
from cxr.runtime.ort import import_ort
from cxr.runtime.preprocess import preprocess_batch
from cxr.runtime.serialization import sha256_file
from cxr.runtime.waits import result as wait_result

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
DEVICES = ("auto", "cpu", "cuda", "openvino")

# Row error codes besides the image codes of cxr.runtime.errors.
INTERNAL = "internal"  # an unexpected exception while reading or preprocessing one file (a bug: please report)
INFERENCE_FAILED = "inference_failed"  # the session failed on this image even when run alone
STOP_GRACE_S = 2.0
"""How long a folder run stopped early waits for its reader threads before leaving them (blocked in C) behind."""


def _identity(path: Path) -> tuple[int, int, int, int]:
    """(device, size, inode, mtime in ns): changes when the file is rewritten or replaced."""
    st = os.stat(path)
    return st.st_dev, st.st_size, st.st_ino, st.st_mtime_ns


def _scan(path: Path) -> ModelScan:
    """Refuse what onnxruntime would load without complaint but cxr must not use: ONNX external data (cxr models are
    one self-contained file, the one whose sha256 the manifest records) and several model cards."""
    try:
        scan = scan_model(path)
    except MalformedModel as exc:
        raise ModelLoadError(f"{path}: cannot be loaded as an ONNX model: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the model file: {exc.strerror or exc}") from None
    if scan.external:
        external = scan.external
        shown = ", ".join(external[:3]) + (f" and {len(external) - 3} more" if len(external) > 3 else "")
        raise ModelLoadError(f"{path}: {len(external)} tensor(s) keep their data in external files ({shown}); cxr "
                             "models are single self-contained files (cxr-export writes one), whose sha256 the "
                             "manifest records: re-export, or save the model with all tensors inside the file")
    cards = scan.metadata_keys.count(CARD_KEY)
    if cards > 1:
        raise ModelCardError(f"{path}: the model has {cards} '{CARD_KEY}' metadata entries; a cxr model has exactly "
                             "one card, and which of them to trust cannot be told")
    return scan


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive, or a bare pickle (older format)


def _checkpoint_like(path: Path) -> bool:
    """A PyTorch checkpoint by its suffix or first bytes (an ONNX file is a protobuf and starts with neither)."""
    if path.suffix.lower() in _CHECKPOINT_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False  # the hash below reports the read error
    return head.startswith(_CHECKPOINT_MAGIC)


def _export_first(path: Path) -> str:
    """The message for a --model that is a folder (a training run?), a PyTorch checkpoint or a special file."""
    if path.is_dir():
        run = (path / "best.pt").is_file()
        what, source = ("a cxr-train run folder" if run else "a folder"), (path if run else "RUN")
    elif path.is_file():
        what, source = "a PyTorch checkpoint", path.parent if path.name in ("best.pt", "last.pt") else path
    else:
        return f"{path}: not a file; --model takes the ONNX file that cxr-export writes"
    return (f"{path}: {what}, not an ONNX model; export it first: cxr-export {source} --out model.onnx, "
            "then score with --model model.onnx")


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (not a promise that they can start)."""
    ort = import_ort()
    return list(ort.get_available_providers())


class Scorer:
    """An onnxruntime session for a cxr model: uint8 [N, 1, S, S] in, probability of cardiomegaly float32 [N] out.

    A plain, picklable callable over numpy batches (pickling carries the model path and settings; the session is
    rebuilt on the other side), so Ray Data can wrap it unchanged, e.g.:

        scorer = Scorer("model.onnx", device="cpu")
        ds = ds.map_batches(lambda b: {"path": b["path"], "prob": scorer(b["image"])}, batch_format="numpy")
        # or pass a class whose __init__ builds the Scorer, with concurrency=k, to get one session per actor

    Raises ModelLoadError (file missing, not ONNX, wrong inputs/outputs), ModelCardError (no card, invalid card,
    card that disagrees with the graph) and ProviderError (device='cuda' that cannot really run on CUDA).
    """

    def __init__(self, model_path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 precision: str = "fp32", batch_size: int | None = None):
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.model_path = Path(model_path)
        self.requested_device = device
        self.threads = threads
        self.precision = precision
        """fp32, or bf16 (OpenVINO's inference precision; cxr.runtime.precision): int8 is the file's own."""
        self.batch_size = batch_size
        """The batch the caller will mostly run (cxr-score's --batch-size). On the OpenVINO provider the graph is
        compiled for exactly that batch (see static_batch); other providers ignore it."""
        self._load()

    def _load(self) -> None:
        ort = import_ort()  # telemetry off (cxr.runtime.ort)
        path = self.model_path
        if not path.exists():
            raise ModelLoadError(f"{path}: model file not found")
        if not path.is_file() or _checkpoint_like(path):
            raise ModelLoadError(_export_first(path))
        providers = self._providers_to_try(list(ort.get_available_providers()))
        # The hash and size are taken now, at load, so that the manifest describes the file the session was built
        # from even if it is replaced during a long run; a file that changes while it is loaded is refused. (Building
        # the session from the bytes read for the hash would settle it too, but costs ~25 MB of peak memory.)
        try:
            before = _identity(path)
            self.model_sha256 = sha256_file(path)  # of the file as loaded; the manifest records it
            self.model_size_bytes = before[1]
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read the model file: {exc.strerror or exc}") from None
        scan = _scan(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; we report the provider outcome ourselves
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        self.static_batch = self._static_batch(providers, scan)
        if self.static_batch is not None:
            options.add_free_dimension_override_by_name(scan.inputs[INPUT_NAME][0], self.static_batch)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise ModelLoadError(f"{path}: cannot be loaded as an ONNX model: {_short(exc)}") from None
        try:
            changed = _identity(path) != before
        except OSError:
            changed = True
        if changed:
            raise ModelLoadError(f"{path}: the model file changed while it was being loaded; run again once it is "
                                 "written")
        active = list(session.get_providers())
        if self.requested_device == "cuda" and CUDA not in active:
            raise ProviderError(
                f"--device cuda was requested but the session for {path} fell back to {', '.join(active)} "
                "(CUDA could not be initialised: check the driver, CUDA/cuDNN libraries and onnxruntime-gpu)")
        if self.requested_device == "openvino" and OPENVINO not in active:
            raise ProviderError(f"--device openvino was requested but the session for {path} fell back to "
                                f"{', '.join(active)} (the OpenVINO provider could not be initialised)")
        tried = [p if isinstance(p, str) else p[0] for p in providers]
        for name, what in ((CUDA, "CUDA"), (OPENVINO, "OpenVINO")):
            if self.requested_device == "auto" and name in tried and name not in active:
                logger.warning("%s is available but could not be initialised for %s; running on CPU", what, path)
        self._session = session
        self.providers = active
        self.device = "cuda" if CUDA in active else "openvino" if OPENVINO in active else "cpu"
        self._check_io(session)
        try:
            metadata = session.get_modelmeta().custom_metadata_map
        except Exception as exc:  # e.g. a value that is not UTF-8, which pybind11 cannot decode
            raise ModelCardError(f"{path}: the model's metadata cannot be read: {_short(exc)}") from None
        try:
            card = ModelCard.from_metadata(metadata)
        except ModelCardError as exc:
            raise ModelCardError(f"{path}: {exc}") from None
        graph_size = self._graph_size
        if card.preprocess.size != graph_size:
            raise ModelCardError(
                f"{path}: model card says input size {card.preprocess.size} but the graph takes "
                f"{graph_size}x{graph_size}")
        absent = [o for o in card.output_names if o not in self._graph_outputs]
        if absent:
            raise ModelCardError(f"{path}: the model card lists output(s) {absent} that the graph lacks")
        self.card = card
        self.input_size = card.input_size
        self.threshold = float(card.threshold.value)
        self.extra_outputs = card.extra_outputs
        """The optional outputs this model has (cam, ctr, masks): used where present, never required."""

    def _providers_to_try(self, available: list[str]) -> list:
        from cxr.runtime.precision import openvino_providers

        if self.precision == "bf16" and self.requested_device not in ("openvino", "auto"):
            raise ProviderError(f"bf16 runs on the OpenVINO provider only, not on --device {self.requested_device}")
        if self.requested_device == "cpu":
            return [CPU]
        if self.requested_device == "openvino" or (self.requested_device == "auto" and CUDA not in available
                                                    and OPENVINO in available):
            return openvino_providers(available, self.precision, self.threads)
        if self.requested_device == "cuda":
            if CUDA not in available:
                raise ProviderError(
                    f"--device cuda was requested but this onnxruntime offers only {', '.join(available)} "
                    "(install onnxruntime-gpu instead of onnxruntime, with a matching CUDA)")
            return [CUDA, CPU]
        return [CUDA, CPU] if CUDA in available else [CPU]

    def _static_batch(self, providers: list, scan: ModelScan) -> int | None:
        """The batch to compile the graph for, or None for the file's dynamic batch. OpenVINO compiles a graph with a
        fixed input shape into faster kernels than a dynamic one (the 128 px DenseNet-121 with its decoder, rounds in
        turn on an AVX-512 BF16 CPU without AMX: bf16 17% less time per call at batch 1 and 8, int8 25-29%), while
        ONNX Runtime's own CPU provider ran a fixed and a dynamic batch alike (0.99x, 0.98x), so only an OpenVINO
        session is fixed (CUDA was not measured and stays dynamic). Batches of another size are then padded with
        blank images or split (_run), never refused. Where the file's batch dimension has no name to override (the
        check in _check_io refuses a fixed one), the session stays dynamic."""
        first = providers[0] if providers else None
        if self.batch_size is None or (first if isinstance(first, str) else first[0]) != OPENVINO:
            return None
        dims = scan.inputs.get(INPUT_NAME) or [None]
        return self.batch_size if isinstance(dims[0], str) and dims[0] else None

    def _check_io(self, session) -> None:
        path = self.model_path
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelLoadError(
                f"{path}: expected exactly one input named {INPUT_NAME!r}, found {[i.name for i in inputs]}")
        inp = inputs[0]
        if inp.type != "tensor(uint8)":
            raise ModelLoadError(f"{path}: input {INPUT_NAME!r} must be uint8, found {inp.type}")
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] != 1 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise ModelLoadError(f"{path}: input {INPUT_NAME!r} must have shape [N, 1, S, S], found {shape}")
        if isinstance(shape[0], int) and (self.static_batch is None or shape[0] != self.static_batch):
            raise ModelLoadError(f"{path}: the batch dimension of {INPUT_NAME!r} must be dynamic, found {shape}")
        if not isinstance(shape[0], int):
            self.static_batch = None  # the override did not take: the session is dynamic, and says so
        self._graph_size = int(shape[2])
        names = [o.name for o in session.get_outputs()]
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise ModelLoadError(f"{path}: missing output(s) {missing}; the model has {names}")
        self._graph_outputs = names

    def _check_batch(self, batch) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise ValueError(f"expected a numpy array, got {type(batch).__name__}")
        s = self.input_size
        if batch.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels (the preprocessed image), got {batch.dtype}")
        if batch.ndim != 4 or batch.shape[1:] != (1, s, s):
            raise ValueError(f"expected a batch of shape [N, 1, {s}, {s}], got {list(batch.shape)}")
        return np.ascontiguousarray(batch)

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logit, probability), both float32 [N], for uint8 [N, 1, S, S]."""
        batch = self._check_batch(batch)
        n = batch.shape[0]
        if n == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        logit, prob = self._run(list(OUTPUT_NAMES), batch)
        logit = np.asarray(logit, np.float32).reshape(-1)
        prob = np.asarray(prob, np.float32).reshape(-1)
        if logit.shape != (n,) or prob.shape != (n,):
            raise ModelLoadError(f"{self.model_path}: the model returned {prob.shape[0]} values for {n} images")
        return logit, prob

    def run(self, batch: np.ndarray, extras: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """logit and probability float32 [N] plus the requested optional outputs this model has, by name."""
        batch = self._check_batch(batch)
        names = list(OUTPUT_NAMES) + [e for e in extras if e in self.extra_outputs]
        n = batch.shape[0]
        if n == 0:
            return {name: np.zeros(0, np.float32) for name in names}
        values = dict(zip(names, self._run(names, batch)))
        for name in OUTPUT_NAMES:
            values[name] = np.asarray(values[name], np.float32).reshape(-1)
            if values[name].shape != (n,):
                raise ModelLoadError(f"{self.model_path}: the model returned {values[name].shape[0]} values for "
                                     f"{n} images")
        if "ctr" in values:
            values["ctr"] = np.asarray(values["ctr"], np.float32).reshape(-1)
        return values

    def _run(self, names: list[str], batch: np.ndarray) -> list[np.ndarray]:
        """The session's outputs `names` for a non-empty batch. A session compiled for a fixed batch B runs the
        images B at a time, the last group padded with blank (zero) images whose outputs are dropped: every output
        is per image along its first axis, and no image's output depends on another's (inference mode). (So on such
        a session the one-at-a-time retry of a failed batch runs each image padded to B.)"""
        b = self.static_batch
        if b is None or batch.shape[0] == b:
            return self._session.run(names, {INPUT_NAME: batch})
        parts: list[list[np.ndarray]] = []
        for start in range(0, batch.shape[0], b):
            chunk = batch[start:start + b]
            n = chunk.shape[0]
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
            parts.append([np.asarray(v)[:n] for v in self._session.run(names, {INPUT_NAME: chunk})])
        return [np.concatenate(column) for column in zip(*parts)]

    def for_batch(self, batch_size: int) -> Scorer:
        """The scorer cxr-score --batch-size batch_size would run: this one, unless it is compiled for another fixed
        batch (static_batch), then one like it compiled for `batch_size` from the same file (refused if the file has
        changed since this one loaded it)."""
        if self.static_batch is None or self.static_batch == batch_size:
            return self
        other = Scorer(self.model_path, device=self.requested_device, threads=self.threads, precision=self.precision,
                       batch_size=batch_size)
        if other.model_sha256 != self.model_sha256:
            raise ModelLoadError(f"{self.model_path}: the model file changed since it was loaded; run again once it "
                                 "is written")
        return other

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities float32 [N] for uint8 [N, 1, S, S]."""
        return self.predict(batch)[1]

    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "device": self.requested_device, "threads": self.threads,
                "precision": self.precision, "batch_size": self.batch_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_path"], device=state["device"], threads=state["threads"],
                      precision=state.get("precision", "fp32"), batch_size=state.get("batch_size"))

    def __repr__(self) -> str:
        return f"Scorer({str(self.model_path)!r}, device={self.device!r}, providers={self.providers})"


@dataclass
class ScoreRow:
    """One scored (or failed) file. `path` is relative to the scored folder, POSIX form."""

    path: str
    status: str  # "ok" | "error"
    probability: float | None = None
    logit: float | None = None
    label_pred: int | None = None  # 1 when probability >= threshold
    error_code: str = ""
    error_message: str = ""
    read_ms: float = 0.0  # read + preprocess in a worker thread
    model_ms: float = 0.0  # this row's share of its batch's session time
    ctr: float | None = None  # the model's cardiothoracic ratio (models with a ctr output; None: not measurable)
    ctr_flag: str = ""  # why the masks behind `ctr` look implausible (cxr.runtime.anatomy.mask_flags), or ''
    cam: np.ndarray | None = field(default=None, repr=False, compare=False)
    """float32 [h, w] activation map, only when score_folder(maps=True) and the model has a cam output."""
    masks: np.ndarray | None = field(default=None, repr=False, compare=False)
    """uint8 [3, h, w] heart, left lung, right lung, only when score_folder(maps=True) and the model has masks."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Loaded:
    image: np.ndarray | None
    error: tuple[str, str] | None
    ms: float


def _load_one(path: Path, scorer_config) -> _Loaded:
    """Read and preprocess one file in a worker thread; every failure becomes (code, message), never an exception."""
    from cxr.runtime.imaging import read_image

    start = time.perf_counter()
    try:
        image = preprocess_batch([read_image(path)], scorer_config)[0]
        return _Loaded(image, None, _ms(start))
    except ImageError as exc:
        return _Loaded(None, (exc.code, exc.message), _ms(start))
    except OSError as exc:
        return _Loaded(None, ("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}"), _ms(start))
    except Exception as exc:  # noqa: BLE001 - one file's surprise must not stop the run
        logger.exception("unexpected error reading %s", path)
        return _Loaded(None, (INTERNAL, f"{type(exc).__name__}: {exc}"), _ms(start))


def score_folder(folder: str | os.PathLike, scorer: Scorer, batch_size: int = 8, workers: int = 2,
                 on_item: Callable[[ScoreRow], None] | None = None, *, threshold: float | None = None,
                 files: Sequence[Path] | None = None, maps: bool = False) -> Iterator[ScoreRow]:
    """Score every image candidate under `folder`; yield one `ScoreRow` per file, in sorted relative-path order.

    `files` (relative paths, e.g. `find_images(folder).files`) skips the walk when the caller already did it.
    `threshold` overrides the card's for `label_pred`. `on_item(row)` is called for each row before it is yielded.
    `maps=True` also asks the model for its `cam` and `masks` outputs (where it has them) and puts each image's on
    its row (`row.cam`, `row.masks`) for overlays; the caller drops them with the row, so memory stays flat.

    Memory stays flat for any folder size: at most `2 * batch_size` files are in flight (the batch being scored
    plus the next one being read by `workers` threads); each holds only its preprocessed S x S uint8 image, the
    full-size decoded pixels living only inside one worker call.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    root = Path(folder)
    if files is None:
        from cxr.runtime.walk import find_images

        walked = find_images(root)
        for problem in walked.problems:  # cxr-score prints these itself; a library caller hears them here
            logger.warning("%s: %s", root, problem)
        files = walked.files
    thr = scorer.threshold if threshold is None else float(threshold)
    config = scorer.card.preprocess
    max_in_flight = 2 * batch_size
    todo = iter(files)
    pending: deque[tuple[Path, Future]] = deque()
    readers: list[threading.Thread] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-read",
                              initializer=lambda: readers.append(threading.current_thread()))

    def fill(limit: int) -> None:
        while len(pending) < limit:
            rel = next(todo, None)
            if rel is None:
                return
            pending.append((rel, pool.submit(_load_one, root / rel, config)))

    finished = False
    try:
        fill(max_in_flight)
        while pending:
            batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            fill(max_in_flight - len(batch))  # the workers read the next batch while this one is scored
            loaded = [(Path(rel).as_posix(), wait_result(fut)) for rel, fut in batch]  # a signal cuts it short
            for row in _score_batch(scorer, loaded, thr, maps):
                if on_item is not None:
                    on_item(row)
                yield row
        finished = True
    finally:
        for _, fut in pending:
            fut.cancel()
        # Stopped early (Ctrl-C, SIGTERM, the caller closing us): wait at most STOP_GRACE_S for the readers, since one
        # may be blocked in C on a slow file or a decode, which nothing can interrupt; it ends on its own or with the
        # process (cxr-score then exits without waiting for it).
        pool.shutdown(wait=finished, cancel_futures=True)
        deadline = time.monotonic() + STOP_GRACE_S
        for thread in readers if not finished else ():
            thread.join(max(0.0, deadline - time.monotonic()))


_ANATOMY = ("ctr", "masks")
NO_ANATOMY = "no_anatomy"  # a CTR-based decision on an image where the model found no heart or no lungs


def _score_batch(scorer: Scorer, loaded: list[tuple[str, _Loaded]], threshold: float,
                 maps: bool = False) -> list[ScoreRow]:
    good = [i for i, (_, item) in enumerate(loaded) if item.error is None]
    outputs: dict[int, dict | tuple[str, str]] = {}
    model_ms: dict[int, float] = {}
    wanted = _ANATOMY + (("cam",) if maps else ())
    extras = [e for e in wanted if e in scorer.extra_outputs]
    if good:
        start = time.perf_counter()
        try:
            values = scorer.run(np.stack([loaded[i][1].image for i in good]), extras)
            share = _ms(start) / len(good)
            for j, i in enumerate(good):
                outputs[i], model_ms[i] = _one(values, j, maps), share
        except Exception as exc:  # noqa: BLE001 - retry one by one so no file of the batch is lost
            logger.warning("batch of %d failed (%s); retrying one image at a time", len(good), _short(exc))
            for i in good:
                start = time.perf_counter()
                try:
                    outputs[i] = _one(scorer.run(loaded[i][1].image[None], extras), 0, maps)
                except Exception as one_exc:  # noqa: BLE001
                    outputs[i] = (INFERENCE_FAILED, f"{type(one_exc).__name__}: {_short(one_exc)}")
                model_ms[i] = _ms(start)
    return [_row(rel, item, outputs.get(i), model_ms.get(i, 0.0), threshold) for i, (rel, item) in enumerate(loaded)]


def _one(values: dict[str, np.ndarray], j: int, maps: bool = False) -> dict:
    """Image j's logit, probability and, where the model has them, CTR and mask flags (and, with `maps`, its own
    copies of the activation map and masks, so the batch's arrays are not kept alive by one row)."""
    from cxr.runtime.anatomy import mask_flags

    out = {"logit": float(values["logit"][j]), "probability": float(values["probability"][j])}
    if "ctr" in values:
        ctr = float(values["ctr"][j])
        out["ctr"] = ctr if math.isfinite(ctr) else None
        masks = values["masks"][j] if "masks" in values else None
        out["ctr_flag"] = "not_measurable" if masks is None and out["ctr"] is None else mask_flags(masks, out["ctr"])
    if maps:
        if "cam" in values:
            out["cam"] = np.array(values["cam"][j], np.float32)
        if "masks" in values:
            out["masks"] = np.array(values["masks"][j], np.uint8)
    return out


def _row(rel: str, item: _Loaded, out, model_ms: float, threshold: float) -> ScoreRow:
    if item.error is not None:
        return ScoreRow(rel, "error", error_code=item.error[0], error_message=item.error[1], read_ms=item.ms)
    if isinstance(out, tuple):
        return ScoreRow(rel, "error", error_code=out[0], error_message=out[1], read_ms=item.ms, model_ms=model_ms)
    anatomy = {"ctr": out.get("ctr"), "ctr_flag": out.get("ctr_flag", ""), "cam": out.get("cam"),
               "masks": out.get("masks")}
    prob = out["probability"]
    if not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
        if "ctr" in out and out["ctr"] is None and math.isnan(prob):
            return ScoreRow(rel, "error", error_code=NO_ANATOMY, read_ms=item.ms, model_ms=model_ms, **anatomy,
                            error_message=f"the model's decision uses the cardiothoracic ratio, which it could not "
                                          f"measure here ({anatomy['ctr_flag'] or 'no heart or lungs found'}); "
                                          "is this a frontal chest radiograph?")
        return ScoreRow(rel, "error", error_code=INFERENCE_FAILED, read_ms=item.ms, model_ms=model_ms,
                        error_message=f"the model returned an invalid probability {prob!r}", **anatomy)
    return ScoreRow(rel, "ok", probability=prob, logit=out["logit"], label_pred=int(prob >= threshold),
                    read_ms=item.ms, model_ms=model_ms, **anatomy)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

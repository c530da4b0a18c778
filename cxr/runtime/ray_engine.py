"""cxr-score --engine ray: the local engine's read -> preprocess -> score stages on Ray Data, rows back in order.

Pipeline: the sorted file list (index, path bytes) as small Arrow blocks -> `map_batches(read_batch)` on CPU tasks
(`cxr.runtime.scoring._load_one`: the same reader, preprocessing and per-file error codes as the local engine) ->
`map_batches(ScoreActor)`: a pool of actors, each loading the model once (GPUs per actor when asked) and scoring with
`cxr.runtime.scoring._score_batch`, the local engine's own batch code -> the driver, which turns each row back into
a `ScoreRow` and yields it in index order. cxr-score writes those rows with the same writer, tally and manifest code
as the local engine, so the CSV is the same file whichever engine ran.

Faults: a read task that dies is retried, an actor that dies is restarted and its unfinished batches run again
(Ray Data's defaults: unlimited `max_retries`, `max_restarts`, `max_task_retries`); rows carry their index, and the
driver yields each index exactly once (a row seen twice is dropped and counted, a row never seen is an error at the
end), so no row is lost or duplicated.

Memory: the driver keeps the path list (as the local engine does) and a reorder buffer that `preserve_order` keeps to
a block or two; rows are yielded as they come (`iter_batches`), never gathered. The images in flight are bounded by
the streaming executor's backpressure and an explicit object-store limit (`RayOptions.object_store_limit`): each
in-flight image is one preprocessed S x S uint8 array (50 KB at 224), whatever the number of paths.

Ray is imported only here and only when the engine is used; this module never imports torch.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from cxr.runtime.errors import CxrError, ModelLoadError
from cxr.runtime.scoring import Scorer, ScoreRow, _load_one, _Loaded, _score_batch

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'cxr[ray]'"
ROWS_PER_BLOCK = 64
"""Paths per input block: small enough to spread a short list over the read tasks, large enough to keep the
scheduling cost per image low."""
_NO_FLOAT = float("nan")


class RayMissing(CxrError):
    """--engine ray without Ray installed."""


class RayEngineError(CxrError):
    """The Ray cluster cannot be reached, or a run on it lost rows."""


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray: where the cluster is and how the scorer pool is shaped."""

    address: str | None = None
    """None: join the cluster this process or RAY_ADDRESS points to, else start a local instance; 'auto': the
    cluster `ray start` runs on this machine; 'ray://host:10001': a remote cluster through Ray Client."""
    actors: int = 1
    """Scorer actors (model sessions) in the pool."""
    gpus_per_actor: float = 0.0
    """GPUs each scorer actor asks for (0: CPU actors; 0.5: two actors share a GPU)."""
    cpus_per_actor: float = 1.0
    read_task_memory: int = 256 << 20
    """Bytes of memory a read task asks Ray for (a 3000 x 3000 16-bit DICOM decodes to 18 MB per reader thread)."""
    object_store_limit: int = 1 << 30
    """Bytes of object store the pipeline may fill before the streaming executor holds back the readers."""


def import_ray():
    """The ray module with Ray Data, or RayMissing naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray without its Data library cannot run the pipeline
    except ImportError as exc:
        raise RayMissing(f"--engine ray needs Ray Data, which is not installed ({exc.name or exc}): "
                         f"{INSTALL_HINT}") from None
    return ray


def _encode(text: str) -> bytes:
    """Any Python str, lone surrogates from os.fsdecode included, as bytes Arrow can carry and `_decode` restores."""
    return text.encode("utf-8", "surrogatepass")


def _decode(data) -> str:
    return bytes(data).decode("utf-8", "surrogatepass")


def read_batch(batch: dict, config, threads: int) -> dict:
    """Read task: read and preprocess each path (errors become codes, never exceptions), keeping its index."""
    paths = [Path(os.fsdecode(bytes(p))) for p in batch["path"]]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        loaded = list(pool.map(lambda p: _load_one(p, config), paths))
    size = config.size
    images = np.zeros((len(loaded), 1, size, size), np.uint8)
    for i, item in enumerate(loaded):
        if item.error is None:
            images[i] = item.image
    return {"index": np.asarray(batch["index"], np.int64), "image": images,
            "ok": np.array([item.error is None for item in loaded], bool),
            "error_code": np.array([_encode(item.error[0]) if item.error else b"" for item in loaded], object),
            "error_message": np.array([_encode(item.error[1]) if item.error else b"" for item in loaded], object),
            "read_ms": np.array([item.ms for item in loaded], np.float64)}


class ScoreActor:
    """One model session per actor; scores batches with the local engine's `_score_batch` (same rows, same
    fallbacks: a failing batch is retried one image at a time)."""

    def __init__(self, model_path: str, device: str, threads: int | None, threshold: float, sha256: str):
        self.scorer = Scorer(model_path, device=device, threads=threads)
        if self.scorer.model_sha256 != sha256:
            raise ModelLoadError(f"{model_path} on {socket.gethostname()} is not the file the driver loaded (sha256 "
                                 f"{self.scorer.model_sha256[:12]}..., expected {sha256[:12]}...): the model must "
                                 "be the same file on shared storage for every node")
        self.threshold = threshold
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{self.scorer.device}"

    def __call__(self, batch: dict) -> dict:
        loaded = []
        for i in range(len(batch["index"])):
            ok = bool(batch["ok"][i])
            error = None if ok else (_decode(batch["error_code"][i]), _decode(batch["error_message"][i]))
            loaded.append(("", _Loaded(batch["image"][i] if ok else None, error, float(batch["read_ms"][i]))))
        rows = _score_batch(self.scorer, loaded, self.threshold)
        return {"index": np.asarray(batch["index"], np.int64), **rows_to_columns(rows),
                "worker": np.array([self.worker] * len(rows), object)}


def rows_to_columns(rows: Sequence[ScoreRow]) -> dict:
    """A batch of rows (less path, cam and masks) as numpy columns Arrow can carry."""
    def floats(name):
        return np.array([_NO_FLOAT if getattr(r, name) is None else getattr(r, name) for r in rows], np.float64)

    return {"ok": np.array([r.ok for r in rows], bool), "probability": floats("probability"),
            "logit": floats("logit"), "ctr": floats("ctr"),
            "label_pred": np.array([-1 if r.label_pred is None else r.label_pred for r in rows], np.int8),
            "error_code": np.array([_encode(r.error_code) for r in rows], object),
            "error_message": np.array([_encode(r.error_message) for r in rows], object),
            "ctr_flag": np.array([_encode(r.ctr_flag) for r in rows], object),
            "read_ms": np.array([r.read_ms for r in rows], np.float64),
            "model_ms": np.array([r.model_ms for r in rows], np.float64)}


def row_from_columns(batch: dict, j: int, path: str) -> ScoreRow:
    """Row j of a scored batch as the ScoreRow the local engine would have yielded for `path`."""
    def number(name):
        value = float(batch[name][j])
        return None if math.isnan(value) else value

    label = int(batch["label_pred"][j])
    return ScoreRow(path, "ok" if batch["ok"][j] else "error", probability=number("probability"),
                    logit=number("logit"), label_pred=None if label < 0 else label,
                    error_code=_decode(batch["error_code"][j]), error_message=_decode(batch["error_message"][j]),
                    read_ms=float(batch["read_ms"][j]), model_ms=float(batch["model_ms"][j]), ctr=number("ctr"),
                    ctr_flag=_decode(batch["ctr_flag"][j]))


@dataclass
class RayRun:
    """A connection to a Ray cluster and what the manifest says about it."""

    options: RayOptions
    initialized: bool = False
    """Whether this run called ray.init (and so calls ray.shutdown at the end: a local instance it started stops, a
    cluster it joined only loses this driver)."""
    workers: Counter = field(default_factory=Counter)
    """Rows per scorer actor ('host:pid:device'): an actor restarted after a crash shows as a second entry."""
    duplicates_dropped: int = 0
    read_threads: int | None = None

    @classmethod
    def connect(cls, options: RayOptions) -> "RayRun":
        """Join (or start) the cluster; RayMissing without Ray, RayEngineError when the address cannot be reached."""
        ray = import_ray()
        run = cls(options)
        if not ray.is_initialized():
            run.initialized = True
            handlers = _signal_handlers()
            try:
                ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError by address form
                raise RayEngineError(f"cannot reach the Ray cluster at {options.address or 'a new local instance'}: "
                                     f"{' '.join(str(exc).split())[:300]}") from None
            finally:
                _restore(handlers)  # ray.init makes SIGTERM sys.exit(15); the caller's handler keeps the rows done
        return run

    def close(self) -> None:
        """Disconnect if this run connected (a local instance it started stops; a cluster it joined keeps running)."""
        if self.initialized:
            import ray

            try:
                ray.shutdown()
            except Exception as exc:  # noqa: BLE001 - the results are settled; a failed shutdown only warrants a line
                logger.warning("could not stop the local Ray instance: %s", exc)

    def cluster(self) -> dict:
        """Address, nodes and resources of the cluster, for the manifest."""
        import ray

        nodes = [{"hostname": n.get("NodeManagerHostname"), "address": n.get("NodeManagerAddress"),
                  "alive": bool(n.get("Alive")), "resources": _main_resources(n.get("Resources", {}))}
                 for n in ray.nodes()]
        try:
            address = ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 - Ray Client connections do not expose it
            address = self.options.address
        return {"ray_version": ray.__version__, "address": address, "requested_address": self.options.address,
                "connected_by_this_run": self.initialized, "nodes": nodes,
                "resources": _main_resources(ray.cluster_resources())}

    def manifest(self) -> dict:
        o = self.options
        return {"name": "ray", "cluster": self.cluster(), "actors": o.actors, "gpus_per_actor": o.gpus_per_actor,
                "cpus_per_actor": o.cpus_per_actor, "read_threads_per_task": self.read_threads,
                "object_store_limit_bytes": o.object_store_limit,
                "rows_by_actor": dict(sorted(self.workers.items())), "duplicate_rows_dropped": self.duplicates_dropped}

    def rows(self, folder: Path, files: Sequence[Path], scorer: Scorer, device: str, threshold: float,
             batch_size: int, workers: int = 2, actor_class: type = ScoreActor) -> Iterator[ScoreRow]:
        """One ScoreRow per file, in the order of `files`, scored on the cluster (the local engine's rows).
        `workers`: reader threads inside each read task (cv2 and pydicom release the GIL while decoding).
        `actor_class`: ScoreActor or a subclass taking the same arguments (instrumentation, fault tests)."""
        ray = import_ray()
        import pyarrow as pa

        o = self.options
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows arrive in index order: the reorder buffer stays small
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=o.object_store_limit)
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # cxr-score reports the run itself
        blocks = []
        for start in range(0, len(files), ROWS_PER_BLOCK):
            chunk = files[start:start + ROWS_PER_BLOCK]
            blocks.append(pa.table({"index": pa.array(range(start, start + len(chunk)), pa.int64()),
                                    "path": pa.array([os.fsencode(folder / f) for f in chunk], pa.binary())}))
        ds = ray.data.from_arrow(blocks)
        del blocks  # the object store has them now
        # Retries are Ray Data's defaults, which suit a pipeline of pure stages: a read task whose worker dies runs
        # again (max_retries=-1), a scorer actor that dies is restarted and its batches re-sent (max_restarts=-1,
        # max_task_retries=-1). An exception inside a stage is not retried: the stages turn every per-file failure
        # into an error row themselves, so an exception there is a bug and ends the run.
        # The read tasks ask for memory (they decode full-size radiographs, `workers` at a time), which also
        # keeps Ray Data from fusing them into the scorer actors: reads then scale with the cluster's CPUs, not
        # with the number of model sessions.
        self.read_threads = workers
        ds = ds.map_batches(read_batch, fn_kwargs={"config": scorer.card.preprocess, "threads": workers},
                            batch_size=batch_size, batch_format="numpy", num_cpus=1, memory=o.read_task_memory)
        actor_device = "cuda" if o.gpus_per_actor > 0 and device == "auto" else device
        ds = ds.map_batches(actor_class, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=o.actors),
                            fn_constructor_args=(str(Path(scorer.model_path).resolve()), actor_device, scorer.threads,
                                                 threshold, scorer.model_sha256),
                            num_cpus=o.cpus_per_actor, num_gpus=o.gpus_per_actor or None)
        pending: dict[int, ScoreRow] = {}
        next_index = 0
        stream = _plain_errors(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1), ray)
        try:
            for batch in stream:
                for j, index in enumerate(batch["index"].tolist()):
                    if index < next_index or index in pending:
                        self.duplicates_dropped += 1
                        continue
                    pending[index] = row_from_columns(batch, j, files[index].as_posix())
                    self.workers[str(batch["worker"][j])] += 1
                while next_index in pending:
                    yield pending.pop(next_index)
                    next_index += 1
        finally:  # Ctrl-C, SIGTERM, a write error: stop the pipeline now (closing reaches Ray Data's own iterator)
            stream.close()
        if next_index != len(files):
            raise RayEngineError(f"the Ray run returned {next_index} of {len(files)} rows in order (first missing: "
                                 f"{files[next_index].as_posix()}); the results were not committed")


def _plain_errors(batches, ray):
    """The batches, with a failure of the pipeline (a stage that raised, an actor that cannot start) turned into a
    RayEngineError holding the error's last unindented line (its message) instead of a cluster-wide traceback."""
    try:
        yield from batches
    except ray.exceptions.RayError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if not line.startswith(" ")), type(exc).__name__)
        raise RayEngineError(f"the Ray pipeline failed: {type(exc).__name__}: {last.strip()[:400]}") from None


def _signal_handlers() -> dict:
    """The SIGTERM and SIGINT handlers now (empty off the main thread, where they cannot be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(handlers: dict) -> None:
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _main_resources(resources: dict) -> dict:
    return {k: resources[k] for k in ("CPU", "GPU", "memory", "object_store_memory") if k in resources}

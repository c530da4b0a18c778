"""Which precision runs, on which provider, and why: fp32, bf16 (OpenVINO only), int8 (the model.int8.onnx copy).

`plan_precision` turns `--device` and `--precision` into a `PrecisionPlan` before any session is built, or raises
`PrecisionError` (a usage error, exit 2) naming the way out: bf16 on a provider or CPU that cannot run it, int8
without its file, a precision whose measured accuracy gate failed (unless forced), --device openvino without the
onnxruntime-openvino build. Nothing falls back silently.

`--precision auto` reads the accuracy and speed that `cxr-bench --labels` measured for this model on this host
(cxr.runtime.precision_gate, `<model>.precision.json` beside the fp32 file, keyed by the model's sha256, the
provider, the onnxruntime build and the CPU's flags) and picks the fastest precision whose gate passed; without a
measurement it runs fp32 and says why.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cxr.runtime.errors import CxrError
from cxr.runtime.serialization import sha256_file

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
CHOICES = PRECISIONS + ("auto",)
GATES = {"bf16": 0.005, "int8": 0.01}
AUTO_MIN_SPEEDUP = 1.1
"""auto trades fp32 for a reduced precision only when it measured at least this much faster (a tie within timing
noise on a shared machine is no reason to give up any accuracy)."""
"""Largest AUROC drop against fp32 (same provider, same labelled images) a reduced precision may show."""
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
PRECISION_FLAGS = ("avx2", "avx512f") + BF16_FLAGS + INT8_FLAGS
"""The CPU flags that decide what each precision can do; recorded with every run and measurement."""

OPENVINO = "OpenVINOExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO_INSTALL = ("pip install 'cxr[openvino]' in its own virtual environment (onnxruntime-openvino replaces the "
                    "onnxruntime module, so it never lives beside cxr[cpu] or cxr[gpu])")
OV_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""OpenVINO's INFERENCE_PRECISION_HINT per precision. Set explicitly every time: on CPUs with AMX, OpenVINO's own
default is bf16, so an fp32 run that left it unset would silently run bf16. int8 asks for f32 too, but OpenVINO
decides how a quantized file runs: on a Xeon with AMX its int8 logits matched its bf16 run of the fp32 file to 5e-6,
so the manifest records the hint asked for, and the accuracy is what is measured, not what the name promises."""


class PrecisionError(CxrError):
    """A --device/--precision request this host or install cannot honour; the message names the way out."""


def int8_path(model: Path) -> Path:
    """model.onnx -> model.int8.onnx (where cxr-export --quantize int8 writes it)."""
    base = model.name[:-len(".onnx")] if model.name.endswith(".onnx") else model.name
    return model.with_name(f"{base}.int8.onnx")


def ort_build() -> dict[str, Any]:
    """onnxruntime's version, the distribution that installed it (onnxruntime, -gpu, -openvino) and its providers."""
    from importlib import metadata

    from cxr.runtime.ort import import_ort

    ort = import_ort()
    dist = "unknown"
    for name in ("onnxruntime-openvino", "onnxruntime-gpu", "onnxruntime"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        dist = name
        break
    return {"version": ort.__version__, "distribution": dist, "providers": list(ort.get_available_providers())}


def cpu_flags(info: Mapping[str, Any] | None = None) -> dict[str, bool]:
    """PRECISION_FLAGS of this CPU (or of `info`, a cxr.runtime.bench.cpu_info dict)."""
    if info is None:
        from cxr.runtime.bench import cpu_info

        info = cpu_info()
    flags = info.get("flags", {})
    return {name: bool(flags.get(name)) for name in PRECISION_FLAGS}


@dataclass(frozen=True)
class Host:
    """What a precision decision depends on: the CPU, its flags and the onnxruntime build."""

    cpu_model: str
    flags: Mapping[str, bool]
    ort: Mapping[str, Any]

    @classmethod
    def detect(cls) -> "Host":
        from cxr.runtime.bench import cpu_info

        info = cpu_info()
        return cls(info["model"], cpu_flags(info), ort_build())

    @property
    def has_openvino(self) -> bool:
        return OPENVINO in self.ort.get("providers", ())

    @property
    def has_cuda(self) -> bool:
        return CUDA in self.ort.get("providers", ())

    def present(self, names=PRECISION_FLAGS) -> list[str]:
        return [n for n in names if self.flags.get(n)]

    def key(self, provider: str, model_sha256: str) -> dict[str, Any]:
        """The key a measurement is stored under: a measurement holds only for the same model, provider, onnxruntime
        build and CPU flags."""
        return {"model_sha256": model_sha256, "provider": provider, "onnxruntime": self.ort.get("version"),
                "distribution": self.ort.get("distribution"), "cpu_flags": self.present()}


def expected_device(device: str, host: Host) -> str:
    """The provider a --device value will run on: auto prefers CUDA, then OpenVINO (installed on purpose), then CPU."""
    if device != "auto":
        return device
    return "cuda" if host.has_cuda else "openvino" if host.has_openvino else "cpu"


@dataclass
class PrecisionPlan:
    """What will run: the file, the provider, the precision, why, and the accuracy measured for it (if any)."""

    requested: str
    precision: str
    device: str
    model_path: Path
    source_model: Path
    why: str
    gate: dict[str, Any] | None = None
    forced: bool = False
    host: Host | None = field(default=None, repr=False)

    def facts(self) -> dict[str, Any]:
        """The manifest's / bench output's 'precision' section."""
        host = self.host
        return {"requested": self.requested, "used": self.precision, "device": self.device,
                "model_file": str(self.model_path), "why": self.why, "forced": self.forced,
                "openvino_inference_precision_hint": OV_HINTS.get(self.precision) if self.device == "openvino"
                else None,
                "accuracy_gate": self.gate,
                "cpu_flags": dict(host.flags) if host else None,
                "cpu_model": host.cpu_model if host else None,
                "onnxruntime": dict(host.ort) if host else None}


def refuse_unrunnable(precision: str, device: str, model: Path, host: Host) -> None:
    """PrecisionError when `precision` cannot run on `device` on this host, naming the way out."""
    if device == "openvino" and not host.has_openvino:
        raise PrecisionError(f"--device openvino needs the OpenVINO execution provider, which this onnxruntime "
                             f"({host.ort.get('distribution')} {host.ort.get('version')}: "
                             f"{', '.join(host.ort.get('providers', ()))}) lacks: {OPENVINO_INSTALL}")
    if precision == "fp32":
        return
    if device == "cuda":
        raise PrecisionError(f"--precision {precision} runs on CPU providers only (cpu, openvino); on --device cuda "
                             "use --precision fp32")
    if precision == "bf16":
        if device != "openvino":
            raise PrecisionError("--precision bf16 runs on the OpenVINO provider only (ONNX Runtime's CPU provider "
                                 f"has no bf16 kernels): pass --device openvino; to get it, {OPENVINO_INSTALL}")
        if not host.present(BF16_FLAGS):
            raise PrecisionError(f"--precision bf16: this CPU ({host.cpu_model}) has neither avx512_bf16 nor "
                                 "amx_bf16, so bf16 would be emulated, slower than fp32: use --precision fp32 or "
                                 "int8")
    if precision == "int8" and not int8_path(model).is_file():
        raise PrecisionError(f"--precision int8 runs {int8_path(model).name} beside {model}, which does not exist: "
                             f"write it with cxr-export RUN --out {model} --quantize int8")


def plan_precision(model: str | Path, device: str, precision: str | None, batch_size: int = 8, force: bool = False,
                   host: Host | None = None) -> PrecisionPlan:
    """Decide what runs for `--model model --device device --precision precision` (None: the file as given).

    Raises PrecisionError for what cannot or must not run (see the module docstring).
    """
    model = Path(model)
    host = host or Host.detect()
    target = expected_device(device, host)
    if precision is None:  # the file as given; `settle` reads its precision from its card once it is loaded
        refuse_unrunnable("fp32", target, model, host)
        return PrecisionPlan("default", "fp32", target, model, model, "the file as given", host=host)
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {CHOICES}, got {precision!r}")
    if precision == "auto":
        return _auto(model, target, batch_size, host, lookup(model, target, host))
    refuse_unrunnable(precision, target, model, host)
    record = lookup(model, target, host) if precision != "fp32" else None
    gate = record["precisions"].get(precision) if record else None
    path = int8_path(model) if precision == "int8" else model
    if precision == "fp32":
        return PrecisionPlan(precision, "fp32", target, path, model, "asked for fp32", host=host)
    if gate is None:
        why = (f"asked for {precision}; its accuracy is not measured for this model on this host (run cxr-bench "
               f"--model {model} --device {target} --labels LABELS to measure it)")
        return PrecisionPlan(precision, precision, target, path, model, why, None, host=host)
    if not gate.get("passed"):
        if not force:
            raise PrecisionError(f"--precision {precision} failed its accuracy gate for this model on this host "
                                 f"({gate.get('verdict')}): use --precision fp32 or auto, or --force-precision to "
                                 "run it anyway")
        return PrecisionPlan(precision, precision, target, path, model,
                             f"asked for {precision}, which FAILED its accuracy gate ({gate.get('verdict')}); run "
                             "anyway: --force-precision", gate, True, host)
    return PrecisionPlan(precision, precision, target, path, model,
                         f"asked for {precision}; accuracy gate passed ({gate.get('verdict')})", gate, host=host)


def _auto(model: Path, target: str, batch_size: int, host: Host, record: dict | None) -> PrecisionPlan:
    """The fastest precision whose gate passed in `record` (None: fp32, saying why)."""
    refuse_unrunnable("fp32", target, model, host)
    if target == "cuda":
        return PrecisionPlan("auto", "fp32", target, model, model, "auto on CUDA: only fp32 is offered there",
                             host=host)
    if record is None:
        return PrecisionPlan("auto", "fp32", target, model, model,
                             f"auto: no accuracy measurement of this model for {target} on this host (CPU flags "
                             f"{' '.join(host.present()) or 'none'}, onnxruntime {host.ort.get('version')}), so fp32; "
                             f"measure with cxr-bench --model {model} --device {target} --labels LABELS", host=host)
    candidates, skipped = [], []
    for name, entry in record["precisions"].items():
        if name != "fp32" and not entry.get("passed"):
            skipped.append(f"{name} failed its gate ({entry.get('verdict')})")
            continue
        if name == "int8" and not int8_matches(model, entry):
            skipped.append(f"int8: {int8_path(model).name} is missing or changed since it was measured")
            continue
        if name == "bf16" and not host.present(BF16_FLAGS):
            skipped.append("bf16: this CPU lacks avx512_bf16/amx_bf16")
            continue
        ms, batch = speed_at(entry, batch_size)
        if ms is not None:
            candidates.append((ms, name, batch, entry))
    if not candidates:
        return PrecisionPlan("auto", "fp32", target, model, model, "auto: the measurement has no timings; fp32",
                             host=host)
    fp32_ms = next((m for m, n, _, _ in candidates if n == "fp32"), None)
    ms, name, batch, entry = min(candidates, key=lambda c: c[0])
    speeds = ", ".join(f"{n} {m:.3g}" for m, n, _, _ in sorted(candidates, key=lambda c: c[0]))
    if name != "fp32" and fp32_ms is not None and fp32_ms < AUTO_MIN_SPEEDUP * ms:
        return PrecisionPlan("auto", "fp32", target, model, model,
                             f"auto: fp32, since no precision whose gate passed was at least {AUTO_MIN_SPEEDUP}x "
                             f"faster (ms/image at batch {batch}: {speeds}; measured {record.get('measured', '?')})",
                             host=host)
    why = (f"auto: {name} is the fastest precision whose accuracy gate passed for this model on this host "
           f"(ms/image at batch {batch}: {speeds}; measured {record.get('measured', '?')})")
    if name != "fp32":
        why += f"; {entry.get('verdict')}"
    if skipped:
        why += "; not considered: " + "; ".join(skipped)
    path = int8_path(model) if name == "int8" else model
    return PrecisionPlan("auto", name, target, path, model, why, entry if name != "fp32" else None, host=host)


def settle(plan: PrecisionPlan, card) -> None:
    """After loading: the precision the loaded file's card states (export.precision) must be the plan's. A reduced
    copy given as --model runs as what it is when --precision was left out, and is refused when it was given."""
    stated = str((card.export or {}).get("precision") or "fp32")
    if plan.requested == "default":
        plan.precision = stated
        plan.why = f"the file as given ({stated}, per its card)"
        return
    expected = "int8" if plan.precision == "int8" else "fp32"  # bf16 is OpenVINO's arithmetic on the fp32 file
    if stated != expected:
        raise PrecisionError(f"--precision {plan.requested} chose {plan.precision}, but {plan.model_path} is the "
                             f"{stated} copy (per its card): give the fp32 model.onnx (int8 runs model.int8.onnx "
                             "beside it), or leave --precision out to run this file as it is")


def openvino_providers(available: list[str], precision: str, threads: int | None) -> list:
    """The providers list for the OpenVINO EP on the CPU at `precision`, ONNX Runtime's CPU provider after it for any
    node OpenVINO does not take. The inference precision hint is always set (see OV_HINTS)."""
    from cxr.runtime.errors import ProviderError

    if OPENVINO not in available:
        raise ProviderError(f"--device openvino needs the OpenVINO execution provider, which this onnxruntime lacks "
                            f"(it offers {', '.join(available)}): {OPENVINO_INSTALL}")
    if precision not in OV_HINTS:
        raise ValueError(f"precision must be one of {tuple(OV_HINTS)}, got {precision!r}")
    options = {"device_type": "CPU", "precision": "FP32",
               "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": OV_HINTS[precision]}})}
    if threads is not None:
        options["num_of_threads"] = str(threads)
    return [(OPENVINO, options), "CPUExecutionProvider"]


# The measurement file beside the model (written by cxr.runtime.precision_gate.save_measurement), read here so
# that planning never imports the measuring code (which imports the scorer, which plans).
SCHEMA = 1


def measurement_path(model: Path) -> Path:
    """model.onnx -> model.precision.json."""
    model = Path(model)
    base = model.name[:-len(".onnx")] if model.name.endswith(".onnx") else model.name
    return model.with_name(f"{base}.precision.json")


def _read(path: Path) -> dict[str, Any]:
    """The measurement file, or an empty one when absent; an unreadable or foreign file is an error naming it."""
    if not path.is_file():
        return {"schema": SCHEMA, "entries": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a cxr precision measurement ({exc}); delete it and measure again with "
                         "cxr-bench --labels") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("entries"), list):
        raise ValueError(f"{path}: not a cxr precision measurement of schema {SCHEMA}; delete it and measure again "
                         "with cxr-bench --labels")
    return data


def lookup(model: Path, provider: str, host: Host) -> dict[str, Any] | None:
    """The measurement of `model` for `provider` on this host (same key), or None."""
    path = measurement_path(model)
    if not path.is_file():
        return None
    key = host.key(provider, sha256_file(model))
    for entry in _read(path)["entries"]:
        if entry.get("key") == key:
            return entry
    return None


def int8_matches(model: Path, entry: dict[str, Any]) -> bool:
    """Whether model.int8.onnx is still the file that was measured."""
    path = int8_path(Path(model))
    return path.is_file() and sha256_file(path) == entry.get("file_sha256")


def speed_at(entry: dict[str, Any], batch_size: int) -> tuple[float | None, int | None]:
    """(median ms per image, batch) at the measured batch size nearest to `batch_size`."""
    timings = {int(b): v for b, v in (entry.get("ms_per_image") or {}).items()}
    if not timings:
        return None, None
    batch = min(timings, key=lambda b: (abs(b - batch_size), b))
    return float(timings[batch]), batch

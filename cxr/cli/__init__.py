"""Thin click commands. Heavy imports happen inside the command bodies so --help and --version stay fast."""

import importlib.util
import sys


def require_training_extra(prog: str) -> None:
    """Exit 1 with the way out when the `train` extra (torch, torchvision, onnx) is not installed.

    A scoring-only install (`pip install ".[cpu]"`) still has these commands on PATH; they must say what is missing
    instead of dying with a ModuleNotFoundError traceback.
    """
    missing = [name for name in ("torch", "torchvision", "onnx") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"{prog}: error: {', '.join(missing)} not installed; {prog} needs the training extra: "
              f"pip install 'cxr[train]' (or pip install -e '.[cpu,train]' in a checkout)", file=sys.stderr)
        sys.exit(1)

"""Thin click commands. Heavy imports happen inside the command bodies so --help and --version stay fast."""

import importlib.util
import math
import sys

import click


class FiniteFloat(click.FloatRange):
    """A float option that refuses nan and +-inf as a usage error (exit 2), with optional click.FloatRange bounds.

    Plain `float` and click.FloatRange accept 'nan' (every comparison with NaN is false, so a range check passes):
    --threshold nan labelled every file 0. Every float option of the cxr commands uses this type.
    """

    name = "float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        """No '[x<=None]' in --help for an unbounded option: only real bounds are shown."""
        return "" if self.min is None and self.max is None else super()._describe_range()


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

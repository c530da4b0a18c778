"""-q/--quiet and -v/--verbose, the same on every command: quiet is errors only (no progress, no summary, no
warnings), the default is progress and warnings, verbose adds debug logging."""

from __future__ import annotations

import logging
import sys
from typing import Callable

import click

QUIET, NORMAL, VERBOSE = "quiet", "normal", "verbose"
LEVELS = {QUIET: logging.ERROR, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}
QUIET_HELP = "Errors only: no progress, warnings or summary."


def verbosity_options(func: Callable | None = None, *, quiet_help: str = QUIET_HELP) -> Callable:
    """Add -q/--quiet and -v/--verbose; the command receives `quiet` and `verbose` (together: a usage error). Used
    bare (`@verbosity_options`) or with the --quiet help of a command whose quiet differs
    (`@verbosity_options(quiet_help=...)`)."""
    if func is None:
        return lambda f: verbosity_options(f, quiet_help=quiet_help)

    def pick(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        chosen = ctx.meta.setdefault("cxr.verbosity", set())
        if value:
            chosen.add(param.name)
        if chosen == {"quiet", "verbose"}:
            raise click.UsageError("-q/--quiet and -v/--verbose cannot be used together", ctx)
        return value

    func = click.option("-v", "--verbose", is_flag=True, callback=pick, expose_value=True,
                        help="Debug logging on stderr.")(func)
    func = click.option("-q", "--quiet", is_flag=True, callback=pick, expose_value=True, help=quiet_help)(func)
    return func


def verbosity(quiet: bool, verbose: bool) -> str:
    return QUIET if quiet else (VERBOSE if verbose else NORMAL)


def setup_logging(level_name: str, prefix: str, normal_level: int = logging.INFO) -> None:
    """Log records of cxr (and, verbose, of everything) to stderr as 'PREFIX: message'. `normal_level` is what a
    command shows by default (cxr-export shows warnings only; cxr-train shows its per-epoch lines)."""
    level = normal_level if level_name == NORMAL else LEVELS[level_name]
    logging.basicConfig(level=level, format=f"{prefix}: %(message)s", stream=sys.stderr)
    if level_name == QUIET:  # Python's warnings (torch's, a decoder's) through logging too, so quiet drops them
        logging.captureWarnings(True)

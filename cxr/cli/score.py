"""cxr-score: score every image under a folder (or the files or globs given) with an exported cxr model; write
results.csv and a manifest, and optionally an overlay PNG per image (--overlays DIR) and an HTML review report
(--report FILE.html). With exactly one image file, its probability and call are also printed on stdout.

Exit codes: 0 every file scored; 3 finished but some files failed (error rows), some folders could not be
walked, some overlays could not be written, or --labels matched few images (under half of the labelled paths and
under half of the scored images); 1 nothing could be done (missing/invalid model or card, a training run or checkpoint
given as --model, unwritable output, requested device unavailable, folder with no images); 2 usage errors (click),
including a labels file that is missing, lacks its columns, has no usable label or matches no scored image (checked
before scoring; nothing is written); 130 interrupted (Ctrl-C) or 143 terminated (SIGTERM: a batch system's time
limit, `timeout`, `docker stop`), with the rows done kept in <out>.partial either way (and, with --report, the report
of those rows, marked partial), and <out>.journal ready for --resume (cxr.runtime.journal), which also continues after
SIGKILL or a power loss.
onnxruntime is imported inside the command, so `cxr-score --help` and `--version` stay fast and torch-free.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import click

from cxr import __version__
from cxr.cli import FiniteFloat
from cxr.cli.precision_opts import DEVICE_HELP, precision_options
from cxr.cli.score_warnings import RunWarnings
from cxr.cli.verbosity import VERBOSE, setup_logging, verbosity_options

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143
STOP_DRAW_GRACE_S = 10.0  # a stopped run waits this long at most for the drawings of the rows done


def _BadParameter(message: str, param_hint: str | None = None) -> click.BadParameter:  # noqa: N802 (reads as the class)
    """click.BadParameter with the message's names escaped (they are printed to the terminal)."""
    from cxr.runtime.results import escape_text

    return click.BadParameter(escape_text(message), param_hint=param_hint)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so it unwinds like Ctrl-C: the rows done are kept, temp files removed."""


@contextmanager
def _sigterm_raises():
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut short keeping the rows done
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave its signal handling alone
        yield
        return
    try:
        yield
    finally:
        if previous is not None:  # None: a handler installed from C, which Python cannot put back
            signal.signal(signal.SIGTERM, previous)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _check_out(out: Path, model: Path, labels: Path | None) -> None:
    """--out (and its manifest) must not overwrite an input: the model, the labels file, or an image."""
    from cxr.runtime.imaging import is_image_candidate
    from cxr.runtime.results import manifest_path

    for target in (out, manifest_path(out)):
        for name, given in (("--model", model), ("--labels", labels)):
            if given is not None and _same_file(target, given):
                raise _BadParameter(f"{target} would overwrite the {name} file {given}", param_hint="--out")
    if out.is_file() and is_image_candidate(out):
        raise _BadParameter(f"{out} is an image; results go to a CSV such as {out.with_suffix('.csv')}",
                                 param_hint="--out")


def _check_out_kind(out: Path) -> None:
    """--out must be a regular file or absent: a symbolic link, device node, FIFO or socket is refused (os.replace
    would put a regular file in its place, e.g. over /dev/null as root), and every name the run may create for it
    must fit NAME_MAX and PATH_MAX now, not fail after scoring."""
    import stat as st

    from cxr.runtime.results import derived_names

    if os.path.islink(out):
        _error(f"--out {out} is a symbolic link; give the real file (results are never written through a link)")
        sys.exit(EXIT_FAILED)
    try:
        mode = os.stat(out).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        _error(f"cannot write {out}: {exc.strerror or exc}")
        sys.exit(EXIT_FAILED)
    if mode is not None and not st.S_ISREG(mode):
        kind = ("a device node" if st.S_ISCHR(mode) or st.S_ISBLK(mode) else "a FIFO" if st.S_ISFIFO(mode)
                else "a socket" if st.S_ISSOCK(mode) else "not a regular file")
        _error(f"--out {out} is {kind}; results go to a regular file such as results.csv")
        sys.exit(EXIT_FAILED)
    try:
        name_max = os.pathconf(out.parent, "PC_NAME_MAX")
        path_max = os.pathconf(out.parent, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for path in derived_names(out):
        name, full = os.fsencode(path.name), os.fsencode(os.path.abspath(path))
        if len(name) > name_max or len(full) >= path_max:
            _error(f"--out {out}: the name {path.name} that this run writes beside it is too long "
                   f"({len(name)} bytes of at most {name_max} per name, {len(full)} of {path_max} per path); "
                   "give a shorter --out")
            sys.exit(EXIT_FAILED)


_LOCKS: list = []
"""The output locks this process holds; main() releases them however the run ends."""
_ENGINES: list = []
"""The Ray runs this process connected (cxr.runtime.ray_engine.RayRun); main() closes them however the run ends."""
_CREATED: list[Path] = []
"""Folders this run created for --out; main() removes them again if the run ends with them empty."""
_GLOB_CHARS = set("*?[")
_COLUMNS_HINT = "; choose the columns with --path-column and --label-column"


def _targets(targets: tuple[Path, ...]) -> tuple[Path, list[Path] | None, int]:
    """(folder, files relative to it or None to walk the folder, non-image files a glob matched) for FOLDER: one
    folder, or image files and globs (a glob keeps the image candidates it matches; a file named is scored as is)."""
    from cxr.runtime.imaging import is_image_candidate

    if len(targets) == 1 and targets[0].is_dir():
        return targets[0], None, 0
    if len(targets) == 1 and _is_path_list(targets[0]):
        return _listed(targets[0])
    paths: list[Path] = []
    skipped = 0
    for target in targets:
        if target.is_dir():
            raise _BadParameter(f"{target} is a folder; give one folder, or image files and globs, not both",
                                param_hint="FOLDER")
        if os.path.lexists(target):
            paths.append(target)
        elif _GLOB_CHARS & set(str(target)):
            import glob

            found = [Path(p) for p in sorted(glob.glob(str(target), recursive=True)) if os.path.isfile(p)]
            images = [p for p in found if is_image_candidate(p)]
            if not images:
                raise _BadParameter(f"{target} matches no image file ({len(found)} other file(s))",
                                    param_hint="FOLDER")
            skipped += len(found) - len(images)
            paths += images
        else:
            raise _BadParameter(f"{target} does not exist", param_hint="FOLDER")
    return _under_common_root(list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths)), skipped)


def _under_common_root(absolute: list[Path], skipped: int) -> tuple[Path, list[Path], int]:
    root = Path(os.path.commonpath([p.parent for p in absolute]))
    return root, sorted((p.relative_to(root) for p in absolute), key=lambda p: p.as_posix()), skipped


def _is_path_list(target: Path) -> bool:
    from cxr.runtime.pathlist import is_path_list

    return is_path_list(target)


def _listed(target: Path) -> tuple[Path, list[Path], int]:
    """A .txt/.csv/.parquet list of paths (cxr.runtime.pathlist): its files under their common folder."""
    from cxr.runtime.pathlist import PathListError, read_path_list

    try:
        return _under_common_root(read_path_list(target), 0)
    except PathListError as exc:
        raise _BadParameter(str(exc), param_hint="FOLDER") from None


def _make_out_folder(out: Path, quiet: bool) -> None:
    """Create --out's folder (and its parents) when missing, saying so; main() removes it if the run fails."""
    missing = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    if not missing:
        return
    try:
        out.parent.mkdir(parents=True)
    except OSError as exc:
        _error(f"cannot write {out}: cannot create folder {out.parent}: {exc.strerror or exc}")
        sys.exit(EXIT_FAILED)
    _CREATED.extend(reversed(missing))  # innermost first
    _note(f"created folder {out.parent} for --out", quiet)


def _remove_created() -> None:
    """Remove the folders made for --out that are still empty (the run failed before writing into them)."""
    while _CREATED:
        try:
            _CREATED.pop(0).rmdir()
        except OSError:
            _CREATED.clear()  # not empty: results (or something else) are in it, and in its parents


def _lock_out(out: Path, warn: Callable[[str], None]) -> None:
    """Hold <out>.lock for the run: a second run on the same --out is refused (exit 1), a dead run's lock taken over."""
    from cxr.runtime.results import OutputLock, OutputLocked

    lock = OutputLock(out)
    try:
        lock.acquire()
    except OutputLocked as exc:
        _error(f"another run is writing {out}: {exc}")
        sys.exit(EXIT_FAILED)
    except OSError as exc:
        _error(f"cannot write {out}: cannot create {lock.path}: {exc.strerror or exc}")
        sys.exit(EXIT_FAILED)
    _LOCKS.append(lock)
    if lock.taken_over is not None:
        warn(f"took over {lock.path}, left by process {lock.taken_over}, which no longer runs")


def _overlap(a: Path, b: Path) -> bool:
    ra, rb = a.resolve(), b.resolve()
    return ra == rb or ra.is_relative_to(rb) or rb.is_relative_to(ra)


def _holds_input(target: Path, folder: Path, files: list[Path] | None) -> bool:
    """Whether an output folder overlaps FOLDER, or (files given) holds one of the files, which it could replace."""
    if files is None:
        return _overlap(target, folder)
    resolved = target.resolve()
    return any((folder / f).resolve().is_relative_to(resolved) for f in files)


def _check_extras(folder: Path, out: Path, model: Path, labels: Path | None, overlays: Path | None,
                  report: Path | None, files: list[Path] | None = None) -> None:
    """--overlays and --report (and its thumbnails folder) must stay out of FOLDER (or the folders of the files
    given), whose next run would score them (and whose files they could replace), and the report must not replace
    another input or output."""
    from cxr.runtime.report import thumbs_dir_for
    from cxr.runtime.results import manifest_path

    if overlays is not None:
        if overlays.exists() and not overlays.is_dir():
            raise _BadParameter(f"{overlays} exists and is not a folder", param_hint="--overlays")
        if _holds_input(overlays, folder, files):
            raise _BadParameter(f"{overlays} overlaps the scored folder {folder}; overlays go to a folder "
                                     "outside it (the next run would score them)", param_hint="--overlays")
    if report is None:
        return
    if report.suffix.lower() not in (".html", ".htm"):
        raise _BadParameter(f"{report} must end in .html", param_hint="--report")
    if report.is_dir():
        raise _BadParameter(f"{report} is a folder; give a file name such as {report / 'report.html'}",
                                 param_hint="--report")
    for name, given in (("--out", out), ("--out manifest", manifest_path(out)), ("--model", model),
                        ("--labels", labels)):
        if given is not None and (_same_file(report, given) or report.resolve() == given.resolve()):
            raise _BadParameter(f"{report} would overwrite the {name} file {given}", param_hint="--report")
    thumbs = thumbs_dir_for(report)
    if _holds_input(thumbs, folder, files):
        raise _BadParameter(f"the report's thumbnails folder {thumbs} would lie in the scored folder "
                                 f"{folder} (the next run would score them); write the report outside it",
                                 param_hint="--report")
    if overlays is not None and _overlap(thumbs_dir_for(report), overlays):
        raise _BadParameter(f"the report's thumbnails folder {thumbs_dir_for(report)} overlaps --overlays "
                                 f"{overlays}", param_hint="--report")


@dataclass
class _Extras:
    """The optional outputs of one run: the overlay folder, the report, and the writer that draws for both."""

    overlays: Path | None = None
    report_path: Path | None = None
    report: object | None = None  # cxr.runtime.report.Report
    drawer: object | None = None  # cxr.runtime.overlay.OverlayWriter
    wait_s: float = 0.0

    @property
    def maps(self) -> bool:
        return self.drawer is not None

    def add(self, row, label) -> None:
        index = self.report.add(row, label) if self.report is not None else 0
        if self.drawer is not None:
            self.drawer.submit(row, index)

    def finish(self, cancel: bool = False, stopping: bool = False) -> None:
        """Wait for the drawings (dropping those not started, with `cancel`); `stopping` (the run was stopped or
        failed): wait at most STOP_DRAW_GRACE_S, never for a drawing blocked on a hung file."""
        if self.drawer is not None:
            start = time.perf_counter()
            self.drawer.close(cancel=cancel, timeout=STOP_DRAW_GRACE_S if stopping else None)
            self.wait_s = time.perf_counter() - start

    def manifest(self) -> dict:
        out = {}
        if self.overlays is not None:
            out["overlays"] = {"folder": str(self.overlays), **self.drawer.stats.to_dict()}
        if self.report_path is not None:
            out["report"] = {"path": str(self.report_path), "thumbnails": str(self.report.thumbs),
                             "images_not_drawn": self.drawer.stats.failed}
        if self.drawer is not None:
            out["drawing_wait_after_scoring_s"] = round(self.wait_s, 3)
        return out


def _open_extras(folder: Path, overlays: Path | None, report: Path | None, scorer, thr: float, workers: int,
                 has_labels: bool, quiet: bool) -> _Extras:
    """Create the overlay folder and the report's thumbnails folder (OSError when they cannot be) and the drawer."""
    if overlays is None and report is None:
        return _Extras()
    from cxr.runtime.overlay import OverlayWriter
    from cxr.runtime.report import Report

    if overlays is not None:
        overlays.mkdir(parents=True, exist_ok=True)
    rep = None
    if report is not None:
        rep = Report(report, folder=folder, overlays_dir=overlays, labels=has_labels,
                     anatomy="ctr" in scorer.extra_outputs, masks="masks" in scorer.extra_outputs)
    if "cam" not in scorer.extra_outputs:
        _note("this model has no activation map (cam) output: overlays show the radiograph and its call only",
              quiet)
    drawer = OverlayWriter(folder, overlays.resolve() if overlays is not None else None, threshold=thr,
                           on_drawn=rep.on_drawn if rep is not None else None, workers=workers,
                           max_pending=4 * workers)
    return _Extras(overlays, report, rep, drawer)


def _connect(engine, quiet: bool):
    """The Ray run for --engine ray (exit 1 when the cluster cannot be reached), None for the local engine."""
    if engine is None or not engine.ray:
        return None
    from cxr.runtime.ray_engine import RayEngineError

    _note(f"connecting to Ray ({engine.address or 'RAY_ADDRESS, a cluster started here, or a new instance'})", quiet)
    try:
        run = engine.connect()
    except RayEngineError as exc:
        _error(str(exc))
        sys.exit(EXIT_FAILED)
    _ENGINES.append(run)
    return run


def _echo(line: str) -> None:
    """One line to stderr with control, format and undecodable characters escaped (cxr.runtime.results.escape_text):
    a file name holding ESC or CR cannot move the cursor or forge a 'cxr-score: error:' line."""
    from cxr.runtime.results import escape_text

    try:
        click.echo(escape_text(line), err=True)
    except (OSError, ValueError):  # stderr closed or its reader gone (`2>&1 | head -1`): the results still count
        pass


def _error(message: str) -> None:
    _echo(f"cxr-score: error: {message}")


def _fig(value, spec: str) -> str:
    """A figure for the summary; None (e.g. model time when no image was scored) reads 'n/a'."""
    return "n/a" if value is None else format(value, spec)


def _note(message: str, quiet: bool) -> None:
    if not quiet:
        _echo(f"cxr-score: {message}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               epilog="Exit codes: 0 all files scored; 3 finished but some files (or folders) failed; 1 nothing "
                      "could be done (model, card, output, device, no images); 2 usage; 130 interrupted, 143 "
                      "terminated (rows done kept in OUT.partial).")
@click.argument("targets", metavar="FOLDER | FILE... | 'GLOB'...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Results CSV to write (its manifest goes beside it as <name>.manifest.json); a missing folder "
                   "is created.")
@click.option("--model", required=True, envvar="CXR_MODEL", type=click.Path(path_type=Path),
              help="ONNX model exported by cxr-export (or set CXR_MODEL); a training run or .pt checkpoint must be "
                   "exported first: cxr-export RUN --out model.onnx.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "openvino"]), default="auto", show_default=True,
              help=DEVICE_HELP)
@precision_options
@click.option("--batch-size", type=click.IntRange(1, 4096), default=8, show_default=True,
              help="Images per model call. 8 keeps DenseNet-121 at 224 under ~350 MB peak (16: ~530 MB) and is as "
                   "fast per image on CPU; raise it on a GPU.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Threads that read and preprocess images while the model runs.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Intra-op threads for ONNX Runtime (default: its own choice, one per physical core). Lower it "
                   "to share the machine with other work.")
@click.option("--threshold", type=FiniteFloat(0.0, 1.0), default=None,
              help="Decision threshold for the cardiomegaly column; default: the model card's.")
@click.option("--shift-average", type=click.IntRange(1, 1024), default=None, metavar="PIXELS",
              help="Score each film nine times, as given and moved by PIXELS pixels (at the model's input size) "
                   "along each axis, and write the mean of the nine probabilities (nine times the model time). The "
                   "ctr, masks and maps stay the film's as given (on a model that decides by its ratio the call "
                   "follows the nine drawings' ratios). PIXELS must be under a quarter of the input size; 4 at 160 "
                   "px is what the real-data notes measured. Local engine, fp32 only.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV with columns path,label (or path,cardiomegaly; see --path-column, --label-column): adds a "
                   "label column to the results and metrics to the manifest and the report. Labels as cxr-train "
                   "reads them (1/0, true/false, yes/no, positive/negative, Cardiomegaly/Normal); paths relative "
                   "to FOLDER or to the CSV's folder, absolute, or bare file names when unique. No labelled path "
                   "matching a scored image is a usage error before scoring (exit 2, nothing written); under half "
                   "matching (of the labelled paths and of the images) is a warning and exit 3.")
@click.option("--path-column", default="path", show_default=True, help="--labels column with the image path.")
@click.option("--label-column", default=None,
              help="--labels column with the label  [default: label, else cardiomegaly]")
@click.option("--ctr-column", default=None,
              help="--labels column with manual cardiothoracic ratios (heart width over chest width, 0-1; blank "
                   "where not measured): the model's ctr column is compared with them on the labelled films "
                   "(error, share within 0.03, bias, Pearson r, slope) in the summary and the manifest. Models "
                   "with a ctr output only.")
@click.option("--group-column", default=None,
              help="--labels column of groups (site, scanner, view position such as NIH's 'View Position'): the "
                   "metrics are also reported per group (AUROC with its 95% CI, sensitivity, specificity) in the "
                   "summary, the manifest and the report; at most 50 groups among the matched films.")
@click.option("--overlays", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder (outside FOLDER; created if missing) for one PNG per scored image at the same relative "
                   "path (.png appended unless already .png): the radiograph, the model's activation map and, for "
                   "models with masks, the heart and lung contours and the CTR's two widths.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Self-contained HTML review report to write (with a <name>_thumbs/ folder beside it): the run, "
                   "ROC and metrics with --labels, and every image as a filterable card.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run on the same --out (Ctrl-C, SIGTERM, SIGKILL, crash, power loss) from "
                   "its journal OUT.journal: only files not yet scored (or changed since) are scored, and the CSV "
                   "is the one an uninterrupted run writes. A journal of another folder, model or settings is "
                   "refused (exit 2). Not with --overlays or --report.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: read, preprocess and score on a Ray cluster (extra cxr[ray]); same rows and manifest.")
@click.option("--ray-address", default=None,
              help="--engine ray: 'auto' (the cluster `ray start` runs here), ray://HOST:10001, or HOST:6379; "
                   "default: RAY_ADDRESS, else the cluster `ray start` runs here, else a new local instance.")
@click.option("--actors", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="--engine ray: scorer actors (one model session each).")
@click.option("--gpus-per-actor", type=FiniteFloat(0.0, 64.0), default=0.0, show_default=True,
              help="--engine ray: GPUs each scorer actor asks for (0.5: two actors share one).")
@verbosity_options(quiet_help="Errors only: no progress bar, notes, warnings or summary on stderr (the warnings "
                                "are kept in the manifest; one file's answer still goes to stdout).")
@click.version_option(__version__, prog_name="cxr-score")
def main(*, targets: tuple[Path, ...], out: Path, model: Path, device: str, batch_size: int, workers: int,
         threads: int | None, threshold: float | None, labels: Path | None, path_column: str,
         label_column: str | None, ctr_column: str | None, group_column: str | None, overlays: Path | None,
         report: Path | None,
         resume: bool, engine: str,
         ray_address: str | None, actors: int, gpus_per_actor: float, quiet: bool, verbose: bool,
         precision: str | None, force_precision: bool, shift_average: int | None) -> None:
    """Score every image under FOLDER (recursively, sorted) for cardiomegaly, or the image files given (quote a
    glob, e.g. 'scans/*.dcm', so that cxr-score expands it: no 'argument list too long'), or the files a LIST names
    (.txt: one path per line; .csv or .parquet: a 'path' column; relative to the list's folder).

    Writes one row per image file to --out (path,prob_cardiomegaly,cardiomegaly,status,error; then ctr,ctr_flag for
    models with a ctr output and label with --labels); paths are relative to FOLDER, or to the files' common folder.
    An unreadable image becomes an error row (no overlay) and the run goes on. With exactly one file, its probability
    and call (and ctr) are also printed on stdout. Research software, not a medical device.
    """
    from cxr.cli.score_journal import exit_now_if_readers_stuck

    _std_fds_open()
    if verbose:  # debug logging; warnings (cxr's and Python's) go through the run's RunWarnings, -v or not
        setup_logging(VERBOSE, "cxr-score")
    for option, column in (("--ctr-column", ctr_column), ("--group-column", group_column)):
        if column is not None and labels is None:
            raise click.UsageError(f"{option} names a column of the --labels file: give --labels too")
    if resume and (overlays is not None or report is not None):
        raise click.UsageError("--resume cannot be combined with --overlays or --report (the resumed rows have no "
                               "maps to draw); score without them, or start over without --resume")
    from cxr.cli.engines import EngineOption

    engine_option = EngineOption(engine, ray_address, actors, gpus_per_actor)
    engine_option.check(device, overlays, report)
    if engine_option.ray and precision is not None:
        raise click.UsageError("--precision is not available with --engine ray: the actors run the model file as "
                               "given (pass model.int8.onnx to score the int8 copy)")
    if shift_average is not None and engine_option.ray:
        raise click.UsageError("--shift-average is not available with --engine ray; score with the local engine")
    if shift_average is not None and precision not in (None, "fp32", "auto"):  # auto: checked once it settles
        raise click.UsageError(f"--shift-average runs the fp32 model; it is not combined with --precision {precision}")
    folder, files, globbed_other = _targets(targets)
    try:
        with _sigterm_raises():
            try:
                _ScoreRun(_Request(
                    folder=folder, out=out, model=model, device=device, batch_size=batch_size, workers=workers,
                    threads=threads, threshold=threshold,
                    labels=_LabelsOption(labels, path_column, label_column, ctr_column, group_column),
                    overlays=overlays, report=report, quiet=quiet, verbose=verbose, files=files,
                    globbed_other=globbed_other, resume=resume, engine=engine_option, precision=precision,
                    force_precision=force_precision, shift_average=shift_average)).run()
            except _Terminated:  # before scoring started (once it has, the run reports it itself)
                _error(f"terminated (SIGTERM) before scoring started; nothing was written to {out}")
                sys.exit(EXIT_TERMINATED)
            finally:
                while _ENGINES:
                    _ENGINES.pop().close()
                while _LOCKS:
                    _LOCKS.pop().release()
                _remove_created()
    except SystemExit as exc:  # the rows are kept and the lock released: never wait on a reader blocked in C
        exit_now_if_readers_stuck(exc.code)
        raise


def _std_fds_open() -> None:
    """Started with stdin, stdout or stderr closed (`2>&-`): put /dev/null there, or the results file opened next
    would get descriptor 2 and every decoder warning written to stderr would land in the CSV."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one


@dataclass
class _LabelsOption:
    """--labels and the columns to read from it."""

    path: Path | None
    path_column: str = "path"
    label_column: str | None = None
    ratio_column: str | None = None
    group_column: str | None = None


def _read_label_table(option: _LabelsOption):
    """The labels (None without --labels); a usage error (exit 2) for a file without its columns or usable labels."""
    from cxr.runtime.labels import ACCEPTED, RATIO_WORDS, GroupsError, LabelsError, read_labels

    if option.path is None:
        return None
    try:
        table = read_labels(option.path, option.path_column, option.label_column, ratio_column=option.ratio_column,
                            group_column=option.group_column)
    except GroupsError as exc:
        raise _BadParameter(str(exc), param_hint="--group-column") from None
    except LabelsError as exc:
        if RATIO_WORDS in str(exc):
            raise _BadParameter(str(exc), param_hint="--ctr-column") from None
        hint = _COLUMNS_HINT if "missing column" in str(exc) else ""
        raise _BadParameter(f"{exc}{hint}", param_hint="--labels") from None
    if not table.labels:
        column = repr(option.label_column) if option.label_column else "'label' (or 'cardiomegaly')"
        examples = f", such as {', '.join(map(repr, table.bad_values))}" if table.bad_values else ""
        raise _BadParameter(f"{option.path}: no usable label in column {column}: {table.ignored} line(s) "
                            f"blank or unreadable{examples}; labels are {ACCEPTED}{_COLUMNS_HINT}",
                            param_hint="--labels")
    if option.ratio_column is not None and not table.ratios:
        examples = f", such as {', '.join(map(repr, table.ratio_bad_values))}" if table.ratio_bad_values else ""
        raise _BadParameter(f"{option.path}: no usable manual ratio in column {option.ratio_column!r}: "
                            f"{table.ratio_blank} labelled line(s) blank, {table.ratio_ignored} unreadable"
                            f"{examples}; a ratio is a number above 0 and at most 1", param_hint="--ctr-column")
    return table


def _match_labels(table, folder: Path, files: list[Path], warn: Callable[[str], None]):
    """A LabelMatcher for the walked files; a usage error when no labelled path matches a scored image, a warning
    (and exit 3 at the end) when few do."""
    from cxr.runtime.labels import MAX_GROUPS, GroupsError, LabelMatcher, LabelsError, match_labels

    try:
        match = match_labels(table, folder, files)
    except LabelsError as exc:
        hint = "--group-column" if isinstance(exc, GroupsError) else "--labels"
        raise _BadParameter(str(exc), param_hint=hint) from None
    if not match.by_file:
        raise _BadParameter(f"{table.source}: no labelled path matches an image in {folder}: "
                            f"{match.describe(table, files)}; give paths relative to FOLDER (or --path-column "
                            "for another column)", param_hint="--labels")
    if table.ratio_column is not None and not match.ratio_by_file:
        raise _BadParameter(f"{table.source}: none of the {len(table.ratios)} manual ratio(s) in column "
                            f"{table.ratio_column!r} is on a labelled path that matches an image in {folder}",
                            param_hint="--ctr-column")
    matcher = LabelMatcher(table, match)
    if table.group_column is not None:
        groups = matcher.groups_matched()
        if len(groups) > MAX_GROUPS:
            raise _BadParameter(f"{table.source}: column {table.group_column!r} has {len(groups)} different values "
                                f"among the {len(match.by_file)} labelled images that match (e.g. "
                                f"{', '.join(map(repr, groups[:3]))}); metrics are reported for at most "
                                f"{MAX_GROUPS} groups: name a column of sites, scanners or views, not of ids",
                                param_hint="--group-column")
    matched = len(match.by_file)
    matcher.few = 2 * matched < len(table.labels) and 2 * matched < len(files)
    if matcher.few:
        warn(f"--labels {table.source}: few labels match: {match.describe(table, files)} (the run ends with exit 3)")
    return matcher


@dataclass(frozen=True, kw_only=True)
class _Request:
    """What cxr-score was asked to do, as main() read it; the run reads it and never changes it."""

    folder: Path
    out: Path
    model: Path
    device: str
    batch_size: int
    workers: int
    threads: int | None
    threshold: float | None
    labels: _LabelsOption
    overlays: Path | None
    report: Path | None
    quiet: bool
    verbose: bool = False
    files: list[Path] | None = None  # None: walk the folder; else these files under it
    globbed_other: int = 0  # non-image files a glob matched
    resume: bool = False
    engine: object = None  # cxr.cli.engines.EngineOption, or None for the local engine
    precision: str | None = None
    force_precision: bool = False
    shift_average: int | None = None  # cxr.runtime.shifts.ShiftAverage over this many pixels


class _ScoreRun:
    """One cxr-score run in three steps, each ending the command with its exit code when it cannot go on:
    prepare (check the outputs, load the model, walk, open the results writer, journal and extras), score (the rows,
    kept in <out>.partial on any stop) and finish (manifest, report, summary, exit code). main() releases the locks,
    Ray runs and created folders however it ends."""

    def __init__(self, request: _Request) -> None:
        self.req = request
        self.started_wall = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.t0 = time.perf_counter()
        self.label_table = _read_label_table(request.labels)  # a usage error before anything is written
        self.warn = RunWarnings(_echo, quiet=request.quiet, verbose=request.verbose)  # said unless -q; all kept
        self.manifest_written = False
        self.report_written = False

    def run(self) -> None:
        self.warn.start_capture()
        try:
            self.prepare()
            self.score()
            self._finish_unless_terminated()
        finally:
            self.warn.stop_capture()

    def _finish_unless_terminated(self) -> None:
        try:
            self.finish()
        except _Terminated:
            req = self.req
            _error(f"terminated (SIGTERM) after {req.out} was written; "
                   + ("so was its manifest" if self.manifest_written else "its manifest was not")
                   + (f"; the report {self.extras.report_path} was not (a rerun writes it)"
                      if self.extras.report is not None and not self.report_written else ""))
            sys.exit(EXIT_TERMINATED)

    def prepare(self) -> None:
        """Everything before the first row: checks, model, results writer, walk, labels, engine, extras, journal."""
        req, out = self.req, self.req.out
        from cxr.cli.precision_opts import build_scorer
        from cxr.runtime.errors import CxrError
        from cxr.runtime.results import ResultsWriter
        from cxr.runtime.walk import WalkResult, find_images

        if out.is_dir():
            _error(f"--out {out} is a folder; give a file name such as {out / 'results.csv'}")
            sys.exit(EXIT_FAILED)
        if out.parent.exists() and not out.parent.is_dir():
            _error(f"cannot write {out}: {out.parent} is not a folder")
            sys.exit(EXIT_FAILED)
        _check_out(out, req.model, req.labels.path)
        _check_extras(req.folder, out, req.model, req.labels.path, req.overlays, req.report, req.files)
        _make_out_folder(out, req.quiet)
        _check_out_kind(out)
        _lock_out(out, self.warn)
        from cxr.cli.score_journal import name_leftovers, open_journal, resume_note

        name_leftovers(out, self.warn)
        if req.report is not None and not req.report.parent.is_dir():
            _error(f"cannot write {req.report}: folder {req.report.parent} does not exist")
            sys.exit(EXIT_FAILED)
        try:
            # With --engine ray the driver's session only reads the card and hashes the file; the actors score.
            on_ray = req.engine is not None and req.engine.ray
            scorer, plan = build_scorer(req.model, "cpu" if on_ray else req.device, req.precision,
                                        req.force_precision, req.threads, req.batch_size)
        except CxrError as exc:
            _error(str(exc))
            sys.exit(EXIT_FAILED)
        if req.shift_average is not None:
            if plan.precision != "fp32":  # --precision auto settling elsewhere, or the int8 file given as --model
                raise _BadParameter(f"--shift-average runs an fp32 model; this run would be {plan.precision} ("
                                    f"{plan.why}): give the fp32 model file, with --precision fp32 or none",
                                    param_hint="--shift-average")
            from cxr.runtime.shifts import ShiftAverage

            try:
                scorer = ShiftAverage(scorer, req.shift_average)
            except ValueError as exc:
                raise _BadParameter(f"{req.model}: {exc}", param_hint="--shift-average") from None
        self.scorer, self.plan = scorer, plan
        if req.labels.ratio_column is not None and "ctr" not in scorer.extra_outputs:
            raise _BadParameter(f"{req.model} has no ctr output to compare with the manual ratios (a model trained "
                                "with masks has one)", param_hint="--ctr-column")
        try:  # the model first: the columns depend on its outputs (ctr)
            writer = ResultsWriter(out, anatomy="ctr" in scorer.extra_outputs,  # an unwritable place fails now
                                   labels=self.label_table is not None)
        except OSError as exc:
            _error(f"cannot write results to {out}: {exc.strerror or exc}")
            sys.exit(EXIT_FAILED)
        self.writer = writer

        try:  # until scoring starts, any exit (Ctrl-C during a long walk included) removes the temporary file
            thr = self.thr = scorer.threshold if req.threshold is None else float(req.threshold)
            thr_source = self.thr_source = "card" if req.threshold is None else "--threshold"
            # --quiet: errors only; what --device auto and --precision picked, and why, are in the manifest
            _note(f"model {req.model} on {scorer.device} ({', '.join(scorer.providers)}); threshold {thr:g} "
                  f"({thr_source})", req.quiet)
            if req.shift_average is not None:
                own = "; the ctr is the film's as given" if "ctr" in scorer.extra_outputs else ""
                _note(f"--shift-average {req.shift_average}: each film scored {len(scorer.shifts)} times (moved by "
                      f"{req.shift_average} px), the probability their mean{own}", req.quiet)
            unchecked = plan.precision not in ("fp32", "fp16") and (plan.gate is None or plan.forced)
            if unchecked:  # never measured here, or forced past its failed gate
                self.warn(f"precision {plan.precision}: {plan.why}")
            else:
                _note(f"precision {plan.precision}: {plan.why}", req.quiet)

            walk = self.walk = (find_images(req.folder) if req.files is None
                                else WalkResult(files=req.files, skipped_non_images=req.globbed_other))
            for problem in walk.problems:
                self.warn(problem)
            if not walk.files:
                _error(f"no images found in {req.folder} ({walk.skipped_non_images} other file(s) skipped)")
                sys.exit(EXIT_FAILED)
            self.matcher = (_match_labels(self.label_table, req.folder, walk.files, self.warn)
                            if self.label_table is not None else None)
            self.ray_run = _connect(req.engine, req.quiet)
            try:
                self.extras = _open_extras(req.folder, req.overlays, req.report, scorer, thr, req.workers,
                                           self.label_table is not None, req.quiet)
            except OSError as exc:
                _error(f"cannot create the overlay folder or the report's thumbnails folder: {exc}")
                sys.exit(EXIT_FAILED)
            from cxr.runtime.journal import run_identity

            writer.identity = run_identity(folder=req.folder, model_sha256=scorer.model_sha256, threshold=thr,
                                           device=scorer.device, labels=req.labels.path,
                                           path_column=req.labels.path_column, label_column=req.labels.label_column,
                                           files_given=req.files is not None, precision=plan.precision,
                                           shift_average=req.shift_average)
            try:
                self.journal = open_journal(out, writer.identity, req.resume, self.warn)
            except OSError as exc:
                _error(f"cannot write the journal beside {out}: {exc.strerror or exc}")
                sys.exit(EXIT_FAILED)
            self.todo = self.journal.todo(req.folder, walk.files)
            _note(resume_note(self.journal, len(walk.files), len(self.todo)), req.quiet or not self.journal.reused)
        except BaseException:
            writer.discard()
            raise

    def score(self) -> None:
        """Score the files to do and commit the results; on any stop keep the rows done and exit (or re-raise)."""
        req, out, writer, journal, extras, matcher = (self.req, self.req.out, self.writer, self.journal, self.extras,
                                                      self.matcher)
        from tqdm import tqdm

        from cxr.runtime.errors import CxrError
        from cxr.runtime.results import Tally
        from cxr.runtime.scoring import score_folder

        tally = self.tally = Tally()
        last_row = None
        bar = tqdm(total=len(self.walk.files), unit="img", file=sys.stderr, dynamic_ncols=True,
                   disable=req.quiet or sys.stderr is None or not sys.stderr.isatty())
        t_score = time.perf_counter()
        try:
            rows = (score_folder(req.folder, self.scorer, batch_size=req.batch_size, workers=req.workers,
                                 threshold=self.thr, files=self.todo, maps=extras.maps) if self.ray_run is None
                    else self.ray_run.rows(req.folder, self.todo, self.scorer, req.device, self.thr, req.batch_size,
                                           req.workers))
            with closing(rows):  # on Ctrl-C the reader threads are stopped now, not at garbage collection
                for row in journal.rows_for(self.walk.files, rows):
                    label = matcher.label_of(row.path) if matcher is not None else None
                    writer.write(row, label)
                    journal.record(req.folder, row)
                    tally.add(row)
                    if matcher is not None:
                        matcher.add(row)
                    extras.add(row, label)  # queued for drawing, off this loop; error rows get no overlay
                    bar.update(1)
                    last_row = row
            self.scoring_s = time.perf_counter() - t_score
            bar.close()
            extras.finish()
            writer.commit()
            journal.remove()
            if writer.removed_partials:
                _note(f"removed {', '.join(map(str, writer.removed_partials))}, left by earlier interrupted run(s): "
                      f"{out} is complete", req.quiet)
            for kept in writer.kept_partials:
                self.warn(f"kept {kept}: left by an interrupted run of another folder, model or settings (or an "
                          "older cxr), so these results do not stand for it")
            if req.files is not None and len(self.walk.files) == 1 and last_row is not None and last_row.ok:
                _print_one(last_row, self.thr)
        except (KeyboardInterrupt, _Terminated) as exc:
            bar.close()
            kept = writer.abort()
            how = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
            stopped = (f"{how} after {writer.rows} of {len(self.walk.files)} file(s); {out} was not written"
                       + (f"; the rows done are in {kept}" if kept else "") + _keep_journal(journal))
            page = _partial_report(extras, matcher, self.thr, stopped, dict(
                scorer=self.scorer, folder=req.folder, out=kept or out, tally=tally, walk=self.walk,
                threshold=self.thr, threshold_source=self.thr_source, started=self.started_wall,
                total_s=time.perf_counter() - self.t0, scoring_s=time.perf_counter() - t_score, command=sys.argv))
            _error(stopped + page)
            sys.exit(EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED)
        except OSError as exc:  # disk full, file too large, output folder gone: say so, keep the rows, no traceback
            bar.close()
            extras.finish(cancel=True, stopping=True)
            kept = writer.abort()
            _error(f"cannot write results: {exc.strerror or exc}; {out} was not written"
                   + (f"; the rows done are in {kept}" if kept else "") + _keep_journal(journal))
            sys.exit(EXIT_FAILED)
        except CxrError as exc:  # the Ray engine's pipeline failed or lost rows: say so, keep the rows, no traceback
            bar.close()
            extras.finish(cancel=True, stopping=True)
            kept = writer.abort()
            _error(f"{exc}; {out} was not written" + (f"; the rows done are in {kept}" if kept else "")
                   + _keep_journal(journal))
            sys.exit(EXIT_FAILED)
        except BaseException as exc:
            bar.close()
            extras.finish(cancel=True, stopping=True)
            kept = writer.abort()
            _error(f"stopped by {type(exc).__name__}: {exc}; {out} was not written"
                   + (f"; the rows done are in {kept}" if kept else "") + _keep_journal(journal))
            raise

    def finish(self) -> None:
        """The manifest beside the committed results, the report, the summary, and the exit code."""
        req, out, extras, matcher = self.req, self.req.out, self.extras, self.matcher
        from cxr.runtime.results import build_manifest, manifest_path, write_json_atomic

        failed_drawings = extras.drawer.stats.failed if extras.drawer is not None else 0
        if failed_drawings:
            self.warn(f"{failed_drawings} image(s) could not be drawn for the overlays/report (first: "
                      f"{extras.drawer.stats.failures[0]}); see the manifest")
        label_report = matcher.report(self.thr) if matcher is not None else None
        agreement = (label_report or {}).get("ctr_agreement")
        if agreement is not None and agreement["follows"] is False:
            self.warn(_not_following(agreement))
        from cxr.cli.precision_opts import precision_check

        cut_short = None
        try:
            self.check = precision_check(self, matcher, _echo, self.warn)  # bf16/int8 + labels: the images in fp32
        except (KeyboardInterrupt, _Terminated) as exc:  # the results are complete: the manifest still gets written
            cut_short = exc
            self.check = {"compared": False, "why": "cut short by " + ("SIGTERM" if isinstance(exc, _Terminated)
                                                                       else "Ctrl-C") + " during the fp32 pass"}
        manifest = build_manifest(
            scorer=self.scorer, folder=req.folder, out=out, tally=self.tally, walk=self.walk, threshold=self.thr,
            threshold_source=self.thr_source, started=self.started_wall,
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            total_s=time.perf_counter() - self.t0, scoring_s=self.scoring_s, command=sys.argv, labels=label_report,
            options={"folder": req.folder, "out": out, "model": req.model, "device": req.device,
                     "batch_size": req.batch_size, "workers": req.workers, "threads": req.threads,
                     "threshold": req.threshold, "labels": req.labels.path, "overlays": extras.overlays,
                     "report": extras.report_path, "quiet": req.quiet, "resume": req.resume},
            outputs={**extras.manifest(), **self.journal.manifest()})
        from cxr.cli.engines import engine_manifest

        manifest["engine"] = engine_manifest(self.ray_run)
        if self.check is not None:
            manifest["precision_check"] = self.check
        manifest["warnings"] = self.warn.manifest()
        mpath = manifest_path(out)
        try:
            write_json_atomic(mpath, manifest)
            self.manifest_written = True
        except OSError as exc:
            _error(f"results written to {out}, but the manifest {mpath} could not be: {exc.strerror or exc}")
            sys.exit(EXIT_FAILED)
        if extras.report is not None:
            try:
                extras.report.write(manifest, _roc(matcher))
                self.report_written = True
            except OSError as exc:
                _error(f"results written to {out}, but the report {extras.report_path} could not be: "
                       f"{exc.strerror or exc}")
                sys.exit(EXIT_FAILED)
        if cut_short is not None:
            _error(f"{'terminated (SIGTERM)' if isinstance(cut_short, _Terminated) else 'interrupted'} during the "
                   f"comparison with fp32; {out} and its manifest {mpath} are complete (precision_check: not compared)")
            sys.exit(EXIT_TERMINATED if isinstance(cut_short, _Terminated) else EXIT_INTERRUPTED)
        if not req.quiet:
            for line in self.summary(mpath, manifest["timings"], label_report):
                _echo(f"cxr-score: {line}")
        few_labels = matcher is not None and matcher.few
        sys.exit(EXIT_OK if self.tally.error == 0 and not self.walk.problems and not failed_drawings
                 and not few_labels else EXIT_PARTIAL)

    def summary(self, mpath: Path, timings: dict, label_report: dict | None) -> list[str]:
        """The summary's lines, without the 'cxr-score: ' prefix."""
        tally, walk, thr, scorer, extras = self.tally, self.walk, self.thr, self.scorer, self.extras
        lines = [f"{tally.files} file(s): {tally.ok} ok, {tally.error} error"
                 + (" (" + ", ".join(f"{code} {n}" for code, n in sorted(tally.by_code.items())) + ")"
                    if tally.by_code else "")
                 + f"; {walk.skipped_non_images} non-image file(s) skipped"
                 + (f"; {len(walk.problems)} folder problem(s)" if walk.problems else ""),
                 f"threshold {thr:g} ({self.thr_source}); device {scorer.device} ({', '.join(scorer.providers)})",
                 f"{_fig(timings['images_per_s'], '.1f')} images/s; "
                 f"model {_fig(timings['mean_model_ms_per_image'], '.1f')} ms/image, "
                 f"end to end {_fig(timings['mean_end_to_end_ms_per_image'], '.1f')} ms/image"]
        if "ctr" in scorer.extra_outputs:
            decision = scorer.card.decision.get("mode", "classifier")
            flags = ", ".join(f"{flag} {n}" for flag, n in sorted(tally.ctr_flags.items())) or "none"
            lines.append(f"ctr column: the model's cardiothoracic ratio; probability from the {decision}; "
                         f"implausible masks: {flags}")
        elif "cam" not in scorer.extra_outputs:
            lines.append("this model has no ctr or cam output (exported before cxr 0.2): probabilities only")
        if label_report is not None:
            lines.append(f"labels: {label_report['matched']} matched, {label_report['labelled_not_found']} "
                         f"labelled but not found, {label_report['labelled_not_scored']} labelled but failed, "
                         f"{label_report['scored_without_label']} scored without label, "
                         f"{label_report['ignored_lines']} label line(s) ignored")
            m = label_report["metrics"]
            if m is not None:
                lo, hi = m["auroc_ci95"]
                lines.append(f"AUROC {_num(m['auroc'])} (95% CI {_num(lo)}-{_num(hi)}), n={m['n']} "
                             f"({m['n_positive']} positive); at {thr:g}: sensitivity {_num(m['sensitivity'])}, "
                             f"specificity {_num(m['specificity'])}, PPV {_num(m['ppv'])}, NPV {_num(m['npv'])}, "
                             f"F1 {_num(m['f1'])}")
            site = label_report.get("site_threshold") or {}
            if site.get("available"):
                held = site["held_out"]
                lines.append(f"site threshold: {site['threshold']:.4g} (Youden's J on these labelled films); fitted "
                             f"on half of them it gave sensitivity {_num(held['sensitivity'])}, specificity "
                             f"{_num(held['specificity'])} on the other half; for this site's other films: "
                             f"--threshold {site['threshold']:.4g}")
            if label_report.get("ctr_agreement") is not None:
                lines.append(_ratio_line(label_report["ctr_agreement"]))
            if label_report.get("groups") is not None:
                lines.extend(_group_lines(label_report["groups"], thr))
        if self.check is not None:
            from cxr.runtime.precision_check import summary_line

            lines.append(summary_line(self.check))
        if extras.overlays is not None:
            lines.append(f"overlays: {extras.drawer.stats.written} PNG(s) in {extras.overlays}")
        if extras.report_path is not None:
            lines.append(f"report: {extras.report_path} (thumbnails in {extras.report.thumbs})")
        lines.append(f"results: {self.req.out}; manifest: {mpath}")
        return lines


def _two(value: float) -> str:
    """2 decimals (never '-0.00'), or 'n/a' for NaN: Pearson r and the slope."""
    return "n/a" if value != value else f"{round(value, 2) + 0.0:.2f}"


def _not_following(a: dict) -> str:
    """The warning for a ctr column that does not follow the manual ratios, naming the likely cause."""
    slope, r = a["slope"], a["pearson_r"]
    figures = f"slope {_two(slope)}, Pearson r {_two(r)} on {a['n']} films"
    if slope < 0.25:
        cause = "the model gives about the same ratio to every film here (a typical heart, not this one)"
    elif slope < 0.5:
        cause = "the model's ratios vary far less than the manual ones"
    else:
        cause = "the model's ratios scatter widely around the manual ones"
    return (f"the ctr column does not follow the manual ratios in {a['column']!r} ({figures}): {cause}; do not use "
            "its ratio at this site")


def _group_lines(report: dict, thr: float) -> list[str]:
    """One summary line per group of --group-column: its films, AUROC with its interval, the operating point."""
    lines = [f"by {report['column']!r} ({len(report['groups'])} group(s)):"]
    for g in report["groups"]:
        name = repr(g["group"]) + ("" if g["group"] else " (blank)")  # quoted: a value '(blank)' is not the blank one
        left = "".join(f"; {g[k]} {what}" for k, what in (("failed", "failed to score"),
                                                            ("not_reached", "not reached")) if g.get(k))
        if not g["n"]:
            lines.append(f"  {name}: no labelled film scored ({g.get('labelled', 0)} labelled{left})")
            continue
        lo, hi = g["auroc_ci95"]
        defined = g["auroc"] is not None and g["auroc"] == g["auroc"]  # NaN (or null once in JSON): one class
        auroc = f"AUROC {_num(g['auroc'])} (95% CI {_num(lo)}-{_num(hi)})" if defined else "AUROC n/a (one class)"
        a = g.get("ctr_agreement")
        ratio = (f"; ctr vs manual on {a['n']} films: mean absolute error {_num(a['mae'])}, "
                 f"{100 * a['within_close']:.0f}% within {a['close']:g}, Pearson r {_two(a['pearson_r'])}"
                 if a and a["n"] else "")
        lines.append(f"  {name}: n={g['n']} ({g['n_positive']} positive), {auroc}; at {thr:g}: "
                     f"sensitivity {_num(g['sensitivity'])}, specificity {_num(g['specificity'])}{ratio}{left}")
    return lines


def _ratio_line(a: dict) -> str:
    """The ctr column against the manual ratios, one summary line."""
    left = "".join(f"; {n} {what}" for n, what in (
        (a["not_measured"], "not measurable (no heart or no lungs found)"), (a["not_scored"], "failed to score"),
        (a["blank_lines"], "labelled without a manual ratio"), (a["ignored_lines"], "with an unreadable ratio"))
        if n)
    if not a["n"]:
        return f"ctr vs manual ratios ({a['column']!r}): no film with a manual ratio has a ctr{left}"
    lo, hi = a["mae_ci95"]
    u = a["unflagged"]
    interval = f"95% CI {_num(lo)}-{_num(hi)}" if a["n"] >= 3 else "too few films for an interval"
    flags = ("" if u["n"] == a["n"] else f"; on the {u['n']} without a ctr_flag {_num(u['mae'])}" if u["n"]
             else "; every one has a ctr_flag")
    return (f"ctr vs manual ratios ({a['column']!r}) on {a['n']} films: mean absolute error {_num(a['mae'])} "
            f"({interval}), {100 * a['within_close']:.0f}% within {a['close']:g}, bias {a['bias']:+.4f}, "
            f"Pearson r {_two(a['pearson_r'])}, slope {_two(a['slope'])}{flags}{left}")


def _keep_journal(journal) -> str:
    """Close the journal for a later --resume; the words that say so."""
    try:
        journal.close()
    except OSError:
        return ""
    return f"; --resume continues from {journal.path}"


def _partial_report(extras: _Extras, matcher, thr: float, stopped: str, manifest_args: dict) -> str:
    """After Ctrl-C or SIGTERM: the report of the rows done, marked partial; what to add to the stop message."""
    if extras.report is None:
        extras.finish(cancel=True, stopping=True)
        return ""
    from cxr.runtime.results import build_manifest

    try:
        extras.finish(stopping=True)  # the drawings already queued (at most 4 per worker): the page shows the rows
        labels = matcher.report(thr) if matcher is not None else None
        if labels is not None:  # labelled images the run did not reach were found, not missing
            not_reached = len(matcher.table) - labels["matched"] - labels["labelled_not_scored"]
            labels["labelled_not_found"] -= not_reached
            labels["labelled_not_reached"] = not_reached
        manifest = build_manifest(**manifest_args, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  labels=labels, outputs=extras.manifest())
        extras.report.write(manifest, _roc(matcher), partial=stopped)
    except OSError as exc:
        return f"; the report {extras.report_path} could not be written: {exc.strerror or exc}"
    except KeyboardInterrupt:  # a second Ctrl-C while it is written (a second SIGTERM is ignored)
        return f"; the report {extras.report_path} was not written (interrupted again)"
    return f"; the report of the rows done, marked partial, is {extras.report_path}"


def _print_one(row, threshold: float) -> None:
    """The answer for a single file on stdout: path, probability, call (and ctr), tab-separated words a script can
    split and a person can read."""
    from cxr.runtime.results import escape_text

    call = "cardiomegaly" if row.label_pred else "no cardiomegaly"
    ctr = "" if row.ctr is None else f"\tctr {row.ctr:.4f}" + (f" ({row.ctr_flag})" if row.ctr_flag else "")
    click.echo(f"{escape_text(row.path)}\tprobability {row.probability:.4f}\t{call} (threshold {threshold:g}){ctr}")


def _roc(matcher):
    """(fpr, tpr) of the labelled rows for the report, or None without both classes."""
    from cxr.runtime import metrics

    if matcher is None or not metrics.has_both_classes(matcher.y):
        return None
    fpr, tpr, _ = metrics.roc_curve(matcher.y, matcher.p)
    return fpr, tpr


def _num(value: float) -> str:
    """4 decimals, or 'n/a' for an undefined ratio (NaN), e.g. NPV with no predicted negatives."""
    return "n/a" if value != value else f"{value:.4f}"


if __name__ == "__main__":
    main()

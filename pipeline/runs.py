"""Run folders: `<artifacts>/<run-name>/`, one sub-folder per stage, a record of each, and a lock.

A stage's outputs appear under their final name only when whole (a temporary folder renamed into
place, see runtime.fsio), and its record (`stages/<stage>.json`, hashes of every output) is written
last. A stage that fails leaves the run exactly as it was: the previous outputs and their record stay,
and evidence a failure wants kept (a failing parity report) goes to `failed/<stage>/` instead.

One process at a time works on a run: `run_lock` holds an exclusive lock on `<run>/.lock` for the
whole command (every stage of `run all`), and a second process is refused with a clear error.

seqship never deletes or replaces what it did not create. One rule says what is seqship's: a run folder is
a folder holding the marker `.seqship-run` (written when seqship creates the folder, or first uses an empty
one), and inside it the layout below. `run_lock` refuses a non-empty folder without the marker before it
writes anything there, and `refuse_overlap` a run folder that is, holds or sits inside the data it reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from seqship.pipeline import __version__
from seqship.runtime.bundle import MANIFEST, file_entry
from seqship.runtime.errors import SeqshipError
from seqship.runtime.fsio import (
    PARTIAL,
    FileSafetyError,
    replace_dir,
    sweep_partials,
    temp_dir,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

STAGES = ("data", "train", "export", "verify", "package")
# What each stage consumes from the one before it.
UPSTREAM = {
    "data": (),
    "train": ("data",),
    "export": ("train",),
    "verify": ("train", "export", "data"),
    "package": ("data", "train", "export", "verify"),
    "cv": ("data",),
    "baseline": ("data",),
}
# Stages a stage uses where the run has them current: the card compares the model with the baseline.
OPTIONAL_UPSTREAM = {"package": ("baseline",)}

# --- the run folder's layout, defined once ------------------------------------------------------------
# Every module that reads or writes a run folder names its folders and files from here (tests spell the
# paths out: they check the layout users see).
STAGE_DIRS = {  # stage -> its folder under the run
    "data": "data",
    "train": "train",
    "export": "export",
    "verify": "verify",
    "package": "bundle",
    "cv": "cv",
    "baseline": "baseline",
}
RECORDS_DIR = "stages"  # <run>/stages/<stage>.json: each stage's record
FAILED_DIR = "failed"  # <run>/failed/<stage folder>/: evidence of a failed stage
LOCK_FILE = ".lock"
RUN_MARKER = ".seqship-run"  # what makes a folder a run folder (see `claim_run_folder`)
REPORT_FILE = "report.html"
SWEEP_FILE = "sweep.json"  # pipeline.experiments.sweep's rows, in its sweep-<dataset> run
# data/ (pipeline.data.prepare): one JSON-lines file per split, and the summary
SPLITS = ("train", "val", "test")
SPLIT_SUFFIX = ".jsonl"
DATA_SUMMARY = "summary.json"
# train/ (pipeline.train); its tokenizer.json and labels.json are copied into export/
WEIGHTS = "weights.pt"
MODEL_CONFIG = "model_config.json"
TOKENIZER = "tokenizer.json"  # the bundle's name for it too (runtime.bundle.TOKENIZER)
LABELS = "labels.json"
METRICS = "metrics.json"  # train/ and baseline/
HISTORY = "history.json"
# export/: the model files under the bundle's names (runtime.bundle), and the export checks
EXPORT_SUMMARY = "export.json"
# verify/
PARITY = "parity.json"
# cv/
CV_RESULTS = "cv.json"


class StageError(SeqshipError):
    """A stage cannot run: an earlier stage is missing, or its outputs were altered."""


class ForeignFolderError(StageError):
    """An output path is, holds or lies inside something seqship did not create (the user's data, files)."""


@dataclass
class StageResult:
    """What one stage did: ran or skipped, where, in how long, and its summary."""

    stage: str
    path: Path
    skipped: bool
    seconds: float
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready form, as `--json` prints it."""
        return {
            "stage": self.stage,
            "path": str(self.path),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "summary": self.summary,
        }


class Run:
    """One run folder: artifacts/<run-name>/ with a sub-folder per stage and a record of each."""

    def __init__(self, artifacts_dir: str | os.PathLike, name: str):
        if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or "\0" in name:
            raise StageError(f"--run-name {name!r} must be a plain folder name (no '/', not starting with '.')")
        self.root = Path(artifacts_dir).resolve() / name
        try:  # TorchScript and the stage records take paths as UTF-8 text: refuse now, not after training
            str(self.root).encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(str(self.root)).decode("utf-8", "backslashreplace")
            raise StageError(
                f"{shown}: the run folder's path is not UTF-8 (as this system's locale decodes it); "
                "choose another --run-name or --artifacts-dir"
            ) from None
        self.name = name

    @classmethod
    def at(cls, root: str | os.PathLike) -> Run:
        """The run whose folder is `root`, found from something in it (a bundle): its name is what the
        folder is called, not checked as a new --run-name is."""
        run = cls.__new__(cls)
        run.root = Path(root).resolve()
        run.name = run.root.name
        return run

    def dir(self, stage: str) -> Path:
        """The folder holding a stage's outputs."""
        return self.root / STAGE_DIRS[stage]

    def failed_dir(self, stage: str) -> Path:
        """Where a failed stage's evidence is kept (never read by a later stage)."""
        return self.root / FAILED_DIR / STAGE_DIRS[stage]

    def file(self, stage: str, name: str) -> Path:
        """One file of a stage's outputs, e.g. run.file("verify", PARITY)."""
        return self.dir(stage) / name

    def split_path(self, split: str) -> Path:
        """The data stage's file of one split ("train", "val", "test")."""
        return self.dir("data") / f"{split}{SPLIT_SUFFIX}"

    @property
    def bundle_dir(self) -> Path:
        """The bundle the package stage writes."""
        return self.dir("package")

    @property
    def records_dir(self) -> Path:
        """Where the stage records are."""
        return self.root / RECORDS_DIR

    @property
    def report_path(self) -> Path:
        """The run's report.html."""
        return self.root / REPORT_FILE

    @property
    def lock_path(self) -> Path:
        """The file `run_lock` locks."""
        return self.root / LOCK_FILE

    def record_path(self, stage: str) -> Path:
        """The stage's record: inputs digest, hashes of its outputs, summary."""
        return self.records_dir / f"{stage}.json"

    def record(self, stage: str) -> dict | None:
        """The stage's record, or None when there is none (or it is unreadable)."""
        try:
            record = json.loads(self.record_path(stage).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return None
        return record if isinstance(record, dict) else None

    def intact(self, stage: str, record: dict | None = None) -> bool:
        """True when the stage's record exists and every output it lists is still there, unchanged."""
        record = record or self.record(stage)
        if not record:
            return False
        folder = self.dir(stage)
        try:
            for name, entry in record.get("outputs", {}).items():
                path = folder / name
                if (
                    not path.is_file()
                    or path.stat().st_size != entry["bytes"]
                    or file_entry(path)["sha256"] != entry["sha256"]
                ):
                    log.info("%s: %s changed or missing since the stage ran; it will run again", stage, path)
                    return False
        except (OSError, TypeError, KeyError, AttributeError):
            return False
        return True

    def require(self, stage: str, by: str) -> dict:
        """The record of an upstream stage, or a clear error saying which command to run first."""
        record = self.record(stage)
        if record is None:
            raise StageError(
                f"{by} needs the {stage} stage of run {self.name!r} ({self.dir(stage)}): run `pipeline run {stage}` first"
            )
        if not self.intact(stage, record):
            raise StageError(
                f"{by}: the outputs of stage {stage} in {self.dir(stage)} were changed or removed; "
                f"re-run `pipeline run {stage} --force`"
            )
        for up in UPSTREAM[stage]:  # stale: made from an upstream stage that has been redone since
            current = self.record(up)
            if current is None or record.get("inputs", {}).get(up) != current.get("outputs"):
                raise StageError(
                    f"{by}: stage {stage} was made from an earlier {up} stage, which has been redone since; "
                    f"re-run `pipeline run {stage}` (or `pipeline run all`) first"
                )
        for up in OPTIONAL_UPSTREAM.get(stage, ()):  # made with the one the run has now, or both without
            # compared by what the optional stage was made from: made again from the same, it is the same
            made_from, now = record.get("inputs", {}).get(up), (self.current(up) or {}).get("inputs_digest")
            if made_from != now:
                how = "without the" if made_from is None else "from an earlier" if now is not None else "from a"
                raise StageError(
                    f"{by}: stage {stage} was made {how} {up} stage{' that is no longer current' if now is None else ''}; "
                    f"re-run `pipeline run {stage}` (or `pipeline run all`) first"
                )
        return record

    def current(self, stage: str) -> dict | None:
        """The stage's record if it is intact and made from the current upstream stages, else None."""
        try:
            return self.require(stage, "report")
        except StageError:
            return None

    def current_cv(self) -> dict | None:
        """The cv record if it is current and was trained with the same config as the train stage."""
        cv, train = self.current("cv"), self.current("train")
        if cv is None or train is None or cv.get("inputs", {}).get("config") != train.get("inputs", {}).get("config"):
            return None
        return cv


def run_of_bundle(bundle_dir: str | os.PathLike) -> Run:
    """The run a bundle was packaged in: the folder holding it, as `run all` lays it out
    (<artifacts>/<run>/bundle/). Whether that folder holds the run's stages is for the caller to check."""
    return Run.at(Path(bundle_dir).resolve().parent)


def require_bundle(path: str | os.PathLike, option: str = "--bundle ") -> Path:
    """`path` as a bundle folder; a run folder or an artifacts folder given instead is answered with where
    its bundle is (`option`: how the command takes the folder, for the hint)."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        bundle = STAGE_DIRS["package"]
        for guess in (path / bundle, *sorted(path.glob(f"*/{bundle}"))[:3]):
            if (guess / MANIFEST).is_file():
                raise SeqshipError(f"{path} is not a bundle (no {MANIFEST}); did you mean {option}{guess}?")
    return path


def is_run_folder(root: str | os.PathLike) -> bool:
    """Whether `root` is a seqship run folder: it holds the marker, or (a run made before the marker) a
    stage record in stages/."""
    root = Path(root)
    if (root / RUN_MARKER).is_file():
        return True
    for stage in STAGE_DIRS:  # runs from before the marker: a record that names its own stage
        try:
            record = json.loads((root / RECORDS_DIR / f"{stage}.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(record, dict) and record.get("stage") == stage and "inputs_digest" in record:
            return True
    return False


def _empty(root: Path) -> bool:
    """Nothing in `root` but what an interrupted seqship command may leave (its lock, its temporaries)."""
    return all(p.name == LOCK_FILE or (p.name.startswith(".") and p.name.endswith(PARTIAL)) for p in root.iterdir())


def claim_run_folder(root: str | os.PathLike, option: str = "--run-name or --artifacts-dir") -> bool:
    """Make sure seqship may write in the run folder `root`: create it (with the marker), or mark an empty
    one, or accept a run folder; refuse anything else, naming it and `option` (how to choose another).
    Returns True when the folder was created now."""
    root = Path(root)
    try:
        if root.is_symlink() or root.exists():
            if not root.is_dir():
                raise ForeignFolderError(f"{root} is not a folder: it cannot be a run folder; choose another {option}")
            if not is_run_folder(root) and not _empty(root):
                raise ForeignFolderError(
                    f"{root} holds files seqship did not write (it has no {RUN_MARKER}, so it is not a seqship run "
                    f"folder): refusing to write stages into it, as they would replace its folders; "
                    f"choose another {option}"
                )
            created = False
        else:
            root.mkdir(parents=True)
            created = True
        if not (root / RUN_MARKER).is_file():
            write_text_atomic(
                root / RUN_MARKER,
                "A seqship run folder: seqship writes and replaces the stage folders here (pipeline/runs.py).\n",
            )
    except OSError as e:
        from seqship.runtime.fsio import describe_os_error

        raise FileSafetyError(describe_os_error(root, e, "write the run folder")) from None
    return created


def refuse_link(path: str | os.PathLike) -> Path:
    """`path`, a file seqship writes in a run folder, unless a link is there: writing would replace the file it
    points at, which seqship did not create."""
    path = Path(path)
    if path.is_symlink():
        raise ForeignFolderError(
            f"{path} is a link (to {os.readlink(path)}): refusing to replace what it points at; remove the link"
        )
    return path


def _within(a: Path, b: Path) -> bool:
    """Whether `a` is `b` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def refuse_overlap(root: str | os.PathLike, data: str | os.PathLike, what: str = "--data") -> None:
    """Refuse a run folder that is the data `what` names, holds it, or lies inside it (through links and any
    spelling of either path): the stages would replace the data, or be read as data next time."""
    folder, source = Path(os.path.realpath(root)), Path(os.path.realpath(data))
    if _within(source, folder) or _within(folder, source):
        how = "is" if folder == source else "holds" if _within(source, folder) else "lies inside"
        raise ForeignFolderError(
            f"the run folder {root} {how} the input data ({what} {data}): its stages would replace or mix with the "
            "data; choose another --artifacts-dir or --run-name, outside the data"
        )


def digest(obj) -> str:
    """sha256 of a JSON-able object's canonical form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


_held: dict[Path, int] = {}  # run root -> nesting depth of run_lock in this process
_held_guard = threading.Lock()


@contextmanager
def run_lock(run: Run) -> Iterator[None]:
    """Hold the run's exclusive lock (re-entrant within a process); refuse if another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with _held_guard:
        if run.root in _held:
            _held[run.root] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[run.root] -= 1
        return
    created = claim_run_folder(run.root)
    try:
        f = open(run.lock_path, "a+")
    except OSError as e:
        from seqship.runtime.fsio import describe_os_error

        raise FileSafetyError(describe_os_error(run.root, e, "write the run folder")) from None
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StageError(
                f"another pipeline process is working on run {run.name!r} ({run.root}); "
                "wait for it to finish, or use another --run-name"
            ) from None
        with _held_guard:
            _held[run.root] = 1
        try:
            sweep_partials(run.root)  # temporaries of a killed run; safe, as no other process is in here
            sweep_partials(run.records_dir)
            yield
        finally:
            with _held_guard:
                del _held[run.root]
            if created and {p.name for p in run.root.iterdir()} <= {LOCK_FILE, RUN_MARKER}:  # it wrote nothing
                run.lock_path.unlink()
                (run.root / RUN_MARKER).unlink(missing_ok=True)
                run.root.rmdir()
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()


def run_stage(run: Run, stage: str, inputs: dict, produce: Callable[[Path], dict], force: bool = False) -> StageResult:
    """Run `produce(tmp_dir)` unless a record with the same inputs and intact outputs exists.

    Outputs are written to a temporary folder beside the final one and renamed into place when whole;
    the record is written last. A run killed at any point leaves the old stage or none; a stage that
    raises leaves the run as it was (evidence it asks to keep goes to failed/<stage>/).
    """
    started = time.perf_counter()
    folder = run.dir(stage)
    key = digest(inputs)
    with run_lock(run):
        refuse_link(run.record_path(stage))
        record = run.record(stage)
        if not force and record and record.get("inputs_digest") == key and run.intact(stage, record):
            log.info("%s: inputs unchanged, reusing %s (use --force to redo)", stage, folder)
            return StageResult(stage, folder, True, time.perf_counter() - started, record.get("summary", {}))
        tmp = temp_dir(run.root, folder.name)
        try:
            try:
                summary = produce(tmp)
            except SeqshipError as e:
                if getattr(e, "keep_outputs", False):  # e.g. a failing parity report: evidence, never a stage output
                    run.failed_dir(stage).parent.mkdir(parents=True, exist_ok=True)
                    replace_dir(tmp, run.failed_dir(stage))
                raise
            outputs = {p.name: file_entry(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            # From here the old record no longer describes what is in the folder: remove it first, so a
            # crash between the two renames leaves "no stage" (re-run), never a record of other files.
            run.record_path(stage).unlink(missing_ok=True)
            replace_dir(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        seconds = time.perf_counter() - started
        write_json_atomic(
            run.record_path(stage),
            {
                "stage": stage,
                "inputs_digest": key,
                "inputs": inputs,
                "outputs": outputs,
                "summary": summary,
                "seconds": seconds,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seqship": __version__,
            },
        )
        return StageResult(stage, folder, False, seconds, summary)

"""The five stages as library functions, each writing one folder of a run, atomically, and skipping
itself when what it would consume is unchanged."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from pipeline import __version__
from pipeline.data import DataConfig, locate, prepare, read_split, source_digest, source_files
from runtime.bundle import file_entry
from runtime.errors import SeqshipError

log = logging.getLogger(__name__)

STAGES = ("data", "train", "export", "verify", "package")
STAGE_DIRS = {"data": "data", "train": "train", "export": "export", "verify": "verify", "package": "bundle", "cv": "cv"}
# What each stage consumes from the one before it.
UPSTREAM = {"data": (), "train": ("data",), "export": ("train",), "verify": ("train", "export", "data"), "package": ("data", "train", "export", "verify"), "cv": ("data",)}


class StageError(SeqshipError):
    """A stage cannot run: an earlier stage is missing, or its outputs were altered."""


@dataclass(frozen=True)
class VerifyConfig:
    """Parity tolerances: pass when |a - b| <= atol + rtol * |reference| element-wise."""

    atol: float = 1e-5
    rtol: float = 1e-5
    seed: int = 0  # random probe inputs


@dataclass
class StageResult:
    """What one stage did: ran or skipped, where, in how long, and its summary."""

    stage: str
    path: Path
    skipped: bool
    seconds: float
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "path": str(self.path), "skipped": self.skipped, "seconds": round(self.seconds, 3), "summary": self.summary}


class Run:
    """One run folder: artifacts/<run-name>/ with a sub-folder per stage and a record of each."""

    def __init__(self, artifacts_dir: str | os.PathLike, name: str):
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise StageError(f"--run-name {name!r} must be a plain folder name")
        self.root = Path(artifacts_dir).resolve() / name
        self.name = name

    def dir(self, stage: str) -> Path:
        return self.root / STAGE_DIRS[stage]

    def record_path(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def record(self, stage: str) -> dict | None:
        try:
            return json.loads(self.record_path(stage).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def intact(self, stage: str, record: dict | None = None) -> bool:
        """True when the stage's record exists and every output it lists is still there, unchanged."""
        record = record or self.record(stage)
        if not record:
            return False
        folder = self.dir(stage)
        for name, entry in record.get("outputs", {}).items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != entry["bytes"] or file_entry(path)["sha256"] != entry["sha256"]:
                log.info("%s: %s changed or missing since the stage ran; it will run again", stage, path)
                return False
        return True

    def require(self, stage: str, by: str) -> dict:
        """The record of an upstream stage, or a clear error saying which command to run first."""
        record = self.record(stage)
        if record is None:
            raise StageError(f"{by} needs the {stage} stage of run {self.name!r} ({self.dir(stage)}): run `pipeline run {stage}` first")
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


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False, default=str)
        f.write("\n")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; records are ordinary files
    os.replace(tmp, path)


def _replace_dir(src: Path, dst: Path) -> None:
    """Put src at dst; an old dst is moved aside first, so dst is always either old-whole or new-whole."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


FAULT_PAUSE_ENV = "SEQSHIP_FAULT_PAUSE"


def _fault_pause(stage: str) -> None:
    """Fault injection for tests: SEQSHIP_FAULT_PAUSE=<stage> holds that stage for 60 s with its outputs
    complete but not yet in place -- the worst moment to be killed."""
    if os.environ.get(FAULT_PAUSE_ENV) == stage:
        log.warning("%s=%s: pausing before the %s stage commits", FAULT_PAUSE_ENV, stage, stage)
        time.sleep(60)


def run_stage(run: Run, stage: str, inputs: dict, produce: Callable[[Path], dict], force: bool = False) -> StageResult:
    """Run `produce(tmp_dir)` unless a record with the same inputs and intact outputs exists.

    Outputs are written to a temporary folder beside the final one and renamed into place when whole;
    the record is written last, so a run killed at any point leaves either the old stage or none.
    """
    started = time.perf_counter()
    folder = run.dir(stage)
    digest = _digest(inputs)
    record = run.record(stage)
    if not force and record and record.get("inputs_digest") == digest and run.intact(stage, record):
        log.info("%s: inputs unchanged, reusing %s (use --force to redo)", stage, folder)
        return StageResult(stage, folder, True, time.perf_counter() - started, record.get("summary", {}))
    run.root.mkdir(parents=True, exist_ok=True)
    with _run_lock(run):
        return _run_stage_locked(run, stage, inputs, produce, digest, started)


@contextmanager
def _run_lock(run: Run):
    """One process at a time per run folder: a second one would sweep the first one's temporary folders."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    with open(run.root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StageError(f"another pipeline process is working on run {run.name!r} ({run.root}); wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_stage_locked(run: Run, stage: str, inputs: dict, produce, digest: str, started: float) -> StageResult:
    folder = run.dir(stage)
    for pattern in (f".{folder.name}.tmp-*", f".{folder.name}.old-*"):  # left by a killed run
        for stale in run.root.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=run.root))
    run.record_path(stage).unlink(missing_ok=True)
    try:
        try:
            summary = produce(tmp)
        except SeqshipError as e:
            if getattr(e, "keep_outputs", False):  # e.g. a failing parity report: kept as evidence, unrecorded
                _replace_dir(tmp, folder)
            raise
        outputs = {p.name: file_entry(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        _fault_pause(stage)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; a bundle is meant to be shared
        _replace_dir(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - started
    _write_json_atomic(
        run.record_path(stage),
        {"stage": stage, "inputs_digest": digest, "inputs": inputs, "outputs": outputs, "summary": summary,
         "seconds": seconds, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seqship": __version__},
    )
    return StageResult(stage, folder, False, seconds, summary)


# --- the stages -------------------------------------------------------------------------------------


def stage_data(run: Run, cfg: DataConfig, data_dir: str | None = None, cache_dir: str | None = None, force: bool = False) -> StageResult:
    """Find, clean, de-duplicate and split the data; record counts and a fingerprint."""
    source = locate(cfg, data_dir, cache_dir)
    inputs = {"config": asdict(cfg), "source_files": source_digest(source_files(cfg, source))}
    return run_stage(run, "data", inputs, lambda out: prepare(cfg, source, out), force)


def stage_train(run: Run, cfg, force: bool = False, progress=None) -> StageResult:
    """Train on the data stage's splits; keep the best validation checkpoint; test metrics."""
    from pipeline.train import train  # torch is imported only by the stages that need it

    data = run.require("data", "train")
    inputs = {"config": asdict(cfg), "data": data["outputs"]}

    def produce(out: Path) -> dict:
        d = run.dir("data")
        metrics = train(
            read_split(d, "train"), read_split(d, "val"), read_split(d, "test"), data["summary"]["labels"], cfg, out, progress
        )
        return {k: metrics[k] for k in ("best_epoch", "epochs_run", "train_seconds", "parameters", "device")} | {
            "test_accuracy": metrics["test"]["accuracy"],
            "test_macro_f1": metrics["test"]["macro_f1"],
        }

    return run_stage(run, "train", inputs, produce, force)


def refuse_cv_with_fixed_test(run: Run) -> None:
    """Cross-validation folds all the data; a dataset with a published test split is reported on that instead."""
    if (run.record("data") or {}).get("summary", {}).get("counts", {}).get("fixed_test_rows"):
        raise StageError(f"--cv: run {run.name!r} uses a dataset with a published test split; report on it instead of cross-validating")


def stage_cv(run: Run, cfg, folds: int, force: bool = False) -> StageResult:
    """k-fold cross-validation over all of the data stage's rows, with the run's training config.

    Each fold is the test set once; the rest is split into train and validation (for early stopping)
    exactly as the data stage splits. Only metrics and histories are kept, never the fold models.
    """
    from pipeline.data import DataConfig, kfold, split
    from pipeline.train import train

    data = run.require("data", "cv")
    summary = data["summary"]
    refuse_cv_with_fixed_test(run)
    inputs = {"config": asdict(cfg), "folds": folds, "data": data["outputs"]}

    def produce(out: Path) -> dict:
        d = run.dir("data")
        rows = read_split(d, "train") + read_split(d, "val") + read_split(d, "test")
        dcfg = summary["config"]
        results = []
        for i, test_rows in enumerate(kfold(rows, folds, dcfg["seed"])):
            test_texts = {t for t, _ in test_rows}
            rest = [r for r in rows if r[0] not in test_texts]
            parts = split(rest, DataConfig(**{**dcfg, "seed": dcfg["seed"] + i}), fixed_test=test_rows)  # train/val only
            with tempfile.TemporaryDirectory(prefix="cv-fold-") as tmp:
                metrics = train(parts["train"], parts["val"], parts["test"], summary["labels"], cfg, Path(tmp))
                history = json.loads((Path(tmp) / "history.json").read_text(encoding="utf-8"))["epochs"]
            fold = {"fold": i + 1, "train": len(parts["train"]), "val": len(parts["val"]), "test": len(parts["test"]),
                    "accuracy": metrics["test"]["accuracy"], "macro_f1": metrics["test"]["macro_f1"],
                    "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                    "train_seconds": metrics["train_seconds"], "history": history}
            results.append(fold)
            log.info("cv fold %d/%d: accuracy %.4f, macro-F1 %.4f (%.0f s)", i + 1, folds, fold["accuracy"],
                     fold["macro_f1"], fold["train_seconds"])
        acc = [f["accuracy"] for f in results]
        f1 = [f["macro_f1"] for f in results]
        report = {"folds": folds, "results": results, "accuracy_mean": statistics.fmean(acc), "accuracy_std": statistics.stdev(acc),
                  "macro_f1_mean": statistics.fmean(f1), "macro_f1_std": statistics.stdev(f1),
                  "train_seconds_total": float(sum(f["train_seconds"] for f in results))}
        (out / "cv.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return {k: report[k] for k in ("folds", "accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std", "train_seconds_total")}

    return run_stage(run, "cv", inputs, produce, force)


def stage_export(run: Run, force: bool = False) -> StageResult:
    """TorchScript and ONNX files from the trained model, each checked against the contract."""
    import torch

    from exporters.contract import ModelContract
    from exporters.onnx import export_onnx, labels_metadata, require_onnxscript
    from exporters.torchscript import export_torchscript
    from pipeline.model import fused_recurrence
    from pipeline.train import load_trained

    trained = run.require("train", "export")
    contract = ModelContract(num_labels=len(json.loads((run.dir("train") / "labels.json").read_text(encoding="utf-8"))))
    inputs = {"train": trained["outputs"], "opset": contract.opset, "torch": torch.__version__, "onnxscript": require_onnxscript()}

    def produce(out: Path) -> dict:
        model, tokenizer, labels, _ = load_trained(run.dir("train"))
        (out / "tokenizer.json").write_text(tokenizer.spec.to_json(), encoding="utf-8")
        (out / "labels.json").write_text(json.dumps(labels, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        ts = export_torchscript(model, out / "model.pt", contract)
        t1 = time.perf_counter()
        # T differs from the batch size and is > 1 so no axis is confused with another or pinned to 1.
        n = tokenizer.vocab_size
        example = (torch.arange(2 * 7, dtype=torch.int64).remainder(n - 2).add(2).view(2, 7), torch.tensor([7, 3]))
        with fused_recurrence(model):  # each recurrent layer -> one ONNX GRU/LSTM node with sequence_lens
            onnx_checks = export_onnx(
                model, out / "model.onnx", contract, example, labels_metadata(labels, tokenizer.spec.sha256(), __version__)
            )
        summary = {
            "signature": contract.signature() | {"vocab_size": tokenizer.vocab_size},
            "torchscript": ts | {"seconds": t1 - t0},
            "onnx": onnx_checks | {"seconds": time.perf_counter() - t1},
        }
        (out / "export.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return summary

    return run_stage(run, "export", inputs, produce, force)


def stage_verify(run: Run, cfg: VerifyConfig, force: bool = False) -> StageResult:
    """The parity gate: eager PyTorch vs TorchScript vs onnxruntime on probes and on the whole test set."""
    from exporters.errors import ParityError
    from exporters.parity import format_table
    from pipeline.verify import build_report

    trained, exported, data = run.require("train", "verify"), run.require("export", "verify"), run.require("data", "verify")
    inputs = {"config": asdict(cfg), "train": trained["outputs"], "export": exported["outputs"], "data": data["outputs"]}

    def produce(out: Path) -> dict:
        report = build_report(run.dir("train"), run.dir("export"), read_split(run.dir("data"), "test"), cfg)
        (out / "parity.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if not report["passed"]:
            raise ParityError(f"parity gate failed for run {run.name!r} (report: {run.dir('verify') / 'parity.json'})\n" + format_table(report), report)
        return summarize_parity(report)

    return run_stage(run, "verify", inputs, produce, force)


def summarize_parity(report: dict) -> dict:
    """The parity numbers a reader wants first: worst difference per backend, label agreement."""
    per_backend: dict[str, float] = {}
    padded: dict[str, float] = {}
    for r in report["results"]:
        if "max_abs" in r:
            into = per_backend if r["check"] == "vs_reference" else padded
            into[r["backend"]] = max(into.get(r["backend"], 0.0), r["max_abs"])
    return {
        "passed": report["passed"],
        "atol": report["atol"],
        "rtol": report["rtol"],
        "max_abs_by_backend": per_backend,  # vs eager PyTorch, over every probe
        "padded_vs_single_max_abs": padded,  # a padded row vs the same row alone, per backend
        "test_set_label_agreement": report["test_set"]["label_agreement"],
        "test_set_texts": report["test_set"]["texts"],
        "test_set_max_abs": report["test_set"]["logits"].get("max_abs"),
        "skipped": report.get("skipped", []),
        # The model.onnx in every engine found: the bundle is verified on these, at these versions.
        "engines": {
            e["engine"]: {"version": e.get("version"), "passed": e["passed"], "max_abs": e.get("max_abs"),
                          "label_agreement": (e.get("labels") or {}).get("agreement_outside_near_ties"),
                          "near_ties": (e.get("labels") or {}).get("near_ties")}
            for e in report.get("engines", {}).get("engines", [])
        },
        "engines_skipped": report.get("engines", {}).get("skipped", []),
    }


def stage_package(run: Run, force: bool = False) -> StageResult:
    """Assemble the bundle from verified files; it appears under bundle/ only when whole."""
    from pipeline.package import build_bundle

    records = {s: run.require(s, "package") for s in ("data", "train", "export", "verify")}
    inputs = {s: r["outputs"] for s, r in records.items()}
    return run_stage(run, "package", inputs, lambda out: build_bundle(run, records, out), force)


def run_all(
    run: Run,
    data_cfg: DataConfig,
    train_cfg,
    verify_cfg: VerifyConfig,
    data_dir: str | None = None,
    force: bool = False,
    progress=None,
    on_stage: Callable[[StageResult], None] | None = None,
    cv_folds: int = 0,
) -> list[StageResult]:
    """data -> train -> export -> verify -> package (-> cv with cv_folds); unchanged stages are reused unless force."""
    steps = [
        lambda: stage_data(run, data_cfg, data_dir, force=force),
        lambda: stage_train(run, train_cfg, force=force, progress=progress),
        lambda: stage_export(run, force=force),
        lambda: stage_verify(run, verify_cfg, force=force),
        lambda: stage_package(run, force=force),
    ]
    if cv_folds:
        steps.insert(1, lambda: refuse_cv_with_fixed_test(run))  # before training, not after packaging
        steps.append(lambda: stage_cv(run, train_cfg, cv_folds, force=force))
    results = []
    for step in steps:
        result = step()
        if result is None:  # a check, not a stage
            continue
        results.append(result)
        if on_stage:
            on_stage(result)
    return results

"""The five stages (and cv) as library functions: what each consumes and produces. Run folders,
records, locking and the atomic commit of a stage's outputs live in pipeline.runs."""

from __future__ import annotations

import functools
import json
import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from seqship.pipeline import __version__
from seqship.pipeline.data import DataConfig, locate, prepare, read_split, source_digest, source_files
from seqship.pipeline.runs import (  # noqa: F401 (Run, StageError, StageResult re-exported)
    CV_RESULTS,
    EXPORT_SUMMARY,
    HISTORY,
    LABELS,
    METRICS,
    PARITY,
    SPLIT_SUFFIX,
    SPLITS,
    UPSTREAM,
    Run,
    StageError,
    StageResult,
    refuse_overlap,
    run_lock,
    run_stage,
)

log = logging.getLogger(__name__)


def locked(stage_fn):
    """Run a stage function under its run's lock, so that what it reads cannot change under it."""

    @functools.wraps(stage_fn)
    def wrapper(run, *args, **kwargs):
        with run_lock(run):
            return stage_fn(run, *args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class VerifyConfig:
    """Parity tolerances: pass when |a - b| <= atol + rtol * |reference| element-wise."""

    atol: float = 1e-5
    rtol: float = 1e-5
    seed: int = 0  # random probe inputs


# --- the stages -------------------------------------------------------------------------------------


def stage_data(
    run: Run, cfg: DataConfig, data_dir: str | None = None, cache_dir: str | None = None, force: bool = False
) -> StageResult:
    """Find, clean, de-duplicate and split the data; record counts and a fingerprint."""
    from seqship.pipeline.data import readers

    source = locate(cfg, data_dir, cache_dir)
    # before the lock creates or marks the run folder: never one inside the data, nor one holding it
    refuse_overlap(run.root, source, "--data" if cfg.data is not None else f"dataset {cfg.dataset!r}")
    with run_lock(run):
        inputs = {
            "config": asdict(cfg),
            "source_files": source_digest(source_files(cfg, source)),
            "readers": readers.READER_VERSION,
        }
        return run_stage(run, "data", inputs, lambda out: prepare(cfg, source, out), force)


@locked
def stage_train(run: Run, cfg, force: bool = False, progress=None, threads: int | None = None) -> StageResult:
    """Train on the data stage's splits; keep the best validation checkpoint; test metrics."""
    from seqship.pipeline.distributed import broadcast, read_shard, world
    from seqship.pipeline.train import TRAIN_VERSION, config_inputs, train  # torch: only in the stages that need it

    data = run.require("data", "train")
    inputs = {"config": config_inputs(cfg), "data": data["outputs"], "code": TRAIN_VERSION}
    distributed = world()[1] > 1

    def produce(out: Path) -> dict:
        # under torchrun, every rank (this one too) reads its shard of the training split's file, checked against
        # the data stage's sha256; rank 0 keeps validation and test, and sends the others its config, where the
        # data stage's files are and that digest
        sha256 = data["outputs"][f"train{SPLIT_SUFFIX}"]["sha256"] if distributed else None
        splits = [
            read_shard(run.dir("data"), n, sha256) if distributed and n == "train" else read_split(run.dir("data"), n)
            for n in SPLITS
        ]
        if distributed:
            broadcast(
                {"data_dir": str(run.dir("data")), "labels": data["summary"]["labels"], "config": asdict(cfg)}
                | {"train_sha256": sha256}
            )
        metrics = train(
            *splits, data["summary"]["labels"], cfg, out, progress, threads=threads, split_dir=run.dir("data")
        )
        return {
            k: metrics[k]
            for k in (
                "best_epoch",
                "epochs_run",
                "train_seconds",
                "parameters",
                "device",
                "threads",
                "world_size",
                "ranks",
            )
        } | {
            "test_accuracy": metrics["test"]["accuracy"],
            "test_macro_f1": metrics["test"]["macro_f1"],
        }

    result = run_stage(run, "train", inputs, produce, force)  # a failing rank 0 ends the job: torchrun stops the others
    if distributed and result.skipped:
        broadcast(None)  # nothing to train: the other ranks stop
    return result


def follow_training(threads: int | None = None) -> bool:
    """A rank other than 0 (pipeline.distributed): wait for rank 0's config and data stage, read this rank's
    shard of its training split, and train on it. Returns False when rank 0 had nothing to train (its train
    stage was reused)."""
    from seqship.pipeline.distributed import broadcast, read_shard
    from seqship.pipeline.train import TrainConfig, train

    job = broadcast(None)
    if job is None:
        return False
    shard = read_shard(Path(job["data_dir"]), "train", job["train_sha256"])
    cfg, data_dir = TrainConfig(**job["config"]), Path(job["data_dir"])
    # out_dir None: only rank 0 writes, so this rank makes no folder that a killed job would leave behind
    train(shard, [], [], job["labels"], cfg, None, threads=threads, split_dir=data_dir)
    return True


def refuse_cv_with_fixed_test(run: Run) -> None:
    """Cross-validation folds all the data; a dataset with a published test split is reported on that instead."""
    if (run.record("data") or {}).get("summary", {}).get("counts", {}).get("fixed_test_rows"):
        raise StageError(
            f"--cv: run {run.name!r} uses a dataset with a published test split; report on it instead of cross-validating"
        )


@locked
def stage_cv(run: Run, cfg, folds: int, force: bool = False, threads: int | None = None) -> StageResult:
    """k-fold cross-validation over all of the data stage's rows, with the run's training config.

    Each fold is the test set once; the rest is split into train and validation (for early stopping)
    exactly as the data stage splits. Only metrics and histories are kept, never the fold models.
    """
    from seqship.pipeline.data import DataConfig, kfold, split
    from seqship.pipeline.train import TRAIN_VERSION, config_inputs, train

    data = run.require("data", "cv")
    summary = data["summary"]
    refuse_cv_with_fixed_test(run)
    inputs = {"config": config_inputs(cfg), "folds": folds, "data": data["outputs"], "code": TRAIN_VERSION}

    def produce(out: Path) -> dict:
        rows = [row for name in SPLITS for row in read_split(run.dir("data"), name)]
        dcfg = summary["config"]
        results = []
        for i, test_rows in enumerate(kfold(rows, folds, dcfg["seed"])):
            test_texts = {t for t, _ in test_rows}
            rest = [r for r in rows if r[0] not in test_texts]
            parts = split(
                rest, DataConfig(**{**dcfg, "seed": dcfg["seed"] + i}), fixed_test=test_rows
            )  # train/val only
            with tempfile.TemporaryDirectory(prefix="cv-fold-") as tmp:
                metrics = train(
                    parts["train"], parts["val"], parts["test"], summary["labels"], cfg, Path(tmp), threads=threads
                )
                history = json.loads((Path(tmp) / HISTORY).read_text(encoding="utf-8"))["epochs"]
            fold = {
                "fold": i + 1,
                "train": len(parts["train"]),
                "val": len(parts["val"]),
                "test": len(parts["test"]),
                "accuracy": metrics["test"]["accuracy"],
                "macro_f1": metrics["test"]["macro_f1"],
                "best_epoch": metrics["best_epoch"],
                "epochs_run": metrics["epochs_run"],
                "train_seconds": metrics["train_seconds"],
                "history": history,
            }
            results.append(fold)
            log.info(
                "cv fold %d/%d: accuracy %.4f, macro-F1 %.4f (%.0f s)",
                i + 1,
                folds,
                fold["accuracy"],
                fold["macro_f1"],
                fold["train_seconds"],
            )
        acc = [f["accuracy"] for f in results]
        f1 = [f["macro_f1"] for f in results]
        report = {
            "folds": folds,
            "results": results,
            "accuracy_mean": statistics.fmean(acc),
            "accuracy_std": statistics.stdev(acc),
            "macro_f1_mean": statistics.fmean(f1),
            "macro_f1_std": statistics.stdev(f1),
            "train_seconds_total": float(sum(f["train_seconds"] for f in results)),
        }
        (out / CV_RESULTS).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return {
            k: report[k]
            for k in ("folds", "accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std", "train_seconds_total")
        }

    return run_stage(run, "cv", inputs, produce, force)


BASELINE_EXTRA = (
    "scikit-learn is not installed: the linear baseline needs the `baseline` extra (pip install -e '.[baseline]')"
)


def baseline_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


@locked
def stage_baseline(run: Run, train_cfg, force: bool = False, threads: int | None = None) -> StageResult:
    """The linear baseline (pipeline.baseline) on the data stage's splits, with features for the model's
    tokenizer: what the recurrent model is compared with in the report, the card and `pipeline results`."""
    if not baseline_available():
        raise StageError(BASELINE_EXTRA)
    from seqship.pipeline.baseline import baseline_config, fit_baseline

    data = run.require("data", "baseline")
    d = run.dir("data")
    train_rows = read_split(d, "train")
    cfg = baseline_config(train_cfg.tokenizer, train_cfg.lowercase, [t for t, _ in train_rows], seed=train_cfg.seed)
    import sklearn

    inputs = {"config": asdict(cfg), "sklearn": sklearn.__version__, "data": data["outputs"]}

    def produce(out: Path) -> dict:
        labels = data["summary"]["labels"]
        metrics = fit_baseline(train_rows, read_split(d, "val"), read_split(d, "test"), labels, cfg, threads=threads)
        (out / METRICS).write_text(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return {
            "test_accuracy": metrics["test"]["accuracy"],
            "test_macro_f1": metrics["test"]["macro_f1"],
            "C": metrics["C"],
            "class_weight": metrics["class_weight"],
            "features": metrics["features"],
            "fit_seconds": metrics["fit_seconds"],
        }

    return run_stage(run, "baseline", inputs, produce, force)


def baseline_options(run: Run, given: dict) -> dict:
    """`given` with the baseline's tokenizer, lowercase and seed filled in where they are None: as the run's
    model was trained (the baseline reads text as the model does), else seed 0."""
    trained = (run.record("train") or {}).get("inputs", {}).get("config") or {}
    out = dict(given)
    for name in ("tokenizer", "lowercase", "seed"):
        if out.get(name) is None and trained.get(name) is not None:
            out[name] = trained[name]
    out["seed"] = 0 if out.get("seed") is None else out["seed"]
    return out


def card_baseline(run: Run) -> dict | None:
    """The summary of the baseline the bundle's card compares the model with, where that baseline is the
    run's current one; else None."""
    kept = run.current("baseline")
    if kept is not None and (run.record("package") or {}).get("inputs", {}).get("baseline") == kept.get(
        "inputs_digest"
    ):
        return kept.get("summary")
    return None


def card_baseline_outdated(run: Run) -> bool:
    """True when the run has a bundle whose card compares the model with another baseline than the current
    one (or with none): `pipeline run package` brings it up to date."""
    package = run.record("package")
    current = (run.current("baseline") or {}).get("inputs_digest")
    return package is not None and package.get("inputs", {}).get("baseline") != current


@locked
def stage_export(run: Run, force: bool = False) -> StageResult:
    """TorchScript and ONNX files from the trained model, each checked against the contract."""
    import torch

    from seqship.exporters.contract import ModelContract
    from seqship.exporters.onnx import export_onnx, labels_metadata, require_onnxscript
    from seqship.exporters.recurrent import GRAPH_VERSION, fused_recurrence
    from seqship.exporters.torchscript import export_torchscript
    from seqship.pipeline.train import load_trained
    from seqship.runtime.bundle import MODEL_ONNX, MODEL_TORCHSCRIPT, TOKENIZER

    trained = run.require("train", "export")
    contract = ModelContract(num_labels=len(json.loads(run.file("train", LABELS).read_text(encoding="utf-8"))))
    inputs = {
        "train": trained["outputs"],
        "opset": contract.opset,
        "torch": torch.__version__,
        "onnxscript": require_onnxscript(),
        "graph": GRAPH_VERSION,
    }

    def produce(out: Path) -> dict:
        model, tokenizer, labels, _ = load_trained(run.dir("train"))
        (out / TOKENIZER).write_text(tokenizer.spec.to_json(), encoding="utf-8")
        (out / LABELS).write_text(json.dumps(labels, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        ts = export_torchscript(model, out / MODEL_TORCHSCRIPT, contract)
        t1 = time.perf_counter()
        # T differs from the batch size and is > 1 so no axis is confused with another or pinned to 1.
        n = tokenizer.vocab_size
        example = (torch.arange(2 * 7, dtype=torch.int64).remainder(n - 2).add(2).view(2, 7), torch.tensor([7, 3]))
        with fused_recurrence(model):  # each recurrent layer -> one ONNX GRU/LSTM node with sequence_lens
            onnx_checks = export_onnx(
                model,
                out / MODEL_ONNX,
                contract,
                example,
                labels_metadata(labels, tokenizer.spec.sha256(), __version__),
            )
        summary = {
            "signature": contract.signature() | {"vocab_size": tokenizer.vocab_size},
            "torchscript": ts | {"seconds": t1 - t0},
            "onnx": onnx_checks | {"seconds": time.perf_counter() - t1},
        }
        (out / EXPORT_SUMMARY).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return summary

    return run_stage(run, "export", inputs, produce, force)


@locked
def stage_verify(run: Run, cfg: VerifyConfig, force: bool = False) -> StageResult:
    """The parity gate: eager PyTorch vs TorchScript vs onnxruntime on probes and on the whole test set."""
    from seqship.exporters.errors import ParityError
    from seqship.exporters.parity import format_table
    from seqship.pipeline.verify import build_report

    trained, exported, data = (
        run.require("train", "verify"),
        run.require("export", "verify"),
        run.require("data", "verify"),
    )
    inputs = {
        "config": asdict(cfg),
        "train": trained["outputs"],
        "export": exported["outputs"],
        "data": data["outputs"],
    }

    def produce(out: Path) -> dict:
        report = build_report(run.dir("train"), run.dir("export"), read_split(run.dir("data"), "test"), cfg)
        (out / PARITY).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if not report["passed"]:
            raise ParityError(
                f"parity gate failed for run {run.name!r} (report: {run.failed_dir('verify') / PARITY})\n"
                + format_table(report),
                report,
            )
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
            e["engine"]: {
                "version": e.get("version"),
                "passed": e["passed"],
                "max_abs": e.get("max_abs"),
                "label_agreement": (e.get("labels") or {}).get("agreement_outside_near_ties"),
                "near_ties": (e.get("labels") or {}).get("near_ties"),
            }
            for e in report.get("engines", {}).get("engines", [])
        },
        "engines_skipped": report.get("engines", {}).get("skipped", []),
    }


@locked
def stage_package(run: Run, force: bool = False) -> StageResult:
    """Assemble the bundle from verified files; it appears under bundle/ only when whole."""
    from seqship.pipeline.package import build_bundle

    records = {s: run.require(s, "package") for s in UPSTREAM["package"]}
    baseline = run.current("baseline")  # optional: the card compares the model with it where the run has one
    if baseline is not None:
        records["baseline"] = baseline
    inputs = {s: r["outputs"] for s, r in records.items()}
    if baseline is not None:  # what it was fitted from (fitted again from the same, it scores the same)
        inputs["baseline"] = baseline.get("inputs_digest")
    return run_stage(run, "package", inputs, lambda out: build_bundle(run, records, out), force)


def _kept_baseline(run: Run) -> str:
    """What the card will say about the baseline when the stage is not run now."""
    if run.current("baseline") is not None:
        return "the baseline fitted earlier on this split stays in the card and report"
    return "the model is not compared with a baseline"


def optional_baseline(run: Run, train_cfg, force: bool, threads: int | None = None) -> StageResult | None:
    """The baseline stage inside `run all`: it is a comparison, not part of the model, so data it cannot be
    fitted on (BaselineError) is a warning and the model still ships."""
    from seqship.pipeline.baseline import BaselineError

    try:
        return stage_baseline(run, train_cfg, force=force, threads=threads)
    except BaselineError as e:
        if run.record("baseline") is not None and run.current("baseline") is None:
            # one fitted on earlier data would be reported as stale, with advice that cannot work: drop it
            run.record_path("baseline").unlink(missing_ok=True)
        log.warning("baseline: %s; %s", e, _kept_baseline(run))
        return None


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
    threads: int | None = None,
    baseline: bool = True,
) -> list[StageResult]:
    """data -> train (-> baseline) -> export -> verify -> package (-> cv with cv_folds); unchanged stages are
    reused unless force. The baseline runs where scikit-learn is installed; without it, a warning says how
    to install it and every other stage runs as before."""
    steps = [
        lambda: stage_data(run, data_cfg, data_dir, force=force),
        lambda: stage_train(run, train_cfg, force=force, progress=progress, threads=threads),
        lambda: stage_export(run, force=force),
        lambda: stage_verify(run, verify_cfg, force=force),
        lambda: stage_package(run, force=force),
    ]
    if baseline and baseline_available():  # before package: the model card compares the model with it
        steps.insert(2, lambda: optional_baseline(run, train_cfg, force, threads))
    elif baseline:
        steps.insert(
            2, lambda: log.warning("%s; %s (the other stages run as before)", BASELINE_EXTRA, _kept_baseline(run))
        )
    if cv_folds:
        steps.insert(1, lambda: refuse_cv_with_fixed_test(run))  # before training, not after packaging
        steps.append(lambda: stage_cv(run, train_cfg, cv_folds, force=force, threads=threads))
    from seqship.pipeline.distributed import world

    if world()[0] != 0:  # another rank of a torchrun job: it only helps train (pipeline.distributed)
        follow_training(threads)
        return []
    results = []
    with run_lock(run):  # the whole sequence: a second `run all` cannot interleave between stages
        for step in steps:
            result = step()
            if result is None:  # a check, not a stage
                continue
            results.append(result)
            if on_stage:
                on_stage(result)
    return results

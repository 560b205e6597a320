"""The results table of pipeline/experiments/README.md: each registry dataset's default config, run end to end, one row each.

`pipeline results --run` runs `pipeline run all` for every dataset (with --cv K where the task is
reported as a k-fold mean, e.g. mr) and prints the table; without --run it only reads existing runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqship.pipeline.data import REGISTRY
from seqship.pipeline.stages import Run
from seqship.runtime.bundle import MANIFEST

COLUMNS = (
    "dataset",
    "accuracy",
    "target",
    "macro-F1",
    "linear baseline: accuracy / macro-F1",
    "model − baseline",
    "train time",
    "parity: max abs diff",
    "bundle size",
)


def collect(run: Run, dataset: str) -> dict | None:
    """One row from a finished run's stage records, or None when the run has not been packaged."""
    data, train, verify, package = (run.current(s) for s in ("data", "train", "verify", "package"))
    if not (data and train and verify and package) or data["inputs"]["config"].get("dataset") != dataset:
        return None  # not packaged, stale, or a run of some other data under this name
    manifest = json.loads((run.bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    ds = REGISTRY.get(dataset)
    row = {
        "dataset": dataset,
        "test_accuracy": train["summary"]["test_accuracy"],
        "test_macro_f1": train["summary"]["test_macro_f1"],
        "train_seconds": train["summary"]["train_seconds"],
        "epochs_run": train["summary"]["epochs_run"],
        "parity_max_abs": max(verify["summary"]["max_abs_by_backend"].values()),
        "test_set_max_abs": verify["summary"]["test_set_max_abs"],
        "label_agreement": verify["summary"]["test_set_label_agreement"],
        "bundle_bytes": sum(f["bytes"] for f in manifest["files"].values()),
        "target_accuracy": ds.target_accuracy if ds else None,
        "test_texts": manifest["metrics"]["test_n"],
        "model": manifest["model"],
    }
    baseline = run.current("baseline")
    if baseline:  # on the same test split as test_accuracy (for a cv task, the 90/10 split's test part)
        row["baseline"] = {
            k: baseline["summary"][k]
            for k in ("test_accuracy", "test_macro_f1", "features", "C", "class_weight", "fit_seconds")
        }
        from seqship.pipeline.baseline import run_paired

        row["paired"] = run_paired(run)
    cv = run.current_cv()
    if cv:
        row["cv"] = cv["summary"]
    # The number a published result is compared with: the k-fold mean where the task is reported that way.
    row["accuracy"] = row["cv"]["accuracy_mean"] if cv and ds and ds.cv_folds else row["test_accuracy"]
    row["macro_f1"] = row["cv"]["macro_f1_mean"] if cv and ds and ds.cv_folds else row["test_macro_f1"]
    row["met"] = None if row["target_accuracy"] is None else row["accuracy"] >= row["target_accuracy"]
    return row


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _time(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def markdown(rows: list[dict]) -> str:
    """The results table (pipeline/experiments/README.md) for these rows."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if "cv" in r and REGISTRY[r["dataset"]].cv_folds:
            acc = f"**{r['accuracy']:.4f}** ({r['cv']['folds']}-fold mean ± {r['cv']['accuracy_std']:.3f}; 90/10 split {r['test_accuracy']:.4f})"
            time = f"{_time(r['train_seconds'])} (+ {_time(r['cv']['train_seconds_total'])} for the folds)"
        else:
            acc, time = f"**{r['accuracy']:.4f}**", _time(r["train_seconds"])
        target = "" if r["target_accuracy"] is None else f"≥ {r['target_accuracy']:.2f} {'✓' if r['met'] else '✗'}"
        if "baseline" in r:  # compared on the same split: for a cv task, the 90/10 split's test part
            b = r["baseline"]
            da, df = r["test_accuracy"] - b["test_accuracy"], r["test_macro_f1"] - b["test_macro_f1"]
            base = f"{b['test_accuracy']:.4f} / {b['test_macro_f1']:.4f}"
            delta = f"{da:+.4f} / {df:+.4f} {'✓' if da >= 0 and df >= 0 else '✗'}" + paired_cell(r.get("paired"))
        else:
            base, delta = "not run", ""
        name = r["dataset"] + (" (wide)" if r.get("model", {}).get("wide_ngrams") else "")  # the GRU plus a wide part
        lines.append(
            f"| {name} | {acc} | {target} | {r['macro_f1']:.4f} | {base} | {delta} | {time} | "
            f"{r['parity_max_abs']:.1e} (test set {r['test_set_max_abs']:.1e}, labels {r['label_agreement']:.0%}) | {_mib(r['bundle_bytes'])} |"
        )
    return "\n".join(lines)


def paired_cell(paired: dict | None) -> str:
    """The paired comparison in a results cell: 95% bootstrap intervals of the two differences and McNemar's p."""
    if not paired:
        return ""
    (alo, ahi), (flo, fhi) = paired["accuracy_difference_ci95"], paired["macro_f1_difference_ci95"]
    return f" (95% CI [{alo:+.3f}, {ahi:+.3f}] / [{flo:+.3f}, {fhi:+.3f}], McNemar p {paired['mcnemar_p']:.2g})"


def run_dataset(run: Run, dataset: str, data_dir: str | None, force: bool = False) -> None:
    """`pipeline run all --dataset NAME` with the dataset's defaults (and its --cv), then its report."""
    from seqship.pipeline.config import train_config
    from seqship.pipeline.data import DataConfig
    from seqship.pipeline.report import write_report
    from seqship.pipeline.runs import run_lock
    from seqship.pipeline.stages import VerifyConfig, run_all

    with run_lock(run):  # the report too: written only into the run folder the stages were claimed in
        run_all(
            run,
            DataConfig(dataset=dataset),
            train_config({"seed": 0}, dataset),
            VerifyConfig(),
            data_dir,
            force,
            cv_folds=REGISTRY[dataset].cv_folds,
        )
        write_report(run)


def results(
    artifacts_dir: str | Path, datasets: list[str], data_dir: str | None, run: bool, force: bool = False, on_row=None
) -> list[dict]:
    """One row per dataset with a finished run (running each first when run=True)."""
    rows = []
    for name in datasets:
        r = Run(artifacts_dir, name)
        if run:
            run_dataset(r, name, data_dir, force)
        row = collect(r, name)
        if row is not None:
            rows.append(row)
            if on_row:
                on_row(row)
    return rows

"""The sweep behind each dataset's default config: train variants on the data stage's own splits, next to
the linear baseline, and print one table.

    python -m seqship.pipeline.experiments.sweep --dataset names --data-dir ../shared/data
    python -m seqship.pipeline.experiments.sweep --dataset names --variant "class_weight=sqrt pooling=last+max" --variant "hidden_dim=256"

Without --variant it runs the dataset's recorded sweep (SWEEPS below: the variants tried when the
default was chosen, the chosen one marked). Each variant is the dataset's default config with the given
fields changed (TrainConfig's field names; values parsed as JSON where they parse, else as text). With
--seeds N every variant trains with seeds 0..N-1 and the table shows mean ± standard deviation over the
seeds, which says how much of a difference between two variants is the seed's. Runs go to
<artifacts>/sweep-<dataset>/ (data stage, baseline, one folder per variant) and a variant already trained
with the same config is read, not retrained; the table is printed as Markdown and written to
sweep-<dataset>/sweep.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

# The variants measured when each dataset's default was chosen ("" = the default itself). Keep the
# chosen one first after the default, so that the table reads "default, then what was tried".
PLATEAU = "lr_schedule=plateau epochs=30 patience=5"  # the schedule names and waimai trained with before cosine
WAIMAI_64 = "embed_dim=64 hidden_dim=128"  # waimai's model size before E=128, H=256
SWEEPS: dict[str, list[str]] = {
    # names: the default is a cosine schedule over 20 epochs; the first sweep ran with the plateau schedule
    # (then the default), so its rows name it.
    "names": [
        "",
        PLATEAU,
        "lr_schedule=cosine epochs=12 patience=12",
        "class_weight=sqrt epochs=16 patience=16",
        "class_weight=balanced",
        f"{PLATEAU} class_weight=sqrt",
        f"{PLATEAU} class_weight=balanced",
        f"{PLATEAU} class_weight=sqrt pooling=last+max",
        f"{PLATEAU} class_weight=sqrt hidden_dim=256 dropout=0.3",
        f"{PLATEAU} class_weight=balanced pooling=last+max dropout=0.3",
        f"{PLATEAU} class_weight=sqrt hidden_dim=256 dropout=0.3 pooling=last+max",
        f"{PLATEAU} class_weight=balanced hidden_dim=256 dropout=0.3 pooling=last+max",
        f"{PLATEAU} class_weight=sqrt num_layers=2 dropout=0.3",
    ],
    # waimai: the default is E=128, H=256 with a cosine schedule over 10 epochs (chosen over three seeds:
    # pipeline/experiments/README.md, "Three seeds"); the rows after it keep the earlier size, E=64, H=128 (WAIMAI_64), and before
    # that the plateau schedule.
    "waimai": [
        "",
        WAIMAI_64,
        f"{WAIMAI_64} lr_schedule=cosine epochs=12 patience=12 lr=0.002",
        f"{WAIMAI_64} {PLATEAU}",
        f"{WAIMAI_64} {PLATEAU} class_weight=sqrt",
        f"{WAIMAI_64} {PLATEAU} class_weight=balanced",
        f"{PLATEAU}",
        f"{WAIMAI_64} {PLATEAU} pooling=last+max",
        f"{WAIMAI_64} {PLATEAU} num_layers=2",
        f"{WAIMAI_64} {PLATEAU} lr=0.002",
    ],
    # one variant each, measured against the default of the results table (2026-12-04): defaults unchanged
    "chnsenticorp": ["", "lr_schedule=cosine epochs=12 patience=12"],
    "shopping-cats": ["", "lr_schedule=cosine epochs=10 patience=10"],
    "mr": [
        "",
        "pooling=max",
        "embed_dim=256 hidden_dim=256",
        "min_freq=1 embed_dropout=0.5",
        "lr=0.001",
    ],
}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def parse_variant(text: str) -> dict:
    """'class_weight=sqrt hidden_dim=256' -> {'class_weight': 'sqrt', 'hidden_dim': 256}; unknown fields refused."""
    from seqship.pipeline.train import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(
                f"error: --variant {text!r}: {item!r} is not FIELD=VALUE with a TrainConfig field ({', '.join(sorted(known))})"
            )
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    from seqship import pipeline

    pipeline.pin_blas_for_reproducibility()  # before torch loads: one seed, one model
    from seqship.runtime.errors import SeqshipError

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--artifacts-dir", default=None)
    ap.add_argument(
        "--variant", action="append", default=None, help="FIELD=VALUE ... (repeatable); default: the recorded sweep"
    )
    ap.add_argument("--seeds", type=positive_int, default=1, help="train each variant with seeds 0..N-1 (default 1)")
    ap.add_argument("--threads", type=positive_int, default=None)
    args = ap.parse_args(argv)
    try:
        return sweep(args)
    except SeqshipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def sweep(args) -> int:
    from seqship.pipeline.config import default_artifacts_dir, train_config
    from seqship.pipeline.data import REGISTRY, DataConfig
    from seqship.pipeline.runs import Run, run_lock
    from seqship.pipeline.stages import stage_data
    from seqship.pipeline.train import TrainError

    if args.dataset not in REGISTRY:
        raise SystemExit(f"error: --dataset {args.dataset!r} is not a registry dataset ({', '.join(REGISTRY)})")
    variants = args.variant if args.variant is not None else SWEEPS.get(args.dataset, [""])
    default = train_config({"seed": 0}, args.dataset)
    configs = []
    for text in variants:  # every variant checked before anything is trained
        changes = parse_variant(text)
        if args.seeds > 1 and "seed" in changes:
            raise SystemExit(f"error: --variant {text!r} sets seed, which --seeds {args.seeds} sets for it")
        try:
            seeds = [changes.pop("seed", default.seed)] if args.seeds == 1 else range(args.seeds)
            configs.append([replace(default, **changes, seed=seed) for seed in seeds])
        except TrainError as e:  # its messages name the CLI's flags: --hidden-dim for hidden_dim
            raise SystemExit(f"error: --variant {text!r}: {e}") from None
    run = Run(args.artifacts_dir or default_artifacts_dir(), f"sweep-{args.dataset}")
    stage_data(run, DataConfig(dataset=args.dataset), args.data_dir)  # claims the run folder (pipeline.runs)
    with run_lock(run):  # the variant folders and sweep.json go only into that run folder, one sweep at a time
        return sweep_variants(args, run, default, variants, configs)


def sweep_variants(args, run, default, variants: list[str], configs: list) -> int:
    """Fit the baseline, train (or read back) each variant, write sweep.json and print the table."""
    from seqship.pipeline.baseline import paired_sentence
    from seqship.pipeline.data import read_split
    from seqship.pipeline.runs import METRICS, SPLITS, SWEEP_FILE, refuse_link
    from seqship.pipeline.stages import stage_baseline
    from seqship.runtime.fsio import write_text_atomic

    data_outputs = run.record("data")["outputs"]  # a variant trained on another split is not reused
    labels = run.record("data")["summary"]["labels"]
    splits = [read_split(run.dir("data"), s) for s in SPLITS]
    rows = []
    base = stage_baseline(run, default)
    b = json.loads(run.file("baseline", METRICS).read_text(encoding="utf-8"))
    if "test_predictions" not in b:  # fitted before baselines recorded them: the paired comparison needs them
        base = stage_baseline(run, default, force=True)
        b = json.loads(run.file("baseline", METRICS).read_text(encoding="utf-8"))
    rows.append(
        {
            "variant": f"linear baseline ({b['features']}; C={b['C']:g}, class weight {b['class_weight']})",
            "test_accuracy": [b["test"]["accuracy"]],
            "test_macro_f1": [b["test"]["macro_f1"]],
            "val_macro_f1": [b["val"]["macro_f1"]],
            "epochs": None,
            "seconds": b["fit_seconds"],
        }
    )
    print(
        f"baseline: test accuracy {b['test']['accuracy']:.4f}, macro-F1 {b['test']['macro_f1']:.4f} "
        f"({'reused' if base.skipped else 'fitted'})",
        file=sys.stderr,
        flush=True,
    )
    for text, seeded in zip(variants, configs):
        runs = [train_variant(run.root, cfg, text, splits, labels, data_outputs, args.threads) for cfg in seeded]
        rows.append(
            {
                "variant": text or "default",
                "seeds": [cfg.seed for cfg in seeded],
                **{
                    key: [m[split]["accuracy" if key.endswith("accuracy") else "macro_f1"] for m in runs]
                    for key, split in (("test_accuracy", "test"), ("test_macro_f1", "test"), ("val_macro_f1", "val"))
                },
                "epochs": " ".join(f"{m['best_epoch']}/{m['epochs_run']}" for m in runs),
                "seconds": round(sum(m["train_seconds"] for m in runs) / len(runs), 1),
                "recall": [{lab: round(v["recall"], 3) for lab, v in m["test"]["per_class"].items()} for m in runs],
                "paired": [paired(m, b, splits[2], labels) for m in runs],
            }
        )
    write_text_atomic(refuse_link(run.root / SWEEP_FILE), json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    if args.seeds > 1:  # above the table, not in its header row: a 7th header cell would unmake the table
        print(
            f"Mean ± sample standard deviation over seeds 0-{args.seeds - 1} (the baseline is one fit: its C is picked on validation).\n"
        )
    print(f"| {args.dataset}: variant | test accuracy | test macro-F1 | val macro-F1 | best/run epochs | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {spread(r['test_accuracy'])} | {spread(r['test_macro_f1'])} | {spread(r['val_macro_f1'])} | "
            f"{r['epochs'] or '–'} | {r['seconds']:.0f} |"
        )
    print("\nPaired with the baseline on the same test texts, per seed (pipeline.baseline.paired_comparison):\n")
    for r in rows[1:]:
        for seed, p in zip(r["seeds"], r["paired"]):
            if p is not None:
                print(f"- {r['variant'] or 'default'}, seed {seed}: {paired_sentence(p)}")
    return 0


def paired(model: dict, baseline: dict, test_rows, labels) -> dict | None:
    """The model's paired comparison with the baseline on the test split (None for a model trained before
    training recorded its test predictions)."""
    from seqship.pipeline.baseline import paired_comparison

    if "test_predictions" not in model or "test_predictions" not in baseline:
        return None
    index = {lab: i for i, lab in enumerate(labels)}
    y = [index[lab] for _, lab in test_rows]
    return paired_comparison(y, model["test_predictions"], baseline["test_predictions"], len(labels))


def spread(values: list[float]) -> str:
    """'0.9007' for one value; 'mean ± sample sd' for several."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def train_variant(root: Path, cfg, text: str, splits, labels, data_outputs, threads) -> dict:
    """The variant's metrics: trained into its own folder, or read back when that config on this split was trained."""
    from seqship.pipeline.train import METRICS, TRAIN_VERSION, config_inputs, train

    key = config_inputs(cfg)  # as the train stage records it: a new option at its neutral default keeps the cache
    folder = root / f"variant-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]}"
    stored, made_from = folder / "config.json", {"config": key, "data": data_outputs, "code": TRAIN_VERSION}
    if stored.is_file() and json.loads(stored.read_text()) == made_from and (folder / METRICS).is_file():
        m = json.loads((folder / METRICS).read_text())
    else:
        folder.mkdir(parents=True, exist_ok=True)
        stored.unlink(missing_ok=True)  # written again only once this split's training has finished
        t0 = time.perf_counter()
        m = train(*splits, labels, cfg, folder, threads=threads)
        stored.write_text(json.dumps(made_from, sort_keys=True))
        print(f"{text or 'default'} (seed {cfg.seed}): {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(
        f"  test accuracy {m['test']['accuracy']:.4f}, macro-F1 {m['test']['macro_f1']:.4f}",
        file=sys.stderr,
        flush=True,
    )
    return m


if __name__ == "__main__":
    sys.exit(main())

"""report.html: one self-contained page per run, written beside the bundle.

Tables always render (dataset summary, training history, per-class metrics, confusion matrix as a
coloured table, parity, cross-validation). With matplotlib installed (`pip install -e '.[report]'`)
the page also embeds PNG plots: curves, confusion heatmap, length histogram, per-fold accuracy.
Above pipeline.metrics.MATRIX_MAX_LABELS labels the run keeps no confusion matrix, and the page lists the
most frequent confusions instead. Every table sits in a container that scrolls sideways, so a wide one
(many or long labels) never makes the page itself wider than the window.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import time
from pathlib import Path

from seqship.pipeline import __version__
from seqship.pipeline.metrics import full_matrix, top_confusions
from seqship.pipeline.runs import (
    CV_RESULTS,
    DATA_SUMMARY,
    HISTORY,
    LABELS,
    METRICS,
    MODEL_CONFIG,
    PARITY,
    TOKENIZER,
)
from seqship.runtime.bundle import MANIFEST

log = logging.getLogger(__name__)

TOP_CONFUSIONS_SHOWN = 100  # rows of the top-confusions table; metrics.json keeps more


def _load(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def _png(plt, fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _scroll(table: str) -> str:
    return f'<div class="scroll">{table}</div>'


def _table(header: list[str] | None, rows: list[list], cls: str = "") -> str:
    """An HTML table of escaped cells in a sideways-scrolling container; no header row when header is None."""
    e = html.escape
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return _scroll(f'<table class="{e(cls)}">{head}<tbody>{body}</tbody></table>')


def _f(x, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def token_lengths(train_dir: Path, texts: list[str]) -> list[int]:
    """Tokens per text under the run's own tokenizer."""
    from seqship.runtime.tokenizer import Tokenizer

    tok = Tokenizer.from_file(train_dir / TOKENIZER)
    return [len(tok.tokens(t)) for t in texts]


def _confusion_table(labels: list[str], cm: list[list[int]]) -> str:
    """The confusion matrix as a table whose cells are shaded by row-normalised share (a heatmap without images)."""
    e = html.escape
    head = "<th>true \\ predicted</th>" + "".join(f"<th>{e(lab)}</th>" for lab in labels)
    rows = []
    for lab, row in zip(labels, cm):
        total = sum(row) or 1
        cells = "".join(
            f'<td style="background: rgba(31, 119, 180, {v / total:.3f}); color: {"#fff" if v / total > 0.5 else "#000"}">{v}</td>'
            for v in row
        )
        rows.append(f"<tr><th>{e(lab)}</th>{cells}</tr>")
    return _scroll(f'<table class="confusion"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _confusion_section(labels: list[str], test: dict, plot: str) -> str:
    """The whole matrix (heatmap and table) where the run kept it, else the most frequent confusions."""
    cm = full_matrix(test)
    if cm is not None:
        return f"<h3>Confusion matrix</h3>\n{plot}\n{_confusion_table(labels, cm)}"
    c = top_confusions(test, labels)
    support = {lab: v["support"] for lab, v in test["per_class"].items()}
    shown = c["top_pairs"][:TOP_CONFUSIONS_SHOWN]
    rows = [[p["true"], p["predicted"], p["count"], f"{p['count'] / (support.get(p['true']) or 1):.1%}"] for p in shown]
    return (
        f"<h3>Most frequent confusions</h3>\n<p>{len(labels)} labels is more than {c['matrix_max_labels']}, so the "
        f"run keeps no confusion matrix. {c['misclassified']} test texts were misclassified, in {c['distinct_pairs']} "
        f"distinct (true, predicted) pairs; the {len(shown)} most frequent are below "
        f"(<code>train/metrics.json</code> keeps up to {c['top_pairs_max']}).</p>\n"
        + _table(["true", "predicted", "texts", "share of true label"], rows, "top-confusions")
    )


def _engines_section(parity: dict) -> str:
    """Every engine the gate ran the same model.onnx in (as verify/parity.json records them, the model card's
    list), and those it could not run, with the reason."""
    e = html.escape
    gate = parity.get("engines") or {}
    rows = []
    for g in gate.get("engines", []):
        lab = g.get("labels") or {}
        why = g.get("error") or "; ".join(g.get("problems") or [])
        rows.append(
            [
                g.get("engine"),
                g.get("version") or "",
                g.get("settings") or "",
                ("verified" if g.get("passed") else "FAILED") + (f": {why}" if why and not g.get("passed") else ""),
                "-" if g.get("max_abs") is None else f"{g['max_abs']:.2e}",
                "-" if lab.get("agreement_outside_near_ties") is None else f"{lab['agreement_outside_near_ties']:.2%}",
                "-" if lab.get("near_ties") is None else lab["near_ties"],
            ]
        )
    table = (
        _table(
            ["engine", "version", "settings", "result", "max |diff|", "label agreement", "near ties"], rows, "engines"
        )
        if rows
        else "<p>(none recorded)</p>"
    )
    skipped = "".join(f"<li>{e(str(s.get('engine')))}: {e(str(s.get('reason')))}</li>" for s in gate.get("skipped", []))
    return (
        "<h3>The same model.onnx in every engine</h3>\n<p>Run on the probes and the whole test set in padded batches, "
        "against eager PyTorch (labels compared outside near ties, where the reference's top two logits are within "
        "twice the tolerance).</p>\n" + table + (f"\n<p>Not checked:</p><ul>{skipped}</ul>" if skipped else "")
    )


def _tick_labels(labels: list[str]) -> list[str]:
    """Labels as the plots show them: as they are when the default font draws every character, else #index."""
    try:
        from matplotlib import font_manager, ft2font

        font = ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties()))
        drawable = all(font.get_char_index(ord(c)) for lab in labels for c in lab if not c.isspace())
    except Exception:
        drawable = all(c.isascii() for lab in labels for c in lab)
    return list(labels) if drawable else [f"#{i}" for i in range(len(labels))]


def _plots(plt, labels, history, cm, lengths, max_length, cv) -> dict[str, str]:
    out = {}
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    a.set_xlabel("epoch"), a.set_ylabel("cross-entropy"), a.set_title("Training loss"), a.legend()
    b.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="val accuracy")
    b.plot(epochs, [h["val_macro_f1"] for h in history], marker="s", label="val macro-F1")
    b.set_xlabel("epoch"), b.set_title("Validation"), b.legend()
    out["curves"] = _png(plt, fig)

    if cm is not None:  # None above the label cap: no matrix was kept, and a heatmap that size is unreadable
        n = len(labels)
        fig, ax = plt.subplots(figsize=(min(2 + 0.55 * n, 12), min(1.6 + 0.5 * n, 11)))
        norm = [[v / (sum(r) or 1) for v in r] for r in cm]
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(
            range(n), labels, rotation=60 if n > 4 else 0, ha="right" if n > 4 else "center", parse_math=False
        )
        ax.set_yticks(range(n), labels, parse_math=False)
        ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title("Confusion matrix (test; rows normalised)")
        for i in range(n):
            for j in range(n):
                ax.text(
                    j, i, cm[i][j], ha="center", va="center", fontsize=8, color="white" if norm[i][j] > 0.5 else "black"
                )
        fig.colorbar(im, ax=ax, fraction=0.046)
        out["confusion"] = _png(plt, fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(lengths, bins=min(60, max(10, len(set(lengths)))), color="#4c72b0")
    ax.axvline(max_length, color="#c44e52", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per training text"), ax.set_ylabel("texts"), ax.set_title("Length histogram"), ax.legend()
    out["lengths"] = _png(plt, fig)

    if cv:
        fig, ax = plt.subplots(figsize=(7, 3))
        folds = [r["fold"] for r in cv["results"]]
        ax.bar(folds, [r["accuracy"] for r in cv["results"]], color="#55a868")
        ax.axhline(cv["accuracy_mean"], color="#c44e52", linestyle="--", label=f"mean {cv['accuracy_mean']:.4f}")
        ax.set_xlabel("fold"), ax.set_ylabel("test accuracy"), ax.set_xticks(folds)
        ax.set_ylim(max(0.0, min(r["accuracy"] for r in cv["results"]) - 0.05), 1.0)
        ax.set_title(f"{cv['folds']}-fold cross-validation"), ax.legend()
        out["cv"] = _png(plt, fig)
    return out


def build_report(run) -> str:
    """The report's HTML for a run that has at least its data and train stages."""
    from seqship.pipeline.data import read_split
    from seqship.pipeline.stages import StageError

    e = html.escape
    if run.record("train") is None:
        raise StageError(f"run {run.name!r} has no train stage in {run.root}: run `pipeline run all` first")
    run.require("train", "report")  # intact, and made from the current data stage
    data = _load(run.file("data", DATA_SUMMARY))
    metrics = _load(run.file("train", METRICS))
    history = (_load(run.file("train", HISTORY)) or {}).get("epochs")
    model_cfg = _load(run.file("train", MODEL_CONFIG)) or {}
    spec = _load(run.file("train", TOKENIZER)) or {}
    # Later stages count only if they were made from this model; otherwise the page says they are stale.
    from seqship.pipeline.stages import baseline_available

    stale = [
        s
        for s in ("baseline", "verify", "package", "cv")
        if run.record(s) is not None and (run.current(s) is None or (s == "cv" and run.current_cv() is None))
    ]
    baseline = _load(run.file("baseline", METRICS)) if run.current("baseline") else None
    parity = _load(run.file("verify", PARITY)) if run.current("verify") else None
    manifest = _load(run.bundle_dir / MANIFEST) if run.current("package") else None
    cv = _load(run.file("cv", CV_RESULTS)) if run.current_cv() else None
    labels = _load(run.file("train", LABELS)) or data["labels"]  # the model's own label order
    test = metrics["test"]
    lengths = token_lengths(run.dir("train"), [t for t, _ in read_split(run.dir("data"), "train")])

    plt = _matplotlib()
    ticks = _tick_labels(labels) if plt else list(labels)
    plots, plot_error = {}, None
    if plt:
        try:
            plots = _plots(plt, ticks, history, full_matrix(test), lengths, spec.get("max_length", max(lengths)), cv)
        except Exception as err:  # a plot is a convenience: the tables carry every number
            plot_error = f"{type(err).__name__}: {err}"
            log.warning("report: plots left out (%s)", plot_error)
            plt.close("all")

    def plot(name: str, alt: str) -> str:
        return _img(plots[name], alt) if name in plots else ""

    counts = data["counts"]
    srt = sorted(lengths)

    def pct(q: float) -> int:
        return srt[min(len(srt) - 1, int(q * len(srt)))]

    sections = []
    sections.append(
        f"""<section id="summary"><h2>Summary</h2>
{
            _table(
                None,
                [
                    ["test accuracy", _f(test["accuracy"])],
                    ["test macro-F1", _f(test["macro_f1"])],
                    [
                        "validation accuracy / macro-F1",
                        f"{_f(metrics['val']['accuracy'])} / {_f(metrics['val']['macro_f1'])}",
                    ],
                    ["best epoch / epochs run", f"{metrics['best_epoch']} / {metrics['epochs_run']}"],
                    ["train time", f"{metrics['train_seconds']:.1f} s on {metrics['device']}"],
                    ["model", ", ".join(f"{k}={v}" for k, v in sorted(model_cfg.items()))],
                    ["parameters", f"{metrics['parameters']:,}"],
                    [
                        "tokenizer",
                        f"{spec.get('type')}, vocabulary {len(spec.get('vocab', []))}, max_length {spec.get('max_length')}, "
                        f"lowercase {spec.get('lowercase')}",
                    ],
                    [
                        "linear baseline (accuracy / macro-F1)",
                        (
                            "stale (made from earlier data, or its files changed): re-run `pipeline run baseline`"
                            if "baseline" in stale
                            else (
                                "not run: `pipeline run baseline` fits it or says why it cannot"
                                if baseline_available()
                                else "not run (needs the `baseline` extra)"
                            )
                        )
                        if baseline is None
                        else f"{_f(baseline['test']['accuracy'])} / {_f(baseline['test']['macro_f1'])} "
                        f"(model {test['accuracy'] - baseline['test']['accuracy']:+.4f} / {test['macro_f1'] - baseline['test']['macro_f1']:+.4f})",
                    ],
                    ["parity gate", "not run" if parity is None else ("passed" if parity["passed"] else "FAILED")],
                    [
                        "bundle",
                        "not packaged"
                        if manifest is None
                        else f"{run.dir('package')} ({sum(f['bytes'] for f in manifest['files'].values()):,} bytes)",
                    ],
                ],
                "kv",
            )
        }</section>"""
    )
    split_rows = [
        [name, n] + [data["per_label"][name].get(lab, 0) for lab in labels] for name, n in data["splits"].items()
    ]
    sections.append(
        f"""<section id="dataset"><h2>Dataset</h2>
<p>Source <code>{e(data["source"])}</code>; fingerprint <code>{e(data["fingerprint"][:16])}</code>.</p>
{
            _table(
                [
                    "rows read",
                    "empty dropped",
                    "junk dropped",
                    "duplicates removed",
                    "unique pairs",
                    "texts with several labels",
                ],
                [
                    [
                        counts.get(k, 0)
                        for k in (
                            "rows_read",
                            "empty_dropped",
                            "junk_dropped",
                            "duplicates_removed",
                            "unique_pairs",
                            "texts_with_several_labels",
                        )
                    ]
                ],
                "counts",
            )
        }
<h3>Splits by label</h3>
{_table(["split", "texts"] + labels, split_rows, "splits")}
<h3>Training text lengths (tokens)</h3>
{
            _table(
                ["min", "median", "p90", "p99", "max", "max_length (truncation)"],
                [[srt[0], pct(0.5), pct(0.9), pct(0.99), srt[-1], spec.get("max_length")]],
                "lengths",
            )
        }
{plot("lengths", "histogram of training text lengths")}
</section>"""
    )
    sections.append(
        f"""<section id="training"><h2>Training</h2>
{plot("curves", "training loss and validation accuracy and macro-F1 per epoch")}
{
            _table(
                ["epoch", "train loss", "val accuracy", "val macro-F1", "lr", "seconds"],
                [
                    [
                        h["epoch"],
                        _f(h["train_loss"]),
                        _f(h["val_accuracy"]),
                        _f(h["val_macro_f1"]),
                        f"{h['lr']:g}",
                        f"{h['seconds']:.1f}",
                    ]
                    for h in history
                ],
                "history",
            )
        }
</section>"""
    )
    per_class = [
        [lab, _f(v["precision"], 3), _f(v["recall"], 3), _f(v["f1"], 3), v["support"]]
        for lab, v in test["per_class"].items()
    ]
    sections.append(
        f"""<section id="test"><h2>Test metrics ({test["n"]} texts)</h2>
<h3>Per class</h3>
{_table(["label", "precision", "recall", "F1", "support"], per_class, "per-class")}
{_confusion_section(labels, test, plot("confusion", "confusion matrix heatmap"))}
</section>"""
    )
    if baseline is not None:
        from seqship.pipeline.baseline import paired_sentence, run_paired

        paired = run_paired(run)
        bt = baseline["test"]
        da, df = test["accuracy"] - bt["accuracy"], test["macro_f1"] - bt["macro_f1"]
        below = [n for n, d in (("accuracy", da), ("macro-F1", df)) if d < 0]
        verdict = (
            "The model is at or above the baseline on both."
            if not below
            else f"<b>The model is below the baseline on {' and '.join(below)}</b>: on this data the linear model "
            "serves users better; see pipeline/experiments/README.md in seqship's repository for what was tried."
        )
        recall = [
            [
                lab,
                _f(v["recall"], 3),
                _f(bt["per_class"].get(lab, {}).get("recall", 0.0), 3),
                f"{v['recall'] - bt['per_class'].get(lab, {}).get('recall', 0.0):+.3f}",
                v["support"],
            ]
            for lab, v in test["per_class"].items()
        ]
        grid = [
            [g["class_weight"], f"{g['C']:g}", _f(g["val_accuracy"]), _f(g["val_macro_f1"]), f"{g['seconds']:.1f}"]
            for g in baseline["grid"]
        ]
        sections.append(
            f"""<section id="baseline"><h2>Compared with a linear baseline</h2>
<p>{e(baseline["features"])}, fitted on the same training split in {baseline["fit_seconds"]:.0f} s
(scikit-learn {e(baseline["sklearn"])}); C={baseline["C"]:g} and class weight {e(baseline["class_weight"])} picked on
validation macro-F1, as the model's checkpoint is. {verdict}</p>
<p>{
                e(paired_sentence(paired))
                if paired
                else "No paired comparison: the run's train or baseline stage predates recorded test predictions (re-run them)."
            }</p>
{
                _table(
                    ["test split", "accuracy", "macro-F1"],
                    [
                        ["this model", _f(test["accuracy"]), _f(test["macro_f1"])],
                        ["linear baseline", _f(bt["accuracy"]), _f(bt["macro_f1"])],
                        ["difference", f"{da:+.4f}", f"{df:+.4f}"],
                    ],
                    "baseline",
                )
            }
<h3>Recall per class</h3>
{_table(["label", "model", "baseline", "difference", "support"], recall, "baseline-recall")}
<h3>The baseline's validation grid</h3>
{_table(["class weight", "C", "val accuracy", "val macro-F1", "seconds"], grid, "baseline-grid")}
</section>"""
        )
    if parity is not None:
        rows = [
            [
                r["backend"],
                r["probe"],
                r["check"],
                "yes" if r["passed"] else "NO",
                f"{r.get('max_abs', 0):.2e}",
                f"{r.get('max_rel', 0):.2e}",
            ]
            for r in parity["results"]
            if "max_abs" in r
        ]
        ts = parity["test_set"]
        skipped = "".join(
            f"<li>{e(s['backend'])}: {e(s['reason'])}</li>"
            if isinstance(s, dict) and {"backend", "reason"} <= set(s)
            else f"<li>{e(str(s))}</li>"
            for s in parity.get("skipped", [])
        )
        sections.append(
            f"""<section id="parity"><h2>Parity (|a - b| &le; {parity["atol"]:g} + {parity["rtol"]:g}&middot;|ref|)</h2>
{_table(["backend", "probe", "check", "passed", "max |diff|", "max rel"], rows, "parity")}
<p>Whole test set through the runtime predictor ({e(str(ts.get("provider")))}): {ts["texts"]} texts, label agreement
{ts["label_agreement"]:.2%}, max |diff| {ts["logits"].get("max_abs", 0):.2e}.</p>
{f"<p>Skipped:</p><ul>{skipped}</ul>" if skipped else ""}
{_engines_section(parity)}
</section>"""
        )
    if cv is not None:
        rows = [
            [
                r["fold"],
                r["train"],
                r["val"],
                r["test"],
                _f(r["accuracy"]),
                _f(r["macro_f1"]),
                r["best_epoch"],
                f"{r['train_seconds']:.0f}",
            ]
            for r in cv["results"]
        ]
        sections.append(
            f"""<section id="cv"><h2>{cv["folds"]}-fold cross-validation</h2>
<p>Mean accuracy <b>{cv["accuracy_mean"]:.4f}</b> &plusmn; {cv["accuracy_std"]:.4f} (sample std), mean macro-F1
{cv["macro_f1_mean"]:.4f}; {cv["train_seconds_total"]:.0f} s of training in all.</p>
{plot("cv", "test accuracy per cross-validation fold")}
{_table(["fold", "train", "val", "test", "accuracy", "macro-F1", "best epoch", "train s"], rows, "cv")}
</section>"""
        )
    note = (
        ""
        if plt
        else (
            '<p class="note">Plots are not included: matplotlib is not installed here '
            "(<code>pip install -e '.[report]'</code> adds them). The tables below carry the same numbers.</p>"
        )
    )
    if plot_error:
        note += f'<p class="note">Plots are not included: drawing them failed ({e(plot_error)}). The tables carry the same numbers.</p>'
    if stale:
        note += (
            f'<p class="note">Left out as stale (made from an earlier model or data): {e(", ".join(stale))}. '
            "Re-run <code>pipeline run all</code> to bring them up to date.</p>"
        )
    if ticks != list(labels):
        note += (
            '<p class="note">In the plots, labels the plotting font cannot draw are shown by number: '
            + e(", ".join(f"#{i} = {lab}" for i, lab in enumerate(labels)))
            + ".</p>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>seqship report: {e(run.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }}
table {{ border-collapse: collapse; margin: 0.6rem 0 1.2rem; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.55rem; text-align: right; }}
th:first-child, td:first-child, table.kv td {{ text-align: left; }}
img.plot {{ display: block; max-width: 100%; margin: 0.5rem 0; }}
div.scroll {{ overflow-x: auto; max-width: 100%; }}
h1, h2, h3, p, li {{ overflow-wrap: anywhere; }}
.note {{ background: #fff6d6; padding: 0.5rem 0.8rem; }}
code {{ font-size: 0.85rem; }}
</style></head>
<body>
<h1>seqship report: {e(run.name)}</h1>
<p>{len(labels)} labels: {e(", ".join(labels))}. Generated {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} by seqship {__version__}.</p>
{note}
{"".join(sections)}
</body></html>
"""


def write_report(run) -> Path:
    """Write <run>/report.html atomically and return its path."""
    from seqship.pipeline.runs import refuse_link
    from seqship.runtime.fsio import write_text_atomic

    page = build_report(run)
    path = refuse_link(run.report_path)
    write_text_atomic(path, page)
    log.debug("report: %s", path)
    return path

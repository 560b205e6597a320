"""The package stage: verified files + manifest + model card -> a bundle folder."""

from __future__ import annotations

import json
import platform
import re
import shutil
import time
import unicodedata
from importlib import metadata
from pathlib import Path

from seqship.pipeline import __version__
from seqship.pipeline.metrics import top_confusions
from seqship.runtime import bundle as fmt
from seqship.runtime.predictor import Predictor

# The ONNX predictor is what ships; a TorchScript file rides along for libtorch users.
NOTES = [
    "model.pt is TorchScript, which PyTorch deprecates in favour of torch.export (DeprecationWarning on "
    "torch 2.13); it is shipped because C++ libtorch loads it. The runtime predictor uses model.onnx only.",
    "A text that is empty after normalisation cannot be scored (the model needs one token); the runtime "
    "raises InputError naming its index.",
]


def library_versions() -> dict[str, str]:
    """Versions of Python, seqship and the libraries that made the bundle, for the manifest."""
    out = {"python": platform.python_version(), "seqship": __version__}
    for dist in ("torch", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def build_bundle(run, records: dict, out: Path) -> dict:
    """Write the bundle into `out` (a temporary folder the caller renames into place) and check it loads."""
    from seqship.pipeline.runs import EXPORT_SUMMARY, HISTORY, LABELS, METRICS, MODEL_CONFIG, PARITY
    from seqship.runtime.errors import BundleError

    export_dir, train_dir = run.dir("export"), run.dir("train")
    verify = json.loads(run.file("verify", PARITY).read_text(encoding="utf-8"))
    for name in (fmt.MODEL_ONNX, fmt.MODEL_TORCHSCRIPT):
        if fmt.sha256_file(export_dir / name) != verify["files"][name]:
            raise BundleError(
                f"{export_dir / name} differs from the file the parity gate verified; re-run `pipeline run verify`"
            )
    for name in (fmt.MODEL_ONNX, fmt.MODEL_TORCHSCRIPT, fmt.TOKENIZER):
        shutil.copyfile(export_dir / name, out / name)
    labels = json.loads((export_dir / LABELS).read_text(encoding="utf-8"))
    export = json.loads((export_dir / EXPORT_SUMMARY).read_text(encoding="utf-8"))
    metrics = json.loads((train_dir / METRICS).read_text(encoding="utf-8"))
    history = json.loads((train_dir / HISTORY).read_text(encoding="utf-8"))
    model_config = json.loads((train_dir / MODEL_CONFIG).read_text(encoding="utf-8"))
    tokenizer = json.loads((export_dir / fmt.TOKENIZER).read_text(encoding="utf-8"))
    data = records["data"]["summary"]
    parity = records["verify"]["summary"]
    test = metrics["test"]
    manifest = {
        "format": fmt.FORMAT,
        "format_version": fmt.FORMAT_VERSION,
        "name": run.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "labels": labels,
        "signature": export["signature"],
        "tokenizer": {
            "file": fmt.TOKENIZER,
            "type": tokenizer["type"],
            "max_length": tokenizer["max_length"],
            "vocab_size": len(tokenizer["vocab"]),
            "pad_id": tokenizer["pad_id"],
            "unk_id": tokenizer["unk_id"],
            "normalization": tokenizer["normalization"],
            "lowercase": tokenizer["lowercase"],
        },
        "model": model_config,
        "training": history["config"],
        "metrics": {
            "test_accuracy": test["accuracy"],
            "test_macro_f1": test["macro_f1"],
            "test_n": test["n"],
            "val_accuracy": metrics["val"]["accuracy"],
            "val_macro_f1": metrics["val"]["macro_f1"],
            # Never the labels x labels matrix (quadratic: 700 MB at 10,000 labels): the most frequent confusions,
            # capped; the run's train/metrics.json has the whole matrix up to confusion.matrix_max_labels labels.
            "per_class": test["per_class"],
            "confusion": top_confusions(test, labels),
            "best_epoch": metrics["best_epoch"],
            "train_seconds": metrics["train_seconds"],
        },
        "parity": parity,
        "baseline": baseline_summary(run, records),
        "data": {
            "source": data["config"].get("data") or data["config"].get("dataset"),
            "fingerprint": data["fingerprint"],
            "counts": data["counts"],
            "splits": data["splits"],
        },
        "versions": library_versions(),
        "notes": NOTES + [f"export warning: {w}" for w in export["torchscript"].get("warnings", [])],
    }
    (out / fmt.MODEL_CARD).write_text(model_card(manifest), encoding="utf-8")
    manifest["files"] = {p.name: fmt.file_entry(p) for p in sorted(out.iterdir()) if p.is_file()}
    (out / fmt.MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    # The bundle must load exactly as an application will load it before it is put in place.
    predictor = Predictor.load(out, providers="cpu")
    return {
        "files": manifest["files"],
        "provider_checked": predictor.provider,
        "labels": len(labels),
        "digest": predictor.digest,
    }


def baseline_summary(run, records: dict) -> dict | None:
    """The linear baseline's numbers on the same test split (None where the run has no baseline stage)."""
    if "baseline" not in records:
        return None
    from seqship.pipeline.runs import METRICS

    b = json.loads(run.file("baseline", METRICS).read_text(encoding="utf-8"))
    return {
        "features": b["features"],
        "C": b["C"],
        "class_weight": b["class_weight"],
        "test_accuracy": b["test"]["accuracy"],
        "test_macro_f1": b["test"]["macro_f1"],
        "val_accuracy": b["val"]["accuracy"],
        "val_macro_f1": b["val"]["macro_f1"],
        "sklearn": b["sklearn"],
    } | _paired(run)


def _paired(run) -> dict:
    """{"paired": the paired comparison on the test texts} where the run records both models' predictions."""
    from seqship.pipeline.baseline import run_paired

    paired = run_paired(run)
    return {} if paired is None else {"paired": paired}


def baseline_lines(met: dict, base: dict | None) -> str:
    """The card's comparison with the linear baseline, as Markdown."""
    if base is None:
        return (
            "Not compared with a linear baseline: the run has no current baseline stage (it needs the `baseline` "
            "extra; `pipeline run baseline` fits it, or says why it cannot on this data)."
        )
    da, df = met["test_accuracy"] - base["test_accuracy"], met["test_macro_f1"] - base["test_macro_f1"]
    verdict = (
        "at or above the baseline on both"
        if da >= 0 and df >= 0
        else "BELOW the baseline on " + " and ".join(n for n, d in (("accuracy", da), ("macro-F1", df)) if d < 0)
    )
    return f"""Same test split, {md(base["features"])} (C={base["C"]:g}, class weight {md(base["class_weight"])}, both picked on
validation macro-F1); this model is {verdict}.

| | accuracy | macro-F1 |
|---|---|---|
| this model | {met["test_accuracy"]:.4f} | {met["test_macro_f1"]:.4f} |
| linear baseline | {base["test_accuracy"]:.4f} | {base["test_macro_f1"]:.4f} |
| difference | {da:+.4f} | {df:+.4f} |{paired_line(base.get("paired"))}"""


def paired_line(paired: dict | None) -> str:
    """The card's paired comparison (95% bootstrap intervals, McNemar), or nothing where the run has none."""
    if not paired:
        return ""
    from seqship.pipeline.baseline import paired_sentence

    return "\n\n" + paired_sentence(paired)  # seqship's own words and numbers: nothing to escape


# Bidi embeddings, overrides and isolates can make a label display as some other text.
_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A)) | {0x200E, 0x200F, 0x061C}
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "|": "&#124;"}  # `|` too: it splits table cells
_MD_PUNCT = re.compile(r"([\\`*_{}\[\]()#!~])")
_MD_LIST = re.compile(r"^([-+]|\d+(?=\.))")  # a list marker, which only counts at the start of a line


def md(text, line_start: bool = False) -> str:
    """`text` (a label, run name, dataset field) as Markdown that shows it literally, with no HTML, link or table cell break."""
    visible = "".join(
        _NAMED.get(c) or (f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Zl", "Zp") or ord(c) in _BIDI else c)
        for c in str(text)
    )
    escaped = _MD_PUNCT.sub(r"\\\1", visible)  # before the entities: `&#124;` has a `#` that must stay as it is
    if line_start:
        escaped = _MD_LIST.sub(lambda mark: mark[0] + "\\" if mark[0][0].isdigit() else "\\" + mark[0], escaped)
    return "".join(_HTML.get(c, c) for c in escaped)


def wheel_version(m: dict) -> str:
    """The seqship version that made the bundle (its predictor loads it), as it appears in the wheel's file name."""
    version = str(m.get("versions", {}).get("seqship") or __version__)
    # a manifest is data: anything but a plain version string would break the command it is pasted into
    return version if re.fullmatch(r"[0-9A-Za-z.+!_]+", version) else __version__


def model_card(m: dict) -> str:
    """The bundle's README.md: what it predicts, from what data, how well, how exactly, how to load it."""
    met, par, sig = m["metrics"], m["parity"], m["signature"]
    worst = max(par["max_abs_by_backend"].values(), default=0.0)
    engines = (
        "\n".join(
            f"| {md(name)} | {md(e.get('version'))} | {'verified' if e['passed'] else 'FAILED'} | "
            f"{'-' if e.get('max_abs') is None else format(e['max_abs'], '.1e')} | "
            f"{'-' if e.get('label_agreement') is None else format(e['label_agreement'], '.2%')} |"
            for name, e in par.get("engines", {}).items()
        )
        or "| (none recorded) | | | | |"
    )
    skipped = "".join(f"\nNot checked: {md(s['engine'])} ({md(s['reason'])})." for s in par.get("engines_skipped", []))
    per_class = "\n".join(
        f"| {md(lab)} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for lab, v in met["per_class"].items()
    )
    counts = m["data"]["counts"]
    splits = ", ".join(f"{md(k)} {v}" for k, v in m["data"]["splits"].items())
    buckets = m["model"].get("pair_buckets", 0)
    pairs = f", token-pair embedding from {buckets} hashed buckets" if buckets else ""
    if m["model"].get("wide_ngrams", 0):
        wide_buckets = m["model"].get("wide_buckets", 2**18)  # ModelConfig's default is left out of the file
        pairs += f", plus a linear part on the TF-IDF of token 1-{m['model']['wide_ngrams']}-grams in {wide_buckets} hashed buckets"
    return f"""# {md(m["name"])}: seqship bundle

Text classifier ({m["model"]["cell"].upper()}, {"bidirectional" if m["model"]["bidirectional"] else "unidirectional"},
{m["model"]["num_layers"]} layer(s), embedding {m["model"]["embed_dim"]}, hidden {m["model"]["hidden_dim"]}{pairs}) predicting
one of {len(m["labels"])} labels: {", ".join(md(lab) for lab in m["labels"])}.

## Data
Source {md(m["data"]["source"])}; {counts["unique_pairs"]} unique (text, label) pairs after removing
{counts["duplicates_removed"]} duplicates, {counts["empty_dropped"]} empty and
{counts["junk_dropped"]} junk rows; split (grouped by text, stratified by label) {splits}.
Fingerprint `{m["data"]["fingerprint"]}`.

## Metrics (test split, {met["test_n"]} texts)
Accuracy **{met["test_accuracy"]:.4f}**, macro-F1 **{met["test_macro_f1"]:.4f}** (validation: {met["val_accuracy"]:.4f} / {met["val_macro_f1"]:.4f}).

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

## Compared with a linear baseline
{baseline_lines(met, m.get("baseline"))}

## Parity
TorchScript and ONNX Runtime were checked against eager PyTorch at probe shapes (T=1, a long row, a ragged
padded batch, real texts) and on the whole test set: {"passed" if par["passed"] else "FAILED"} with
\\|a − b\\| ≤ {par["atol"]:g} + {par["rtol"]:g}·\\|ref\\|; largest absolute difference {worst:.2e};
label agreement on {par["test_set_texts"]} test texts {par["test_set_label_agreement"]:.2%}.

The same `model.onnx` was run in each ONNX engine below on those probes and the whole test set in padded
batches (labels compared outside near ties, where the reference's top two logits are within twice the tolerance):

| engine | version | result | max abs diff | label agreement |
|---|---|---|---|---|
{engines}
{skipped}

## Files
`model.onnx` (opset {sig["opset"]}; inputs `token_ids` int64 [batch, seq], `lengths` int64 [batch]; output
`logits` float32 [batch, {len(m["labels"])}]), `model.pt` (TorchScript, same signature), `tokenizer.json`
(the preprocessing spec), `manifest.json` (labels, sha256 of every file, metrics with the most frequent
confusions, versions).

## Load it
Python, with only numpy and onnxruntime: install seqship's predictor without PyTorch or the training code.
seqship is not on PyPI; from its wheel (`pip wheel . --no-deps -w dist/` in a checkout builds it):
```bash
pip install seqship-{wheel_version(m)}-py3-none-any.whl
```
or from a checkout of seqship {wheel_version(m)}: `pip install .` in its root. Then:
```python
from seqship.runtime import Predictor
p = Predictor.load("path/to/this/folder")
print(p.predict(["some text"], top_k=3))
```
Another language: read `manifest.json` (labels; check each file's sha256), implement `tokenizer.json`
(NFC-normalise, {"lower-case, " if m["tokenizer"].get("lowercase") else ""}strip, split into {md(m["tokenizer"]["type"])} tokens,
keep the first {m["tokenizer"]["max_length"]}, map to vocab ids with unk id {m["tokenizer"]["unk_id"]}), right-pad
with id {m["tokenizer"]["pad_id"]}, and run `model.onnx` with any ONNX Runtime binding; argmax of `logits` indexes
`labels`. C++ libtorch: `torch::jit::load("model.pt")` and call `forward({{token_ids, lengths}})`.

## Report
Training curves, the confusion matrix, per-class metrics, the parity table and the dataset summary are in
`report.html` in the run folder this bundle was packaged from (`pipeline run all` or `pipeline run report` writes
it there, beside the `bundle` folder). It is not part of the bundle.

## Notes
{chr(10).join("- " + md(n, line_start=True) for n in m["notes"])}

Versions: {", ".join(f"{md(k)} {md(v)}" for k, v in m["versions"].items())}. Created {m["created_at"]}.
"""

"""report.html, rendered in real headless Chromium: the sections, tables and plots a reader looks at.

Like the portable-runtime tests this never skips: Node, playwright-core and Chromium are installed by
install.sh, and a missing one fails with the command that installs it.
"""

import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, invoke

REPO = Path(__file__).resolve().parents[2]
JS = REPO / "runtime" / "js"


def render(report: Path, work: Path) -> dict:
    """What headless Chromium shows of a report (tools/report_check.mjs), checked for errors and injected script."""
    for path, how in (
        (JS / "node_modules" / "playwright-core", "cd runtime/js && npm ci --ignore-scripts"),
        (Path(os.environ.get("CHROMIUM", "/usr/bin/chromium")), "apt-get install -y chromium"),
    ):
        if not path.exists():
            pytest.fail(f"{path} is missing: run `{how}` (the report test never skips)")
    out, shot = work / "seen.json", work / "report.png"
    subprocess.run(
        ["node", str(JS / "tools" / "report_check.mjs"), report.as_uri(), str(out), str(shot)],
        cwd=JS,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000  # a real full-page screenshot
    seen = json.loads(out.read_text())
    assert seen["errors"] == [] and seen["scripts"] == 0 and not seen["injected"]
    seen["by_id"] = {s["id"]: s for s in seen["sections"]}
    return seen


def table(section: dict, cls: str) -> dict:
    """The one table of class `cls` in a rendered section."""
    found = [t for t in section["tables"] if t["class"] == cls]
    assert len(found) == 1, (
        f"section {section['id']} should have one {cls!r} table: {[t['class'] for t in section['tables']]}"
    )
    return found[0]


def check_tables(seen: dict, run: Path) -> None:
    """Every table a reader needs is there and carries the run's own numbers."""
    metrics = json.loads((run / "train" / "metrics.json").read_text())
    summary = json.loads((run / "data" / "summary.json").read_text())
    labels = summary["labels"]
    s = seen["by_id"]
    assert {"summary", "dataset", "training", "test", "parity"} <= set(s)
    assert all(sec["visible"] for sec in seen["sections"])
    headers = [t["header"] for sec in seen["sections"] for t in sec["tables"]]
    assert all(any(h.strip() for h in header) for header in headers if header)  # no header row of empty cells
    kv = {row[0]: row[1] for row in table(s["summary"], "kv")["cells"]}
    assert kv["test accuracy"] == f"{metrics['test']['accuracy']:.4f}" and kv["parity gate"] == "passed"
    counts = table(s["dataset"], "counts")
    assert counts["cells"][0][3] == str(summary["counts"]["duplicates_removed"]) and counts["cells"][0][4] == str(
        summary["counts"]["unique_pairs"]
    )
    assert table(s["dataset"], "splits")["header"] == ["split", "texts"] + labels
    assert table(s["training"], "history")["rows"] == metrics["epochs_run"]
    per_class = table(s["test"], "per-class")
    assert [row[0] for row in per_class["cells"]] == labels
    confusion = table(s["test"], "confusion")
    assert confusion["rows"] == len(labels)
    assert [[int(c) for c in row[1:]] for row in confusion["cells"]] == metrics["test"]["confusion_matrix"]
    parity = table(s["parity"], "parity")
    assert parity["rows"] >= 8 and all(row[3] == "yes" for row in parity["cells"])
    # every engine the gate ran the same model.onnx in, as verify/parity.json records it (not only the two above)
    gate = json.loads((run / "verify" / "parity.json").read_text())["engines"]
    engines = table(s["parity"], "engines")
    assert engines["header"][:4] == ["engine", "version", "settings", "result"]
    assert [row[:2] for row in engines["cells"]] == [[g["engine"], g["version"]] for g in gate["engines"]]
    assert all(row[3] == "verified" for row in engines["cells"]) and len(engines["cells"]) >= 2


def test_run_all_writes_a_report_beside_the_bundle_with_plots_and_tables(tiny_run, tmp_path):
    artifacts, summary = tiny_run
    run = artifacts / "tiny"
    assert summary["report"] == str(run / "report.html") and Path(summary["bundle"]).parent == run
    card = (run / "bundle" / "README.md").read_text()
    assert (
        "`report.html` in the run folder" in card and "](../report.html)" not in card
    )  # named, not linked: not in the bundle
    seen = render(run / "report.html", tmp_path)
    check_tables(seen, run)
    images = {sec["id"]: sec["images"] for sec in seen["sections"]}
    for section in ("dataset", "training", "test"):  # length histogram, curves, confusion heatmap
        assert len(images[section]) == 1, section
        img = images[section][0]
        assert img["decoded"] and img["naturalWidth"] > 300 and img["shownWidth"] > 200, img
    assert seen["notes"] == []


def test_without_matplotlib_the_report_still_renders_every_table(tiny_run, tmp_path):
    artifacts, _ = tiny_run
    copy = tmp_path / "copy"  # the same run, copied so that the shared run's report is left alone
    shutil.copytree(artifacts / "tiny", copy / "tiny", ignore=shutil.ignore_patterns("report.html", ".lock"))
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(
        "import sys\nsys.modules['matplotlib'] = None  # import fails\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'block'}{os.pathsep}{REPO}")
    code = "from seqship.pipeline.report import write_report; from seqship.pipeline.stages import Run; import sys; print(write_report(Run(sys.argv[1], 'tiny')))"
    done = subprocess.run([sys.executable, "-c", code, str(copy)], env=env, capture_output=True, text=True, check=True)
    report = Path(done.stdout.strip())
    assert report == (copy / "tiny" / "report.html").resolve()
    seen = render(report, tmp_path)
    check_tables(seen, copy / "tiny")
    assert all(sec["images"] == [] for sec in seen["sections"])
    assert len(seen["notes"]) == 1 and "matplotlib is not installed" in seen["notes"][0]


def test_the_report_lists_every_engine_of_the_tiny_run_as_the_model_card_does(tiny_run):
    # report.html showed TorchScript and onnxruntime only; the card lists every engine the gate ran
    run = tiny_run[0] / "tiny"
    page = (run / "report.html").read_text(encoding="utf-8")
    card = (run / "bundle" / "README.md").read_text(encoding="utf-8")
    gate = json.loads((run / "verify" / "parity.json").read_text())["engines"]
    assert {"onnxruntime", "onnx.reference"} <= {g["engine"] for g in gate["engines"]}
    for g in gate["engines"]:
        assert f"<tr><td>{html.escape(g['engine'])}</td><td>{html.escape(g['version'])}</td>" in page, g["engine"]
        assert f"| {g['engine']} | {g['version']} | verified |" in card.replace("\\", "")
    for s in gate["skipped"]:
        assert f"<li>{html.escape(s['engine'])}: {html.escape(s['reason'])}</li>" in page


@pytest.mark.slow
def test_engines_the_gate_could_not_run_are_listed_with_the_reason(tiny_run, tmp_path):
    # without node on PATH the JavaScript engines are skipped by the gate: the report says so, and why
    shutil.copytree(tiny_run[0] / "tiny", tmp_path / "tiny", ignore=shutil.ignore_patterns(".lock"))
    common = ["--artifacts-dir", str(tmp_path), "--run-name", "tiny", "--json"]
    done = invoke("run", "verify", "--force", *common, env={"PATH": str(Path(sys.executable).parent)})
    assert done.exit_code == 0, done.output
    assert invoke("run", "report", *common).exit_code == 0
    page = (tmp_path / "tiny" / "report.html").read_text(encoding="utf-8")
    gate = json.loads((tmp_path / "tiny" / "verify" / "parity.json").read_text())["engines"]
    assert {s["engine"] for s in gate["skipped"]} >= {"onnxruntime-node", "onnxruntime-web"}
    listed = page[page.index("<p>Not checked:</p>") :]
    for s in gate["skipped"]:
        assert f"<li>{html.escape(s['engine'])}: {html.escape(s['reason'])}</li>" in listed
        assert "node is not installed" in s["reason"] or s["engine"] not in ("onnxruntime-node", "onnxruntime-web")
    for g in gate["engines"]:  # the engines that did run are still in the table
        assert f"<tr><td>{html.escape(g['engine'])}</td>" in page


@pytest.mark.slow
def test_cross_validation_folds_cover_the_data_and_appear_in_the_report(data_dir, tmp_path):
    result = invoke(
        "run",
        "all",
        "--data-dir",
        str(data_dir),
        "--artifacts-dir",
        str(tmp_path),
        "--run-name",
        "cv",
        "--json",
        "--no-baseline",
        *TINY,
        "--epochs",
        "1",
        "--cv",
        "2",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    cv = json.loads((tmp_path / "cv" / "cv" / "cv.json").read_text())
    data = json.loads((tmp_path / "cv" / "data" / "summary.json").read_text())
    assert cv["folds"] == 2 and [r["fold"] for r in cv["results"]] == [1, 2]
    assert sum(r["test"] for r in cv["results"]) == data["counts"]["unique_pairs"]  # every row is tested exactly once
    assert all(r["train"] + r["val"] + r["test"] == data["counts"]["unique_pairs"] for r in cv["results"])
    assert out["cv"]["accuracy_mean"] == pytest.approx(sum(r["accuracy"] for r in cv["results"]) / 2)
    assert not list((tmp_path / "cv" / "cv").glob("*.pt"))  # fold models are not kept
    seen = render(tmp_path / "cv" / "report.html", tmp_path)
    section = seen["by_id"]["cv"]
    assert table(section, "cv")["rows"] == 2 and section["images"][0]["decoded"]
    again = invoke(
        "run",
        "all",
        "--data-dir",
        str(data_dir),
        "--artifacts-dir",
        str(tmp_path),
        "--run-name",
        "cv",
        "--json",
        "--no-baseline",
        *TINY,
        "--epochs",
        "1",
        "--cv",
        "2",
    )
    assert [s["skipped"] for s in json.loads(again.stdout)["stages"]] == [True] * 6  # an unchanged cv stage is reused
    # A new model makes the cross-validation, the parity report and the bundle stale: the report leaves them out.
    assert (
        invoke("run", "train", "--artifacts-dir", str(tmp_path), "--run-name", "cv", *TINY, "--epochs", "2").exit_code
        == 0
    )
    assert invoke("run", "report", "--artifacts-dir", str(tmp_path), "--run-name", "cv").exit_code == 0
    seen = render(tmp_path / "cv" / "report.html", tmp_path)
    assert "cv" not in seen["by_id"] and "parity" not in seen["by_id"]
    assert any("stale" in n and "verify, package, cv" in n for n in seen["notes"])


def test_kfold_folds_are_disjoint_grouped_stratified_and_cover_every_row():
    from seqship.pipeline.data import kfold

    rows = [(f"t{i}", "a" if i % 3 else "b") for i in range(100)] + [("t1", "b"), ("t2", "b")]  # two texts, two labels
    folds = kfold(rows, 4, seed=0)
    assert sorted(r for f in folds for r in f) == sorted(rows)  # a partition: every row exactly once
    texts = [{t for t, _ in f} for f in folds]
    assert all(not (texts[i] & texts[j]) for i in range(4) for j in range(i + 1, 4))  # a text never in two folds
    assert [sum(lab == "b" for _, lab in f) for f in folds] == [9, 9, 9, 9]  # 36 texts in the rarer label's stratum
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 2
    assert kfold(rows, 4, seed=0) == folds and kfold(rows, 4, seed=1) != folds


@pytest.mark.slow
def test_labels_and_texts_from_user_data_are_shown_as_text_never_run(data_dir, tmp_path):
    names = (data_dir / "names" / "Japanese.txt").read_text().split()[:60] + (
        data_dir / "names" / "Russian.txt"
    ).read_text().split()[:60]
    hostile = ['<img src=x onerror="window.__injected=true">', "$\\alpha$ & <script>window.__injected=true</script>"]
    rows = [{"text": n, "label": hostile[i >= 60]} for i, n in enumerate(names)]
    data = tmp_path / "hostile.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke(
        "run",
        "all",
        "--data",
        str(data),
        "--artifacts-dir",
        str(tmp_path),
        "--json",
        "--no-baseline",
        *TINY,
        "--epochs",
        "1",
    )
    assert result.exit_code == 0, result.output
    seen = render(Path(json.loads(result.stdout)["report"]), tmp_path)  # asserts no script element and nothing injected
    assert [row[0] for row in table(seen["by_id"]["test"], "per-class")["cells"]] == sorted(hostile)
    assert all(
        img["decoded"] for sec in seen["sections"] for img in sec["images"]
    )  # "$\alpha$" did not break the plots


def test_cv_refuses_a_dataset_with_a_published_test_split(data_dir, tmp_path):
    assert (
        invoke(
            "run", "data", "--dataset", "sst2", "--data-dir", str(data_dir), "--artifacts-dir", str(tmp_path)
        ).exit_code
        == 0
    )
    result = invoke("run", "cv", "--artifacts-dir", str(tmp_path), "--run-name", "sst2", "--folds", "3")
    assert result.exit_code == 1 and "published test split" in result.output


# -- wide and hostile labels ---------------------------------------------------------------------------------

HOSTILE = [
    "<script>window.__injected=true</script>",
    '<img src=x onerror="window.__injected=true">',
    "[x](javascript:window.__injected=true)",
    "a | b",
    "`tick` &amp; &lt;b&gt;",
    "$\\alpha$ <b>bold</b>",
]
ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "h3",
    "p",
    "section",
    "div",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "img",
    "code",
    "ul",
    "li",
    "b",
}

# The page at 900 px: does it scroll sideways, is every table in a scrolling container, what do the tables hold.
NARROW = """
import { chromium } from "playwright-core";
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
                                        args: ["--no-sandbox", "--disable-gpu"] });
const page = await browser.newPage({ viewport: { width: 900, height: 900 } });
await page.goto(process.argv[1], { waitUntil: "load" });
console.log(JSON.stringify(await page.evaluate(() => ({
  innerWidth: window.innerWidth,
  pageWidth: document.documentElement.scrollWidth,
  injected: window.__injected === true,
  tables: [...document.querySelectorAll("table")].map((t) => ({
    class: t.className,
    scrolls: getComputedStyle(t.parentElement).overflowX === "auto",
    overflowing: t.parentElement.scrollWidth > t.parentElement.clientWidth,
    header: [...t.querySelectorAll("thead th")].map((th) => th.textContent),
    cells: [...t.querySelectorAll("tbody tr")].map((tr) => [...tr.children].map((c) => c.textContent)),
  })),
}))));
await browser.close();
"""


def narrow(report: Path) -> dict:
    """The report in a 900 px wide window: page width, and for each table whether it scrolls and what it holds."""
    done = subprocess.run(
        ["node", "--input-type=module", "-e", NARROW, report.as_uri()],
        cwd=JS,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(done.stdout)


def tags(page: str) -> list[tuple[str, dict]]:
    """Every start tag an HTML parser finds in the page, with its attributes."""
    from html.parser import HTMLParser

    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Tags().feed(page)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("n_labels", [40, 60])  # under the confusion-matrix cap of 50 labels, and over it
def test_many_long_hostile_labels_scroll_inside_tables_and_are_never_markup(data_dir, tmp_path, n_labels):
    from seqship.pipeline.metrics import MATRIX_MAX_LABELS

    names = sorted({n for f in sorted((data_dir / "names").glob("*.txt")) for n in f.read_text().split()})[
        : 12 * n_labels
    ]
    labels = [f"{HOSTILE[i % len(HOSTILE)]} {'LONGLABELWITHOUTSPACES' * 2}{i:02d}" for i in range(n_labels)]
    data = tmp_path / "wide.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": labels[i % n_labels]}) + "\n" for i, t in enumerate(names)))
    common = ["--artifacts-dir", str(tmp_path), "--run-name", "wide"]
    assert invoke("run", "data", "--data", str(data), *common).exit_code == 0
    assert invoke("run", "train", *common, *TINY, "--epochs", "1").exit_code == 0
    assert invoke("run", "report", *common).exit_code == 0
    report = tmp_path / "wide" / "report.html"
    page = report.read_text()

    found = tags(page)
    assert {t for t, _ in found} <= ALLOWED_TAGS, {t for t, _ in found} - ALLOWED_TAGS  # no label became a tag
    assert all(
        a.get("class") == "plot" and a["src"].startswith("data:image/png;base64,") for t, a in found if t == "img"
    )
    assert "<script" not in page and "<b>bold" not in page and "href" not in page

    seen = narrow(report)
    assert not seen["injected"]
    assert seen["pageWidth"] <= seen["innerWidth"] == 900  # the page itself never scrolls sideways...
    assert all(t["scrolls"] for t in seen["tables"])  # ...each table scrolls in its own container...
    assert any(t["overflowing"] for t in seen["tables"])  # ...and these tables are wider than the window
    by_class = {t["class"]: t for t in seen["tables"]}
    assert [row[0] for row in by_class["per-class"]["cells"]] == sorted(labels)  # shown as text, exactly
    metrics = json.loads((tmp_path / "wide" / "train" / "metrics.json").read_text())
    if n_labels <= MATRIX_MAX_LABELS:
        assert by_class["confusion"]["header"] == ["true \\ predicted"] + sorted(labels)
        assert [[int(c) for c in row[1:]] for row in by_class["confusion"]["cells"]] == metrics["test"][
            "confusion_matrix"
        ]
        assert "top-confusions" not in by_class
    else:
        assert metrics["test"]["confusion_matrix"] is None and "confusion" not in by_class  # no table, no heatmap
        assert "confusion matrix heatmap" not in page
        pairs = metrics["test"]["confusion"]["top_pairs"]
        assert 0 < len(pairs) and [row[:3] for row in by_class["top-confusions"]["cells"]] == [
            [p["true"], p["predicted"], str(p["count"])] for p in pairs[:100]
        ]


# -- metrics that grow with the label count, not its square ---------------------------------------------------


def dense_reference(y_true, y_pred, k):
    """The metrics as the old labels x labels implementation computed them."""
    import numpy as np

    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = cm.sum(1) > 0
    return cm, precision, recall, f1, float(f1[present].mean()), float(tp.sum() / cm.sum())


def synthetic(k: int, n: int, seed: int = 0):
    """Random (y_true, y_pred, labels) for k classes, 60% right, the errors bunched on every third class."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    confused = rng.integers(0, k, n) // 3 * 3  # some classes attract the errors, so counts differ
    return y_true, np.where(rng.random(n) < 0.6, y_true, confused), [f"label {i} <{i}>" for i in range(k)]


def test_metrics_for_3000_labels_stay_small_and_keep_exact_per_class_numbers():
    from seqship.pipeline.metrics import MATRIX_MAX_LABELS, TOP_PAIRS_MAX, classification_metrics

    k = 3000
    y_true, y_pred, labels = synthetic(k, 60_000)
    m = classification_metrics(y_true, y_pred, labels)
    assert len(json.dumps(m, indent=1, ensure_ascii=False).encode()) < 1_000_000  # the dense matrix alone is ~27 MB
    cm, precision, recall, f1, macro_f1, accuracy = dense_reference(y_true, y_pred, k)
    assert m["accuracy"] == accuracy and m["macro_f1"] == macro_f1 and m["n"] == len(y_true)
    for i, lab in enumerate(labels):
        assert m["per_class"][lab] == {
            "precision": precision[i],
            "recall": recall[i],
            "f1": f1[i],
            "support": int(cm[i].sum()),
        }
    assert m["confusion_matrix"] is None
    c = m["confusion"]
    assert (
        c["matrix_max_labels"] == MATRIX_MAX_LABELS and c["top_pairs_max"] == TOP_PAIRS_MAX
    )  # the file names its caps
    off = cm.copy()
    off[range(k), range(k)] = 0
    assert c["misclassified"] == int(off.sum()) and c["distinct_pairs"] == int((off > 0).sum()) > TOP_PAIRS_MAX
    pairs = c["top_pairs"]
    assert len(pairs) == TOP_PAIRS_MAX
    index = {lab: i for i, lab in enumerate(labels)}
    assert all(p["count"] == off[index[p["true"]], index[p["predicted"]]] for p in pairs)
    counts = [p["count"] for p in pairs]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] >= sorted(off.ravel())[-TOP_PAIRS_MAX - 1]  # nothing left out is more frequent than what is kept


def test_metrics_for_10000_labels_never_allocate_a_labels_by_labels_array():
    import tracemalloc

    from seqship.pipeline.metrics import classification_metrics

    y_true, y_pred, labels = synthetic(10_000, 50_000)
    tracemalloc.start()
    try:
        m = classification_metrics(y_true, y_pred, labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB: a dense matrix would be 763 MiB"
    assert len(m["per_class"]) == 10_000 and len(m["confusion"]["top_pairs"]) == 1000


def test_metrics_for_few_labels_keep_the_whole_matrix_and_read_old_metrics_files():
    from seqship.pipeline.metrics import classification_metrics, full_matrix, top_confusions

    y_true, y_pred, labels = synthetic(6, 500)
    m = classification_metrics(y_true, y_pred, labels)
    cm = dense_reference(y_true, y_pred, 6)[0]
    assert full_matrix(m) == m["confusion_matrix"] == cm.tolist()
    assert (
        sum(p["count"] for p in m["confusion"]["top_pairs"])
        == m["confusion"]["misclassified"]
        == int((y_true != y_pred).sum())
    )
    old = {k: v for k, v in m.items() if k != "confusion"}  # metrics.json as written before the compact form existed
    assert top_confusions(old, labels) == m["confusion"]

"""report.html, rendered in real headless Chromium: the sections, tables and plots a reader looks at.

Like the portable-runtime tests this never skips: Node, playwright-core and Chromium are installed by
install.sh, and a missing one fails with the command that installs it.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, invoke

REPO = Path(__file__).resolve().parent.parent
JS = REPO / "runtime" / "js"


def render(report: Path, work: Path) -> dict:
    for path, how in ((JS / "node_modules" / "playwright-core", "cd runtime/js && npm ci --ignore-scripts"),
                      (Path(os.environ.get("CHROMIUM", "/usr/bin/chromium")), "apt-get install -y chromium")):
        if not path.exists():
            pytest.fail(f"{path} is missing: run `{how}` (the report test never skips)")
    out, shot = work / "seen.json", work / "report.png"
    subprocess.run(["node", str(JS / "tools" / "report_check.mjs"), report.as_uri(), str(out), str(shot)],
                   cwd=JS, check=True, capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000  # a real full-page screenshot
    seen = json.loads(out.read_text())
    assert seen["errors"] == [] and seen["scripts"] == 0 and not seen["injected"]
    seen["by_id"] = {s["id"]: s for s in seen["sections"]}
    return seen


def table(section: dict, cls: str) -> dict:
    found = [t for t in section["tables"] if t["class"] == cls]
    assert len(found) == 1, f"section {section['id']} should have one {cls!r} table: {[t['class'] for t in section['tables']]}"
    return found[0]


def check_tables(seen: dict, run: Path) -> None:
    """Every table a reader needs is there and carries the run's own numbers."""
    metrics = json.loads((run / "train" / "metrics.json").read_text())
    summary = json.loads((run / "data" / "summary.json").read_text())
    labels = summary["labels"]
    s = seen["by_id"]
    assert {"summary", "dataset", "training", "test", "parity"} <= set(s)
    assert all(sec["visible"] for sec in seen["sections"])
    kv = {row[0]: row[1] for row in table(s["summary"], "kv")["cells"]}
    assert kv["test accuracy"] == f"{metrics['test']['accuracy']:.4f}" and kv["parity gate"] == "passed"
    counts = table(s["dataset"], "counts")
    assert counts["cells"][0][3] == str(summary["counts"]["duplicates_removed"]) and counts["cells"][0][4] == str(summary["counts"]["unique_pairs"])
    assert table(s["dataset"], "splits")["header"] == ["split", "texts"] + labels
    assert table(s["training"], "history")["rows"] == metrics["epochs_run"]
    per_class = table(s["test"], "per-class")
    assert [row[0] for row in per_class["cells"]] == labels
    confusion = table(s["test"], "confusion")
    assert confusion["rows"] == len(labels)
    assert [[int(c) for c in row[1:]] for row in confusion["cells"]] == metrics["test"]["confusion_matrix"]
    parity = table(s["parity"], "parity")
    assert parity["rows"] >= 8 and all(row[3] == "yes" for row in parity["cells"])


def test_run_all_writes_a_report_beside_the_bundle_with_plots_and_tables(tiny_run, tmp_path):
    artifacts, summary = tiny_run
    run = artifacts / "tiny"
    assert summary["report"] == str(run / "report.html") and Path(summary["bundle"]).parent == run
    assert "(../report.html)" in (run / "bundle" / "README.md").read_text()  # the model card links to it
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
    (tmp_path / "block" / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None  # import fails\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'block'}{os.pathsep}{REPO}")
    code = "from pipeline.report import write_report; from pipeline.stages import Run; import sys; print(write_report(Run(sys.argv[1], 'tiny')))"
    done = subprocess.run([sys.executable, "-c", code, str(copy)], env=env, capture_output=True, text=True, check=True)
    report = Path(done.stdout.strip())
    assert report == (copy / "tiny" / "report.html").resolve()
    seen = render(report, tmp_path)
    check_tables(seen, copy / "tiny")
    assert all(sec["images"] == [] for sec in seen["sections"])
    assert len(seen["notes"]) == 1 and "matplotlib is not installed" in seen["notes"][0]


def test_cross_validation_folds_cover_the_data_and_appear_in_the_report(data_dir, tmp_path):
    result = invoke("run", "all", "--data-dir", str(data_dir), "--artifacts-dir", str(tmp_path), "--run-name", "cv",
                    "--json", *TINY, "--epochs", "1", "--cv", "3")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    cv = json.loads((tmp_path / "cv" / "cv" / "cv.json").read_text())
    data = json.loads((tmp_path / "cv" / "data" / "summary.json").read_text())
    assert cv["folds"] == 3 and [r["fold"] for r in cv["results"]] == [1, 2, 3]
    assert sum(r["test"] for r in cv["results"]) == data["counts"]["unique_pairs"]  # every row is tested exactly once
    assert all(r["train"] + r["val"] + r["test"] == data["counts"]["unique_pairs"] for r in cv["results"])
    assert out["cv"]["accuracy_mean"] == pytest.approx(sum(r["accuracy"] for r in cv["results"]) / 3)
    assert not list((tmp_path / "cv" / "cv").glob("*.pt"))  # fold models are not kept
    seen = render(tmp_path / "cv" / "report.html", tmp_path)
    section = seen["by_id"]["cv"]
    assert table(section, "cv")["rows"] == 3 and section["images"][0]["decoded"]
    again = invoke("run", "all", "--data-dir", str(data_dir), "--artifacts-dir", str(tmp_path), "--run-name", "cv",
                   "--json", *TINY, "--epochs", "1", "--cv", "3")
    assert [s["skipped"] for s in json.loads(again.stdout)["stages"]] == [True] * 6  # an unchanged cv stage is reused
    # A new model makes the cross-validation, the parity report and the bundle stale: the report leaves them out.
    assert invoke("run", "train", "--artifacts-dir", str(tmp_path), "--run-name", "cv", *TINY, "--epochs", "2").exit_code == 0
    assert invoke("run", "report", "--artifacts-dir", str(tmp_path), "--run-name", "cv").exit_code == 0
    seen = render(tmp_path / "cv" / "report.html", tmp_path)
    assert "cv" not in seen["by_id"] and "parity" not in seen["by_id"]
    assert any("stale" in n and "verify, package, cv" in n for n in seen["notes"])


def test_kfold_folds_are_disjoint_grouped_stratified_and_cover_every_row():
    from pipeline.data import kfold

    rows = [(f"t{i}", "a" if i % 3 else "b") for i in range(100)] + [("t1", "b"), ("t2", "b")]  # two texts, two labels
    folds = kfold(rows, 4, seed=0)
    assert sorted(r for f in folds for r in f) == sorted(rows)  # a partition: every row exactly once
    texts = [{t for t, _ in f} for f in folds]
    assert all(not (texts[i] & texts[j]) for i in range(4) for j in range(i + 1, 4))  # a text never in two folds
    assert [sum(lab == "b" for _, lab in f) for f in folds] == [9, 9, 9, 9]  # 36 texts in the rarer label's stratum
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 2
    assert kfold(rows, 4, seed=0) == folds and kfold(rows, 4, seed=1) != folds


def test_labels_and_texts_from_user_data_are_shown_as_text_never_run(data_dir, tmp_path):
    names = (data_dir / "names" / "Japanese.txt").read_text().split()[:60] + (data_dir / "names" / "Russian.txt").read_text().split()[:60]
    hostile = ["<img src=x onerror=\"window.__injected=true\">", "$\\alpha$ & <script>window.__injected=true</script>"]
    rows = [{"text": n, "label": hostile[i >= 60]} for i, n in enumerate(names)]
    data = tmp_path / "hostile.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("run", "all", "--data", str(data), "--artifacts-dir", str(tmp_path), "--json", *TINY, "--epochs", "1")
    assert result.exit_code == 0, result.output
    seen = render(Path(json.loads(result.stdout)["report"]), tmp_path)  # asserts no script element and nothing injected
    assert [row[0] for row in table(seen["by_id"]["test"], "per-class")["cells"]] == sorted(hostile)
    assert all(img["decoded"] for sec in seen["sections"] for img in sec["images"])  # "$\alpha$" did not break the plots


def test_cv_refuses_a_dataset_with_a_published_test_split(data_dir, tmp_path):
    assert invoke("run", "data", "--dataset", "sst2", "--data-dir", str(data_dir), "--artifacts-dir", str(tmp_path)).exit_code == 0
    result = invoke("run", "cv", "--artifacts-dir", str(tmp_path), "--run-name", "sst2", "--folds", "3")
    assert result.exit_code == 1 and "published test split" in result.output

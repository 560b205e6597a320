"""The linear baseline stage (the `baseline` extra) and class-weighted training, on a small real subset of
the names data: six languages, skewed as the full set is (English 1,500 names, Portuguese 74)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, invoke, two_label_csv

REPO = Path(__file__).resolve().parents[2]
SUBSET = {"English": 1500, "German": 724, "Dutch": 297, "Irish": 232, "Scottish": 100, "Portuguese": 74}


@pytest.fixture(scope="module")
def subset_dir(tmp_path_factory, data_dir) -> Path:
    """<dir>/names/<Language>.txt: the registry's names dataset, fewer languages and names."""
    root = tmp_path_factory.mktemp("names-subset")
    (root / "names").mkdir()
    for lang, n in SUBSET.items():
        lines = (data_dir / "names" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:n]
        (root / "names" / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def run_with_baseline(tmp_path_factory, subset_dir):
    artifacts = tmp_path_factory.mktemp("artifacts")
    # class-weighted (balanced): the weighting test below compares this model with an unweighted one
    result = invoke(
        "run",
        "all",
        "--dataset",
        "names",
        "--data-dir",
        str(subset_dir),
        "--artifacts-dir",
        str(artifacts),
        "--run-name",
        "names",
        "--json",
        "--class-weight",
        "balanced",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    return artifacts, json.loads(result.stdout)


@pytest.mark.slow
def test_run_all_fits_the_baseline_and_every_output_compares_the_model_with_it(run_with_baseline):
    artifacts, out = run_with_baseline
    run = artifacts / "names"
    stages = [s["stage"] for s in out["stages"]]
    assert stages == ["data", "train", "baseline", "export", "verify", "package"]
    metrics = json.loads((run / "baseline" / "metrics.json").read_text(encoding="utf-8"))
    # C and class weighting were picked on validation macro-F1, over the whole grid
    best = max(metrics["grid"], key=lambda g: g["val_macro_f1"])
    assert (metrics["C"], metrics["class_weight"]) == (best["C"], best["class_weight"])
    assert len(metrics["grid"]) == 8 and {g["class_weight"] for g in metrics["grid"]} == {"none", "balanced"}
    assert metrics["features"].startswith("TF-IDF char 1-4-grams")  # surnames are short: char n-grams up to 4
    test = metrics["test"]
    assert test["n"] == json.loads((run / "train" / "metrics.json").read_text())["test"]["n"]  # the same test split
    assert out["baseline"]["test_accuracy"] == test["accuracy"] and 0.5 < test["accuracy"] <= 1
    model = out["metrics"]
    # The model card, from the manifest: both rows and the difference
    manifest = json.loads((run / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["baseline"]["test_accuracy"] == test["accuracy"] and manifest["baseline"]["C"] == metrics["C"]
    card = (run / "bundle" / "README.md").read_text(encoding="utf-8")
    assert "## Compared with a linear baseline" in card
    assert f"| linear baseline | {test['accuracy']:.4f} | {test['macro_f1']:.4f} |" in card
    assert (
        f"| difference | {model['test_accuracy'] - test['accuracy']:+.4f} | {model['test_macro_f1'] - test['macro_f1']:+.4f} |"
        in card
    )
    # The report: its own section, with per-class recall of both
    report = (run / "report.html").read_text(encoding="utf-8")
    assert '<section id="baseline">' in report and f"{model['test_accuracy'] - test['accuracy']:+.4f}" in report
    assert report.count("<td>Scottish</td>") >= 2  # per class in the test metrics and in the recall comparison
    # `pipeline results`: the baseline columns with the difference
    table = invoke("results", "--artifacts-dir", str(artifacts), "--datasets", "names").stdout
    row = [line for line in table.splitlines() if line.startswith("| names |")][0]
    assert f"{test['accuracy']:.4f} / {test['macro_f1']:.4f}" in row
    assert f"{model['test_accuracy'] - test['accuracy']:+.4f} / {model['test_macro_f1'] - test['macro_f1']:+.4f}" in row
    # the paired comparison on the same test texts, from both stages' recorded predictions, in all three
    paired = manifest["baseline"]["paired"]
    lo, hi = paired["accuracy_difference_ci95"]
    assert paired["texts"] == test["n"] and lo <= model["test_accuracy"] - test["accuracy"] <= hi
    assert paired["model_only_right"] - paired["baseline_only_right"] == round(
        (model["test_accuracy"] - test["accuracy"]) * test["n"]
    )
    assert f"Paired on the same {test['n']} test texts" in card and f"Paired on the same {test['n']} test" in report
    assert f"95% CI [{lo:+.3f}, {hi:+.3f}]" in row and "McNemar p" in row
    # `run baseline` again: unchanged inputs, so the stage is reused, not refitted (it reads text as the
    # run's model does, char n-grams, without being told); another feature choice refits it
    again = invoke("run", "baseline", "--artifacts-dir", str(artifacts), "--run-name", "names", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["stages"][0]["skipped"] is True
    word = invoke(
        "run", "baseline", "--artifacts-dir", str(artifacts), "--run-name", "names", "--tokenizer", "word", "--json"
    )
    assert word.exit_code == 0 and json.loads(word.stdout)["baseline"]["features"].startswith("TF-IDF word 1-2-grams")


@pytest.mark.slow
def test_without_scikit_learn_run_all_still_ships_and_run_baseline_says_how_to_install_it(tiny_run, data_dir, tmp_path):
    import shutil

    artifacts, _ = tiny_run  # made with --no-baseline: its card says so
    shutil.copytree(artifacts / "tiny", tmp_path / "tiny", symlinks=True)
    blocker = (
        "import sys, importlib.util\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'sklearn':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "_find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] == 'sklearn' else _find(n, *a)\n"
        "from seqship.pipeline.cli import main\n"
        "sys.argv[0] = 'pipeline'\n"
        "main()\n"
    )
    common = ["--artifacts-dir", str(tmp_path), "--run-name", "tiny"]
    p = subprocess.run(
        [sys.executable, "-c", blocker, "run", "all", "--data-dir", str(data_dir), *common, *TINY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr  # every other stage runs (here: is reused) as before
    assert "`baseline` extra" in p.stderr and "pip install -e '.[baseline]'" in p.stderr
    assert (tmp_path / "tiny" / "bundle" / "manifest.json").is_file() and not (tmp_path / "tiny" / "baseline").exists()
    card = (tmp_path / "tiny" / "bundle" / "README.md").read_text(encoding="utf-8")
    assert "Not compared with a linear baseline" in card and "`baseline` extra" in card
    report = (tmp_path / "tiny" / "report.html").read_text(encoding="utf-8")
    assert '<section id="baseline">' not in report and "not run (needs the `baseline` extra)" in report
    p = subprocess.run(
        [sys.executable, "-c", blocker, "run", "baseline", *common],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "`baseline` extra" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_class_weighting_learns_the_small_classes_and_stays_exportable(run_with_baseline, subset_dir, tmp_path):
    artifacts, _ = run_with_baseline
    weighted = json.loads((artifacts / "names" / "train" / "metrics.json").read_text(encoding="utf-8"))
    for stage in ("data", "train"):  # the same split, the same config but for the weighting
        args = ["--dataset", "names", "--data-dir", str(subset_dir)] if stage == "data" else [*TINY]
        result = invoke("run", stage, "--artifacts-dir", str(tmp_path), "--run-name", "names", *args)
        assert result.exit_code == 0, result.output
    plain = json.loads((tmp_path / "names" / "train" / "metrics.json").read_text(encoding="utf-8"))
    assert plain["class_weights"] is None
    w = weighted["class_weights"]
    # balanced: n / (k * n_c), so every class weighs the same in total and the mean weight per text is 1
    data = json.loads((artifacts / "names" / "data" / "summary.json").read_text(encoding="utf-8"))
    counts = data["per_label"]["train"]
    n = sum(counts.values())
    for lab, c in counts.items():
        assert w[lab] == pytest.approx(n / (len(counts) * c), rel=1e-5)
    small = ("Scottish", "Portuguese", "Irish", "Dutch")
    recall = {
        name: sum(m["test"]["per_class"][lab]["recall"] for lab in small)
        for name, m in (("plain", plain), ("weighted", weighted))
    }
    assert recall["weighted"] > recall["plain"], recall
    assert weighted["test"]["macro_f1"] > plain["test"]["macro_f1"]
    # the weighted model went through the same gate: verified and packaged
    parity = json.loads((artifacts / "names" / "verify" / "parity.json").read_text(encoding="utf-8"))
    assert parity["passed"] is True
    history = json.loads((artifacts / "names" / "train" / "history.json").read_text(encoding="utf-8"))
    assert history["config"]["class_weight"] == "balanced"
    bad = invoke("run", "train", "--artifacts-dir", str(tmp_path), "--run-name", "names", "--class-weight", "inverse")
    assert bad.exit_code == 2 and "--class-weight" in bad.output


def test_cosine_schedule_warms_up_over_the_first_epoch_and_decays_to_zero_at_the_epoch_bound(subset_dir, tmp_path):
    args = ("--artifacts-dir", str(tmp_path), "--run-name", "names")
    assert invoke("run", "data", *args, "--dataset", "names", "--data-dir", str(subset_dir)).exit_code == 0
    result = invoke(
        "run", "train", *args, *TINY, "--epochs", "4", "--patience", "4", "--lr", "0.004", "--lr-schedule", "cosine"
    )
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "names" / "train" / "history.json").read_text(encoding="utf-8"))
    assert history["config"]["lr_schedule"] == "cosine"
    # the rate after each epoch: warm-up ends with epoch 1 at the full rate, then half a cosine to 0 at epoch 4
    lrs = [e["lr"] for e in history["epochs"]]
    assert lrs == pytest.approx([0.004, 0.004 * 0.75, 0.004 * 0.25, 0.0], abs=1e-9)
    # one epoch: a tenth of it warms up, the rest decays, so the schedule still ends at 0
    one = invoke("run", "train", *args, *TINY, "--epochs", "1", "--lr", "0.004", "--lr-schedule", "cosine")
    assert one.exit_code == 0, one.output
    history = json.loads((tmp_path / "names" / "train" / "history.json").read_text(encoding="utf-8"))
    assert [e["lr"] for e in history["epochs"]] == pytest.approx([0.0], abs=1e-9)
    bad = invoke("run", "train", *args, "--lr-schedule", "linear")
    assert bad.exit_code == 2 and "--lr-schedule" in bad.output


@pytest.mark.slow
def test_a_baseline_that_cannot_be_fitted_warns_in_run_all_and_is_a_clear_error_alone(tmp_path):
    # One distinct CJK character per text: word features exist, but no character n-gram is in two texts.
    rows = [f"{chr(0x4E00 + i)},{'ab'[i % 2]}" for i in range(40)]
    (tmp_path / "cjk.csv").write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    common = ["--artifacts-dir", str(tmp_path / "art"), "--run-name", "cjk"]
    # First the same run on data it can be fitted on (two-character texts from a small alphabet) ...
    rows = [f"{chr(0x4E00 + i % 7)}{chr(0x4E00 + i % 5)} {chr(0x4E00 + i % 3)},{'ab'[i % 2]}" for i in range(60)]
    (tmp_path / "fits.csv").write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    fits = invoke("run", "all", "--data", str(tmp_path / "fits.csv"), *common, *TINY, "--tokenizer", "word", "--json")
    assert fits.exit_code == 0 and "baseline" in json.loads(fits.stdout), fits.output
    # ... then on data it cannot: the earlier baseline is not offered as merely stale (re-running cannot help)
    result = invoke("run", "all", "--data", str(tmp_path / "cjk.csv"), *common, *TINY, "--tokenizer", "word", "--json")
    assert result.exit_code == 0, result.output  # a comparison that cannot be made does not stop the model shipping
    assert "cannot be fitted on this data" in result.stderr and "not compared with a baseline" in result.stderr, (
        result.stderr
    )
    summary = json.loads(result.stdout)
    assert summary["parity"]["passed"] and "baseline" not in summary
    card = (tmp_path / "art" / "cjk" / "bundle" / "README.md").read_text(encoding="utf-8")
    assert "Not compared with a linear baseline" in card
    page = (tmp_path / "art" / "cjk" / "report.html").read_text(encoding="utf-8")
    assert "Left out as stale" not in page and "`pipeline run baseline` fits it or says why it cannot" in page
    alone = invoke("run", "baseline", *common)
    assert alone.exit_code == 1 and "Error:" in alone.output and "n-grams that recur" in alone.output, alone.output
    assert "a bug in seqship" not in alone.output
    # A split too small to hold validation and test texts: the same kind of error, naming the split.
    (tmp_path / "four.csv").write_text("text,label\nab,x\ncd,y\nef,x\ngh,y\n", encoding="utf-8")
    four = ["--artifacts-dir", str(tmp_path / "art"), "--run-name", "four"]
    assert invoke("run", "data", "--data", str(tmp_path / "four.csv"), *four).exit_code == 0
    small = invoke("run", "baseline", *four)
    assert small.exit_code == 1 and "split is empty" in small.output and "a bug in seqship" not in small.output, (
        small.output
    )


@pytest.mark.slow
def test_run_baseline_follows_the_run_and_a_refitted_baseline_makes_the_bundle_stale(data_dir, tmp_path):
    two_label_csv(data_dir, tmp_path / "two.csv")
    common = ["--artifacts-dir", str(tmp_path), "--run-name", "two"]
    first = invoke("run", "all", "--data", str(tmp_path / "two.csv"), *common, *TINY, "--seed", "2", "--json")
    assert first.exit_code == 0, first.output
    metrics = json.loads((tmp_path / "two" / "baseline" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["config"]["seed"] == 2
    # Alone, the stage reads the run's seed, tokenizer and case from its training: the same fit, reused.
    again = invoke("run", "baseline", *common, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["stages"][0]["skipped"] is True, again.output
    assert invoke("run", "baseline", *common, "--epochs", "3").exit_code == 2  # a training option: refused
    # Fitted again from the same inputs, it is the same baseline: the bundle stays current.
    forced = invoke("run", "baseline", *common, "--force")
    assert forced.exit_code == 0 and "another baseline" not in forced.stderr, forced.output
    assert invoke("run", "report", *common).exit_code == 0
    assert "Left out as stale" not in (tmp_path / "two" / "report.html").read_text(encoding="utf-8")
    # Refitted with other features, the baseline no longer matches the card: the bundle is stale, not wrong.
    word = invoke("run", "baseline", *common, "--tokenizer", "word", "--json")
    assert word.exit_code == 0 and json.loads(word.stdout)["stages"][0]["skipped"] is False
    assert "run `pipeline run package`" in word.stderr, word.stderr
    report = invoke("run", "report", *common)
    assert report.exit_code == 0, report.output
    page = (tmp_path / "two" / "report.html").read_text(encoding="utf-8")
    assert "stale" in page and "package" in page.split("Left out as stale", 1)[1].split("</p>", 1)[0]
    # `run all` puts the run back together: the baseline as the model reads text again, which is the one the
    # bundle's card was made with, so the bundle is current again as it stands
    last = invoke("run", "all", "--data", str(tmp_path / "two.csv"), *common, *TINY, "--seed", "2", "--json")
    assert last.exit_code == 0, last.output
    done = {s["stage"]: s["skipped"] for s in json.loads(last.stdout)["stages"]}
    assert done["train"] is True and done["baseline"] is False and done["package"] is True
    assert "Left out as stale" not in (tmp_path / "two" / "report.html").read_text(encoding="utf-8")
    # without the stage this time, the summary still shows the baseline the card compares with
    kept = invoke(
        "run", "all", "--data", str(tmp_path / "two.csv"), *common, *TINY, "--seed", "2", "--json", "--no-baseline"
    )
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["baseline"]["test_accuracy"] == metrics["test"]["accuracy"]
    manifest = json.loads((tmp_path / "two" / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["baseline"]["features"].startswith("TF-IDF char")


def baseline_progress(stderr: str) -> list[str]:
    """The baseline's line per candidate fit, as `pipeline run` logs them."""
    return re.findall(
        r"^baseline \d/8: C=[\d.]+, class weight \w+: validation macro-F1 [\d.]+, accuracy [\d.]+ \([\d.]+ s\)$",
        stderr,
        re.M,
    )


def test_run_baseline_fits_on_the_threads_it_is_given_and_says_how_each_candidate_did(subset_dir, tmp_path):
    """--threads reaches the fit as it reaches training: BLAS and OpenMP (liblinear's vector operations) get
    that many threads (default 1, as training: a BLAS thread per core, on a busy machine, made one fit 15x
    slower), recorded in baseline/metrics.json; each of the 8 candidate fits logs its C, class weight,
    validation score and seconds, so a long fit is never silent."""
    common = ["--artifacts-dir", str(tmp_path), "--run-name", "n"]
    assert invoke("run", "data", "--dataset", "names", "--data-dir", str(subset_dir), *common).exit_code == 0
    path = tmp_path / "n" / "baseline" / "metrics.json"
    for given, expected in ((None, 1), ("1", 1), ("2", 2)):
        result = invoke("run", "baseline", *common, "--force", *(["--threads", given] if given else []))
        assert result.exit_code == 0, result.output
        metrics = json.loads(path.read_text(encoding="utf-8"))
        assert metrics["threads"] == expected
        # what each thread pool (numpy's and scipy's OpenBLAS, sklearn's OpenMP) really had during the fit
        assert metrics["thread_pools"] and set(metrics["thread_pools"]) <= {"blas", "openmp"}
        assert all(1 <= n <= expected for n in metrics["thread_pools"].values()), metrics["thread_pools"]
        if expected == 1:
            assert set(metrics["thread_pools"].values()) == {1}
        lines = baseline_progress(result.stderr)
        assert len(lines) == 8 and len({line.split(":")[1] for line in lines}) == 8, result.stderr
        assert "picking C and class weight from 8 fits" in result.stderr
        for line, fit in zip(lines, metrics["grid"]):  # the lines say what the grid in metrics.json holds
            assert f"C={fit['C']:g}, class weight {fit['class_weight']}:" in line
            assert line.endswith(
                f"macro-F1 {fit['val_macro_f1']:.4f}, accuracy {fit['val_accuracy']:.4f} ({fit['seconds']:.1f} s)"
            )
    for bad in ("0", "-1", "two"):
        assert invoke("run", "baseline", *common, "--threads", bad).exit_code == 2  # usage error, before any work


@pytest.mark.slow
def test_run_all_gives_its_threads_to_the_baseline_as_to_training(subset_dir, tmp_path):
    args = ["--dataset", "names", "--data-dir", str(subset_dir), "--artifacts-dir", str(tmp_path), "--run-name", "n"]
    result = invoke("run", "all", *args, *TINY, "--epochs", "1", "--threads", "2")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "n" / "baseline" / "metrics.json").read_text(encoding="utf-8"))["threads"] == 2
    assert json.loads((tmp_path / "n" / "train" / "metrics.json").read_text(encoding="utf-8"))["threads"] == 2
    assert len(baseline_progress(result.stderr)) == 8, result.stderr


def test_sweep_with_seeds_trains_each_variant_per_seed_and_reports_mean_and_spread(subset_dir, tmp_path, capsys):
    """The sweep behind the defaults: --seeds N trains every variant with seeds 0..N-1 (cached per seed) and the
    table gives mean ± sd, so a difference smaller than the seeds' spread reads as noise."""
    from seqship.pipeline.experiments import sweep

    tiny = "epochs=1 embed_dim=8 hidden_dim=16 batch_size=128"
    argv = [
        "--dataset",
        "names",
        "--data-dir",
        str(subset_dir),
        "--artifacts-dir",
        str(tmp_path),
        "--seeds",
        "2",
        "--variant",
        tiny,
        "--variant",
        f"{tiny} class_weight=balanced",
    ]
    assert sweep.main(argv) == 0
    table = capsys.readouterr().out
    assert "Mean ± sample standard deviation over seeds 0-1" in table
    header = next(line for line in table.splitlines() if line.startswith("| names: variant"))
    assert header.endswith("| seconds |")  # as many cells as the delimiter row, so it renders as a table
    rows = json.loads((tmp_path / "sweep-names" / "sweep.json").read_text(encoding="utf-8"))
    assert [r["variant"] for r in rows[1:]] == [tiny, f"{tiny} class_weight=balanced"]
    for r in rows[1:]:
        assert r["seeds"] == [0, 1] and len(r["test_accuracy"]) == 2 and len(r["recall"]) == 2
        assert f"| {r['variant']} | {sweep.spread(r['test_accuracy'])} |" in table
    assert rows[1]["test_macro_f1"][0] != rows[1]["test_macro_f1"][1]  # two seeds, two models
    # a second sweep reads every seed's run back instead of training it again
    assert sweep.main(argv) == 0
    assert "(seed" not in capsys.readouterr().err
    # a variant that sets the seed itself is refused with --seeds, before anything is trained
    with pytest.raises(SystemExit, match="sets seed"):
        sweep.main(
            ["--dataset", "names", "--artifacts-dir", str(tmp_path / "other"), "--seeds", "2", "--variant", "seed=3"]
        )
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_pair_buckets_train_a_token_pair_embedding_that_every_engine_and_the_predictor_reproduce(subset_dir, tmp_path):
    """--pair-buckets N: char-bigram features hashed inside the graph (two per-token int64 tables), so the bundle's
    tokenizer is unchanged; the exports must still pass parity in every engine, and a text scores the same
    alone and in a batch of longer texts."""
    import numpy as np
    import onnx

    from seqship.runtime import Predictor

    result = invoke(
        "run",
        "all",
        "--dataset",
        "names",
        "--data-dir",
        str(subset_dir),
        "--artifacts-dir",
        str(tmp_path),
        "--run-name",
        "pairs",
        "--json",
        "--no-baseline",
        "--pair-buckets",
        "101",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["parity"]["passed"]
    bundle = Path(out["bundle"])
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["model"]["pair_buckets"] == 101
    graph = onnx.load(str(bundle / "model.onnx")).graph
    assert any(list(i.dims) == [101, 16] for i in graph.initializer)  # the pair table, one row per bucket
    vocab = manifest["model"]["vocab_size"]  # and the two per-token hash tables, as int64 constants
    assert sum(list(i.dims) == [vocab] and i.data_type == onnx.TensorProto.INT64 for i in graph.initializer) == 2
    parity = json.loads((tmp_path / "pairs" / "verify" / "parity.json").read_text(encoding="utf-8"))
    assert parity["engines"]["passed"] and not parity["engines"]["skipped"]
    assert "token-pair embedding from 101 hashed buckets" in (bundle / "README.md").read_text(encoding="utf-8")
    p = Predictor.load(bundle, providers="cpu")
    names = ["Ng", "MacDonald", "Schwarzenegger", "O'Brien"]
    together = p.predict(names)
    for name, row in zip(names, together):
        alone = p.predict([name])[0]
        assert alone.label == row.label and np.isclose(alone.score, row.score, atol=1e-6)
    # Recorded in the train stage's inputs only when on: runs recorded before the option existed stay current.
    from seqship.pipeline.runs import Run

    assert Run(tmp_path, "pairs").record("train")["inputs"]["config"]["pair_buckets"] == 101
    again = invoke(
        "run", "train", "--artifacts-dir", str(tmp_path), "--run-name", "pairs", "--json", "--pair-buckets", "0", *TINY
    )
    assert again.exit_code == 0, again.output
    assert "pair_buckets" not in Run(tmp_path, "pairs").record("train")["inputs"]["config"]
    bad = invoke(
        "run",
        "all",
        "--dataset",
        "names",
        "--data-dir",
        str(subset_dir),
        "--artifacts-dir",
        str(tmp_path / "bad"),
        "--pair-buckets",
        "-1",
    )
    assert bad.exit_code == 2 and "--pair-buckets" in bad.output

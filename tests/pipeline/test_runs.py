"""Run folders as library calls: the layout users see, finding a bundle's run, the baseline a bundle's
card compares with, and torchrun's rank dispatch outside torchrun."""

from __future__ import annotations

import json

import pytest

from seqship.pipeline import distributed
from seqship.pipeline.bench import bench_texts, stage_seconds
from seqship.pipeline.config import data_config, train_config
from seqship.pipeline.runs import PARITY, REPORT_FILE, Run, StageError, require_bundle, run_of_bundle
from seqship.pipeline.stages import (
    VerifyConfig,
    baseline_options,
    card_baseline,
    card_baseline_outdated,
    run_all,
    stage_baseline,
)
from seqship.runtime.errors import SeqshipError
from tests.conftest import TINY, two_label_csv


def test_the_layout_is_the_folders_and_files_users_see(tiny_run):
    artifacts, summary = tiny_run
    run = Run(artifacts, "tiny")
    root = artifacts.resolve() / "tiny"
    assert run.bundle_dir == root / "bundle" == run_of_bundle(summary["bundle"]).bundle_dir
    assert run.file("verify", PARITY) == root / "verify" / "parity.json" and run.file("verify", PARITY).is_file()
    assert run.split_path("test") == root / "data" / "test.jsonl" and run.split_path("test").is_file()
    assert run.record_path("train") == root / "stages" / "train.json" and run.record_path("train").is_file()
    assert run.report_path == root / REPORT_FILE == root / "report.html"
    assert run.failed_dir("package") == root / "failed" / "bundle"


def test_a_bundle_leads_back_to_its_run(tiny_run, tmp_path):
    artifacts, summary = tiny_run
    run = run_of_bundle(summary["bundle"])
    assert run.root == (artifacts / "tiny").resolve() and run.name == "tiny"
    assert run.current("package") is not None  # the very run: its records describe this bundle
    seconds = stage_seconds(summary["bundle"])
    assert set(seconds) == {"data", "train", "export", "verify", "package"}
    assert seconds["train"] == json.loads((artifacts / "tiny" / "stages" / "train.json").read_text())["seconds"]
    test_texts = [json.loads(line)["text"] for line in (artifacts / "tiny" / "data" / "test.jsonl").open()]
    assert bench_texts(summary["bundle"]) == test_texts
    # a bundle outside any run: no stage times, and the texts must be given
    import shutil

    alone = tmp_path / "shipped"
    shutil.copytree(summary["bundle"], alone)
    assert stage_seconds(alone) is None
    with pytest.raises(SeqshipError, match="pass --texts FILE"):
        bench_texts(alone)
    (tmp_path / "t.txt").write_text("Nguyen\n", encoding="utf-8")
    assert bench_texts(alone, tmp_path / "t.txt") == ["Nguyen"]


def test_a_run_or_artifacts_folder_given_as_the_bundle_names_the_bundle(tiny_run):
    artifacts, summary = tiny_run
    bundle = (artifacts / "tiny" / "bundle").resolve()
    assert require_bundle(bundle) == bundle
    for given in (artifacts / "tiny", artifacts):
        with pytest.raises(SeqshipError, match=f"did you mean --bundle {artifacts}.*bundle"):
            require_bundle(given)
    with pytest.raises(SeqshipError, match="did you mean pipeline inspect "):
        require_bundle(artifacts / "tiny", "pipeline inspect ")
    assert require_bundle(artifacts / "nothing") == artifacts / "nothing"  # Predictor.load says what is missing


@pytest.mark.slow
def test_the_card_baseline_is_current_until_another_baseline_is_fitted(data_dir, tmp_path):
    two_label_csv(data_dir, tmp_path / "two.csv")
    run = Run(tmp_path / "art", "two")
    opts = dict(zip(TINY[::2], map(int, TINY[1::2])))
    cfg = train_config({k.lstrip("-").replace("-", "_"): v for k, v in opts.items()} | {"seed": 2})
    assert card_baseline(run) is None and not card_baseline_outdated(run)  # no bundle yet
    results = run_all(run, data_config(None, tmp_path / "two.csv", seed=2), cfg, VerifyConfig())
    fitted = next(r for r in results if r.stage == "baseline")
    assert card_baseline(run) == fitted.summary and not card_baseline_outdated(run)
    # the baseline's options follow the run's model unless given
    assert baseline_options(run, {"tokenizer": None, "lowercase": None, "seed": None}) == {
        "tokenizer": "char",
        "lowercase": False,
        "seed": 2,
    }
    assert baseline_options(run, {"tokenizer": "word", "seed": None})["tokenizer"] == "word"
    assert baseline_options(Run(tmp_path / "art", "none"), {"seed": None}) == {"seed": 0}
    # refitted with other features: the card no longer compares with the run's baseline
    stage_baseline(run, train_config({"tokenizer": "word", "seed": 2}, run=run))
    assert card_baseline(run) is None and card_baseline_outdated(run)


def test_outside_torchrun_no_rank_is_dispatched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.dispatch_rank("cpu", 1) is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.dispatch_rank("cpu", 1) is False
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(distributed.DistributedError, match="WORLD_SIZE='two' is not a number"):
        distributed.dispatch_rank("cpu", 1)


def test_a_run_name_that_is_a_path_is_refused(tmp_path):
    with pytest.raises(StageError, match="must be a plain folder name"):
        Run(tmp_path, "../x")
    assert Run.at(tmp_path / ".odd").name == ".odd"  # found from a bundle in it: taken as it is

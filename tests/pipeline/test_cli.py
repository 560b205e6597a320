"""The `pipeline` command as users and CI drive it: exit codes, JSON output, reuse of finished stages."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, invoke


def every_command() -> list[list[str]]:
    """Every command and subcommand of `pipeline`, found by walking the click group (none can be forgotten)."""
    from seqship.pipeline.cli import cli

    found = []

    def walk(path, cmd):
        found.append(path)
        for name in sorted(getattr(cmd, "commands", {})):
            walk([*path, name], cmd.commands[name])

    walk([], cli)
    return found


COMMANDS = every_command()


def test_the_command_walk_finds_every_command_users_run():
    names = {" ".join(c) for c in COMMANDS}
    expected = {"run all", "run data", "run train", "run baseline", "run export", "run verify", "run package"}
    expected |= {
        "run cv",
        "run report",
        "predict",
        "verify",
        "bench",
        "serve",
        "demo",
        "inspect",
        "datasets",
        "results",
    }
    assert expected <= names, expected - names


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "pipeline")
def test_every_command_has_help(cmd):
    for flag in ("--help", "-h"):
        result = invoke(*cmd, flag)
        assert result.exit_code == 0 and "Usage:" in result.output
    assert len(result.output.split("Usage:")[1].strip()) > 40  # a real description, not just a usage line


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.startswith("seqship, version ")


def test_run_all_json_summary_has_bundle_metrics_and_parity(tiny_run):
    artifacts, summary = tiny_run
    assert summary["ok"] and summary["run"] == "tiny"
    assert summary["bundle"] == str(artifacts.resolve() / "tiny" / "bundle")
    assert [s["stage"] for s in summary["stages"]] == ["data", "train", "export", "verify", "package"]
    assert 0 < summary["metrics"]["test_accuracy"] <= 1 and "test_macro_f1" in summary["metrics"]
    assert summary["parity"]["passed"] and summary["parity"]["test_set_label_agreement"] == 1.0


@pytest.mark.slow
def test_a_second_run_all_reuses_every_stage_and_force_redoes_them(tiny_run, data_dir, tmp_path):
    shutil.copytree(tiny_run[0] / "tiny", tmp_path / "tiny")  # a copy: other tests read the shared run
    artifacts = tmp_path
    args = [
        "run",
        "all",
        "--data-dir",
        str(data_dir),
        "--artifacts-dir",
        str(artifacts),
        "--run-name",
        "tiny",
        "--json",
        "--no-baseline",
        *TINY,
    ]
    again = json.loads(invoke(*args).stdout)
    assert [s["skipped"] for s in again["stages"]] == [True] * 5
    # A changed tolerance re-runs verify and package only; everything upstream is reused.
    changed = json.loads(invoke(*args, "--atol", "2e-5").stdout)
    assert [s["skipped"] for s in changed["stages"]] == [True, True, True, False, False]
    forced = json.loads(
        invoke(
            "run",
            "data",
            "--data-dir",
            str(data_dir),
            "--artifacts-dir",
            str(artifacts),
            "--run-name",
            "tiny",
            "--json",
            "--force",
        ).stdout
    )
    assert forced["stages"][0]["skipped"] is False


def test_stage_before_its_input_exists_says_which_command_to_run(tmp_path):
    result = invoke("run", "export", "--artifacts-dir", str(tmp_path), "--run-name", "fresh")
    assert result.exit_code == 1 and "run `pipeline run train` first" in result.output


def test_usage_errors_exit_2_and_domain_errors_exit_1(tmp_path, data_dir):
    assert invoke("run", "all", "--epochs", "zero").exit_code == 2
    assert invoke("predict").exit_code == 2  # --bundle is required
    bad = invoke("run", "data", "--dataset", "nope", "--data-dir", str(data_dir), "--artifacts-dir", str(tmp_path))
    assert bad.exit_code == 1 and "unknown dataset 'nope'" in bad.output
    missing = invoke("predict", "--bundle", str(tmp_path), "x")
    assert missing.exit_code == 1 and "manifest.json: missing" in missing.output


def test_predict_prints_json_lines_in_input_order_and_flags_bad_lines(tiny_run):
    bundle = tiny_run[1]["bundle"]
    result = invoke("predict", "--bundle", bundle, "--top-k", "3", "Nguyen", "  ", "Schmidt")
    assert result.exit_code == 1 and "1 of 3 texts could not be scored" in result.output
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2]
    assert "error" in lines[1] and len(lines[0]["top_k"]) == 3 and lines[2]["provider"] == "CPUExecutionProvider"


def test_predict_reads_stdin_and_runs_without_torch(tiny_run):
    # The console entry point in a fresh process, with torch made unimportable: the base install suffices.
    code = "import sys; sys.modules['torch'] = None; from seqship.pipeline.cli import main; sys.argv = ['pipeline'] + sys.argv[1:]; main()"
    out = subprocess.run(
        [sys.executable, "-c", code, "predict", "--bundle", tiny_run[1]["bundle"]],
        input="Nguyen\nKowalski\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(x)["text"] for x in out.stdout.splitlines()] == ["Nguyen", "Kowalski"]


def test_inspect_verifies_and_describes_a_bundle(tiny_run, bundle_copy):
    ok = invoke("inspect", tiny_run[1]["bundle"], "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["manifest"]["format"] == "seqship.bundle"
    (bundle_copy / "tokenizer.json").write_text("{}")
    bad = invoke("inspect", str(bundle_copy))
    assert bad.exit_code == 1 and "tokenizer.json" in bad.output


def test_dataset_defaults_apply_unless_an_option_overrides_them():
    from seqship.pipeline.cli import _train_cfg

    base = {"data_path": None, "dataset": "sst2", "seed": 0}
    cfg = _train_cfg(base)
    assert (cfg.tokenizer, cfg.lowercase, cfg.embed_dim, cfg.hidden_dim) == ("word", True, 128, 128)
    assert _train_cfg(base | {"tokenizer": "char", "lowercase": False}).tokenizer == "char"
    assert _train_cfg(base | {"lowercase": False}).lowercase is False
    assert _train_cfg({"data_path": None, "dataset": "names", "seed": 0}).tokenizer == "char"


# GRU (the default, with last pooling) is the session's tiny_run; test_export checks every cell x direction x
# layers x pooling in every engine. Here: the other two cells and the non-default options, through the CLI.
@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [
        ["--cell", "lstm", "--layers", "2", "--pooling", "last+max", "--embed-dropout", "0.2"],
        ["--cell", "rnn", "--unidirectional"],
    ],
)
def test_every_cell_variant_passes_the_parity_gate_end_to_end(data_dir, tmp_path, variant):
    result = invoke(
        "run",
        "all",
        "--data-dir",
        str(data_dir),
        "--artifacts-dir",
        str(tmp_path),
        "--run-name",
        "v",
        "--json",
        "--no-baseline",
        *TINY,
        "--epochs",
        "1",
        *variant,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["parity"]["passed"] and summary["parity"]["test_set_label_agreement"] == 1.0
    manifest = json.loads((tmp_path / "v" / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["cell"] == variant[1]
    if "--pooling" in variant:
        assert manifest["model"]["pooling"] == "last+max" and manifest["model"]["embed_dropout"] == 0.2


def test_a_stage_made_from_an_older_upstream_is_not_used(tiny_run, data_dir, tmp_path):
    # Redo the data stage with another seed: the trained model no longer matches the data, so
    # packaging (or anything downstream) must refuse until train and the rest are redone.
    shutil.copytree(tiny_run[0] / "tiny", tmp_path / "tiny")
    common = ["--artifacts-dir", str(tmp_path), "--run-name", "tiny"]
    assert invoke("run", "data", "--data-dir", str(data_dir), "--seed", "7", *common).exit_code == 0
    result = invoke("run", "package", "--force", *common)
    assert result.exit_code == 1 and "made from an earlier data stage" in result.output


def reused(stage: str, *args) -> bool:
    """Whether `pipeline run <stage> ARGS --json` reused the stage (its inputs unchanged) rather than ran it."""
    result = invoke("run", stage, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["stages"][0]["skipped"]


def test_a_run_exported_by_an_earlier_graph_is_exported_again(tiny_run, tmp_path, monkeypatch):
    # The export stage's inputs name the graph's version: after an upgrade that changes the graph (a fix for
    # an engine), `run all` re-exports and re-verifies instead of reusing a model.onnx of the old graph.
    from seqship.exporters import recurrent

    shutil.copytree(tiny_run[0] / "tiny", tmp_path / "tiny")
    common = ["--artifacts-dir", str(tmp_path), "--run-name", "tiny"]
    assert reused("export", *common)  # same graph: reused
    monkeypatch.setattr(recurrent, "GRAPH_VERSION", recurrent.GRAPH_VERSION + 1)
    assert not reused("export", *common)  # another graph: exported again
    assert reused("export", *common)


@pytest.mark.slow
def test_a_run_trained_by_earlier_training_code_is_trained_again(tiny_run, tmp_path, monkeypatch):
    # The train stage's inputs name the training code's version: after an upgrade that changes what
    # training computes (pipeline.train.TRAIN_VERSION bumped), the model is trained again, not reused.
    from seqship.pipeline import train

    shutil.copytree(tiny_run[0] / "tiny", tmp_path / "tiny")
    common = ["--artifacts-dir", str(tmp_path), "--run-name", "tiny", *TINY]
    assert reused("train", *common)  # same code: reused
    monkeypatch.setattr(train, "TRAIN_VERSION", train.TRAIN_VERSION + 1)
    assert not reused("train", *common)  # another version of training: trained again
    assert reused("train", *common)
    record = json.loads((tmp_path / "tiny" / "stages" / "train.json").read_text())
    assert record["inputs"]["code"] == train.TRAIN_VERSION


def test_a_run_read_by_earlier_reader_rules_is_read_again(tiny_run, data_dir, tmp_path, monkeypatch):
    # A file the current readers refuse (or read otherwise) is never trained on from a data stage kept from
    # an earlier seqship: the readers' version is one of the data stage's inputs.
    from seqship.pipeline.data import readers

    shutil.copytree(tiny_run[0] / "tiny", tmp_path / "tiny")
    common = ["--artifacts-dir", str(tmp_path), "--run-name", "tiny"]
    assert reused("data", "--data-dir", str(data_dir), *common)
    monkeypatch.setattr(readers, "READER_VERSION", readers.READER_VERSION + 1)
    assert not reused("data", "--data-dir", str(data_dir), *common)
    assert reused("data", "--data-dir", str(data_dir), *common)
    # the same rows, so the trained model is still current: nothing downstream is redone
    assert reused("train", *common, *TINY)


def test_results_table_reads_each_runs_records(tiny_run, tmp_path):
    artifacts, summary = tiny_run
    (tmp_path / "names").symlink_to(artifacts / "tiny", target_is_directory=True)  # as if `results --run` had made it
    out = invoke("results", "--artifacts-dir", str(tmp_path), "--datasets", "names,sst2", "--json")
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got["missing"] == ["sst2"] and [r["dataset"] for r in got["rows"]] == ["names"]
    row = got["rows"][0]
    assert row["accuracy"] == summary["metrics"]["test_accuracy"] and row["target_accuracy"] == 0.84
    assert row["parity_max_abs"] == max(summary["parity"]["max_abs_by_backend"].values())
    bundle = Path(summary["bundle"])
    assert row["bundle_bytes"] == sum(p.stat().st_size for p in bundle.iterdir() if p.name != "manifest.json")
    table = invoke("results", "--artifacts-dir", str(tmp_path), "--datasets", "names").stdout.splitlines()
    from seqship.pipeline.results import COLUMNS

    assert len(table) == 3 and all(
        line.count("|") == len(COLUMNS) + 1 for line in table
    )  # a well-formed markdown table
    assert table[2].startswith(f"| names | **{row['accuracy']:.4f}** | ≥ 0.84 ")
    assert "| not run |" in table[2] and "baseline" not in row  # this run has no baseline stage (--no-baseline)
    assert invoke("results", "--datasets", "nope").exit_code == 2

"""Issue #25, data loss: seqship never deletes or replaces a file or folder it did not create. A run folder
that is, holds or lies inside the data it reads is refused, however either path is spelled; so is a
non-empty folder that is not a seqship run (pipeline.runs: the `.seqship-run` marker), for every command
that writes a run folder (the stages, the report, `results --run`, the sweep)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from seqship.pipeline.runs import RUN_MARKER
from tests.conftest import TINY, invoke, two_label_csv


def snapshot(root: Path) -> dict:
    """Every path under `root` and what it holds (bytes of files, the target of links)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = ("link", os.readlink(p)) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
    return out


def corpus(data_dir: Path, folder: Path) -> Path:
    """A user's data folder of <label>.txt files (real surnames), with a notes folder of their own."""
    folder.mkdir()
    for lang in ("Greek", "Polish"):
        lines = (data_dir / "names" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:150]
        (folder / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "data").mkdir()
    (folder / "data" / "notes.txt").write_text("my own notes\n", encoding="utf-8")
    return folder


def refused(result, *needles) -> str:
    """Exit 1 with one `Error:` line naming each needle and saying how to choose another folder."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error: ")]
    for needle in ("--artifacts-dir", "--run-name", *needles):
        assert needle in line, line
    return line


@pytest.mark.parametrize(
    "data, artifacts, name",
    [
        ("./corpus", ".", None),  # the case: the run is named after the data folder, in its parent
        ("corpus", ".", None),
        ("corpus/", ".", None),
        ("corpus/../corpus", ".", None),
        ("corpus", "./sub/..", None),
        ("link", ".", "corpus"),  # a link to the data folder given as --data
        ("corpus", ".", "link"),  # the run folder a link to the data folder
        ("corpus", "corpus/out", None),  # the run folder inside the data folder: read as data next time
        ("corpus", "corpus", "runs"),
        ("corpus/Greek.txt", ".", "corpus"),  # the data a file inside the run folder
        ("corpus/Greek.txt", "corpus/..", "corpus"),
    ],
)
@pytest.mark.parametrize("command", [["run", "data"], ["run", "all", *TINY]])
def test_a_run_folder_that_is_holds_or_lies_in_the_data_is_refused_and_nothing_is_touched(
    data_dir, tmp_path, monkeypatch, data, artifacts, name, command
):
    corpus(data_dir, tmp_path / "corpus")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to("corpus")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    result = invoke(*command, "--data", data, "--artifacts-dir", artifacts, *(["--run-name", name] if name else []))
    refused(result, "input data", "corpus" if name != "link" else "link")
    assert snapshot(tmp_path) == before  # notes.txt kept; no lock, marker or folder left in the data


def test_a_csv_inside_the_run_folder_is_refused_as_data(data_dir, tmp_path):
    # a seqship run folder that the user's table was put in: the data stage would mix the two
    made = invoke("run", "data", "--data", str(two_label_csv(data_dir, tmp_path / "people.csv")), "--artifacts-dir",
                  str(tmp_path / "art"), "--run-name", "people")  # fmt: skip
    assert made.exit_code == 0, made.output
    table = shutil.copy(tmp_path / "people.csv", tmp_path / "art" / "people" / "data" / "people.csv")
    before = snapshot(tmp_path)
    for args in (["--run-name", "people"], []):  # by name, and named after the file's stem
        result = invoke("run", "data", "--data", table, "--artifacts-dir", str(tmp_path / "art"), *args)
        refused(result, "holds the input data")
    split = str(tmp_path / "art" / "people" / "data" / "train.jsonl")  # the run's own split, read back as data
    refused(invoke("run", "data", "--data", split, "--artifacts-dir", str(tmp_path / "art"), "--run-name", "people"))
    assert snapshot(tmp_path) == before


def test_a_registry_dataset_inside_the_run_folder_is_refused(tmp_path):
    # --data-dir (SEQSHIP_DATA_DIR) is the data too: a run folder holding <data-dir>/names/ is refused
    (tmp_path / "shared" / "names").mkdir(parents=True)
    (tmp_path / "shared" / "names" / "Greek.txt").write_text("Pappas\n", encoding="utf-8")
    before = snapshot(tmp_path)
    for args in (["--artifacts-dir", str(tmp_path), "--run-name", "shared"], ["--artifacts-dir", str(tmp_path / "shared" / "names")]):  # fmt: skip
        refused(invoke("run", "data", "--data-dir", str(tmp_path / "shared"), *args), "input data", "names")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "command",
    [
        ["run", "data", "--data", "{csv}"],
        ["run", "all", "--data", "{csv}", "--no-baseline", *TINY],
        ["run", "data", "--data-dir", "{data_dir}"],
        ["run", "baseline"],
        ["run", "train", *TINY],
        ["run", "export"],
        ["run", "verify"],
        ["run", "package"],
        ["run", "cv", "--folds", "2"],
    ],
)
@pytest.mark.parametrize("spelling", ["mine", "mine/", "./mine", "sub/../mine", "alias"])
def test_a_folder_that_is_not_a_seqship_run_is_never_written_into(data_dir, tmp_path, monkeypatch, command, spelling):
    # `--run-name mine` in a folder that holds a user's own `mine/`: refused before anything is written in it
    mine = tmp_path / "art" / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "notes.txt").write_text("mine\n", encoding="utf-8")
    (mine / "train").mkdir()
    (tmp_path / "art" / "sub").mkdir()
    (tmp_path / "art" / "alias").symlink_to("mine")
    csv = two_label_csv(data_dir, tmp_path / "people.csv")
    monkeypatch.chdir(tmp_path / "art")
    before = snapshot(tmp_path)
    # the run folder spelled as --artifacts-dir + a plain --run-name
    artifacts, name = (str(Path(spelling).parent), Path(spelling).name) if spelling != "mine/" else (".", "mine")
    args = [a.format(csv=csv, data_dir=data_dir) for a in command]
    result = invoke(*args, "--artifacts-dir", artifacts, "--run-name", name)
    line = refused(result, RUN_MARKER, "not a seqship run folder")
    assert name in line
    assert snapshot(tmp_path) == before


def test_a_file_where_the_run_folder_would_be_is_refused(data_dir, tmp_path):
    (tmp_path / "people").write_text("not a folder\n", encoding="utf-8")
    csv = two_label_csv(data_dir, tmp_path / "people.csv")
    result = invoke("run", "data", "--data", str(csv), "--artifacts-dir", str(tmp_path))
    refused(result, str(tmp_path / "people"), "not a folder")
    assert (tmp_path / "people").read_text() == "not a folder\n"


def test_an_empty_folder_becomes_a_run_and_a_command_that_writes_nothing_leaves_nothing(data_dir, tmp_path):
    csv = two_label_csv(data_dir, tmp_path / "people.csv")
    (tmp_path / "art" / "people").mkdir(parents=True)  # made by the user for the run: empty, so it is taken
    common = ["--artifacts-dir", str(tmp_path / "art"), "--json"]
    result = invoke("run", "data", "--data", str(csv), *common)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "art" / "people" / RUN_MARKER).is_file()
    again = invoke("run", "data", "--data", str(csv), *common)
    assert again.exit_code == 0 and json.loads(again.stdout)["stages"][0]["skipped"], again.output
    # a command refused before it writes leaves no trace of a run folder it created
    result = invoke("run", "train", "--artifacts-dir", str(tmp_path / "art"), "--run-name", "nothing-yet")
    assert result.exit_code == 1 and not (tmp_path / "art" / "nothing-yet").exists()


def test_a_run_made_before_the_marker_is_still_a_run(tiny_run, tmp_path):
    # run folders written by an earlier seqship have stage records but no marker: they are kept working
    shutil.copytree(tiny_run[0] / "tiny", tmp_path / "tiny", ignore=shutil.ignore_patterns(RUN_MARKER, ".lock"))
    result = invoke("run", "export", "--artifacts-dir", str(tmp_path), "--run-name", "tiny", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["stages"][0]["skipped"], result.output
    assert (tmp_path / "tiny" / RUN_MARKER).is_file()


def test_results_and_the_sweep_refuse_a_folder_that_is_not_a_run(data_dir, tmp_path, capsys):
    from seqship.pipeline.experiments import sweep

    for name in ("names", "sweep-names"):
        (tmp_path / name / "data").mkdir(parents=True)
        (tmp_path / name / "data" / "notes.txt").write_text("mine\n", encoding="utf-8")
    before = snapshot(tmp_path)
    result = invoke("results", "--run", "--datasets", "names", "--data-dir", str(data_dir), "--artifacts-dir", str(tmp_path))  # fmt: skip
    refused(result, str(tmp_path / "names"), RUN_MARKER)
    code = sweep.main(["--dataset", "names", "--data-dir", str(data_dir), "--artifacts-dir", str(tmp_path), "--variant", "epochs=1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and str(tmp_path / "sweep-names") in err and RUN_MARKER in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("link", ["report.html", "stages/export.json"])
def test_a_link_where_the_run_writes_a_file_is_refused_and_its_target_kept(tiny_run, tmp_path, link):
    # an atomic write follows a link and replaces its target: a file elsewhere, which seqship did not create
    shutil.copytree(tiny_run[0] / "tiny", tmp_path / "art" / "tiny", ignore=shutil.ignore_patterns(".lock"))
    mine = tmp_path / "mine.txt"
    mine.write_text("my own file\n", encoding="utf-8")
    (tmp_path / "art" / "tiny" / link).unlink()
    (tmp_path / "art" / "tiny" / link).symlink_to(mine)
    common = ["--artifacts-dir", str(tmp_path / "art"), "--run-name", "tiny"]
    result = invoke("run", "report" if link == "report.html" else "export", *common)
    assert result.exit_code == 1 and "is a link" in result.output and link in result.output, result.output
    assert mine.read_text() == "my own file\n"

"""Issue #11: nothing lost, no traceback, no surprise -- file safety, bounded memory, clean errors,
the predictor-only install and a busy machine, tried with more cases than the issue lists."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from seqship.runtime import fsio
from tests.conftest import REPO, TINY, invoke
from tests.faults import held_at

PIPELINE = [sys.executable, "-m", "seqship.pipeline.cli"]


def cli(*args, env=None, stdin=None, preexec=None, timeout=300):
    """The real command in a fresh process (what a user runs): (exit code, stdout, stderr)."""
    p = subprocess.run(
        [*PIPELINE, *map(str, args)],
        capture_output=True,
        text=True,
        input=stdin,
        env=dict(os.environ, **(env or {})),
        preexec_fn=preexec,
        timeout=timeout,
        cwd=REPO,
    )
    return p.returncode, p.stdout, p.stderr


def cli_inproc(*args):
    """The same command in this process (click's runner): (exit code, stdout, stderr), faster where a
    fresh process adds nothing to what is tested."""
    r = invoke(*map(str, [a for a in args if a != ""]))
    return r.exit_code, r.stdout, r.stderr


def assert_one_error_line(code, out, err, *needles, exit_code=1):
    """Exit 1, no traceback, and an `Error: ...` line that says each needle."""
    assert code == exit_code, (code, out, err)
    assert "Traceback" not in out + err, err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], errors[0]


# --- file safety ----------------------------------------------------------------------------------------


@pytest.fixture
def names_txt(tmp_path) -> Path:
    p = tmp_path / "names.txt"
    p.write_text("Nguyen\nSchmidt\nRossi\n", encoding="utf-8")
    return p


def test_output_keeps_the_old_files_mode_and_new_files_follow_the_umask(tiny_run, names_txt, tmp_path):
    bundle = tiny_run[1]["bundle"]
    old = tmp_path / "secret.jsonl"
    old.write_text("old\n")
    os.chmod(old, 0o600)
    assert cli("predict", "--bundle", bundle, "--input", names_txt, "--output", old)[0] == 0
    assert stat.S_IMODE(old.stat().st_mode) == 0o600 and len(old.read_text().splitlines()) == 3
    new = tmp_path / "new.jsonl"
    code, _, err = cli(
        "predict", "--bundle", bundle, "--input", names_txt, "--output", new, preexec=lambda: os.umask(0o077)
    )
    assert code == 0, err
    assert stat.S_IMODE(new.stat().st_mode) == 0o600  # 0666 & ~077, not a fixed 0644


def test_output_through_a_symlink_replaces_the_target_and_keeps_the_link(tiny_run, names_txt, tmp_path):
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", names_txt, "--output", link)[0] == 0
    assert link.is_symlink() and len(target.read_text().splitlines()) == 3


def test_output_to_a_device_or_fifo_is_written_into_never_replaced(tiny_run, names_txt, tmp_path):
    before = os.stat("/dev/null")
    assert cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", names_txt, "--output", "/dev/null")[0] == 0
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    code, _, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", names_txt, "--output", fifo)
    assert code == 0, err
    assert len(reader.communicate(timeout=60)[0].splitlines()) == 3
    assert stat.S_ISFIFO(fifo.lstat().st_mode)  # still the FIFO


def test_a_full_disk_and_an_unwritable_folder_are_one_clear_error_each(tiny_run, names_txt):
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", names_txt, "--output", "/dev/full")
    assert_one_error_line(code, out, err, "/dev/full", "disk is full")
    code, out, err = cli(
        "predict", "--bundle", tiny_run[1]["bundle"], "--input", names_txt, "--output", "/sys/seqship.jsonl"
    )
    assert_one_error_line(code, out, err, "/sys/seqship.jsonl")
    assert not Path("/sys/seqship.jsonl").exists()


def test_atomic_write_refuses_folders_and_sockets_and_leaves_nothing_on_failure(tmp_path):
    import socket

    with pytest.raises(fsio.FileSafetyError, match="is a folder"):
        fsio.write_text_atomic(tmp_path, "x")
    sock_path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    try:
        with pytest.raises(fsio.FileSafetyError, match="is a socket"):
            fsio.write_text_atomic(sock_path, "x")
    finally:
        s.close()
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with fsio.atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("killed half-way")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_stale_temporaries_of_dead_writers_are_swept_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = fsio._host()
    stale = tmp_path / f".out.jsonl.{host}-{dead.pid}.0123abcd.partial"
    stale.write_text("half")
    stale_dir = tmp_path / f".train.{host}-{dead.pid}.0123abcd.partial"
    stale_dir.mkdir()
    live = tmp_path / f".out.jsonl.{host}-{os.getpid()}.0123abcd.partial"
    live.write_text("mine")
    other_host = tmp_path / f".out.jsonl.elsewhere-{dead.pid}.0123abcd.partial"
    other_host.write_text("theirs")
    assert set(fsio.sweep_partials(tmp_path)) == {stale, stale_dir}
    assert live.exists() and other_host.exists()


def test_a_failed_stage_leaves_the_run_exactly_as_it_was(tiny_run, tmp_path, data_dir):
    import shutil

    shutil.copytree(tiny_run[0] / "tiny", tmp_path / "tiny")
    run = tmp_path / "tiny"
    snapshot = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}

    # Training that cannot write (a file-size limit: the disk is "full" after 4 KB) fails cleanly...
    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    code, out, err = cli(
        "run",
        "train",
        "--artifacts-dir",
        tmp_path,
        "--run-name",
        "tiny",
        *TINY,
        "--epochs",
        "1",
        "--force",
        preexec=small_disk,
    )
    assert_one_error_line(code, out, err)
    # ...and so does training with options that are refused after the data is read.
    assert (
        invoke("run", "train", "--artifacts-dir", str(tmp_path), "--run-name", "tiny", "--lr", "1e400").exit_code != 0
    )
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == snapshot  # every record and output as before: the next stage still runs
    result = invoke("run", "export", "--artifacts-dir", str(tmp_path), "--run-name", "tiny", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["stages"][0]["skipped"] is True


def test_two_commands_on_one_run_cannot_interleave(tiny_run, tmp_path, data_dir):
    args = [
        "run",
        "all",
        "--data-dir",
        data_dir,
        "--artifacts-dir",
        tmp_path,
        "--run-name",
        "r",
        "--no-baseline",
        *TINY,
        "--epochs",
        "1",
    ]
    first = subprocess.Popen(
        [*held_at("train"), *map(str, args), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.time() + 180
        while not list((tmp_path / "r").glob(".train.*.partial/weights.pt")):
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        # The first holds the run (paused inside train): a second is refused, whichever stage it would run.
        for second in (args, ["run", "data", "--data-dir", data_dir, "--artifacts-dir", tmp_path, "--run-name", "r"]):
            code, out, err = cli(*second)
            assert_one_error_line(code, out, err, "another pipeline process is working on run 'r'")
    finally:
        first.kill()
        first.wait()


# --- bounded memory -------------------------------------------------------------------------------------


def _peak_rss_mb(args, stdin=None) -> tuple[int, str]:
    """Run the command in a child and return (the child's peak RSS in MB, stderr)."""
    code = textwrap.dedent(f"""
        import resource, subprocess, sys
        p = subprocess.run({[*PIPELINE, *map(str, args)]!r}, capture_output=True, text=True)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, p.returncode)
        sys.stderr.write(p.stderr)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    rss, rc = p.stdout.split()
    assert rc in ("0", "1"), p.stderr
    return int(rss), p.stderr


def test_a_line_of_hundreds_of_megabytes_costs_bounded_memory(tiny_run, tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "w") as f:
        f.write("Nguyen\n")
        for _ in range(30):  # 300 MB on one line: over the 64 MiB row limit -> an error row, read in blocks
            f.write("ab" * 5_000_000)
        f.write("\nSchmidt\n")
    out = tmp_path / "out.jsonl"
    rss, err = _peak_rss_mb(["predict", "--bundle", tiny_run[1]["bundle"], "--input", big, "--output", out])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and "label" in rows[0] and "label" in rows[2]
    assert "longer than" in rows[1]["error"]
    assert rss < 400, f"peak RSS {rss} MB for a 300 MB line"  # the whole line in memory: > 600 MB

    long = tmp_path / "long.txt"
    with open(long, "w") as f:
        f.write("Nguyen" * 8_000_000 + "\n")  # 48 MB: under the row limit, scored (truncated to max_length)
    rss, err = _peak_rss_mb(["predict", "--bundle", tiny_run[1]["bundle"], "--input", long, "--output", out])
    assert "label" in json.loads(out.read_text())
    assert rss < 400, f"peak RSS {rss} MB for a 48 MB line"  # its tokens all at once: several GB


# --- clean errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needles",
    [
        (["predict", "--bundle", "{bundle}", "--top-k", "99", "Nguyen"], ["--top-k 99", "18 labels"]),
        (["predict", "--bundle", "{run}", "Nguyen"], ["did you mean --bundle", "/bundle"]),
        (["predict", "--bundle", "{artifacts}", "Nguyen"], ["did you mean --bundle"]),
        (["inspect", "{run}"], ["did you mean pipeline inspect ", "/bundle?"]),
        (["bench", "--bundle", "{bundle}", "--texts", "/nonexistent.txt"], ["/nonexistent.txt"]),
        (["verify", "--bundle", "{bundle}", "--texts", "{binary}"], ["bin.txt: UTF-16 or UTF-32 text", "UTF-8"]),
        (["run", "train", "--artifacts-dir", "{tmp}", "--run-name", "none"], ["run `pipeline run data` first"]),
        (["run", "all", "--data", "{csv_no_label}", "--artifacts-dir", "{tmp}"], ["label"]),
        (["run", "all", "--data-dir", "/nonexistent", "--artifacts-dir", "{tmp}"], ["/nonexistent"]),
        (["run", "all", "--data", "{jsonl_deep}", "--artifacts-dir", "{tmp}"], ["line 2", "cannot be read"]),
        (["run", "all", "--data", "{jsonl_big_int}", "--artifacts-dir", "{tmp}"], ["line 1", "cannot be read"]),
        (
            ["run", "all", "--artifacts-dir", "/sys/seqship-artifacts", "--data-dir", "{data}"],
            ["/sys/seqship-artifacts"],
        ),
    ],
)
def test_domain_errors_are_one_line_exit_1_and_a_json_error_object(tiny_run, tmp_path, data_dir, args, needles):
    run = tiny_run[0] / "tiny"
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    csv_no_label = tmp_path / "d.csv"
    csv_no_label.write_text("text,other\nhello,x\n")
    jsonl_deep = tmp_path / "deep.jsonl"
    jsonl_deep.write_text('{"text": "a", "label": "x"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    jsonl_big_int = tmp_path / "big.jsonl"
    jsonl_big_int.write_text('{"text": "a", "label": ' + "7" * 20_000 + "}\n")
    fill = {
        "bundle": tiny_run[1]["bundle"],
        "run": run,
        "artifacts": tiny_run[0],
        "binary": binary,
        "tmp": tmp_path,
        "csv_no_label": csv_no_label,
        "data": data_dir,
        "jsonl_deep": jsonl_deep,
        "jsonl_big_int": jsonl_big_int,
    }
    argv = [a.format(**{k: str(v) for k, v in fill.items()}) for a in args]
    with_json = argv[0] in ("run", "bench", "verify", "inspect")  # commands with --json: the error as an object too
    code, out, err = cli_inproc(*argv, *(["--json"] if with_json else []))
    assert_one_error_line(code, out, err, *needles)
    if with_json:
        obj = json.loads(out.splitlines()[-1] if argv[0] != "inspect" else out)
        assert obj["ok"] is False and all(n in obj["error"] for n in needles)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "all", "--lr", "-1"],
        ["run", "all", "--lr", "0"],
        ["run", "all", "--epochs", "0"],
        ["run", "train", "--dropout", "1"],
        ["run", "all", "--batch-size", "0"],
        ["run", "all", "--cell", "transformer"],
        ["predict", "--bundle", "x", "--top-k", "0", "a"],
        ["predict", "--bundle", "x", "--output", "o.jsonl", "a"],
        ["predict", "--bundle", "x", "--input", "/nonexistent.txt"],
        ["train"],
        ["verify"],
        ["predict", "--bundle", "x", "--input", __file__, "--output", "/tmp/seqship-no-such-folder/"],
    ],
)
def test_usage_errors_exit_2_before_any_io(tmp_path, args):
    code, out, err = cli_inproc(
        *args, "--artifacts-dir" if args[0] == "run" else "", tmp_path if args[0] == "run" else ""
    )
    assert code == 2 and "Traceback" not in err and "Error" in err, (code, err)
    assert not list(tmp_path.iterdir())  # nothing was created


def test_train_config_validates_itself_naming_every_bad_option():
    from seqship.pipeline.train import TrainConfig, TrainError

    for kw, needle in [
        ({"lr": -1e-3}, "--lr"),
        ({"lr": float("nan")}, "--lr"),
        ({"epochs": 0}, "--epochs"),
        ({"weight_decay": -1}, "--weight-decay"),
        ({"max_vocab": 2}, "--max-vocab"),
        ({"tokenizer": "bpe"}, "--tokenizer"),
        ({"epochs": True}, "--epochs"),
        ({"max_length": 0}, "--max-length"),
        ({"pooling": "mean"}, "--pooling"),
    ]:
        with pytest.raises(TrainError, match=needle):
            TrainConfig(**kw)
    with pytest.raises(TrainError, match="--patience .*--lr"):
        TrainConfig(lr=0, patience=0)  # every problem at once


def test_an_empty_validation_split_is_a_clear_error(tmp_path):
    from seqship.pipeline.train import TrainConfig, TrainError, train

    rows = [("hello", "a"), ("world", "b")]
    with pytest.raises(TrainError, match="validation split has no texts"):
        train(rows, [], rows, ["a", "b"], TrainConfig(epochs=1), tmp_path)


def test_bulk_rows_with_pathological_json_get_error_rows_and_the_rest_is_scored(tiny_run, tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"text": "Nguyen", "id": "a"}),
        "[" * 100_000 + "]" * 100_000,  # nesting deeper than the parser's recursion limit
        '{"text": "Rossi", "n": ' + "9" * 10_000 + "}",  # an integer of more digits than Python converts
        '{"text": null, "id": 7}',
        '{"text": ["a"]}',
        "{not json",
        json.dumps("Schmidt"),
        '{"text": 1e999}',
    ]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", src, "--output", out)
    assert code == 1 and "Traceback" not in err and "6 of 8 texts could not be scored" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(8))
    assert rows[0]["id"] == "a" and "label" in rows[0] and "label" in rows[6]
    assert "nested too deeply" in rows[1]["error"] and "out of range" in rows[2]["error"]
    assert rows[3]["id"] == 7 and "null, not a string" in rows[3]["error"] and "not a string" in rows[4]["error"]
    assert "not JSON" in rows[5]["error"] and "not a string" in rows[7]["error"]


def test_predict_reads_a_csv_by_column_and_keeps_each_rows_id(tiny_run, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('name_id,label,name\nx1,Vietnamese,Nguyen\nx2,German,"Schmidt"\nx3,Italian,Rossi\n')
    code, out, err = cli(
        "predict", "--bundle", tiny_run[1]["bundle"], "--input", src, "--text-column", "name", "--id-column", "name_id"
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == ["x1", "x2", "x3"] and all("label" in r for r in rows)
    # The same texts as arguments give the same answers (the header and the label column were not scored).
    code, out2, _ = cli("predict", "--bundle", tiny_run[1]["bundle"], "Nguyen", "Schmidt", "Rossi")
    assert [json.loads(line)["label"] for line in out2.splitlines()] == [r["label"] for r in rows]
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", src)
    assert_one_error_line(code, out, err, "no column 'text'", "--text-column")
    blank = tmp_path / "blank.csv"
    blank.write_text("id,text\n1,Nguyen\n\n2,Rossi\n\n")  # blank lines are no rows, as in training
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", blank)
    assert code == 0 and [json.loads(line)["id"] for line in out.splitlines()] == ["1", "2"], err
    tsv = tmp_path / "in.tsv"
    tsv.write_text("text\nNguyen\n" + '"' + "x" * 2_000_000 + '"\n')  # a 2 MB field
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", tsv)
    assert code == 0 and len(out.splitlines()) == 2, err


@pytest.mark.parametrize("suffix, sep", [(".csv", b","), (".tsv", b"\t")])
def test_a_table_row_that_is_not_utf8_gets_an_error_line_and_the_rest_is_scored(tiny_run, tmp_path, suffix, sep):
    # It once stopped the whole file ("cannot be read as CSV ...; fix its quoting").
    src = tmp_path / f"in{suffix}"
    src.write_bytes(
        sep.join([b"text", b"id"]) + b"\nNguyen" + sep + b"1\nSchm\xffidt" + sep + b"2\nRossi" + sep + b"\xfe\n"
    )
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", src)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and "Traceback" not in err and len(rows) == 3, err
    assert rows[1] == {
        "index": 1,
        "id": "2",
        "error": "row 2 (line 3): the text is not UTF-8; re-encode the file as UTF-8",
    }
    assert rows[0]["id"] == "1" and "label" in rows[0]
    # an id that is not UTF-8 cannot join the result back to its row: an error row too
    assert rows[2] == {"index": 2, "error": "row 3 (line 4): the id is not UTF-8; re-encode the file as UTF-8"}
    src.write_bytes(
        sep.join([b"id", b"text"]) + b"\n1" + sep + b"Nguyen\n2" + sep + b"Rossi\xe2\x82"
    )  # cut short at the end
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", src)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and "label" in rows[0] and rows[1]["error"].startswith("row 2 (line 3): the text is not UTF-8"), (
        out
    )
    src.write_bytes(b"te\xffxt" + sep + b"id\nNguyen" + sep + b"1\n")
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", src)
    assert_one_error_line(code, out, err, "the header row is not UTF-8", "re-encode")


def test_a_blank_line_on_stdin_is_not_a_text(tiny_run):
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], stdin="Nguyen\nSchmidt\n\n\n")
    assert code == 0 and len(out.splitlines()) == 2, err
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], stdin="Nguyen\n\n \t\nSchmidt\n")
    # skipped and counted, as training skips it; each row's index is its line number - 1
    assert code == 0 and [json.loads(line)["index"] for line in out.splitlines()] == [0, 3], err
    assert "skipped 2 blank line(s)" in err


def test_predict_names_the_provider_that_really_runs(tiny_run):
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--providers", "CPUExecutionProvider", "Nguyen")
    assert code == 0 and "scoring with CPUExecutionProvider" in err
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--providers", "CUDAExecutionProvider", "Nguyen")
    assert_one_error_line(code, out, err, "CUDAExecutionProvider")  # never a silent fall-back to the CPU


def test_inspect_describes_any_manifest_predictor_load_accepts(bundle_copy):
    from seqship.runtime.bundle import file_entry  # noqa: F401  (the manifest is the digest's input: re-pinning is not needed)

    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    for odd in (
        {"metrics": "n/a"},
        {"metrics": {"test_accuracy": "high"}},
        {"parity": {"engines": ["x"]}},
        {"parity": {"engines": {"tract": None}}},
        {"format_version": manifest["format_version"], "extra": [[[]]]},
    ):
        (bundle_copy / "manifest.json").write_text(json.dumps(manifest | odd))
        code, out, err = cli_inproc("inspect", bundle_copy)
        assert code == 0 and "Traceback" not in err and "digest" in out, (odd, err)


# --- the predictor-only install -------------------------------------------------------------------------


NO_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnx", "onnxscript"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, NoTorch())
    from seqship.pipeline.cli import main
    sys.argv[0] = "pipeline"
    main()
""")


@pytest.mark.parametrize(
    "args",
    [
        ["run", "all"],
        ["run", "export", "--run-name", "tiny"],
        ["verify", "--bundle", "{bundle}"],
        ["bench", "--bundle", "{bundle}"],
    ],
)
def test_without_torch_torch_commands_say_which_extra_to_install(tiny_run, tmp_path, data_dir, args):
    argv = [a.format(bundle=tiny_run[1]["bundle"]) for a in args]
    if argv[0] == "run":
        argv += [
            "--artifacts-dir",
            str(tiny_run[0] if "tiny" in argv else tmp_path),
            "--data-dir" if argv[1] == "all" else "",
            str(data_dir) if argv[1] == "all" else "",
        ]
    p = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *[a for a in argv if a]], capture_output=True, text=True, cwd=tmp_path
    )
    assert_one_error_line(p.returncode, p.stdout, p.stderr, "`train` extra", "pip install")


def test_without_torch_scoring_still_works(tiny_run, tmp_path):
    p = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "predict", "--bundle", tiny_run[1]["bundle"], "Nguyen"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0 and json.loads(p.stdout)["label"], p.stderr


@pytest.mark.parametrize(
    "name, content",
    [
        ("model.onnx", b"\x08\x07garbage that is not a protobuf model"),
        ("manifest.json", b'{"files": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        ("manifest.json", b'{"format": "seqship.bundle", "files": {'),
        ("tokenizer.json", b"\xff\xfe not utf-8"),
        ("tokenizer.json", b'{"format": "seqship.tokenizer", "format_version": 2, "max_length": 1e999}'),
    ],
)
def test_a_bundle_corrupt_where_the_hash_cannot_see_is_one_error_in_every_command(bundle_copy, name, content):
    """The file is re-hashed into the manifest (a consistent rewrite), or the manifest itself is mangled:
    every command refuses it cleanly, naming the file."""
    from seqship.runtime.bundle import file_entry

    if name != "manifest.json":
        (bundle_copy / name).write_bytes(content)
        manifest = json.loads((bundle_copy / "manifest.json").read_text())
        manifest["files"][name] = file_entry(bundle_copy / name)
        content = json.dumps(manifest).encode()
    (bundle_copy / "manifest.json").write_bytes(content)
    for args in (
        ["inspect", bundle_copy],
        ["predict", "--bundle", bundle_copy, "Nguyen"],
        ["verify", "--bundle", bundle_copy],
    ):
        code, out, err = cli_inproc(*args)
        assert code == 1 and "Traceback" not in err, (args, err)
        assert name in out + err, (args, out, err)


# --- the house ------------------------------------------------------------------------------------------


def test_library_modules_never_import_the_cli_and_the_model_file_is_torch_only():
    """Config resolution is library code (scripts resolve runs as the CLI does), and the model file
    holds the nn.Module only: the export-time custom op lives in exporters/."""
    import ast

    for path in sorted((REPO / "pipeline").rglob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n == "seqship.pipeline.cli" for n in names), f"{path} imports pipeline.cli"
    model = ast.parse((REPO / "pipeline" / "model.py").read_text())
    imported = {n.module for n in ast.walk(model) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(model) if isinstance(n, ast.Import) for a in n.names
    }
    assert imported <= {"__future__", "json", "dataclasses", "pathlib", "typing", "torch"}, imported


# --- from an adversarial review -------------------------------------------------------------------------


def test_table_input_never_makes_phantom_or_lost_rows(tiny_run, tmp_path):
    from seqship.runtime import Predictor
    from seqship.runtime.bulk import score_file
    from seqship.runtime.errors import InputError

    bundle = tiny_run[1]["bundle"]
    q = tmp_path / "q.csv"
    q.write_text('id,text\n1,Nguyen\n2,"Smith\n3,Schmidt\n4,Tanaka\n')  # an unclosed quote would swallow rows
    code, out, err = cli("predict", "--bundle", bundle, "--input", q)
    assert_one_error_line(code, out, err, "q.csv", "quoting")
    p = Predictor.load(bundle, providers="cpu")
    t = tmp_path / "long.tsv"
    t.write_text("id\ttext\n1\t" + "x" * 5000 + "\n2\tSmith\n")  # a row over the limit cannot be skipped alone
    with pytest.raises(InputError, match="line 2 is longer than 4,096 bytes"):
        score_file(p, t, tmp_path / "o.jsonl", max_line_bytes=4096)
    assert not (tmp_path / "o.jsonl").exists()


def test_output_to_dev_stdout_appends_to_what_stdout_already_holds(tiny_run, names_txt, tmp_path):
    log = tmp_path / "log.txt"
    script = (
        f"echo header; {' '.join(PIPELINE)} predict --bundle {tiny_run[1]['bundle']} --input {names_txt} "
        f"--output /dev/stdout; echo footer"
    )
    subprocess.run(["bash", "-c", f"({script}) >> {log}"], check=True, cwd=REPO, capture_output=True)
    lines = log.read_text().splitlines()
    assert lines[0] == "header" and lines[-1] == "footer" and len(lines) == 5
    for spelling in (
        "/proc/thread-self/fd/1",
        "/dev/fd/1",
    ):  # other names of an open descriptor: appended to, never replaced
        log.write_text("KEEP\n")
        subprocess.run(
            [
                "bash",
                "-c",
                f"{' '.join(PIPELINE)} predict --bundle {tiny_run[1]['bundle']} --input {names_txt} "
                f"--output {spelling} >> {log}",
            ],
            check=True,
            cwd=REPO,
            capture_output=True,
        )
        assert log.read_text().splitlines()[0] == "KEEP" and len(log.read_text().splitlines()) == 4, spelling
    piped = subprocess.run(
        [
            "bash",
            "-c",
            f"cat {names_txt} | {' '.join(PIPELINE)} predict --bundle {tiny_run[1]['bundle']} "
            f"--input /dev/stdin --output /dev/stdout | wc -l",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert piped.stdout.strip() == "3", piped.stderr


def test_bulk_ids_must_be_json_scalars_and_output_stays_strict_json(tiny_run, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        "\n".join(
            [
                '{"text": "Nguyen", "id": 1e400}',
                '{"text": "Nguyen", "id": NaN}',
                '{"text": "Nguyen", "id": ' + "[" * 900 + "]" * 900 + "}",
                '{"text": "Nguyen", "id": "ok"}',
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    code, _, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", src, "--output", out)
    assert code == 1 and "Traceback" not in err
    rows = [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in the output"))
        for line in out.read_text().splitlines()
    ]
    assert ["error" in r for r in rows] == [True, True, True, False] and rows[3]["id"] == "ok"


@pytest.mark.slow
def test_undecodable_stdin_lines_get_error_rows_in_any_locale(tiny_run):
    for env in (
        {},
        {"PYTHONIOENCODING": "utf-8"},
        {"LC_ALL": "C"},
        {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
    ):
        p = subprocess.run(
            [*PIPELINE, "predict", "--bundle", tiny_run[1]["bundle"]],
            input=b"Nguyen\n\xff\xfe\nSchmidt\n",
            capture_output=True,
            env=dict(os.environ, **env),
            cwd=REPO,
        )
        rows = [json.loads(line) for line in p.stdout.decode().splitlines()]
        assert p.returncode == 1 and b"Traceback" not in p.stderr, (env, p.stderr)
        assert "not UTF-8" in rows[1]["error"] and "label" in rows[0] and "label" in rows[2]
        # the same bytes as an argument: Python hands them over as lone surrogates, never scored as text
        p = subprocess.run(
            [*PIPELINE, "predict", "--bundle", tiny_run[1]["bundle"], "Nguyen", b"\xff\xfe", "Schmidt"],
            capture_output=True,
            env=dict(os.environ, **env),
            cwd=REPO,
        )
        rows = [json.loads(line) for line in p.stdout.decode().splitlines()]
        assert p.returncode == 1 and b"Traceback" not in p.stderr, (env, p.stderr)
        assert rows[1]["error"].startswith("argument 2: not UTF-8") and "label" in rows[0] and "label" in rows[2]
        # UTF-8 text reads the same as an argument and on stdin, in an ASCII locale too (not as escaped bytes)
        arg, piped = (
            subprocess.run(
                [*PIPELINE, "predict", "--bundle", tiny_run[1]["bundle"], *args],
                input=stdin,
                capture_output=True,
                env=dict(os.environ, **env),
                cwd=REPO,
            ).stdout
            for args, stdin in ((["Müller"], None), ([], "Müller\n".encode()))
        )
        assert json.loads(arg) == json.loads(piped) and json.loads(arg)["text"] == "Müller", (env, arg, piped)


def test_a_failed_command_leaves_no_empty_run_folder_and_seeds_are_checked_as_usage(tmp_path):
    code, out, err = cli("run", "train", "--artifacts-dir", tmp_path, "--run-name", "typo")
    assert_one_error_line(code, out, err, "run `pipeline run data` first")
    assert list(tmp_path.iterdir()) == []
    for seed in ("-1", str(2**70)):
        code, _, err = cli("run", "all", "--artifacts-dir", tmp_path, "--seed", seed)
        assert code == 2 and "Traceback" not in err and "--seed" in err


def test_data_options_that_would_be_ignored_are_usage_errors(tmp_path, data_dir):
    # each was once silently ignored: the run trained on other data than the user named
    table = tmp_path / "d.csv"
    table.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(20)))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("x\ny\n")
    for args, words in (
        (["--data", table, "--dataset", "waimai"], "--data and --dataset both choose the data"),
        (["--data", folder, "--text-column", "review"], "--text-column names a column of a CSV/TSV/JSONL --data file"),
        (["--data-dir", data_dir, "--label-column", "y"], "not of a registry dataset"),
    ):
        for command in (["run", "data"], ["run", "all"]):
            code, _, err = cli_inproc(*command, "--artifacts-dir", tmp_path / "art", *args)
            assert code == 2 and words in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "art").exists()  # before any I/O
    code, _, err = cli_inproc(
        "run", "data", "--artifacts-dir", tmp_path / "art", "--data", table, "--text-column", "text"
    )
    assert code == 0, err


def test_data_paths_that_are_not_utf8_are_data_errors_from_the_cli(tmp_path):
    # Linux allows any bytes in a name; the stage's record holds names as UTF-8 text. Both were "a bug".
    folder = tmp_path / "lf"
    folder.mkdir()
    for name in ("pos.txt", "neg.txt", os.fsdecode(b"\xffbad.txt")):
        (folder / name).write_text("a\nb\n")
    table = tmp_path / os.fsdecode(b"\xff.csv")
    table.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(20)))
    (tmp_path / "t.csv").write_bytes(table.read_bytes())
    for data, needle in (
        (folder, "lf/\\xffbad.txt: the file name is not UTF-8"),
        (table, "\\xff.csv: the path is not UTF-8"),
    ):
        code, out, err = cli("run", "data", "--artifacts-dir", tmp_path / "art", "--run-name", "r", "--data", data)
        assert_one_error_line(code, out, err, needle)
    # a run folder that is not UTF-8 once trained, then failed in TorchScript's save: refused up front
    for args in (
        ["--run-name", os.fsdecode(b"r\xfe"), "--artifacts-dir", tmp_path / "art"],
        ["--artifacts-dir", tmp_path / os.fsdecode(b"a\xff")],
    ):
        code, out, err = cli("run", "data", "--data", tmp_path / "t.csv", *args)
        assert_one_error_line(code, out, err, "the run folder's path is not UTF-8")
    assert not (tmp_path / os.fsdecode(b"a\xff")).exists()


def test_data_dot_names_the_run_after_the_current_folder(tmp_path, monkeypatch):
    folder = tmp_path / "reviews"
    folder.mkdir()
    for label in ("pos", "neg"):
        (folder / f"{label}.txt").write_text("".join(f"{label} text {i}\n" for i in range(10)))
    monkeypatch.chdir(folder)  # it was "--run-name '' must be a plain folder name", with no --run-name given
    code, _, err = cli_inproc("run", "data", "--artifacts-dir", tmp_path / "art", "--data", ".")
    assert code == 0 and (tmp_path / "art" / "reviews" / "data" / "summary.json").is_file(), err


def test_an_id_column_named_but_absent_from_a_table_is_an_error_not_dropped_ids(tiny_run, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("text,row\nNguyen,1\n")
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", src, "--id-column", "nosuch")
    assert_one_error_line(code, out, err, "no column 'nosuch' in the header ['text', 'row']", "--id-column")
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", src)  # the default "id" is optional
    assert code == 0 and "id" not in json.loads(out), err
    src.write_text("text,id,text\nNguyen,1,Schmidt\n")  # which text? neither: an error
    code, out, err = cli("predict", "--bundle", tiny_run[1]["bundle"], "--input", src)
    assert_one_error_line(code, out, err, "2 columns are named 'text'", "rename all but one")


def test_labels_in_two_unicode_forms_are_one_class(tmp_path):
    rows = [{"text": f"text {i}", "label": "caf\u00e9" if i % 2 else "cafe\u0301"} for i in range(20)]
    rows += [{"text": f"other {i}", "label": "tea"} for i in range(20)]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = invoke("run", "data", "--data", str(data), "--artifacts-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "d" / "data" / "summary.json").read_text())
    assert sorted(summary["labels"]) == ["caf\u00e9", "tea"]

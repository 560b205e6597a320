"""The input boundary, through the real commands: what ends a line, blank lines, bytes that are not text,
table outputs, bounded reads, and an output that would destroy its input.

The line cases are tests/line_endings.py's, which the Node and C++ readers are tested on too.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from seqship.pipeline.cli import cli
from tests.line_endings import CASES, non_blank

REPO = Path(__file__).resolve().parents[2]
PIPELINE = [sys.executable, "-m", "seqship.pipeline.cli"]
SMALL = [c for c in CASES if len(c[1]) < 10_000]  # the straddling cases are long texts: the model refuses none,
# but scoring 64 KiB texts per case is slow; their line splitting is tested in test_textio and the Ray plan below


def run(*args, stdin: bytes | None = None):
    """The command in this process (CliRunner), stdin as bytes: (exit code, stdout, stderr)."""
    r = CliRunner().invoke(cli, [str(a) for a in args], input=stdin, catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def bundle(tiny_run) -> str:
    return tiny_run[1]["bundle"]


def rows_of(out: str) -> list[dict]:
    # split on "\n" only: str.splitlines() would also split a text's U+2028, which JSON writes as it is
    return [json.loads(line) for line in out.split("\n") if line]


# --- what ends a line, and blank lines -------------------------------------------------------------


@pytest.mark.parametrize("case", SMALL, ids=[c[0] for c in SMALL])
def test_predict_input_and_stdin_read_each_line_as_the_rule_says(bundle, tmp_path, case):
    name, raw, expected = case
    want = non_blank(expected)  # (line number, text): blank lines skipped, lines still counted
    src = tmp_path / "in.txt"
    src.write_bytes(raw)
    code, out, err = run("predict", "--bundle", bundle, "--input", src, "--output", tmp_path / "out.jsonl")
    assert code == 0, err
    rows = rows_of((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    assert [r["index"] + 1 for r in rows] == [n for n, _ in want], (name, rows)
    skipped = len(expected) - len(want)
    assert (f"skipped {skipped} blank line(s)" in err) == bool(skipped), err
    code, out, err = run("predict", "--bundle", bundle, stdin=raw)
    assert code == 0, err
    rows = rows_of(out)
    assert [(r["index"] + 1, r["text"]) for r in rows] == want, name


def test_a_lone_cr_file_is_four_texts_in_training_predict_and_stdin(bundle, tmp_path, data_dir):
    """The issue's example: `Nguyen\\rSchmidt\\r...` trained as 4 texts and was scored as ONE."""
    raw = b"Nguyen\rSchmidt\rRossi\rKowalski\r"
    src = tmp_path / "names.txt"
    src.write_bytes(raw)
    code, out, err = run("predict", "--bundle", bundle, "--input", src)
    assert code == 0 and len(rows_of(out)) == 4, (out, err)
    code, out, err = run("predict", "--bundle", bundle, stdin=raw)
    assert code == 0 and [r["text"] for r in rows_of(out)] == ["Nguyen", "Schmidt", "Rossi", "Kowalski"]
    # the data stage, on label files that end their lines with a lone CR, a CRLF and a LF
    data = tmp_path / "corpus"
    data.mkdir()
    english = (data_dir / "names" / "English.txt").read_text(encoding="utf-8").split("\n")[:60]
    greek = (data_dir / "names" / "Greek.txt").read_text(encoding="utf-8").split("\n")[:60]
    (data / "English.txt").write_bytes("\r".join(english).encode() + b"\r")
    (data / "Greek.txt").write_bytes("\r\n".join(greek).encode() + b"\r\n\r\n")
    code, out, err = run(
        "run", "data", "--data", data, "--artifacts-dir", tmp_path / "runs", "--run-name", "cr", "--json"
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "runs" / "cr" / "data" / "summary.json").read_text(encoding="utf-8"))
    assert summary["counts"]["rows_read"] == len(english) + len(greek) + 1  # + the one blank line
    assert summary["counts"]["empty_dropped"] == 1


def test_csv_and_jsonl_inputs_with_lone_cr_line_ends_and_blank_lines(bundle, tmp_path):
    src = tmp_path / "people.csv"
    src.write_bytes(b'id,text\rp1,Nguyen\r\rp2,"Schmidt"\r\np3,Rossi')
    code, out, err = run("predict", "--bundle", bundle, "--input", src)
    assert code == 0, err
    assert [(r["index"], r["id"]) for r in rows_of(out)] == [(0, "p1"), (1, "p2"), (2, "p3")]
    assert "skipped 1 blank line(s)" in err
    src = tmp_path / "people.jsonl"
    src.write_bytes(b'{"id": 1, "text": "Nguyen"}\r  \r{"id": 2, "text": "Schmidt"}\r')
    code, out, err = run("predict", "--bundle", bundle, "--input", src)
    assert code == 0, err
    assert [(r["index"], r["id"]) for r in rows_of(out)] == [(0, 1), (2, 2)]


def test_only_blank_lines_score_nothing_and_succeed(bundle, tmp_path):
    src = tmp_path / "blank.txt"
    src.write_bytes(b"\n \r\n\t\r")
    code, out, err = run("predict", "--bundle", bundle, "--input", src, "--output", tmp_path / "o.jsonl")
    assert code == 0 and (tmp_path / "o.jsonl").read_text() == "" and "skipped 3 blank line(s)" in err


# --- the Ray reader: range plans split lines exactly as the readers do --------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_ray_read_tasks_make_the_same_lines_whatever_the_ranges(tmp_path, case):
    pytest.importorskip("pyarrow")
    from seqship.runtime.ray import plan_file, read_task_rows

    name, raw, expected = case
    src = tmp_path / "in.txt"
    src.write_bytes(raw)
    for rows_per_task, bytes_per_task in ((1, 1), (2, 3), (10_000, 4095), (10_000, 8191), (10_000, 1 << 30)):
        plan = plan_file(src, "lines", rows_per_task, bytes_per_task)
        assert sum(t[3] for t in plan) == len(expected), (name, plan)
        got = []
        for start, end, first, rows in plan:
            for table in read_task_rows(0, os.fsencode(src), "lines", start, end, first, rows, "text", "id"):
                got += table.to_pylist()
        assert [r["row"] for r in got] == list(range(len(expected)))
        assert [r["blank"] for r in got] == [not line.strip() for line in expected]
        texts = [(r["row"] + 1, r["text"].decode()) for r in got if not r["blank"]]
        assert texts == non_blank(expected), name


@pytest.mark.slow
def test_predict_engine_ray_reads_lone_cr_files_and_skips_blank_lines(bundle, tmp_path):
    pytest.importorskip("ray")
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_bytes(b"Nguyen\rSchmidt\r\rRossi\r\n\r\nKowalski")
    (src / "b.jsonl").write_bytes(b'{"id": "x", "text": "Kim"}\r\r{"id": "y", "text": "Lee"}\r')
    out = tmp_path / "out"
    p = subprocess.run(  # a process of its own: Ray started here would stay up in the test process
        [
            *PIPELINE,
            "predict",
            "--bundle",
            bundle,
            "--input",
            src,
            "--output",
            out,
            "--engine",
            "ray",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for p in sorted(out.glob("part-*.jsonl")) for line in p.read_text().splitlines()]
    assert [(r["file"], r["index"]) for r in rows] == [("a.txt", 0), ("a.txt", 1), ("a.txt", 3), ("a.txt", 5)] + [
        ("b.jsonl", 0),
        ("b.jsonl", 2),
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_in"], summary["rows_out"], summary["skipped"]) == (9, 6, 3)
    local = rows_of(run("predict", "--bundle", bundle, "--input", src / "a.txt")[1])
    assert [(r["index"], r["label"]) for r in local] == [(r["index"], r["label"]) for r in rows[:4]]


# --- bytes that are not text ----------------------------------------------------------------------


def _parquet(path: Path) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["Nguyen", None, "Schmidt"]}), path)
    return path


def test_a_parquet_file_is_read_as_parquet_locally_or_refused_by_name_never_scored_as_bytes(bundle, tmp_path):
    src = _parquet(tmp_path / "people.parquet")
    code, out, err = run("predict", "--bundle", bundle, "--input", src)
    assert code == 1  # one null text: an error row, as the Ray engine writes it
    rows = rows_of(out)
    assert [(r["index"], r["id"]) for r in rows] == [(0, "a"), (1, "b"), (2, "c")]
    assert "label" in rows[0] and "is null" in rows[1]["error"] and "label" in rows[2]
    renamed = tmp_path / "people.txt"
    renamed.write_bytes(src.read_bytes())
    for args in (["--input", renamed], ["--input", src, "--format", "lines"], ["--input", src, "--format", "csv"]):
        code, out, err = run("predict", "--bundle", bundle, *args)
        assert code == 1 and out == "", err
        assert "a Parquet file, not" in err and "name it .parquet" in err and str(args[1]) in err, err


@pytest.mark.parametrize(
    "name, data, what",
    [
        ("texts.jsonl", gzip.compress(b'{"text": "Nguyen"}\n'), "gzip-compressed"),
        ("texts.txt", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\nNguyen\n", "a PDF document"),
        ("texts.csv", b"PK\x03\x04\x14\x00\x00\x00", "a zip archive"),
        ("texts.tsv", "text\nNguyen\n".encode("utf-16"), "UTF-16"),
        ("texts.txt", "Nguyen\nSchmidt\n".encode("utf-16-le"), "NUL bytes"),
    ],
)
def test_binary_inputs_are_refused_naming_the_file_and_format(bundle, tmp_path, name, data, what):
    src = tmp_path / name
    src.write_bytes(data)
    code, out, err = run("predict", "--bundle", bundle, "--input", src, "--output", tmp_path / "o.jsonl")
    assert code == 1 and what in err and str(src) in err and " text; " in err, err
    assert not (tmp_path / "o.jsonl").exists()
    code, out, err = run("predict", "--bundle", bundle, stdin=data)
    if name.endswith(".txt") or what == "UTF-16":  # stdin is read as lines
        assert code == 1 and "stdin:" in err, err


def test_the_ray_engine_refuses_a_binary_txt_or_jsonl_before_starting(bundle, tmp_path):
    pytest.importorskip("pyarrow")
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_bytes(b"Nguyen\n")
    (src / "b.jsonl").write_bytes(gzip.compress(b'{"text": "x"}\n'))
    code, out, err = run("predict", "--bundle", bundle, "--input", src, "--output", tmp_path / "o", "--engine", "ray")
    assert code == 1 and "b.jsonl: a gzip-compressed file, not JSON lines text" in err, err


def test_a_nul_byte_after_the_first_bytes_is_an_error_row_not_a_text(bundle, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"Nguyen\n" * 2000 + b"Sch\x00midt\nRossi\n")
    code, out, err = run("predict", "--bundle", bundle, "--input", src)
    rows = rows_of(out)
    assert code == 1 and "NUL byte" in rows[2000]["error"] and "label" in rows[2001]


def test_training_refuses_a_binary_data_file(tmp_path):
    data = tmp_path / "d.csv"
    data.write_bytes(gzip.compress(b"text,label\nhello,a\n"))
    code, out, err = run("run", "data", "--data", data, "--artifacts-dir", tmp_path / "runs", "--run-name", "b")
    assert code == 1 and "d.csv: a gzip-compressed file, not CSV text" in err, err


# --- table outputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, delimiter", [(".csv", ","), (".tsv", "\t"), (".CSV", ",")])
def test_a_csv_or_tsv_output_is_a_table_keeping_the_inputs_id_and_text(bundle, tmp_path, suffix, delimiter):
    src = tmp_path / "people.csv"
    src.write_text('person,name\np1,Nguyen\np2,"Schmidt, Jr."\np3,\n', encoding="utf-8")
    out = tmp_path / f"people.out{suffix}"
    code, _, err = run(
        "predict", "--bundle", bundle, "--input", src, "--output", out, "--id-column", "person",
        "--text-column", "name", "--top-k", "2",
    )  # fmt: skip
    assert code == 1, err  # p3 has no text: an error row
    with open(out, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f, delimiter=delimiter))
    assert list(table[0]) == ["index", "person", "name", "label", "score", "top_k", "truncated", "error"]
    assert [(r["index"], r["person"], r["name"]) for r in table] == [
        ("0", "p1", "Nguyen"),
        ("1", "p2", "Schmidt, Jr."),
        ("2", "p3", ""),
    ]
    assert table[0]["label"] and float(table[0]["score"]) > 0 and len(json.loads(table[0]["top_k"])) == 2
    assert table[2]["error"] and not table[2]["label"]
    jsonl = tmp_path / "people.out.jsonl"
    run("predict", "--bundle", bundle, "--input", src, "--output", jsonl, "--text-column", "name")
    assert [json.loads(line).get("label", "") for line in jsonl.read_text().splitlines()] == [r["label"] for r in table]


def test_a_table_output_of_a_lines_input_has_no_id_column(bundle, tmp_path):
    src = tmp_path / "names.txt"
    src.write_bytes(b"Nguyen\r\rSchmidt\r")
    out = tmp_path / "names.csv"
    code, _, err = run("predict", "--bundle", bundle, "--input", src, "--output", out)
    assert code == 0, err
    table = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert table[0] == ["index", "text", "label", "score", "truncated", "error"]
    assert [r[:2] for r in table[1:]] == [["0", "Nguyen"], ["2", "Schmidt"]]


# --- bounded reads --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "bench"])
def test_texts_from_a_device_are_read_no_further_than_the_cap(bundle, command):
    """/dev/zero says its size is 0: a cap on st_size let `verify --texts /dev/zero` read until memory ran out."""
    args = [command, "--bundle", bundle, "--texts", "/dev/zero"]
    if command == "bench":
        args += ["--json"]
    p = subprocess.run([*PIPELINE, *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 1 and "/dev/zero: more than 256 MiB" in p.stderr, p.stderr[-2000:]


def test_stdin_is_read_no_further_than_the_cap(bundle):
    # `pipeline predict` with texts on stdin read all of it into memory, however much came.
    with open("/dev/zero", "rb") as zero:
        p = subprocess.run([*PIPELINE, "predict", "--bundle", bundle], stdin=zero, capture_output=True, timeout=300)
    err = p.stderr.decode()
    assert p.returncode == 1 and "stdin: more than 256 MiB" in err and "--input /dev/stdin" in err, err[-2000:]


def test_a_fifo_of_texts_is_read_up_to_its_end(bundle, tmp_path):
    fifo = tmp_path / "texts"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"printf 'Nguyen\\rSchmidt\\r\\r' > {fifo}"])
    try:
        from seqship.pipeline.predict import read_texts

        assert read_texts(fifo) == ["Nguyen", "Schmidt"]
    finally:
        writer.wait(timeout=30)


def test_capped_reads_never_trust_the_size_a_file_reports():
    from seqship.runtime.fsio import FileTooLargeError, read_capped

    with pytest.raises(FileTooLargeError, match="/dev/zero: more than 1,000 bytes"):
        read_capped("/dev/zero", 1000)
    assert read_capped("/proc/self/status", 1 << 20).startswith(b"Name:")  # st_size 0, and read whole


# --- an output that would destroy its input -------------------------------------------------------


def test_the_output_is_never_the_input_by_any_name(bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "x.txt"
    src.write_bytes(b"Nguyen\nSchmidt\n")
    (tmp_path / "sub").mkdir()
    os.symlink(src, tmp_path / "link.txt")
    os.link(src, tmp_path / "hard.txt")
    for output in ["x.txt", "./x.txt", str(src), "sub/../x.txt", "link.txt", "hard.txt", "/dev/stdout"]:
        if output == "/dev/stdout":
            continue  # CliRunner's stdout is no file; the subprocess below tries it
        code, out, err = run("predict", "--bundle", bundle, "--input", "x.txt", "--output", output)
        assert code == 1 and "this is the input file" in err, (output, err)
        assert src.read_bytes() == b"Nguyen\nSchmidt\n"
    with open(src, "ab") as same:  # stdout appended to the input itself
        p = subprocess.run(
            [*PIPELINE, "predict", "--bundle", bundle, "--input", src, "--output", "/dev/stdout"],
            stdout=same,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            cwd=REPO,
        )
    assert p.returncode == 1 and "this is the input file" in p.stderr, p.stderr
    assert src.read_bytes() == b"Nguyen\nSchmidt\n"


def test_a_ray_output_folder_never_holds_replaces_or_sits_in_its_input(bundle, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"Nguyen\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    os.symlink(data, tmp_path / "data-link")
    cases = {
        "data": "must not be the input",
        "./data/": "must not be the input",
        "data/../data": "must not be the input",
        "data/out": "must not be the input",
        "data-link/out": "must not be the input",
        ".": "must not be the input",
        "mine": "holds other files",
        "data-link": "symlink",
    }
    for output, message in cases.items():
        code, out, err = run("predict", "--bundle", bundle, "--input", "data", "--output", output, "--engine", "ray")
        assert code == 1 and message in err, (output, err)
    code, out, err = run("predict", "--bundle", bundle, "--input", "data/a.txt", "--output", "data", "--engine", "ray")
    assert code == 1 and "must not be the input" in err, err
    assert (mine / "notes.txt").read_text() == "keep me" and (data / "a.txt").read_bytes() == b"Nguyen\n"
    assert sorted(p.name for p in data.iterdir()) == ["a.txt"]


# --- cases a red-team pass found after the first round ---------------------------------------------------


def test_a_line_of_only_byte_order_marks_is_blank_on_stdin_as_in_training(bundle):
    p = subprocess.run(
        [*PIPELINE, "predict", "--bundle", bundle],
        input="Nguyen\n\ufeff\n \ufeff \nRossi\n".encode(),
        capture_output=True,
    )
    assert p.returncode == 0, p.stderr.decode()
    assert [json.loads(line)["index"] for line in p.stdout.decode().splitlines()] == [0, 3]
    assert "skipped 2 blank line(s)" in p.stderr.decode()


def test_a_nul_byte_past_the_sniffed_start_of_stdin_is_an_error_row_not_a_text(bundle):
    data = b"Nguyen\n" * 2000 + b"Sch\x00midt\n"
    p = subprocess.run([*PIPELINE, "predict", "--bundle", bundle], input=data, capture_output=True)
    rows = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert p.returncode == 1 and len(rows) == 2001
    assert rows[-1]["index"] == 2000 and "NUL byte" in rows[-1]["error"] and "label" not in rows[-1]


@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_data_that_cannot_be_read_twice_is_refused_before_it_is_hashed(source, tmp_path):
    # The data stage hashed /dev/zero (or a FIFO fed by `yes`) for ever before reading it.
    if source == "fifo":
        source = tmp_path / "fifo"
        os.mkfifo(source)
    args = ["run", "data", "--data", str(source), "--artifacts-dir", str(tmp_path / "art"), "--run-name", "r"]
    p = subprocess.run([*PIPELINE, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "not a regular file" in p.stderr, p.stderr
    assert not (tmp_path / "art" / "r").exists()


def test_tsv_output_keeps_one_row_a_line_when_cells_hold_tabs_line_ends_or_backslashes(bundle, tmp_path):
    # Quoted cells (CSV's way) broke the rows of a .tsv for `cut` and for seqship's own TSV reader.
    src, out = tmp_path / "in.jsonl", tmp_path / "out.tsv"
    rows = [{"text": "Ngu\nyen", "id": "x\ty"}, {"text": "a\\b\r", "id": 1}, {"text": "Rossi", "id": "plain"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    p = subprocess.run([*PIPELINE, "predict", "--bundle", bundle, "--input", str(src), "--output", str(out)])
    assert p.returncode == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 1 + len(rows) + 1  # header, one line a row
    cells = [line.split("\t") for line in lines[:-1]]
    assert {len(c) for c in cells} == {len(cells[0])}
    assert [c[1:3] for c in cells[1:]] == [["x\\ty", "Ngu\\nyen"], ["1", "a\\\\b\\r"], ["plain", "Rossi"]]

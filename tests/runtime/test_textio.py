"""The line, UTF-8, table and JSON rules every reader shares (training data, `pipeline predict`, Ray).

A file must read the same wherever it is read: these rules live once, in runtime/textio.py and
runtime/jsonio.py, which import the standard library only, so reading training data needs no onnxruntime.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqship.runtime.jsonio import json_kind, json_text
from seqship.runtime.textio import (
    MAX_LINE_BYTES,
    decode_utf8,
    escaping_decoder,
    line_records,
    lone_surrogate,
    not_utf8,
    raw_lines,
    split_lines,
    table_reader,
    valid_id,
)
from tests.line_endings import CASES, non_blank

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def texts(raw: bytes, fmt: str = "lines", **kw) -> list:
    """What a bulk or Ray reader makes of a file's bytes: each line's text, or its error."""
    return [rec.get("text", rec.get("error")) for _, rec in line_records(io.BytesIO(raw), fmt, "text", "id", **kw)]


@pytest.fixture(scope="module")
def imdb(data_dir) -> bytes:
    # one sentence<TAB>label a line; holds a U+0085 and stray double quotes
    return (data_dir / "english" / "sentiment_labelled_sentences" / "imdb_labelled.txt").read_bytes()


# --- import isolation ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["textio.py", "jsonio.py"])
def test_the_shared_rules_import_only_the_standard_library(name):
    tree = ast.parse((RUNTIME / name).read_text())
    found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    outside = {m for m in found if m.split(".")[0] not in sys.stdlib_module_names and m != "__future__"}
    assert outside <= {"seqship.runtime.jsonio"}, outside


READ_WITHOUT_ONNXRUNTIME = """
import json, sys
from pathlib import Path
for name in ("onnxruntime", "seqship.runtime.predictor", "seqship.runtime.bulk"):
    sys.modules[name] = None  # any import of them now raises ImportError
from seqship.pipeline.data import DataConfig, load_rows, locate
cfg = DataConfig()
source = locate(cfg, sys.argv[1])
rows, test, files, junk = load_rows(cfg, source)
tsv = DataConfig(data=sys.argv[1] + "/english/SST-2/dev.tsv", text_column="sentence")
sst = load_rows(tsv, locate(tsv))[0]
print(json.dumps({"rows": len(rows), "labels": sorted({label for _, label in rows}), "files": len(files),
                  "sst": len(sst),
                  "loaded": sorted(m for m in sys.modules if sys.modules[m] is not None
                                   and m.split(".")[0] in ("onnxruntime", "torch"))}))
"""


def test_training_data_is_read_with_onnxruntime_and_the_predictor_unimportable(data_dir):
    out = subprocess.run(
        [sys.executable, "-c", READ_WITHOUT_ONNXRUNTIME, str(data_dir)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    names = sorted(p.stem for p in (data_dir / "names").glob("*.txt"))
    assert res["labels"] == names and res["files"] == len(names)
    assert res["rows"] >= 20_074  # every line of every file (blank final lines included)
    assert res["sst"] == 6735  # a TSV table too
    assert res["loaded"] == []


# --- lines ---------------------------------------------------------------------------------------


def test_a_line_never_ends_at_u0085_or_u2028(imdb):
    text = decode_utf8(imdb)
    assert "\u0085" in text
    got = split_lines(text)
    assert len(got) == imdb.count(b"\n")  # a final newline ends the last line, it starts no empty one
    assert any("\u0085" in line for line in got)  # the line holding it stays one line
    assert texts(imdb) == got  # bulk and Ray read the same lines as training does


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_reader_splits_the_shared_cases_as_the_rule_says(case):
    """tests/line_endings.py: the cases the Node and C++ readers are tested on too."""
    name, raw, expected = case
    assert split_lines(decode_utf8(raw)) == expected  # training data
    got = [(pos, line) for pos, line in raw_lines(io.BytesIO(raw))]  # bulk, stdin and Ray
    assert [decode_utf8(line, at_start=n == 0) for n, (_, line) in enumerate(got)] == expected
    assert [pos for pos, _ in got][-1:] == ([len(raw)] if expected else [])  # every byte accounted for
    with_ends = [line for _, line in raw_lines(io.BytesIO(raw), keep_ends=True)]
    assert b"".join(with_ends) == raw  # what the CSV reader gets: nothing lost or added
    blank = [rec.get("blank", False) for _, rec in line_records(io.BytesIO(raw), "lines", "text", "id")]
    assert blank == [not line.strip() for line in expected]
    assert [(n, t) for n, (t, b) in enumerate(zip(texts(raw), blank), 1) if not b] == non_blank(expected)


class Trickle(io.RawIOBase):
    """A pipe's reads: a few bytes at a time, so that a line end falls across every possible read."""

    def __init__(self, data: bytes, step: int):
        self.data, self.at, self.step = data, 0, step

    def readable(self):
        return True

    def readinto(self, b):
        piece = self.data[self.at : self.at + min(len(b), self.step)]
        b[: len(piece)] = piece
        self.at += len(piece)
        return len(piece)


@pytest.mark.parametrize("step", [1, 2, 3, 5])
def test_a_line_end_split_across_reads_is_one_line_end(step):
    for name, raw, expected in CASES:
        if len(raw) > 1000:
            continue
        got = [line for _, line in raw_lines(Trickle(raw, step), max_bytes=1 << 20)]
        assert [decode_utf8(line, at_start=n == 0) for n, line in enumerate(got)] == expected, name


def test_crlf_files_read_as_lf_files_in_every_reader(imdb):
    crlf = imdb.replace(b"\n", b"\r\n")
    assert split_lines(decode_utf8(crlf)) == split_lines(decode_utf8(imdb))
    assert texts(crlf) == texts(imdb)
    assert all(not t.endswith("\r") for t in texts(crlf))


def test_a_classic_mac_file_is_split_on_cr_by_the_training_reader(data_dir):
    names = (data_dir / "names" / "English.txt").read_bytes().decode("utf-8")  # no final newline
    assert split_lines(names.replace("\n", "\r")) == split_lines(names) == names.split("\n")


def test_a_line_over_the_limit_gets_an_error_and_the_next_line_is_read(imdb):
    first, rest = imdb.split(b"\n", 1)
    long = b"x" * 5000 + b"\n"
    got = texts(long + imdb, max_bytes=len(first) + 10)
    assert got[0] == f"line 1: longer than {len(first) + 10:,} bytes; split it or shorten it"
    assert got[1] == first.decode("utf-8")
    positions = [pos for pos, _ in raw_lines(io.BytesIO(long + imdb), 100)]
    assert positions[0] == len(long) and positions[-1] == len(long + imdb)  # bytes read, for progress and Ray
    assert MAX_LINE_BYTES == 64 << 20


def test_errors_name_the_line_of_the_whole_file_when_reading_from_its_middle(imdb):
    cut = imdb.index(b"\n") + 1
    bad = imdb[:cut] + b"\xff\xfe bad\n" + imdb[cut:]
    start = bad.index(b"\xff")
    f = io.BytesIO(bad)
    f.seek(start)
    recs = [rec for _, rec in line_records(f, "lines", "text", "id", first_line=2)]
    assert recs[0] == {"error": "line 2: not UTF-8 (invalid start byte at byte 0); re-encode the file as UTF-8"}
    assert recs[1]["text"] == split_lines(decode_utf8(imdb))[1]


# --- UTF-8 ---------------------------------------------------------------------------------------


def test_a_bom_is_dropped_at_the_start_of_a_file_only(imdb):
    bom = "\ufeff".encode("utf-8")
    assert decode_utf8(bom + imdb) == decode_utf8(imdb)
    assert decode_utf8(bom + b"x", at_start=False) == "\ufeffx"  # elsewhere U+FEFF is text
    middle = imdb.replace(b"\n", b"\n" + bom, 1)
    got = texts(bom + middle)
    assert got[0] == texts(imdb)[0] and got[1] == "\ufeff" + texts(imdb)[1]
    dec = escaping_decoder()
    assert dec.decode(bom + b"a\n") == "a\n" and dec.decode(bom + b"b\n") == "\ufeffb\n"


def test_bytes_that_are_not_utf8_are_refused_or_marked_never_replaced(imdb):
    latin1 = "résumé".encode("latin-1")
    with pytest.raises(UnicodeDecodeError):
        decode_utf8(imdb + latin1)
    marked = escaping_decoder().decode(latin1 + b"\n")
    assert not_utf8(marked)  # the table readers give its row an error line
    assert not_utf8(escaping_decoder().decode(b"ok \xff\n"))
    assert not not_utf8(decode_utf8(imdb))  # real text is never taken for bad bytes
    assert not not_utf8("\ud800")  # a lone surrogate from a JSON escape is another matter (lone_surrogate)
    assert texts(latin1)[0].startswith("line 1: not UTF-8 (invalid continuation byte at byte 1)")


def test_a_lone_surrogate_is_found_and_a_pair_is_text():
    assert lone_surrogate("ab\ud800c") == "\ud800"
    assert lone_surrogate(json.loads('"x\\udc00"')) == "\udc00"
    assert lone_surrogate(json.loads('"\\ud83d\\ude00"')) is None  # a pair of escapes spells one character
    assert lone_surrogate("naïve 😀") is None


# --- tables --------------------------------------------------------------------------------------


def test_tsv_keeps_stray_quotes_as_text(imdb):
    text = decode_utf8(imdb)
    rows = list(table_reader(io.StringIO(text, newline=""), "tsv", MAX_LINE_BYTES))
    assert len(rows) == imdb.count(b"\n") and all(len(r) == 2 for r in rows)
    assert [r[0] for r in rows] == [line.split("\t")[0] for line in split_lines(text)]
    assert sum(r[0].count('"') for r in rows) == imdb.count(b'"')


def test_csv_is_strict_a_quote_out_of_place_is_an_error(data_dir):
    lines = (data_dir / "chinese" / "waimai_10k.csv").read_text(encoding="utf-8").splitlines(keepends=True)[:50]
    rows = list(table_reader(lines, "csv", MAX_LINE_BYTES))
    assert rows[0] == ["label", "review"] and len(rows) == 50
    broken = lines[:2] + ['1,"quoted" then more\n'] + lines[2:]
    with pytest.raises(csv.Error, match="',' expected after"):
        list(table_reader(broken, "csv", MAX_LINE_BYTES))


def test_the_field_limit_is_the_callers_on_every_read():
    field = "x" * 2000
    with pytest.raises(csv.Error, match="field larger than field limit"):
        list(table_reader(["text\n", field + "\n"], "csv", 1000))
    assert list(table_reader(["text\n", field + "\n"], "csv", 4000))[1] == [field]
    with pytest.raises(csv.Error, match="field larger than field limit"):  # not left raised by the read before
        list(table_reader(["text\n", field + "\n"], "tsv", 1000))
    csv.field_size_limit(MAX_LINE_BYTES)


# --- JSON lines ----------------------------------------------------------------------------------


def test_ids_are_copied_only_when_json_can_carry_them():
    assert all(valid_id(v) for v in ("a", 3, -2.5, True, None, 10**30))
    assert not any(valid_id(v) for v in (float("nan"), float("inf"), [1], {"a": 1}))


def test_jsonl_rows_give_text_and_id_or_an_error_naming_the_line(imdb):
    sentence = decode_utf8(imdb).split("\t", 1)[0]
    lines = [
        json.dumps({"id": 7, "text": sentence}),
        json.dumps(sentence),
        '{"id": "a", "text": 3}',
        '{"id": NaN, "text": "x"}',
        "[1]",
        "not json",
        "[" * 100_000,
        '{"text": ' + "9" * 5000 + "}",
        '{"id": "b"}',
    ]
    got = [rec for _, rec in line_records(io.BytesIO("\n".join(lines).encode()), "jsonl", "text", "id")]
    assert got[0] == {"id": 7, "text": sentence}
    assert got[1] == {"text": sentence}
    assert got[2] == {"id": "a", "error": f"line 3: 'text' is {json_kind(3)}, not a string"}
    assert got[3] == {"error": "line 4: 'id' must be a JSON string or a finite number"}
    assert got[4] == {"error": "line 5: expected a JSON string or an object with a 'text' key"}
    assert got[5]["error"].startswith("line 6: not JSON (Expecting value at column 1)")
    assert got[6] == {"error": "line 7: JSON nested too deeply to read"}
    assert got[7]["error"].startswith("line 8: JSON value out of range")
    assert got[8] == {"id": "b", "error": "line 9: expected a JSON string or an object with a 'text' key"}


def test_json_output_is_strict_and_always_utf8():
    assert json_kind(None) == "null" and json_kind(True) == "a boolean (true)" and json_kind(3) == "a number (3)"
    assert json_kind(10**50).endswith("...)") and len(json_kind(10**50)) < 60
    assert json_text({"id": "\ud800x"}) == '{"id": "\\ud800x"}'  # escaped, not a failed answer
    assert json_text({"text": "é"}) == '{"text": "é"}'
    with pytest.raises(ValueError):
        json_text({"score": float("nan")})

"""The one line rule (tests/line_endings.py) in Node and C++: every case's bytes split into exactly the
expected lines by Node's reader (whole, and streamed in pieces that cut "\\r\\n" pairs and multi-byte
characters), by tokenize_stdio's stdin, by the C++ tool's line reader, and by the C++ tool itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cpp_tool import compile_check, seqship_predict
from tests.line_endings import CASES

REPO = Path(__file__).resolve().parents[2]
JS = REPO / "runtime" / "js"
NAMES = [c[0] for c in CASES]


@pytest.fixture(scope="module")
def case_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("line-cases")
    files = {}
    for name, raw, _ in CASES:
        files[name] = folder / f"{name}.txt"
        files[name].write_bytes(raw)
    return files


NODE_SPLIT = """
import { createReadStream, readFileSync } from "node:fs";
import { readLines, splitLines } from "LINES";
const out = {};
for (const [name, file] of Object.entries(JSON.parse(process.argv[1]))) {
  out[name] = { whole: splitLines(readFileSync(file)) };
  for (const piece of [1, 2, 7, 4096, 65536]) {
    const lines = [];
    for await (const line of readLines(createReadStream(file, { highWaterMark: piece }))) lines.push(line);
    out[name][piece] = lines;
  }
}
console.log(JSON.stringify(out));
"""


@pytest.mark.slow
def test_node_splits_every_case_as_the_rule_says(case_files):
    script = NODE_SPLIT.replace("LINES", (JS / "src" / "lines.js").as_uri())
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script, json.dumps({k: str(v) for k, v in case_files.items()})],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    for name, _, expected in CASES:
        for how, lines in got[name].items():
            assert lines == expected, (name, how)


def test_the_node_package_exports_the_line_reader():
    out = subprocess.run(
        [
            "node",
            "--input-type=module",
            "-e",
            f"import {{ splitLines }} from '{(JS / 'src' / 'node.js').as_uri()}';"
            "console.log(JSON.stringify(splitLines(Buffer.from('a\\rb\\r\\nc'))));",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == ["a", "b", "c"], out.stderr


def test_tokenize_stdio_reads_its_input_lines_by_the_same_rule(tiny_run):
    """Its JSON lines may end in a lone CR and hold a raw U+2028 (valid inside a JSON string)."""
    tokenizer = Path(tiny_run[1]["bundle"]) / "tokenizer.json"
    texts = ["Nguyen", "a\u2028b", "Schmidt", "Rossi"]
    body = (
        json.dumps({"text": texts[0]})
        + "\r"
        + json.dumps({"text": texts[1]}, ensure_ascii=False)
        + "\r\n"
        + "  \n"  # blank: skipped, but counted
        + json.dumps({"text": texts[2]})
        + "\n"
        + json.dumps({"text": texts[3]})
        + "\r"
    ).encode()
    out = subprocess.run(
        ["node", str(JS / "tools" / "tokenize_stdio.mjs"), str(tokenizer)],
        input=b"\xef\xbb\xbf" + body,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert len(answers) == 4 and all("ids" in a for a in answers), answers


def test_the_cpp_line_reader_splits_every_case_as_the_rule_says(case_files):
    exe = compile_check(Path(__file__).with_name("lines_check.cpp"))
    for name, _, expected in CASES:
        out = subprocess.run([str(exe), str(case_files[name])], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = [bytes.fromhex(h).decode("utf-8") for h in out.stdout.splitlines()]
        assert lines == expected, name


def as_token_ids(raw: bytes) -> bytes:
    """The case with every text byte turned into token-id text and every terminator, BOM and whitespace byte
    kept where it was: the same line structure, byte for byte, in a file the C++ tool scores."""
    out, nth = bytearray(), 0
    start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    out += raw[:start]
    for b in raw[start:]:
        if b in b"\r\n":
            nth = 0
            out.append(b)
        elif b in b" \t\x0b\x0c":
            out.append(b)
        else:
            out += b"1" if nth % 2 == 0 else b" "
            nth += 1
    return bytes(out)


@pytest.mark.slow
def test_the_cpp_tool_scores_one_row_per_line_of_every_case(tiny_run, tmp_path):
    """Through the real tool: as many logit rows as the rule has lines; a blank line is named by the number
    the rule gives it (the tool scores every line, so it refuses a blank one rather than shift its rows)."""
    exe, bundle = seqship_predict(), Path(tiny_run[1]["bundle"])
    pad = json.loads((bundle / "tokenizer.json").read_text())["pad_id"]
    assert pad != 1  # the ids below are 1s
    for name, raw, expected in CASES:
        ids = tmp_path / f"{name}.ids"
        ids.write_bytes(as_token_ids(raw))
        out = subprocess.run([str(exe), str(bundle), str(ids), str(pad)], capture_output=True, text=True, timeout=120)
        blank = [n for n, line in enumerate(expected, 1) if not line.strip(" \t\x0b\x0c")]
        if not expected:
            assert out.returncode == 1 and "no input lines" in out.stderr, (name, out.stderr)
        elif blank:
            assert out.returncode == 1 and f"line {blank[0]}: no token ids" in out.stderr, (name, out.stderr)
        else:
            assert out.returncode == 0, (name, out.stderr)
            assert len(out.stdout.splitlines()) == len(expected), name

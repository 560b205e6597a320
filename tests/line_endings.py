"""The line rule every reader follows (Python, Node, C++), as data every language's tests read.

What ends a line: "\\r\\n", "\\n", or a lone "\\r" -- nothing else (U+2028, U+2029 and U+0085 occur inside real
texts and are text). A terminator at the end of the file ends the last line; it does not start an empty one.
A final line without a terminator is a line. A UTF-8 BOM at the start of the file is dropped.

`expected_lines` are the file's lines as split, blank ones included: readers then skip a blank line (one that
is empty or holds only whitespace; these cases use spaces and tabs) and count it, but line numbers count every line, so a text's line
number is its index in `expected_lines` plus one.

`CASES = [(name, raw_bytes, expected_lines), ...]`; `as_json()` writes them for another language's tests
(`python -m tests.line_endings > cases.json`: raw bytes as latin-1 strings, lines as UTF-8 strings).
"""

from __future__ import annotations

import json


def _straddle(boundary: int) -> tuple[str, bytes, list[str]]:
    """A "\\r\\n" pair whose "\\r" is the last byte of the first `boundary` bytes (a buffer, a read block, a
    range of a Ray plan), so that a reader that splits at "\\r" before seeing the "\\n" makes an extra line."""
    first = "a" * (boundary - 1)
    return (f"crlf_split_at_{boundary}", (first + "\r\nsecond\r\nthird\n").encode(), [first, "second", "third"])


def _lone_cr_at(boundary: int) -> tuple[str, bytes, list[str]]:
    """A lone "\\r" as the last byte of the first `boundary` bytes, followed by text, not "\\n"."""
    first = "b" * (boundary - 1)
    return (f"lone_cr_at_{boundary}", (first + "\rnext\rlast").encode(), [first, "next", "last"])


CASES: list[tuple[str, bytes, list[str]]] = [
    ("lf", b"Nguyen\nSchmidt\nRossi\nKowalski\n", ["Nguyen", "Schmidt", "Rossi", "Kowalski"]),
    ("crlf", b"Nguyen\r\nSchmidt\r\nRossi\r\nKowalski\r\n", ["Nguyen", "Schmidt", "Rossi", "Kowalski"]),
    ("lone_cr", b"Nguyen\rSchmidt\rRossi\rKowalski\r", ["Nguyen", "Schmidt", "Rossi", "Kowalski"]),
    ("mixed", b"one\ntwo\r\nthree\rfour\n\rfive", ["one", "two", "three", "four", "", "five"]),
    ("cr_at_eof", b"one\ntwo\r", ["one", "two"]),
    ("crcr_at_eof", b"one\r\r", ["one", ""]),
    ("cr_then_crlf", b"one\r\r\ntwo", ["one", "", "two"]),
    ("no_final_terminator", b"one\ntwo", ["one", "two"]),
    ("single_line_no_terminator", b"only", ["only"]),
    ("empty_file", b"", []),
    ("only_terminator", b"\n", [""]),
    ("blank_lines", b"one\n\n  \n\t\ntwo\r\n\r\nthree\r\r", ["one", "", "  ", "\t", "two", "", "three", ""]),
    ("u2028_inside", "a\u2028b\nc\u2029d\ne\u0085f\n".encode(), ["a\u2028b", "c\u2029d", "e\u0085f"]),
    ("bom_at_start", b"\xef\xbb\xbfone\rtwo\r", ["one", "two"]),
    ("utf8_multibyte", "Müller\r東京\r\n😀\n".encode(), ["Müller", "東京", "😀"]),
    ("form_feed_and_vt", b"a\x0cb\nc\x0bd\n", ["a\x0cb", "c\x0bd"]),
    _straddle(4096),
    _straddle(8192),
    _straddle(65536),
    _lone_cr_at(8192),
    _lone_cr_at(65536),
]


def non_blank(lines: list[str]) -> list[tuple[int, str]]:
    """(line number, text) of the lines a reader scores or trains on: blank ones skipped, numbers kept."""
    return [(n, line) for n, line in enumerate(lines, 1) if line.strip()]


def as_json() -> str:
    """The cases as JSON, for Node and C++ tests: [{"name", "raw_latin1", "lines"}]."""
    return json.dumps(
        [{"name": name, "raw_latin1": raw.decode("latin-1"), "lines": lines} for name, raw, lines in CASES],
        ensure_ascii=True,
    )


if __name__ == "__main__":
    print(as_json())

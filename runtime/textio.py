"""Line, UTF-8 and table rules shared by every reader: training data (`pipeline.data`), local bulk scoring
(`runtime.bulk`) and Ray (`runtime.ray`), so that a file reads the same wherever it is read.

- a line ends at "\\n"; "\\r" before it is dropped (a CRLF file reads as an LF one);
- text is UTF-8, and a BOM is dropped at the start of a file only (elsewhere U+FEFF is text);
- CSV is read strictly (a quote out of place is an error, never a field that silently swallows the
  following rows); TSV without quoting (TSV files in the wild carry stray quotes inside texts);
- a JSON lines row is a JSON string, or an object with the text (and maybe an id) under named keys.

Standard library only: reading training data must not need numpy or onnxruntime.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
from typing import IO, Iterable, Iterator

from seqship.runtime.jsonio import json_kind

# One input row, at most (a line, or a table field). Python's csv module stops at 128 KiB a field; real texts
# (a whole review, an article) can be larger, and a field larger than this is almost always a quote left
# open that swallowed the rest of the file.
MAX_LINE_BYTES = 64 * 1024 * 1024
_SKIP_BLOCK = 1 << 20

# The csv module's arguments for each table format.
TABLE_DIALECTS = {
    "csv": {"delimiter": ",", "strict": True},
    "tsv": {"delimiter": "\t", "quoting": csv.QUOTE_NONE},
}

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8
_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_utf8(raw: bytes, at_start: bool = True) -> str:
    """UTF-8 bytes as text, a BOM dropped when they are at the start of the file (UnicodeDecodeError if not UTF-8)."""
    return raw.decode("utf-8-sig" if at_start else "utf-8")


def split_lines(text: str) -> list[str]:
    """The text's lines, split on "\\n" only (a final "\\r" dropped); a file with "\\r" line ends and no
    "\\n" at all (classic Mac) is split on "\\r"."""
    # str.splitlines() also breaks on U+0085 and U+2028, which occur inside real texts.
    if "\n" not in text and "\r" in text.rstrip("\r"):
        return text.split("\r")
    return [line.rstrip("\r") for line in text.split("\n")]


def raw_lines(f: IO[bytes], max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(bytes read so far, line without its end) per line of a binary file from where it stands, or None for a
    line over max_bytes, whose rest is skipped without being held in memory."""
    pos = 0  # counted, not f.tell(): a pipe (--input /dev/stdin) cannot tell
    while True:
        raw = f.readline(max_bytes + 1)
        if not raw:
            return
        pos += len(raw)
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while True:  # skip to the end of this line, a block at a time
                block = f.readline(_SKIP_BLOCK)
                pos += len(block)
                if not block or block.endswith(b"\n"):
                    break
            yield pos, None
            continue
        yield pos, raw.rstrip(b"\n").rstrip(b"\r")


def escaping_decoder() -> codecs.IncrementalDecoder:
    """A UTF-8 decoder for a file read a line at a time (a BOM dropped at its start) that turns bytes that are
    not UTF-8 into lone surrogates instead of failing, so that only the row holding them is lost (`not_utf8`)."""
    return codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")


def not_utf8(value: str) -> bool:
    """Whether text from `escaping_decoder` held bytes that are not UTF-8 (a regex: this runs per row)."""
    return _ESCAPED_BYTE.search(value) is not None


def lone_surrogate(value: str) -> str | None:
    """The first lone surrogate in value, or None: half of a UTF-16 pair (a JSON "\\ud800" escape can spell
    one), valid in a Python str, not text, and not writable as UTF-8 (a regex: this runs per text)."""
    found = _SURROGATE.search(value)
    return None if found is None else found.group()


def table_reader(lines: Iterable[str], fmt: str, field_limit: int):
    """A csv.reader of `csv` or `tsv` rows (TABLE_DIALECTS), with fields of up to field_limit characters.

    The csv module's field limit is process-wide: it is set on every read, so that it is always the caller's."""
    csv.field_size_limit(field_limit)
    return csv.reader(lines, **TABLE_DIALECTS[fmt])


def valid_id(value) -> bool:
    """An id is copied to the output as is: a JSON string, a finite number, true/false or null."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


def text_of(obj, n: int, text_column: str, id_column: str | None) -> dict:
    """A JSON lines record: the text (and id) a parsed line carries, or an error naming line n."""
    if isinstance(obj, str):
        return {"text": obj}
    if not isinstance(obj, dict):
        return {"error": f"line {n}: expected a JSON string or an object with a {text_column!r} key"}
    rec = {}
    if id_column in obj:
        if not valid_id(obj[id_column]):
            return {"error": f"line {n}: {id_column!r} must be a JSON string or a finite number"}
        rec["id"] = obj[id_column]  # kept on an error row too, so that the caller can match it to its input
    if text_column not in obj:
        return rec | {"error": f"line {n}: expected a JSON string or an object with a {text_column!r} key"}
    text = obj[text_column]
    if not isinstance(text, str):
        return rec | {"error": f"line {n}: {text_column!r} is {json_kind(text)}, not a string"}
    return rec | {"text": text}


def line_records(
    f: IO[bytes],
    fmt: str,
    text_column: str,
    id_column: str | None,
    max_bytes: int = MAX_LINE_BYTES,
    first_line: int = 1,
) -> Iterator[tuple[int, dict]]:
    """(bytes read so far, record) per line of a binary file of `lines` or `jsonl`, from where it stands;
    `first_line` is the number of the line there (a part of a larger file: errors name the file's line).
    A record has 'text' or 'error', and maybe 'id'; a line that cannot be read gets an error, never stops."""
    for n, (pos, raw) in enumerate(raw_lines(f, max_bytes), first_line):
        if raw is None:
            yield pos, {"error": f"line {n}: longer than {max_bytes:,} bytes; split it or shorten it"}
            continue
        try:
            line = decode_utf8(raw, at_start=n == 1)
        except UnicodeDecodeError as e:
            yield pos, {"error": f"line {n}: not UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8"}
            continue
        if fmt == "lines":
            yield pos, {"text": line}
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield pos, {"error": f"line {n}: not JSON ({e.msg} at column {e.colno})"}
            continue
        except RecursionError:
            yield pos, {"error": f"line {n}: JSON nested too deeply to read"}
            continue
        except ValueError as e:  # e.g. an integer of more digits than Python converts
            yield pos, {"error": f"line {n}: JSON value out of range ({str(e)[:80]})"}
            continue
        yield pos, text_of(obj, n, text_column, id_column)

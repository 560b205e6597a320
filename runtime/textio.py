"""Line, UTF-8 and table rules shared by every reader: training data (`pipeline.data`), local bulk scoring
(`runtime.bulk`) and Ray (`runtime.ray`), so that a file reads the same wherever it is read.

- a line ends at "\\r\\n", "\\n" or a lone "\\r", and at nothing else (U+2028, U+2029 and U+0085 occur inside
  real texts); a terminator at the end of the file ends the last line, it does not start an empty one
  (tests/line_endings.py holds the cases, which the Node and C++ readers are tested on too);
- a blank line (empty, or only whitespace) is no text: every reader skips it and counts it, and line
  numbers still count it, so that a text is found by its line number;
- a file that is not text (NUL bytes, or the signature of Parquet, zip, gzip, PDF...) is refused by name
  (`binary_kind`), never scored or trained on as lines;
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


_LINE_END = re.compile(r"\r\n|\r|\n")
_LINE_END_BYTES = re.compile(rb"\r\n|\r|\n")
_READ_BLOCK = 1 << 16

# What a file that is not text starts with: (signature, what it is). Checked on the first bytes of a file
# that is read as lines, JSON lines or a table, so that its bytes are never scored or trained on as text.
SIGNATURES = (
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "a zip archive (or .xlsx, .docx, .jar...)"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-zip archive"),
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office document (.xls, .doc)"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "an executable"),
    (b"ARROW1", "an Arrow file"),
    (b"\x93NUMPY", "a NumPy array"),
)
SNIFF_BYTES = 8192  # how much of a file's start `binary_kind` looks at


def binary_kind(head: bytes) -> str | None:
    """What a file that starts with `head` is, when it is not text ("a Parquet file", "UTF-16 text"...), or None.
    NUL bytes are not text (UTF-16 and UTF-32 files are full of them; seqship reads UTF-8)."""
    for sig, what in SIGNATURES:
        if head.startswith(sig):
            return what
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 or UTF-32 text (a byte order mark says so)"
    if b"\x00" in head[:SNIFF_BYTES]:
        return "not text (it holds NUL bytes: a binary file, or UTF-16 text)"
    return None


def refuse_binary(path, head: bytes, fmt: str, error=ValueError) -> None:
    """Raise `error` naming the file and the format it was to be read as, when `head` is not text."""
    what = binary_kind(head)
    if what is None:
        return
    hint = "re-encode it as UTF-8 text" if "UTF-16" in what else "give a UTF-8 text file"
    if what == "a Parquet file":
        hint = "name it .parquet (read with pyarrow), or give a UTF-8 text file"
    raise error(f"{path}: {what}, not {fmt} text; {hint}")


def is_blank(line: str) -> bool:
    """A blank line (empty, or only whitespace and byte-order marks, which the tokenizer drops): skipped and
    counted by every reader, never a text."""
    return not line.replace("\ufeff", "").strip()


def split_lines(text: str) -> list[str]:
    """The text's lines: each ends at "\\r\\n", "\\n" or a lone "\\r" (see the module docstring); a
    terminator at the very end does not start an empty line. Blank lines are kept (line numbers count them)."""
    # str.splitlines() also breaks on U+0085, U+2028 and more, which occur inside real texts.
    lines = _LINE_END.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def count_line_ends(block: bytes) -> int:
    """Line ends in a block of bytes: "\\r\\n" counts once (a pair cut between two blocks is the caller's)."""
    return block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")


def last_line_end(block: bytes) -> int:
    """The offset just after the last line end in `block` that is certainly whole, or 0: a "\\r" as the
    block's last byte may be the first half of a "\\r\\n", so a cut never falls there."""
    body = block[:-1] if block.endswith(b"\r") else block
    return max(body.rfind(b"\n"), body.rfind(b"\r")) + 1


def raw_lines(
    f: IO[bytes], max_bytes: int = MAX_LINE_BYTES, keep_ends: bool = False
) -> Iterator[tuple[int, bytes | None]]:
    """(bytes read so far, line) per line of a binary file from where it stands, or None for a line over
    max_bytes, whose rest is skipped without being held in memory. Lines end as `split_lines` says; the
    line comes without its end, or with it (keep_ends: a CSV reader needs it inside a quoted field).
    Memory: one read block plus one line."""
    total = 0  # bytes read from f: counted, not f.tell(), as a pipe (--input /dev/stdin) cannot tell
    buf, i, eof = b"", 0, False  # the block being split, where the current line starts in it
    pending: list[bytes] = []  # the start of the current line, from earlier blocks
    size, over = 0, False
    while True:
        m = _LINE_END_BYTES.search(buf, i)
        # a "\r" as the block's last byte is a line end, or the first half of one: the next byte says which
        if m is not None and (eof or m.end() < len(buf) or buf[m.start()] != 13 or m.end() - m.start() == 2):
            j, end = m.span()
            piece = buf[i:j]
            if over or size + len(piece) > max_bytes:
                line = None
            else:
                line = b"".join([*pending, piece, buf[j:end]] if keep_ends else [*pending, piece])
            yield total - (len(buf) - end), line
            pending, size, over, i = [], 0, False, end
            continue
        k = len(buf) if m is None else m.start()
        piece = buf[i:k]
        if piece and not over:
            size += len(piece)
            if size > max_bytes:
                over, pending = True, []
            else:
                pending.append(piece)
        if eof:
            if pending or over:  # a last line without a line end
                yield total, None if over else b"".join(pending)
            return
        more = f.read(_READ_BLOCK)
        total += len(more)
        eof = not more
        buf, i = buf[k:] + more, 0  # buf[k:] is empty, or the one "\r" whose meaning the next byte gives


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
    A record has 'text' or 'error', and maybe 'id'; a line that cannot be read gets an error, never stops;
    a blank line gets {"blank": True} (the caller skips it, and counts it). Every record is one line."""
    for n, (pos, raw) in enumerate(raw_lines(f, max_bytes), first_line):
        if raw is None:
            yield pos, {"error": f"line {n}: longer than {max_bytes:,} bytes; split it or shorten it"}
            continue
        try:
            line = decode_utf8(raw, at_start=n == 1)
        except UnicodeDecodeError as e:
            yield pos, {"error": f"line {n}: not UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8"}
            continue
        if is_blank(line):
            yield pos, {"blank": True}
            continue
        if "\x00" in line:
            yield pos, {"error": f"line {n}: holds a NUL byte, which is not text; is the file binary?"}
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

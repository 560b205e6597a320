"""Bulk scoring of a file: streamed in chunks (memory does not grow with the input), written atomically.

Input formats: `lines` (one text per line), `jsonl` (a JSON string, or an object with the text under
`text_column` and optionally an id under `id_column`), `csv` / `tsv` (a header row naming the columns),
`parquet` (the `text_column` and `id_column` columns; needs pyarrow, as the Ray engine does). Lines end as
runtime.textio says ("\\r\\n", "\\n" or a lone "\\r"); a blank line is skipped and counted (`skipped`),
as training skips it. A file whose bytes are not text in its format (Parquet, zip, gzip, PDF, NUL bytes...)
is refused by name, never scored.

Every other input row gets exactly one output line, in input order, with its `index` and its `id` when
the input has one, and either the prediction or an `error`. `index` is the row's 0-based place in the
input: for `lines` and `jsonl` its line (line number - 1; a skipped blank line leaves a gap, so the index
always leads back to the line), for `csv` / `tsv` its record after the header (a blank line is no record,
a quoted text may span lines), for `parquet` its row. A row that cannot be read
(not UTF-8, not JSON, JSON nested too deeply, a number too large, no text, longer than
`max_line_bytes`) gets an error line; it never stops the run. Memory is bounded by `chunk_size` rows of
at most `max_line_bytes` each, whatever the file's size or its longest line.

Output: JSON lines; or, for an output named .csv or .tsv, a table of that format with the columns
`OUTPUT_COLUMNS` describes (never JSON lines under a table's name).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from seqship.runtime.errors import InputError, ModelOutputError, SeqshipError
from seqship.runtime.fsio import atomic_write, refuse_same_file, sweep_partials
from seqship.runtime.jsonio import json_kind, json_line, json_text  # noqa: F401 (imported from here too)
from seqship.runtime.predictor import Predictor
from seqship.runtime.textio import (
    MAX_LINE_BYTES,
    SNIFF_BYTES,
    TABLE_DIALECTS,
    escaping_decoder,
    line_records,
    not_utf8,
    raw_lines,
    refuse_binary,
    table_reader,
)

FORMATS = ("auto", "jsonl", "lines", "csv", "tsv", "parquet")
FORMAT_NAMES = {"lines": "one-text-per-line", "jsonl": "JSON lines", "csv": "CSV", "tsv": "TSV"}
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
# A table output's columns: the row's index, the input's id and text columns (under their own names; the id
# column when the input can carry one), the top label and its score, the top k as JSON (when --top-k > 1),
# whether the text was truncated, and the error of a row that could not be scored (empty otherwise).
OUTPUT_COLUMNS = ("index", "<id column>", "<text column>", "label", "score", "top_k", "truncated", "error")


@dataclass
class BulkStats:
    """What a bulk run did."""

    texts: int = 0  # rows given an output line (scored + errors)
    scored: int = 0
    errors: int = 0  # rows answered with {"error": ...}
    skipped: int = 0  # blank lines: no text, no output line (as training skips them)


def resolve_format(path: Path, fmt: str) -> str:
    """`auto` becomes jsonl for .jsonl/.ndjson, csv for .csv, tsv for .tsv, parquet for .parquet, else lines."""
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    return SUFFIX_FORMATS.get(path.suffix.lower(), "lines")


def output_format(path: Path) -> str:
    """The output's format, from its name: a table for .csv/.tsv, else JSON lines."""
    return {".csv": "csv", ".tsv": "tsv"}.get(Path(path).suffix.lower(), "jsonl")


def _open_text(path: Path, fmt: str) -> IO[bytes]:
    """The file opened for reading, refused when its first bytes say it is not text in `fmt` (an InputError
    naming the file and the format). The bytes are peeked at, not read: a pipe (/dev/stdin) loses none."""
    f = open(path, "rb", buffering=max(SNIFF_BYTES, io.DEFAULT_BUFFER_SIZE))
    try:
        refuse_binary(path, f.peek(SNIFF_BYTES)[:SNIFF_BYTES], FORMAT_NAMES[fmt], InputError)
    except BaseException:
        f.close()
        raise
    return f


def _line_records(
    path: Path, fmt: str, text_column: str, id_column: str | None, max_bytes: int
) -> Iterator[tuple[int, dict]]:
    with _open_text(path, fmt) as f:
        for n, (pos, rec) in enumerate(line_records(f, fmt, text_column, id_column, max_bytes)):
            rec["index"] = n  # the line's number - 1, blank lines counted: the index leads back to the line
            yield pos, rec


class _LineReader:
    """Decoded lines of a binary file (with their line ends, as the csv module wants them), for the csv
    module; a line over max_bytes is an InputError (a table row cannot be skipped alone: a quoted field may
    span lines)."""

    def __init__(self, f: IO[bytes], path: Path, max_bytes: int):
        self.path, self.max_bytes, self.line, self.pos = path, max_bytes, 0, 0
        self.lines = raw_lines(f, max_bytes, keep_ends=True)
        self.decoder = escaping_decoder()  # a row holding bytes that are not UTF-8 gets an error line

    def __iter__(self):
        return self

    def __next__(self) -> str:
        self.pos, raw = next(self.lines)
        self.line += 1
        if raw is None:
            raise InputError(
                f"{self.path}: line {self.line} is longer than {self.max_bytes:,} bytes; shorten it, "
                "or score the file as --format lines (one text per line)"
            )
        # final on the file's last line (no line end): a UTF-8 sequence cut short there is decoded (as lone
        # surrogates, so its row gets an error line), never held back unseen
        return self.decoder.decode(raw, final=not raw.endswith((b"\n", b"\r")))


def _table_records(
    path: Path, fmt: str, text_column: str, id_column: str | None, max_bytes: int, require_id: bool = False
) -> Iterator[tuple[int, dict]]:
    field_limit = max(csv.field_size_limit(), max_bytes)
    with _open_text(path, fmt) as f:
        lines = _LineReader(f, path, max_bytes)
        reader = table_reader(lines, fmt, field_limit)  # as the training data reader reads a table
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as e:
            raise InputError(f"{path}: the header row cannot be read as {fmt.upper()} ({str(e)[:120]})") from None
        if header is None:
            return
        if any(not_utf8(h) for h in header):
            raise InputError(f"{path}: the header row is not UTF-8; re-encode the file as UTF-8")
        if text_column not in header:
            raise InputError(f"{path}: no column {text_column!r} in the header {header[:20]}; pass --text-column NAME")
        for col in (text_column, id_column):
            if header.count(col) > 1:
                raise InputError(
                    f"{path}: {header.count(col)} columns are named {col!r} in the header {header[:20]}; "
                    "rename all but one"
                )
        if require_id and id_column not in header:
            raise InputError(
                f"{path}: no column {id_column!r} in the header {header[:20]}; pass --id-column NAME, or leave it out"
            )
        t = header.index(text_column)
        i = header.index(id_column) if id_column in header else None
        row_no = 0
        while True:
            row_no += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as e:
                raise InputError(
                    f"{path}: row {row_no} (line {reader.line_num}) cannot be read as {fmt.upper()} ({str(e)[:120]}); "
                    "fix its quoting, or score it as --format lines"
                ) from None
            if not row:  # a blank line is no row, as the training reader reads a table
                row_no -= 1
                yield lines.pos, {"blank": True}
                continue
            has_id = i is not None and i < len(row)
            bad_id = has_id and not_utf8(row[i])
            rec: dict = {"index": row_no - 1}
            if has_id and not bad_id:
                rec["id"] = row[i]
            if t >= len(row):
                rec["error"] = f"row {row_no}: has {len(row)} fields, no {text_column!r} column"
            elif bad_id or not_utf8(row[t]):
                what = "id" if bad_id else "text"
                rec["error"] = (
                    f"row {row_no} (line {reader.line_num}): the {what} is not UTF-8; re-encode the file as UTF-8"
                )
            else:
                rec["text"] = row[t]
            yield lines.pos, rec


def _parquet_records(path: Path, text_column: str, id_column: str | None) -> Iterator[tuple[int, dict]]:
    from seqship.runtime.ray import parquet_records  # pyarrow, the `ray` extra's, read as the Ray engine reads it

    for n, rec in parquet_records(path, text_column, id_column):
        rec["index"] = n
        yield 0, rec


def records(
    path: Path,
    fmt: str = "auto",
    *,
    text_column: str = "text",
    id_column: str | None = "id",
    max_line_bytes: int = MAX_LINE_BYTES,
    require_id: bool = False,
) -> Iterator[tuple[int, dict]]:
    """(bytes read so far, record) per input row; a record has 'index' and 'text' or 'error', and maybe 'id';
    or is {"blank": True} for a blank line (no index: see the module docstring).
    require_id: a table whose header lacks id_column is an InputError (rows of JSON lines may each lack it)."""
    fmt = resolve_format(path, fmt)
    if fmt in ("csv", "tsv"):
        return _table_records(path, fmt, text_column, id_column, max_line_bytes, require_id)
    if fmt == "parquet":
        return _parquet_records(path, text_column, id_column)
    return _line_records(path, fmt, text_column, id_column, max_line_bytes)


class _TableOut:
    """Output rows as CSV or TSV (see OUTPUT_COLUMNS)."""

    def __init__(self, out: IO[str], fmt: str, text_column: str, id_column: str | None, top_k: int):
        if fmt == "tsv":  # one row a line, cells split by tabs (`cut -f`): no quoting, escapes instead
            self.writer = _TsvWriter(out)
        else:
            self.writer = csv.writer(out, lineterminator="\n", **TABLE_DIALECTS[fmt] | {"quoting": csv.QUOTE_MINIMAL})
        self.fmt, self.top_k = fmt, top_k
        self.columns = ["index"] + ([id_column] if id_column else []) + [text_column, "label", "score"]
        self.columns += (["top_k"] if top_k > 1 else []) + ["truncated", "error"]
        self.id_column, self.text_column = id_column, text_column
        self.writer.writerow(self.columns)

    def write(self, rec: dict) -> None:
        values = {"index": rec["index"], self.text_column: rec.get("text", "")}
        if self.id_column:
            values[self.id_column] = "" if rec.get("id") is None else _cell(rec["id"])
        if "error" in rec:
            values["error"] = rec["error"]
        else:
            values |= {"label": rec["label"], "score": rec["score"], "truncated": rec["truncated"]}
            if self.top_k > 1:
                values["top_k"] = json_text(rec["top_k"], separators=(",", ":"))
        self.writer.writerow([values.get(c, "") for c in self.columns])


class _TsvWriter:
    """TSV as `cut`, `awk -F'\\t'` and seqship's own TSV reader read it (no quoting): a tab, line end or
    backslash inside a cell is written as \\t, \\n, \\r or \\\\ (PostgreSQL's text format), never raw."""

    ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

    def __init__(self, out: IO[str]):
        self.out = out

    def writerow(self, cells: list) -> None:
        self.out.write("\t".join(str(c).translate(self.ESCAPES) for c in cells) + "\n")


def _cell(value) -> str:
    """An id as a table cell: a string as it is, a number or boolean as JSON writes it."""
    return value if isinstance(value, str) else json_text(value)


def score_file(
    predictor: Predictor,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    fmt: str = "auto",
    top_k: int = 1,
    text_column: str = "text",
    id_column: str | None = "id",
    require_id: bool = False,
    chunk_size: int = 1024,
    max_line_bytes: int = MAX_LINE_BYTES,
    on_progress: Callable[[int, int], None] | None = None,
) -> BulkStats:
    """Score every row of input_path into output_path (JSON lines, or a table for a .csv/.tsv name; same
    order, one line per input row but blank lines).

    Rows that cannot be scored get {"index", "error"} and do not stop the run. The output is written
    atomically (runtime.fsio.atomic_write): a killed run never leaves a half-written file under the
    final name; a FIFO or /dev/stdout is streamed into. The output is never the input, by any name
    (a symlink, a hard link, `./x`). on_progress(bytes_read, rows_done).
    """
    src, dst = Path(input_path), Path(output_path)
    fmt = resolve_format(src, fmt)
    if not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    if not src.exists() or src.is_dir():
        raise SeqshipError(f"{src}: input file not found")
    refuse_same_file(src, dst)
    out_fmt = output_format(dst)
    sweep_partials(dst.parent if str(dst.parent) else Path("."))  # what a killed run left beside the output
    stats = BulkStats()
    rows = records(
        src, fmt, text_column=text_column, id_column=id_column, max_line_bytes=max_line_bytes, require_id=require_id
    )
    rows = _peek(rows)  # the first row read before the output is opened: a refused input leaves no output
    with atomic_write(dst, "w") as out:
        table = None
        if out_fmt != "jsonl":
            has_id = fmt != "lines" and id_column is not None
            table = _TableOut(out, out_fmt, text_column, id_column if has_id else None, top_k)
        chunk: list[dict] = []
        pos = 0
        for pos, rec in rows:
            if rec.pop("blank", False):
                stats.skipped += 1
                continue
            stats.texts += 1
            chunk.append(rec)
            if len(chunk) >= chunk_size:
                _flush(predictor, chunk, out, top_k, stats, table)
                if on_progress:
                    on_progress(pos, stats.texts)
        _flush(predictor, chunk, out, top_k, stats, table)
        if on_progress:
            on_progress(pos, stats.texts)
    return stats


def _peek(rows: Iterator) -> Iterator:
    """The same rows, the first one read now (so that an input refused on sight fails before any output)."""
    first = next(rows, None)

    def all_rows():
        if first is not None:
            yield first
            yield from rows

    return all_rows()


def _flush(predictor: Predictor, chunk: list[dict], out, top_k: int, stats: BulkStats, table=None) -> None:
    # Error messages name each row by its index (first_index, per run of consecutive indexes).
    results: list = []
    start = 0
    for i in range(1, len(chunk) + 1):
        if i == len(chunk) or chunk[i]["index"] != chunk[i - 1]["index"] + 1:
            texts = [r["text"] if "error" not in r else "" for r in chunk[start:i]]
            results += predictor.predict(texts, top_k=top_k, errors="return", first_index=chunk[start]["index"])
            start = i
    for rec, res in zip(chunk, results):
        if "error" in rec:
            continue
        if isinstance(res, (InputError, ModelOutputError)):
            rec["error"] = str(res)
        else:
            rec.update(res.to_dict())
    for rec in chunk:
        if "error" in rec:
            stats.errors += 1
        else:
            stats.scored += 1
        if table is not None:
            table.write(rec)
            continue
        rec.pop("text", None)
        out.write(json_line({"index": rec.pop("index"), **rec}))
    chunk.clear()

"""Bulk scoring of a file: streamed in chunks (memory does not grow with the input), written atomically.

Input formats: `lines` (one text per line), `jsonl` (a JSON string, or an object with the text under
`text_column` and optionally an id under `id_column`), `csv` / `tsv` (a header row naming the columns).
Every input row gets exactly one output line, in input order, with its `index` (0-based row number),
its `id` when the input has one, and either the prediction or an `error`. A row that cannot be read
(not UTF-8, not JSON, JSON nested too deeply, a number too large, no text, longer than
`max_line_bytes`) gets an error line; it never stops the run. Memory is bounded by `chunk_size` rows of
at most `max_line_bytes` each, whatever the file's size or its longest line.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from seqship.runtime.errors import InputError, ModelOutputError, SeqshipError
from seqship.runtime.fsio import atomic_write, sweep_partials
from seqship.runtime.jsonio import json_kind, json_line, json_text  # noqa: F401 (imported from here too)
from seqship.runtime.predictor import Predictor
from seqship.runtime.textio import (
    MAX_LINE_BYTES,
    escaping_decoder,
    line_records,
    not_utf8,
    table_reader,
)

FORMATS = ("auto", "jsonl", "lines", "csv", "tsv")


@dataclass
class BulkStats:
    """What a bulk run did."""

    texts: int = 0  # rows read (blank lines included: each input row gets one output line)
    scored: int = 0
    errors: int = 0  # rows answered with {"error": ...}


def resolve_format(path: Path, fmt: str) -> str:
    """`auto` becomes jsonl for .jsonl/.ndjson, csv for .csv, tsv for .tsv, else lines."""
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}.get(path.suffix.lower(), "lines")


def _line_records(
    path: Path, fmt: str, text_column: str, id_column: str | None, max_bytes: int
) -> Iterator[tuple[int, dict]]:
    with open(path, "rb") as f:
        yield from line_records(f, fmt, text_column, id_column, max_bytes)


class _LineReader:
    """Decoded lines of a binary file, for the csv module; a line over max_bytes is an InputError
    (a table row cannot be skipped alone: a quoted field may span lines)."""

    def __init__(self, f: IO[bytes], path: Path, max_bytes: int):
        self.f, self.path, self.max_bytes, self.line, self.pos = f, path, max_bytes, 0, 0
        self.decoder = escaping_decoder()  # a row holding bytes that are not UTF-8 gets an error line

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self.f.readline(self.max_bytes + 1)
        if not raw:
            raise StopIteration
        self.line += 1
        self.pos += len(raw)
        if len(raw) > self.max_bytes and not raw.endswith(b"\n"):
            raise InputError(
                f"{self.path}: line {self.line} is longer than {self.max_bytes:,} bytes; shorten it, "
                "or score the file as --format lines (one text per line)"
            )
        # final on the file's last line (no newline): a UTF-8 sequence cut short there is decoded (as lone
        # surrogates, so its row gets an error line), never held back unseen
        return self.decoder.decode(raw, final=not raw.endswith(b"\n"))


def _table_records(
    path: Path, fmt: str, text_column: str, id_column: str | None, max_bytes: int, require_id: bool = False
) -> Iterator[tuple[int, dict]]:
    field_limit = max(csv.field_size_limit(), max_bytes)
    with open(path, "rb") as f:
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
                continue
            has_id = i is not None and i < len(row)
            bad_id = has_id and not_utf8(row[i])
            rec: dict = {"id": row[i]} if has_id and not bad_id else {}
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


def records(
    path: Path,
    fmt: str = "auto",
    *,
    text_column: str = "text",
    id_column: str | None = "id",
    max_line_bytes: int = MAX_LINE_BYTES,
    require_id: bool = False,
) -> Iterator[tuple[int, dict]]:
    """(bytes read so far, record) per input row; a record has 'text' or 'error', and maybe 'id'.
    require_id: a table whose header lacks id_column is an InputError (rows of JSON lines may each lack it)."""
    fmt = resolve_format(path, fmt)
    if fmt in ("csv", "tsv"):
        return _table_records(path, fmt, text_column, id_column, max_line_bytes, require_id)
    return _line_records(path, fmt, text_column, id_column, max_line_bytes)


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
    """Score every row of input_path into output_path (JSON lines, same order, one per input row).

    Rows that cannot be scored get {"index", "error"} and do not stop the run. The output is written
    atomically (runtime.fsio.atomic_write): a killed run never leaves a half-written file under the
    final name; a FIFO or /dev/stdout is streamed into. on_progress(bytes_read, rows_done).
    """
    src, dst = Path(input_path), Path(output_path)
    fmt = resolve_format(src, fmt)
    if not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    if not src.exists() or src.is_dir():
        raise SeqshipError(f"{src}: input file not found")
    if dst.exists() and os.path.samefile(src, dst):
        raise SeqshipError(f"{dst}: the output must not overwrite the input")
    sweep_partials(dst.parent if str(dst.parent) else Path("."))  # what a killed run left beside the output
    stats = BulkStats()
    rows = records(
        src, fmt, text_column=text_column, id_column=id_column, max_line_bytes=max_line_bytes, require_id=require_id
    )
    with atomic_write(dst, "w") as out:
        chunk: list[dict] = []
        pos = 0
        for pos, rec in rows:
            rec["index"] = stats.texts
            stats.texts += 1
            chunk.append(rec)
            if len(chunk) >= chunk_size:
                _flush(predictor, chunk, out, top_k, stats)
                if on_progress:
                    on_progress(pos, stats.texts)
        _flush(predictor, chunk, out, top_k, stats)
        if on_progress:
            on_progress(pos, stats.texts)
    return stats


def _flush(predictor: Predictor, chunk: list[dict], out, top_k: int, stats: BulkStats) -> None:
    # Chunks are contiguous, so the chunk's first index makes error messages name the input row's index.
    first = chunk[0]["index"] if chunk else 0
    texts = [r["text"] if "error" not in r else "" for r in chunk]
    results = predictor.predict(texts, top_k=top_k, errors="return", first_index=first) if chunk else []
    for rec, res in zip(chunk, results):
        if "error" in rec:
            continue
        if isinstance(res, (InputError, ModelOutputError)):
            rec["error"] = str(res)
        else:
            rec.update(res.to_dict())
    for rec in chunk:
        rec.pop("text", None)
        if "error" in rec:
            stats.errors += 1
        else:
            stats.scored += 1
        out.write(json_line({"index": rec.pop("index"), **rec}))
    chunk.clear()

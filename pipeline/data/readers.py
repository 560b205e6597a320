"""Readers: (text, label) rows from label folders, label files and CSV/TSV/JSONL tables.

What a reader will not guess at, it refuses or drops, and says so. A row without a usable label or
text (missing, null, empty) is dropped and counted per reason in `RowIssues`, which the data stage
summary records; a value that is the wrong kind of thing is a `DataError` naming the line, since
turning it into a string would train on something the user never wrote:

- a JSON text must be a string: a number, boolean, list or object is refused (`null` is dropped);
- a JSON label must be a string or an integer (`1` is read as "1", and counted); a boolean, float,
  list or object is refused, and so is a file where an integer label and a string label of the same
  spelling (`1` and `"1"`) would merge into one class;
- spaces around a label are removed, and counted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from seqship.pipeline.data.registry import DataError
from seqship.runtime.fsio import FileTooLargeError, read_capped
from seqship.runtime.jsonio import json_kind
from seqship.runtime.textio import (
    MAX_LINE_BYTES,
    SNIFF_BYTES,
    decode_utf8,
    lone_surrogate,
    refuse_binary,
    split_lines,
    table_reader,
)
from seqship.runtime.textio import split_lines as lines

log = logging.getLogger(__name__)

CSV_FIELD_LIMIT = MAX_LINE_BYTES  # a table field, at most, as bulk scoring reads one (see runtime.textio)

# The version of how files are read into rows: part of the data stage's inputs, so a run read by earlier
# rules is read again (2: duplicate column names refused; label folders skip hidden files, read .TXT, strip
# and NFC file-name labels, split CR-only files; JSONL lone surrogates refused. 3: a lone CR ends a line in
# every file, as in bulk scoring; binary files refused; a file's bytes are capped).
READER_VERSION = 3
MAX_DATA_FILE = 2 << 30  # bytes read of one data file, at most (counted: a FIFO or a device says its size is 0)

DROP_REASONS = {
    "label_missing": "no label field",
    "label_null": "a null label",
    "label_empty": "an empty or whitespace-only label",
    "text_missing": "no text field",
    "text_null": "a null text",
}
NORMALISE_REASONS = {
    "label_integer": "an integer label, read as its decimal string",
    "label_whitespace": "spaces around the label, removed",
    "label_unicode_form": "a label not in NFC (texts are NFC), normalised to NFC",
}


@dataclass
class RowIssues:
    """Rows a reader dropped or normalised, counted per reason, with the first place each happened."""

    dropped: Counter = field(default_factory=Counter)
    normalised: Counter = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)  # reason -> "file, line n"

    def drop(self, reason: str, where: str) -> None:
        """Count one row dropped for `reason` at `where`."""
        self.dropped[reason] += 1
        self.first.setdefault(reason, where)

    def normalise(self, reason: str, where: str, n: int = 1) -> None:
        """Count `n` values changed for `reason`, the first at `where`."""
        self.normalised[reason] += n
        self.first.setdefault(reason, where)

    def summary(self) -> dict:
        """{"dropped": {reason: n}, "normalised": {reason: n}} for the data stage summary."""
        return {"dropped": dict(sorted(self.dropped.items())), "normalised": dict(sorted(self.normalised.items()))}

    def warn(self) -> None:
        """Log one warning per reason: how many rows, why, and where the first one is."""
        for reason, n in sorted(self.dropped.items()):
            log.warning("data: dropped %d row(s) with %s (first: %s)", n, DROP_REASONS[reason], self.first[reason])
        for reason, n in sorted(self.normalised.items()):
            log.warning(
                "data: normalised %d row(s) with %s (first: %s)", n, NORMALISE_REASONS[reason], self.first[reason]
            )


def decode(path: Path) -> str:
    """The file's text as UTF-8 (a BOM is dropped); a DataError naming the line of the first bad byte."""
    try:
        raw = read_capped(path, MAX_DATA_FILE, "split it into several files, or sample it")
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}); check that it exists and is readable") from None
    except FileTooLargeError as e:
        raise DataError(str(e)) from None
    refuse_binary(
        path,
        raw[:SNIFF_BYTES],
        {".csv": "CSV", ".tsv": "TSV", ".jsonl": "JSON lines"}.get(path.suffix.lower(), "one-text-per-line"),
        DataError,
    )
    try:
        return decode_utf8(raw)
    except UnicodeDecodeError as e:
        line = len(split_lines(raw[: e.start].decode("utf-8", "replace") + "x"))
        raise DataError(
            f"{path}, line {line}: bytes that are not UTF-8 ({e.reason}); re-save the file as UTF-8"
        ) from None


def label_files_in(folder: Path) -> list[Path]:
    """The <label>.txt files of a folder (.txt in any case), without hidden ones (._x.txt, .x.txt): sorted.
    A file name that cannot be read as UTF-8 text gives no label: a DataError naming it."""
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() == ".txt" and not p.name.startswith(".") and p.is_file()
    )
    for f in files:
        try:
            f.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"{f.parent / os.fsencode(f.name).decode('utf-8', 'backslashreplace')}: the file name is not UTF-8 "
                "(as this system's locale decodes it), so it gives no label; rename the file to <label>.txt "
                "in UTF-8, or run under a UTF-8 locale"
            ) from None
    return files


def read_label_folder(folder: Path, issues: RowIssues | None = None) -> tuple[list[tuple[str, str]], list[Path]]:
    """(text, label) rows from a folder of <label>.txt files, one text per line, and the files read. A label
    is its file name's stem, stripped and in NFC, as a table's labels are."""
    issues = issues if issues is not None else RowIssues()
    files = label_files_in(folder)
    if not files:
        raise DataError(f"{folder}: no <label>.txt files found; put one file per label there, one text per line")
    rows = []
    for f in files:
        changed = RowIssues()
        label = _label(f.stem, str(f), changed)
        if label is None:
            raise DataError(f"{f}: the file name gives an empty label; rename it to <label>.txt")
        texts = lines(decode(f))
        n = sum(1 for t in texts if t.strip())
        for reason in changed.normalised if n else ():  # counted per text, as a table's labels are
            issues.normalise(reason, str(f), n)
        rows += [(line, label) for line in texts]
    return rows, files


def read_label_files(folder: Path, label_files: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """(text, label) rows from (file, label) pairs, one text per line."""
    return [(line, label) for f, label in label_files for line in lines(decode(folder / f))]


def _label(value: str, where: str, issues: RowIssues) -> str | None:
    """A string label stripped of surrounding spaces and in NFC (as texts are: an NFD "café" and an NFC
    one are one class), or None (counted) if nothing is left."""
    label = value.strip()
    if not label:
        issues.drop("label_empty", where)
        return None
    if label != value:
        issues.normalise("label_whitespace", where)
    nfc = unicodedata.normalize("NFC", label)
    if nfc != label:
        issues.normalise("label_unicode_form", where)
    return nfc


def _no_lone_surrogate(value: str, field: str, where: str) -> None:
    """JSON's \\ud800-style escapes can spell half a character, which is not text (and cannot be written as UTF-8)."""
    bad = lone_surrogate(value)
    if bad is not None:
        raise DataError(
            f"{where}: the {field} field holds a lone surrogate (\\u{ord(bad):04x}, half of a UTF-16 pair), "
            "not text; fix the escape (a character beyond U+FFFF is written as two \\u escapes) or drop the row"
        )


def read_jsonl(
    path: Path, text_column: str, label_column: str, issues: RowIssues | None = None
) -> list[tuple[str, str]]:
    """(text, label) rows from a JSONL file, one object per line; see the module docstring for what is refused."""
    issues = issues if issues is not None else RowIssues()
    rows: list[tuple[str, str]] = []
    label_kinds: dict[str, dict[type, int]] = {}  # label spelling -> {int or str: first line}, to catch 1 vs "1"
    keys_seen: set[str] = set()
    objects = 0
    for n, line in enumerate(lines(decode(path)), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e}); write one JSON object per line") from None
        except (ValueError, RecursionError) as e:  # nesting deeper than the parser goes, a 5,000-digit number
            raise DataError(
                f"{where}: JSON that cannot be read ({type(e).__name__}: {str(e)[:80]}); "
                "write one flat JSON object per line"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{where}: {json_kind(obj)}, not a JSON object; write one object per line, "
                f'e.g. {{{json.dumps(text_column)}: "...", {json.dumps(label_column)}: "..."}}'
            )
        objects += 1
        keys_seen.update(obj)
        text, label = obj.get(text_column), obj.get(label_column)
        if text_column not in obj:
            issues.drop("text_missing", where)
            continue
        if text is None:
            issues.drop("text_null", where)
            continue
        if not isinstance(text, str):
            raise DataError(
                f"{where}: the text field {text_column!r} is {json_kind(text)}, not a string; "
                f"quote it in the file if it is meant as text, or choose another field with --text-column"
            )
        _no_lone_surrogate(text, "text", where)
        if label_column not in obj:
            issues.drop("label_missing", where)
            continue
        if label is None:
            issues.drop("label_null", where)
            continue
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(
                f"{where}: the label field {label_column!r} is {json_kind(label)}; labels must be strings or integers: "
                f"write it as a string, or choose another field with --label-column"
            )
        if isinstance(label, int):
            spelled = str(label)
            issues.normalise("label_integer", where)
        else:
            _no_lone_surrogate(label, "label", where)
            spelled = _label(label, where, issues)
            if spelled is None:
                continue
        kinds = label_kinds.setdefault(spelled, {})
        kinds.setdefault(type(label), n)
        if len(kinds) > 1:
            raise DataError(
                f'{path}: label {spelled} (a JSON integer, first on line {kinds[int]}) and label "{spelled}" '
                f"(a JSON string, first on line {kinds[str]}) would merge into one class; write every label the same "
                "way (all strings or all integers), or make them different labels"
            )
        rows.append((text, spelled))
    for col, opt in ((text_column, "--text-column"), (label_column, "--label-column")):
        if objects and col not in keys_seen:
            raise DataError(
                f"{path}: no line has the field {col!r} (fields: {sorted(keys_seen)}); choose one with {opt}"
            )
    return rows


def read_csv(path: Path, text_column: str, label_column: str, issues: RowIssues | None = None) -> list[tuple[str, str]]:
    """(text, label) rows from a CSV or TSV file with a header; a broken quote or an oversized field is a DataError."""
    issues = issues if issues is not None else RowIssues()
    tsv = path.suffix.lower() == ".tsv"
    reader = table_reader(io.StringIO(decode(path), newline=""), "tsv" if tsv else "csv", CSV_FIELD_LIMIT)
    rows: list[tuple[str, str]] = []
    start = 1  # the line where the record being read begins (a quoted field may span several lines)
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file; the first line must name the columns, e.g. text,label")
        for col, opt in ((text_column, "--text-column"), (label_column, "--label-column")):
            if col not in header:
                raise DataError(f"{path}: no column {col!r} (columns: {header}); choose one with {opt}")
            if header.count(col) > 1:
                raise DataError(
                    f"{path}: {header.count(col)} columns are named {col!r} (columns: {header}); "
                    f"rename all but one, or choose another with {opt}"
                )
        ti, li = header.index(text_column), header.index(label_column)
        start = reader.line_num + 1
        for rec in reader:
            where = f"{path}, line {start}"
            if rec:
                if len(rec) <= max(ti, li):
                    sep = "tab" if tsv else "comma"
                    raise DataError(
                        f"{where}: {len(rec)} field(s), expected at least {max(ti, li) + 1}; "
                        f"every line needs a {sep}-separated value for each column"
                        + ("" if tsv else ", and a text holding a comma must be in double quotes")
                    )
                label = _label(rec[li], where, issues)
                if label is not None:
                    rows.append((rec[ti], label))
            start = reader.line_num + 1
    except csv.Error as e:
        if "field larger than field limit" in str(e):
            raise DataError(
                f"{path}, line {start}: a field longer than {CSV_FIELD_LIMIT:,} characters (the limit); usually a quote "
                "opened on or after this line and never closed: check the quotes there, or split the text"
            ) from None
        if "unexpected end of data" in str(e):
            raise DataError(
                f"{path}, line {start}: a quote opened in this record is never closed; close it, "
                'or double a quote that is part of the text ("")'
            ) from None
        raise DataError(
            f"{path}, line {reader.line_num}: malformed {'TSV' if tsv else 'CSV'} ({e}); a quote inside a "
            'quoted text must be doubled (""), and a quoted field must end at the separator'
        ) from None
    return rows


def read_table(
    path: Path, text_column: str, label_column: str, issues: RowIssues | None = None
) -> list[tuple[str, str]]:
    """(text, label) rows from a CSV, TSV or JSONL file with named columns."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, text_column, label_column, issues)
    if suffix in (".csv", ".tsv"):
        return read_csv(path, text_column, label_column, issues)
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or a folder of <label>.txt")

"""Bulk scoring on a Ray cluster (Ray Data): `pipeline predict --engine ray`.

Input and output are local paths or URIs of any file system pyarrow knows (s3://, gs://, abfs://, hdfs://),
with the credentials the standard environment variables and config files give (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, ~/.aws/config...). No row passes through the driver:

- the driver lists the input files and their sizes and plans ranges: byte ranges of a text file (a range
  owns the lines that start in it, by runtime.textio's one line rule), whole row groups of a Parquet file;
- Ray tasks count each range's lines (the driver sums the counts into each range's first row number);
- a pool of actors (`RangeScorer`) reads each range, scores it with `Predictor.predict` (the same code path
  as `pipeline predict`, so the same answers), and writes its output part straight to the output folder
  or prefix: `part-<file>-<start>.<fmt>`, a name derived from the range, written under a temporary name
  and moved into place when whole, so a retried task replaces its own part and never adds a second one;
- the driver receives one small record per part (its range, rows, checksum), checks that the ranges tile
  every input and that every line arrived once, removes what earlier jobs of seqship left in the output,
  and writes `summary.json` last: the manifest, and the one sign that the output is complete
  (`check_output`, `pipeline check-output`, verifies an output from it alone).

Ray and pyarrow are the `ray` extra (`pip install -e '.[ray]'`), imported in functions; `runtime/`'s core
never imports them. On a real cluster every node needs seqship (the same version) and read access to the
input; the bundle travels with the job.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from seqship.runtime import __version__
from seqship.runtime.bundle import MAX_MANIFEST
from seqship.runtime.errors import InputError, ModelOutputError, SeqshipError
from seqship.runtime.fsio import read_capped
from seqship.runtime.jsonio import json_line, json_text
from seqship.runtime.textio import SNIFF_BYTES, count_line_ends, line_records, raw_lines, refuse_binary, valid_id

log = logging.getLogger(__name__)

# Input files in a folder, by suffix; others are refused (never silently skipped).
SUFFIXES = {".txt": "lines", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
SUFFIX_NAMES = {"lines": "one-text-per-line (.txt)", "jsonl": "JSON lines"}
OUTPUT_FORMATS = ("jsonl", "parquet")
SUMMARY = "summary.json"
MARKER = ".seqship-ray-output"  # written into an output before its first part: what makes its parts seqship's
PART = re.compile(r"part-(\d{5})-(\d{15})\.(jsonl|parquet)")  # part-<file index>-<range start>.<format>
PART_TMP = re.compile(r"\.part-\d{5}-\d{15}\.(jsonl|parquet)\.[0-9a-f]{12}\.tmp")  # a part being written
SUMMARY_TMP = re.compile(r"\.summary\.json\.[0-9a-f]{12}\.tmp")
RANGE_BYTES = 8 << 20  # bytes of a text file per range (a task, and an output part)
RANGE_ROWS = 100_000  # Parquet rows per range, in whole row groups
BLOCK_ROWS = 4096  # rows scored at once (and rows per batch read of a Parquet file)
READ_BUFFER = 1 << 20  # read-ahead of a range's reader: one request per MiB on object storage
# A Parquet id column's types: scalars, copied to the output as they are.
ID_TYPES = (
    "string",
    "large_string",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float",
    "double",
    "bool",
)
MAX_SUMMARY_BYTES = 1 << 30  # a manifest is read (to check an output, or to tell a previous one) up to this much


class RayJobError(SeqshipError):
    """The Ray job could not run, or its output did not hold every input row exactly once."""


@dataclass
class RaySummary:
    """What a Ray bulk job did; written to <output>/summary.json, the manifest of its parts."""

    engine: str = "ray"
    ray_address: str | None = None
    nodes: int = 0
    cluster_cpus: float = 0.0
    workers: int = 0
    bundle: str = ""
    bundle_sha256: str = ""
    input: str = ""
    files: list = field(default_factory=list)  # name, uri, format, bytes, rows (and row_groups: Parquet)
    output_format: str = "jsonl"
    # per part, in input order: name, file, start, end (bytes, or row groups), first_row, rows_in, rows, ...
    parts: list = field(default_factory=list)
    rows_in: int = 0  # every line (or Parquet row) of the input, blank lines included
    rows_out: int = 0  # rows written: rows_in less the blank lines skipped
    skipped: int = 0  # blank lines: no text, no output row (as training and local scoring skip them)
    scored: int = 0
    errors: int = 0
    seconds: dict = field(default_factory=dict)
    texts_per_second: float = 0.0
    seqship: str = __version__
    ray: str = ""
    finished_at: str = ""


# --- file systems -------------------------------------------------------------------------------------


def is_uri(location: str) -> bool:
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]+://", str(location)))


def location(where) -> str:
    """A URI as it is, a local path made absolute (what travels to the workers)."""
    where = os.fspath(where)
    if not is_uri(where):
        return os.path.abspath(where)
    from urllib.parse import urlsplit

    parts = urlsplit(where)
    if parts.password or any(SECRET_QUERY.search(k) for k, _ in _query(parts.query)):
        raise InputError(
            f"{redacted(where)}: a credential in the URI would be shown in logs, in process lists and in the job's "
            "summary.json; give it through the environment or the machine's role instead (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AZURE_CLIENT_SECRET, GOOGLE_APPLICATION_CREDENTIALS: docs/scale.md)"
        )
    return where.rstrip("/")


def open_fs(where: str):
    """(pyarrow file system, path in it) for a local path or a URI; an InputError naming it if pyarrow cannot."""
    import pyarrow.fs as pafs

    if not is_uri(where):
        return pafs.LocalFileSystem(), os.path.abspath(where)
    if where.split(":", 1)[0].lower() in AZURE_SCHEMES:
        _probe_azure(where)
    try:
        return pafs.FileSystem.from_uri(where)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, ArrowNotImplementedError, OSError...
        raise InputError(
            f"{redacted(where)}: pyarrow cannot open this file system ({str(e).splitlines()[0][:200]}); use a local "
            "path or an s3://, gs://, abfs:// or hdfs:// URI (see docs/scale.md for credentials)"
        ) from None


SECRET_QUERY = re.compile(r"secret|sig|key|token|password", re.IGNORECASE)  # not credential_kind: a mode


def redacted(where: str) -> str:
    """A URI as an error may show it: a password in it (s3://KEY:SECRET@bucket) and the values of query
    parameters that name a secret (client_secret, sig of a SAS token, ...) become ***."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(where)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else netloc
    query = urlencode(
        [(k, "***" if SECRET_QUERY.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*:/",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


AZURE_SCHEMES = ("abfs", "abfss")  # what pyarrow (26) opens as Azure; az:// it does not know, and says so
PROBE_SECONDS = 120  # how long the Azure credential probe may take (Azure's credential chain tries several sources)
_azure_ok: set[tuple[str, str]] = set()


def _probe_azure(where: str) -> None:
    """Open an Azure URI in a child process first. Without a credential, pyarrow's Azure file system (26.0) throws
    from a thread it cannot report from, and the C++ runtime aborts the whole process (SIGABRT) instead of raising:
    a child's death is turned into an InputError here. Once per account and query in a process. The URI goes to the
    child on stdin, never in its command line (which any user of the machine can read)."""
    import subprocess
    import sys
    from urllib.parse import urlsplit

    parts = urlsplit(where)
    key = (parts.netloc, parts.query)
    if key in _azure_ok:
        return
    probe = "import sys, pyarrow.fs as f; fs, p = f.FileSystem.from_uri(sys.stdin.read()); fs.get_file_info(p)"
    shown = redacted(where)
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], input=where, capture_output=True, text=True, timeout=PROBE_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise InputError(
            f"{shown}: no answer from Azure within {PROBE_SECONDS} s while opening it (waiting for a credential "
            "and the account's first reply); check the account name and the network"
        ) from None
    if done.returncode != 0:
        # the exception's own line: Python's (pyarrow.lib.ArrowInvalid: ...), or what the C++ runtime printed
        # before it aborted (what(): ...)
        lines = [ln.strip() for ln in done.stderr.splitlines()]
        said = [ln for ln in lines if re.match(r"(what\(\):|[\w.]+(Error|Exception|Invalid)\b)", ln)]
        why = said[-1] if said else f"exit status {done.returncode}"
        for secret in {parts.password, *(v for k, v in _query(parts.query) if SECRET_QUERY.search(k))} - {None, ""}:
            why = why.replace(secret, "***")
        credential = re.search(r"credential|token|authenticat|authoriz|403", why, re.IGNORECASE) or done.returncode < 0
        raise InputError(
            f"{shown}: pyarrow cannot open it ({why[:300]})"
            + (
                "; give it an Azure credential: AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (a service "
                "principal), a managed identity or `az login`, on every node (docs/scale.md)"
                if credential
                else ""
            )
        )
    _azure_ok.add(key)


def _query(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query, keep_blank_values=True)


def child(where: str, name: str) -> str:
    return f"{where.rstrip('/')}/{name}"


def member_uri(where: str, name: str) -> str:
    """The location of the file `name` in the folder or prefix `where`, which open_fs reads back as exactly that
    name. pyarrow percent-decodes a URI's path, so the name is percent-encoded (a key holding %41 was read as the
    key A, one holding # or a space not at all), and it goes before any query (?endpoint_override=...)."""
    if not is_uri(where):
        return child(where, name)
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(where)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{quote(name, safe='')}"))


def _listing(fs, path: str) -> list:
    """The FileInfo of every entry of a folder or prefix (not recursive)."""
    import pyarrow.fs as pafs

    return fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))


def _reader(fs, path: str, offset: int):
    """A buffered reader of `path` from byte `offset` (ranged reads of READ_BUFFER bytes on object storage)."""
    import pyarrow as pa

    f = fs.open_input_file(path)
    f.seek(offset)
    return pa.BufferedInputStream(f, READ_BUFFER)


# --- inputs and ranges --------------------------------------------------------------------------------


def input_files(where: str) -> list[dict]:
    """{name, uri, format, bytes} for a file, or for every file of a folder or prefix (sorted by name); an
    unknown suffix, a subfolder or a name that is not UTF-8 is an InputError (never silently skipped). Hidden
    entries (a name starting with ".": .DS_Store, a copy tool's temporary file) are left out, as pyarrow's
    datasets leave them out; summary.json lists every file that was read."""
    import pyarrow.fs as pafs

    where = location(where)
    fs, path = open_fs(where)
    if not is_uri(where) and os.path.isdir(path):  # pyarrow fails on a local name that is not UTF-8: say which
        for entry in os.scandir(os.fsencode(path)):
            try:
                entry.name.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(
                    f"{_shown(os.fsdecode(entry.path))}: a file name that is not UTF-8, which the ray engine "
                    "cannot name in its output; rename it"
                ) from None
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            entries = sorted((e for e in _listing(fs, path) if not e.base_name.startswith(".")), key=lambda e: e.path)
            if not entries:
                raise InputError(f"{where}: an empty folder; put .txt, .jsonl or .parquet files in it")
        elif info.type == pafs.FileType.File:
            entries = [info]
        else:
            raise InputError(f"{where}: no such file or folder")
    except SeqshipError:
        raise
    except (OSError, ValueError) as e:  # ValueError: pyarrow's ArrowInvalid (s3://bucket//key: an empty component)
        raise InputError(f"{where}: cannot list it ({str(e).splitlines()[0][:200]})") from None
    out = []
    for e in entries:
        fmt = SUFFIXES.get(os.path.splitext(e.base_name)[1].lower())
        uri = where if info.type == pafs.FileType.File else member_uri(where, e.base_name)
        if e.type != pafs.FileType.File or fmt is None:
            raise InputError(
                f"{uri}: not a .txt, .jsonl/.ndjson or .parquet file; the ray engine reads only these "
                "(move it out of the input folder, or rename it)"
            )
        out.append({"name": e.base_name, "uri": uri, "format": fmt, "bytes": e.size})
    return out


def byte_ranges(size: int, range_bytes: int = RANGE_BYTES) -> list[tuple[int, int]]:
    """A text file's ranges, planned from its size alone: [start, end) of range_bytes each."""
    return [(s, min(s + range_bytes, size)) for s in range(0, size, range_bytes)]


def first_line_start(f_at, start: int) -> int:
    """Where the first line that starts at or after byte `start` starts. A line starts at byte 0 and after
    each line end ("\\r\\n", "\\n" or a lone "\\r", runtime.textio's rule); `f_at(offset)` gives a reader
    from an offset. Line ends are ASCII bytes, which never occur inside a UTF-8 character, so a range
    boundary inside a character is just a byte inside a line."""
    if start == 0:
        return 0
    # The line that holds byte start - 1 ends at the first line end from there ("\r\n" whole: a boundary
    # between "\r" and "\n" is inside the pair), and the next line starts after it.
    for consumed, _line in raw_lines(f_at(start - 1)):
        return start - 1 + consumed
    return start - 1  # the file ends at start - 1: no line starts in the range


def count_range(f_at, start: int, end: int, size: int) -> tuple[int, int]:
    """(where its first line starts, lines) of the byte range [start, end) of a text file of `size`
    bytes: the lines that start in the range, as runtime.textio's readers make them (blank ones too)."""
    begin, stop = first_line_start(f_at, start), min(end, size)
    if begin >= stop:
        return begin, 0
    f, left, lines, last = f_at(begin), stop - begin, 1, b""  # the line at `begin`, and one after each line end
    while left > 0:
        block = f.read(min(READ_BUFFER, left))
        if not block:
            break
        lines += count_line_ends(block) - (last == b"\r" and block[:1] == b"\n")  # "\r" | "\n": one end
        left, last = left - len(block), block[-1:]
    # A line end whose last byte is the range's last byte starts its next line at or after `end`: not ours.
    return begin, lines - (last in (b"\r", b"\n"))


def plan_file(
    path, fmt: str, rows_per_task: int = RANGE_ROWS, bytes_per_task: int = RANGE_BYTES
) -> list[tuple[int, int, int, int]]:
    """The ranges of one local file as (first line's byte, end, first_row, rows) (text), or (first row
    group, end group, first_row, rows) (Parquet): what the driver plans and the count tasks measure, in one
    process (the cluster's job does the same work spread over its tasks)."""
    import pyarrow.fs as pafs

    fs, p = pafs.LocalFileSystem(), os.path.abspath(path)
    if fmt == "parquet":
        groups = parquet_groups(fs, p)
        return [(a, b, first, rows) for a, b, first, rows in group_ranges(groups, rows_per_task)]
    size = fs.get_file_info(p).size
    with fs.open_input_file(p) as f:
        refuse_binary(path, f.read_at(SNIFF_BYTES, 0), SUFFIX_NAMES[fmt], InputError)
    tasks, first, known = [], 0, -1
    for start, end in byte_ranges(size, bytes_per_task):
        if known >= end:  # no line starts before `known`, which an earlier range found: none in this one
            continue
        begin, rows = count_range(lambda at: _reader(fs, p, at), start, end, size)
        known = begin
        if rows:
            tasks.append((begin, end, first, rows))
        first += rows
    return tasks


def parquet_groups(fs, path: str) -> list[int]:
    """The rows of each row group of a Parquet file (its footer: no row is read)."""
    pq = _pyarrow_parquet(path)
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata
        return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def group_ranges(groups: list[int], rows_per_task: int = RANGE_ROWS) -> list[tuple[int, int, int, int]]:
    """(first group, end group, first_row, rows) ranges of whole row groups, about rows_per_task rows each."""
    out, start, first, rows = [], 0, 0, 0
    for g, n in enumerate(groups):
        rows += n
        if rows >= rows_per_task or g == len(groups) - 1:
            out.append((start, g + 1, first, rows))
            start, first, rows = g + 1, first + rows, 0
    return out


# --- Parquet (pyarrow, imported when a Parquet file is read: the `ray` extra installs it) -------------


def _pyarrow_parquet(path):
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise InputError(
            f"{path}: reading Parquet needs pyarrow, which is not installed; pip install 'seqship[ray]' "
            "(or pyarrow alone), or convert the file to JSON lines or CSV"
        ) from None
    return pq


def check_parquet(path, text_column: str, id_column: str | None, source=None) -> None:
    """The text column must exist and hold strings; an id column, when present, scalars (an InputError).
    source: the file, opened (on any file system), or None to open the local `path`."""
    pq = _pyarrow_parquet(path)
    import pyarrow as pa

    try:
        schema = pq.read_schema(path if source is None else source)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        raise InputError(f"{path}: not a readable Parquet file ({str(e)[:160]})") from None
    if text_column not in schema.names:
        raise InputError(f"{path}: no column {text_column!r} (columns: {schema.names[:20]}); pass --text-column NAME")
    kind = schema.field(text_column).type
    if pa.types.is_dictionary(kind):  # e.g. a pandas categorical: read as its strings
        kind = kind.value_type
    kind = str(kind)
    if kind not in ("string", "large_string"):
        raise InputError(f"{path}: column {text_column!r} holds {kind}, not strings; cast it to string")
    if id_column in schema.names and str(schema.field(id_column).type) not in ID_TYPES:
        raise InputError(
            f"{path}: id column {id_column!r} holds {schema.field(id_column).type}; "
            "ids must be strings, integers, floats or booleans (cast it, or pass another --id-column)"
        )


def parquet_records(
    path,
    text_column: str,
    id_column: str | None,
    row_groups: list[int] | None = None,
    first_row: int = 0,
    source=None,
) -> Iterator[tuple[int, dict]]:
    """(row number, record) per row of a Parquet file (or of its `row_groups`, whose first row is
    `first_row`), checked first (`check_parquet`); a record has 'text' or 'error', and maybe 'id'.
    source: the file, opened (on any file system), or None to open the local `path`."""
    check_parquet(path, text_column, id_column, source)
    pq = _pyarrow_parquet(path)
    pf = pq.ParquetFile(path if source is None else source)
    has_id = id_column is not None and id_column in pf.schema_arrow.names
    columns = [text_column] + ([id_column] if has_id else [])
    n = first_row
    for batch in pf.iter_batches(batch_size=BLOCK_ROWS, columns=columns, row_groups=row_groups):
        texts = batch.column(0).to_pylist()
        ids = batch.column(1).to_pylist() if has_id else [None] * len(texts)
        for text, id_ in zip(texts, ids):
            rec: dict = {}
            if id_ is not None and not valid_id(id_):
                rec["error"] = f"row {n + 1}: {id_column!r} is not finite; ids must be strings or finite numbers"
            elif text is None:
                rec = {"id": id_, "error": f"row {n + 1}: {text_column!r} is null"}
            else:
                rec = {"id": id_, "text": text}
            if rec.get("id", 0) is None:
                del rec["id"]
            yield n, rec
            n += 1


# The text travels as UTF-8 bytes with lone surrogates kept ("surrogatepass"): a Python str may hold one (a
# JSON "\ud800" escape), which Arrow's strings refuse and which local scoring scores like any other text.
# A blank line travels as a row too (blank: true), so that the driver sees every line of the plan arrive
# exactly once; it is counted as skipped and gets no output row.
ROW_SCHEMA_FIELDS = (
    ("file", "int32"),
    ("row", "int64"),
    ("id", "string"),
    ("text", "binary"),
    ("error", "string"),
    ("blank", "bool_"),
)


def _row_table(rows: list[tuple]):
    import pyarrow as pa

    cols = list(zip(*rows)) if rows else [[] for _ in ROW_SCHEMA_FIELDS]
    cols[3] = [None if t is None else t.encode("utf-8", "surrogatepass") for t in cols[3]]
    return pa.table(
        {name: pa.array(col, type=getattr(pa, kind)()) for (name, kind), col in zip(ROW_SCHEMA_FIELDS, cols)}
    )


def read_task_rows(
    file_no: int,
    path: str | bytes,
    fmt: str,
    start: int,
    end: int,
    first_row: int,
    rows: int,
    text_column: str,
    id_column: str | None,
    block_rows: int = BLOCK_ROWS,
) -> Iterator:
    """Blocks (pyarrow tables) of (file, row, id as JSON, text, error, blank) for one range: `rows` lines
    from byte `start` (where a line starts, see count_range) of a text file, or the row groups
    [start, end) of a Parquet file. path: a local path (str or bytes) or a URI."""
    path = os.fsdecode(path)
    fs, p = open_fs(path)
    if fmt == "parquet":
        f = fs.open_input_file(p)
        recs = parquet_records(path, text_column, id_column, list(range(start, end)), first_row, source=f)
    else:
        f = _reader(fs, p, start)
        lines = itertools.islice(line_records(f, fmt, text_column, id_column, first_line=first_row + 1), rows)
        recs = ((n, rec) for n, (_pos, rec) in enumerate(lines, first_row))
    try:
        out: list[tuple] = []
        for n, rec in recs:
            id_json = json_text(rec["id"]) if "id" in rec else None
            text = rec.get("text") if "error" not in rec else None
            out.append((file_no, n, id_json, text, rec.get("error"), rec.get("blank", False)))
            if len(out) >= block_rows:
                yield _row_table(out)
                out = []
        if out:
            yield _row_table(out)
    finally:
        f.close()


# --- scoring ------------------------------------------------------------------------------------------


def bundle_bytes(bundle_dir: Path, manifest: dict) -> dict[str, bytes]:
    """The bundle's files (manifest.json and every file it lists), to ship to the actors."""
    files = manifest.get("files", {})
    sizes = {"manifest.json": MAX_MANIFEST} | {name: int(files[name].get("bytes", 0)) for name in files}
    # each file read no further than the manifest says it is (Predictor.load then checks every byte)
    return {name: read_capped(Path(bundle_dir) / name, size) for name, size in sorted(sizes.items())}


class BundleScorer:
    """A callable class for `ray.data.Dataset.map_batches` (batch_format="pyarrow"): loads the bundle once
    per actor, checked by `Predictor.load` against `expected_sha256`, and scores the `text` column.

    bundle: a bundle folder every node can read, or its files' bytes ({name: bytes}, see `bundle_bytes`),
    which the actor writes to a private temporary folder (its errors name `shown_as`, the user's bundle). Rows that already carry an `error` (unreadable
    input) are passed through; a text that cannot be scored gets its error. Output columns: file, row, id,
    label, score, top_k (list of {label, score}), num_tokens, truncated, provider, error.
    """

    def __init__(
        self,
        bundle,
        expected_sha256: str,
        top_k: int = 1,
        providers="cpu",
        threads: int = 1,
        file_names: list[str] | None = None,
        shown_as: str | None = None,
    ):
        from seqship.runtime.predictor import Predictor

        self.file_names = file_names  # given: also a `line` column, each row's JSON line (see below)
        self._tmp = None
        if type(bundle).__name__ == "ObjectRef":  # shipped through the object store (Ray does not resolve nested refs)
            import ray

            bundle = ray.get(bundle)
        if isinstance(bundle, dict):
            self._tmp = tempfile.TemporaryDirectory(prefix="seqship-bundle-")
            for name, data in bundle.items():
                target = Path(self._tmp.name) / name
                if target.parent != Path(self._tmp.name):  # names come from a manifest: plain file names only
                    raise RayJobError(f"bundle file name {name!r} is not a plain file name")
                target.write_bytes(data)
            bundle = self._tmp.name
        try:
            self.predictor = Predictor.load(
                bundle, providers=providers, expected_sha256=expected_sha256, intra_op_num_threads=threads
            )
        except SeqshipError as e:  # name the user's bundle (shown_as), not this actor's private copy of it
            where = f"on the Ray node {_node()}"
            msg = str(e).replace(str(bundle), shown_as) if shown_as and self._tmp else str(e)
            raise RayJobError(f"{msg} ({where})") from None
        self.top_k = top_k

    def __call__(self, batch):
        import pyarrow as pa

        texts = ["" if t is None else t.decode("utf-8", "surrogatepass") for t in batch["text"].to_pylist()]
        blank = batch["blank"].to_pylist()
        texts = ["." if b else t for t, b in zip(texts, blank)]  # a blank line is not scored: its result is dropped
        upstream = batch["error"].to_pylist()
        files, rows = batch["file"].to_pylist(), batch["row"].to_pylist()
        results: list = []
        start = 0
        for i in range(1, len(texts) + 1):  # a run of consecutive rows of one file: errors name their row, as locally
            if i == len(texts) or files[i] != files[i - 1] or rows[i] != rows[i - 1] + 1:
                results += self.predictor.predict(
                    texts[start:i], top_k=self.top_k, errors="return", first_index=rows[start]
                )
                start = i
        n = len(texts)
        label, score, top, tokens, truncated, provider = (
            [None] * n,
            [None] * n,
            [None] * n,
            [None] * n,
            [None] * n,
            [None] * n,
        )
        error = list(upstream)
        for i, res in enumerate(results):
            if error[i] is not None or blank[i]:
                continue
            if isinstance(res, (InputError, ModelOutputError)):
                error[i] = str(res)
                continue
            label[i], score[i], tokens[i], truncated[i], provider[i] = (
                res.label,
                res.score,
                res.num_tokens,
                res.truncated,
                res.provider,
            )
            top[i] = [{"label": lab, "score": s} for lab, s in res.top_k]
        cols = {
            "label": label,
            "score": score,
            "top_k": top,
            "num_tokens": tokens,
            "truncated": truncated,
            "provider": provider,
            "error": error,
        }
        if self.file_names is not None:
            # JSONL output: the workers write each row's line (JSON encoding is most of the writing, and
            # here it runs in parallel); the driver only checks the rows and appends the lines.
            ids = batch["id"].to_pylist()
            lines = []
            for i in range(n):
                if blank[i]:
                    lines.append("")
                    continue
                line = {"file": self.file_names[files[i]], "index": rows[i]}
                if ids[i] is not None:
                    line["id"] = json.loads(ids[i])
                if error[i] is not None:
                    line["error"] = error[i]
                else:
                    line.update(results[i].to_dict())  # the fields local scoring writes, from the same method
                lines.append(json_line(line))
            return pa.table(
                {
                    "file": batch["file"],
                    "row": batch["row"],
                    "error": pa.array(error, pa.string()),
                    "blank": batch["blank"],
                    "line": pa.array(lines, pa.string()),
                }
            )
        top_k_type = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
        return pa.table(
            {
                "file": batch["file"],
                "row": batch["row"],
                "id": batch["id"],
                "label": pa.array(cols["label"], pa.string()),
                "score": pa.array(cols["score"], pa.float64()),
                "top_k": pa.array(cols["top_k"], top_k_type),
                "num_tokens": pa.array(cols["num_tokens"], pa.int64()),
                "truncated": pa.array(cols["truncated"], pa.bool_()),
                "provider": pa.array(cols["provider"], pa.string()),
                "error": pa.array(cols["error"], pa.string()),
                "blank": batch["blank"],
            }
        )


# --- output -------------------------------------------------------------------------------------------


class RangeScorer(BundleScorer):
    """A callable class for `Dataset.map_batches` over range tasks (see `score_with_ray`): each task's rows
    are read from the input, scored, and written as one part straight to the output; it returns one small
    record per part (its range, rows, bytes and sha256), never the rows."""

    def __init__(
        self,
        bundle,
        expected_sha256: str,
        *,
        output: str,
        output_format: str,
        file_names: list[str],
        text_column: str,
        id_column: str | None,
        top_k: int,
        providers,
        block_rows: int,
        shown_as: str,
    ):
        super().__init__(
            bundle, expected_sha256, top_k, providers, 1, file_names if output_format == "jsonl" else None, shown_as
        )
        self.output, self.fmt, self.names = output, output_format, file_names
        self.text_column, self.id_column, self.block_rows = text_column, id_column, block_rows
        self.fs, self.root = open_fs(output)

    def __call__(self, batch):
        import pyarrow as pa

        return pa.table({"record": [json.dumps(self.score_range(t)) for t in batch.to_pylist()]})

    def score_range(self, t: dict) -> dict:
        import pyarrow.compute as pc

        name = part_name(t["file"], t["start"], self.fmt)
        rec = {k: t[k] for k in ("file", "start", "end", "first_row")}
        rec |= {"name": name, "rows_in": 0, "rows": 0, "skipped": 0, "scored": 0, "errors": 0}
        with tempfile.TemporaryDirectory(prefix="seqship-part-") as tmp:
            local = os.path.join(tmp, name)
            part = _PartFile(local, self.fmt, self.names)
            try:
                blocks = read_task_rows(
                    t["file"],
                    t["uri"],
                    t["format"],
                    t["begin"],
                    t["end"],
                    t["first_row"],
                    t["rows"],
                    self.text_column,
                    self.id_column,
                    self.block_rows,
                )
                for block in itertools.chain(blocks, [None]):
                    if block is None and rec["rows_in"]:
                        break
                    out = BundleScorer.__call__(self, _row_table([]) if block is None else block)
                    blank = out.column("blank")
                    skipped = pc.sum(blank).as_py() or 0
                    if skipped:
                        out = out.filter(pc.invert(blank))
                    ok = out.column("error").null_count
                    rec["rows_in"] += out.num_rows + skipped
                    rec["skipped"] += skipped
                    rec["rows"] += out.num_rows
                    rec["scored"] += ok
                    rec["errors"] += out.num_rows - ok
                    part.write(out)  # an empty range still writes its (empty) part: every range has one
            finally:
                part.close()
            rec["bytes"], rec["sha256"] = os.path.getsize(local), _sha256_file(local)
            _put(self.fs, child(self.root, name), local)
        return rec


def _survey(f: dict, start: int, end: int, text_column: str, id_column: str | None) -> dict:
    """A Ray task: the lines of one byte range of a text file ({begin, rows}), or a Parquet file's row
    groups ({groups}) after checking its columns; {error} for input it cannot read."""
    try:
        fs, p = open_fs(f["uri"])
        if f["format"] == "parquet":
            with fs.open_input_file(p) as src:
                check_parquet(f["uri"], text_column, id_column, source=src)
            return {"groups": parquet_groups(fs, p)}
        if start == 0:
            with fs.open_input_file(p) as src:
                refuse_binary(f["uri"], src.read_at(SNIFF_BYTES, 0), SUFFIX_NAMES[f["format"]], InputError)
        begin, rows = count_range(lambda at: _reader(fs, p, at), start, end, f["bytes"])
        return {"begin": begin, "rows": rows}
    except SeqshipError as e:
        return {"error": str(e)}
    except OSError as e:
        return {"error": f"{f['uri']}: cannot read it ({str(e).splitlines()[0][:200]})"}


# --- output parts -------------------------------------------------------------------------------------


def _shown(path) -> str:
    """A path as text that encodes as UTF-8 (a non-UTF-8 name, allowed on Linux, gets \\x escapes)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _id_text(id_json: str | None) -> str | None:
    """A Parquet part's id: a string id as it is, any other id (a number, a boolean) in its JSON form."""
    if id_json is None:
        return None
    value = json.loads(id_json)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (valid JSON, not UTF-8): its escaped JSON form instead
            return id_json
    return value if isinstance(value, str) or value is None else id_json


def part_name(file_no: int, start: int, fmt: str) -> str:
    """An output part's name, from the range it covers: names sort in input order."""
    return f"part-{file_no:05d}-{start:015d}.{fmt}"


class _PartFile:
    """One output part, written to a local file (then committed whole to the output, see `_commit`)."""

    def __init__(self, path: str, fmt: str, files: list[str]):
        self.path, self.fmt, self.files = path, fmt, files
        self._f = open(path, "w", encoding="utf-8") if fmt == "jsonl" else None
        self._writer = None

    def write(self, table) -> None:
        if self.fmt == "jsonl":
            self._f.write("".join(table.column("line").to_pylist()))
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        file_names = pa.array([self.files[i] for i in table.column("file").to_pylist()], pa.string())
        ids = pa.array([_id_text(v) for v in table.column("id").to_pylist()], pa.string())
        out = table.drop_columns(["file", "row", "id", "blank"])
        out = out.add_column(0, "file", file_names).add_column(1, "index", table.column("row")).add_column(2, "id", ids)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, out.schema)
        self._writer.write_table(out)

    def close(self) -> None:
        for f in (self._f, self._writer):
            if f is not None:
                f.close()
        self._f = self._writer = None


def _temp_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex[:12]}.tmp"


def _put(fs, path: str, source) -> None:
    """Write a file whole under a temporary name beside `path`, then move it over `path` (a rename on a local
    file system, a server-side copy on object storage, where an object appears whole or not at all), so that
    no reader ever sees a part half-written under its final name. source: bytes, or a local file's path."""
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/{_temp_name(name)}"
    try:
        with fs.open_output_stream(tmp) as out:
            if isinstance(source, bytes):
                out.write(source)
            else:
                with open(source, "rb") as f:
                    while chunk := f.read(READ_BUFFER):
                        out.write(chunk)
        fs.move(tmp, path)
    finally:
        try:
            fs.delete_file(tmp)
        except OSError:  # moved: gone already
            pass


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_BUFFER):
            h.update(chunk)
    return h.hexdigest()


def _node() -> str:
    import sys

    ray = sys.modules.get("ray")  # only where Ray already runs: never start it to name a node
    if ray is None or not ray.is_initialized():
        return "(not on Ray)"
    return ray.get_runtime_context().get_node_id()[:12]


# --- the output folder or prefix ----------------------------------------------------------------------


def _read_summary(fs, root: str) -> dict | None:
    """A ray job's manifest in `root`, or None (absent, not JSON, not a ray job's)."""
    try:
        with fs.open_input_stream(child(root, SUMMARY)) as f:
            data = f.read(MAX_SUMMARY_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:  # there, but not readable (credentials, permissions): not "no summary", which misleads
        raise InputError(
            f"{child(root, SUMMARY)}: cannot read it ({str(e).splitlines()[0][:200]}); check the credentials "
            "and permissions for the output (docs/scale.md)"
        ) from None
    try:
        summary = json.loads(data) if len(data) <= MAX_SUMMARY_BYTES else None
        if isinstance(summary, dict) and summary.get("engine") == "ray" and isinstance(summary.get("parts"), list):
            [p["name"] for p in summary["parts"]]  # noqa: B018 - every part has a name
            return summary
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _seqship_entries(fs, root: str, where: str) -> tuple[list, set]:
    """What seqship wrote in an output (the entries it may replace) and the names an earlier manifest
    listed. Refused (an InputError, nothing touched): a file, or a non-empty folder that is not seqship's
    output (one with the marker, or an older output holding only its summary.json and the parts it lists)."""
    import pyarrow.fs as pafs

    try:
        info = fs.get_file_info(root)
    except (OSError, ValueError) as e:  # ValueError: pyarrow's ArrowInvalid (an empty path component)
        raise InputError(f"{where}: cannot use it as the output ({str(e).splitlines()[0][:200]})") from None
    if info.type == pafs.FileType.File:
        raise InputError(f"{where}: exists and is not a folder; --output names a folder with the ray engine")
    entries = _listing(fs, root) if info.type == pafs.FileType.Directory else []
    if not entries:
        return [], set()
    old = _read_summary(fs, root)
    listed = {p["name"] for p in old["parts"]} if old else set()
    marked = any(e.base_name == MARKER and e.type == pafs.FileType.File for e in entries)

    def ours(e) -> bool:
        if e.type != pafs.FileType.File:
            return False  # a folder that carries a part's name is the user's
        n = e.base_name
        if n == SUMMARY:
            return old is not None
        patterned = n == MARKER or PART.fullmatch(n) or PART_TMP.fullmatch(n) or SUMMARY_TMP.fullmatch(n)
        return n in listed or (marked and bool(patterned))

    mine = [e for e in entries if ours(e)]
    if marked and any(e.base_name == SUMMARY for e in entries) and old is None:
        raise InputError(f"{child(where, SUMMARY)}: not a ray job's summary; move it away (seqship writes one there)")
    if not marked and len(mine) < len(entries):
        raise InputError(
            f"{where}: a folder that holds other files; give a new or empty folder "
            "(only a previous `--engine ray` output is written into)"
        )
    return mine, listed


def _start_output(fs, root: str, where: str) -> set:
    """Make the output seqship's for this job: the old manifest removed first (from now until the new one
    is written, the output does not look complete), the marker written. Returns the old manifest's names."""
    import pyarrow.fs as pafs

    mine, listed = _seqship_entries(fs, root, where)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(root, recursive=True)
    if any(e.base_name == SUMMARY for e in mine):
        fs.delete_file(child(root, SUMMARY))
    if not any(e.base_name == MARKER for e in mine):
        note = {"seqship": __version__, "what": "an output of pipeline predict --engine ray; see summary.json"}
        _put(fs, child(root, MARKER), json.dumps(note).encode() + b"\n")
    return listed


def _finish_output(fs, root: str, summary: dict, listed: set) -> None:
    """Remove what seqship left in the output that this job's manifest does not list (parts of an earlier
    job, temporaries of killed tasks; never another file), then write the manifest: last."""
    keep = {p["name"] for p in summary["parts"]}
    for e in _listing(fs, root):
        n = e.base_name
        stale = PART.fullmatch(n) or PART_TMP.fullmatch(n) or SUMMARY_TMP.fullmatch(n) or n in listed
        if stale and n not in keep and n not in (SUMMARY, MARKER) and e.type.name == "File":
            fs.delete_file(e.path)
    _put(fs, child(root, SUMMARY), (json.dumps(summary, indent=1, ensure_ascii=False) + "\n").encode())


def check_output(where) -> dict:
    """Check a ray job's output from its manifest alone: every part there with its bytes, rows and sha256,
    the parts' ranges tiling every input file exactly (so every input row is in exactly one part), and
    nothing else of seqship's beside them. Returns {files, parts, rows_in, rows}; a RayJobError lists the
    problems."""

    where = location(where)
    fs, root = open_fs(where)
    summary = _read_summary(fs, root)
    if summary is None:
        raise RayJobError(
            f"{where}: no summary.json of a ray job, so the output is not complete (a job that failed or still "
            "runs leaves none); run the job again"
        )
    try:
        return _check(fs, root, where, summary)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RayJobError(
            f"{child(where, SUMMARY)}: not a manifest this seqship can check ({type(e).__name__}: {e}); an older "
            "seqship's ray output lists no checksums: score it again to check it"
        ) from None


def _check(fs, root: str, where: str, summary: dict) -> dict:
    import pyarrow.parquet as pq

    problems: list[str] = []
    present = {e.base_name: e for e in _listing(fs, root)}
    files, parts = summary["files"], summary["parts"]
    for p in parts:
        e = present.get(p["name"])
        if e is None or e.type.name != "File":
            problems.append(f"{p['name']}: missing")
            continue
        h, lines = hashlib.sha256(), 0
        with fs.open_input_stream(e.path) as f:
            while chunk := f.read(READ_BUFFER):
                h.update(chunk)
                lines += chunk.count(b"\n")
        if h.hexdigest() != p["sha256"] or e.size != p["bytes"]:
            problems.append(f"{p['name']}: its bytes are not the ones the job wrote (sha256 or size differs)")
            continue
        if p["name"].endswith(".parquet"):
            with fs.open_input_file(e.path) as f:
                lines = pq.ParquetFile(f).metadata.num_rows
        if lines != p["rows"] or p["rows"] + p["skipped"] != p["rows_in"]:
            problems.append(f"{p['name']}: {lines} rows, the manifest says {p['rows']}")
    for i, f in enumerate(files):  # the ranges tile the file: no byte (or row group) twice, none left out
        mine = sorted((p for p in parts if p["file"] == i), key=lambda p: p["start"])
        span = f["row_groups"] if f["format"] == "parquet" else f["bytes"]
        at, row = 0, 0
        for p in mine:
            if p["start"] != at or p["first_row"] != row or p["end"] <= p["start"]:
                problems.append(f"{f['name']}: range {p['start']}-{p['end']} of {p['name']} does not follow {at}")
            at, row = p["end"], row + p["rows_in"]
        if at != span or row != f["rows"]:
            problems.append(f"{f['name']}: its parts cover {at} of {span} and {row} of {f['rows']} rows")
    if {p["file"] for p in parts} - set(range(len(files))):
        problems.append("a part names an input file the manifest does not list")
    listed = {p["name"] for p in parts}
    for n in sorted(present):
        if (PART.fullmatch(n) or PART_TMP.fullmatch(n) or SUMMARY_TMP.fullmatch(n)) and n not in listed:
            problems.append(f"{n}: a part the manifest does not list")
    rows = sum(p["rows"] for p in parts)
    if rows != summary["rows_out"] or sum(p["rows_in"] for p in parts) != summary["rows_in"]:
        problems.append(f"the parts hold {rows} rows, the manifest's total is {summary['rows_out']}")
    if problems:
        raise RayJobError(f"{where}: {len(problems)} problem(s): " + "; ".join(problems[:10]))
    return {"files": len(files), "parts": len(parts), "rows_in": summary["rows_in"], "rows": rows}


# --- the job ------------------------------------------------------------------------------------------


def _ray():
    try:
        import ray
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("ray", name="ray") from e
    return ray


def _reachable(address: str, timeout: float = 15.0) -> None:
    """Refuse an address seqship cannot use. A cluster address that no one answers makes ray.init wait for
    ever: try a TCP connection first."""
    import socket

    scheme, _, rest = address.strip().rpartition("://")
    if scheme.lower() == "ray":
        # Measured with Ray 2.60: Ray Data fails inside Ray Client ("'Worker' object has no attribute
        # 'core_worker'"), and the client needs the cluster's auth token too. Say what works instead.
        raise RayJobError(
            f"--ray-address {address!r}: Ray Client (ray://) addresses are not supported, as Ray Data "
            "does not run over Ray Client; run the command on a node of the cluster with "
            "--ray-address HEAD:6379 (the head's GCS port)"
        )
    rest = rest.split("/", 1)[0]
    if rest in ("", "auto", "local"):
        return  # Ray finds these itself, and fails fast where there is none
    if rest.startswith("["):  # [IPv6]:port
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    else:  # a bare host name, or a bare IPv6 address
        host, port = rest, ""
    port = port or "6379"  # the GCS's default port
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise RayJobError(
            f"--ray-address {address!r}: the port {port!r} is not a port number (1-65535); "
            "give HEAD:6379 (the head's GCS port)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayJobError(
            f"cannot reach the Ray cluster at {address!r} ({e.strerror or e}); check --ray-address "
            "(HEAD:6379, the head's GCS port) and that `ray status` works on the head node"
        ) from None


def start_ray(address: str | None, workers: int | None):
    """Connect to the cluster at `address`, or start a local Ray instance; a RayJobError if neither works."""
    ray = _ray()
    # No usage telemetry unless the user turned it on: seqship does not report on its users' jobs. This
    # also stops Ray Data's telemetry threads, which kept querying a Prometheus that is not there and
    # logging tracebacks after the job; on Python 3.11 a traceback formatted in one thread while another
    # parses source (torch.jit.script) can fail that parse ("AST constructor recursion depth mismatch").
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    if ray.is_initialized():
        return ray
    kwargs = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    try:
        if address:
            address = address.strip()
            _reachable(address)
            ray.init(address=address, **kwargs)
        else:
            # "local": always a new instance of our own, even where a `ray start` cluster runs on this machine
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, workers or 1), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise RayJobError(
            f"cannot start or reach {where} ({str(e).splitlines()[0][:200]}); "
            "check --ray-address (HEAD:6379, the head's GCS port) and that `ray status` works there"
        ) from None
    return ray


def _overlap(src: str, dst: str) -> bool:
    """Whether the output is the input, holds it or is inside it: by what the two name (a file:// URI is a local
    path; a query such as ?endpoint_override= is not part of the location), not by their spelling."""
    (fs_a, a), (fs_b, b) = open_fs(src), open_fs(dst)
    if fs_a.type_name != fs_b.type_name:
        return False
    if fs_a.type_name == "local":
        a, b = Path(a).resolve(), Path(b).resolve()
        return a == b or a in b.parents or b in a.parents
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def _seqship_error(e: BaseException) -> SeqshipError | None:
    """The SeqshipError a Ray error carries (raised in a task or an actor), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, SeqshipError):
            return e
        e = getattr(e, "cause", None) or e.__cause__
    return None


def score_with_ray(
    bundle_dir: str | os.PathLike,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    ray_address: str | None = None,
    workers: int | None = None,
    output_format: str = "jsonl",
    top_k: int = 1,
    text_column: str = "text",
    id_column: str | None = "id",
    expected_sha256: str | None = None,
    providers="cpu",
    batch_size: int = BLOCK_ROWS,
    range_bytes: int = RANGE_BYTES,
    range_rows: int = RANGE_ROWS,
    on_progress: Callable[[int, int], None] | None = None,
) -> RaySummary:
    """Score every row of input_path (a file, or a folder or prefix of .txt/.jsonl/.parquet files; a local
    path or a URI) on Ray into output_dir (a folder or prefix): one part per input range, in input order,
    and summary.json, written last.

    workers: scoring actors, one CPU each [default: the cluster's CPUs]. batch_size: rows scored at once.
    on_progress(rows_done, rows_in). Raises RayJobError when the job fails or its parts would not hold every
    input row exactly once; the output then has no summary.json.
    """
    from seqship.runtime.predictor import Predictor

    started = time.perf_counter()
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"output format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"--workers must be an integer >= 1, got {workers!r}")
    src, dst = location(input_path), location(output_dir)
    files = input_files(src)
    if not is_uri(dst) and os.path.islink(dst):
        raise InputError(f"{dst}: a symlink; --output names a folder of its own with the ray engine")
    if _overlap(src, dst):
        raise InputError(
            f"{dst}: the output folder must not be the input, or hold it, or be inside it; give a folder "
            "beside the input"
        )
    out_fs, out_root = open_fs(dst)
    _seqship_entries(out_fs, out_root, dst)  # refuse an output that is not ours before any work

    predictor = Predictor.load(bundle_dir, providers="cpu", expected_sha256=expected_sha256, intra_op_num_threads=1)
    if not 1 <= top_k <= len(predictor.labels):
        raise InputError(
            f"--top-k {top_k}: the bundle has {len(predictor.labels)} labels; pass 1 to {len(predictor.labels)}"
        )
    shipped = bundle_bytes(Path(bundle_dir), predictor.bundle.manifest)
    digest = predictor.digest
    del predictor
    summary = RaySummary(
        ray_address=ray_address,
        bundle=_shown(bundle_dir),
        bundle_sha256=digest,
        input=src,
        output_format=output_format,
        files=[{"name": f["name"], "uri": f["uri"], "format": f["format"], "bytes": f["bytes"]} for f in files],
    )
    if all(f["bytes"] == 0 for f in files):  # empty files only: an empty output, without starting Ray
        for f in summary.files:
            f.update({"rows": 0, "row_groups": 0} if f["format"] == "parquet" else {"rows": 0})
        listed = _start_output(out_fs, out_root, dst)
        summary.seconds = {"total": round(time.perf_counter() - started, 3), "startup": 0.0, "scoring": 0.0}
        summary.finished_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _finish_output(out_fs, out_root, asdict(summary), listed)
        return summary

    ray = start_ray(ray_address, workers)
    from ray.data import DataContext

    ctx, ray_log = DataContext.get_current(), logging.getLogger("ray.data")
    before = (ctx.enable_progress_bars, ray_log.level)  # restored at the end
    ctx.enable_progress_bars = False  # the caller shows progress (on_progress)
    ray_log.setLevel(logging.CRITICAL)  # its tracebacks and chatter: seqship says what failed, in one line
    try:
        tasks = _plan(ray, files, summary.files, range_bytes, range_rows, text_column, id_column)
        summary.rows_in = sum(f["rows"] for f in summary.files)
        cpus = float(ray.cluster_resources().get("CPU", 0))
        n_workers = workers or max(1, int(cpus))
        if n_workers > cpus:  # an autoscaling cluster may add nodes for them; a fixed one never will
            log.warning(
                "%d workers asked for, but the cluster has %g CPUs now: the job waits until it has %d "
                "(pass --workers %d or fewer on a cluster that does not scale up)",
                n_workers,
                cpus,
                n_workers,
                int(cpus),
            )
        summary.workers, summary.cluster_cpus, summary.ray = n_workers, cpus, ray.__version__
        summary.nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        listed = _start_output(out_fs, out_root, dst)
        ray_started = time.perf_counter()
        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))  # a block per range
        ds = ds.map_batches(
            RangeScorer,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=n_workers),
            fn_constructor_kwargs={
                "bundle": ray.put(shipped),
                "expected_sha256": digest,
                "output": dst,
                "output_format": output_format,
                "file_names": [f["name"] for f in files],
                "text_column": text_column,
                "id_column": id_column,
                "top_k": top_k,
                "providers": providers,
                "block_rows": batch_size,
                "shown_as": _shown(bundle_dir),
            },
        )
        records: dict[str, dict] = {}
        done_rows = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for text in batch.column("record").to_pylist():
                rec = json.loads(text)
                if rec["name"] not in records:  # a retried range: the same name, its part replaced, counted once
                    done_rows += rec["rows_in"]
                records[rec["name"]] = rec
                if on_progress:
                    on_progress(done_rows, summary.rows_in)
        summary.parts = _exactly_once(tasks, records, summary.files, output_format)
        summary.rows_out = sum(p["rows"] for p in summary.parts)
        summary.skipped = sum(p["skipped"] for p in summary.parts)
        summary.scored = sum(p["scored"] for p in summary.parts)
        summary.errors = sum(p["errors"] for p in summary.parts)
        done = time.perf_counter()
        summary.seconds = {
            "total": round(done - started, 3),
            "startup": round(ray_started - started, 3),
            "scoring": round(done - ray_started, 3),
        }
        summary.texts_per_second = round(summary.rows_in / max(done - ray_started, 1e-9), 1)
        summary.finished_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _finish_output(out_fs, out_root, asdict(summary), listed)
        return summary
    except ray.exceptions.RayError as e:
        cause = _seqship_error(e)
        if cause is not None:
            raise RayJobError(str(cause)) from None
        # An actor's death carries its error as text only ("...seqship.runtime.ray.RayJobError: the message")
        said = re.findall(r"seqship\.runtime\.[\w.]*Error: (.+)", str(e))
        if said:
            raise RayJobError(said[-1].strip()[:1000]) from None
        raise RayJobError(f"the Ray job failed: {str(e).strip().splitlines()[-1][:300]}") from None
    except OSError as e:
        raise RayJobError(f"{dst}: cannot write there ({str(e).splitlines()[0][:200]})") from None
    finally:
        ctx.enable_progress_bars = before[0]
        ray_log.setLevel(before[1])


def _plan(ray, files: list[dict], shown: list[dict], range_bytes: int, range_rows: int, text_column, id_column):
    """The scoring tasks, one per range. The driver plans byte ranges from the files' sizes; Ray tasks count
    each range's lines (and read Parquet footers), and the driver numbers the rows from their counts. A
    count that names an unreadable input is an InputError. `shown` (the summary's files) gets rows (and
    row_groups)."""
    survey = ray.remote(num_cpus=1, max_retries=5)(_survey)
    asks = []  # (file index, start, end, ref)
    for i, f in enumerate(files):
        spans = [(0, 0)] if f["format"] == "parquet" else byte_ranges(f["bytes"], range_bytes)
        asks += [(i, s, e, survey.remote(f, s, e, text_column, id_column)) for s, e in spans]
    answers = ray.get([a[3] for a in asks])
    for answer in answers:
        if "error" in answer:
            raise InputError(answer["error"])
    tasks, first = [], [0] * len(files)
    for (i, s, e, _), answer in zip(asks, answers):
        f = files[i]
        if f["format"] == "parquet":
            shown[i]["row_groups"] = len(answer["groups"])
            for a, b, row, rows in group_ranges(answer["groups"], range_rows):
                tasks.append(
                    {
                        "file": i,
                        "uri": f["uri"],
                        "format": "parquet",
                        "start": a,
                        "end": b,
                        "begin": a,
                        "first_row": row,
                        "rows": rows,
                    }
                )
                first[i] = row + rows
            continue
        tasks.append(
            {
                "file": i,
                "uri": f["uri"],
                "format": f["format"],
                "start": s,
                "end": e,
                "begin": answer["begin"],
                "first_row": first[i],
                "rows": answer["rows"],
            }
        )
        first[i] += answer["rows"]
    for i, f in enumerate(shown):
        f["rows"] = first[i]
    return tasks


def _exactly_once(tasks: list[dict], records: dict[str, dict], files: list[dict], fmt: str) -> list[dict]:
    """The parts in input order, checked: one per planned range, each with the lines counted for it."""
    parts = []
    for t in tasks:
        name = part_name(t["file"], t["start"], fmt)
        rec = records.pop(name, None)
        if rec is None or rec["rows_in"] != t["rows"]:
            got = "no part" if rec is None else f"{rec['rows_in']} rows"
            raise RayJobError(
                f"{files[t['file']]['name']}: the range from {t['start']} held {t['rows']} rows and {got} came "
                "back: the output would not hold every input row exactly once, so no summary.json was written"
            )
        parts.append(rec)
    if records:
        raise RayJobError(f"parts no range was planned for came back ({sorted(records)[:3]}): no summary.json written")
    return parts

"""Bulk scoring on a Ray cluster (Ray Data): `pipeline predict --engine ray`.

The work is Ray Data's: read tasks turn each input file into rows (through the runtime's own readers, so
a row that cannot be read gets the same error line as local scoring does), a pool of actors scores them,
and Ray retries what a dead worker or node took with it. Each actor is a `BundleScorer`: it receives the
bundle's bytes through Ray's object store (no shared file system needed), opens them with
`Predictor.load` against the bundle digest the driver verified, and scores batches with
`Predictor.predict`: the same code path as `pipeline predict`, so the same answers.

The driver receives the scored rows in input order, checks that every input row arrives exactly once
(no row lost, none twice: a fault that broke that would fail the job instead of writing a wrong output),
and writes part files into a hidden temporary folder that becomes the output folder, with its
summary.json, only when whole: a half-finished job never looks finished.

Ray is an optional extra (`pip install -e '.[ray]'`); `runtime/` never imports it. On a real cluster,
every node needs seqship installed (the same version) and read access to the input files; the bundle
travels with the job.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from seqship.runtime import __version__
from seqship.runtime.bundle import MAX_MANIFEST
from seqship.runtime.errors import InputError, ModelOutputError, SeqshipError
from seqship.runtime.fsio import (
    FileTooLargeError,
    describe_os_error,
    read_capped,
    replace_dir,
    sweep_partials,
    temp_dir,
    write_json_atomic,
)
from seqship.runtime.jsonio import json_line, json_text
from seqship.runtime.textio import (
    SNIFF_BYTES,
    count_line_ends,
    last_line_end,
    line_records,
    refuse_binary,
    valid_id,
)

log = logging.getLogger(__name__)

# Input files in a folder, by suffix; others are refused (never silently skipped).
SUFFIXES = {".txt": "lines", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
SUFFIX_NAMES = {"lines": "one-text-per-line (.txt)", "jsonl": "JSON lines"}
OUTPUT_FORMATS = ("jsonl", "parquet")
SUMMARY = "summary.json"
BLOCK_ROWS = 4096  # rows per block a read task emits (and rows per batch read of a Parquet file)
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
MAX_SUMMARY_BYTES = 16 << 20  # a summary.json is read to tell a previous output folder, at most this much


class RayJobError(SeqshipError):
    """The Ray job could not run, or its output did not hold every input row exactly once."""


@dataclass
class RaySummary:
    """What a Ray bulk job did; written to <output>/summary.json."""

    engine: str = "ray"
    ray_address: str | None = None
    nodes: int = 0
    cluster_cpus: float = 0.0
    workers: int = 0
    bundle: str = ""
    bundle_sha256: str = ""
    input: str = ""
    files: list = field(default_factory=list)
    output_format: str = "jsonl"
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


# --- inputs -------------------------------------------------------------------------------------------


def input_files(path: Path) -> list[tuple[Path, str]]:
    """(file, format) for a file, or for every file of a folder (sorted); an unknown suffix is an InputError."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        if not files:
            raise InputError(f"{path}: an empty folder; put .txt, .jsonl or .parquet files in it")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"{path}: no such file or folder")
    out = []
    for p in files:
        fmt = SUFFIXES.get(p.suffix.lower())
        if p.is_dir() or fmt is None:
            raise InputError(
                f"{p}: not a .txt, .jsonl/.ndjson or .parquet file; the ray engine reads only these "
                "(move it out of the input folder, or rename it)"
            )
        out.append((p, fmt))
    return out


def plan_file(
    path: Path, fmt: str, rows_per_task: int = 10_000, bytes_per_task: int = 4 << 20
) -> list[tuple[int, int, int, int]]:
    """The read tasks of one file, as (start, end, first_row, rows): byte ranges that end at line ends (a
    text file), or row-group ranges (Parquet), of about rows_per_task rows or bytes_per_task bytes each, so
    that one large file is read, and scored, in parallel. The rows are counted as the readers will make
    them (a line of runtime.textio's line_records, a Parquet row), and the driver checks the output against them."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        tasks, start, first, rows = [], 0, 0, 0
        for g in range(meta.num_row_groups):
            rows += meta.row_group(g).num_rows
            if rows >= rows_per_task or g == meta.num_row_groups - 1:
                tasks.append((start, g + 1, first, rows))
                start, first, rows = g + 1, first + rows, 0
        return tasks
    # Line ends as runtime.textio's readers split them: "\r\n", "\n" or a lone "\r". A "\r" that ends one
    # block and a "\n" that starts the next are one line end, and a task never ends between the two.
    tasks, start, first, lines, pos, last = [], 0, 0, 0, 0, b"\n"
    with open(path, "rb") as f:
        refuse_binary(path, f.read(SNIFF_BYTES), SUFFIX_NAMES[fmt], InputError)
        f.seek(0)
        while block := f.read(1 << 16):
            pair = last == b"\r" and block.startswith(b"\n")  # counted once, with the block before
            lines += count_line_ends(block) - pair
            pos += len(block)
            cut = last_line_end(block)
            if cut and (lines - first >= rows_per_task or pos - start >= bytes_per_task):
                at = pos - len(block) + cut
                whole = lines - count_line_ends(block[cut:])  # lines that end at or before the cut
                tasks.append((start, at, first, whole - first))
                start, first = at, whole
            last = block[-1:]
    lines += last not in (b"\n", b"\r")  # a last line without a line end is a row too
    if lines > first:
        tasks.append((start, pos, first, lines - first))
    return tasks


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


def check_parquet(path, text_column: str, id_column: str | None) -> None:
    """The text column must exist and hold strings; an id column, when present, scalars (an InputError)."""
    pq = _pyarrow_parquet(path)
    import pyarrow as pa

    try:
        schema = pq.read_schema(path)
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
    path, text_column: str, id_column: str | None, row_groups: list[int] | None = None, first_row: int = 0
) -> Iterator[tuple[int, dict]]:
    """(row number, record) per row of a Parquet file (or of its `row_groups`, whose first row is
    `first_row`), checked first (`check_parquet`); a record has 'text' or 'error', and maybe 'id'."""
    check_parquet(path, text_column, id_column)
    pq = _pyarrow_parquet(path)
    pf = pq.ParquetFile(path)
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
) -> Iterator:
    """Blocks (pyarrow tables) of (file, row, id as JSON, text, error) for one read task (see plan_file). The
    path travels as bytes: a file name that is not UTF-8 is a valid path, and not a valid Arrow string."""
    path = os.fsdecode(path)
    out: list[tuple] = []
    if fmt == "parquet":
        recs = parquet_records(path, text_column, id_column, list(range(start, end)), first_row)
    else:
        f = open(path, "rb")  # closed below, when this generator ends or is closed
        f.seek(start)
        lines = itertools.islice(line_records(f, fmt, text_column, id_column, first_line=first_row + 1), rows)
        recs = ((n, rec) for n, (_pos, rec) in enumerate(lines, first_row))
    try:
        for n, rec in recs:
            id_json = json_text(rec["id"]) if "id" in rec else None
            text = rec.get("text") if "error" not in rec else None
            out.append((file_no, n, id_json, text, rec.get("error"), rec.get("blank", False)))
            if len(out) >= BLOCK_ROWS:
                yield _row_table(out)
                out = []
    finally:
        if fmt != "parquet":
            f.close()
    if out:
        yield _row_table(out)


def _read_batch(batch, text_column: str, id_column: str | None) -> Iterator:
    """map_batches over the table of read tasks (one per batch): that task's rows."""
    for task in batch.to_pylist():
        yield from read_task_rows(**task, text_column=text_column, id_column=id_column)


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
    which the actor writes to a private temporary folder. Rows that already carry an `error` (unreadable
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
        self.predictor = Predictor.load(
            bundle, providers=providers, expected_sha256=expected_sha256, intra_op_num_threads=threads
        )
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


class _Parts:
    """Part files of at most `part_rows` rows each, in the temporary output folder."""

    def __init__(self, folder: Path, fmt: str, part_rows: int, files: list[str]):
        self.folder, self.fmt, self.part_rows, self.files = folder, fmt, part_rows, files
        self.parts: list[dict] = []
        self._f = None
        self._writer = None
        self._rows = 0

    def _open(self) -> None:
        name = f"part-{len(self.parts):05d}.{self.fmt}"
        self.parts.append({"name": name, "rows": 0})
        if self.fmt == "jsonl":
            self._f = open(self.folder / name, "w", encoding="utf-8")
        self._rows = 0

    def _close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self, table) -> None:
        start = 0
        while start < table.num_rows:
            if not self.parts or self._rows >= self.part_rows:
                self._close()
                self._open()
            take = min(self.part_rows - self._rows, table.num_rows - start)
            piece = table.slice(start, take)
            if self.fmt == "jsonl":
                self._write_jsonl(piece)
            else:
                self._write_parquet(piece)
            self._rows += take
            self.parts[-1]["rows"] += take
            start += take

    def _write_jsonl(self, table) -> None:
        self._f.write("".join(table.column("line").to_pylist()))

    def _write_parquet(self, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        file_names = pa.array([self.files[i] for i in table.column("file").to_pylist()], pa.string())
        ids = pa.array([_id_text(v) for v in table.column("id").to_pylist()], pa.string())
        out = table.drop_columns(["file", "row", "id", "blank"])
        out = out.add_column(0, "file", file_names).add_column(1, "index", table.column("row")).add_column(2, "id", ids)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.folder / self.parts[-1]["name"], out.schema)
        self._writer.write_table(out)

    def close(self) -> None:
        self._close()


# --- the job ------------------------------------------------------------------------------------------


def _ray():
    try:
        import ray
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("ray", name="ray") from e
    return ray


def is_ray_output(folder: Path) -> bool:
    """Whether a folder is a previous ray job's output, and nothing else: its summary.json says so, and it
    holds only that summary and the part files it lists. Only such a folder is replaced."""
    try:
        summary = json.loads(read_capped(folder / SUMMARY, MAX_SUMMARY_BYTES))
        if not isinstance(summary, dict) or summary.get("engine") != "ray":
            return False
        parts = {p["name"] for p in summary["parts"]}
        entries = list(folder.iterdir())
    except (OSError, ValueError, KeyError, TypeError, FileTooLargeError):
        return False
    # Regular files only: a subfolder or a link that merely carries a part's name is the user's, not ours.
    return all((p.name in parts or p.name == SUMMARY) and p.is_file() and not p.is_symlink() for p in entries)


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
    batch_size: int = 4096,
    part_rows: int = 1_000_000,
    on_progress: Callable[[int, int], None] | None = None,
) -> RaySummary:
    """Score every row of input_path (a file, or a folder of .txt/.jsonl/.parquet files) on Ray into
    output_dir: part files in input order (file by file, row by row) and summary.json.

    workers: scoring actors, one CPU each [default: the cluster's CPUs]. on_progress(rows_done, rows_in).
    Raises RayJobError when the job fails or its output would not hold every input row exactly once; the
    output folder then is as it was.
    """
    from seqship.runtime.predictor import Predictor

    started = time.perf_counter()
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"output format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"--workers must be an integer >= 1, got {workers!r}")
    src, dst = Path(input_path), Path(output_dir)
    files = input_files(src)
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise InputError(
            f"{dst}: exists and is not a folder (or is a symlink); --output names a folder with the ray engine"
        )
    # by what the paths are, not how they are spelled: `./in/`, `in/../in`, a symlinked folder on the way
    src_resolved, dst_resolved = src.resolve(), dst.resolve()
    if dst_resolved == src_resolved or src_resolved in dst_resolved.parents or dst_resolved in src_resolved.parents:
        raise InputError(
            f"{dst}: the output folder must not be the input, or hold it, or be inside it (it is replaced "
            "whole when the job ends); give a folder beside the input"
        )
    if dst.is_dir() and any(dst.iterdir()) and not is_ray_output(dst):
        raise InputError(
            f"{dst}: a folder that holds other files; give a new or empty folder "
            "(only a previous `--engine ray` output folder is replaced)"
        )
    for p, fmt in files:
        if fmt == "parquet":
            check_parquet(p, text_column, id_column)
    plans = [plan_file(p, fmt) for p, fmt in files]
    counts = [sum(t[3] for t in plan) for plan in plans]
    # Names as text that encodes: a file name that is not UTF-8 (allowed on Linux) is shown with \x escapes
    # in the output's `file` column and the summary, instead of failing the job at its end.
    names = [_shown(p.name) for p, _ in files]
    rows_in = sum(counts)
    tasks = [
        {
            "file_no": i,
            "path": os.fsencode(p.resolve()),
            "fmt": fmt,
            "start": t[0],
            "end": t[1],
            "first_row": t[2],
            "rows": t[3],
        }
        for i, ((p, fmt), plan) in enumerate(zip(files, plans))
        for t in plan
    ]

    predictor = Predictor.load(bundle_dir, providers="cpu", expected_sha256=expected_sha256, intra_op_num_threads=1)
    if not 1 <= top_k <= len(predictor.labels):
        raise InputError(
            f"--top-k {top_k}: the bundle has {len(predictor.labels)} labels; pass 1 to {len(predictor.labels)}"
        )
    shipped = bundle_bytes(Path(bundle_dir), predictor.bundle.manifest)
    digest = predictor.digest
    del predictor
    if not tasks:  # empty files only: an empty output, as local scoring writes, without starting Ray
        summary = RaySummary(
            ray_address=ray_address,
            bundle=_shown(bundle_dir),
            bundle_sha256=digest,
            input=_shown(src),
            output_format=output_format,
            files=[{"name": n, "format": f, "rows": 0} for n, (_, f) in zip(names, files)],
            seconds={"total": round(time.perf_counter() - started, 3), "startup": 0.0, "scoring": 0.0},
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        tmp = temp_dir(dst.parent if str(dst.parent) else Path("."), dst.name)
        try:
            write_json_atomic(tmp / SUMMARY, asdict(summary))
            replace_dir(tmp, dst)
        finally:
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        return summary

    ray = start_ray(ray_address, workers)
    import pyarrow as pa
    import pyarrow.compute as pc
    from ray.data import DataContext

    ctx, ray_log = DataContext.get_current(), logging.getLogger("ray.data")
    before = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ray_log.level)  # restored at the end
    ctx.execution_options.preserve_order = True  # rows arrive in input order: output parts are deterministic
    ctx.enable_progress_bars = False  # the caller shows progress (on_progress)
    ray_log.setLevel(logging.ERROR)  # its per-dataset chatter, not ours to print
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
    ray_started = time.perf_counter()

    ds = ray.data.from_arrow([pa.Table.from_pylist([t]) for t in tasks])  # a block per read task
    ds = ds.map_batches(
        _read_batch,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=0,
        fn_kwargs={"text_column": text_column, "id_column": id_column},
    )
    ds = ds.map_batches(
        BundleScorer,
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=n_workers),
        fn_constructor_kwargs={
            "bundle": ray.put(shipped),
            "expected_sha256": digest,
            "top_k": top_k,
            "providers": providers,
            "file_names": names if output_format == "jsonl" else None,
        },
    )

    sweep_partials(dst.parent if str(dst.parent) else Path("."))
    tmp = temp_dir(dst.parent if str(dst.parent) else Path("."), dst.name)
    summary = RaySummary(
        ray_address=ray_address,
        workers=n_workers,
        bundle=_shown(bundle_dir),
        bundle_sha256=digest,
        input=_shown(src),
        output_format=output_format,
        rows_in=rows_in,
        ray=ray.__version__,
        nodes=sum(1 for n in ray.nodes() if n.get("Alive")),
        cluster_cpus=cpus,
        files=[{"name": n, "format": f, "rows": c} for n, (_, f), c in zip(names, files, counts)],
    )
    parts = _Parts(tmp, output_format, part_rows, names)
    try:
        expect_file, expect_row = 0, 0
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            fcol, rcol = table.column("file").to_pylist(), table.column("row").to_pylist()
            for f, r in zip(fcol, rcol):  # input order, every row exactly once
                while expect_file < len(files) and expect_row >= counts[expect_file]:
                    expect_file, expect_row = expect_file + 1, 0
                if (f, r) != (expect_file, expect_row):
                    raise RayJobError(
                        f"row {r} of {names[f]} arrived where row {expect_row} of "
                        f"{names[min(expect_file, len(names) - 1)]} was expected: the output would not "
                        "hold every input row exactly once, so none was written"
                    )
                expect_row += 1
            blank = table.column("blank")
            skipped = pc.sum(blank).as_py() or 0
            if skipped:  # blank lines: seen arrive, counted, not written
                table = table.filter(pc.invert(blank))
            parts.write(table)
            ok = table.column("error").null_count
            summary.skipped += skipped
            summary.rows_out += table.num_rows
            summary.scored += ok
            summary.errors += table.num_rows - ok
            if on_progress:
                on_progress(summary.rows_out + summary.skipped, rows_in)
        parts.close()
        log.debug("ray data stats:\n%s", ds.stats())
        if summary.rows_out + summary.skipped != rows_in:
            raise RayJobError(
                f"{summary.rows_out} rows and {summary.skipped} blank lines came back for {rows_in} input rows: "
                "nothing was written"
            )
        done = time.perf_counter()
        summary.parts = parts.parts
        summary.seconds = {
            "total": round(done - started, 3),
            "startup": round(ray_started - started, 3),
            "scoring": round(done - ray_started, 3),
        }
        summary.texts_per_second = round(rows_in / max(done - ray_started, 1e-9), 1)
        summary.finished_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(tmp / SUMMARY, asdict(summary))
        replace_dir(tmp, dst)
    except OSError as e:
        raise RayJobError(describe_os_error(getattr(e, "filename", None) or tmp, e, "write")) from None
    except ray.exceptions.RayError as e:
        raise RayJobError(f"the Ray job failed: {str(e).strip().splitlines()[-1][:300]}") from None
    finally:
        parts.close()
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = before[:2]
        ray_log.setLevel(before[2])
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return summary

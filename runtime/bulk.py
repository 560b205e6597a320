"""Bulk scoring of a file: streamed in chunks (memory does not grow with the input), written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from runtime.errors import InputError, ModelOutputError, SeqshipError
from runtime.predictor import Predictor

FORMATS = ("auto", "jsonl", "lines")


@dataclass
class BulkStats:
    """What a bulk run did."""

    texts: int = 0  # lines read (blank lines included: each input line gets one output line)
    scored: int = 0
    errors: int = 0  # lines answered with {"error": ...}


def json_line(obj: dict) -> str:
    """One JSON line, UTF-8 where possible; a lone surrogate (valid in a Python str, not in UTF-8) is
    written as a JSON escape instead of failing the whole run."""
    line = json.dumps(obj, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(obj, ensure_ascii=True)
    return line + "\n"


def _records(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    """(bytes read so far, record) per input line; a record has 'text' and, for JSONL, maybe 'id'."""
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "lines"
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            pos = f.tell()
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\n").rstrip("\r")
            except UnicodeDecodeError as e:
                yield pos, {"error": f"line {n}: not UTF-8 ({e.reason})"}
                continue
            if fmt == "lines":
                yield pos, {"text": line}
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield pos, {"error": f"line {n}: not JSON ({e.msg})"}
                continue
            if isinstance(obj, str):
                yield pos, {"text": obj}
            elif isinstance(obj, dict) and "text" in obj:
                yield pos, {"text": obj["text"], **({"id": obj["id"]} if "id" in obj else {})}
            else:
                yield pos, {"error": f"line {n}: expected a JSON string or an object with a 'text' key"}


def score_file(
    predictor: Predictor,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    fmt: str = "auto",
    top_k: int = 1,
    chunk_size: int = 1024,
    on_progress: Callable[[int, int], None] | None = None,
) -> BulkStats:
    """Score every line of input_path into output_path (JSON lines, same order, one per input line).

    Lines that cannot be scored get {"index", "error"} and do not stop the run. The output is written
    to a temporary file beside output_path and renamed over it only when complete, so a killed run
    never leaves a half-written file under the final name. on_progress(bytes_read, texts_done).
    """
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {fmt!r}")
    src, dst = Path(input_path), Path(output_path)
    if not src.is_file():
        raise SeqshipError(f"{src}: input file not found")
    if src.resolve() == dst.resolve():
        raise SeqshipError(f"{dst}: the output must not overwrite the input")
    dst.parent.mkdir(parents=True, exist_ok=True)
    stats = BulkStats()
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            chunk: list[dict] = []
            pos = 0
            for pos, rec in _records(src, fmt):
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
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return stats


def _flush(predictor: Predictor, chunk: list[dict], out, top_k: int, stats: BulkStats) -> None:
    # Chunks are contiguous, so the chunk's first index makes error messages name the input line's index.
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
        out.write(json_line(rec))
    chunk.clear()

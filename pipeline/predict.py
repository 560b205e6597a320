"""What `pipeline predict` does between parsing and printing: texts decoded from arguments or stdin as
UTF-8 whatever the locale, scored by a bundle's Predictor, each result written as one JSON line as soon
as it is ready (a file is scored in bounded memory by runtime.bulk).

`pipeline predict` runs from a runtime-only install: this module imports neither torch nor any other
training code (a test imports it with torch made unimportable).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Sequence

from seqship.runtime.errors import InputError, ModelOutputError, SeqshipError
from seqship.runtime.fsio import read_capped, read_stream_capped
from seqship.runtime.textio import decode_utf8, is_blank, raw_lines, refuse_binary, split_lines

log = logging.getLogger(__name__)

Write = Callable[[str], None]  # receives output text, each JSON line with its newline

MAX_TEXTS_FILE = 256 * 1024 * 1024  # stdin and --texts files (verify, bench) are read whole, at most this much


@dataclass(frozen=True)
class Texts:
    """Texts to score, and why some of them could not be read (index -> message): those are scored as ""
    and reported as errors, so that every input keeps its index."""

    texts: list[str]
    undecodable: dict[int, str]
    # each text's index in the output: its line number - 1 for stdin (blank lines are skipped, and leave a
    # gap), its place among the arguments for arguments [default: 0, 1, 2...]
    indexes: list[int] = field(default_factory=list)
    skipped: int = 0  # blank lines: no text, no output line

    def index(self, i: int) -> int:
        """The output index of the i-th text."""
        return self.indexes[i] if self.indexes else i


def parse_providers(value: str) -> str | list[str]:
    """ "auto" / "cpu" / "cuda" as they are; anything else is a comma-separated list of provider names."""
    if value.lower() in ("auto", "cpu", "cuda"):
        return value.lower()
    return [p.strip() for p in value.split(",") if p.strip()]


def decode_arguments(args: Sequence[str]) -> Texts:
    """Command-line arguments as UTF-8 whatever the locale (as stdin is read): Python hands bytes that are
    not UTF-8 in the locale's encoding over as lone surrogates, which would be scored as text."""
    texts, undecodable = list(args), {}
    for i, text in enumerate(texts):
        try:
            texts[i] = os.fsencode(text).decode("utf-8")
        except UnicodeError as e:
            undecodable[i] = f"argument {i + 1}: not UTF-8 ({e.reason} at byte {e.start}); pass UTF-8 text"
            texts[i] = ""
    return Texts(texts, undecodable)


def read_stdin(stream: IO[bytes]) -> Texts:
    """The texts of a binary stream (stdin), read whole but at most MAX_TEXTS_FILE bytes, counted as read."""
    hint = "for more texts, give --input /dev/stdin (streamed in bounded memory)"
    return decode_lines(read_stream_capped(stream, MAX_TEXTS_FILE, "stdin", hint))


def decode_lines(data: bytes) -> Texts:
    """One text per line of UTF-8 bytes (stdin), lines ending as runtime.textio says ("\\r\\n", "\\n" or a
    lone "\\r"), a BOM at the start dropped; a blank line is skipped and counted (its line keeps its
    index: see `Texts.indexes`); a line that is not UTF-8 gets an error, the rest is scored. Bytes that are
    not text at all (NUL bytes, a Parquet or zip file...) are an InputError."""
    refuse_binary("stdin", data[:8192], "one-text-per-line", InputError)
    texts, undecodable, indexes, skipped = [], {}, [], 0
    for n, (_, raw) in enumerate(raw_lines(io.BytesIO(data))):
        try:
            text = decode_utf8(raw, at_start=n == 0)
        except UnicodeDecodeError as e:
            undecodable[len(texts)] = f"line {n + 1}: not UTF-8 ({e.reason} at byte {e.start}); send UTF-8 text"
            text = ""
        else:
            if is_blank(text):
                skipped += 1
                continue
            if "\x00" in text:  # as every file reader says it, past the sniffed start too
                undecodable[len(texts)] = f"line {n + 1}: holds a NUL byte, which is not text; is the input binary?"
                text = ""
        texts.append(text)
        indexes.append(n)
    if skipped:
        log.warning("skipped %d blank line(s) on stdin: no text to score (index is the line number - 1)", skipped)
    return Texts(texts, undecodable, indexes, skipped)


def read_texts(path: Path) -> list[str]:
    """Non-blank lines of a UTF-8 file (lines end as runtime.textio says), or a SeqshipError naming the file
    and the fix. At most MAX_TEXTS_FILE bytes are read, counted as they are read: /dev/zero, a FIFO or a
    /proc file says its size is 0."""
    try:
        raw = read_capped(path, MAX_TEXTS_FILE, "pass a sample of texts")
        refuse_binary(path, raw[:8192], "one-text-per-line", SeqshipError)
        return [t for t in split_lines(decode_utf8(raw)) if not is_blank(t)]
    except (OSError, UnicodeDecodeError) as e:
        raise SeqshipError(f"{path}: cannot be read as UTF-8 text ({str(e)[:120]}); pass one text per line") from None


def load_predictor(
    bundle: Path,
    providers: str = "auto",
    threads: int | None = None,
    expected_sha256: str | None = None,
    unicode_mismatch: str = "refuse",
    top_k: int = 1,
):
    """The bundle's Predictor (the folder checked as `--bundle`), refusing a top_k above its label count."""
    from seqship.pipeline.runs import require_bundle
    from seqship.runtime import Predictor

    predictor = Predictor.load(
        require_bundle(bundle),
        providers=parse_providers(providers),
        intra_op_num_threads=threads,
        expected_sha256=expected_sha256,
        unicode_mismatch=unicode_mismatch,
    )
    if top_k > len(predictor.labels):
        raise SeqshipError(
            f"--top-k {top_k}: the bundle has only {len(predictor.labels)} labels; pass --top-k {len(predictor.labels)} or less"
        )
    return predictor


def result_lines(predictor, texts: Texts, top_k: int = 1) -> Iterable[tuple[dict, bool]]:
    """(JSON-ready line, whether it is an error) per text, in input order: the index, the text, and the
    labels or the reason it could not be scored."""
    for i, result in enumerate(predictor.predict(texts.texts, top_k=top_k, errors="return")):
        text, index = texts.texts[i], texts.index(i)
        if i in texts.undecodable or isinstance(result, (InputError, ModelOutputError)):
            yield {"index": index, "text": text, "error": texts.undecodable.get(i) or str(result)}, True
        else:
            yield {"index": index, "text": text, **result.to_dict()}, False


def write_results(predictor, texts: Texts, write: Write, top_k: int = 1) -> int:
    """Score the texts, writing one JSON line each; the number that could not be scored."""
    from seqship.runtime.bulk import json_line

    errors = 0
    for line, failed in result_lines(predictor, texts, top_k):
        errors += failed
        write(json_line(line))
    return errors


def score_file(
    predictor,
    input_path: Path,
    output_path: Path | None,
    write: Write,
    on_progress: Callable[[int, int], None] | None = None,
    **options,
):
    """Score a file (runtime.bulk.score_file, `options` its own): into output_path, atomically, or with
    none, written line by line in input order (through a temporary file, so memory stays bounded).
    Returns bulk's stats."""
    from seqship.runtime.bulk import score_file as bulk_score_file

    if output_path is not None:
        stats = bulk_score_file(predictor, input_path, output_path, on_progress=on_progress, **options)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.jsonl"
            stats = bulk_score_file(predictor, input_path, out, **options)
            with open(out, encoding="utf-8") as f:
                for line in f:
                    write(line)
    if stats.skipped:
        log.warning(
            "skipped %d blank line(s) in %s: no text to score (each output line's index still leads to its line)",
            stats.skipped,
            input_path,
        )
    return stats

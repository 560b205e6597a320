"""The data stage: find the data, read it, clean it, split it without leaks, fingerprint it.

- `registry`: the named datasets (`REGISTRY`), their public sources, `DataConfig`, `DataError`;
- `download`: the shared download cache (locked, verified, installed whole);
- `readers`: label folders and CSV/TSV/JSONL tables, and what they drop or refuse (`RowIssues`);
- `split`: cleaning, the grouped and stratified split, k folds, the fingerprint.

This module ties them into the stage (`locate`, `prepare`, `read_split`); import names from here.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from seqship.pipeline.data.download import (
    MAX_DOWNLOAD_BYTES,
    cached,
    default_cache_dir,
    download_dataset,
    fetch,
    install,
    verify,
)
from seqship.pipeline.data.readers import (
    CSV_FIELD_LIMIT,
    RowIssues,
    decode,
    label_files_in,
    lines,
    read_csv,
    read_jsonl,
    read_label_files,
    read_label_folder,
    read_table,
)
from seqship.pipeline.data.registry import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    DOWNLOAD_RECORD,
    REGISTRY,
    DataConfig,
    DataError,
    Dataset,
    Download,
)
from seqship.pipeline.data.splits import clean, fingerprint, kfold, split
from seqship.pipeline.runs import DATA_SUMMARY, SPLIT_SUFFIX
from seqship.runtime.bundle import sha256_file

__all__ = [
    "CACHE_DIR_ENV",
    "CSV_FIELD_LIMIT",
    "DATA_DIR_ENV",
    "DOWNLOAD_RECORD",
    "MAX_DOWNLOAD_BYTES",
    "REGISTRY",
    "DataConfig",
    "DataError",
    "Dataset",
    "Download",
    "RowIssues",
    "cached",
    "clean",
    "decode",
    "default_cache_dir",
    "download_dataset",
    "fetch",
    "fingerprint",
    "install",
    "kfold",
    "lines",
    "load_rows",
    "locate",
    "prepare",
    "read_csv",
    "read_jsonl",
    "read_label_files",
    "read_label_folder",
    "read_split",
    "read_table",
    "source_digest",
    "source_files",
    "split",
    "verify",
]

log = logging.getLogger(__name__)


def locate(cfg: DataConfig, data_dir: str | None = None, cache_dir: str | None = None) -> Path:
    """The file or folder to read: the user's --data, else <data-dir>/<dataset>/, else the download cache."""
    if cfg.data is not None:
        path = Path(cfg.data)
        if not path.exists():
            raise DataError(f"--data {path}: no such file or folder")
        return path
    ds = REGISTRY[cfg.dataset]
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        folder = Path(data_dir) / ds.folder
        if not folder.is_dir():
            raise DataError(
                f"dataset {ds.name!r}: {folder} does not exist; --data-dir/{DATA_DIR_ENV} must point at a folder "
                f"that holds {ds.folder}/"
            )
        return folder
    return download_dataset(ds, Path(cache_dir) if cache_dir else default_cache_dir())


def source_files(cfg: DataConfig, source: Path) -> list[Path]:
    """Every file the data stage reads, for its input digest."""
    if cfg.data is None:
        ds = REGISTRY[cfg.dataset]
        if ds.reader == "table":
            files, test_files = ds.layout(source)
            return [source / f for f in files + test_files]
        if ds.reader == "label_files":
            return [source / f for f, _ in ds.label_files]
    return label_files_in(source) if source.is_dir() else [source]


def load_rows(cfg: DataConfig, source: Path, issues: RowIssues | None = None):
    """Raw (text, label) rows, a fixed test split's rows (or None), the files read, and junk lines to drop.

    Rows a reader drops or normalises are counted in `issues`.
    """
    issues = issues if issues is not None else RowIssues()
    if cfg.data is not None:
        if source.is_dir():
            rows, files = read_label_folder(source, issues)
            return rows, None, files, ()
        return read_table(source, cfg.text_column, cfg.label_column, issues), None, [source], ()
    ds = REGISTRY[cfg.dataset]
    files = source_files(cfg, source)
    for f in files:
        if not f.is_file():
            raise DataError(f"dataset {ds.name!r}: {f} is missing; the data folder must hold {ds.folder}/ as published")
    if ds.reader == "label_folder":
        return read_label_folder(source)[0], None, files, ds.junk
    if ds.reader == "label_files":
        return read_label_files(source, ds.label_files), None, files, ds.junk
    pooled, test_files = ds.layout(source)
    rows = [r for f in pooled for r in read_table(source / f, ds.text_column, ds.label_column, issues)]
    test = [r for f in test_files for r in read_table(source / f, ds.text_column, ds.label_column, issues)] or None
    return rows, test, files, ds.junk


def source_digest(files: list[Path]) -> dict[str, str]:
    """sha256 of every source file, by name: the data stage reruns when any of them changes. A source must be
    a regular file: the stage reads it twice (to hash, then to read), which a FIFO or a device cannot give
    alike (/dev/zero never ends, a FIFO is empty the second time)."""
    for f in files:
        try:
            regular = stat.S_ISREG(os.stat(f).st_mode)
        except OSError as e:
            raise DataError(f"{f}: cannot be read ({e.strerror})") from None
        if not regular:
            raise DataError(f"{f}: not a regular file (a FIFO, device or socket); save the data to a file first")
    return {f.name: sha256_file(f) for f in files}


def prepare(cfg: DataConfig, source: Path, out_dir: Path) -> dict:
    """Run the data stage into out_dir: {train,val,test}.jsonl and summary.json. Returns the summary.

    `counts` holds totals (rows read = invalid dropped + empty + junk + duplicates + unique pairs);
    `row_issues` says per reason what the readers dropped or normalised.
    """
    issues = RowIssues()
    rows, fixed_test, files, junk = load_rows(cfg, source, issues)
    issues.warn()
    kept, cleaned = clean(rows, junk)
    invalid = sum(issues.dropped.values())
    counts = {"rows_read": cleaned["rows_read"] + invalid, "invalid_dropped": invalid} | {
        k: v for k, v in cleaned.items() if k != "rows_read"
    }
    if fixed_test is not None:
        fixed_test, test_counts = clean(fixed_test, junk)
        counts["fixed_test_rows"] = test_counts["unique_pairs"]
    labels = sorted({label for _, label in kept + (fixed_test or [])})
    if not kept:
        dropped = f" ({invalid} without a usable text or label: see the warnings)" if invalid else ""
        raise DataError(f"{source}: no usable rows after dropping empty lines{dropped}")
    if len(labels) < 2:
        raise DataError(f"{source}: only one label ({labels[0]!r}); a classifier needs at least two")
    splits = split(kept, cfg, fixed_test)
    for name, part in splits.items():
        with open(out_dir / f"{name}{SPLIT_SUFFIX}", "w", encoding="utf-8") as f:
            for text, label in part:
                f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    seen_in = {name: {t for t, _ in part} for name, part in splits.items()}
    if seen_in["train"] & (seen_in["val"] | seen_in["test"]) or seen_in["val"] & seen_in["test"]:
        raise DataError("internal error: the grouped split put one text in two splits; please report it")
    summary = {
        "config": asdict(cfg),
        "source": str(source),
        "labels": labels,
        "counts": counts,
        "row_issues": issues.summary(),
        "splits": {name: len(part) for name, part in splits.items()},
        "per_label": {name: dict(sorted(Counter(lab for _, lab in part).items())) for name, part in splits.items()},
        "fingerprint": fingerprint(splits),
        "source_files": source_digest(files),
    }
    (out_dir / DATA_SUMMARY).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info(
        "data: %d rows read, %d kept (%d duplicates, %d empty, %d junk, %d invalid removed); split %s",
        counts["rows_read"],
        counts["unique_pairs"],
        counts["duplicates_removed"],
        counts["empty_dropped"],
        counts["junk_dropped"],
        invalid,
        summary["splits"],
    )
    return summary


def read_split(data_dir: Path, name: str) -> list[tuple[str, str]]:
    """(text, label) rows of one split written by `prepare`."""
    path = Path(data_dir) / f"{name}{SPLIT_SUFFIX}"
    try:
        with open(path, encoding="utf-8") as f:
            return [(d["text"], d["label"]) for d in map(json.loads, f)]
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; run the data stage first (pipeline run data)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path}: not a split written by the data stage ({type(e).__name__}: {e}); rerun it with --force"
        ) from None

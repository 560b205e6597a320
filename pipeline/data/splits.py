"""Cleaning and splitting: normalise and de-duplicate rows, split them without leaks, fingerprint the result."""

from __future__ import annotations

import hashlib
import json
import random
import unicodedata
from collections import Counter, defaultdict

from seqship.pipeline.data.registry import DataConfig, DataError


def clean(rows: list[tuple[str, str]], junk: tuple[str, ...] = ()) -> tuple[list[tuple[str, str]], dict]:
    """NFC-normalise and strip texts, drop empty and known junk rows, remove exact duplicate pairs."""
    junk_set = set(junk)
    seen: set[tuple[str, str]] = set()
    kept: list[tuple[str, str]] = []
    counts = Counter()
    for text, label in rows:
        counts["rows_read"] += 1
        text = unicodedata.normalize("NFC", text).strip().lstrip("\ufeff").strip()  # stray BOMs open some reviews
        if not text:
            counts["empty_dropped"] += 1
            continue
        if text in junk_set:
            counts["junk_dropped"] += 1
            continue
        if (text, label) in seen:
            counts["duplicates_removed"] += 1
            continue
        seen.add((text, label))
        kept.append((text, label))
    labels_per_text = Counter(t for t, _ in kept)
    counts["texts_with_several_labels"] = sum(1 for c in labels_per_text.values() if c > 1)
    counts["unique_pairs"] = len(kept)
    return kept, {
        k: counts[k]
        for k in (
            "rows_read",
            "empty_dropped",
            "junk_dropped",
            "duplicates_removed",
            "unique_pairs",
            "texts_with_several_labels",
        )
    }


def split(
    rows: list[tuple[str, str]], cfg: DataConfig, fixed_test: list[tuple[str, str]] | None = None
) -> dict[str, list[tuple[str, str]]]:
    """Train/val/test split, stratified by label and grouped by text (a text never crosses splits).

    A text with several labels forms one group, stratified under its rarest label so that small
    classes keep their share of validation and test items. With a fixed (published) test split,
    pool rows whose text is in it are dropped, and the pool is split into train and validation only.
    """
    if fixed_test is not None:
        test_texts = {t for t, _ in fixed_test}
        pool = [(t, lab) for t, lab in rows if t not in test_texts]
        cfg_pool = DataConfig(
            dataset=cfg.dataset, data=cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=1e-9
        )
        out = split(pool, cfg_pool)
        out["train"] += out.pop("test")
        out["train"].sort(key=lambda r: (r[1], r[0]))
        out["test"] = sorted(fixed_test, key=lambda r: (r[1], r[0]))
        return out
    by_text: dict[str, list[str]] = defaultdict(list)
    for text, label in rows:
        by_text[text].append(label)
    freq = Counter(label for _, label in rows)
    strata: dict[str, list[str]] = defaultdict(list)
    for text, labels in by_text.items():
        strata[min(labels, key=lambda lab: (freq[lab], lab))].append(text)
    rng = random.Random(cfg.seed)
    assign: dict[str, str] = {}
    for label in sorted(strata):
        texts = sorted(strata[label])
        rng.shuffle(texts)
        n = len(texts)
        n_test, n_val = round(n * cfg.test_fraction), round(n * cfg.val_fraction)
        if n >= 3:  # every class with enough items appears in validation and test
            n_test, n_val = max(1, n_test), max(1, n_val)
        for i, text in enumerate(texts):
            assign[text] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    out: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for text, label in sorted(rows, key=lambda r: (r[1], r[0])):
        out[assign[text]].append((text, label))
    return out


def kfold(rows: list[tuple[str, str]], k: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """k disjoint folds covering every row, grouped by text and stratified by label like `split`."""
    if k < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {k}")
    by_text: dict[str, list[str]] = defaultdict(list)
    for text, label in rows:
        by_text[text].append(label)
    if len(by_text) < k:
        raise DataError(f"cross-validation with {k} folds: only {len(by_text)} distinct texts; use fewer folds")
    freq = Counter(label for _, label in rows)
    strata: dict[str, list[str]] = defaultdict(list)
    for text, labels in by_text.items():
        strata[min(labels, key=lambda lab: (freq[lab], lab))].append(text)
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for label in sorted(strata):
        texts = sorted(strata[label])
        rng.shuffle(texts)
        for i, text in enumerate(texts):
            fold_of[text] = (offset + i) % k
        offset += len(texts)  # the next stratum starts where this one stopped, keeping fold sizes even
    folds: list[list[tuple[str, str]]] = [[] for _ in range(k)]
    for text, label in sorted(rows, key=lambda r: (r[1], r[0])):
        folds[fold_of[text]].append((text, label))
    return folds


def fingerprint(splits: dict[str, list[tuple[str, str]]]) -> str:
    """sha256 of the split data itself (not of file paths): equal data gives an equal fingerprint."""
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        for text, label in splits[name]:
            h.update(json.dumps([name, text, label], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()

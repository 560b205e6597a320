"""Fitting the model's wide part (model.WideLinear) as the linear baseline is fitted, on the features the graph computes.

The features are computed by the part's own torch code (WideLinear.terms), so what logistic regression fits on is
exactly what the exported graph computes; idf comes from the training split (smooth idf, as sklearn's
TfidfVectorizer). Regularisation C and class weighting are picked on validation macro-F1 from the baseline's grid,
one-vs-rest with liblinear as the baseline's. The chosen fit's decision values become the part's logits (for two
labels, -z/2 and z/2: softmax of them is the fitted probability), so a model whose recurrent head is zero predicts
what the fitted linear model predicts.

scikit-learn is the optional `baseline` extra; it is imported inside `fit_wide`.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch

from seqship.pipeline.baseline import (
    C_GRID,
    CLASS_WEIGHTS,
    BaselineError,
    baseline_config,
    blas_threads,
    linear_classifier,
)
from seqship.pipeline.metrics import classification_metrics
from seqship.pipeline.model import WideLinear
from seqship.runtime.tokenizer import pad_batch

log = logging.getLogger(__name__)

WORD_NGRAMS = 2  # a word tokenizer's wide part: word 1-2-grams, the baseline's word features
ABSENT_LABEL_BIAS = -30.0  # the logit of a label the training split lacks: never predicted, as the baseline's


def default_ngrams(tokenizer: str, lowercase: bool, train_texts: Sequence[str]) -> int:
    """n-grams of 1 to this many tokens: the baseline's char n-gram range for a char tokenizer, word 1-2 for words."""
    if tokenizer == "word":
        return WORD_NGRAMS
    return baseline_config(tokenizer, lowercase, train_texts).ngram_max


@torch.inference_mode()
def _terms(wide: WideLinear, ids: list[list[int]], pad_id: int, batch_size: int):
    """(row, bucket, value) arrays of every n-gram occurrence with a non-zero value, through the part's own code."""
    rows, buckets, values = [], [], []
    device = wide.idf.device
    for start in range(0, len(ids), batch_size):
        tok, lengths = pad_batch(ids[start : start + batch_size], pad_id)
        tok, lengths = torch.from_numpy(tok).to(device), torch.from_numpy(lengths).to(device)
        bucket, value = wide.terms(tok, lengths)
        b, v = bucket.flatten(1).cpu().numpy(), value.flatten(1).cpu().numpy()
        r, c = np.nonzero(v)
        rows.append(r + start)
        buckets.append(b[r, c])
        values.append(v[r, c])
    return np.concatenate(rows), np.concatenate(buckets), np.concatenate(values)


def features(wide: WideLinear, ids: list[list[int]], pad_id: int, batch_size: int = 256):
    """The wide part's TF-IDF rows (scipy CSR, len(ids) x buckets): exactly what its graph multiplies by the weights."""
    from scipy.sparse import csr_matrix  # with scikit-learn

    rows, buckets, values = _terms(wide, ids, pad_id, batch_size)
    # CSR construction sums an (row, bucket) pair's occurrences: each holds 1/count of the bucket's value. float32, as
    # the graph computes them and as the baseline's TfidfVectorizer gives them.
    return csr_matrix((values, (rows, buckets)), shape=(len(ids), wide.buckets), dtype=np.float32)


def fit_idf(wide: WideLinear, ids: list[list[int]], pad_id: int, batch_size: int = 256) -> np.ndarray:
    """Set and return the part's idf from training texts: ln((1 + n) / (1 + df)) + 1 per bucket, 0 where df is 0."""
    with torch.no_grad():
        wide.idf.fill_(1.0)
    rows, buckets, _ = _terms(wide, ids, pad_id, batch_size)
    pairs = np.unique(rows.astype(np.int64) * wide.buckets + buckets)  # each (text, bucket) once
    df = np.bincount(pairs % wide.buckets, minlength=wide.buckets)
    idf = np.where(df > 0, np.log((1.0 + len(ids)) / (1.0 + df)) + 1.0, 0.0).astype(np.float32)
    with torch.no_grad():
        wide.idf.copy_(torch.from_numpy(idf))
    return idf


def fit_wide(
    wide: WideLinear,
    train: tuple[list[list[int]], np.ndarray],
    val: tuple[list[list[int]], np.ndarray],
    labels: Sequence[str],
    pad_id: int,
    seed: int = 0,
    c_grid: Sequence[float] = C_GRID,
    class_weights: Sequence[str] = CLASS_WEIGHTS,
) -> dict:
    """Fit idf, weights and bias of `wide` on encoded training texts (ids, label ids); pick C and class weighting
    on validation macro-F1. Returns what was chosen and the grid, as the baseline's metrics record it."""
    started = time.perf_counter()
    (x_ids, y), (v_ids, y_val) = train, val
    if len(np.unique(y)) < 2:
        raise BaselineError("the wide part needs at least two labels in the training split")
    idf = fit_idf(wide, x_ids, pad_id)
    # only the buckets some training text has: the others are 0 in every row (idf 0), so their weights are 0 whatever
    # is fitted, and leaving them out makes each fit faster (names: 29,067 of 2^18 columns; 1.2 s of CPU a fit, not 3.2)
    seen = np.flatnonzero(idf > 0)
    x, xv = features(wide, x_ids, pad_id)[:, seen], features(wide, v_ids, pad_id)[:, seen]
    grid, best = [], None
    with blas_threads(1) as pools:  # as the baseline's fits (pipeline.baseline.baseline_threads)
        for weight in class_weights:
            for c in c_grid:
                t0 = time.perf_counter()
                clf = linear_classifier(c, weight, seed)
                clf.fit(x, y)
                d = clf.decision_function(xv)  # one column for two labels
                pred = clf.classes_[(d > 0).astype(int) if d.ndim == 1 else d.argmax(1)]
                m = classification_metrics(y_val, pred, labels)
                grid.append(
                    {
                        "C": c,
                        "class_weight": weight,
                        "val_accuracy": m["accuracy"],
                        "val_macro_f1": m["macro_f1"],
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                )
                log.info("wide part: C=%g, class weight %s: validation macro-F1 %.4f", c, weight, m["macro_f1"])
                if best is None or m["macro_f1"] > best[0]["val_macro_f1"]:
                    best = (grid[-1], clf)
    chosen, clf = best
    weight, bias = _as_logits(clf, len(labels), seen, wide.buckets)
    with torch.no_grad():
        wide.weight.copy_(torch.from_numpy(weight))
        wide.bias.copy_(torch.from_numpy(bias))
    return {
        "C": chosen["C"],
        "class_weight": chosen["class_weight"],
        "val": {"accuracy": chosen["val_accuracy"], "macro_f1": chosen["val_macro_f1"]},
        "ngrams": wide.ngrams,
        "buckets": wide.buckets,
        "buckets_seen": int((wide.idf > 0).sum()),
        "grid": grid,
        "thread_pools": pools,
        "fit_seconds": round(time.perf_counter() - started, 2),
    }


def _as_logits(clf, num_labels: int, seen: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """The one-vs-rest fit on the `seen` buckets' columns as (weight [buckets, C], bias [C]) whose logits' argmax is the
    fit's prediction; every other bucket's weights are 0."""
    coef = np.zeros((len(clf.estimators_), buckets))
    coef[:, seen] = np.vstack([np.asarray(e.coef_).reshape(1, len(seen)) for e in clf.estimators_])
    intercept = np.concatenate([np.ravel(e.intercept_) for e in clf.estimators_])
    weight = np.zeros((buckets, num_labels), dtype=np.float32)
    bias = np.full(num_labels, ABSENT_LABEL_BIAS, dtype=np.float32)
    classes = [int(c) for c in clf.classes_]
    if len(classes) == 2:  # one binary fit, z for the second class: logits -z/2, z/2 (softmax = the fit's sigmoid)
        for sign, c in zip((-0.5, 0.5), classes):
            weight[:, c] = sign * coef[0]
            bias[c] = sign * intercept[0]
    else:
        for row, c in enumerate(classes):
            weight[:, c] = coef[row]
            bias[c] = intercept[row]
    return weight, bias

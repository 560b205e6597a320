"""Classification metrics whose size grows with the label count, never with its square.

Per-class precision/recall/F1/support is linear in the labels and always kept. The confusion matrix is
quadratic (10,000 labels made a 700 MB metrics.json), so it is stored whole only up to
MATRIX_MAX_LABELS labels; the most frequent off-diagonal (true, predicted) pairs are always stored, at
most TOP_PAIRS_MAX of them, and computed from the pairs that occur, never from a labels x labels array.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MATRIX_MAX_LABELS = 50  # above this many labels `confusion_matrix` is null and only the top pairs are kept
TOP_PAIRS_MAX = 1000  # at most this many (true, predicted, count) off-diagonal pairs are stored


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: Sequence[str],
    matrix_max_labels: int = MATRIX_MAX_LABELS,
    top_pairs_max: int = TOP_PAIRS_MAX,
) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and a confusion summary that stays small."""
    k = len(labels)
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} entries and y_pred {y_pred.size}: they must be the same length")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(
                f"{name} holds class index {int(y.min() if y.min() < 0 else y.max())}, outside 0..{k - 1} for {k} labels"
            )
    support = np.bincount(y_true, minlength=k)  # row sums of the confusion matrix
    predicted = np.bincount(y_pred, minlength=k)  # column sums
    tp = np.bincount(y_true[y_true == y_pred], minlength=k).astype(float)  # its diagonal
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0  # macro-F1 over classes that occur in this split
    wrong = y_true != y_pred
    codes, counts = np.unique(y_true[wrong] * k + y_pred[wrong], return_counts=True)  # one code per pair that occurs
    n = int(y_true.size)
    return {
        "accuracy": float(tp.sum() / max(1, n)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            lab: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(labels)
        },
        # rows: true label, columns: predicted label; null above confusion.matrix_max_labels labels
        "confusion_matrix": _matrix(y_true, y_pred, k) if k <= matrix_max_labels else None,
        "confusion": _compact(codes, counts, labels, matrix_max_labels, top_pairs_max),
        "n": n,
    }


def _matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> list[list[int]]:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm.tolist()


def _compact(
    codes: np.ndarray, counts: np.ndarray, labels: Sequence[str], matrix_max_labels: int, top_pairs_max: int
) -> dict:
    """The off-diagonal pairs (code true * k + predicted, with their counts) as the stored summary."""
    k = len(labels)
    order = np.lexsort((codes, -counts))[:top_pairs_max]  # most frequent first; ties by (true, predicted) index
    return {
        "matrix_max_labels": matrix_max_labels,
        "top_pairs_max": top_pairs_max,
        "misclassified": int(counts.sum()),
        "distinct_pairs": int(codes.size),  # off-diagonal pairs that occur; top_pairs holds the first top_pairs_max
        "top_pairs": [
            {"true": labels[int(c) // k], "predicted": labels[int(c) % k], "count": int(n)}
            for c, n in zip(codes[order], counts[order])
        ],
    }


def full_matrix(split: dict) -> list[list[int]] | None:
    """A split's whole confusion matrix (rows true, columns predicted), or None where only top pairs were kept."""
    return split.get("confusion_matrix")


def top_confusions(split: dict, labels: Sequence[str], top_pairs_max: int = TOP_PAIRS_MAX) -> dict:
    """A split's compact confusion summary, also for a metrics.json written before it was stored."""
    if split.get("confusion") is not None:
        return split["confusion"]
    cm = np.asarray(split["confusion_matrix"], dtype=np.int64)  # an older metrics.json: derive it from the matrix
    np.fill_diagonal(cm, 0)
    true, pred = np.nonzero(cm)  # row-major, so the codes come out sorted as np.unique returns them
    return _compact(true * len(labels) + pred, cm[true, pred], labels, MATRIX_MAX_LABELS, top_pairs_max)

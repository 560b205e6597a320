"""The linear baseline: TF-IDF n-grams + logistic regression on the run's own splits.

A recurrent model is worth shipping only where it does at least as well as this. The baseline reads text
the way the model's tokenizer does: character n-grams for a char tokenizer (1-4 for short texts such as
surnames, 1-3 for longer ones such as Chinese reviews), word 1-2-grams plus in-word character 2-5-grams
for a word tokenizer. Its regularisation C and its class weighting (none or balanced) are picked on the
validation split's macro-F1, the metric that picks the recurrent model's checkpoint; the test split is
scored once, with the chosen fit.

scikit-learn is the optional `baseline` extra; this module imports it only inside `fit_baseline`.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import numpy as np

from seqship.pipeline.metrics import classification_metrics
from seqship.runtime.errors import SeqshipError

log = logging.getLogger(__name__)

C_GRID = (0.5, 2.0, 8.0, 32.0)
CLASS_WEIGHTS = ("none", "balanced")


class BaselineError(SeqshipError):
    """The linear baseline cannot be fitted on this run's splits (too few texts, labels or n-grams)."""


SHORT_TEXT_CHARS = 24  # median training text length (characters) below which char n-grams go up to 4
LARGE_TRAIN = 20_000  # training texts from which n-grams must occur twice (min_df 2)


@dataclass(frozen=True)
class BaselineConfig:
    """What the baseline fits: its features and the grid validation picks from (part of the stage inputs)."""

    analyzer: str  # "char" or "word+char"
    ngram_max: int  # char n-grams 1..ngram_max ("char"); word 1-2 + char_wb 2..ngram_max ("word+char")
    lowercase: bool
    min_df: int = 1  # n-grams seen in fewer training texts are dropped (2 on large sets: most n-grams are one-offs)
    c_grid: tuple[float, ...] = C_GRID
    class_weights: tuple[str, ...] = CLASS_WEIGHTS
    seed: int = 0

    def describe(self) -> str:
        case = "lowercased" if self.lowercase else "case kept"
        if self.analyzer == "char":
            return f"TF-IDF char 1-{self.ngram_max}-grams ({case}) + logistic regression (one-vs-rest)"
        return f"TF-IDF word 1-2-grams + char 2-{self.ngram_max}-grams within words ({case}) + logistic regression (one-vs-rest)"


def linear_classifier(c: float, weight: str, seed: int):
    """The baseline's classifier for one point of its grid (the wide part is fitted the same way)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    # A fresh fit per C: a warm start from the previous C's solution (lbfgs) was measured to stop at
    # once on names (C=32 "converged" at C=8's weights), which would make the grid a lie.
    # One-vs-rest with liblinear: on shopping-cats (50k texts, 410k char n-grams, 10 labels) a
    # multinomial lbfgs fit took 166-254 s per C against 27-44 s, for the same validation accuracy
    # (0.8989 and 0.8978 at C=32). With two labels it is one binary logistic regression.
    return OneVsRestClassifier(
        LogisticRegression(
            C=c, class_weight=None if weight == "none" else weight, solver="liblinear", max_iter=1000, random_state=seed
        ),
        # one fit at a time: liblinear's random generator is one per process (sklearn's newrand.h),
        # so fits on threads side by side would draw from it in turn and stop being reproducible
        n_jobs=1,
    )


def baseline_config(tokenizer: str, lowercase: bool, train_texts: Sequence[str], seed: int = 0) -> BaselineConfig:
    """The baseline's features for a model with this tokenizer, on these training texts."""
    min_df = 2 if len(train_texts) >= LARGE_TRAIN else 1
    if tokenizer == "word":
        return BaselineConfig("word+char", 5, True, min_df=min_df, seed=seed)
    median = float(np.median([len(t) for t in train_texts])) if train_texts else 0.0
    return BaselineConfig("char", 4 if median < SHORT_TEXT_CHARS else 3, lowercase, min_df=min_df, seed=seed)


def _features(cfg: BaselineConfig):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    if cfg.analyzer == "char":
        return TfidfVectorizer(
            analyzer="char",
            ngram_range=(1, cfg.ngram_max),
            lowercase=cfg.lowercase,
            sublinear_tf=True,
            min_df=cfg.min_df,
            dtype=np.float32,
        )
    return FeatureUnion(
        [
            (
                "word",
                TfidfVectorizer(
                    analyzer="word",
                    ngram_range=(1, 2),
                    lowercase=cfg.lowercase,
                    sublinear_tf=True,
                    min_df=cfg.min_df,
                    token_pattern=r"(?u)\b\w+\b|[^\w\s]",
                    dtype=np.float32,
                ),
            ),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb",
                    ngram_range=(2, cfg.ngram_max),
                    lowercase=cfg.lowercase,
                    sublinear_tf=True,
                    min_df=2,
                    dtype=np.float32,
                ),
            ),
        ]
    )


def fit_baseline(
    train_rows: Sequence[tuple[str, str]],
    val_rows: Sequence[tuple[str, str]],
    test_rows: Sequence[tuple[str, str]],
    labels: Sequence[str],
    cfg: BaselineConfig,
    threads: int | None = None,
) -> dict:
    """Fit on train, pick C and class weighting on validation macro-F1, score test once: the metrics.

    threads: the BLAS and OpenMP threads of every fit (default 1, as training's: see `baseline_threads`);
    recorded in the metrics with what each thread pool really had."""
    threads = baseline_threads(threads)
    with blas_threads(threads) as pools:
        return _fit(train_rows, val_rows, test_rows, labels, cfg) | {"threads": threads, "thread_pools": pools}


@contextmanager
def blas_threads(threads: int) -> Iterator[dict[str, int]]:
    """Every BLAS and OpenMP pool limited to `threads` for the fits, scikit-learn's own among them; yields what
    each kind of pool really has (threadpoolctl's user_api -> its largest pool's threads), as the metrics record it.

    threadpoolctl limits only the libraries loaded when it is entered, and the OpenBLAS that liblinear calls is
    loaded by the first import of scikit-learn's linear models: imported inside the limits, it kept its 2 threads.
    A first fit in a process (the wide part's, trained before the baseline) took 22 s of CPU a fit on names on 2
    busy cores against 1.2 s with one thread."""
    from sklearn.linear_model import LogisticRegression  # noqa: F401  (loads that BLAS before the limits)
    from threadpoolctl import threadpool_info, threadpool_limits  # a dependency of scikit-learn

    with threadpool_limits(limits=threads):
        pools: dict[str, int] = {}
        for pool in threadpool_info():
            pools[pool["user_api"]] = max(pools.get(pool["user_api"], 0), pool["num_threads"])
        yield pools


def baseline_threads(threads: int | None) -> int:
    """The baseline's threads: --threads, else 1, as training's (pipeline.train.default_threads).

    liblinear's vector operations go through BLAS, on vectors as long as the feature count: too little
    work to share, and OpenBLAS's threads (one per core by default) wait for a core they do not get when
    other programs run: one fit on names took 45-53 s on 2 busy cores, and 3 s with one BLAS thread.
    """
    if threads is None:
        return 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise BaselineError(f"--threads must be an integer >= 1, got {threads!r}")
    return threads


def _fit(train_rows, val_rows, test_rows, labels, cfg: BaselineConfig) -> dict:
    """fit_baseline's work, inside its thread limits."""
    from sklearn import __version__ as sklearn_version

    started = time.perf_counter()
    for name, rows in (("train", train_rows), ("validation", val_rows), ("test", test_rows)):
        if not rows:  # C is picked on validation and the comparison is on test: neither can be empty
            raise BaselineError(
                f"the linear baseline needs texts in every split, and the {name} split is empty; "
                "give it more texts (the data stage keeps about a tenth each for validation and test)"
            )
    if len({lab for _, lab in train_rows}) < 2:
        raise BaselineError("the linear baseline needs at least two labels in the training split")
    index = {lab: i for i, lab in enumerate(labels)}
    y = {
        name: np.array([index[lab] for _, lab in rows], dtype=np.int64)
        for name, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows))
    }
    vec = _features(cfg)
    try:
        x_train = vec.fit_transform([t for t, _ in train_rows])
    except ValueError:  # sklearn's "After pruning, no terms remain. Try a lower min_df": not an option here
        raise BaselineError(
            f"the linear baseline cannot be fitted on this data: its features ({cfg.describe()}) "
            "need n-grams that recur across training texts, and too few do"
        ) from None
    x_val = vec.transform([t for t, _ in val_rows])
    grid = []
    best = None
    candidates = [(w, c) for w in cfg.class_weights for c in cfg.c_grid]
    log.info(
        "baseline: %s on %d training texts (%d features, %.1f s); picking C and class weight from %d fits",
        cfg.describe(),
        len(train_rows),
        x_train.shape[1],
        time.perf_counter() - started,
        len(candidates),
    )
    for n, (weight, c) in enumerate(candidates, 1):
        t0 = time.perf_counter()
        clf = linear_classifier(c, weight, cfg.seed)  # a fresh fit per C (see linear_classifier)
        clf.fit(x_train, y["train"])
        # classes the training split lacks are never predicted: map the classifier's columns back to labels
        pred = clf.classes_[clf.predict_proba(x_val).argmax(1)]
        val = classification_metrics(y["val"], pred, labels)
        grid.append(
            {
                "C": c,
                "class_weight": weight,
                "val_accuracy": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        log.info(
            "baseline %d/%d: C=%g, class weight %s: validation macro-F1 %.4f, accuracy %.4f (%.1f s)",
            n,
            len(candidates),
            c,
            weight,
            val["macro_f1"],
            val["accuracy"],
            grid[-1]["seconds"],
        )
        if best is None or val["macro_f1"] > best[0]:
            best = (val["macro_f1"], c, weight, clf, val)
    _, c, weight, clf, val = best
    x_test = vec.transform([t for t, _ in test_rows])
    test_pred = clf.classes_[clf.predict_proba(x_test).argmax(1)]
    test = classification_metrics(y["test"], test_pred, labels)
    return {
        "test": test,
        "test_predictions": [int(p) for p in test_pred],  # label index per test text, for the paired comparison
        "val": {"accuracy": val["accuracy"], "macro_f1": val["macro_f1"]},
        "C": c,
        "class_weight": weight,
        "features": cfg.describe(),
        "num_features": int(x_train.shape[1]),
        "grid": grid,
        "config": asdict(cfg),
        "fit_seconds": round(time.perf_counter() - started, 2),
        "sklearn": sklearn_version,
    }


BOOTSTRAP_SAMPLES = 1000


def paired_comparison(y_true, model_pred, baseline_pred, num_labels: int, seed: int = 0) -> dict:
    """The model against the baseline on the same test texts: the difference in accuracy and macro-F1 with a 95%
    bootstrap interval (texts resampled with replacement, both models scored on each resample), and McNemar's exact
    test on the texts exactly one of the two gets right. A difference whose interval holds 0 is not one to claim."""
    y, a, b = (np.asarray(v, dtype=np.int64) for v in (y_true, model_pred, baseline_pred))
    if not (len(y) == len(a) == len(b)) or len(y) == 0:
        raise ValueError(f"paired comparison needs predictions for the same texts: {len(y)}, {len(a)}, {len(b)}")
    rng = np.random.default_rng(seed)
    n, draws = len(y), rng.integers(0, len(y), (BOOTSTRAP_SAMPLES, len(y)))  # each resample's texts
    offsets = np.arange(BOOTSTRAP_SAMPLES)[:, None] * n
    weights = np.bincount((draws + offsets).ravel(), minlength=BOOTSTRAP_SAMPLES * n).reshape(-1, n).astype(float)
    onehot = np.eye(num_labels)[y]
    support = weights @ onehot  # (samples, labels)

    def scores(pred):
        right = (pred == y).astype(np.float64)
        tp = weights @ (onehot * right[:, None])
        predicted = weights @ np.eye(num_labels)[pred]
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
        present = support > 0
        return weights @ right / len(y), (f1 * present).sum(1) / present.sum(1)

    (acc_a, f1_a), (acc_b, f1_b) = scores(a), scores(b)
    model_only, baseline_only = int(((a == y) & (b != y)).sum()), int(((b == y) & (a != y)).sum())

    def interval(d):
        lo, hi = np.percentile(d, [2.5, 97.5])
        return [round(float(lo), 4), round(float(hi), 4)]

    return {
        "texts": int(len(y)),
        "accuracy_difference_ci95": interval(acc_a - acc_b),
        "macro_f1_difference_ci95": interval(f1_a - f1_b),
        "bootstrap_samples": BOOTSTRAP_SAMPLES,
        "model_only_right": model_only,
        "baseline_only_right": baseline_only,
        "mcnemar_p": round(_mcnemar_exact(model_only, baseline_only), 4),
    }


def _mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b successes in b + c at one half."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2))
        for i in range(k + 1)
    )
    return min(1.0, 2 * tail)


def run_paired(run) -> dict | None:
    """The paired comparison of a run's model with its baseline on the test split, or None where the run's train or
    baseline stage holds no test predictions (made by a seqship before they were recorded: re-run those stages)."""
    import json

    from seqship.pipeline.data import read_split
    from seqship.pipeline.runs import LABELS, METRICS

    if run.current("baseline") is None or run.current("train") is None:
        return None
    try:
        model = json.loads(run.file("train", METRICS).read_text(encoding="utf-8"))
        base = json.loads(run.file("baseline", METRICS).read_text(encoding="utf-8"))
        labels = json.loads(run.file("train", LABELS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if "test_predictions" not in model or "test_predictions" not in base:
        return None
    index = {lab: i for i, lab in enumerate(labels)}
    y = [index[lab] for _, lab in read_split(run.dir("data"), "test")]
    if not (len(y) == len(model["test_predictions"]) == len(base["test_predictions"])):
        return None
    return paired_comparison(y, model["test_predictions"], base["test_predictions"], len(labels))


def paired_sentence(p: dict) -> str:
    """One plain-text sentence for people: the paired comparison's intervals, McNemar's test and what they allow."""
    (alo, ahi), (flo, fhi) = p["accuracy_difference_ci95"], p["macro_f1_difference_ci95"]

    def claim(lo, hi, what):
        return f"{what} {'above' if lo > 0 else 'below'}" if lo > 0 or hi < 0 else f"{what} not distinguishable"

    return (
        f"Paired on the same {p['texts']} test texts: model − baseline 95% interval accuracy [{alo:+.4f}, {ahi:+.4f}], "
        f"macro-F1 [{flo:+.4f}, {fhi:+.4f}] ({p['bootstrap_samples']} bootstrap resamples); only the model right on "
        f"{p['model_only_right']}, only the baseline on {p['baseline_only_right']} (McNemar p = {p['mcnemar_p']:.3g}): "
        f"{claim(alo, ahi, 'accuracy')}, {claim(flo, fhi, 'macro-F1')}."
    )

"""The wide part (model.WideLinear, fitted by pipeline.wide): the baseline's TF-IDF recipe on hashed token n-grams,
computed in the graph from the ids, exactly as training computed it, in every engine."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from seqship.exporters.contract import ModelContract
from seqship.exporters.onnx import export_onnx
from seqship.exporters.parity import make_probes
from seqship.exporters.portability import JS_ENGINES, PYTHON_ENGINES, engine_gate, format_engines
from seqship.exporters.recurrent import fused_recurrence
from seqship.pipeline.model import ModelConfig, TextClassifier
from seqship.runtime.tokenizer import pad_batch

LANGS = {"English": 600, "German": 400, "Dutch": 250, "Irish": 200, "Scottish": 100, "Portuguese": 74}


def wide_model(vocab=5000, labels=3, ngrams=3, buckets=2**18, seed=0) -> TextClassifier:
    """A small GRU with a wide part whose idf, weights and head are random (nothing is zero by accident)."""
    torch.manual_seed(seed)
    model = TextClassifier(
        ModelConfig(vocab, labels, embed_dim=8, hidden_dim=8, wide_ngrams=ngrams, wide_buckets=buckets)
    ).eval()
    with torch.no_grad():
        model.wide.weight.normal_()
        model.wide.bias.normal_()
        model.wide.idf.uniform_(1, 3)
        model.wide.idf[::5] = 0  # buckets no training text had
        model.head.weight.normal_()
    return model


def plain_tfidf(model: TextClassifier, ids: list[int]) -> dict[int, float]:
    """The row's feature vector by the recipe, in plain Python: n-gram buckets, counts, 1 + log tf, idf, L2 norm."""
    w = model.wide
    tables, offsets, idf, m = w.tables.tolist(), w.offsets.tolist(), w.idf.tolist(), w.buckets
    values: dict[int, float] = {}
    squares = 0.0
    for n in range(1, w.ngrams + 1):  # each n-gram length counts its own occurrences, as the graph does
        grams = Counter(
            (sum(tables[k][ids[t + k]] for k in range(n)) + offsets[n - 1]) % m for t in range(len(ids) - n + 1)
        )
        for bucket, count in grams.items():
            value = (1 + math.log(count)) * idf[bucket]
            values[bucket] = values.get(bucket, 0.0) + value
            squares += value**2
    norm = math.sqrt(squares)
    return {b: v / norm for b, v in values.items() if v}


def run(model, rows: list[list[int]]) -> np.ndarray:
    tok, lengths = pad_batch(rows, 0)
    with torch.no_grad():
        return model(torch.from_numpy(tok), torch.from_numpy(lengths)).numpy()


def test_the_wide_logits_are_the_tfidf_recipe_times_the_weights():
    model = wide_model()
    rows = [[5, 6, 5, 6, 5, 6, 7], [9], [3, 3, 3, 3], [4999, 1, 4999, 1, 2, 4999, 1]]
    with torch.no_grad():
        model.head.weight.zero_()  # the recurrent part adds its head's bias only
        model.head.bias.zero_()
    got = run(model, rows)
    weight, bias = model.wide.weight.detach().numpy(), model.wide.bias.detach().numpy()
    for row, logits in zip(rows, got):
        x = plain_tfidf(model, row)
        want = sum(v * weight[b] for b, v in x.items()) + bias
        np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


def test_a_padded_batch_equals_each_row_alone_and_torchscript_matches():
    model = wide_model()
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(1, 5000, size=n)) for n in (1, 2, 3, 17, 40)] + [[7] * 30]
    batch = run(model, rows)
    for row, logits in zip(rows, batch):
        np.testing.assert_allclose(run(model, [row])[0], logits, rtol=1e-6, atol=1e-6)
    scripted = torch.jit.script(model)
    tok, lengths = pad_batch(rows, 0)
    with torch.no_grad():
        np.testing.assert_array_equal(
            scripted(torch.from_numpy(tok), torch.from_numpy(lengths)).numpy(),
            model(torch.from_numpy(tok), torch.from_numpy(lengths)).numpy(),
        )


def test_padding_ids_past_a_row_never_count_as_its_ngrams():
    model = wide_model(ngrams=4)
    # the same real tokens, then padding of other ids than pad: only lengths say where the row ends
    tok = torch.tensor([[5, 6, 7, 0, 0, 0], [5, 6, 7, 8, 9, 5]])
    with torch.no_grad():
        out = model(tok, torch.tensor([3, 3]))
    np.testing.assert_allclose(out[0].numpy(), out[1].numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_every_engine_computes_the_wide_graph_as_pytorch(tmp_path):
    """The hashed n-grams, counts, idf and norm in onnxruntime, onnx.reference, OpenVINO, tract and the JS engines
    (skipped where not installed): a vocabulary above 4,096 and 2**18 buckets, where float32 arithmetic would show."""
    model = wide_model()
    path = tmp_path / "model.onnx"
    example = (torch.randint(2, 20, (2, 7)), torch.tensor([7, 3]))
    with fused_recurrence(model):
        export_onnx(model, path, ModelContract(num_labels=3), example)
    rng = np.random.default_rng(1)
    test = [list(rng.integers(1, 5000, size=int(n))) for n in rng.integers(1, 60, size=200)]
    test[:3] = [[5] * 11, [5, 6] * 9, [4999, 17, 4999, 17, 4999]]  # repeated n-grams: counts above 1

    def reference(ids, lengths):
        with torch.no_grad():
            return model(torch.from_numpy(np.asarray(ids)), torch.from_numpy(np.asarray(lengths))).numpy()

    probes = make_probes(5000, 0, 200, 40, None)
    gate = engine_gate(path, reference, probes, test, 0, 1e-5, 1e-5, PYTHON_ENGINES + JS_ENGINES)
    assert gate["passed"], format_engines(gate)
    assert {e["engine"] for e in gate["engines"]} >= {"onnxruntime", "onnx.reference", "openvino", "tract"}


@pytest.mark.slow
def test_a_long_row_whose_wide_terms_cancel_is_computed_alike_by_onnxruntime_and_onnx_reference(tmp_path):
    """Fitted weights can make a logit the small difference of large sums (shopping-cats' at T=4096: terms of ~2e4
    in all to a logit of 1.2): summed in float32 in another order, onnxruntime and onnx.reference were 2.3e-5 from
    PyTorch, past the gate's 1e-5 + 1e-5 * |ref|, and the run failed its gate. The sums are float64 now."""
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    model = wide_model(labels=3, buckets=2**16)
    with torch.no_grad():
        model.wide.weight[:, 0] += 10.0  # every n-gram pushes label 0 up by ~10 (times its share) ...
        model.wide.idf.fill_(5.0)
        model.head.weight.zero_()
        model.head.bias.zero_()
    ids = torch.from_numpy(np.random.default_rng(0).integers(1, 5000, size=(1, 4096)))
    lengths = torch.tensor([4096])
    with torch.no_grad():  # ... and the bias takes it back: logit 0 is the difference of two sums of ~1e3
        model.wide.bias[0] = -float(model.wide.double()(ids, lengths)[0, 0] - model.wide.bias[0].double())
        model.wide.float()
        want = model(ids, lengths).numpy()
    assert abs(want[0, 0]) < 1.0  # the cancellation this test is about
    path = tmp_path / "model.onnx"
    with fused_recurrence(model):
        export_onnx(model, path, ModelContract(num_labels=3), (torch.randint(2, 20, (2, 7)), torch.tensor([7, 3])))
    feeds = {"token_ids": ids.numpy(), "lengths": lengths.numpy()}
    for engine, got in (
        ("onnxruntime", ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]),
        ("onnx.reference", ReferenceEvaluator(onnx.load(str(path))).run(None, feeds)[0]),
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=engine)


@pytest.fixture(scope="module")
def names_splits(data_dir):
    """Encoded train and validation splits of six real names languages (skewed as the full set), 80/20 by text."""
    from seqship.pipeline.train import TrainConfig, encode_split, fit_tokenizer

    rng = np.random.default_rng(0)
    train, val = [], []
    for lang, n in LANGS.items():
        names = sorted(set((data_dir / "names" / f"{lang}.txt").read_text(encoding="utf-8").split()))[:n]
        for i in rng.permutation(len(names)):
            (val if len(val) * 4 < len(train) else train).append((names[i], lang))
    labels = sorted(LANGS)
    tok = fit_tokenizer([t for t, _ in train], TrainConfig())
    ids = {lab: i for i, lab in enumerate(labels)}
    return train, val, labels, tok, encode_split(tok, train, ids), encode_split(tok, val, ids)


@pytest.mark.slow
def test_the_wide_part_alone_scores_as_the_baseline_on_validation(names_splits):
    """Hashed char 1-4-grams of token ids against the baseline's own char 1-4-grams, each with C and class weight
    picked on validation: within noise (two binomial standard errors of 325 texts' accuracy at 0.75: 0.048)."""
    from seqship.pipeline.baseline import baseline_config, fit_baseline
    from seqship.pipeline.model import WideLinear
    from seqship.pipeline.wide import default_ngrams, fit_wide

    train, val, labels, tok, enc_train, enc_val = names_splits
    texts = [t for t, _ in train]
    grid = {"c_grid": (2.0, 8.0), "class_weights": ("none", "balanced")}
    base = fit_baseline(train, val, val, labels, replace(baseline_config("char", False, texts), **grid))
    wide = WideLinear(tok.vocab_size, len(labels), default_ngrams("char", False, texts), 2**16, tok.spec.pad_id)
    fitted = fit_wide(wide, enc_train, enc_val, labels, tok.spec.pad_id, **grid)
    assert fitted["ngrams"] == 4 and fitted["buckets_seen"] > 1000
    assert abs(fitted["val"]["accuracy"] - base["val"]["accuracy"]) <= 0.05, (fitted["val"], base["val"])
    assert abs(fitted["val"]["macro_f1"] - base["val"]["macro_f1"]) <= 0.05, (fitted["val"], base["val"])


@pytest.mark.slow
def test_epoch_0_is_the_fitted_linear_model_and_training_can_only_keep_or_beat_it(names_splits, tmp_path):
    from seqship.pipeline.train import TrainConfig, load_trained, train

    train_rows, val_rows, labels, *_ = names_splits
    cfg = TrainConfig(
        epochs=1, embed_dim=8, hidden_dim=8, batch_size=128, lr=1e-9, wide=True, wide_buckets=2**16, patience=5
    )
    metrics = train(train_rows, val_rows, val_rows, labels, cfg, tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())["epochs"]
    assert history[0]["epoch"] == 0
    assert history[0]["val_macro_f1"] == metrics["wide"]["val"]["macro_f1"]  # the fit, judged as every epoch is
    assert metrics["val"]["macro_f1"] >= metrics["wide"]["val"]["macro_f1"]
    # a learning rate that changes nothing: no epoch beats the linear model, so the linear model ships
    assert metrics["best_epoch"] == 0 and metrics["val"]["macro_f1"] == metrics["wide"]["val"]["macro_f1"]
    model, tok, _, _ = load_trained(tmp_path)
    assert not model.head.weight.any() and not model.head.bias.any()
    rows = [tok.encode(t)[0] for t, _ in val_rows[:50]]
    tok_ids, lengths = pad_batch(rows, tok.spec.pad_id)
    ids, lens = torch.from_numpy(tok_ids), torch.from_numpy(lengths)
    with torch.no_grad():
        np.testing.assert_allclose(model(ids, lens).numpy(), model.wide(ids, lens).numpy(), rtol=0, atol=0)


def test_the_paired_comparison_gives_intervals_and_mcnemar_on_the_same_texts():
    from seqship.pipeline.baseline import paired_comparison

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 1000)
    base = np.where(rng.random(1000) < 0.80, y, (y + 1) % 4)
    same = paired_comparison(y, base, base, 4)
    assert same["accuracy_difference_ci95"] == [0.0, 0.0] and same["mcnemar_p"] == 1.0
    better = np.where(rng.random(1000) < 0.5, y, base)  # right on half of the baseline's mistakes, wrong on none more
    p = paired_comparison(y, better, base, 4)
    diff = (better == y).mean() - (base == y).mean()
    assert 0 < p["accuracy_difference_ci95"][0] <= diff <= p["accuracy_difference_ci95"][1]
    assert p["macro_f1_difference_ci95"][0] > 0 and p["baseline_only_right"] == 0
    b, c = 60, 40
    pred_a = np.concatenate([y[: b + c], y[b + c :]])
    pred_b = np.concatenate([(y[:b] + 1) % 4, y[b : b + c], y[b + c :]])
    pred_a[b : b + c] = (y[b : b + c] + 1) % 4
    got = paired_comparison(y, pred_a, pred_b, 4)
    assert (got["model_only_right"], got["baseline_only_right"]) == (b, c)
    assert got["mcnemar_p"] == pytest.approx(0.0569, abs=1e-4)  # scipy.stats.binomtest(40, 100).pvalue: 0.05689


def test_buckets_that_float32_cannot_hash_exactly_are_refused_by_name():
    from seqship.pipeline.train import TrainConfig, TrainError

    for bad in (1000, 2**21, 1):  # not a power of two; a hash sum past 2**24; no room for a hash
        with pytest.raises(ValueError, match="wide_buckets must be a power of two"):
            ModelConfig(50, 3, wide_ngrams=2, wide_buckets=bad)
        with pytest.raises(TrainError, match="--wide-buckets must be a power of two"):
            TrainConfig(wide=True, wide_buckets=bad)


FIT_IN_A_FRESH_PROCESS = """
import json, numpy as np, sys
from seqship.pipeline.model import WideLinear
from seqship.pipeline.wide import fit_wide
assert "sklearn" not in sys.modules  # as in `pipeline run all`, where training (and this fit) comes before the baseline
rng = np.random.default_rng(0)
y = rng.integers(0, 2, 400)
ids = [[int(i) for i in rng.integers(10, 200, int(n))] + [5] * int(label) for n, label in zip(rng.integers(3, 12, 400), y)]
wide = WideLinear(1000, 2, 2, 2**12, 0)  # ids 200-999 never occur: their buckets only by collision
fitted = fit_wide(wide, (ids[:300], y[:300]), (ids[300:], y[300:]), ["a", "b"], 0, c_grid=(8.0,))
unseen = (wide.idf == 0).numpy()
print(json.dumps({"pools": fitted["thread_pools"], "unseen": int(unseen.sum()),
                  "unseen_weights": float(abs(wide.weight.detach().numpy()[unseen]).max()), "val": fitted["val"]}))
"""


@pytest.mark.slow
def test_the_wide_fit_runs_on_one_blas_thread_even_when_it_loads_scikit_learn():
    """threadpoolctl limits only libraries already loaded; the wide fit, the first in `run all`, loads liblinear's
    BLAS itself: 2 spinning threads made a names fit 20x slower on busy cores. Buckets no training text has stay 0."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FIT_IN_A_FRESH_PROCESS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["pools"].get("blas") == 1 and set(got["pools"].values()) == {1}, got["pools"]
    assert got["unseen"] > 0 and got["unseen_weights"] == 0.0
    assert got["val"]["accuracy"] > 0.9  # label 1 is the texts with token 5: its unigram tells it

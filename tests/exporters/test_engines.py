"""The multi-engine gate's judgement: near ties may flip, nothing else may; an engine that disagrees fails."""

import json
from pathlib import Path

import numpy as np
import pytest

from seqship.exporters.parity import make_probes
from seqship.exporters.portability import engine_gate, label_agreement, near_ties
from seqship.runtime.session import OnnxModel
from seqship.runtime.tokenizer import Tokenizer


def test_near_ties_are_rows_whose_top_two_are_within_twice_the_tolerance():
    ref = np.array([[1.0, 1.0 + 1.5e-5, -3.0], [5.0, 1.0, 0.0], [2.0, 2.0, 2.0]], dtype=np.float32)
    assert near_ties(ref, 1e-5, 0.0).tolist() == [True, False, True]
    # rtol scales with the logits: a gap of 1.5e-5 at |logit| ~ 1 is a tie only with enough relative slack
    assert near_ties(ref, 0.0, 1e-6).tolist() == [False, False, True]
    assert near_ties(ref, 0.0, 1e-5).tolist() == [True, False, True]


def test_huge_logits_earn_no_wider_label_margin():
    # Every logit shifted by 1e6 (softmax cannot see it): allclose's rtol would allow 10, the label rule must not.
    ref = np.array([[1e6 + 3.0, 1e6, 1e6 - 1.0]], dtype=np.float64)
    assert not near_ties(ref, 1e-5, 1e-5).any()
    assert not label_agreement(ref, np.array([[1e6, 1e6 + 3.0, 1e6 - 1.0]]), 1e-5, 1e-5)["passed"]


def test_a_flip_inside_a_near_tie_passes_and_one_outside_fails():
    ref = np.array([[1.0, 1.0 + 1e-5, 0.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    flipped_tie = np.array([[1.0 + 1e-5, 1.0, 0.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    ok = label_agreement(ref, flipped_tie, 1e-5, 1e-5)
    assert (
        ok["passed"] and ok["near_ties"] == 1 and ok["near_tie_flips"] == 1 and ok["agreement_outside_near_ties"] == 1.0
    )
    flipped_clear = np.array([[1.0, 1.0 + 1e-5, 0.0], [0.0, 3.0, 0.0]], dtype=np.float32)
    bad = label_agreement(ref, flipped_clear, 1e-5, 1e-5)
    assert (
        not bad["passed"]
        and bad["disagreements_outside_near_ties"] == [1]
        and bad["agreement_outside_near_ties"] == 0.0
    )


@pytest.fixture(scope="module")
def gate_inputs(tiny_run):
    artifacts, summary = tiny_run
    bundle = Path(summary["bundle"])
    tok = Tokenizer.from_file(bundle / "tokenizer.json")
    texts = [
        json.loads(line)["text"] for line in (artifacts / "tiny" / "data" / "test.jsonl").read_text().splitlines()
    ][:300]
    ids = [tok.encode(t)[0] for t in texts]
    probes = make_probes(tok.vocab_size, tok.spec.pad_id, 4 * tok.spec.max_length, min(tok.spec.max_length, 64), None)
    return bundle / "model.onnx", ids, probes, tok.spec.pad_id


@pytest.mark.slow
def test_the_gate_fails_every_engine_that_disagrees_with_the_reference(gate_inputs):
    model, ids, probes, pad = gate_inputs
    onnxrt = OnnxModel(model, providers="cpu").run
    engines = ("onnxruntime", "onnx.reference")
    assert engine_gate(model, onnxrt, probes, ids, pad, 1e-5, 1e-5, engines)["passed"]

    def shifted(i, n):  # a reference that differs in one class by 0.5: every engine now disagrees with it
        out = onnxrt(i, n).copy()
        out[:, 0] += 0.5
        return out

    gate = engine_gate(model, shifted, probes, ids, pad, 1e-5, 1e-5, engines)
    assert not gate["passed"] and [e["passed"] for e in gate["engines"]] == [False, False]
    assert all(e["max_abs"] == pytest.approx(0.5, abs=1e-4) for e in gate["engines"])


def test_an_engine_that_cannot_load_the_graph_fails_the_gate(gate_inputs, tmp_path):
    model, ids, probes, pad = gate_inputs
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    gate = engine_gate(
        broken, OnnxModel(model, providers="cpu").run, probes, ids[:10], pad, 1e-5, 1e-5, ("onnx.reference", "tract")
    )
    assert not gate["passed"] and all(not e["loads"] and e["error"] for e in gate["engines"])

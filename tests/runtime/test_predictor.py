"""The runtime Predictor: results an application can rely on, and clear errors where it cannot answer."""

import numpy as np
import onnxruntime as ort
import pytest

from seqship.runtime import InputError, Predictor, ProviderError
from seqship.runtime.session import resolve_providers

TEXTS = ["Nguyen", "Schmidt", "O'Brien", "Rossi", "Tanaka", "Kowalski", "Papadopoulos", "Dvořák"]


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.load(tiny_run[1]["bundle"], providers="cpu")


def test_predict_gives_label_score_and_sorted_top_k(predictor):
    results = predictor.predict(TEXTS, top_k=3)
    assert len(results) == len(TEXTS)
    for r in results:
        assert r.label in predictor.labels and r.label == r.top_k[0][0] and r.score == r.top_k[0][1]
        scores = [s for _, s in r.top_k]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-9
    assert predictor.provider == "CPUExecutionProvider"


def test_a_texts_result_does_not_depend_on_its_batch(predictor):
    together = predictor.logits(TEXTS)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(predictor.logits([text])[0], together[i], atol=1e-5, rtol=1e-5)
    small = Predictor.load(predictor.bundle.root, providers="cpu", batch_size=3)
    np.testing.assert_allclose(small.logits(TEXTS), together, atol=1e-5, rtol=1e-5)


def test_one_text_alone_gets_the_result_it_gets_in_a_batch(predictor):
    # predict([text]) takes a shorter path than a batch (no chunks, sorting or threads; softmax in Python)
    together = predictor.predict(TEXTS + ["Abcdefghij" * 40], top_k=3)
    for text, batched in zip(TEXTS + ["Abcdefghij" * 40], together):
        alone = predictor.predict([text], top_k=3)[0]
        assert [lab for lab, _ in alone.top_k] == [lab for lab, _ in batched.top_k] and alone.label == batched.label
        assert [s for _, s in alone.top_k] == pytest.approx([s for _, s in batched.top_k], abs=1e-6)
        assert (alone.num_tokens, alone.truncated, alone.provider) == (
            batched.num_tokens,
            batched.truncated,
            batched.provider,
        )
        assert predictor.predict([text])[0].top_k == alone.top_k[:1]


def test_one_bad_text_alone_is_returned_or_raised_with_its_index(predictor):
    [returned] = predictor.predict(["   "], errors="return", first_index=7)
    assert isinstance(returned, InputError) and returned.index == 7 and "#7 is empty" in str(returned)
    with pytest.raises(InputError, match="#7 is a NoneType"):
        predictor.predict([None], first_index=7)
    for texts in (["Nguyen"], ["Nguyen", "Rossi"]):  # the same check on the one-text path and the list path
        for bad in (None, "7", True, 1.0):
            with pytest.raises(InputError, match="first_index must be an integer"):
                predictor.predict(texts, first_index=bad)


def test_over_long_text_is_truncated_and_reported(predictor):
    long_text = "Abcdefghij" * 40
    r = predictor.predict([long_text])[0]
    assert r.truncated and r.num_tokens == predictor.tokenizer.spec.max_length
    cut = long_text[: predictor.tokenizer.spec.max_length]
    np.testing.assert_allclose(predictor.logits([long_text]), predictor.logits([cut]), atol=1e-6)


def test_unknown_characters_map_to_unk_rather_than_failing(predictor):
    r = predictor.predict(["☃☃☃"])[0]
    assert r.label in predictor.labels and r.num_tokens == 3


@pytest.mark.parametrize(
    "texts, index, message",
    [
        (["Nguyen", "   "], 1, "#1 is empty after normalisation"),
        (["Nguyen", None], 1, "#1 is a NoneType"),
        ([b"Nguyen"], 0, "#0 is a bytes"),
    ],
)
def test_bad_texts_raise_input_error_naming_the_index(predictor, texts, index, message):
    with pytest.raises(InputError, match=message) as e:
        predictor.predict(texts)
    assert e.value.index == index


def test_a_single_string_and_bad_top_k_are_usage_errors(predictor):
    with pytest.raises(InputError, match="not a single string"):
        predictor.predict("Nguyen")
    with pytest.raises(InputError, match="top_k must be between 1 and 18"):
        predictor.predict(["Nguyen"], top_k=19)


def test_an_empty_list_returns_nothing_without_touching_the_session(predictor):
    assert predictor.predict([]) == [] and predictor.logits([]).shape == (0, 18)


def test_asking_for_cuda_without_it_is_an_error_listing_what_is_available(tiny_run):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA execution provider; the error path cannot be reached here")
    with pytest.raises(ProviderError, match=r"not available .* available: \[.*'CPUExecutionProvider'"):
        Predictor.load(tiny_run[1]["bundle"], providers="cuda")
    with pytest.raises(ProviderError, match="not one of 'auto', 'cpu', 'cuda'"):
        resolve_providers("tpu")
    with pytest.raises(ProviderError, match="NopeExecutionProvider"):
        resolve_providers(["NopeExecutionProvider"])
    assert resolve_providers("auto") == ["CPUExecutionProvider"]


def test_session_threads_are_settable_and_reported(tiny_run):
    p = Predictor.load(
        tiny_run[1]["bundle"], providers=["CPUExecutionProvider"], intra_op_num_threads=3, inter_op_num_threads=1
    )
    opts = p.model.session.get_session_options()
    # On CPU the thread budget parallelises batches; the session itself runs single-threaded.
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads, p.threads) == (1, 1, 3)
    assert p.predict(["Nguyen"])[0].provider == p.provider == "CPUExecutionProvider"


def test_negative_token_ids_are_refused_not_read_from_the_end(tiny_run):
    from pathlib import Path

    from seqship.runtime.session import OnnxModel

    model = OnnxModel(Path(tiny_run[1]["bundle"]) / "model.onnx", providers="cpu")
    with pytest.raises(InputError, match="row 1: negative token id -1"):
        model.run(np.array([[3, 4], [5, -1]]), np.array([2, 2]))


def test_a_single_provider_name_is_accepted_on_the_command_line(tiny_run):
    from tests.conftest import invoke

    result = invoke("predict", "--bundle", tiny_run[1]["bundle"], "--providers", "CPUExecutionProvider", "Nguyen")
    assert result.exit_code == 0, result.output

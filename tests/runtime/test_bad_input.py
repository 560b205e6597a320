"""Arbitrary text never crashes the predictor: it answers, or raises InputError naming the item."""

import json
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqship.runtime import InputError, Predictor

# Every code point, lone surrogates included (hypothesis excludes category Cs unless told otherwise).
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
TRICKY = st.sampled_from(
    [
        "",
        " ",
        "\t\n",
        "\u3000",
        "\x00",
        "\x00abc",
        "\u0301",
        "e\u0301",
        "😀",
        "👩‍👩‍👧",
        "\ud800",
        "\udfff x",
        "مرحبا",
        "שלום",
        "\u202eevil",
        "\ufeff",
        "\u0085",
        "a" * 300,
    ]
)
TEXTS = st.one_of(st.text(ANY_CHAR, max_size=60), TRICKY)
NON_STR = st.one_of(
    st.none(),
    st.binary(max_size=10),
    st.integers(),
    st.floats(allow_nan=True),
    st.lists(st.text(max_size=3), max_size=2),
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.load(tiny_run[1]["bundle"], providers="cpu")


@pytest.fixture(scope="module")
def real_texts(tiny_run):
    path = tiny_run[0] / "tiny" / "data" / "test.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines()[:200]]


def empty_after_normalisation(predictor, text) -> bool:
    return not predictor.tokenizer.tokens(text)


@SETTINGS
@given(text=TEXTS)
def test_any_text_gets_a_result_or_input_error_for_exactly_the_empty_ones(predictor, text):
    try:
        [r] = predictor.predict([text], top_k=2)
    except InputError as e:
        assert e.index == 0 and empty_after_normalisation(predictor, text)
        return
    assert not empty_after_normalisation(predictor, text)
    assert r.label in predictor.labels and 0.0 <= r.score <= 1.0 and np.isfinite(r.score)
    assert 1 <= r.num_tokens <= predictor.tokenizer.spec.max_length


@SETTINGS
@given(text=TEXTS, data=st.data())
def test_a_texts_result_does_not_depend_on_the_rest_of_the_batch(predictor, real_texts, text, data):
    if empty_after_normalisation(predictor, text):
        return
    others = data.draw(st.lists(st.sampled_from(real_texts), max_size=12))
    pos = data.draw(st.integers(0, len(others)))
    batch = others[:pos] + [text] + others[pos:]
    alone = predictor.logits([text])[0]
    together = predictor.logits(batch)[pos]
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=1e-5)
    assert predictor.predict(batch)[pos].label == predictor.predict([text])[0].label


@SETTINGS
@given(text=st.text(ANY_CHAR, max_size=40))
def test_canonically_equivalent_texts_give_identical_results(predictor, text):
    nfc, nfd = unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)
    if empty_after_normalisation(predictor, nfc):
        with pytest.raises(InputError):
            predictor.predict([nfd])
        return
    np.testing.assert_array_equal(predictor.logits([nfc]), predictor.logits([nfd]))


@SETTINGS
@given(value=NON_STR, data=st.data())
def test_non_strings_anywhere_in_a_list_raise_input_error_with_their_index(predictor, real_texts, value, data):
    batch = data.draw(st.lists(st.sampled_from(real_texts), min_size=0, max_size=5))
    pos = data.draw(st.integers(0, len(batch)))
    batch.insert(pos, value)
    with pytest.raises(InputError, match=rf"text #{pos} is a {type(value).__name__}") as e:
        predictor.predict(batch)
    assert e.value.index == pos
    # With errors="return" the other texts are still scored and the bad one is reported in place.
    results = predictor.predict(batch, errors="return")
    assert isinstance(results[pos], InputError)
    assert all(not isinstance(r, InputError) for i, r in enumerate(results) if i != pos)


def test_a_100_000_character_text_is_truncated_visibly(predictor):
    text = "Nguyen " * 14_286
    assert len(text) > 100_000
    [r] = predictor.predict([text])
    assert r.truncated and r.num_tokens == predictor.tokenizer.spec.max_length


def test_whole_batches_of_garbage_are_refused_with_the_first_bad_index(predictor):
    with pytest.raises(InputError, match="#2 is empty"):
        predictor.predict(["Nguyen", "\x00", "   ", None])
    with pytest.raises(InputError, match="texts is None"):
        predictor.predict(None)
    with pytest.raises(InputError, match="must be a list of strings"):
        predictor.predict(42)

"""The tokenizer spec: what training saw is what serving sees, in any language."""

import json
import json as _json
import subprocess as _subprocess
import sys
import unicodedata
import unicodedata as _unicodedata
from pathlib import Path as _Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqship.runtime.errors import InputError, TokenizerError
from seqship.runtime.tokenizer import (
    WHITESPACE,
    Tokenizer,
    TokenizerSpec,
    build_vocab,
    normalize,
    pad_batch,
    split_tokens,
)


def make(texts, **kw):
    base = TokenizerSpec(**{k: v for k, v in kw.items() if k != "max_length"})
    vocab = build_vocab([split_tokens(normalize(t, base), base.type) for t in texts])
    return Tokenizer(TokenizerSpec(vocab=vocab, **kw))


def test_whitespace_table_matches_python_isspace_everywhere():
    # The spec spells out its whitespace so other languages can reproduce it; it must equal str.isspace.
    assert WHITESPACE == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    spec = TokenizerSpec(normalization=None)  # (NFC itself maps some spaces to others, e.g. U+2001 -> U+2003)
    for c in WHITESPACE:  # step 4 strips exactly these, at both ends, and nothing else
        assert normalize(c + c + "x" + c + "y" + c, spec) == "x" + c + "y"
    assert normalize("\u200bx\ufeff", spec) == "\u200bx\ufeff"  # zero-width space and BOM are not whitespace


BOM_TEXTS = ["\ufeffNguyen", "\ufeff\ufeff Nguyen", " \ufeff\tNguyen", "\ufeff\u3000\ufeffNguyen  "]


@pytest.mark.parametrize("kind", ["char", "word"])
def test_a_leading_bom_is_stripped_as_whitespace_is_and_nothing_else_changes(kind):
    """The data stage drops a leading U+FEFF; the tokenizer must too, or the served model sees a token
    training never did. A BOM anywhere else is text, as before."""
    tok = make(["Nguyen", "a\ufeffb"], type=kind, max_length=40)
    for text in BOM_TEXTS:
        assert tok.encode(text) == tok.encode("Nguyen"), repr(text)
        assert stream_tokens(text, tok.spec, 40, piece=1) == (tok.tokens("Nguyen"), False)
    assert tok.encode("a\ufeffb") != tok.encode("ab")  # inside a text: kept
    assert tok.tokens("Nguyen\ufeff")[-1] == "\ufeff" or kind == "word"  # at the end: kept (char tokens)
    with pytest.raises(InputError, match="empty after normalisation"):
        tok.encode("\ufeff \ufeff")


def test_node_strips_a_leading_bom_as_python_does(tmp_path_factory):
    tok, path = _spec_file(tmp_path_factory, type="char", normalization="NFC", lowercase=False)
    node = _Node(path)
    try:
        for text in [*BOM_TEXTS, "a\ufeffb", "ab\ufeff", "\ufeffé"]:
            assert node(text)["ids"] == tok.encode(text)[0], repr(text)
        assert node("\ufeff ")["error"]["name"] == "InputError"
    finally:
        node.close()


def test_spec_round_trips_through_json_with_a_stable_hash():
    tok = make(["Nguyen", "Schmidt", "Škoda"], max_length=12)
    again = TokenizerSpec.from_json(tok.spec.to_json())
    assert again == tok.spec
    assert again.sha256() == tok.spec.sha256()
    assert json.loads(tok.spec.to_json())["vocab"][:2] == ["<pad>", "<unk>"]


def test_char_tokens_are_code_points_and_unknowns_map_to_unk():
    tok = make(["ab", "😀"], max_length=10)
    ids, truncated = tok.encode("a😀z")
    assert len(ids) == 3  # the astral emoji is one token, not two UTF-16 units
    assert ids[2] == tok.spec.unk_id and ids[0] != tok.spec.unk_id
    assert not truncated


def test_canonically_equivalent_texts_get_the_same_ids():
    tok = make(["Müller", "Škoda"], max_length=10)
    nfc, nfd = unicodedata.normalize("NFC", "Müller Škoda"), unicodedata.normalize("NFD", "Müller Škoda")
    assert nfc != nfd
    assert tok.encode(nfc) == tok.encode(nfd)


def test_truncation_keeps_the_first_max_length_tokens_and_says_so():
    tok = make(["abcdef"], max_length=4)
    ids, truncated = tok.encode("abcdefabc")
    assert truncated and len(ids) == 4
    assert ids == tok.encode("abcd")[0]


def test_word_tokens_split_on_whitespace_and_punctuation_keeping_marks_in_words():
    assert split_tokens("Hello, wörld!  it's", "word") == ["Hello", ",", "wörld", "!", "it", "'", "s"]
    decomposed = unicodedata.normalize("NFD", "café")
    assert split_tokens(decomposed, "word") == [decomposed]  # the combining accent stays inside the word


def test_lowercase_and_strip_apply_before_splitting():
    tok = make(["abc"], max_length=8, lowercase=True)
    assert tok.encode("\u3000 ABC \u2028")[0] == tok.encode("abc")[0]


def test_empty_and_non_string_texts_raise_input_error_naming_the_index():
    tok = make(["abc"], max_length=8)
    with pytest.raises(InputError, match="#3 is empty") as e:
        tok.encode(" \t\n", index=3)
    assert e.value.index == 3
    with pytest.raises(InputError, match="#1 is a bytes"):
        tok.encode_batch(["abc", b"abc"])


def test_reserved_names_never_come_out_of_a_text():
    # Even when the reserved entries are spelled like ordinary words, a text never maps to them.
    tok = Tokenizer(TokenizerSpec(vocab=("PAD", "UNK", "x"), type="word", max_length=8))
    assert tok.encode("PAD x UNK")[0] == [1, 2, 1]


def test_vocab_is_deterministic_frequency_then_code_point_order():
    assert build_vocab([["b", "a"], ["a", "c"], ["c"]]) == ("<pad>", "<unk>", "a", "c", "b")
    assert build_vocab([["a", "a", "b"]], min_freq=2) == ("<pad>", "<unk>", "a")
    assert build_vocab([["b", "a"], ["a", "c"], ["c"]], max_size=4) == ("<pad>", "<unk>", "a", "c")  # pad and unk count


def test_word_vocabulary_limits_from_the_cli_reach_the_spec_and_map_the_rest_to_unk():
    from seqship.pipeline.cli import _train_cfg
    from seqship.pipeline.train import fit_tokenizer

    texts = ["The film, the FILM!", "a film", "the end"]  # "the" and "film" 3 times each, "a" and "end" once
    tok = fit_tokenizer(texts, _train_cfg({"data_path": None, "dataset": "mr", "seed": 0, "min_freq": 2}))
    assert tok.spec.vocab == ("<pad>", "<unk>", "film", "the")  # lower-cased; "a" and "end" below min_freq
    assert tok.encode("The end of the film")[0] == [3, 1, 1, 3, 2]
    tok = fit_tokenizer(texts, _train_cfg({"data_path": None, "dataset": "mr", "seed": 0, "max_vocab": 3}))
    assert tok.spec.vocab == ("<pad>", "<unk>", "film")  # a tie goes to code-point order
    assert tok.encode("the film")[0] == [1, 2]
    # No token reaches --min-freq: a vocabulary of pad and unk alone once trained, then failed in export
    from seqship.pipeline.train import TrainError

    with pytest.raises(
        TrainError,
        match=r"no word token of the training split occurs --min-freq 4 times \(the most "
        r"frequent occurs 3 times\): lower --min-freq, or use --tokenizer char",
    ):
        fit_tokenizer(texts, _train_cfg({"data_path": None, "dataset": "mr", "seed": 0, "min_freq": 4}))


def test_pad_batch_right_pads_with_the_pad_id():
    ids, lengths = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]
    assert ids.dtype.name == lengths.dtype.name == "int64"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 99}, "format_version 99 is not supported"),
        ({"type": "byte"}, "type 'byte' is unknown"),
        ({"pad_id": 50}, "pad_id=50 is outside"),
        ({"vocab": ["<pad>", "<unk>", "a", "a"]}, "lists 'a' more than once"),
        ({"max_length": 0}, "max_length must be"),
        ({"lowercase": "false"}, "lowercase must be true or false"),
        ({"max_length": True}, "max_length must be an integer"),
    ],
)
def test_malformed_specs_are_refused_with_the_reason(change, message):
    d = make(["abc"], max_length=8).spec.to_dict() | change
    with pytest.raises(TokenizerError, match=message):
        TokenizerSpec.from_dict(d)


# --- the same ids from the JavaScript tokenizer: property tests over many scripts -------------------------


_JS_TOOL = _Path(__file__).resolve().parents[2] / "runtime" / "js" / "tools" / "tokenize_stdio.mjs"
# Latin, Latin-1/Extended with combining marks, Greek (final sigma), Cyrillic, Armenian, Hebrew, Arabic,
# Devanagari, Thai, Hangul syllables and jamo, CJK, kana, emoji, fullwidth forms, ligatures (NFKC), and
# blocks that Unicode 15-17 filled (unassigned in Python 3.11's 14.0) to exercise the mismatch rule.
_SCRIPTS = [
    (0x20, 0x7E),
    (0xA0, 0x24F),
    (0x300, 0x36F),
    (0x370, 0x3FF),
    (0x400, 0x4FF),
    (0x530, 0x58F),
    (0x590, 0x5FF),
    (0x600, 0x6FF),
    (0x900, 0x97F),
    (0xE00, 0xE7F),
    (0x1100, 0x11FF),
    (0xAC00, 0xACFF),
    (0x4E00, 0x4FFF),
    (0x3040, 0x30FF),
    (0x1F300, 0x1FAFF),
    (0xFF00, 0xFFEF),
    (0xFB00, 0xFB4F),
    (0x1E030, 0x1E08F),
    (0x2EBF0, 0x2EE5F),
    (0x11F00, 0x11F5F),
    (0x2000, 0x206F),
    (0x1D400, 0x1D4FF),
]
_ALPHABET = st.one_of(
    *[st.characters(min_codepoint=a, max_codepoint=b, exclude_categories=("Cs",)) for a, b in _SCRIPTS],
    st.just("\ufeff"),  # a byte order mark, stripped at the start (step 4)
)


def _spec_file(tmp_path_factory, **kw):
    spec = TokenizerSpec(
        vocab=("<pad>", "<unk>", "a", "é", "σ", "ς", "中", "ab", "hello", "ﬁ", "ß"), max_length=40, **kw
    )
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(spec.to_json(), encoding="utf-8")
    return Tokenizer(spec), path


class _Node:
    def __init__(self, path):
        self.proc = _subprocess.Popen(
            ["node", str(_JS_TOOL), str(path)],
            stdin=_subprocess.PIPE,
            stdout=_subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="surrogatepass",
        )

    def __call__(self, text):
        self.proc.stdin.write(_json.dumps({"text": text}) + "\n")
        self.proc.stdin.flush()
        return _json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, norm, lower", [("char", "NFC", False), ("word", "NFKC", True), ("word", "NFC", False), ("char", "NFD", True)]
)
def test_python_and_node_tokenizers_give_identical_ids_over_many_scripts(tmp_path_factory, kind, norm, lower):
    """Every text Node accepts gets Python's ids exactly; Node (another Unicode version) refuses exactly
    the texts holding a code point unassigned in the spec's version, which is where they could differ."""
    tok, path = _spec_file(tmp_path_factory, type=kind, normalization=norm, lowercase=lower)
    node = _Node(path)
    seen = {"same": 0, "refused": 0}

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.text(_ALPHABET, min_size=0, max_size=30))
    def check(text):
        got = node(text)
        try:
            want = tok.encode(text)
        except Exception as e:  # Python refuses (empty after normalisation): Node must refuse the same way
            assert "error" in got and got["error"]["name"] == type(e).__name__, (text, got)
            return
        unknown = [c for c in text if _unicodedata.category(c) == "Cn"]
        if "error" in got:
            assert got["error"]["name"] == "InputError" and unknown, (text, got)
            seen["refused"] += 1
        else:
            assert not unknown or _unicodedata.unidata_version == node_unicode(), (text, got)
            assert (got["ids"], got["truncated"]) == (want[0], want[1]), text
            seen["same"] += 1

    try:
        check()
    finally:
        node.close()
    assert seen["same"] > 500 and seen["refused"] > 10, seen


def node_unicode():
    return _subprocess.run(["node", "-p", "process.versions.unicode"], capture_output=True, text=True).stdout.strip()


# --- bounded memory: a long text is tokenized in pieces, with the same result -------------------------

from seqship.runtime.tokenizer import stream_tokens  # noqa: E402

# Characters whose treatment depends on their neighbours: combining marks and their bases, Hangul jamo
# that compose, final sigma and the case-ignorables it looks through, compatibility forms, whitespace.
_TRICKY = [
    "a",
    "A",
    "e",
    "\u0301",
    "\u0323",
    "Σ",
    "σ",
    "'",
    ".",
    ":",
    "^",
    "`",
    " ",
    "\u00a0",
    "\u2028",
    "\t",
    "\u1100",
    "\u1161",
    "\u11a8",
    "가",
    "İ",
    "ﬁ",
    "中",
    "か",
    "\u3099",
    "ß",
    "_",
    "-",
    "1",
    "\u0345",
    "\u00b7",
    "Å",
    "\u212b",
    "\u0cc6",
    "\u0cd5",
    "ǅ",
    "\U0001d400",
    "é",
    "각",
    "\U0001d6ba",
    "\uff9e",
    "\u0385",
    "ᾼ",
    "ﬃ",
    "😀",
    "—",
    "\u2019",
    "ʰ",
    "\u0387",
    "ϓ",
    "ǰ",
    "\u0958",
    "\u1e9b",
    "\u0130",
    "\ufeff",
]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.lists(st.sampled_from(_TRICKY), max_size=60).map("".join),
    piece=st.integers(1, 7),
    limit=st.integers(1, 30),
    kind=st.sampled_from(["char", "word"]),
    norm=st.sampled_from(["NFC", "NFKC", "NFD", "NFKD", None]),
    lower=st.booleans(),
)
def test_tokenizing_in_pieces_gives_exactly_the_whole_texts_first_tokens(text, piece, limit, kind, norm, lower):
    spec = TokenizerSpec(
        type=kind,
        normalization=norm,
        lowercase=lower,
        max_length=limit,
        vocab=(
            "<pad>",
            "<unk>",
            *sorted(set(split_tokens(normalize(text, TokenizerSpec(normalization=norm, lowercase=lower)), kind))),
        ),
    )
    whole = split_tokens(normalize(text, spec), kind)
    assert stream_tokens(text, spec, limit, piece=piece) == (whole[:limit], len(whole) > limit)


def test_a_huge_text_costs_its_own_string_and_not_its_tokens():
    """RSS of a fresh process encoding a 200 MB text grows by about the text itself, not by its tokens."""
    code = (
        "import resource, sys\n"
        "from seqship.runtime.tokenizer import Tokenizer, TokenizerSpec\n"
        "tok = Tokenizer(TokenizerSpec(vocab=('<pad>', '<unk>', 'a', 'b'), max_length=64, type=sys.argv[1]))\n"
        "text = ('ab ' * 70_000_000)\n"  # 210 MB of ASCII (1 byte per code point in CPython)
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "ids, truncated = tok.encode(text)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(len(ids), truncated, (after - before) // 1024)\n"
    )
    for kind in ("char", "word"):
        out = _subprocess.run(
            [sys.executable, "-c", code, kind], capture_output=True, text=True, check=True
        ).stdout.split()
        assert out[:2] == ["64", "True"]
        assert int(out[2]) < 50, f"{kind}: encoding grew RSS by {out[2]} MB"  # all tokens at once: several GB


def test_long_texts_of_any_script_are_scored_whole_or_in_pieces_never_refused():
    """Hangul, precomposed letters, symbols, emoji and case-ignorables: long texts of each get the first
    tokens the whole text gives (in pieces where they can be cut, whole where they cannot)."""
    from seqship.runtime import tokenizer as t

    for unit in ("안녕하세요 반갑습니다 ", "é", "😀", "—", ".", "\u0301", "Σ.", "ab "):
        text = unit * (t.STREAM_ABOVE // len(unit) + 50)
        for kind, norm in (("char", "NFC"), ("word", "NFD"), ("char", "NFKC"), ("word", None)):
            spec = TokenizerSpec(
                type=kind, normalization=norm, lowercase=True, max_length=300, vocab=("<pad>", "<unk>", "a")
            )
            whole = split_tokens(normalize(text, spec), kind)
            got, more = t.stream_tokens(text, spec, 300, piece=1000)
            ids = {"a": 2}  # a word longer than every vocabulary entry is kept only as far as it matters: unk
            assert ([ids.get(x, 1) for x in got], more) == ([ids.get(x, 1) for x in whole[:300]], len(whole) > 300), (
                unit,
                kind,
                norm,
            )


@pytest.mark.parametrize(
    "doc", ['{"x": ' + "[" * 600 + "]" * 600 + "}", '{"pad_id": 9007199254740992}', '{"x": 1e400}']
)
def test_tokenizer_json_is_read_by_the_limits_every_bundle_json_reader_applies(doc):
    # Node and C++ refuse nesting over 512, integers JavaScript cannot hold exactly, numbers beyond a double:
    # the Python reader of tokenizer.json refuses them too, instead of reading what the others refuse.
    with pytest.raises(TokenizerError, match="not valid JSON"):
        TokenizerSpec.from_json(doc)

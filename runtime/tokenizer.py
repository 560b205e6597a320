"""The preprocessing spec, implemented once: text -> token ids, exactly as training saw them.

The spec is data (`tokenizer.json`), so any language can reproduce the ids:

1. the text must be a string (anything else is an error);
2. Unicode-normalise it with `normalization` (NFC by default; `null` means none);
3. lower-case it with full Unicode lower-casing when `lowercase` is true;
4. strip leading and trailing whitespace (the code points listed in `WHITESPACE`), and byte order marks
   (U+FEFF) at the start, in any mix with the whitespace there: a leading BOM is never meaningful, and the
   data stage drops it too, so a text read from a file that opens with one gets the ids training saw;
5. split it into tokens:
   - `char`: one token per Unicode code point (not per UTF-16 unit);
   - `word`: maximal runs of word characters (general category L*, M*, N* or Pc) are tokens, every
     other non-whitespace code point is a token on its own, whitespace separates and is dropped;
6. keep the first `max_length` tokens (longer texts are truncated, and the result says so);
7. map each token to its index in `vocab`, or to `unk_id` when it is not there; the entries at
   `pad_id` and `unk_id` are reserved names that no text token ever maps to;
8. a text with no tokens left is an error: the model needs at least one position.

Unicode version. Steps 2, 3 and 5 read the Unicode character database, whose version differs between
runtimes (Python 3.11 has 14.0, Node 20 17.0). The spec records the version it was built with
(`unicode_version`) and the code points unassigned in it (`unassigned`). Unicode's stability policies
keep normalisation, case mapping and (in practice; measured over every code point for 14.0 vs 17.0)
the word/non-word class of *assigned* characters unchanged between versions, so two runtimes can only
disagree on a code point that one of them does not know. A runtime whose version differs from the spec's
therefore refuses, text by text, any text holding a code point unassigned in either version (an
InputError naming it); every other text gets the same ids as the spec's version would give. With
`unicode_mismatch="warn"` it warns once instead and tokenizes everything with its own tables.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from seqship.runtime.errors import InputError, TokenizerError
from seqship.runtime.fsio import FileTooLargeError, read_capped
from seqship.runtime.jsonio import strict_json

log = logging.getLogger(__name__)

FORMAT = "seqship.tokenizer"
FORMAT_VERSION = 2  # 2: unicode_version and unassigned recorded
UNICODE_VERSION = unicodedata.unidata_version  # this runtime's Unicode character database
UNICODE_POLICIES = ("refuse", "warn")
MAX_SPEC_BYTES = 256 << 20  # a tokenizer.json read from a path, at most (a bundle's is read as the manifest says)
MAX_LENGTH = 1_000_000  # tokens kept per text, at most: a bound on what one text can cost
_RANGES = re.compile(r"[0-9A-F]{4,6}-[0-9A-F]{4,6}( [0-9A-F]{4,6}-[0-9A-F]{4,6})*")
TYPES = ("char", "word")
NORMALIZATIONS = ("NFC", "NFKC", "NFD", "NFKD", None)
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

# Python's str.isspace() set (Unicode 15), spelled out so that other languages can reproduce it exactly;
# a test checks it against str.isspace() over every code point.
WHITESPACE = frozenset(
    chr(c)
    for c in (
        0x09,
        0x0A,
        0x0B,
        0x0C,
        0x0D,
        0x1C,
        0x1D,
        0x1E,
        0x1F,
        0x20,
        0x85,
        0xA0,
        0x1680,
        *range(0x2000, 0x200B),
        0x2028,
        0x2029,
        0x202F,
        0x205F,
        0x3000,
    )
)


@functools.lru_cache(maxsize=1)
def unassigned_ranges() -> str:
    """This runtime's unassigned code points (General Category Cn) as "LO-HI LO-HI ..." upper-case hex."""
    out, start = [], None
    for c in range(0x110000):
        if unicodedata.category(chr(c)) == "Cn":
            if start is None:
                start = c
        elif start is not None:
            out.append(f"{start:04X}-{c - 1:04X}")
            start = None
    if start is not None:
        out.append(f"{start:04X}-10FFFF")
    return " ".join(out)


def parse_ranges(text: object, source: str = "tokenizer spec") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`unassigned` -> (starts, ends), sorted and disjoint, or TokenizerError."""
    if not isinstance(text, str) or not _RANGES.fullmatch(text):
        raise TokenizerError(f"{source}: 'unassigned' must be space-separated upper-case hex ranges LO-HI")
    starts, ends = [], []
    for part in text.split(" "):
        lo, hi = (int(x, 16) for x in part.split("-"))
        if not lo <= hi <= 0x10FFFF or (ends and lo <= ends[-1]):
            raise TokenizerError(f"{source}: 'unassigned' range {part} is out of order, overlapping or beyond U+10FFFF")
        starts.append(lo)
        ends.append(hi)
    return tuple(starts), tuple(ends)


def version_tuple(text: str) -> tuple[int, ...]:
    """ "14.0.0" / "17.0" -> (14, 0, 0) / (17, 0, 0), for comparing Unicode versions."""
    parts = [int(p) for p in str(text).split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything needed to turn text into token ids; serialised as tokenizer.json."""

    type: str = "char"  # "char" or "word": what one token is
    vocab: tuple[str, ...] = field(default=(PAD_TOKEN, UNK_TOKEN))  # index = token id
    max_length: int = 64  # tokens kept per text; the rest is cut (truncation is reported)
    normalization: str | None = "NFC"  # unicodedata form applied first, or None
    lowercase: bool = False  # full Unicode lower-casing after normalisation
    pad_id: int = 0  # id used to right-pad rows of a batch; never produced by a text
    unk_id: int = 1  # id of any token missing from vocab
    unicode_version: str = UNICODE_VERSION  # Unicode database the vocabulary was built with
    unassigned: str = field(default_factory=unassigned_ranges)  # code points unassigned in that version

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise TokenizerError(f"tokenizer type {self.type!r} is unknown: use one of {TYPES}")
        if self.normalization not in NORMALIZATIONS:
            raise TokenizerError(
                f"tokenizer normalization {self.normalization!r} is unknown: use one of {NORMALIZATIONS}"
            )
        if not isinstance(self.lowercase, bool):
            raise TokenizerError(f"tokenizer lowercase must be true or false, got {self.lowercase!r}")
        for name in ("max_length", "pad_id", "unk_id"):
            if isinstance(getattr(self, name), bool):
                raise TokenizerError(f"tokenizer {name} must be an integer, got {getattr(self, name)!r}")
        if not isinstance(self.max_length, int) or not 1 <= self.max_length <= MAX_LENGTH:
            raise TokenizerError(
                f"tokenizer max_length must be an integer from 1 to {MAX_LENGTH}, got {self.max_length!r}"
            )
        n = len(self.vocab)
        for name in ("pad_id", "unk_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < n:
                raise TokenizerError(f"tokenizer {name}={value!r} is outside the vocabulary (size {n})")
        if self.pad_id == self.unk_id:
            raise TokenizerError("tokenizer pad_id and unk_id must differ")
        if len(set(self.vocab)) != n:
            dup = next(t for t, c in Counter(self.vocab).items() if c > 1)
            raise TokenizerError(f"tokenizer vocab lists {dup!r} more than once")
        if not isinstance(self.unicode_version, str) or not re.fullmatch(
            r"[0-9]{1,3}\.[0-9]{1,3}(\.[0-9]{1,3})?", self.unicode_version
        ):
            raise TokenizerError(f"tokenizer unicode_version must look like '14.0.0', got {self.unicode_version!r}")
        parse_ranges(self.unassigned)

    def to_dict(self) -> dict:
        """The spec as the JSON object tokenizer.json holds."""
        d = asdict(self)
        d["vocab"] = list(self.vocab)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, UTF-8, no ASCII escaping): what tokenizer.json holds."""
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, indent=1) + "\n"

    def sha256(self) -> str:
        """sha256 of the canonical JSON: binds the tokenizer to the model exported with it."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, d: dict, source: str = "tokenizer spec") -> TokenizerSpec:
        """Validate and build a spec from a parsed tokenizer.json, or a TokenizerError naming the field."""
        if not isinstance(d, dict):
            raise TokenizerError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise TokenizerError(f"{source}: 'format' is {d.get('format')!r}, expected {FORMAT!r}")
        if type(d.get("format_version")) is not int or d["format_version"] != FORMAT_VERSION:
            raise TokenizerError(
                f"{source}: format_version {d.get('format_version')!r} is not supported "
                f"(this runtime reads version {FORMAT_VERSION}; version 1 did not record its Unicode version): "
                "upgrade seqship, or rebuild the bundle with this seqship: `pipeline run export --force`, then "
                "`pipeline run all`"
            )
        known = {
            "type",
            "vocab",
            "max_length",
            "normalization",
            "lowercase",
            "pad_id",
            "unk_id",
            "unicode_version",
            "unassigned",
        }
        missing = sorted(known - d.keys())
        if missing:
            raise TokenizerError(f"{source}: missing keys {missing}")
        if not isinstance(d["vocab"], list) or not all(isinstance(t, str) for t in d["vocab"]):
            raise TokenizerError(f"{source}: 'vocab' must be a list of strings")
        kwargs = {k: d[k] for k in known}
        kwargs["vocab"] = tuple(d["vocab"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer.json") -> TokenizerSpec:
        """Parse (strictly: no NaN, bounded nesting) and validate a tokenizer.json text."""
        try:
            d = strict_json(text)  # the limits every bundle JSON reader applies, in every language
        except (ValueError, RecursionError) as e:  # JSONDecodeError, NaN/Infinity, a 5,000-digit integer
            raise TokenizerError(f"{source} is not valid JSON: {str(e)[:200]}") from None
        return cls.from_dict(d, source)


def _is_word_char(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat[0] in "LMN" or cat == "Pc"


def normalize(text: str, spec: TokenizerSpec) -> str:
    """Steps 2-4 of the spec: Unicode normalisation, optional lower-casing, whitespace (and leading BOM) strip."""
    if spec.normalization and not text.isascii():  # every normalisation form leaves ASCII unchanged
        text = unicodedata.normalize(spec.normalization, text)
    if spec.lowercase:
        text = text.lower()
    text = text.strip()  # str.strip() removes exactly WHITESPACE (a test holds the two equal)
    return text.lstrip(_LEADING) if text.startswith(BOM) else text


BOM = "\ufeff"
_LEADING = "".join(sorted(WHITESPACE)) + BOM  # what step 4 strips at a text's start


def split_tokens(text: str, kind: str) -> list[str]:
    """Step 5 of the spec on already-normalised text."""
    if kind == "char":
        return list(text)
    tokens: list[str] = []
    run: list[str] = []
    for ch in text:
        if _is_word_char(ch):
            run.append(ch)
            continue
        if run:
            tokens.append("".join(run))
            run = []
        if ch not in WHITESPACE:
            tokens.append(ch)
    if run:
        tokens.append("".join(run))
    return tokens


# Texts longer than this (code points) are tokenized in pieces of PIECE code points: memory then depends
# on max_length, not on the text's length (a text of hundreds of MB costs its own str and no more).
STREAM_ABOVE = 65_536
PIECE = 16_384
MAX_UNCUT = 1 << 20  # code points with no safe cut between them before the rest is processed whole


@functools.lru_cache(maxsize=1)
def _composes_after() -> frozenset[int]:
    """Code points that canonically compose with the character before them (second of a pair)."""
    out = set()
    for c in range(0x110000):
        d = unicodedata.decomposition(chr(c))
        if d and not d.startswith("<") and len(d.split()) == 2:
            out.add(int(d.split()[1], 16))
    return frozenset(out)


def _composes_back(c: int) -> bool:
    """Whether the code point can merge with the character before it under normalisation."""
    return 0x1161 <= c <= 0x1175 or 0x11A8 <= c <= 0x11C2 or c in _composes_after()  # Hangul V and T jamo too


def _case_ignorable(ch: str) -> bool:
    """Python's own Case_Ignorable, read off its lower-casing: a final sigma's context looks through it."""
    return ("A\u03a3" + ch + "B").lower()[1] == "\u03c3" and ("A\u03a3" + ch).lower()[1] == "\u03c2"


@functools.lru_cache(maxsize=65_536)
def _inert(ch: str, form: str | None) -> bool:
    """Whether a text may be cut right before or right after `ch` (under normalisation `form`) without
    changing steps 2-5: `ch` never merges with what precedes it (a starter that composes with nothing
    before it, and so is the first character of its normal form: canonical reordering and composition
    stop there), and its normal form starts with a character a final sigma's context stops at and holds
    no capital sigma (the only character whose lower case depends on its neighbours)."""
    c = ord(ch)
    if unicodedata.combining(ch) or _composes_back(c):
        return False
    n = unicodedata.normalize(form, ch) if form else ch
    if not n or "\u03a3" in n:
        return False
    first = n[0]
    return not (unicodedata.combining(first) or _composes_back(ord(first)) or _case_ignorable(first))


def _pieces(text: str, spec: TokenizerSpec, piece: int) -> Iterable[str]:
    """Steps 2-3 (normalise, lower-case) applied piece by piece; the pieces concatenate to what the
    whole text gives, because each cut lies between two inert characters (see `_inert`). A stretch of
    MAX_UNCUT code points with no such pair (e.g. a run of combining marks) is processed whole."""
    n, start, form = len(text), 0, spec.normalization
    while start < n:
        end = min(n, start + piece)
        while end < n and not (_inert(text[end - 1], form) and _inert(text[end], form)):
            end += 1
            if end - start > MAX_UNCUT:
                end = n  # no safe cut: correct first, bounded memory second
        part = text[start:end]
        if form and not part.isascii():
            part = unicodedata.normalize(form, part)
        yield part.lower() if spec.lowercase else part
        start = end


def stream_tokens(text: str, spec: TokenizerSpec, limit: int, piece: int = PIECE) -> tuple[list[str], bool]:
    """The first `limit` tokens of `text` under `spec` and whether more follow, computed piece by piece:
    equal to `split_tokens(normalize(text))[:limit]` (a property test holds them equal), in memory
    bounded by `piece` and `limit`. A word token longer than any vocabulary entry is kept only as long as
    the longest entry plus one (it maps to unk either way)."""
    longest = max((len(t) for t in spec.vocab), default=0) + 1
    tokens: list[str] = []
    pending_space: list[str] = []  # whitespace after the last token: a token only if one follows (strip)
    started = False  # leading whitespace is stripped
    run: list[str] = []
    run_len = 0

    def emit(tok: str) -> bool:
        """Add a token; True once one more than `limit` has been seen."""
        if spec.type == "char" and pending_space:
            tokens.extend(pending_space)
            pending_space.clear()
        tokens.append(tok)
        return len(tokens) > limit

    for part in _pieces(text, spec, piece):
        for ch in part:
            space = ch in WHITESPACE
            if not started:
                if space or ch == BOM:
                    continue
                started = True
            if spec.type == "char":
                if space:
                    pending_space.append(ch)
                    if (
                        len(pending_space) > limit
                    ):  # more whitespace than can be kept: what matters is if a token follows
                        del pending_space[limit:]
                elif emit(ch):
                    return tokens[:limit], True
                continue
            if _is_word_char(ch):
                if run_len < longest:
                    run.append(ch)
                run_len += 1
                continue
            if run_len:
                if emit("".join(run)):
                    return tokens[:limit], True
                run, run_len = [], 0
            if not space and emit(ch):
                return tokens[:limit], True
    if run_len and emit("".join(run)):
        return tokens[:limit], True
    return tokens, False


def build_vocab(
    token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None
) -> tuple[str, ...]:
    """Specials first, then tokens by falling frequency (ties by code point order): deterministic."""
    return vocab_from_counts(Counter(t for tokens in token_lists for t in tokens), min_freq, max_size)


def vocab_from_counts(counts: Mapping[str, int], min_freq: int = 1, max_size: int | None = None) -> tuple[str, ...]:
    """build_vocab from token counts (summed over shards of a split, say): the same vocabulary."""
    ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    if max_size is not None:
        ranked = ranked[: max(0, max_size - 2)]
    return (PAD_TOKEN, UNK_TOKEN, *ranked)


class Tokenizer:
    """Applies a TokenizerSpec; the one implementation that training and serving share.

    unicode_mismatch: what to do when this runtime's Unicode version differs from the spec's (see the
    module docstring): "refuse" (default) refuses, text by text, texts whose ids could differ; "warn"
    warns once and tokenizes everything with this runtime's tables.
    """

    def __init__(self, spec: TokenizerSpec, unicode_mismatch: str = "refuse"):
        if unicode_mismatch not in UNICODE_POLICIES:
            raise TokenizerError(f"unicode_mismatch must be one of {UNICODE_POLICIES}, got {unicode_mismatch!r}")
        self.spec = spec
        reserved = {spec.pad_id, spec.unk_id}
        self._ids = {tok: i for i, tok in enumerate(spec.vocab) if i not in reserved}
        self.unicode_version = UNICODE_VERSION
        self._check_unicode = False
        if version_tuple(spec.unicode_version) != version_tuple(UNICODE_VERSION):
            if unicode_mismatch == "warn":
                log.warning(
                    "tokenizer built with Unicode %s, this runtime has Unicode %s: texts with characters new in "
                    "either version may get other token ids than in training (unicode_mismatch='warn')",
                    spec.unicode_version,
                    UNICODE_VERSION,
                )
            else:
                self._check_unicode = True
                self._starts, self._ends = parse_ranges(spec.unassigned)

    @classmethod
    def from_file(cls, path, unicode_mismatch: str = "refuse") -> Tokenizer:
        """A tokenizer from a tokenizer.json file."""
        try:
            text = read_capped(path, MAX_SPEC_BYTES, "a tokenizer.json is a few MB at most").decode("utf-8")
        except (FileTooLargeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{path}: not a tokenizer spec ({str(e)[:160]})") from None
        return cls(TokenizerSpec.from_json(text, source=str(path)), unicode_mismatch)

    def _unicode_check(self, text: str, index: int) -> None:
        """Refuse a text holding a code point that either Unicode version does not know (see module doc)."""
        if text.isascii():
            return
        for ch in text:
            c = ord(ch)
            if c < 0x80:
                continue
            i = bisect.bisect_right(self._starts, c) - 1
            if (i >= 0 and c <= self._ends[i]) or unicodedata.category(ch) == "Cn":
                raise InputError(
                    f"text #{index} holds U+{c:04X}, which Unicode {self.spec.unicode_version} (the tokenizer's) or "
                    f"{self.unicode_version} (this runtime's) does not assign, so its tokens could differ from "
                    f"training: run under Unicode {self.spec.unicode_version}, or load with "
                    "unicode_mismatch='warn' to accept the difference",
                    index,
                )

    @property
    def vocab_size(self) -> int:
        """Entries in the vocabulary, pad and unk included (= embedding rows)."""
        return len(self.spec.vocab)

    def tokens(self, text: str) -> list[str]:
        """All tokens of a text, before truncation."""
        return split_tokens(normalize(text, self.spec), self.spec.type)

    def head_tokens(self, text: str, limit: int) -> tuple[list[str], bool]:
        """The first `limit` tokens and whether there are more, in memory that does not grow with the
        text: a long text is processed in pieces, cut only where the spec's steps cannot reach across."""
        if len(text) <= STREAM_ABOVE:
            tokens = self.tokens(text)
            return tokens[:limit], len(tokens) > limit
        return stream_tokens(text, self.spec, limit)

    def encode(self, text, index: int = 0) -> tuple[list[int], bool]:
        """Token ids of one text (at most max_length) and whether it was truncated."""
        if not isinstance(text, str):
            raise InputError(f"text #{index} is a {type(text).__name__}, not a str: pass text as Python strings", index)
        if self._check_unicode:
            self._unicode_check(text, index)
        tokens, truncated = self.head_tokens(text, self.spec.max_length)
        if not tokens:
            raise InputError(
                f"text #{index} is empty after normalisation ({text[:40]!r}): "
                "the model needs at least one token; drop or replace empty texts before predicting",
                index,
            )
        unk = self.spec.unk_id
        ids = [self._ids.get(t, unk) for t in tokens]
        return ids, truncated

    def encode_batch(self, texts: Sequence, start_index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Right-padded `token_ids [B, T]`, `lengths [B]` (int64) and `truncated [B]` (bool)."""
        encoded = [self.encode(t, start_index + i) for i, t in enumerate(texts)]
        return pad_batch([ids for ids, _ in encoded], self.spec.pad_id) + (
            np.array([tr for _, tr in encoded], dtype=bool),
        )


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id lists into the model contract's `token_ids [B, T]` and `lengths [B]` (int64)."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max()) if len(rows) else 0
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, lengths

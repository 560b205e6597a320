"""Typed errors shared by every layer; each message names the item and what to do."""

from __future__ import annotations


class SeqshipError(Exception):
    """Base class of every error seqship raises on purpose."""


class BundleError(SeqshipError):
    """A bundle is missing, incomplete, altered or of an unknown format."""


class TokenizerError(SeqshipError):
    """A tokenizer spec is malformed or disagrees with the model."""


class InputError(SeqshipError, ValueError):
    """A text handed to the predictor cannot be scored; `index` names the offending item."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class ProviderError(SeqshipError):
    """An execution provider was asked for that onnxruntime cannot give."""


class ModelOutputError(SeqshipError):
    """The model produced non-finite logits (NaN or Inf) for a text; `index` names it. Never a score."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index

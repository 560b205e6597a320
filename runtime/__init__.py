"""seqship's predictor: runs a bundle with numpy and onnxruntime only (no torch, onnx or click)."""
from runtime.bundle import Bundle, open_bundle
from runtime.errors import BundleError, InputError, ModelOutputError, ProviderError, SeqshipError, TokenizerError
from runtime.predictor import Prediction, Predictor
from runtime.tokenizer import Tokenizer, TokenizerSpec

__all__ = [
    "Bundle",
    "BundleError",
    "InputError",
    "ModelOutputError",
    "Prediction",
    "Predictor",
    "ProviderError",
    "SeqshipError",
    "Tokenizer",
    "TokenizerError",
    "TokenizerSpec",
    "open_bundle",
]

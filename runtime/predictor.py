"""Text in, label out: a bundle's ONNX model behind its own tokenizer, on onnxruntime alone."""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from seqship.runtime.bundle import MODEL_ONNX, TOKENIZER, Bundle, open_bundle
from seqship.runtime.errors import BundleError, InputError, ModelOutputError, TokenizerError
from seqship.runtime.onnx_proto import read_model_info
from seqship.runtime.session import CPU, OnnxModel, resolve_providers
from seqship.runtime.tokenizer import Tokenizer, TokenizerSpec

CHUNK = 2048  # texts tokenised before their batches are handed to the workers


class Prediction(NamedTuple):
    """One text's result: best label, its probability, the top-k list and how the text was read.

    Immutable (a NamedTuple: ten thousand of them are built per bulk call, and it builds fastest).
    """

    label: str
    score: float  # softmax probability of `label`
    top_k: tuple[tuple[str, float], ...]  # (label, probability), best first
    num_tokens: int  # tokens the model saw (after truncation)
    truncated: bool  # True when the text had more than max_length tokens
    provider: str  # the onnxruntime execution provider that computed it

    def to_dict(self) -> dict:
        """JSON-ready form, as bulk output writes it."""
        return {
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": lab, "score": s} for lab, s in self.top_k],
            "num_tokens": self.num_tokens,
            "truncated": self.truncated,
            "provider": self.provider,
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stability, returned as float32."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_row(row: list[float]) -> list[float]:
    if row[0] != row[0]:  # NaN: a text that was not scored
        return row
    top = max(row)
    e = [math.exp(v - top) for v in row]
    total = sum(e)
    return [v / total for v in e]


class Predictor:
    """Scores texts with an exported model. Thread-safe: calls share nothing mutable."""

    def __init__(
        self,
        model_path: str | os.PathLike | bytes,
        tokenizer: Tokenizer,
        labels: Sequence[str],
        providers: str | Sequence[str] | None = "auto",
        *,
        batch_size: int = 128,
        intra_op_num_threads: int | None = None,
        inter_op_num_threads: int | None = None,
    ):
        """Build from loose files (as `pipeline verify` does); applications use `Predictor.load`.

        On the CPU provider `intra_op_num_threads` (default: all cores) is the number of batches scored
        at once: the session itself runs single-threaded and batches run in parallel, which on this
        model is ~1.7x faster than one multi-threaded session (a GRU's time steps are sequential, so
        splitting one small step across threads costs more than it gains). On CUDA it is passed on.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tokenizer = tokenizer
        self.labels = tuple(labels)
        self.bundle = None  # the checked Bundle (manifest included) when built by Predictor.load
        self.digest = None  # the bundle digest (sha256 of manifest.json) when built by Predictor.load
        self.batch_size = batch_size
        wanted = resolve_providers(providers)
        on_cpu = wanted[0] == CPU
        self.threads = max(1, int(intra_op_num_threads or os.cpu_count() or 1)) if on_cpu else 1
        self.model = OnnxModel(model_path, wanted, 1 if on_cpu else intra_op_num_threads, inter_op_num_threads)
        self.model.num_labels = len(self.labels) if self.model.num_labels is None else self.model.num_labels
        where = MODEL_ONNX if isinstance(model_path, (bytes, bytearray, memoryview)) else model_path
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        if self.model.num_labels is not None and self.model.num_labels != len(self.labels):
            raise BundleError(
                f"{where}: the model outputs {self.model.num_labels} classes but {len(self.labels)} labels "
                "were given; labels and model come from different runs"
            )

    @classmethod
    def load(
        cls,
        bundle_dir: str | os.PathLike,
        providers: str | Sequence[str] | None = "auto",
        *,
        expected_sha256: str | None = None,
        unicode_mismatch: str = "refuse",
        **kwargs,
    ) -> Predictor:
        """Open a bundle folder, verify it, and start a session on the very bytes that were verified.

        Verified: every file's size and sha256 against the manifest (and the manifest's own sha256 against
        `expected_sha256`, the bundle digest you trust, when given); the labels and the tokenizer that
        model.onnx records in its metadata (required) against manifest.json and tokenizer.json; no
        external data; the tokenizer's Unicode version (see runtime.tokenizer); finite logits.
        """
        return cls.from_bundle(
            open_bundle(bundle_dir, expected_sha256), providers, unicode_mismatch=unicode_mismatch, **kwargs
        )

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        providers: str | Sequence[str] | None = "auto",
        *,
        unicode_mismatch: str = "refuse",
        **kwargs,
    ) -> Predictor:
        """Predictor.load's checks and session on a bundle whose files open_bundle (or a caller that read and
        hashed them as it does) has verified: built from bundle.data, the bytes that were hashed."""
        model_bytes, tok_bytes = bundle.data[MODEL_ONNX], bundle.data[TOKENIZER]
        info = read_model_info(model_bytes)
        if info.external:
            tensor, location = info.external[0]
            raise BundleError(
                f"{bundle.path(MODEL_ONNX)}: tensor {tensor!r} is stored in the external file {location!r}, which the "
                "manifest does not hash; seqship bundles must be self-contained (export with external_data=False)"
            )
        if info.nonfinite:
            raise BundleError(
                f"{bundle.path(MODEL_ONNX)}: weights {info.nonfinite[:3]} hold non-finite values (NaN or Inf); the model "
                "is damaged (onnxruntime would turn them into finite but meaningless scores): re-export it"
            )
        try:
            tokenizer = Tokenizer(
                TokenizerSpec.from_json(tok_bytes.decode("utf-8"), source=str(bundle.path(TOKENIZER))), unicode_mismatch
            )
        except (UnicodeDecodeError, RecursionError) as e:
            raise TokenizerError(f"{bundle.path(TOKENIZER)}: not readable as UTF-8 JSON ({str(e)[:120]})") from None
        _check_bound(info.metadata, bundle.labels, hashlib.sha256(tok_bytes).hexdigest(), bundle.path(MODEL_ONNX))
        sig = bundle.manifest["signature"]
        vocab_size = sig.get("vocab_size") if isinstance(sig, dict) else None
        if vocab_size is not None and vocab_size != tokenizer.vocab_size:
            raise BundleError(
                f"{bundle.path(TOKENIZER)}: vocabulary of {tokenizer.vocab_size} tokens, but the model's "
                f"embedding has {vocab_size} rows (manifest signature.vocab_size); tokenizer and model disagree"
            )
        predictor = cls(model_bytes, tokenizer, bundle.labels, providers, **kwargs)
        predictor.bundle = bundle
        predictor.digest = bundle.digest
        predictor._check_embedding()
        return predictor

    def _check_embedding(self) -> None:
        """The highest token id must index a row of the model's embedding (catches a mismatched tokenizer),
        and the model must answer with finite numbers (catches NaN or Inf weights)."""
        top = self.tokenizer.vocab_size - 1
        try:  # three steps, so the recurrent weights act on a non-zero state too (same probe as the JS runtime)
            out = self.model.run(np.array([[top] * 3], dtype=np.int64), np.array([3], dtype=np.int64))
        except Exception as e:  # onnxruntime reports an out-of-range Gather index as a generic failure
            raise BundleError(
                f"{TOKENIZER}: token id {top} (the vocabulary has {top + 1} entries) is outside the model's "
                f"embedding ({str(e).splitlines()[0][:160]}); tokenizer and model disagree"
            ) from None
        if not np.isfinite(out).all():
            raise BundleError(
                f"{MODEL_ONNX} answers a three-token probe with non-finite logits (NaN or Inf weights); the model is "
                "damaged: re-export it"
            )

    def _finite(self, logits: np.ndarray, encoded: list, failed: dict, errors: str, first_index: int) -> None:
        """Rows with NaN or Inf logits become a ModelOutputError (raised, or put in that text's slot)."""
        if math.isfinite(float(logits.sum())):  # the usual case, a third of the cost of the row-wise check
            return
        bad = ~np.isfinite(logits).all(axis=1)
        for i in np.flatnonzero(bad).tolist():
            if encoded[i] is None:
                continue  # a text that was not scored (its NaN row is the placeholder)
            err = _nonfinite(first_index + i)
            if errors == "raise":
                raise err
            failed[i] = err
            encoded[i] = None

    @property
    def provider(self) -> str:
        """The execution provider that really runs the model."""
        return self.model.provider

    def _check_texts(self, texts) -> list:
        if isinstance(texts, (str, bytes)):
            raise InputError("pass a list of texts, not a single string: use predict([text])")
        if texts is None:
            raise InputError("texts is None: pass a list of strings")
        try:
            return list(texts)
        except TypeError:
            raise InputError(f"texts must be a list of strings, got {type(texts).__name__}") from None

    def _encode(self, texts: list, errors: str, first_index: int = 0) -> tuple[list, dict[int, InputError]]:
        encoded, failed = [], {}
        for i, t in enumerate(texts):
            try:
                encoded.append(self.tokenizer.encode(t, first_index + i))
            except InputError as e:
                if errors == "raise":
                    raise
                failed[i] = e
                encoded.append(None)
        return encoded, failed

    def _score_chunks(self, texts: list, errors: str, first_index: int = 0) -> Iterator[tuple[list, dict, np.ndarray]]:
        """Encode and score, yielding (encoded, errors by local index, logits [m, C], NaN rows for errors)
        chunk by chunk, in input order.

        Every chunk is tokenised and its batches (sorted by length, so padding stays small) are handed
        to the worker threads before the first result is awaited: tokenising overlaps with onnxruntime
        (which releases the GIL), and so does the caller's work on each chunk it is given.
        """
        if len(texts) == 1:  # the latency path: one text, no sorting, no scattering, no thread hand-off
            encoded, failed = self._encode(texts, errors, first_index)
            if encoded[0] is None:
                yield encoded, failed, np.full((1, len(self.labels)), np.nan, dtype=np.float32)
                return
            ids = encoded[0][0]
            yield (
                encoded,
                failed,
                self.model.run_trusted(np.array([ids], dtype=np.int64), np.array([len(ids)], dtype=np.int64)),
            )
            return
        parallel = self.threads > 1 and len(texts) > self.batch_size
        chunks: list = []
        try:
            yield from self._chunks(texts, errors, first_index, parallel, chunks)
        finally:  # an error (or a caller that stops early) must not leave batches queued on the workers
            for _, _, _, jobs in chunks:
                for _, future in jobs:
                    future.cancel()

    def _chunks(self, texts: list, errors: str, first_index: int, parallel: bool, chunks: list):
        for c0 in range(0, len(texts), CHUNK):
            encoded, failed = self._encode(texts[c0 : c0 + CHUNK], errors, first_index + c0)
            logits = np.full((len(encoded), len(self.labels)), np.nan, dtype=np.float32)
            rows = sorted((i for i, e in enumerate(encoded) if e is not None), key=lambda i: len(encoded[i][0]))
            jobs = []
            for start in range(0, len(rows), self.batch_size):
                idx = rows[start : start + self.batch_size]
                if parallel:
                    jobs.append((idx, self._workers().submit(self._run_batch, encoded, idx)))
                else:
                    logits[idx] = self._run_batch(encoded, idx)
            chunks.append((encoded, failed, logits, jobs))
        for encoded, failed, logits, jobs in chunks:
            for idx, future in jobs:
                logits[idx] = future.result()
            yield encoded, failed, logits

    def _run_batch(self, encoded: list, idx: list[int]) -> np.ndarray:
        """Logits of one length-sorted batch; its rows always hold 1..width real tokens (no re-check)."""
        lens = [len(encoded[i][0]) for i in idx]
        if lens[0] == lens[-1]:  # sorted: all the same length, no padding needed
            ids = np.array([encoded[i][0] for i in idx], dtype=np.int64)
        else:
            ids = np.full((len(idx), lens[-1]), self.tokenizer.spec.pad_id, dtype=np.int64)
            for r, i in enumerate(idx):
                ids[r, : lens[r]] = encoded[i][0]
        return self.model.run_trusted(ids, np.array(lens, dtype=np.int64))

    def _predictions(self, encoded: list, failed: dict, logits: np.ndarray, top_k: int) -> list:
        if len(encoded) <= 4:  # a few rows: plain Python beats numpy's per-call overhead
            probs_list = [_softmax_row(row) for row in logits.tolist()]
            best = [sorted(range(len(p)), key=lambda j, p=p: -p[j])[:top_k] for p in probs_list]
            scores = [[p[j] for j in b] for p, b in zip(probs_list, best)]
        else:
            probs = softmax(logits.astype(np.float64))
            if top_k == 1:
                order = probs.argmax(axis=1)[:, None]
            else:
                order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
            # Only the k kept probabilities become Python floats (all of them was two thirds of this method's time).
            best, scores = order.tolist(), np.take_along_axis(probs, order, axis=1).tolist()
        labels, provider = self.labels, self.provider
        out: list = []
        append = out.append
        for i, enc in enumerate(encoded):
            if enc is None:
                append(failed[i])
                continue
            if top_k == 1:
                label, score = labels[best[i][0]], scores[i][0]
                append(Prediction(label, score, ((label, score),), len(enc[0]), enc[1], provider))
            else:
                top = tuple(zip([labels[j] for j in best[i]], scores[i]))
                append(Prediction(top[0][0], top[0][1], top, len(enc[0]), enc[1], provider))
        return out

    def _workers(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="seqship-predict")
            return self._pool

    def _predict_one(self, text, top_k: int, errors: str, index: int):
        """predict([text])[0] on the latency path: what the bulk path computes, without its per-batch machinery
        (no chunks, sorting or thread hand-off; the softmax and top-k of one row in plain Python, which beats
        numpy's per-call overhead at this size). Same float64 softmax, same stable order, same checks."""
        try:
            ids, truncated = self.tokenizer.encode(text, index)
        except InputError as e:
            if errors == "raise":
                raise
            return e
        n = len(ids)
        row = self.model.run_trusted(np.array([ids], dtype=np.int64), np.array([n], dtype=np.int64))[0].tolist()
        if not math.isfinite(sum(row)):
            err = _nonfinite(index)
            if errors == "raise":
                raise err
            return err
        p = _softmax_row(row)
        labels = self.labels
        if top_k == 1:
            j = p.index(max(p))  # the first of equal maxima, as argmax
            top = ((labels[j], p[j]),)
        else:
            top = tuple([(labels[j], p[j]) for j in sorted(range(len(p)), key=p.__getitem__, reverse=True)[:top_k]])
        return Prediction(top[0][0], top[0][1], top, n, truncated, self.model.provider)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw model scores, float32 [len(texts), len(labels)]; raises InputError on the first bad text."""
        parts = []
        for encoded, failed, logits in self._score_chunks(self._check_texts(texts), "raise"):
            self._finite(logits, encoded, failed, "raise", sum(len(p) for p in parts))
            parts.append(logits)
        return np.concatenate(parts) if parts else np.empty((0, len(self.labels)), dtype=np.float32)

    def predict(self, texts: Sequence[str], top_k: int = 1, errors: str = "raise", first_index: int = 0) -> list:
        """One Prediction per text, in input order.

        errors="raise" (default): the first text that cannot be scored raises InputError naming its index.
        errors="return": that text's slot holds the InputError instead, and the others are still scored.
        first_index: added to the indices that errors name (for callers that stream a larger input in chunks).
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(self.labels):
            raise InputError(f"top_k must be between 1 and {len(self.labels)}, got {top_k}")
        if errors not in ("raise", "return"):
            raise InputError(f"errors must be 'raise' or 'return', got {errors!r}")
        if isinstance(first_index, bool) or not hasattr(first_index, "__index__"):  # int, numpy integers
            raise InputError(f"first_index must be an integer (the index of the first text), got {first_index!r}")
        first_index = first_index.__index__()
        if type(texts) is list and len(texts) == 1:
            return [self._predict_one(texts[0], top_k, errors, first_index)]
        results: list = []
        for encoded, failed, logits in self._score_chunks(self._check_texts(texts), errors, first_index):
            self._finite(logits, encoded, failed, errors, first_index + len(results))
            results.extend(self._predictions(encoded, failed, logits, top_k))
        return results


def _nonfinite(index: int) -> ModelOutputError:
    return ModelOutputError(
        f"text #{index}: the model produced non-finite logits (NaN or Inf); its weights or this input overflow "
        "float32, and no score is given: check the bundle with `pipeline verify --bundle`",
        index,
    )


def _check_bound(metadata: dict, labels: tuple, tokenizer_sha256: str, where) -> None:
    """model.onnx (hashed) must name the labels and the tokenizer it was exported with: metadata required.

    The manifest itself is not hashed by anything inside the bundle, so without this a manifest with two
    labels swapped would load and answer wrong labels.
    """
    for key in ("seqship.labels", "seqship.tokenizer_sha256"):
        if key not in metadata:
            raise BundleError(
                f"{where}: carries no {key!r} metadata, so its labels and tokenizer cannot be checked; a seqship "
                "bundle's model.onnx always does: re-export it (`pipeline run export --force`) and package again"
            )
    try:
        recorded = json.loads(metadata["seqship.labels"])
    except (ValueError, RecursionError):
        raise BundleError(f"{where}: metadata 'seqship.labels' is not JSON") from None
    if not isinstance(recorded, list) or tuple(recorded) != tuple(labels):
        raise BundleError(
            f"{where} was exported with labels {str(recorded)[:80]}..., the manifest lists {list(labels)[:4]}...; "
            "labels and model disagree (order matters): copy the bundle again"
        )
    if metadata["seqship.tokenizer_sha256"] != tokenizer_sha256:
        raise BundleError(
            f"{TOKENIZER} is not the tokenizer {where} was exported with (its sha256 differs from the model's "
            "metadata 'seqship.tokenizer_sha256'); tokenizer and model disagree"
        )

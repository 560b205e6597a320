"""The Open Inference Protocol (KServe v2) as data: requests parsed and checked, responses built.

Pure functions over bytes and dicts: no socket, no event loop, no HTTP framework. Every bad request is an
`HTTPError` carrying the status and the message of the protocol's `{"error": ...}` body.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from seqship.runtime import __version__
from seqship.runtime.errors import InputError, SeqshipError
from seqship.runtime.jsonio import json_kind, json_text
from seqship.runtime.predictor import Predictor

if TYPE_CHECKING:
    from seqship.runtime.serve.batching import Batcher

OUTPUTS = {  # name -> (datatype, shape); -1 is the batch (and, for top-k, the k a request asks for)
    "label": ("BYTES", [-1]),
    "score": ("FP32", [-1]),
    "top_k_labels": ("BYTES", [-1, -1]),
    "top_k_scores": ("FP32", [-1, -1]),
    "num_tokens": ("INT64", [-1]),
    "truncated": ("BOOL", [-1]),
    "error": ("BYTES", [-1]),
}
DEFAULT_OUTPUTS = ("label", "score", "top_k_labels", "top_k_scores", "num_tokens", "truncated")
CLIENT_CLOSED = 499  # the client went away mid-request (nginx's code): counted, never an error of the server's


class HTTPError(Exception):
    """An answer other than 200: its status and the message of the protocol's {"error": ...} body."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# What --timeout-s must leave after --max-delay-ms for a lone request's batch to be scored (a batch of the
# default model takes about 1 ms; a large one on a busy machine, tens).
SCORING_MARGIN_S = 0.1


class LimitsError(SeqshipError):
    """Options of `pipeline serve` that cannot work together: the server would refuse requests it was made for."""


JSON_OVERHEAD = 1024  # JSON values a request may hold besides its texts: names, shape, parameters, outputs


@dataclass
class Limits:
    """The server's bounds; every one is a CLI option of `pipeline serve`."""

    max_batch: int = 64  # texts per batch (1: no batching)
    max_delay_ms: float = 0.0  # how long a batch waits for more texts after its first (0: takes what has queued)
    threads: int = 1  # batches scored at once, each on a single-threaded onnxruntime session
    max_body_bytes: int = 8 << 20  # request body, after decompression
    max_texts: int = 1024  # texts per request
    max_queue_texts: int = 8192  # texts waiting per model; beyond it: 503 with Retry-After
    timeout_s: float = 30.0  # to receive a body, and for its texts to be scored
    drain_timeout_s: float = 30.0  # after SIGTERM, how long accepted requests get before they are cut off
    drain_delay_s: float = 0.0  # after SIGTERM, how long to keep accepting (readiness 503) before the listener closes
    # bytes of request bodies (as received, and inflated) held by every request in flight together; beyond it:
    # 503 with Retry-After. None: 8 x max_body_bytes
    max_buffered_bytes: int | None = None

    def __post_init__(self):
        if self.max_buffered_bytes is None:
            self.max_buffered_bytes = 8 * self.max_body_bytes

    @property
    def max_json_values(self) -> int:
        """JSON values a request may hold: two per text (a [N, 1] tensor nests each one), and the rest."""
        return 2 * self.max_texts + JSON_OVERHEAD

    def validate(self) -> None:
        """Refuse bounds under which an idle server could not answer a lone request it was made for."""
        if self.timeout_s - self.max_delay_ms / 1000 < SCORING_MARGIN_S:
            raise LimitsError(
                f"--max-delay-ms {self.max_delay_ms:g} leaves less than {SCORING_MARGIN_S * 1000:g} ms of --timeout-s "
                f"{self.timeout_s:g} to score: a lone request would wait for company until it timed out (503); "
                "lower --max-delay-ms or raise --timeout-s"
            )
        if self.max_texts > self.max_queue_texts:
            raise LimitsError(
                f"--max-texts {self.max_texts} is more than --max-queue-texts {self.max_queue_texts}: a request "
                "that size would be refused (503) whenever another one waits; lower --max-texts or raise "
                "--max-queue-texts"
            )
        if self.max_buffered_bytes < 2 * self.max_body_bytes:
            raise LimitsError(
                f"--max-buffered-bytes {self.max_buffered_bytes} is less than twice --max-body-bytes "
                f"{self.max_body_bytes}: a compressed body of the largest size is held together with what it "
                f"inflates to; raise --max-buffered-bytes to {2 * self.max_body_bytes} or lower --max-body-bytes"
            )


# ---------------------------------------------------------------------------------------------- models


@dataclass(eq=False)
class Served:
    """One bundle under one name and version."""

    name: str
    path: Path
    predictor: Predictor
    batcher: Batcher | None = None
    version: int = 1  # a --bundle is version 1; in a --model-repository, its folder's number
    leases: int = 0  # requests answering from this version now (an unloaded version is closed when none is left)

    def __enter__(self) -> Served:  # a lease (Models.lease): the request is answered from this version
        self.leases += 1
        return self

    def __exit__(self, *exc) -> None:
        self.leases -= 1

    @functools.cached_property
    def label_index(self) -> dict:
        """Label -> class index."""
        return {lab: i for i, lab in enumerate(self.predictor.labels)}

    @functools.cached_property
    def label_json(self) -> dict | None:
        """Label -> its JSON string as dumps() writes it, for the written answer (None: a label dumps() would
        escape to ASCII, a lone surrogate: the general path answers)."""
        out = {lab: json.dumps(lab, ensure_ascii=False) for lab in self.predictor.labels}
        return out if _utf8(*out.values()) else None

    def metadata(self, versions: list | None = None) -> dict:
        """The protocol's model metadata (`versions`: every version served under this name), plus the bundle's
        digest and labels under `parameters`."""
        outputs = [{"name": n, "datatype": d, "shape": s} for n, (d, s) in OUTPUTS.items()]
        return {
            "name": self.name,
            "versions": [str(v) for v in versions or [self.version]],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs,
            "parameters": {
                "bundle_sha256": self.predictor.digest,
                "labels": list(self.predictor.labels),
                "provider": self.predictor.provider,
                "version": str(self.version),
            },
        }


class Models(Mapping):
    """The models served: name -> its newest version (what an unversioned path answers from), and every version.

    Changed only on the event loop (a repository's load or unload); a request takes a `lease` on the version it
    is answered from, so an unloaded version keeps its batcher until its last request is answered."""

    def __init__(self, served=()):
        self.by_name: dict[str, dict[int, Served]] = {}
        for s in served:
            self.add(s)

    def __getitem__(self, name: str) -> Served:
        versions = self.by_name[name]
        return versions[max(versions)]

    def __iter__(self):
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)

    def versions(self, name: str) -> dict[int, Served]:
        """Every version of `name` served (none: an empty dict)."""
        return self.by_name.get(name, {})

    def all(self) -> list[Served]:
        """Every version of every model."""
        return [s for versions in self.by_name.values() for s in versions.values()]

    def add(self, served: Served) -> None:
        """Serve `served` (the newest of its name when its version is the highest)."""
        self.by_name.setdefault(served.name, {})[served.version] = served

    def remove(self, name: str, version: int) -> Served:
        """Stop routing requests to one version; requests holding a lease on it still finish."""
        versions = self.by_name[name]
        served = versions.pop(version)
        if not versions:
            del self.by_name[name]
        return served

    def lease(self, name: str, version: str | None = None) -> Served:
        """The version a request is answered from (a 404 if none), held by `with` until the request ends."""
        return find_model(self, name, version)


def server_metadata() -> dict:
    """The protocol's server metadata."""
    return {"name": "seqship", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}


def unknown_model(name, models: Mapping) -> HTTPError:
    """The 404 of a model name this server does not have."""
    has = ", ".join(sorted(models)) or "no model loaded"
    return HTTPError(404, f"unknown model {str(name)[:80]!r}; this server has {has}")


def find_model(models: Mapping[str, Served], name: str, version: str | None) -> Served:
    """The model a /v2/models/{name}[/versions/{version}] path names (no version: the newest), or a 404."""
    if name not in models:
        raise unknown_model(name, models)
    if version is None or version == "":  # gRPC's "" is "no version", as Triton reads it
        return models[name]
    versions = models.versions(name) if isinstance(models, Models) else {models[name].version: models[name]}
    for v, served in versions.items():
        if str(v) == version:
            return served
    served = ", ".join(map(str, sorted(versions)))
    raise HTTPError(404, f"model {name!r} has no version {version[:20]!r}; it is served as version {served}")


# ---------------------------------------------------------------------------------------------- requests


@dataclass
class InferRequest:
    """A parsed `infer` request: its texts (or the reason each cannot be read) and what to answer."""

    id: str | None
    texts: list  # str, or an InputError for an item that cannot be read as a text
    top_k: int = 1  # the width of top_k_labels / top_k_scores
    errors: str = "raise"
    outputs: list = field(default_factory=list)  # [(name, binary, classification k or 0)]

    @property
    def scoring_k(self) -> int:
        """How many labels to score per text: top_k, or more for a classification output."""
        return max([self.top_k] + [k for _, _, k in self.outputs])


_STRING_TAIL = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+')  # a JSON string's bytes up to its closing quote
SCAN_STEP = 1 << 18  # bytes per C call of the scan: on a worker thread, the event loop gets the GIL between steps


def check_json_values(body: bytes, limits: Limits, what: str) -> None:
    """Refuse (413) JSON of more than limits.max_json_values values before one of them is built.

    json.loads builds every value at C speed without letting go of the GIL: 8 MiB of `[],` (an 8 KB gzip body)
    held the event loop for seconds. A value is the root or follows a comma or an opening bracket, so those
    counted outside strings bound the values: linear time, in C calls of at most SCAN_STEP bytes, and a Python
    step per string (refused past the limit too). A body shorter than the limit cannot hold more values."""
    limit, n, pos, values, strings = limits.max_json_values, len(body), 0, 1, 0
    if n < limit:  # every value counted is a byte of the body (and every string two): within the limit, unscanned
        return
    too_many = HTTPError(
        413,
        f"{what} holds more than {limit} JSON values, more than a request of at most {limits.max_texts} "
        "texts (--max-texts) needs: split the request",
    )
    while pos < n:
        end = min(n, pos + SCAN_STEP)
        quote = body.find(b'"', pos, end)
        stop = end if quote < 0 else quote
        values += body.count(b",", pos, stop) + body.count(b"[", pos, stop) + body.count(b"{", pos, stop)
        if values > limit:
            raise too_many
        if quote < 0:
            pos = end
            continue
        strings += 1
        if strings > limit:
            raise too_many
        pos = quote + 1
        while pos < n:  # inside the string, to its closing quote
            after = _STRING_TAIL.match(body, pos, min(n, pos + SCAN_STEP)).end()
            if after < n and body[after] == 0x22:  # the closing '"'
                pos = after + 1
                break
            pos = after if after > pos else n  # the step's end; or a lone backslash that ends the body: not JSON


def _json(body: bytes, what: str, limits: Limits):
    check_json_values(body, limits, what)
    try:
        return json.loads(body.decode("utf-8-sig"))  # decoded here: json.loads would take UTF-16 and UTF-32 too
    except UnicodeDecodeError as e:
        raise HTTPError(400, f"{what} is not UTF-8 ({e.reason} at byte {e.start}); send UTF-8 JSON") from None
    except RecursionError:
        raise HTTPError(400, f"{what} nests too deeply to be read") from None
    except ValueError as e:
        raise HTTPError(400, f"{what} is not valid JSON ({str(e)[:160]})") from None


def not_text(index: int, value) -> InputError:
    """The error of an item that is not a JSON string."""
    return InputError(f"text #{index} is {json_kind(value)}, not a string; send each text as a JSON string", index)


def _flat(data, where: str) -> list:
    """A JSON tensor's `data`: flat, or (for shape [N, 1]) one level of nested lists, in row-major order."""
    if not isinstance(data, list):
        raise HTTPError(400, f"{where}: 'data' must be a list of strings")
    if not any(isinstance(x, list) for x in data):
        return data
    out = []
    for x in data:
        if isinstance(x, list):
            if any(isinstance(y, list) for y in x):
                raise HTTPError(400, f"{where}: 'data' nests deeper than the tensor's shape (at most [N, 1])")
            out.extend(x)
        else:
            out.append(x)
    return out


def _binary_bytes_tensor(raw: memoryview, count: int | None, where: str) -> list:
    """The binary-tensor extension's BYTES layout: each element a 4-byte little-endian length, then the bytes."""
    items, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise HTTPError(400, f"{where}: binary data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + n > len(raw):
            raise HTTPError(400, f"{where}: element {len(items)} claims {n} bytes, only {len(raw) - pos - 4} remain")
        items.append(bytes(raw[pos + 4 : pos + 4 + n]))
        pos += 4 + n
        if count is not None and len(items) > count:
            break  # more elements than the shape says: no need to read the rest
    if count is not None and len(items) != count:
        held = f"more than {count}" if len(items) > count else str(len(items))
        raise HTTPError(400, f"{where}: shape says {count} elements, the binary data holds {held}")
    return items


def parse_infer(body: bytes, header_length: str | None, num_labels: int, limits: Limits) -> InferRequest:
    """Read an infer request (JSON, or JSON + binary tensors); raises HTTPError naming what is wrong."""
    if header_length is not None:
        try:
            hl = int(header_length)
        except ValueError:
            hl = -1
        if not 0 <= hl <= len(body):
            raise HTTPError(
                400,
                f"Inference-Header-Content-Length {header_length!r} is not a length within the {len(body)}-byte body",
            )
        head, binary = body[:hl], memoryview(body)[hl:]
    else:
        head, binary = body, memoryview(b"")
    req = _json(head, "the request body" if header_length is None else "the request's JSON header", limits)
    return read_infer(req, binary, num_labels, limits)


def read_infer(req, binary: memoryview, num_labels: int, limits: Limits) -> InferRequest:
    """Check an infer request already read into JSON values (from HTTP's JSON, or built from gRPC's message),
    with the bytes of its binary tensor; raises HTTPError naming what is wrong."""
    if not isinstance(req, dict):
        raise HTTPError(400, "the request must be a JSON object with an 'inputs' list")
    params = req.get("parameters", {})
    if not isinstance(params, dict):
        raise HTTPError(400, "'parameters' must be an object")
    top_k = params.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_labels:
        raise HTTPError(400, f"parameters.top_k must be an integer from 1 to {num_labels}, got {top_k!r}")
    errors = params.get("errors", "raise")
    if errors not in ("raise", "return"):
        raise HTTPError(
            400,
            f"parameters.errors must be 'raise' (a bad text fails the request) or 'return' "
            f"(its row carries an 'error'), got {errors!r}",
        )
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise HTTPError(400, f"'id' must be a string, got {type(rid).__name__}")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise HTTPError(400, "'inputs' must be a list holding one tensor, named 'text' (datatype BYTES, shape [N])")
    for i, t in enumerate(inputs):
        name = t.get("name") if isinstance(t, dict) else None
        if name != "text":
            raise HTTPError(
                400, f"inputs[{i}]: unknown input {name!r}; the model has one input, 'text' (datatype BYTES, shape [N])"
            )
    if len(inputs) > 1:
        raise HTTPError(400, f"'inputs' holds {len(inputs)} tensors named 'text'; send one")
    t = inputs[0]
    where = "inputs[0] 'text'"
    if t.get("datatype") != "BYTES":
        raise HTTPError(400, f"{where}: datatype {t.get('datatype')!r}; texts are sent as BYTES")
    shape = t.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise HTTPError(400, f"{where}: shape {shape!r}; send [N] (or [N, 1]) for N texts")
    count = shape[0]
    if count > limits.max_texts:
        raise HTTPError(
            413,
            f"{where}: {count} texts in one request; the limit is {limits.max_texts} (--max-texts): split the request",
        )
    tparams = t.get("parameters", {})
    if not isinstance(tparams, dict):
        raise HTTPError(400, f"{where}: 'parameters' must be an object")
    size = tparams.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
            raise HTTPError(400, f"{where}: binary_data_size {size!r}, but {len(binary)} bytes follow the JSON header")
        raw = _binary_bytes_tensor(binary, count, where)
        texts: list = []
        for j, b in enumerate(raw):
            try:
                texts.append(b.decode("utf-8"))
            except UnicodeDecodeError as e:
                texts.append(InputError(f"text #{j}: not UTF-8 ({e.reason} at byte {e.start}); send UTF-8 text", j))
    else:
        if len(binary):
            raise HTTPError(400, f"{len(binary)} bytes follow the JSON header, but no input declares binary_data_size")
        if "data" not in t:
            raise HTTPError(400, f"{where}: no 'data' (and no binary_data_size)")
        flat = _flat(t["data"], where)
        if len(flat) != count:
            raise HTTPError(400, f"{where}: shape says {count} texts, 'data' holds {len(flat)}")
        texts = [x if isinstance(x, str) else not_text(j, x) for j, x in enumerate(flat)]
    if count == 0:
        raise HTTPError(400, f"{where}: no texts (shape [0]); send at least one")
    binary_all = params.get("binary_data_output") is True
    wanted = req.get("outputs")
    outputs = []
    if wanted is None:
        names = DEFAULT_OUTPUTS + (("error",) if errors == "return" else ())
        outputs = [(n, binary_all, 0) for n in names]
    else:
        if not isinstance(wanted, list) or not wanted:
            raise HTTPError(400, "'outputs' must be a non-empty list of {\"name\": ...} objects (or left out)")
        for i, o in enumerate(wanted):
            name = o.get("name") if isinstance(o, dict) else None
            if not isinstance(name, str) or name not in OUTPUTS:
                raise HTTPError(
                    400, f"outputs[{i}]: unknown output {str(name)[:80]!r}; the outputs are {', '.join(OUTPUTS)}"
                )
            if any(name == n for n, _, _ in outputs):
                raise HTTPError(400, f"outputs[{i}]: {name!r} is asked for twice; ask for each output once")
            op = o.get("parameters", {})
            if not isinstance(op, dict):
                raise HTTPError(400, f"outputs[{i}] {name!r}: 'parameters' must be an object")
            k = op.get("classification", 0)
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= num_labels:
                raise HTTPError(400, f"outputs[{i}] {name!r}: classification must be 0 to {num_labels}, got {k!r}")
            outputs.append((name, op.get("binary_data", binary_all) is True, k))
    return InferRequest(rid, texts, top_k, errors, outputs)


@dataclass
class PredictRequest:
    """A parsed `/predict` request (seqship's own short form)."""

    model: str
    texts: list  # str, or an InputError for an item that is not a JSON string
    top_k: int


def parse_predict(body: bytes, models: dict[str, Served], limits: Limits) -> PredictRequest:
    """Read `{"texts": [...], "top_k": K, "model": NAME}`; raises HTTPError naming what is wrong."""
    req = _json(body, "the request body", limits)
    if not isinstance(req, dict) or not isinstance(req.get("texts"), list):
        raise HTTPError(400, 'send {"texts": ["...", ...]} (optionally "top_k": K and "model": NAME)')
    name = req.get("model")
    if name is None:
        if len(models) != 1:
            raise HTTPError(
                400, f'this server has {len(models)} models: name one with "model" ({", ".join(sorted(models))})'
            )
        name = next(iter(models))
    if not isinstance(name, str) or name not in models:
        raise unknown_model(name, models)
    top_k = req.get("top_k", 1)
    n_labels = len(models[name].predictor.labels)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_labels:
        raise HTTPError(400, f"top_k must be an integer from 1 to {n_labels}, got {top_k!r}")
    raw = req["texts"]
    if not raw:
        raise HTTPError(400, '"texts" is empty; send at least one text')
    if len(raw) > limits.max_texts:
        raise HTTPError(413, f"{len(raw)} texts in one request; the limit is {limits.max_texts} (--max-texts)")
    texts = [t if isinstance(t, str) else not_text(i, t) for i, t in enumerate(raw)]
    return PredictRequest(name, texts, top_k)


def read_index_request(body: bytes, limits: Limits) -> bool:
    """Read a repository index request (`{}`, `{"ready": true}` or no body); returns whether only ready models
    are wanted."""
    if not body.strip():
        return False
    req = _json(body, "the request body", limits)
    ready = req.get("ready", False) if isinstance(req, dict) else None
    if not isinstance(ready, bool):
        raise HTTPError(400, 'send {} or {"ready": true} (only the models ready to serve)')
    return ready


def read_load_request(body: bytes, limits: Limits) -> list[str]:
    """Read a repository load request (`{}`, `{"parameters": {...}}` or no body); returns the names of the
    parameters it carries (Triton's `config` and `file:...` overrides), which the caller refuses."""
    if not body.strip():
        return []
    req = _json(body, "the request body", limits)
    params = req.get("parameters", {}) if isinstance(req, dict) else None
    if not isinstance(params, dict):
        raise HTTPError(400, "send {} or no body: the version is loaded from its folder in the repository")
    return sorted(params)


# ---------------------------------------------------------------------------------------------- responses


def _column(name: str, results: list, k: int, index: dict, top_k: int):
    """(datatype, shape, values as a flat list) of one output for the rows in `results` (a row that could not
    be scored holds "", 0 or false, and its reason is in the `error` output)."""
    ok = [not isinstance(r, Exception) for r in results]
    n = len(results)
    if k:  # the classification extension: "probability:class index:label" strings, best first
        values: list = []
        for r, g in zip(results, ok):
            values.extend([f"{s:f}:{index[lab]}:{lab}" for lab, s in r.top_k[:k]] if g else [""] * k)
        return "BYTES", [n, k], values
    if name == "label":
        return "BYTES", [n], [r.label if g else "" for r, g in zip(results, ok)]
    if name == "score":
        return "FP32", [n], [r.score if g else 0.0 for r, g in zip(results, ok)]
    if name in ("top_k_labels", "top_k_scores"):
        width = top_k
        j = 0 if name == "top_k_labels" else 1
        pad = "" if j == 0 else 0.0
        return (
            ("BYTES" if j == 0 else "FP32"),
            [n, width],
            [(r.top_k[c][j] if g and c < len(r.top_k) else pad) for r, g in zip(results, ok) for c in range(width)],
        )
    if name == "num_tokens":
        return "INT64", [n], [r.num_tokens if g else 0 for r, g in zip(results, ok)]
    if name == "truncated":
        return "BOOL", [n], [bool(r.truncated) if g else False for r, g in zip(results, ok)]
    return "BYTES", [n], ["" if g else str(r) for r, g in zip(results, ok)]  # error


def _binary(datatype: str, values: list) -> bytes:
    import numpy as np

    if datatype == "BYTES":
        parts = []
        for v in values:
            b = v.encode("utf-8", "surrogatepass")
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    dtype = {"FP32": "<f4", "INT64": "<i8", "BOOL": "?"}[datatype]
    return np.asarray(values, dtype=dtype).tobytes()


def _utf8(*texts: str) -> bool:
    try:
        for t in texts:
            t.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _written_values(name: str, results: list, width: int, labels: dict) -> str | None:
    """One output's JSON `data` items, comma-separated, as dumps() writes them (None: a value it would refuse)."""
    if name == "label":
        return ",".join([labels[r.label] for r in results])
    if name == "score":
        values = [r.score for r in results]
    elif name == "top_k_labels":
        return ",".join([labels[lab] for r in results for lab, _ in r.top_k[:width]])
    elif name == "top_k_scores":
        values = [s for r in results for _, s in r.top_k[:width]]
    elif name == "num_tokens":
        return ",".join([int.__repr__(r.num_tokens) for r in results])
    elif name == "truncated":
        return ",".join(["true" if r.truncated else "false" for r in results])
    else:  # error: every text was scored
        return ",".join(['""'] * len(results))
    if not all(map(math.isfinite, values)):
        return None
    return ",".join(map(float.__repr__, values))


def _written_response(served: Served, req: InferRequest, results: list) -> bytes | None:
    """The JSON answer of the common case (every text scored, every output JSON, no classification), written from
    its pieces: byte for byte what dumps() makes of infer_response's dict, at a fraction of the cost (it was a
    tenth of a lone request's time). None: the general path answers."""
    labels, width, n = served.label_json, req.top_k, len(results)
    if labels is None or any(binary or k for _, binary, k in req.outputs):
        return None
    for r in results:
        if isinstance(r, Exception) or len(r.top_k) < width or type(r.num_tokens) is not int:
            return None
    outputs = []
    for name, _, _ in req.outputs:
        values = _written_values(name, results, width, labels)
        if values is None:
            return None
        datatype, shape = OUTPUTS[name]
        dims = f"{n}" if len(shape) == 1 else f"{n},{width}"
        outputs.append(f'{{"name":"{name}","datatype":"{datatype}","shape":[{dims}],"data":[{values}]}}')
    rid = "" if req.id is None else f',"id":{json.dumps(req.id, ensure_ascii=False)}'
    text = (
        f'{{"model_name":"{served.name}","model_version":"{served.version}","outputs":[{",".join(outputs)}],'
        f'"parameters":{{"bundle_sha256":"{served.predictor.digest}"}}{rid}}}'
    )
    return text.encode("utf-8") if _utf8(rid) else None


def infer_response(served: Served, req: InferRequest, results: list) -> tuple[bytes, dict]:
    """The response body and its extra headers (Inference-Header-Content-Length when a tensor is binary)."""
    written = _written_response(served, req, results)
    return (written, {}) if written is not None else tensors_response(served, req, results)


def tensors_response(served: Served, req: InferRequest, results: list) -> tuple[bytes, dict]:
    """infer_response for every case: the answer's tensors as a dict, then dumps() (and binary tensors after)."""
    index = served.label_index
    outputs, blobs = [], []
    for name, binary, k in req.outputs:
        datatype, shape, values = _column(name, results, k, index, req.top_k)
        entry = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = _binary(datatype, values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = values
        outputs.append(entry)
    head = {
        "model_name": served.name,
        "model_version": str(served.version),
        "outputs": outputs,
        "parameters": {"bundle_sha256": served.predictor.digest},
    }
    if req.id is not None:
        head["id"] = req.id
    text = dumps(head)
    if not blobs:
        return text, {}
    return text + b"".join(blobs), {"Inference-Header-Content-Length": str(len(text))}


def predict_response(served: Served, results: list) -> bytes:
    """The `/predict` answer: one prediction (or error) per text, by index."""
    lines = [
        {"index": i, "error": str(r)} if isinstance(r, Exception) else {"index": i, **r.to_dict()}
        for i, r in enumerate(results)
    ]
    return dumps({"model": served.name, "bundle_sha256": served.predictor.digest, "predictions": lines})


def dumps(obj) -> bytes:
    """Compact strict JSON in UTF-8 (runtime.jsonio.json_text: never NaN, a lone surrogate escaped)."""
    return json_text(obj, (",", ":")).encode("utf-8")

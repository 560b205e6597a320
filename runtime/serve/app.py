"""`pipeline serve`: bundles over HTTP, speaking the Open Inference Protocol (KServe v2).

Triton Inference Server, KServe and Seldon MLServer speak this protocol, so their clients (tritonclient,
the KServe SDKs, curl) work unchanged. The stack is Starlette (the small ASGI toolkit FastAPI is built on:
routing and requests, no validation framework to learn) on Uvicorn (the reference ASGI server: an event
loop that holds thousands of idle connections without a thread each, httptools' parser, and a graceful
shutdown that stops accepting, lets every request in flight finish, then runs the application's own
shutdown). Both are the `serve` extra; the base runtime stays numpy + onnxruntime.

What it promises:
- A text's answer is `Predictor.predict`'s for that text (the same bundle, verified at start-up exactly as
  `Predictor.load` verifies it); batching with other callers' texts changes no label.
- Concurrent requests are coalesced into one batch of up to --max-batch texts, waiting at most
  --max-delay-ms after the first; batches are scored off the event loop, on --threads worker threads.
- Every failure of a request that parses as HTTP is an answer: `{"error": "..."}` with 400 (bad input,
  naming the item), 404 (unknown model or path), 405, 408 (body too slow), 413 (too large), 415, 503
  (queue full, timed out, not ready or draining; with Retry-After), 500 (a bug, logged); a client gone
  mid-body is counted as 499. Never a traceback or a dropped connection.
- SIGTERM (or Ctrl-C) drains: the listening socket closes (after --drain-delay-s, during which readiness
  is 503), every request already accepted is answered, queued texts are scored, and the process exits 0
  with a one-line account on stderr; requests cut off by --drain-timeout-s get a 503 and the exit is 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from seqship.runtime import __version__
from seqship.runtime.bulk import json_kind, json_text
from seqship.runtime.errors import InputError, ModelOutputError, SeqshipError
from seqship.runtime.predictor import Predictor

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a model name: one URL path segment, no escaping
VERSION = "1"  # every model is served as version "1"; its bundle digest is in the metadata
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
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeError(SeqshipError):
    """A server that cannot start: a bad --bundle, a name used twice, a port in use."""


class HTTPError(Exception):
    """An answer other than 200: its status and the message of the protocol's {"error": ...} body."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


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


# ---------------------------------------------------------------------------------------------- models


@dataclass
class Served:
    """One bundle under one name."""

    name: str
    path: Path
    predictor: Predictor
    batcher: Batcher | None = None

    @functools.cached_property
    def label_index(self) -> dict:
        """Label -> class index."""
        return {lab: i for i, lab in enumerate(self.predictor.labels)}

    def metadata(self) -> dict:
        """The protocol's model metadata, plus the bundle's digest and labels under `parameters`."""
        outputs = [{"name": n, "datatype": d, "shape": s} for n, (d, s) in OUTPUTS.items()]
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs,
            "parameters": {
                "bundle_sha256": self.predictor.digest,
                "labels": list(self.predictor.labels),
                "provider": self.predictor.provider,
            },
        }


def parse_bundle_option(value: str) -> tuple[str | None, Path]:
    """`DIR` or `NAME=DIR` (a name is letters, digits, `_`, `.`, `-`; a path with `=` in it: use NAME=DIR)."""
    name, sep, path = value.partition("=")
    if sep and NAME.fullmatch(name):
        return name, Path(path)
    return None, Path(value)


def model_name(bundle: Path, predictor: Predictor) -> str:
    """The manifest's run name when it is a valid model name, else the folder above `bundle/`, else 'model'."""
    candidates = [
        predictor.bundle.manifest.get("name") if predictor.bundle else None,
        bundle.resolve().parent.name if bundle.name == "bundle" else bundle.resolve().name,
    ]
    for c in candidates:
        if isinstance(c, str) and NAME.fullmatch(c):
            return c
    return "model"


def load_models(bundles: list[str], expect_sha256: list[str], providers, unicode_mismatch: str) -> dict[str, Served]:
    """Load and verify every --bundle (Predictor.load's checks) before anything listens."""
    if expect_sha256 and len(expect_sha256) != len(bundles):
        raise ServeError(
            f"{len(expect_sha256)} --expect-sha256 for {len(bundles)} --bundle: give one per bundle, "
            "in the same order (or none)"
        )
    models: dict[str, Served] = {}
    for i, value in enumerate(bundles):
        name, path = parse_bundle_option(value)
        if not (path / "manifest.json").exists():
            raise ServeError(
                f"--bundle {value}: {path} holds no manifest.json; pass a bundle folder "
                "(a run's bundle/), optionally as NAME=DIR"
            )
        predictor = Predictor.load(
            path,
            providers=providers,
            intra_op_num_threads=1,
            expected_sha256=expect_sha256[i] if expect_sha256 else None,
            unicode_mismatch=unicode_mismatch,
        )
        name = name or model_name(path, predictor)
        if name in models:
            raise ServeError(
                f"two bundles are named {name!r} ({models[name].path} and {path}); "
                f"name them: --bundle a={models[name].path} --bundle b={path}"
            )
        models[name] = Served(name, path, predictor)
    return models


# ---------------------------------------------------------------------------------------------- batching


@dataclass
class _Item:
    texts: list[str]
    top_k: int
    future: asyncio.Future
    arrival: float


class Batcher:
    """Coalesces the texts of concurrent requests into batches and scores them on worker threads.

    A batch starts once a worker is free: it takes every waiting request that fits in max_batch texts,
    waiting up to max_delay after the oldest one's arrival for more. A request with more texts than
    max_batch is a batch of its own (the Predictor splits it). Each request gets its own results back.
    """

    def __init__(self, served: Served, limits: Limits, metrics: Metrics):
        self.served, self.limits, self.metrics = served, limits, metrics
        self.pending: deque[_Item] = deque()
        self.waiting = 0  # texts in `pending`
        self.executor = ThreadPoolExecutor(limits.threads, thread_name_prefix=f"seqship-serve-{served.name}")
        self._more = asyncio.Event()
        self._slots = asyncio.Semaphore(limits.threads)
        self._running: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the batching loop (on the running event loop)."""
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.served.name}")

    async def submit(self, texts: list[str], top_k: int) -> list:
        """Predictions (or InputError / ModelOutputError per text) for `texts`, in order."""
        if self.waiting + len(texts) > self.limits.max_queue_texts and self.waiting:
            self.metrics.rejected.labels(self.served.name).inc()
            raise HTTPError(
                503,
                f"model {self.served.name!r} has {self.waiting} texts waiting (the limit is "
                f"{self.limits.max_queue_texts}); retry in a moment",
                {"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        item = _Item(texts, top_k, loop.create_future(), loop.time())
        self.pending.append(item)
        self.waiting += len(texts)
        self.metrics.queue.labels(self.served.name).set(self.waiting)
        self._more.set()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), self.limits.timeout_s)
        except asyncio.CancelledError:  # the drain was cut short: what is still queued is not scored
            item.future.cancel()
            raise
        except asyncio.TimeoutError:
            item.future.cancel()  # still queued: it is dropped; already scoring: its result is discarded
            raise HTTPError(
                503,
                f"not scored within {self.limits.timeout_s:g} s (the server is overloaded); "
                "retry later or send fewer texts",
                {"Retry-After": "1"},
            ) from None

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except asyncio.CancelledError:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._score(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self._more.clear()
                await self._more.wait()
            deadline = self.pending[0].arrival + self.limits.max_delay_ms / 1000
            while self.waiting < self.limits.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._more.clear()
                try:
                    await asyncio.wait_for(self._more.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch, n = [], 0
            while self.pending and (not batch or n + len(self.pending[0].texts) <= self.limits.max_batch):
                item = self.pending.popleft()
                self.waiting -= len(item.texts)
                if not item.future.done():  # a request that timed out is not scored
                    batch.append(item)
                    n += len(item.texts)
            self.metrics.queue.labels(self.served.name).set(self.waiting)
            if batch:
                return batch

    async def _score(self, batch: list[_Item]) -> None:
        texts = [t for item in batch for t in item.texts]
        top_k = max(item.top_k for item in batch)
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, lambda: self.served.predictor.predict(texts, top_k=top_k, errors="return")
            )
        except Exception as e:  # noqa: BLE001 - onnxruntime failing mid-run: every caller gets a 500
            log.error("scoring a batch of %d texts failed", len(texts), exc_info=e)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(HTTPError(500, f"scoring failed: {type(e).__name__}: {str(e)[:200]}"))
            return
        finally:
            self._slots.release()
        self.metrics.batch_texts.labels(self.served.name).observe(len(texts))
        self.metrics.batch_seconds.labels(self.served.name).observe(time.perf_counter() - started)
        start = 0
        for item in batch:
            mine = results[start : start + len(item.texts)]
            start += len(item.texts)
            if item.top_k < top_k:  # the batch was scored with the largest k asked; each gets its own k
                mine = [r if isinstance(r, Exception) else r._replace(top_k=r.top_k[: item.top_k]) for r in mine]
            if not item.future.done():
                item.future.set_result(mine)

    async def close(self, timeout_s: float) -> None:
        """Score everything still queued (for at most timeout_s), then stop; the server accepts nothing new by now."""

        async def idle():
            while self.pending or self._running:
                await asyncio.sleep(0.01)

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(idle(), timeout_s)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self.executor.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------- metrics


class Metrics:
    """Prometheus metrics in a registry of the server's own (two servers in one process do not mix)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter(
            "seqship_requests", "HTTP requests answered, by endpoint and status code.", ["endpoint", "code"], registry=r
        )
        self.errors = Counter(
            "seqship_request_errors",
            "Requests answered with a status of 400 or more.",
            ["endpoint", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "seqship_request_duration_seconds",
            "Time from request to the end of its answer.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter(
            "seqship_texts", "Texts answered, by model and outcome (scored or error).", ["model", "outcome"], registry=r
        )
        self.batch_texts = Histogram(
            "seqship_batch_texts",
            "Texts per scored batch (dynamic batching).",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "seqship_batch_duration_seconds", "Time to score one batch.", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue = Gauge("seqship_queue_texts", "Texts waiting to be batched.", ["model"], registry=r)
        self.rejected = Counter(
            "seqship_rejected", "Requests refused because the queue was full.", ["model"], registry=r
        )
        self.in_flight = Gauge("seqship_requests_in_flight", "Requests accepted and not yet answered.", registry=r)


def endpoint_of(path: str) -> str:
    """A bounded label for a request path (never the raw path: that would let callers mint label values)."""
    if path.startswith("/v2/models/"):
        tail = path.rstrip("/").rsplit("/", 1)[-1]
        return {"infer": "infer", "ready": "model_ready"}.get(tail, "model_metadata")
    return {
        "/v2/health/live": "live",
        "/v2/health/ready": "ready",
        "/v2": "server_metadata",
        "/predict": "predict",
        "/metrics": "metrics",
        "/": "index",
    }.get(path.rstrip("/") or "/", "other")


class Accounting:
    """ASGI middleware: counts, times and labels every HTTP request, and keeps the tally the drain reports.

    A request whose handler is cancelled before it answered (the drain timed out, or a second signal forced
    the exit) is answered here with 503 and Retry-After, and counted as cut off.
    """

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.accepted = self.answered = self.cut_off = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.accepted += 1
        self.metrics.in_flight.inc()
        started, endpoint, status = time.perf_counter(), endpoint_of(scope["path"]), [0]

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.answered += 1
                code = str(status[0])
                self.metrics.requests.labels(endpoint, code).inc()
                if status[0] >= 400 and status[0] != CLIENT_CLOSED:
                    self.metrics.errors.labels(endpoint, code).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

        try:
            await self.app(scope, receive, counted_send)
        except asyncio.CancelledError:
            if status[0]:
                raise
            self.cut_off += 1
            body = _dumps(
                {
                    "error": "the server stopped before this request was answered (it was draining and "
                    "--drain-timeout-s ran out, or a second signal forced the exit); retry it"
                }
            )
            await counted_send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", b"1"),
                        (b"connection", b"close"),
                    ],
                }
            )
            await counted_send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.in_flight.dec()


# ---------------------------------------------------------------------------------------------- protocol


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


def _json(body: bytes, what: str):
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
    req = _json(head, "the request body" if header_length is None else "the request's JSON header")
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


def infer_response(served: Served, req: InferRequest, results: list) -> tuple[bytes, dict]:
    """The response body and its extra headers (Inference-Header-Content-Length when a tensor is binary)."""
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
        "model_version": VERSION,
        "outputs": outputs,
        "parameters": {"bundle_sha256": served.predictor.digest},
    }
    if req.id is not None:
        head["id"] = req.id
    text = _dumps(head)
    if not blobs:
        return text, {}
    return text + b"".join(blobs), {"Inference-Header-Content-Length": str(len(text))}


MAX_GZIP_MEMBERS = 16  # each member costs a copy of the rest of the body: bounded, so a body of empty members is cheap


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip (every member, as RFC 1952 allows, up to 16) or deflate (zlib) body, refused past `limit` bytes inflated."""
    out, data = bytearray(), body
    for _ in range(MAX_GZIP_MEMBERS):
        d = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            out += d.decompress(data, limit + 1 - len(out))
        except zlib.error as e:
            raise HTTPError(400, f"the body is not valid {encoding} ({e})") from None
        if len(out) > limit or d.unconsumed_tail:
            raise HTTPError(413, f"the body inflates past {limit} bytes (--max-body-bytes)")
        if not d.eof:
            raise HTTPError(400, f"the {encoding} body is truncated")
        data = d.unused_data
        if not data:
            return bytes(out)
        if encoding != "gzip":
            raise HTTPError(400, f"{len(data)} bytes follow the end of the {encoding} body")
    raise HTTPError(400, f"the gzip body has more than {MAX_GZIP_MEMBERS} members; compress it as one")


def _dumps(obj) -> bytes:
    """Compact strict JSON in UTF-8 (runtime.bulk.json_text: never NaN, a lone surrogate escaped)."""
    return json_text(obj, (",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------------------------- the app


def build_app(models: dict[str, Served], limits: Limits, metrics: Metrics, state: dict):
    """The ASGI application (Starlette), wrapped in the request accounting; `state["draining"]` is set on SIGTERM."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response
    from starlette.routing import Route

    def answer(body: bytes, status: int = 200, headers: dict | None = None, media: str = "application/json"):
        return Response(body, status_code=status, headers=headers, media_type=media)

    def error(status: int, message: str, headers: dict | None = None):
        return answer(_dumps({"error": message}), status, headers)

    def model_or_404(request) -> Served:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name not in models:
            raise HTTPError(404, f"unknown model {name[:80]!r}; this server has {', '.join(sorted(models))}")
        if version is not None and version != VERSION:
            raise HTTPError(404, f"model {name!r} has no version {version[:20]!r}; it is served as version {VERSION!r}")
        return models[name]

    async def body_of(request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            raise HTTPError(
                413,
                f"the body is {int(length)} bytes; the limit is {limits.max_body_bytes} "
                "(--max-body-bytes): send fewer or shorter texts",
            )

        async def read():
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:  # the rest of the body is not read: close the connection after
                    raise HTTPError(
                        413,
                        f"the body is over {limits.max_body_bytes} bytes (--max-body-bytes): "
                        "send fewer or shorter texts",
                        {"Connection": "close"},
                    )
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            body = await asyncio.wait_for(read(), limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(
                408, f"the body did not arrive within {limits.timeout_s:g} s (--timeout-s)", {"Connection": "close"}
            ) from None
        except ClientDisconnect:
            raise HTTPError(CLIENT_CLOSED, "the client closed the connection before sending the whole body") from None
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate"):
            body = inflate(body, encoding, limits.max_body_bytes)
        elif encoding != "identity":
            raise HTTPError(415, f"Content-Encoding {encoding[:40]!r} is not supported; send identity, gzip or deflate")
        return body

    async def live(request):
        return answer(b'{"live":true}')

    async def ready(request):
        if state["draining"]:
            return error(503, "draining: the server is shutting down")
        return answer(b'{"ready":true}')

    async def server_metadata(request):
        return answer(
            _dumps({"name": "seqship", "version": __version__, "extensions": ["binary_tensor_data", "classification"]})
        )

    async def model_metadata(request):
        return answer(_dumps(model_or_404(request).metadata()))

    async def model_ready(request):
        model_or_404(request)
        if state["draining"]:
            return error(503, "draining: the server is shutting down")
        return answer(b'{"ready":true}')

    async def infer(request):
        served = model_or_404(request)
        body = await body_of(request)
        req = parse_infer(
            body, request.headers.get("inference-header-content-length"), len(served.predictor.labels), limits
        )
        results = await score(served, req.texts, req.scoring_k, req.errors)
        content, headers = infer_response(served, req, results)
        return answer(
            content,
            headers=headers,
            media="application/octet-stream" if "Inference-Header-Content-Length" in headers else "application/json",
        )

    async def score(served: Served, texts: list, top_k: int, errors: str) -> list:
        """Every text's Prediction or error; with errors='raise', the first bad text is a 400 naming it."""
        good = [i for i, t in enumerate(texts) if isinstance(t, str)]
        scored = await served.batcher.submit([texts[i] for i in good], top_k) if good else []
        results = list(texts)
        for i, r in zip(good, scored):
            if isinstance(r, (InputError, ModelOutputError)):  # its index is within the batch: name the request's
                r = type(r)(re.sub(r"^text #\d+", f"text #{i}", str(r)), i)
            results[i] = r
        bad = sum(isinstance(r, Exception) for r in results)
        metrics.texts.labels(served.name, "scored").inc(len(results) - bad)
        if bad:
            metrics.texts.labels(served.name, "error").inc(bad)
            if errors == "raise":
                first = next(r for r in results if isinstance(r, Exception))
                raise HTTPError(
                    400,
                    f"{first} (inputs[0] 'text' element {first.index}; with parameters.errors="
                    "'return' the other texts are still scored)",
                )
        return results

    async def predict(request):
        body = await body_of(request)
        req = _json(body, "the request body")
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
            raise HTTPError(404, f"unknown model {str(name)[:80]!r}; this server has {', '.join(sorted(models))}")
        served = models[name]
        top_k = req.get("top_k", 1)
        n_labels = len(served.predictor.labels)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_labels:
            raise HTTPError(400, f"top_k must be an integer from 1 to {n_labels}, got {top_k!r}")
        raw = req["texts"]
        if not raw:
            raise HTTPError(400, '"texts" is empty; send at least one text')
        if len(raw) > limits.max_texts:
            raise HTTPError(413, f"{len(raw)} texts in one request; the limit is {limits.max_texts} (--max-texts)")
        texts = [t if isinstance(t, str) else not_text(i, t) for i, t in enumerate(raw)]
        results = await score(served, texts, top_k, "return")
        lines = [
            {"index": i, "error": str(r)} if isinstance(r, Exception) else {"index": i, **r.to_dict()}
            for i, r in enumerate(results)
        ]
        return answer(_dumps({"model": name, "bundle_sha256": served.predictor.digest, "predictions": lines}))

    async def index(request):
        return answer(
            _dumps(
                {
                    "server": "seqship",
                    "version": __version__,
                    "protocol": "Open Inference Protocol (KServe v2) REST",
                    "models": {
                        n: {"bundle_sha256": m.predictor.digest, "labels": len(m.predictor.labels)}
                        for n, m in models.items()
                    },
                    "endpoints": [
                        "GET /v2/health/live",
                        "GET /v2/health/ready",
                        "GET /v2",
                        "GET /v2/models/{name}",
                        "GET /v2/models/{name}/ready",
                        "POST /v2/models/{name}/infer",
                        "POST /predict",
                        "GET /metrics",
                    ],
                }
            )
        )

    async def prometheus(request):
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def on_http_error(request, exc: HTTPError):
        return error(exc.status, exc.message, exc.headers)

    async def on_starlette_error(request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return error(404, f"no such path {request.url.path[:100]!r}; GET / lists the endpoints")
        if exc.status_code == 405:
            return error(
                405,
                f"{request.method} is not allowed on {request.url.path[:100]!r}; GET / lists the endpoints",
                {"Allow": exc.headers.get("Allow", "") if exc.headers else ""},
            )
        return error(exc.status_code, str(exc.detail))

    async def on_bug(request, exc: Exception):
        log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    m = "/v2/models/{name}"
    mv = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/", index, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route(m, model_metadata, methods=["GET"]),
        Route(mv, model_metadata, methods=["GET"]),
        Route(m + "/ready", model_ready, methods=["GET"]),
        Route(mv + "/ready", model_ready, methods=["GET"]),
        Route(m + "/infer", infer, methods=["POST"]),
        Route(mv + "/infer", infer, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for served in models.values():
            served.batcher = Batcher(served, limits, metrics)
            served.batcher.start()
        yield
        for served in models.values():
            await served.batcher.close(limits.drain_timeout_s)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPError: on_http_error, StarletteHTTPException: on_starlette_error, Exception: on_bug},
    )
    app.router.redirect_slashes = False  # a 307 built from the Host header helps no client of this protocol
    return Accounting(app, metrics)


# ---------------------------------------------------------------------------------------------- running


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0: any free one)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ServeError(f"--host {host!r}: cannot be resolved ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port}: {e.strerror}; pick another --port (0: any free one)"
        ) from None
    return sock


def serve(
    models: dict[str, Served],
    host: str,
    port: int,
    limits: Limits,
    *,
    access_log: bool = False,
    on_ready: Callable[[str], None] = print,
    verbose: bool = False,
) -> dict:
    """Serve until SIGTERM or SIGINT, then drain; returns the tally (accepted, answered, cut_off, ...).

    Meant to end the process: SIGINT and SIGTERM are left ignored when it returns."""
    import uvicorn

    metrics = Metrics()
    state = {"draining": False}
    app = build_app(models, limits, metrics, state)
    sock = bind(host, port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{shown}:{bound[1]}"

    class Server(uvicorn.Server):
        """Uvicorn's server, plus: the application learns it drains (readiness 503), --drain-delay-s keeps
        accepting for a while first, a connection that has not sent its first request's headers within
        --timeout-s is closed, and a drain ends in exit 0 (uvicorn itself re-raises the signal once it has
        shut down, which would end the process with 143)."""

        def __init__(self, config):
            super().__init__(config)
            self.opened: dict = {}  # connection -> when it was first seen

        def handle_exit(self, sig, frame):
            first = not state["draining"]
            if first:
                state["draining"] = True
                state["drain_started"] = time.monotonic()
                in_flight = app.accepted - app.answered

                def announce():  # not from inside the signal handler: it may have interrupted a write to stderr
                    delay = f"; accepting for {limits.drain_delay_s:g} s more" if limits.drain_delay_s else ""
                    print(
                        f"{signal.Signals(sig).name}: draining ({in_flight} requests in flight{delay})",
                        file=sys.stderr,
                        flush=True,
                    )
                    if limits.drain_delay_s:
                        asyncio.get_running_loop().call_later(limits.drain_delay_s, setattr, self, "should_exit", True)

                try:
                    asyncio.get_running_loop().call_soon_threadsafe(announce)
                except RuntimeError:  # before the event loop runs
                    pass
                else:
                    if limits.drain_delay_s:
                        return
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, self.handle_exit)
            try:
                yield
            finally:  # the process is ending: a late signal must not turn a clean drain into exit 143 (SIG_IGN:
                for s in (signal.SIGINT, signal.SIGTERM):  # a Python handler is reset when the interpreter exits)
                    signal.signal(s, signal.SIG_IGN)

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                on_ready(url)

        async def on_tick(self, counter):
            if counter % 10 == 0:
                now, live = time.monotonic(), self.server_state.connections
                for conn in list(live):
                    first = self.opened.setdefault(conn, now)
                    # uvicorn closes idle keep-alive connections, never one that has sent no complete request yet
                    if getattr(conn, "cycle", False) is None and now - first > limits.timeout_s:
                        transport = getattr(conn, "transport", None)
                        if transport is not None:
                            transport.close()
                for conn in [c for c in self.opened if c not in live]:
                    del self.opened[conn]
            return await super().on_tick(counter)

    config = uvicorn.Config(
        app,
        access_log=access_log,
        log_config=None,
        log_level="info" if verbose else "warning",
        timeout_graceful_shutdown=limits.drain_timeout_s,
        lifespan="on",
        server_header=False,
        timeout_keep_alive=30,
    )
    if access_log:  # after Config, which sets uvicorn's loggers to log_level
        access = logging.getLogger("uvicorn.access")
        access.handlers[:] = [logging.StreamHandler(sys.stderr)]
        access.setLevel(logging.INFO)
        access.propagate = False
    server = Server(config)
    started = time.monotonic()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    drain = time.monotonic() - state["drain_started"] if "drain_started" in state else None
    return {
        "accepted": app.accepted,
        "answered": app.answered,
        "cut_off": app.cut_off,
        "connections_cut": len(server.server_state.connections),
        "seconds": time.monotonic() - started,
        "drain_seconds": drain,
    }

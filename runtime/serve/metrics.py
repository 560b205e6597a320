"""Prometheus metrics, and the ASGI middleware that records them for every HTTP request.

prometheus_client loads when a server builds its `Metrics`, never on import.
"""

from __future__ import annotations

import asyncio
import time

from seqship.runtime.serve.protocol import CLIENT_CLOSED, dumps

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Prometheus metrics in a registry of the server's own (two servers in one process do not mix).

    With `--workers N`, every worker process writes its metrics to files in one folder
    (prometheus_client's multiprocess mode: PROMETHEUS_MULTIPROC_DIR, set by the parent before this process
    imported prometheus_client), and `registry` is a collector that sums every worker's files: /metrics
    answers for the whole server, whichever worker serves it. Gauges then count live workers only; process
    figures (CPU, memory) are left out, as they would be one worker's."""

    def __init__(self, multiprocess_dir: str | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self._texts: dict = {}
        self.active = 0  # requests in flight in this process, HTTP and gRPC together (the gauge, readable cheaply)
        # uvicorn's tasks, one per HTTP request it has read the headers of, started or not (set by the server)
        self.http_tasks: set | frozenset = frozenset()
        if multiprocess_dir:
            from prometheus_client.multiprocess import MultiProcessCollector

            class FilesOnly(CollectorRegistry):
                """What /metrics reads: every worker's files, summed. A metric made with this registry (here, or
                gRPC's) writes its values to this process's file, and is read from there, not registered too."""

                def register(self, collector) -> None:
                    if isinstance(collector, MultiProcessCollector):
                        super().register(collector)

            self.registry = r = FilesOnly()
            MultiProcessCollector(r, path=multiprocess_dir)
        else:
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
        self.queue = Gauge(
            "seqship_queue_texts", "Texts waiting to be batched.", ["model"], registry=r, multiprocess_mode="livesum"
        )
        self.rejected = Counter(
            "seqship_rejected", "Requests refused because the queue was full.", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "seqship_requests_in_flight",
            "Requests accepted and not yet answered.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.buffered = Gauge(
            "seqship_buffered_body_bytes",
            "Bytes of request bodies held by the requests in flight (--max-buffered-bytes bounds them).",
            registry=r,
            multiprocess_mode="livesum",
        )

    def started(self) -> None:
        """A request (HTTP or gRPC) was accepted."""
        self.active += 1
        self.in_flight.inc()

    def ended(self) -> None:
        """A request was answered (or cut off)."""
        self.active -= 1
        self.in_flight.dec()

    def alone(self) -> bool:
        """Whether the request asking is the only one in this process: none other in flight, and none that
        uvicorn has read but not yet started (under load, the first of a loop turn's requests to run would
        otherwise see itself alone)."""
        return self.active == 1 and len(self.http_tasks) <= 1

    def texts_of(self, model: str, outcome: str):
        """The `seqship_texts` child of (model, outcome), looked up once."""
        key = (model, outcome)
        child = self._texts.get(key)
        if child is None:
            child = self._texts[key] = self.texts.labels(model, outcome)
        return child


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
    """ASGI middleware: counts, times and labels every HTTP request, and keeps the tally the drain reports. Once
    the server drains (`state["draining"]`, set on SIGTERM), every answer carries `Connection: close`, so a
    keep-alive client reconnects (elsewhere) after its answer instead of sending its next request into a closing
    connection.

    A request whose handler is cancelled before it answered (the drain timed out, or a second signal forced
    the exit) is answered here with 503 and Retry-After, and counted as cut off.
    """

    def __init__(self, app, metrics: Metrics, state: dict | None = None):
        self.app, self.metrics, self.state = app, metrics, state if state is not None else {"draining": False}
        self.accepted = self.answered = self.cut_off = 0
        self._children: dict = {}  # (endpoint, status) -> its metric children, looked up once

    def _count(self, endpoint: str, status: int, seconds: float) -> None:
        children = self._children.get((endpoint, status))
        if children is None:
            m, code = self.metrics, str(status)
            errors = m.errors.labels(endpoint, code) if status >= 400 and status != CLIENT_CLOSED else None
            children = self._children[endpoint, status] = (
                m.requests.labels(endpoint, code),
                errors,
                m.latency.labels(endpoint),
            )
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.accepted += 1
        self.metrics.started()
        started, endpoint, status = time.perf_counter(), endpoint_of(scope["path"]), [0]

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if self.state["draining"]:  # a keep-alive client reconnects (elsewhere) after this answer
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.answered += 1
                self._count(endpoint, status[0], time.perf_counter() - started)

        try:
            await self.app(scope, receive, counted_send)
        except asyncio.CancelledError:
            if status[0]:
                raise
            self.cut_off += 1
            body = dumps(
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
            self.metrics.ended()

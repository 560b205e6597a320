"""The gRPC side of the server: Triton's `inference.GRPCInferenceService` on grpc.aio (the `serve` extra).

It runs on the HTTP server's event loop and shares everything with it: the models (and their versions), each
model's batcher, the limits (a message over --max-body-bytes is RESOURCE_EXHAUSTED before it is parsed;
--max-texts, --timeout-s), the metrics (gRPC calls are counted in seqship_grpc_requests_total by method and
code, texts and batches in the same series as HTTP's) and the drain. A request is parsed into the same
InferRequest as HTTP's JSON (protocol.read_infer), so both sides check and answer alike; outputs go back in
`raw_output_contents`, as Triton sends them. A call whose deadline passes or whose client cancels is taken out
of the batch queue and never scored. HTTP's statuses become the protocol's codes (grpc_code). grpcio and
protobuf load when the server starts, never on import.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
import time
from types import SimpleNamespace

from seqship.runtime.serve.app import off_loop, score
from seqship.runtime.serve.protocol import (
    CLIENT_CLOSED,
    HTTPError,
    Limits,
    Models,
    _binary,
    _column,
    find_model,
    read_infer,
    server_metadata,
)

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
MESSAGES = (
    "ServerLive ServerReady ModelReady ServerMetadata ModelMetadata ModelInfer ModelStatistics RepositoryIndex "
    "RepositoryModelLoad RepositoryModelUnload"
).split()


@functools.cache
def messages() -> SimpleNamespace:
    """The request and response classes of MESSAGES, built from the vendored descriptor in a pool of their own."""
    from google.protobuf import descriptor_pool, message_factory

    from seqship.runtime.serve.grpc_service_descriptor import SERIALIZED

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(SERIALIZED)
    out = {}
    for m in MESSAGES:
        for kind in ("Request", "Response"):
            out[m + kind] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{m}{kind}"))
    return SimpleNamespace(**out)


def grpc_code(status: int):
    """The gRPC status code of an HTTP status this server answers with."""
    import grpc

    codes = {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        404: grpc.StatusCode.NOT_FOUND,
        408: grpc.StatusCode.DEADLINE_EXCEEDED,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        415: grpc.StatusCode.INVALID_ARGUMENT,
        503: grpc.StatusCode.UNAVAILABLE,
        CLIENT_CLOSED: grpc.StatusCode.CANCELLED,
    }
    return codes.get(status, grpc.StatusCode.INTERNAL)


def _value(p):
    """An InferParameter (or ModelRepositoryParameter) as the JSON value HTTP would carry."""
    choice = p.WhichOneof("parameter_choice")
    return None if choice is None else getattr(p, choice)


# Entries a ModelInferRequest may hold besides its texts: one input ("text"), a few outputs and parameters. A
# message of many empty entries is small on the wire but costs Python time per entry to convert.
MAX_ENTRIES = 64


def check_entries(req, limits: Limits) -> None:
    """Refuse, in constant time and before anything is converted, a request with more entries than any valid
    one has (len() of a repeated field or map is O(1)): else millions of empty inputs, outputs, parameters or
    texts in one message would hold the event loop while request_as_json walks them."""
    counts = {
        "inputs": len(req.inputs),
        "outputs": len(req.outputs),
        "parameters": len(req.parameters),
        "raw_input_contents": len(req.raw_input_contents),
    }
    for field, n in counts.items():
        if n > MAX_ENTRIES:
            raise HTTPError(400, f"the request holds {n} {field}; a valid one holds at most {MAX_ENTRIES}")
    for t in req.inputs:
        if len(t.parameters) > MAX_ENTRIES or len(t.shape) > MAX_ENTRIES:
            raise HTTPError(400, f"input {t.name[:64]!r} holds more parameters or dimensions than a valid one")
        if len(t.contents.bytes_contents) > limits.max_texts:
            raise HTTPError(
                413,
                f"{len(t.contents.bytes_contents)} texts in one request; the limit is {limits.max_texts} (--max-texts)",
            )
        if req.raw_input_contents and t.HasField("contents"):  # Triton's check, and its words
            raise HTTPError(
                400,
                f"contents field must not be specified when using raw_input_contents for {t.name[:64]!r} for model "
                f"{req.model_name[:64]!r}; send the texts in one of them",
            )
    for o in req.outputs:
        if len(o.parameters) > MAX_ENTRIES:
            raise HTTPError(400, f"output {o.name[:64]!r} holds more parameters than a valid one")


def request_as_json(req) -> tuple[dict, memoryview]:
    """A ModelInferRequest as the JSON an HTTP client would send, and the bytes of its first input as binary
    data (raw_input_contents, or contents.bytes_contents laid out as the binary-tensor extension does)."""
    inputs, binary = [], memoryview(b"")
    for i, t in enumerate(req.inputs):
        params = {k: _value(v) for k, v in t.parameters.items()}
        if i < len(req.raw_input_contents):
            raw = req.raw_input_contents[i]
        else:
            raw = b"".join(struct.pack("<I", len(b)) + b for b in t.contents.bytes_contents)
        if i == 0:
            binary = memoryview(raw)
        params["binary_data_size"] = len(raw)
        inputs.append({"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "parameters": params})
    out = {"inputs": inputs, "parameters": {k: _value(v) for k, v in req.parameters.items()}}
    if req.id:
        out["id"] = req.id
    if req.outputs:
        out["outputs"] = [
            {"name": o.name, "parameters": {k: _value(v) for k, v in o.parameters.items()}} for o in req.outputs
        ]
    return out, binary


class GrpcServer:
    """inference.GRPCInferenceService over `models`; `accepted`, `answered` and `cut_off` feed the drain's tally."""

    def __init__(self, models: Models, limits: Limits, metrics, state: dict, repository=None):
        self.models, self.limits, self.metrics, self.state, self.repository = models, limits, metrics, state, repository
        self.accepted = self.answered = self.cut_off = 0
        self.server = None
        self.stop_deadline: float | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> str:
        """Listen on host:port (0: any free port) on the running event loop; returns host:port as bound.
        reuse_port: let other processes listen on the same port (several workers); off, a port in use is an
        error rather than a port silently shared with another server."""
        import grpc
        from prometheus_client import Counter, Histogram

        from seqship.runtime.serve.metrics import LATENCY_BUCKETS
        from seqship.runtime.serve.server import ServeError

        r = self.metrics.registry
        self.requests = Counter(
            "seqship_grpc_requests", "gRPC calls answered, by method and status code.", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "seqship_grpc_request_duration_seconds",
            "Time from a gRPC call to its answer.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        m = messages()
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._rpc(name, getattr(self, name)),
                request_deserializer=getattr(m, name + "Request").FromString,
                response_serializer=getattr(m, name + "Response").SerializeToString,
            )
            for name in MESSAGES
        }
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.limits.max_body_bytes),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ]
        )
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        shown = f"[{host}]" if ":" in host else host
        try:
            bound = self.server.add_insecure_port(f"{shown}:{port}")
        except RuntimeError:
            bound = 0
        if not bound:
            raise ServeError(f"cannot listen for gRPC on {host}:{port}; pick another --grpc-port (0: any free one)")
        await self.server.start()
        return f"{shown}:{bound}"

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, give the calls in flight grace_s to be answered, then cancel the rest."""
        if self.server is not None:
            self.stop_deadline = time.monotonic() + grace_s
            await self.server.stop(grace_s)

    def _rpc(self, method: str, fn):
        import grpc

        async def handler(request, context):
            self.accepted += 1
            self.metrics.started()
            started, code = time.perf_counter(), "OK"
            try:
                return await fn(request, context)
            except HTTPError as e:
                code = grpc_code(e.status).name
                await context.abort(grpc_code(e.status), e.message)
            except asyncio.CancelledError:
                code = "CANCELLED"
                if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                    self.cut_off += 1
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                code = "INTERNAL"
                log.error("unexpected error answering gRPC %s", method, exc_info=e)
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__}); the server log has the details"
                )
            finally:
                self.answered += 1
                self.metrics.ended()
                self.requests.labels(method, code).inc()
                self.latency.labels(method).observe(time.perf_counter() - started)

        return handler

    # --------------------------------------------------------------------------------------------- health

    async def ServerLive(self, req, context):
        return messages().ServerLiveResponse(live=True)

    async def ServerReady(self, req, context):
        return messages().ServerReadyResponse(ready=not self.state["draining"])

    async def ModelReady(self, req, context):
        try:
            find_model(self.models, req.name, req.version)
        except HTTPError:  # as HTTP's client reads a 404: not ready
            return messages().ModelReadyResponse(ready=False)
        return messages().ModelReadyResponse(ready=not self.state["draining"])

    async def ServerMetadata(self, req, context):
        meta = server_metadata()
        return messages().ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelMetadata(self, req, context):
        served = find_model(self.models, req.name, req.version)
        meta = served.metadata(sorted(self.models.versions(served.name)))
        return messages().ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=meta["inputs"],
            outputs=meta["outputs"],
        )

    # --------------------------------------------------------------------------------------------- inference

    async def ModelInfer(self, req, context):
        m = messages()
        with self.models.lease(req.model_name, req.model_version) as served:
            check_entries(req, self.limits)
            as_json, binary = await off_loop(req.ByteSize(), request_as_json, req)
            parsed = await off_loop(len(binary), read_infer, as_json, binary, len(served.predictor.labels), self.limits)
            del as_json, binary
            left = context.time_remaining()
            if context.cancelled() or (left is not None and left <= 0):
                raise asyncio.CancelledError
            try:
                results = await asyncio.wait_for(
                    score(served, parsed.texts, parsed.scoring_k, parsed.errors, self.metrics),
                    left if left is not None else None,
                )
            except asyncio.TimeoutError:  # the batcher took the texts out of its queue when the wait was cancelled
                raise HTTPError(408, "the call's deadline passed before its texts were scored") from None
        out = m.ModelInferResponse(model_name=served.name, model_version=str(served.version), id=req.id)
        out.parameters["bundle_sha256"].string_param = served.predictor.digest
        index = served.label_index
        for name, _, k in parsed.outputs:
            datatype, shape, values = _column(name, results, k, index, parsed.top_k)
            out.outputs.add(name=name, datatype=datatype, shape=shape)
            out.raw_output_contents.append(_binary(datatype, values))
        return out

    async def ModelStatistics(self, req, context):
        """Per model (its versions together, version ""): texts scored (inference_count) and batches scored
        (execution_count), the counts /metrics has."""
        names = [find_model(self.models, req.name, req.version).name] if req.name else sorted(self.models)
        out = messages().ModelStatisticsResponse()
        sample = self.metrics.registry.get_sample_value
        for name in names:
            texts = sample("seqship_texts_total", {"model": name, "outcome": "scored"}) or 0
            batches = sample("seqship_batch_texts_count", {"model": name}) or 0
            out.model_stats.add(name=name, version="", inference_count=int(texts), execution_count=int(batches))
        return out

    # --------------------------------------------------------------------------------------------- repository

    def _repository(self):
        if self.repository is None:
            raise HTTPError(
                503,
                "this server has no model repository: start it with --model-repository DIR "
                "(and --model-control-mode explicit to load and unload models)",
            )
        return self.repository

    async def RepositoryIndex(self, req, context):
        out = messages().RepositoryIndexResponse()
        for row in self._repository().index(req.ready):
            out.models.add(**row)
        return out

    async def RepositoryModelLoad(self, req, context):
        await self._repository().load(req.model_name, sorted(req.parameters))
        return messages().RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, req, context):
        await self._repository().unload(req.model_name)
        return messages().RepositoryModelUnloadResponse()

"""The HTTP side of the server: a Starlette app whose handlers read the request, then delegate.

Each handler does only what is HTTP's (path parameters, the body's length, arrival and Content-Encoding,
status codes and media types) and hands the rest to `protocol` (parse, check, build the answer) and to the
model's `Batcher` (score). Starlette and prometheus_client load when the app is built, never on import.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from typing import TYPE_CHECKING

from seqship.runtime import __version__
from seqship.runtime.errors import InputError, ModelOutputError
from seqship.runtime.serve.batching import Batcher
from seqship.runtime.serve.bodies import Budget, Hold, inflate
from seqship.runtime.serve.metrics import Accounting, Metrics
from seqship.runtime.serve.protocol import (
    CLIENT_CLOSED,
    HTTPError,
    Limits,
    Models,
    Served,
    dumps,
    find_model,
    infer_response,
    parse_infer,
    parse_predict,
    predict_response,
    read_index_request,
    read_load_request,
    server_metadata,
)

if TYPE_CHECKING:
    from seqship.runtime.serve.repository import Repository

log = logging.getLogger(__name__)

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")  # as Starlette's {name} and {version}
OFF_LOOP_BYTES = 1 << 16  # a body larger than this is inflated and parsed on a worker thread, not the event loop


async def off_loop(size: int, fn, *args):
    """fn(*args): on the event loop for a small body, else on a worker thread (protocol.check_json_values works
    in steps, between which the event loop gets the GIL)."""
    if size <= OFF_LOOP_BYTES:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


async def score(served: Served, texts: list, top_k: int, errors: str, metrics: Metrics) -> list:
    """Every text's Prediction or error; with errors='raise', the first bad text is a 400 naming it (HTTP and gRPC)."""
    good = [i for i, t in enumerate(texts) if isinstance(t, str)]
    scored = await served.batcher.submit([texts[i] for i in good], top_k, metrics.alone()) if good else []
    results = list(texts)
    for i, r in zip(good, scored):
        if isinstance(r, (InputError, ModelOutputError)):  # its index is within the batch: name the request's
            r = type(r)(re.sub(r"^text #\d+", f"text #{i}", str(r)), i)
        results[i] = r
    bad = sum(isinstance(r, Exception) for r in results)
    metrics.texts_of(served.name, "scored").inc(len(results) - bad)
    if bad:
        metrics.texts_of(served.name, "error").inc(bad)
        if errors == "raise":
            first = next(r for r in results if isinstance(r, Exception))
            raise HTTPError(
                400,
                f"{first} (inputs[0] 'text' element {first.index}; with parameters.errors="
                "'return' the other texts are still scored)",
            )
    return results


def build_app(models: Models, limits: Limits, metrics: Metrics, state: dict, repository: Repository | None = None):
    """The ASGI application (Starlette), wrapped in the request accounting; `state["draining"]` is set on SIGTERM.
    With a `repository`, its index, load and unload calls are routes too, and it is kept in step while serving."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
    from starlette.routing import Route

    def answer(body: bytes, status: int = 200, headers: dict | None = None, media: str = "application/json"):
        return Response(body, status_code=status, headers=headers, media_type=media)

    def error(status: int, message: str, headers: dict | None = None):
        return answer(dumps({"error": message}), status, headers)

    budget = Budget(limits.max_buffered_bytes, metrics.buffered)

    def model_or_404(request) -> Served:
        return find_model(models, request.path_params["name"], request.path_params.get("version"))

    async def body_of(request, hold: Hold) -> bytearray:
        """The whole body, inflated, its bytes taken from the budget: all a declared Content-Length at once
        (503 before a byte is read when the budget is spent), a chunked body as it arrives."""
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > limits.max_body_bytes:
            raise HTTPError(
                413,
                f"the body is {declared} bytes; the limit is {limits.max_body_bytes} "
                "(--max-body-bytes): send fewer or shorter texts",
            )
        if declared:
            hold.take(declared)

        async def read():
            body = bytearray()  # one buffer, grown in place: no list of chunks, no joined copy
            receive, more = request.receive, True  # ASGI's messages, as Starlette's request.stream() reads them
            try:
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnect()
                    chunk, more = message.get("body", b""), message.get("more_body", False)
                    if len(body) + len(chunk) > limits.max_body_bytes:  # the rest is not read: the connection closes
                        raise HTTPError(
                            413,
                            f"the body is over {limits.max_body_bytes} bytes (--max-body-bytes): "
                            "send fewer or shorter texts",
                            {"Connection": "close"},
                        )
                    if declared is None:
                        hold.take(len(chunk))
                    body += chunk
            except BaseException:  # a client gone, a timeout: the exception's traceback keeps this frame (until
                del body[:]  # the garbage collector runs), so the bytes are let go here
                raise
            return body

        try:
            async with asyncio.timeout(limits.timeout_s):  # no task: a body that has arrived is read at once
                body = await read()
        except TimeoutError:
            raise HTTPError(
                408, f"the body did not arrive within {limits.timeout_s:g} s (--timeout-s)", {"Connection": "close"}
            ) from None
        except ClientDisconnect:
            raise HTTPError(CLIENT_CLOSED, "the client closed the connection before sending the whole body") from None
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate"):
            # what it inflates to is not known yet: on a worker thread, always
            body = await asyncio.get_running_loop().run_in_executor(
                None, inflate, body, encoding, limits.max_body_bytes, hold
            )
        elif encoding != "identity":
            raise HTTPError(415, f"Content-Encoding {encoding[:40]!r} is not supported; send identity, gzip or deflate")
        return body

    async def live(request):
        return answer(b'{"live":true}')

    async def ready(request):
        if state["draining"]:
            return error(503, "draining: the server is shutting down")
        return answer(b'{"ready":true}')

    async def server_info(request):
        return answer(dumps(server_metadata()))

    async def model_metadata(request):
        served = model_or_404(request)
        return answer(dumps(served.metadata(sorted(models.versions(served.name)))))

    async def model_ready(request):
        model_or_404(request)
        if state["draining"]:
            return error(503, "draining: the server is shutting down")
        return answer(b'{"ready":true}')

    async def infer(request):
        with (
            models.lease(request.path_params["name"], request.path_params.get("version")) as served,
            budget.hold() as hold,
        ):  # the body, then its texts, are held until the answer
            body = await body_of(request, hold)
            header_length = request.headers.get("inference-header-content-length")
            req = await off_loop(len(body), parse_infer, body, header_length, len(served.predictor.labels), limits)
            del body
            results = await score(served, req.texts, req.scoring_k, req.errors, metrics)
        content, headers = infer_response(served, req, results)
        return answer(
            content,
            headers=headers,
            media="application/octet-stream" if "Inference-Header-Content-Length" in headers else "application/json",
        )

    async def predict(request):
        with budget.hold() as hold:
            body = await body_of(request, hold)
            req = await off_loop(len(body), parse_predict, body, models, limits)
            del body
            with models.lease(req.model) as served:
                results = await score(served, req.texts, req.top_k, "return", metrics)
        return answer(predict_response(served, results))

    async def index(request):
        return answer(
            dumps(
                {
                    "server": "seqship",
                    "version": __version__,
                    "protocol": "Open Inference Protocol (KServe v2) REST",
                    "models": {
                        n: {
                            "bundle_sha256": m.predictor.digest,
                            "labels": len(m.predictor.labels),
                            "versions": sorted(models.versions(n)),
                        }
                        for n, m in models.items()
                    },
                    "endpoints": [
                        "GET /v2/health/live",
                        "GET /v2/health/ready",
                        "GET /v2",
                        "GET /v2/models/{name}[/versions/{version}]",
                        "GET /v2/models/{name}[/versions/{version}]/ready",
                        "POST /v2/models/{name}[/versions/{version}]/infer",
                        "POST /v2/repository/index",
                        "POST /v2/repository/models/{name}/load",
                        "POST /v2/repository/models/{name}/unload",
                        "POST /predict",
                        "GET /metrics",
                    ],
                }
            )
        )

    def repository_or_404() -> Repository:
        if repository is None:
            raise HTTPError(
                404,
                "this server has no model repository: start it with --model-repository DIR "
                "(and --model-control-mode explicit to load and unload models)",
            )
        return repository

    async def repository_index(request):
        repo = repository_or_404()
        with budget.hold() as hold:
            body = await body_of(request, hold)
        ready = read_index_request(bytes(body), limits)
        return answer(dumps(repo.index(ready)))

    async def repository_load(request):
        repo = repository_or_404()
        with budget.hold() as hold:
            body = await body_of(request, hold)
        await repo.load(request.path_params["name"], read_load_request(bytes(body), limits))
        return answer(b"{}")

    async def repository_unload(request):
        await repository_or_404().unload(request.path_params["name"])
        return answer(b"{}")

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
        Route("/v2", server_info, methods=["GET"]),
        Route(m, model_metadata, methods=["GET"]),
        Route(mv, model_metadata, methods=["GET"]),
        Route(m + "/ready", model_ready, methods=["GET"]),
        Route(mv + "/ready", model_ready, methods=["GET"]),
        Route(m + "/infer", infer, methods=["POST"]),
        Route(mv + "/infer", infer, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for served in models.all():
            served.batcher = Batcher(served, limits, metrics)
            served.batcher.start()
        if repository is not None:
            repository.start(limits, metrics)
        yield
        deadline = state.get("drain_deadline", time.monotonic() + limits.drain_timeout_s)  # the drain's, if one ran
        if repository is not None:
            await repository.stop(max(0.0, deadline - time.monotonic()))
        for served in models.all():
            await served.batcher.close(max(0.0, deadline - time.monotonic()))

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPError: on_http_error, StarletteHTTPException: on_starlette_error, Exception: on_bug},
    )
    app.router.redirect_slashes = False  # a 307 built from the Host header helps no client of this protocol

    async def application(scope, receive, send):
        """Starlette's app, but an infer call (the hot path) goes straight to its handler: no middleware layers
        and no walk of the route table (the same handler and error answers as through Starlette)."""
        if scope["type"] == "http" and scope["method"] == "POST" and (match := INFER_PATH.fullmatch(scope["path"])):
            scope["path_params"] = {"name": match[1]} if match[2] is None else {"name": match[1], "version": match[2]}
            request = Request(scope, receive)
            try:
                response = await infer(request)
            except HTTPError as e:
                response = await on_http_error(request, e)
            except Exception as e:  # noqa: BLE001 - a bug: logged, answered 500
                response = await on_bug(request, e)
            return await response(scope, receive, send)
        return await app(scope, receive, send)

    return Accounting(application, metrics, state)

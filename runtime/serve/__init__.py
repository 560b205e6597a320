"""`pipeline serve`: bundles over HTTP, speaking the Open Inference Protocol (KServe v2) (extra `serve`).

Triton Inference Server, KServe and Seldon MLServer speak this protocol, so their clients (tritonclient,
the KServe SDKs, curl) work unchanged. The stack is Starlette (the small ASGI toolkit FastAPI is built on:
routing and requests, no validation framework to learn) on Uvicorn (the reference ASGI server: an event
loop that holds thousands of idle connections without a thread each, httptools' parser, and a graceful
shutdown that stops accepting, lets every request in flight finish, then runs the application's own
shutdown). Both are the `serve` extra; the base runtime stays numpy + onnxruntime. Importing this package
costs nothing: starlette, uvicorn and prometheus_client load when a server starts.

What it promises:
- A text's answer is `Predictor.predict`'s for that text (the same bundle, verified at start-up exactly as
  `Predictor.load` verifies it); batching with other callers' texts changes no label.
- Concurrent requests are coalesced into one batch of up to --max-batch texts, waiting at most
  --max-delay-ms after the first; batches are scored off the event loop, on --threads worker threads.
- Every failure of a request that parses as HTTP is an answer: `{"error": "..."}` with 400 (bad input,
  naming the item), 404 (unknown model or path), 405, 408 (body too slow), 413 (too large, or more JSON
  values than --max-texts texts need), 415, 503 (queue full, timed out, --max-buffered-bytes spent, not
  ready or draining; with Retry-After), 500 (a bug, logged); a client gone mid-body is counted as 499.
  Never a traceback or a dropped connection.
- Nothing a client sends stalls the event loop or holds memory without bound: JSON values are counted
  before one is built, large bodies are inflated and parsed on a worker thread, and the bodies of all
  requests in flight share one budget, returned when a request ends however it ends (the client gone too).
  Options that could not answer a lone request on an idle server are refused at start-up (Limits.validate).
- SIGTERM (or Ctrl-C) drains: every answer carries `Connection: close`; the listening socket closes
  (after --drain-delay-s, during which readiness is 503) without resetting a connection the kernel had
  completed; an idle keep-alive connection gets a grace to send one more request; every request already
  accepted is answered, queued texts are scored, and the process exits 0 with a one-line account on
  stderr; requests cut off by --drain-timeout-s get a 503 and the exit is 1.

By concern: `protocol` (requests parsed and checked, responses built: no socket, no event loop),
`bodies` (the budget for request bodies, and decompression), `batching` (the dynamic batcher), `metrics`
(Prometheus, and the middleware that counts every request),
`app` (the Starlette app: HTTP, then delegate), `server` (load the bundles, bind, run, drain).
"""

from seqship.runtime.serve.protocol import Limits
from seqship.runtime.serve.server import load_models, serve

__all__ = ["Limits", "load_models", "serve"]

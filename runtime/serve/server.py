"""The server's life: bundles loaded and verified, the socket bound, Uvicorn run, signals turned into a drain.

Uvicorn (the `serve` extra) loads when `serve` runs, never on import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable

from seqship.runtime.errors import SeqshipError
from seqship.runtime.predictor import Predictor
from seqship.runtime.serve.app import build_app
from seqship.runtime.serve.metrics import Metrics
from seqship.runtime.serve.protocol import Limits, Models, Served

if TYPE_CHECKING:
    from seqship.runtime.serve.repository import Repository

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a model name: one URL path segment, no escaping
IDLE_GRACE_S = 2.0  # after the listener closes, how long an idle keep-alive connection may still send a request


class ServeError(SeqshipError):
    """A server that cannot start: a bad --bundle, a name used twice, a port in use."""


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


def keep_large_buffers_apart() -> None:
    """Make glibc give every allocation of 128 KiB or more (a request body) its own mapping, returned to the
    system when the body is freed. By default glibc raises that threshold to the size of the first such block
    freed, after which 8 MiB bodies fragment the heap and a server keeps the memory of the largest burst it
    saw. Setting the threshold (to its usual start, 128 KiB) turns the raising off. Other C libraries: nothing."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD


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


def idle(conn) -> bool:
    """Whether a uvicorn connection is open with no request in progress (a keep-alive one between requests)."""
    cycle = getattr(conn, "cycle", False)
    transport = getattr(conn, "transport", None)
    return (cycle is None or getattr(cycle, "response_complete", False)) and not (
        transport is None or transport.is_closing()
    )


def serve(
    models: dict[str, Served] | Models,
    host: str,
    port: int,
    limits: Limits,
    *,
    access_log: bool = False,
    on_ready: Callable[..., None] = print,
    verbose: bool = False,
    workers: int = 1,
    grpc_port: int | None = None,
    repository: Repository | None = None,
) -> dict:
    """Serve until SIGTERM or SIGINT, then drain; returns the tally (accepted, answered, cut_off, ...).

    grpc_port: serve gRPC there too (0: any free port); on_ready then gets the gRPC address as well.
    repository: the one `models` came from (Repository.load_all), kept in step while serving.
    workers: > 1 runs that many server processes on this port (seqship.runtime.serve.workers), each this
    process's own command line re-run; the tally is theirs summed.
    Meant to end the process: SIGINT and SIGTERM are left ignored when it returns."""
    import uvicorn

    from seqship.runtime.serve.workers import WorkerContext, reserve_port, run_workers

    worker = WorkerContext.from_env()  # this process is one of a --workers parent's
    if workers > 1 and worker is None:
        limits.validate()
        with contextlib.ExitStack() as held:
            sock = held.enter_context(bind(host, port))
            grpc_reserved = held.enter_context(reserve_port(host, grpc_port)) if grpc_port is not None else None
            return run_workers(
                workers,
                [sys.executable, *sys.orig_argv[1:]],
                sock,
                on_ready=on_ready,
                drain_s=limits.drain_delay_s + limits.drain_timeout_s,
                grpc_port=grpc_reserved.getsockname()[1] if grpc_reserved else None,
            )
    if worker is not None:
        worker.watch_parent()
        on_ready = worker.ready
        grpc_port = worker.grpc_port or grpc_port
    limits.validate()
    keep_large_buffers_apart()
    metrics = Metrics(worker.metrics_dir if worker else None)
    who = f"worker {worker.index + 1}: " if worker else ""  # on the lines a worker writes to the shared stderr
    state = {"draining": False}
    if not isinstance(models, Models):
        models = Models(models.values())
    app = build_app(models, limits, metrics, state, repository)
    grpc_server = None
    if grpc_port is not None:
        from seqship.runtime.serve.grpc_app import GrpcServer

        grpc_server = GrpcServer(models, limits, metrics, state, repository)
    sock = worker.socket() if worker else bind(host, port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{shown}:{bound[1]}"

    class Server(uvicorn.Server):
        """Uvicorn's server, plus: the application learns it drains (readiness 503, `Connection: close` on
        every answer), --drain-delay-s keeps accepting for a while first, the listener closes without
        resetting a connection the kernel had already completed, an idle keep-alive connection gets
        IDLE_GRACE_S to send one more request before it is closed, a connection that has not sent its first
        request's headers within --timeout-s is closed, and a drain ends in exit 0 (uvicorn itself re-raises
        the signal once it has shut down, which would end the process with 143)."""

        def __init__(self, config):
            super().__init__(config)
            self.opened: dict = {}  # connection -> when it was first seen

        def handle_exit(self, sig, frame):
            first = not state["draining"]
            if first:
                state["draining"] = True
                state["drain_started"] = time.monotonic()
                in_flight = app.accepted - app.answered  # HTTP's, and gRPC's
                if grpc_server is not None:
                    in_flight += grpc_server.accepted - grpc_server.answered

                def announce():  # not from inside the signal handler: it may have interrupted a write to stderr
                    delay = f"; accepting for {limits.drain_delay_s:g} s more" if limits.drain_delay_s else ""
                    print(
                        f"{who}{signal.Signals(sig).name}: draining ({in_flight} requests in flight{delay})",
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
            if not self.started:
                return
            if grpc_server is None:
                on_ready(url)
                return
            try:
                # a worker shares the gRPC port with its siblings (SO_REUSEPORT); alone, a port in use is an error
                address = await grpc_server.start(host, grpc_port, reuse_port=worker is not None)
            except ServeError as e:  # raised once the server has stopped: one Error: line, the CLI's
                state["grpc_failed"] = e
                self.should_exit = True
                return
            on_ready(url, address)

        async def shutdown(self, sockets=None):
            # Closing a listening socket resets the connections in its accept queue, which their clients see
            # as a reset, not a refusal: take them in first (nothing awaits between the last accept and the
            # close), then answer them like every other connection.
            # One deadline for the whole drain (HTTP, gRPC, the batchers' queues): --drain-timeout-s from now, when
            # the listener closes (after --drain-delay-s)
            deadline = state["drain_deadline"] = time.monotonic() + limits.drain_timeout_s
            grpc_stopped = None
            if grpc_server is not None:  # refuses new calls now; those in flight get what is left of the drain
                grpc_stopped = asyncio.ensure_future(grpc_server.stop(limits.drain_timeout_s))
            pending = []
            with contextlib.suppress(OSError):
                sock.setblocking(False)
                while True:
                    pending.append(sock.accept()[0])
            for server in self.servers:
                server.close()
            sock.close()
            loop = asyncio.get_running_loop()
            for conn in pending:
                await loop.connect_accepted_socket(self.new_protocol, conn)
            # uvicorn closes idle keep-alive connections at once, and a request their client sent meanwhile
            # fails with EOF or a reset: each first gets a grace to send one (answered with Connection: close)
            grace_end = min(time.monotonic() + IDLE_GRACE_S, deadline)
            while time.monotonic() < grace_end and any(map(idle, self.server_state.connections)):
                await asyncio.sleep(0.02)
            if grpc_stopped is not None:  # before the application's shutdown closes the batchers
                await grpc_stopped
            # what is left of the deadline, less the 0.1 s uvicorn waits before it starts counting
            self.config.timeout_graceful_shutdown = max(0.0, deadline - time.monotonic() - 0.1)
            await super().shutdown(sockets)

        def new_protocol(self):
            """A protocol for a connection accepted here rather than by the asyncio server (as uvicorn builds it)."""
            return self.config.http_protocol_class(
                config=self.config, server_state=self.server_state, app_state=self.lifespan.state
            )

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
        proxy_headers=access_log,  # X-Forwarded-For matters to the access log only: else one layer less a request
    )
    if access_log:  # after Config, which sets uvicorn's loggers to log_level
        access = logging.getLogger("uvicorn.access")
        access.handlers[:] = [logging.StreamHandler(sys.stderr)]
        access.setLevel(logging.INFO)
        access.propagate = False
    server = Server(config)
    metrics.http_tasks = server.server_state.tasks  # for Metrics.alone
    started = time.monotonic()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if state.get("grpc_failed"):
        raise state["grpc_failed"]
    drain = time.monotonic() - state["drain_started"] if "drain_started" in state else None
    grpc_counts = grpc_server or SimpleNamespace(accepted=0, answered=0, cut_off=0)
    tally = {
        "accepted": app.accepted + grpc_counts.accepted,
        "answered": app.answered + grpc_counts.answered,
        "cut_off": app.cut_off + grpc_counts.cut_off,
        "connections_cut": len(server.server_state.connections),
        "seconds": time.monotonic() - started,
        "drain_seconds": drain,
    }
    if worker is not None:
        worker.report(tally=tally)
    return tally

"""`pipeline serve --workers N`: N server processes on one port, past one event loop's (and one GIL's) limit.

The parent binds the port (so --port 0, and a port in use, behave as for one process), then starts N fresh
Python processes running the same `pipeline serve` command, each inheriting the listening socket (as Uvicorn's
and Gunicorn's --workers do: the kernel hands each new connection to whichever worker accepts it first). Each
worker loads and verifies its bundles itself, as one server does, and has its own event loop, batcher and
scoring threads: fresh processes rather than forks of a loaded parent, because onnxruntime sessions and their
threads are not safe to fork, and a worker then starts exactly as a lone server does.

Metrics: each worker writes its Prometheus metrics to files in a private folder the parent creates and
removes (prometheus_client's multiprocess mode), and whichever worker answers /metrics sums them all. A parent
killed outright cannot remove it: the next `--workers` server removes the folders of servers that are gone.

The parent reports ready once every worker is; it forwards SIGTERM and SIGINT to every worker (workers run in
their own session, so Ctrl-C reaches them once, through the parent), each drains as a lone server does, and
the parent sums their tallies. A worker that dies while serving is reported, the others are drained, and the
server exits 1 (an orchestrator restarts it whole; what the dead worker had accepted may be lost). A worker
whose parent vanished drains itself (it sees its control pipe close).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from seqship.runtime.errors import SeqshipError

log = logging.getLogger(__name__)

ENV = "SEQSHIP_SERVE_WORKER"  # set in a worker's environment: JSON of its WorkerContext
START_TIMEOUT_S = 300.0  # for a worker to load its bundles and listen
EXIT_GRACE_S = 30.0  # past the drain's own limits, before a worker that has not exited is killed
METRICS_PREFIX = "seqship-metrics-"  # the name of a metrics folder begins so
OWNER = "seqship-owner"  # in a metrics folder: the pid of the server (the --workers parent) that made it


class WorkerError(SeqshipError):
    """A worker that could not start, or died while serving."""


@dataclass
class WorkerContext:
    """What a worker process inherits from its parent."""

    index: int
    listen_fd: int  # the listening socket
    report_fd: int  # JSON lines to the parent: {"ready": url, ...}, then {"tally": {...}}
    control_fd: int  # the parent's end closes when the parent exits: then the worker drains itself
    metrics_dir: str
    grpc_port: int | None  # the gRPC port the parent holds (the free one it picked, for --grpc-port 0)

    @classmethod
    def from_env(cls) -> WorkerContext | None:
        value = os.environ.get(ENV)
        return cls(**json.loads(value)) if value else None

    def socket(self) -> socket.socket:
        return socket.socket(fileno=self.listen_fd)

    def ready(self, url: str, grpc: str | None = None) -> None:
        """Tell the parent this worker listens (its on_ready)."""
        self.report(ready=True, url=url, grpc=grpc)

    def report(self, **message) -> None:
        os.write(self.report_fd, (json.dumps(message) + "\n").encode())

    def watch_parent(self) -> None:
        """Drain (SIGTERM to this process) once the parent's end of the control pipe closes."""

        def watch():
            with contextlib.suppress(OSError):
                while os.read(self.control_fd, 1):
                    pass
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="seqship-parent-watch", daemon=True).start()


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen
    report: int  # read end
    control: int  # write end
    buffer: bytes = b""
    ready: dict | None = None
    tally: dict | None = None

    def lines(self) -> list[dict]:
        """The messages that have arrived (call when `report` is readable); [] and EOF -> proc exited."""
        data = os.read(self.report, 65536)
        if not data:
            return [{"eof": True}]
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in complete if line]


def _exit_status(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def _memory_dir() -> str | None:
    """/dev/shm where there is one: the metrics files are memory-mapped and written on every request, and on a
    disk a write to a page being written back can wait for the disk (None: the usual temp folder)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, exited and not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it runs
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc here (or it just exited): as kill(0) said
        return True


def remove_stale_metrics(parent: str) -> list[str]:
    """Remove the metrics folders under `parent` that a server killed without its clean-up left behind (SIGKILL,
    out of memory): only seqship's (named so, this user's, with an OWNER marker that is a plain file) that no
    process holds. A live server and its workers hold a lock on the marker (an flock, released by the kernel
    when the last of them exits, whatever its pid namespace); and the pids the folder names must be gone too.
    Returns the folders removed."""
    import fcntl
    import stat

    removed = []
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            fd = -1
            try:
                if not (entry.name.startswith(METRICS_PREFIX) and entry.is_dir(follow_symlinks=False)):
                    continue
                if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                # never a blocking open: a FIFO under the marker's name would wait for a writer for ever
                fd = os.open(os.path.join(entry.path, OWNER), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a server or one of its workers runs
                    continue
                pids = [int(os.read(fd, 32))]
                pids += [int(m[1]) for n in os.listdir(entry.path) if (m := re.fullmatch(r"\w+_(\d+)\.db", n))]
            except (OSError, ValueError):  # no marker (not seqship's), or not readable: left alone
                continue
            finally:
                if fd >= 0:
                    os.close(fd)
            if not any(map(_alive, pids)):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    if removed:
        log.warning("removed %d metrics folder(s) left by servers that were killed: %s", len(removed), removed)
    return removed


def _metrics_folder() -> tuple[str, int]:
    """A private folder for the workers' metrics files, marked as this process's (stale ones removed first), and
    the marker's descriptor, locked: the workers inherit it, so the lock lasts while any of them runs."""
    import fcntl

    parent = _memory_dir()
    remove_stale_metrics(parent or tempfile.gettempdir())
    path = tempfile.mkdtemp(prefix=METRICS_PREFIX, dir=parent)
    fd = os.open(os.path.join(path, OWNER), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, str(os.getpid()).encode())
    return path, fd


def reserve_port(host: str, port: int = 0) -> socket.socket:
    """A socket bound to host:port (0: a free one) with SO_REUSEPORT, held (never listening) while the workers
    listen there too (gRPC's workers bind with SO_REUSEPORT). A given port is first bound without SO_REUSEPORT,
    which fails if anything else holds it: else a second server's workers could share the port with ours and
    answer some of our clients' calls."""
    from seqship.runtime.serve.server import ServeError

    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    for reuse_port in (False, True) if port else (True,):
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        try:
            sock.bind(addr)
        except OSError as e:
            sock.close()
            raise ServeError(
                f"cannot listen for gRPC on {host}:{port} ({e.strerror}); pick another --grpc-port (0: any free one)"
            ) from None
        if not reuse_port:
            sock.close()  # free: now held with SO_REUSEPORT, so that the workers can bind it too
    return sock


def run_workers(
    n: int,
    command: list[str],
    sock: socket.socket,
    *,
    on_ready: Callable[..., None],
    drain_s: float,
    grpc_port: int | None = None,
) -> dict:
    """Run `command` (this `pipeline serve`) as n workers sharing `sock`; return their summed tally.

    drain_s: how long a drain may take (--drain-delay-s + --drain-timeout-s), before a worker is killed.
    grpc_port: the port every worker serves gRPC on, which the parent holds (reserve_port)."""
    metrics_dir, owner_lock = _metrics_folder()
    workers: list[_Worker] = []
    signals: list[int] = []

    def forward(sig, frame):
        signals.append(sig)
        for w in workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(n):
            workers.append(_spawn(i, command, sock, metrics_dir, owner_lock, grpc_port))
        try:
            _wait_ready(workers, signals)
        except WorkerError:  # the workers already listening drain what they accepted
            _stop(workers, drain_s)
            raise
        if not signals:  # (a signal during start-up: forwarded; the workers drain)
            first = workers[0].ready
            on_ready(first["url"], *([first["grpc"]] if first.get("grpc") else []))
        failed = _supervise(workers, signals, drain_s, metrics_dir)
    except BaseException:  # nothing is left running
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait()
        raise
    finally:
        for w in workers:
            for fd in (w.report, w.control):
                with contextlib.suppress(OSError):
                    os.close(fd)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.close(owner_lock)
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_IGN if signals else handler)
    tallies = [w.tally or {} for w in workers]
    drains = [t["drain_seconds"] for t in tallies if t.get("drain_seconds") is not None]
    return {
        **{k: sum(t.get(k, 0) for t in tallies) for k in ("accepted", "answered", "cut_off", "connections_cut")},
        "drain_seconds": max(drains) if drains else None,
        "per_worker": [t.get("accepted", 0) for t in tallies],
        "failed": failed,
    }


def _spawn(
    index: int, command: list[str], sock: socket.socket, metrics_dir: str, owner_lock: int, grpc_port: int | None
) -> _Worker:
    report_r, report_w = os.pipe()
    control_r, control_w = os.pipe()
    context = WorkerContext(index, sock.fileno(), report_w, control_r, metrics_dir, grpc_port)
    env = {**os.environ, ENV: json.dumps(context.__dict__), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    try:
        proc = subprocess.Popen(
            command,
            env=env,
            pass_fds=(sock.fileno(), report_w, control_r, owner_lock),
            start_new_session=True,
            stdout=sys.stderr,
        )
    finally:
        os.close(report_w)
        os.close(control_r)
    return _Worker(index, proc, report_r, control_w)


def _wait_ready(workers: list[_Worker], signals: list[int]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not all(w.ready for w in workers) and not signals:
        left = deadline - time.monotonic()
        waiting = [w for w in workers if not w.ready]
        if left <= 0:
            raise WorkerError(
                f"worker {waiting[0].index + 1} did not load its bundles and listen within {START_TIMEOUT_S:g} s"
            )
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([w.report for w in waiting], [], [], min(left, 0.5))
            for w in waiting:
                if w.report in readable:
                    for message in w.lines():
                        if message.get("ready"):
                            w.ready = message
                        elif message.get("eof"):
                            code = w.proc.wait(timeout=EXIT_GRACE_S)
                            raise WorkerError(
                                f"worker {w.index + 1} stopped before it was ready ({_exit_status(code)}); "
                                "its error is above"
                            )


def _stop(workers: list[_Worker], drain_s: float) -> None:
    """SIGTERM every worker still running, let it drain, kill what is left."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + drain_s + EXIT_GRACE_S
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def _supervise(workers: list[_Worker], signals: list[int], drain_s: float, metrics_dir: str) -> list[str]:
    """Until every worker has exited: collect tallies; a worker that dies unasked makes the others drain."""
    failed: list[str] = []
    running = {w.report: w for w in workers}
    deadline = None
    while running:
        if signals and deadline is None:
            deadline = time.monotonic() + drain_s + EXIT_GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            for w in running.values():
                w.proc.kill()
                failed.append(f"worker {w.index + 1} (pid {w.proc.pid}) did not exit within the drain: killed")
            deadline = float("inf")
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(list(running), [], [], 0.5)
            for fd in readable:
                w = running[fd]
                for message in w.lines():
                    if "tally" in message:
                        w.tally = message["tally"]
                    elif message.get("eof"):
                        del running[fd]
                        code = w.proc.wait(timeout=EXIT_GRACE_S)
                        if w.tally is None:  # it did not finish a drain: it died
                            for path in os.listdir(metrics_dir):  # its gauges no longer count (counters do)
                                if path.startswith("gauge_live") and path.endswith(f"_{w.proc.pid}.db"):
                                    os.unlink(os.path.join(metrics_dir, path))
                            how = "stopped before it had drained" if signals else "died while serving"
                            failed.append(
                                f"worker {w.index + 1} (pid {w.proc.pid}) {how} ({_exit_status(code)}); "
                                "the requests it had accepted may have gone unanswered"
                            )
                            if not signals:
                                print(f"Error: {failed[-1]}: draining the others", file=sys.stderr, flush=True)
                                signals.append(signal.SIGTERM)
                                for other in running.values():
                                    with contextlib.suppress(ProcessLookupError):
                                        other.proc.send_signal(signal.SIGTERM)
    return failed

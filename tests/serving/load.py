"""Load for the drain tests: keep-alive HTTP clients that post one request after another until told to stop."""

from __future__ import annotations

import http.client
import threading
import time


class KeepAliveClients:
    """`clients` threads, each posting `body` to `path` on its own keep-alive connection, one request after another.

    `ok` counts the 200s. Anything else is a failure (`failures`), except what a drain may do to a connection:
    a refusal once the listener is closed, and the reset of a fresh connection after `terminating()` (one the
    kernel completed in the instant between the server's last accept and its listener's close is reset by the
    kernel: never accepted, never counted, as good as refused). A keep-alive connection closed under a request
    is a failure: the drain says `Connection: close` first."""

    def __init__(self, server, body: bytes, clients: int = 16, path: str = "/v2/models/m/infer"):
        self.server, self.body, self.path = server, body, path
        self.ok, self.failures = 0, []
        self._lock, self._stop, self._term = threading.Lock(), threading.Event(), threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self) -> None:
        c = self.server.conn()
        while not self._stop.is_set():
            fresh = c.sock is None  # this request opens a new connection (the last answer said Connection: close)
            try:
                c.request("POST", self.path, body=self.body)
                r = c.getresponse()
                r.read()
                with self._lock:
                    if r.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(r.status)
            except ConnectionRefusedError:
                return  # the listener is closed: the drain has begun
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                if not (fresh and self._term.is_set()):
                    with self._lock:
                        self.failures.append(repr(e))
                return

    def wait_for(self, answered: int, timeout_s: float = 120.0) -> int:
        """Wait until `answered` requests got a 200 (or a client stopped early); returns the 200s so far."""
        deadline = time.monotonic() + timeout_s
        while self.ok < answered and all(t.is_alive() for t in self.threads):
            assert time.monotonic() < deadline, f"waiting for {answered} answers, got {self.ok} in {timeout_s:g} s"
            time.sleep(0.05)
        with self._lock:
            return self.ok

    def terminating(self) -> None:
        """The server is about to get SIGTERM: from now on a fresh connection may be reset."""
        self._term.set()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop sending and wait for every client (each finishes the request it is in)."""
        self._stop.set()
        for t in self.threads:
            t.join(timeout=timeout_s)

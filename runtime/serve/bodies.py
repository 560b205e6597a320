"""Request bodies: one budget for the bytes every request in flight holds, and decompression within it.

Pure Python and zlib: no socket, no event loop, no HTTP framework. `inflate` may run on a worker thread
(zlib lets go of the GIL while it works), so the budget is shared under a lock.
"""

from __future__ import annotations

import threading
import zlib

from seqship.runtime.serve.protocol import HTTPError

MAX_GZIP_MEMBERS = 16  # each member costs a copy of the rest of the body: bounded, so a body of empty members is cheap
INFLATE_STEP = 1 << 20  # bytes inflated (and taken from the budget) at a time


class Budget:
    """Bytes of request bodies held at once by every request in flight together (--max-buffered-bytes)."""

    def __init__(self, limit: int, gauge=None):
        self.limit, self.held = limit, 0
        self.gauge = gauge  # a prometheus Gauge kept equal to `held` (set, not read on scrape: it works with --workers)
        self._lock = threading.Lock()

    def _changed(self) -> None:  # under the lock
        if self.gauge is not None:
            self.gauge.set(self.held)

    def hold(self) -> Hold:
        """One request's share, returned whole when the request ends: `with budget.hold() as hold: ...`."""
        return Hold(self)


class Hold:
    """The bytes one request has taken from the budget."""

    def __init__(self, budget: Budget):
        self.budget, self.bytes = budget, 0

    def take(self, n: int) -> None:
        """Take n more bytes, or refuse the request with 503 (and close its connection: the body is not read)."""
        b = self.budget
        with b._lock:
            if b.held + n > b.limit:
                held = b.held
            else:
                b.held += n
                self.bytes += n
                b._changed()
                return
        raise HTTPError(
            503,
            f"the server holds {held} bytes of request bodies and this one needs {n} more; the limit is "
            f"{b.limit} (--max-buffered-bytes): retry in a moment",
            {"Retry-After": "1", "Connection": "close"},
        )

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc) -> None:
        if self.bytes:
            with self.budget._lock:
                self.budget.held -= self.bytes
                self.budget._changed()
        self.bytes = 0


def inflate(body: bytes, encoding: str, limit: int, hold: Hold) -> bytearray:
    """A gzip (every member, as RFC 1952 allows, up to 16) or deflate (zlib) body, refused past `limit` bytes
    inflated; what it inflates to is taken from `hold` as it grows."""
    out = bytearray()
    try:
        _inflate_into(out, body, encoding, limit, hold)
    except BaseException:  # the exception's traceback keeps this frame: not the bytes
        del out[:]
        raise
    return out


def _inflate_into(out: bytearray, data: bytes, encoding: str, limit: int, hold: Hold) -> None:
    for _ in range(MAX_GZIP_MEMBERS):
        d = zlib.decompressobj(31 if encoding == "gzip" else 15)
        while not d.eof:
            try:
                piece = d.decompress(data, min(INFLATE_STEP, limit + 1 - len(out)))
            except zlib.error as e:
                raise HTTPError(400, f"the body is not valid {encoding} ({e})") from None
            if len(out) + len(piece) > limit:
                raise HTTPError(413, f"the body inflates past {limit} bytes (--max-body-bytes)")
            hold.take(len(piece))
            out += piece
            data = d.unconsumed_tail
            if not (piece or data or d.eof):
                raise HTTPError(400, f"the {encoding} body is truncated")
        data = d.unused_data
        if not data:
            return
        if encoding != "gzip":
            raise HTTPError(400, f"{len(data)} bytes follow the end of the {encoding} body")
    raise HTTPError(400, f"the gzip body has more than {MAX_GZIP_MEMBERS} members; compress it as one")

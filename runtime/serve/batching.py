"""Dynamic batching: the texts of concurrent requests coalesced into batches, scored on worker threads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from seqship.runtime.serve.metrics import Metrics
from seqship.runtime.serve.protocol import HTTPError, Limits, Served

log = logging.getLogger(__name__)

INLINE_MAX_S = 0.001  # a one-text batch cheaper than this (EWMA) may be scored on the event loop for a lone request
INLINE_MAX_CHARS = 1024  # and only a text this short: tokenizing walks the text (8 MB of spaces is 0.3 s), which
# the EWMA of ordinary texts cannot foresee
EWMA_WEIGHT = 0.1  # of the newest one-text batch in the running average


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

    No task per request or per batch: a request waits on its own future (and one timer for --timeout-s). On an
    idle batcher (every worker free, nothing queued, no --max-delay-ms) a request goes to a worker thread at
    once; otherwise it queues, and a callback on the event loop's next turn takes what has queued (every request
    that arrived in this turn shares a batch) and hands it to a free worker thread. A worker passes the results
    back with one call_soon_threadsafe.

    A lone one-text request of a cheap model is scored on the event loop itself (`inline`): when it is the only
    request in flight in the server, the batcher is idle, and the model's recent one-text batches took less
    than INLINE_MAX_S each on average (an EWMA of every one-text batch, wherever it ran), and the text is at most
    INLINE_MAX_CHARS characters (what a text costs to tokenize grows with its characters, not only its tokens). The hand-off to a thread
    costs about as much as scoring such a text; a slow model (or a machine that makes it slow) is never
    scored on the loop, so it never holds the other connections for longer than that bound.
    """

    def __init__(self, served: Served, limits: Limits, metrics: Metrics):
        self.served, self.limits, self.metrics = served, limits, metrics
        self.pending: deque[_Item] = deque()
        self.waiting = 0  # texts in `pending`
        self.free = limits.threads  # worker threads not scoring
        self.executor = ThreadPoolExecutor(limits.threads, thread_name_prefix=f"seqship-serve-{served.name}")
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start(): until then, requests only queue
        self._closed = False
        self._soon: asyncio.Handle | None = None  # _dispatch on the next turn of the loop
        self._timer: asyncio.TimerHandle | None = None  # _dispatch when the oldest request has waited max_delay
        self.one_text_s: float | None = None  # EWMA of one-text batches' scoring time (None: none scored yet)
        name = served.name  # the metric children, looked up once
        self._queue = metrics.queue.labels(name)
        self._rejected = metrics.rejected.labels(name)
        self._batch_texts = metrics.batch_texts.labels(name)
        self._batch_seconds = metrics.batch_seconds.labels(name)

    def start(self) -> None:
        """Start batching (on the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._wake()

    async def submit(self, texts: list[str], top_k: int, alone: bool = False) -> list:
        """Predictions (or InputError / ModelOutputError per text) for `texts`, in order. alone: no other request
        is in flight in the server (then a cheap one-text request may be scored inline, see the class)."""
        if self.waiting + len(texts) > self.limits.max_queue_texts and self.waiting:
            self._rejected.inc()
            raise HTTPError(
                503,
                f"model {self.served.name!r} has {self.waiting} texts waiting (the limit is "
                f"{self.limits.max_queue_texts}); retry in a moment",
                {"Retry-After": "1"},
            )
        idle = self.idle() and not self.limits.max_delay_ms and self._loop is not None and not self._closed
        cost = self.one_text_s
        if (
            idle
            and alone
            and len(texts) == 1
            and len(texts[0]) <= INLINE_MAX_CHARS
            and cost is not None
            and cost < INLINE_MAX_S
        ):
            results = self._run(texts, top_k)  # on the event loop: a small model's lone text
            if isinstance(results, str):
                raise HTTPError(500, results)
            return results
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        item = _Item(texts, top_k, future, loop.time())
        if idle:
            self._start_batch([item])  # an idle batcher: a lone request is scored at once, on a worker thread
        else:
            self.pending.append(item)
            self.waiting += len(texts)
            self._queue.set(self.waiting)
            self._wake(full=self.waiting >= self.limits.max_batch)
        timer = loop.call_later(self.limits.timeout_s, self._expire, future)
        try:
            return await future  # cancelled (the drain was cut short): so is the future, and it is not scored
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future) -> None:
        if not future.done():  # still queued: it is dropped; already scoring: its result is discarded
            future.set_exception(
                HTTPError(
                    503,
                    f"not scored within {self.limits.timeout_s:g} s (the server is overloaded); "
                    "retry later or send fewer texts",
                    {"Retry-After": "1"},
                )
            )

    def _wake(self, full: bool = False) -> None:
        """Have _dispatch run on the loop's next turn (not at once: requests that arrive in the same turn share
        a batch), unless it waits for max_delay to pass and the batch is not yet full."""
        if self._loop is None or self._closed or self._soon is not None or not (self.pending and self.free):
            return
        if self._timer is not None and not full:
            return
        self._soon = self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Hand batches of what has queued to the free worker threads."""
        self._soon = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.pending and self.free:
            if self.limits.max_delay_ms and self.waiting < self.limits.max_batch:
                deadline = self.pending[0].arrival + self.limits.max_delay_ms / 1000
                if deadline > self._loop.time():  # wait for company, up to max_delay after the oldest's arrival
                    self._timer = self._loop.call_at(deadline, self._dispatch)
                    return
            batch, n = [], 0
            while self.pending and (not batch or n + len(self.pending[0].texts) <= self.limits.max_batch):
                item = self.pending.popleft()
                self.waiting -= len(item.texts)
                if not item.future.done():  # a request that timed out (or was cancelled) is not scored
                    batch.append(item)
                    n += len(item.texts)
            self._queue.set(self.waiting)
            if batch:
                self._start_batch(batch)

    def _start_batch(self, batch: list[_Item]) -> None:
        self.free -= 1
        self.executor.submit(self._score, batch)

    def _run(self, texts: list[str], top_k: int) -> list | str:
        """Score one batch (on a worker thread, or inline): its results, or why it failed."""
        started = time.perf_counter()
        try:
            results = self.served.predictor.predict(texts, top_k=top_k, errors="return")
        except Exception as e:  # noqa: BLE001 - onnxruntime failing mid-run: every caller gets a 500
            log.error("scoring a batch of %d texts failed", len(texts), exc_info=e)
            return f"scoring failed: {type(e).__name__}: {str(e)[:200]}"
        took = time.perf_counter() - started
        if len(texts) == 1:
            cost = self.one_text_s
            self.one_text_s = took if cost is None else cost + EWMA_WEIGHT * (took - cost)
        self._batch_texts.observe(len(texts))
        self._batch_seconds.observe(took)
        return results

    def _score(self, batch: list[_Item]) -> None:
        """On a worker thread: score the batch, then hand the results to the event loop."""
        top_k = max(item.top_k for item in batch)
        results = self._run([t for item in batch for t in item.texts], top_k)
        with contextlib.suppress(RuntimeError):  # the event loop is closed: the drain was cut short
            self._loop.call_soon_threadsafe(self._answer, batch, top_k, results)

    def _answer(self, batch: list[_Item], top_k: int, results) -> None:
        self.free += 1
        start = 0
        for item in batch:
            if item.future.done():  # timed out, or cancelled, while it was scored
                start += len(item.texts)
                continue
            if isinstance(results, str):  # the batch failed
                item.future.set_exception(HTTPError(500, results))
                continue
            mine = results[start : start + len(item.texts)]
            start += len(item.texts)
            if item.top_k < top_k:  # the batch was scored with the largest k asked; each gets its own k
                mine = [r if isinstance(r, Exception) else r._replace(top_k=r.top_k[: item.top_k]) for r in mine]
            item.future.set_result(mine)
        self._wake()

    def idle(self) -> bool:
        """Nothing queued, nothing being scored."""
        return not self.pending and self.free == self.limits.threads

    async def close(self, timeout_s: float) -> None:
        """Score everything still queued (for at most timeout_s), then stop; the server accepts nothing new by now."""

        async def idle():
            while not self.idle():
                await asyncio.sleep(0.01)

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(idle(), timeout_s)
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        self._closed = True  # a batch still scoring (the drain was cut short) starts no other
        self.executor.shutdown(wait=True)

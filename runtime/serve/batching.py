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

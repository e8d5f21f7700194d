"""Dynamic batching: one ``Batcher`` per model gathers the images of concurrent requests into batches.

A batch starts with the oldest waiting request and closes when it holds ``max_batch`` images or
that request has waited ``max_delay_s`` (Triton's ``max_queue_delay_microseconds``); requests are
never split across batches, and one of more than ``max_batch`` images is refused. While a batch
runs, the next one gathers, so under load batches fill without waiting. The model runs in the
executor it is given (the server gives every model one shared thread, so the models never
compete for the cores they each use whole); the event loop stays free for HTTP.

The queue is bounded in images (``max_queue``): a request that would overfill it is refused at
once with 503 and ``Retry-After`` instead of waiting ever longer, and so is every request once the
batcher is closed. A request whose caller stopped waiting (its timeout, a client gone)
is dropped from the queue before it costs any inference. On SIGTERM the server ``flush``es: what
is queued runs at once, requests already received still get in, and ``close`` ends it.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from .protocol import ServeError


@dataclass(frozen=True)
class BatchPolicy:
    """How one model's requests are batched: at most ``max_batch`` images per run, the first waiting
    at most ``max_delay_s`` for others, at most ``max_queue`` images waiting in all."""
    max_batch: int = 32
    max_delay_s: float = 0.002
    max_queue: int = 256

    def __post_init__(self):
        if self.max_batch < 1 or self.max_delay_s < 0 or self.max_queue < self.max_batch:
            raise ValueError(f"the queue must hold at least one batch: max_queue {self.max_queue} < max_batch "
                             f"{self.max_batch}" if self.max_queue < self.max_batch else
                             f"max_batch must be >= 1 and max_delay_s >= 0, got {self.max_batch}, {self.max_delay_s}")


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    arrived: float


class Batcher:
    """Batches calls of ``run`` (N x ... float32 -> N x ... array) for one model.

    ``on_batch(images, seconds)`` and ``on_depth(images)`` report each batch run and the queue depth
    (metrics). Start it inside the running event loop (``start``), ``close`` it to finish what is queued.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], policy: BatchPolicy, executor: Executor, *,
                 on_batch: Callable[[int, float], None] = lambda n, s: None,
                 on_depth: Callable[[int], None] = lambda n: None):
        self.run, self.policy, self.executor = run, policy, executor
        self.on_batch, self.on_depth = on_batch, on_depth
        self._pending: deque[_Item] = deque()
        self._queued = 0          # images waiting
        self._running = 0         # images in the batch now running
        self._batch_s = 0.0       # the last batch's run time (for Retry-After)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False     # refusing new requests
        self._flushing = False    # not waiting for fuller batches

    @property
    def depth(self) -> int:
        """Images waiting for a batch."""
        return self._queued

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """``run`` on ``x`` (N x ...), batched with other requests; raises a 503 ``ServeError`` when
        the queue is full or the server is shutting down, a 400 for more than ``max_batch`` images,
        and whatever ``run`` raised."""
        n = len(x)
        if self._closing:
            raise ServeError(503, "the server is shutting down", "shutting_down", {"Retry-After": "1"})
        if n > self.policy.max_batch:
            raise ServeError(400, f"{n} images in one request; this model takes at most {self.policy.max_batch}",
                             "batch_too_large")
        if self._queued + n > self.policy.max_queue:
            raise ServeError(503, f"the queue is full ({self._queued} images waiting, at most "
                             f"{self.policy.max_queue}); retry later", "queue_full",
                             {"Retry-After": str(self.retry_after())})
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(x, future, time.monotonic()))
        self._queued += n
        self.on_depth(self._queued)
        self._wake.set()
        return await future

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: its batches at the last batch's pace (at least 1)."""
        batches = math.ceil((self._queued + self._running) / self.policy.max_batch)
        return max(1, math.ceil(batches * self._batch_s))

    def flush(self) -> None:
        """From now on run what is queued at once, without waiting for fuller batches (shutting down)."""
        self._flushing = True
        if self._wake is not None:
            self._wake.set()

    async def close(self) -> None:
        """Refuse new requests, finish the queued ones, stop."""
        self._closing = True
        self.flush()
        if self._task is None:
            return
        while self._pending or self._running:
            await asyncio.sleep(0.01)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            deadline = self._pending[0].arrived + self.policy.max_delay_s
            while self._queued < self.policy.max_batch and not self._flushing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            x = batch[0].x if len(batch) == 1 else np.concatenate([i.x for i in batch])
            self._running = len(x)
            start = time.perf_counter()
            try:
                y = await loop.run_in_executor(self.executor, self.run, x)
            except Exception as exc:  # noqa: BLE001 -- the requests of this batch get the error, the loop goes on
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                self._running = 0
            self._batch_s = time.perf_counter() - start
            self.on_batch(len(x), self._batch_s)
            row = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(y[row:row + len(item.x)])
                row += len(item.x)

    def _take(self) -> list[_Item]:
        """Pop the next batch off the queue: whole requests, oldest first, at most ``max_batch`` images;
        requests nobody waits for any more are dropped."""
        batch, images = [], 0
        while self._pending and images + len(self._pending[0].x) <= self.policy.max_batch:
            item = self._pending.popleft()
            self._queued -= len(item.x)
            if item.future.done():  # cancelled: its caller timed out or went away
                continue
            batch.append(item)
            images += len(item.x)
        self.on_depth(self._queued)
        return batch

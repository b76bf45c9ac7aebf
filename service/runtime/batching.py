"""Batching single-image requests (``DynamicBatcher``) and running a batch on one backend (``run_batch``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from service.runtime.base import Backend

__all__ = ["DynamicBatcher", "run_batch"]

#: Gaps between arrivals ``DynamicBatcher.company_likely`` looks back on.
GAP_HISTORY = 8

T = TypeVar("T")
R = TypeVar("R")


def run_batch(backend: Backend, items: list[np.ndarray]) -> list[dict[str, Any]]:
    """Run ``items`` (each (3, H, W) float32) and return one reply dict per item, in order.

    Items of different shapes never share a batch: they are grouped by shape and each group runs
    as one backend call. Every reply carries the batch it ran in and that batch's latency.
    """
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        if item.ndim != 3 or item.shape[0] != 3:
            raise ValueError(f"expected pixels of shape (3, H, W), got {item.shape}")
        groups[tuple(item.shape)].append(index)
    replies: list[dict[str, Any] | None] = [None] * len(items)
    for indices in groups.values():
        result = backend.infer(np.stack([items[i] for i in indices]))
        memory = result.memory.to_dict()
        for row, index in enumerate(indices):
            replies[index] = {
                "outputs": {name: value[row] for name, value in result.outputs.items()},
                "inference_ms": result.latency_ms,
                "batch_size": result.batch_size,
                "memory": memory,
                **backend.describe(),
            }
    return [r for r in replies if r is not None]


class DynamicBatcher(Generic[T, R]):
    """Dynamic batching as Triton's batcher does it: a batch is cut only when a slot is free to run it.

    ``await batcher(item)`` queues ``item`` and returns its result. At most ``max_concurrent``
    batches run at once; when a slot is free, the next batch is the oldest queued items, up to
    ``max_batch_size``, cut as soon as that many are queued or once the oldest has waited
    ``wait_s``. Under load a batch therefore holds everything that queued while the slots were
    busy, up to ``max_batch_size``, with no extra wait.

    Ray Serve's ``@serve.batch`` (2.60) cuts a batch every ``batch_wait_timeout_s`` whether or not
    a slot is free and queues the cut batches behind its ``max_concurrent_batches`` semaphore: at
    16 closed-loop clients on ViT-S (90 ms a run) 78% of its batches held one image (measured from
    its ``ray_serve_actual_batch_size`` histogram), so the replica ran at batch 1.

    ``run`` takes the items of one batch and returns one result per item, in order. A caller that
    stops waiting (its request cancelled) leaves its item out of the batch if it has not started.

    A lone item waits for company only when company is likely: when at least half of the last
    ``GAP_HISTORY`` gaps between arrivals were shorter than ``wait_s`` (before the second arrival it
    is assumed). A gap does not count as short when its item found nothing queued or running and
    the last batch held one item: that is one closed-loop caller, whose next request comes only
    after this one's answer, however fast the answer was (counting its gaps, a replica answering it
    in under ``wait_s`` made it wait every other request). So it does not pay ``wait_s``, which
    Triton's batcher (a fixed ``max_queue_delay``) does. Under load requests come in bursts (a
    batch's callers send their next requests together), most gaps are short, and batches fill as
    before.

    With ``key`` (a ``BackboneHost`` gives the pixels' shape) a batch holds only items with the
    oldest item's key; the others keep their places for the next free slot. A 224² tile that
    queued beside a 2048² image then runs in its own batch, beside it when ``max_concurrent`` > 1,
    instead of waiting out the large image's run in the same batch.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_batch_size: int,
        wait_s: float,
        max_concurrent: int = 1,
        key: Callable[[T], Hashable] | None = None,
    ):
        if max_batch_size < 1 or max_concurrent < 1 or wait_s < 0:
            raise ValueError("max_batch_size and max_concurrent must be >= 1 and wait_s >= 0")
        self._run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_concurrent = max_concurrent
        self._key = key
        self._last_arrival: float | None = None
        self._short_gaps: deque[bool] = deque(maxlen=GAP_HISTORY)  # the last gaps: shorter than wait_s?
        self._last_batch_size = 0
        self._pending: deque[_Pending[T, R]] = deque()
        self._arrived: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return sum(1 for p in self._pending if not p.future.done())

    @property
    def running(self) -> int:
        """Batches running now."""
        return len(self._running)

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if self._dispatcher is None or self._dispatcher.done():
            self._arrived = asyncio.Event()
            self._dispatcher = loop.create_task(self._dispatch())
        future: asyncio.Future[R] = loop.create_future()
        now = loop.time()
        if self._last_arrival is not None:
            # A lone closed-loop caller: nothing queued or running and the last batch held one
            # item. Its gaps are its own round trips, short or not, and no company comes meanwhile.
            lone = not self._pending and not self._running and self._last_batch_size <= 1
            self._short_gaps.append(now - self._last_arrival < self.wait_s and not lone)
        self._last_arrival = now
        # the key is taken here, so that one that raises fails its own caller, not the dispatcher
        self._pending.append(_Pending(item, future, now, self._key(item) if self._key is not None else None))
        assert self._arrived is not None
        self._arrived.set()
        return await future

    async def _dispatch(self) -> None:
        slots = asyncio.Semaphore(self.max_concurrent)
        while True:
            await slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._run_batch(batch, slots))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Pending[T, R]]:
        loop = asyncio.get_running_loop()
        arrived = self._arrived
        assert arrived is not None
        while True:
            self._drop_abandoned()
            while not self._pending:
                arrived.clear()
                await arrived.wait()
                self._drop_abandoned()
            head = self._pending[0]
            while self._mates(head) < self.max_batch_size and self.company_likely:
                remaining = head.queued_at + self.wait_s - loop.time()
                if remaining <= 0:
                    break
                arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(arrived.wait(), remaining)
            batch: list[_Pending[T, R]] = []
            others: deque[_Pending[T, R]] = deque()
            # the oldest live item and the items that may share its batch, in order; the rest stay queued
            while self._pending:
                entry = self._pending.popleft()
                if entry.future.done():
                    continue
                if not batch:
                    head = entry
                if len(batch) < self.max_batch_size and self._same(head, entry):
                    batch.append(entry)
                else:
                    others.append(entry)
            self._pending = others
            if batch:
                self._last_batch_size = len(batch)
                return batch

    @property
    def company_likely(self) -> bool:
        """Whether another item is likely within ``wait_s``: most recent gaps between arrivals were shorter."""
        return not self._short_gaps or 2 * sum(self._short_gaps) >= len(self._short_gaps)

    @staticmethod
    def _same(a: _Pending[T, R], b: _Pending[T, R]) -> bool:
        return a is b or a.key == b.key

    def _mates(self, head: _Pending[T, R]) -> int:
        """Queued items that may share ``head``'s batch (``head`` included)."""
        return sum(1 for p in self._pending if self._same(head, p))

    def _drop_abandoned(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()

    async def _run_batch(self, batch: list[_Pending[T, R]], slots: asyncio.Semaphore) -> None:
        try:
            results = await self._run([entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} items returned {len(results)} results")
            for entry, result in zip(batch, results, strict=True):
                if not entry.future.done():
                    entry.future.set_result(result)
        except Exception as exc:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
        finally:
            slots.release()


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    queued_at: float
    key: Hashable = None

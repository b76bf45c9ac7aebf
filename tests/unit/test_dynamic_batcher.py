"""``DynamicBatcher``: batches are cut when a slot is free, hold what queued meanwhile, and never
wait longer than the oldest item's ``wait_s``."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.runtime.batching import DynamicBatcher


class Recorder:
    """A ``run`` that records each batch and how many ran at once, taking ``seconds`` per batch."""

    def __init__(self, seconds: float = 0.05, fail_with: Exception | None = None):
        self.seconds = seconds
        self.fail_with = fail_with
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.running -= 1
        if self.fail_with is not None:
            raise self.fail_with
        return [item * 10 for item in items]


def test_items_that_queue_while_the_slot_is_busy_run_as_one_batch() -> None:
    async def scenario() -> tuple[list[int], Recorder]:
        run = Recorder(seconds=0.2)
        batcher = DynamicBatcher(run, max_batch_size=8, wait_s=0.005)
        first = asyncio.create_task(batcher(0))
        await asyncio.sleep(0.05)  # the first batch (one item) is running
        rest = [asyncio.create_task(batcher(i)) for i in range(1, 9)]
        for _ in range(4):  # arrivals spread over longer than wait_s, all while the slot is busy
            await asyncio.sleep(0.02)
        results = await asyncio.gather(first, *rest)
        return results, run

    results, run = asyncio.run(scenario())
    assert results == [i * 10 for i in range(9)]
    # @serve.batch would have cut the eight late items into several batches, one per wait_s
    assert run.batches == [[0], [1, 2, 3, 4, 5, 6, 7, 8]]


def test_a_full_batch_goes_without_waiting() -> None:
    async def scenario() -> float:
        batcher = DynamicBatcher(Recorder(seconds=0.0), max_batch_size=4, wait_s=30.0)
        start = time.perf_counter()
        await asyncio.gather(*(batcher(i) for i in range(4)))
        return time.perf_counter() - start

    assert asyncio.run(scenario()) < 5.0  # not the 30 s wait


def test_a_lone_item_waits_wait_s_for_company_then_runs() -> None:
    async def scenario() -> tuple[float, Recorder]:
        run = Recorder(seconds=0.0)
        batcher = DynamicBatcher(run, max_batch_size=8, wait_s=0.2)
        start = time.perf_counter()
        lone = asyncio.create_task(batcher(1))
        await asyncio.sleep(0.05)
        late = asyncio.create_task(batcher(2))  # within the oldest item's wait: same batch
        await asyncio.gather(lone, late)
        return time.perf_counter() - start, run

    elapsed, run = asyncio.run(scenario())
    assert run.batches == [[1, 2]]
    assert 0.19 <= elapsed < 5.0


def test_a_caller_alone_does_not_wait_for_company_that_never_comes() -> None:
    """One closed-loop caller: its next item comes only after this one's answer, so after the first
    (no gaps seen yet: it waits) items run at once. Items arriving closer than wait_s still wait."""

    async def scenario() -> tuple[list[float], list[float], Recorder]:
        run = Recorder(seconds=0.0)
        batcher = DynamicBatcher(run, max_batch_size=8, wait_s=0.3)
        alone = []
        for i in range(4):
            start = time.perf_counter()
            await batcher(i)
            alone.append(time.perf_counter() - start)
            await asyncio.sleep(0.35)  # the caller's own time between requests: longer than wait_s
        assert not batcher.company_likely
        crowd = []
        for _ in range(3):  # a burst: gaps far below wait_s, so the batcher waits for the rest again
            tasks = [asyncio.create_task(batcher(10 + i)) for i in range(2)]
            start = time.perf_counter()
            await asyncio.gather(*tasks)
            crowd.append(time.perf_counter() - start)
        return alone, crowd, run

    alone, crowd, run = asyncio.run(scenario())
    assert alone[0] >= 0.29  # nothing known yet: the first item waits
    assert max(alone[1:]) < 0.2  # not the 0.3 s wait
    assert run.batches[:4] == [[0], [1], [2], [3]]
    assert max(crowd[1:]) >= 0.29 and run.batches[-1] == [10, 11]  # waited, then ran together


def test_with_a_key_a_batch_holds_one_key_and_the_others_run_beside_it() -> None:
    """Images of two sizes queued together: each size is its own batch, in order of arrival, so the
    small ones run beside the large one instead of waiting out its run in the same batch."""

    async def scenario() -> tuple[list[int], Recorder]:
        run = Recorder(seconds=0.1)
        batcher = DynamicBatcher(run, max_batch_size=3, wait_s=0.01, max_concurrent=2, key=lambda item: item >= 100)
        results = await asyncio.gather(*(batcher(i) for i in (100, 1, 101, 2, 3, 4, 102)))
        return results, run

    results, run = asyncio.run(scenario())
    assert results == [i * 10 for i in (100, 1, 101, 2, 3, 4, 102)]
    # the large ones (>= 100) first as the oldest, then the small ones up to max_batch_size, then the rest
    assert run.batches == [[100, 101, 102], [1, 2, 3], [4]]
    assert run.most_running == 2


def test_a_key_that_raises_fails_its_own_caller_only() -> None:
    def key(item: int) -> int:
        if item < 0:
            raise ValueError("no key for a negative item")
        return item % 2

    async def scenario() -> tuple[list[object], Recorder]:
        run = Recorder(seconds=0.0)
        batcher = DynamicBatcher(run, max_batch_size=4, wait_s=0.01, key=key)
        results = await asyncio.gather(batcher(2), batcher(-1), batcher(4), batcher(3), return_exceptions=True)
        return results, run

    results, run = asyncio.run(scenario())
    assert results[0] == 20 and results[2] == 40 and results[3] == 30
    assert isinstance(results[1], ValueError)
    assert run.batches == [[2, 4], [3]]


def test_max_concurrent_batches_run_side_by_side_and_no_more() -> None:
    async def scenario() -> Recorder:
        run = Recorder(seconds=0.1)
        batcher = DynamicBatcher(run, max_batch_size=1, wait_s=0.0, max_concurrent=2)
        await asyncio.gather(*(batcher(i) for i in range(6)))
        return run

    run = asyncio.run(scenario())
    assert run.most_running == 2
    assert sorted(item for batch in run.batches for item in batch) == list(range(6))


def test_a_cancelled_caller_is_left_out_of_its_batch() -> None:
    async def scenario() -> Recorder:
        run = Recorder(seconds=0.1)
        batcher = DynamicBatcher(run, max_batch_size=8, wait_s=0.0)
        first = asyncio.create_task(batcher(1))
        await asyncio.sleep(0.02)  # running
        gone = asyncio.create_task(batcher(2))
        kept = asyncio.create_task(batcher(3))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.gather(first, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
        return run

    assert asyncio.run(scenario()).batches == [[1], [3]]


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on() -> None:
    async def scenario() -> tuple[list[BaseException | int], list[int]]:
        run = Recorder(seconds=0.0, fail_with=ValueError("bad batch"))
        batcher = DynamicBatcher(run, max_batch_size=4, wait_s=0.01)
        failed = await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)
        run.fail_with = None
        return failed, list(await asyncio.gather(batcher(3), batcher(4)))

    failed, ok = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) and str(r) == "bad batch" for r in failed)
    assert ok == [30, 40]


def test_a_run_that_returns_the_wrong_number_of_results_is_an_error() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def scenario() -> None:
        batcher = DynamicBatcher(short, max_batch_size=2, wait_s=0.05)
        await asyncio.gather(batcher(1), batcher(2))

    with pytest.raises(RuntimeError, match="a batch of 2 items returned 1 results"):
        asyncio.run(scenario())


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_concurrent": 0}, {"wait_s": -1.0}])
def test_settings_out_of_range_are_refused(kwargs: dict[str, float]) -> None:
    options = {"max_batch_size": 4, "wait_s": 0.01, "max_concurrent": 1, **kwargs}
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), **options)  # type: ignore[arg-type]


def test_a_fast_lone_caller_never_waits_even_when_its_round_trips_are_shorter_than_wait_s() -> None:
    """One closed-loop caller answered faster than ``wait_s``: its gaps are short, but each item
    finds nothing queued or running after a batch of one, so none after the first waits."""

    async def scenario() -> tuple[list[float], Recorder]:
        run = Recorder(seconds=0.0)
        batcher = DynamicBatcher(run, max_batch_size=8, wait_s=0.3)
        took = []
        for i in range(6):
            start = time.perf_counter()
            await batcher(i)
            took.append(time.perf_counter() - start)
            await asyncio.sleep(0.01)  # a round trip far under wait_s
        return took, run

    took, run = asyncio.run(scenario())
    assert took[0] >= 0.29  # nothing known yet: the first item waits
    assert max(took[1:]) < 0.2
    assert run.batches == [[i] for i in range(6)]

"""relaxed_gc (controller/gather.py): the collector is held off during a bulk read and put
back exactly as it was, however the holds nest or overlap."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from shoal.controller.gather import RELAXED_GC_THRESHOLD, relaxed_gc


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*thresholds)
    (gc.enable if enabled else gc.disable)()
    gc.unfreeze()


def test_a_hold_relaxes_the_collector_and_puts_it_back() -> None:
    gc.set_threshold(700, 10, 10)
    with relaxed_gc():
        assert gc.get_threshold() == (RELAXED_GC_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() > 0  # what existed before is out of the collector's way
        assert gc.isenabled()  # the collector still runs
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_nested_holds_share_one_relaxation() -> None:
    gc.set_threshold(700, 10, 10)
    with relaxed_gc():
        with relaxed_gc():
            assert gc.get_threshold()[0] == RELAXED_GC_THRESHOLD
        assert gc.get_threshold()[0] == RELAXED_GC_THRESHOLD  # the outer one still holds
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


async def test_overlapping_requests_restore_the_collector_when_the_last_one_ends() -> None:
    gc.set_threshold(700, 10, 10)
    first_in, second_out = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        with relaxed_gc():
            first_in.set()
            await second_out.wait()
        # the first to start is the last to end

    async def second() -> None:
        await first_in.wait()
        with relaxed_gc():
            await asyncio.sleep(0)
        second_out.set()
        assert gc.get_threshold()[0] == RELAXED_GC_THRESHOLD  # first still running

    await asyncio.gather(first(), second())
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


def test_an_error_inside_a_hold_still_puts_the_collector_back() -> None:
    gc.set_threshold(700, 10, 10)
    with pytest.raises(RuntimeError), relaxed_gc():
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


def test_the_applications_own_settings_are_left_alone() -> None:
    gc.set_threshold(500_000, 10, 10)  # already more relaxed than ours
    gc.freeze()  # the application froze objects itself (a pre-fork server, say)
    with relaxed_gc():
        assert gc.get_threshold() == (500_000, 10, 10)
    assert gc.get_freeze_count() > 0  # not unfrozen by us
    gc.unfreeze()
    gc.disable()  # a disabled collector is neither enabled nor frozen
    with relaxed_gc():
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    assert not gc.isenabled()

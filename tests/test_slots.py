"""The Requester's slots (`_Slots`): never more holders than slots, served in the order they
came, and a waiter cancelled before or after it was served costs nobody a slot."""

from __future__ import annotations

import asyncio

import pytest

from poller.sources.client import _Slots


def test_holders_never_exceed_the_slots_and_are_served_in_order() -> None:
    async def main() -> tuple[int, list[int]]:
        slots = _Slots(3)
        holding = most = 0
        served: list[int] = []

        async def user(i: int) -> None:
            nonlocal holding, most
            if not slots.take_now():
                await slots.take()
            served.append(i)
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(0.001 * (i % 4))
            holding -= 1
            slots.give()

        await asyncio.gather(*(user(i) for i in range(40)))
        assert slots.free == 3
        return most, served

    most, served = asyncio.run(main())
    assert most == 3
    assert served == list(range(40))  # first come, first served


@pytest.mark.parametrize("served_first", [False, True])
def test_a_cancelled_waiter_leaves_its_slot_to_the_next(served_first: bool) -> None:
    async def main() -> list[str]:
        slots = _Slots(1)
        assert slots.take_now()
        got: list[str] = []

        async def wait(name: str) -> None:
            await slots.take()
            got.append(name)

        first = asyncio.create_task(wait("first"))
        second = asyncio.create_task(wait("second"))
        await asyncio.sleep(0)  # both wait
        if served_first:
            slots.give()  # handed to `first`, which is cancelled before it runs
            first.cancel()
        else:
            first.cancel()
            await asyncio.sleep(0)
            slots.give()
        await asyncio.wait_for(second, 1)
        with pytest.raises(asyncio.CancelledError):
            await first
        slots.give()  # `second` gives its slot back
        assert slots.free == 1
        assert not slots._waiters
        return got

    assert asyncio.run(main()) == ["second"]

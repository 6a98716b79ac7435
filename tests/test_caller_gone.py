"""A request waits for inference in its own task (yoso.api.inference.cancelled_once_done): the caller leaving
cancels that wait alone, the transport's own cancellation stays a cancellation, and a caller who leaves as the
answer arrives cancels nothing after it. Deterministic: futures resolved by hand, no timers."""

from __future__ import annotations

import asyncio

import pytest

from yoso.api.inference import CallerLeft, cancelled_once_done


def test_the_caller_leaving_ends_the_wait_as_caller_left_and_cancels_what_it_awaited():
    async def scenario() -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        gone, answer = loop.create_future(), loop.create_future()
        loop.call_soon(gone.set_result, None)
        with pytest.raises(CallerLeft):
            with cancelled_once_done(gone):
                await answer
        assert asyncio.current_task().cancelling() == 0  # nothing left to cancel the rest of the request
        return answer

    assert asyncio.run(scenario()).cancelled()  # a queued job is skipped


def test_the_transports_cancellation_is_not_taken_for_the_caller_leaving():
    async def waiting(gone: asyncio.Future[None], answer: asyncio.Future[None]) -> None:
        with cancelled_once_done(gone):
            await answer

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gone, answer = loop.create_future(), loop.create_future()
        request = asyncio.ensure_future(waiting(gone, answer))
        await asyncio.sleep(0)  # the request now waits
        request.cancel()  # a gRPC call cancelled: the caller's future is not done
        with pytest.raises(asyncio.CancelledError):
            await request
        assert not gone.done() and answer.cancelled()

    asyncio.run(scenario())


def test_a_caller_who_leaves_as_the_answer_arrives_cancels_nothing_after_the_wait():
    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        gone, answer = loop.create_future(), loop.create_future()

        def both() -> None:  # the answer first: the wait ends before the caller's callback runs
            answer.set_result("answered")
            gone.set_result(None)

        loop.call_soon(both)
        with cancelled_once_done(gone):
            result = await answer
        await asyncio.sleep(0)  # the caller's callback runs now, past the block
        await asyncio.sleep(0)
        return result

    assert asyncio.run(scenario()) == "answered"

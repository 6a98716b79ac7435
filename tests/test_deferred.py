"""yoso.observability.deferred: access lines and metric samples kept, then written together and in order."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from yoso.observability.deferred import Deferred, DeferredObserver, FlushFirst
from yoso.observability.logging import AccessLogMiddleware, access_log, write_access_line


def test_calls_wait_for_the_period_then_run_together_in_order():
    made: list[tuple[str, float]] = []
    deferred = Deferred(period_s=0.05)

    async def requests() -> float:
        for name in "abc":
            deferred.call(lambda n: made.append((n, time.perf_counter())), name)
        kept = time.perf_counter()
        assert made == []  # kept, not made
        await asyncio.sleep(0.2)
        return kept

    kept = asyncio.run(requests())
    assert [name for name, _ in made] == ["a", "b", "c"]
    assert all(when - kept >= 0.04 for _, when in made)


def test_flush_makes_what_is_pending_at_once_and_a_call_outside_an_event_loop_is_made_at_once():
    made: list[int] = []
    deferred = Deferred(period_s=60)

    async def requests() -> None:
        deferred.call(made.append, 1)
        deferred.call(made.append, 2)
        assert made == []
        deferred.flush()
        assert made == [1, 2]

    asyncio.run(requests())
    deferred.call(made.append, 3)
    assert made == [1, 2, 3]


def test_a_failing_call_is_logged_and_the_others_are_made(caplog):
    made: list[str] = []
    deferred = Deferred(period_s=60)

    def fails() -> None:
        raise ValueError("a broken observer")

    async def requests() -> None:
        deferred.call(made.append, "before")
        deferred.call(fails)
        deferred.call(made.append, "after")
        deferred.flush()

    with caplog.at_level(logging.ERROR, logger="yoso.observability.deferred"):
        asyncio.run(requests())
    assert made == ["before", "after"]
    assert "fails failed (deferred bookkeeping)" in caplog.text and "a broken observer" in caplog.text


def test_calls_on_a_new_event_loop_are_made_when_a_flush_was_due_on_one_that_stopped():
    """An app run twice in one process (tests, dev-mode reload): the first loop stopped before its flush was due."""
    made: list[str] = []
    deferred = Deferred(period_s=0.05)

    async def first() -> None:
        deferred.call(made.append, "first")

    async def second() -> None:
        deferred.call(made.append, "second")
        await asyncio.sleep(0.2)

    asyncio.run(first())
    assert made == []
    asyncio.run(second())
    assert made == ["first", "second"]


def test_a_scrape_records_what_is_pending_before_any_metric_is_read():
    deferred = Deferred(period_s=60)
    registry = CollectorRegistry()
    registry.register(FlushFirst(deferred))
    requests = Counter("requests", "Requests.", registry=registry)

    async def answered() -> bytes:
        for _ in range(3):
            deferred.call(requests.inc)
        return generate_latest(registry)

    assert b"requests_total 3.0" in asyncio.run(answered())


def test_an_observer_event_is_recorded_later_with_its_arguments():
    events: list[tuple] = []

    class Observer:
        def image_done(self, *args: object) -> None:
            events.append(("image_done", *args))

    deferred = Deferred(period_s=60)

    async def requests() -> None:
        DeferredObserver(Observer(), deferred).image_done("yolov3-tiny", "/detect")
        assert events == []
        deferred.flush()

    asyncio.run(requests())
    assert events == [("image_done", "yolov3-tiny", "/detect")]
    with pytest.raises(AttributeError):
        DeferredObserver(Observer(), deferred).no_such_event  # noqa: B018


def test_an_access_line_written_later_carries_the_time_its_request_ended(caplog):
    ended = 1_796_400_000.75  # an hour or so ago
    with caplog.at_level(logging.INFO, logger=access_log.name):
        write_access_line("POST /detect 200 41.2 ms", {"method": "POST", "status": 200}, ended)
    [record] = caplog.records
    assert record.created == ended and record.msecs == 750
    assert record.getMessage() == "POST /detect 200 41.2 ms" and record.status == 200


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_an_error_of_the_app_still_reaches_the_server_whether_or_not_its_line_is_written(level, caplog):
    async def fails(scope, receive, send) -> None:
        raise RuntimeError("the app failed")

    deferred = Deferred(period_s=60)
    with caplog.at_level(level, logger=access_log.name):
        with pytest.raises(RuntimeError, match="the app failed"):
            scope = {"type": "http", "method": "GET", "path": "/"}
            asyncio.run(AccessLogMiddleware(fails, deferred)(scope, None, None))
        deferred.flush()
    lines = [record.getMessage() for record in caplog.records if record.name == access_log.name]
    if level == logging.INFO:
        [line] = lines
        assert line.startswith("GET / 500 ")  # the status the server answers when the app fails
    else:
        assert lines == []


def test_once_closed_what_was_kept_is_made_and_later_calls_are_made_at_once():
    """The app's shutdown closes it: a request cancelled as the loop ends still gets its line written."""
    made: list[str] = []
    deferred = Deferred(period_s=60)

    async def shutdown() -> None:
        deferred.call(made.append, "kept")
        deferred.close()
        assert made == ["kept"]
        deferred.call(made.append, "after")
        assert made == ["kept", "after"]

    asyncio.run(shutdown())

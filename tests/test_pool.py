"""The worker pool in-process, with real worker processes and the real model."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from types import SimpleNamespace

from tests.support import EXPECTED_COUNTS, image_bytes
from yoso.serving.pool import Exit, TaskNotStarted, TaskOverran, WorkerPool
from yoso.serving.process import Assigned, WorkerProcess
from yoso.serving.scheduler import Scheduler
from yoso.serving.tasks import ModelEntry, Running, Task, WorkerConfig

IMAGE = "dog_person_horse.jpg"
TASK = Task("yolov3-tiny", 0.5, (image_bytes(IMAGE),), annotate=False, threads=1)


def one_worker(model_store) -> WorkerPool:
    entries = {"yolov3-tiny": ModelEntry("yolov3-tiny", "yoso.model.yolo:Yolov3Tiny")}
    config = WorkerConfig(entries, ["yolov3-tiny"], cores=1, busy_threads=1, max_pixels=40_000_000,
                          idle_priority=True)
    return WorkerPool(1, config, startup_timeout_s=120)


def test_stopping_the_pool_answers_the_task_still_running_and_the_workers_exit_cleanly(model_store):
    async def run_then_stop():
        pool = one_worker(model_store)
        await pool.start()
        [process] = multiprocessing.active_children()
        running = pool.submit(TASK, deadline=time.monotonic() + 30)
        await pool.stop()  # at once: the task has only just reached the worker
        return await asyncio.wait_for(running, 5), process.exitcode

    outcome, exit_code = asyncio.run(run_then_stop())
    labels = [d.label for d in outcome.jobs[0].detections]
    assert {label: labels.count(label) for label in labels} == EXPECTED_COUNTS["yolov3-tiny"][IMAGE]
    assert exit_code == 0


def test_the_pool_reports_its_warm_up_what_each_worker_runs_and_how_long_each_task_took(model_store):
    async def one_task():
        pool = one_worker(model_store)
        ready, done = [], []
        pool.on_ready = ready.append
        pool.on_task_done = lambda kind, outcome, seconds: done.append((kind, seconds))
        await pool.start()
        try:
            idle = pool.running()
            submitted = time.monotonic()
            running = pool.submit(TASK, deadline=submitted + 30)
            busy = pool.running()
            await running
            return ready, idle, busy, submitted, done, time.monotonic() - submitted
        finally:
            await pool.stop()

    ready, idle, busy, submitted, done, elapsed = asyncio.run(one_task())
    [warm] = ready
    assert set(warm.warm_task_s) == {("yolov3-tiny", 1, 1)} and 0.005 < warm.warm_task_s[("yolov3-tiny", 1, 1)] < 5
    assert idle == [None]
    assert busy == [Running(("yolov3-tiny", 1, 1), busy[0].started)] and submitted <= busy[0].started
    [(kind, seconds)] = done
    assert kind == ("yolov3-tiny", 1, 1) and 0.005 < seconds <= elapsed


def test_a_task_past_its_deadline_is_answered_overran_and_its_worker_replaced(model_store):
    async def overrun():
        pool = one_worker(model_store)
        replaced = []
        pool.on_replaced = replaced.append
        await pool.start()
        [first] = multiprocessing.active_children()
        try:
            running = pool.submit(TASK, deadline=time.monotonic())  # already past: the watchdog fires at once
            try:
                await running
                outcome = None
            except TaskOverran as error:
                outcome = error
            await asyncio.wait_for(_until(lambda: pool.idle == 1), 60)  # the replacement has loaded its models
            return outcome, replaced, first.exitcode, await pool.submit(TASK, deadline=time.monotonic() + 30)
        finally:
            await pool.stop()

    overran, replaced, exit_code, served = asyncio.run(overrun())
    assert isinstance(overran, TaskOverran) and replaced == [Exit.hung]
    assert exit_code == -9  # killed, and reaped: no zombie
    assert served.jobs[0].detections


def test_a_task_sent_ahead_to_a_busy_worker_begins_as_the_running_one_ends_and_both_are_answered(model_store):
    async def two_tasks():
        pool = one_worker(model_store)
        await pool.start()
        began = []
        try:
            assert pool.free == 1
            first = pool.submit(TASK, time.monotonic() + 30, lambda: began.append(("first", time.monotonic())))
            assert pool.free == 1  # busy: one task may go ahead of its own
            second = pool.submit(TASK, time.monotonic() + 30, lambda: began.append(("second", time.monotonic())))
            states = pool.free, pool.running(), list(began)
            await first
            first_answered = time.monotonic()
            return states, began, first_answered, await second
        finally:
            await pool.stop()

    (free, running, began_at_once), began, first_answered, second = asyncio.run(two_tasks())
    assert free == 0 and running == [Running(TASK.kind, running[0].started, then=TASK.kind)]
    assert [name for name, _ in began_at_once] == ["first"]  # the second waits in the worker's socket
    assert [name for name, _ in began] == ["first", "second"] and began[1][1] <= first_answered
    labels = [d.label for d in second.jobs[0].detections]
    assert {label: labels.count(label) for label in labels} == EXPECTED_COUNTS["yolov3-tiny"][IMAGE]


def test_a_task_sent_ahead_to_a_worker_that_is_replaced_fails_not_started_and_the_scheduler_queues_it_again(
        model_store):
    async def hang_then_retry():
        pool = one_worker(model_store)
        scheduler = Scheduler(pool)
        await pool.start()
        try:
            hung = pool.submit(TASK, deadline=time.monotonic())  # past already: the watchdog kills the worker
            ahead = pool.submit(TASK, deadline=time.monotonic() + 30)
            outcomes = await asyncio.gather(hung, ahead, return_exceptions=True)
            await asyncio.wait_for(_until(lambda: pool.idle == 1), 60)  # the replacement
            overran = scheduler.enqueue("yolov3-tiny", 0.5, TASK.inputs[0], False, time.monotonic(), 0.0)
            queued_again = scheduler.enqueue("yolov3-tiny", 0.5, TASK.inputs[0], False, time.monotonic() + 60, 0.0)
            retried = await asyncio.gather(overran, queued_again, return_exceptions=True)
            return outcomes, retried
        finally:
            await pool.stop()

    (hung, ahead), (overran, (job, task)) = asyncio.run(hang_then_retry())
    assert isinstance(hung, TaskOverran) and isinstance(ahead, TaskNotStarted)
    assert isinstance(overran, TaskOverran)  # the scheduler's: its request answered 504, the one behind it served
    assert job.detections and job.queue[1] > job.queue[0]


def test_a_task_sent_ahead_of_one_that_runs_far_too_long_is_taken_back_and_the_worker_runs_its_copy_for_nobody(
        model_store):
    async def stalled():
        pool = one_worker(model_store)
        pool.expected_s = lambda kind: 0.1  # a second at least: AHEAD_PATIENCE_MIN_S
        await pool.start()
        [worker] = multiprocessing.active_children()
        try:
            os.kill(worker.pid, signal.SIGSTOP)  # mid-task as far as the pool can tell
            running = pool.submit(TASK, deadline=time.monotonic() + 30)
            sent = time.monotonic()
            ahead = pool.submit(TASK, deadline=time.monotonic() + 30)
            try:
                await ahead
                taken_back = None
            except TaskNotStarted as error:
                taken_back = error, time.monotonic() - sent
            free_while_stalled = pool.free
            os.kill(worker.pid, signal.SIGCONT)
            first = await running
            await asyncio.wait_for(_until(lambda: pool.idle == 1), 30)  # after the copy, run for nobody
            return taken_back, free_while_stalled, first, await pool.submit(TASK, deadline=time.monotonic() + 30)
        finally:
            await pool.stop()

    taken_back, free_while_stalled, first, next_one = asyncio.run(stalled())
    error, after_s = taken_back
    assert "taken back" in str(error) and 1.0 <= after_s < 5
    assert free_while_stalled == 0  # its copy still waits in the worker: nothing more goes ahead to it
    assert first.jobs[0].detections and next_one.jobs[0].detections


def test_a_worker_past_its_patience_takes_no_task_ahead_and_a_task_begun_late_is_not_killed_at_once():
    async def check():
        loop = asyncio.get_running_loop()
        w = WorkerProcess(None, loop.create_future(), None)
        w.task, w.task_kind, w.task_started = loop.create_future(), TASK.kind, time.monotonic()
        within = w.takes_ahead(expected_s=0.1)  # patience: 1 s at least
        w.task_started -= 2.0
        past = w.takes_ahead(expected_s=0.1)
        late = Assigned(loop.create_future(), TASK.kind, time.monotonic() - 5, lambda: None)  # its callers gone
        w.begin(late, grace_s=1.0)
        watchdog_in_s = w.watchdog.when() - loop.time()
        w.watchdog.cancel()
        return within, past, watchdog_in_s

    within, past, watchdog_in_s = asyncio.run(check())
    assert within and not past
    assert 0.9 < watchdog_in_s <= 1.0


def test_the_scheduler_counts_the_requests_still_waiting_in_its_queue_by_model_as_they_come_and_go():
    class BusyPool:  # takes a task only when told it is free
        free, config, on_idle = 0, SimpleNamespace(models={"a": 1, "b": 1}), None

        def threads_for_next_task(self) -> int:
            return 1

        def submit(self, task: Task, deadline: float, began) -> asyncio.Future:
            self.free = 0
            return asyncio.get_running_loop().create_future()

    async def come_and_go():
        pool = BusyPool()
        scheduler = Scheduler(pool)
        deadline = time.monotonic() + 60
        futures = [scheduler.enqueue(model, 0.5, b"jpeg", False, deadline, 0.0) for model in ("a", "b", "a", "a")]
        counts = [dict(scheduler.queued_by_model())]
        futures[2].cancel()  # its caller gave up
        await asyncio.sleep(0)
        counts.append(dict(scheduler.queued_by_model()))
        pool.free = 1
        pool.on_idle()  # the scheduler's dispatch: the oldest, an "a", goes to the worker
        counts.append(dict(scheduler.queued_by_model()))
        return counts, len(scheduler.queued())

    counts, queued = asyncio.run(come_and_go())
    assert counts == [{"a": 3, "b": 1}, {"a": 2, "b": 1}, {"a": 1, "b": 1}]
    assert queued == 3  # the one sent to the worker still waits for it to begin


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.01)

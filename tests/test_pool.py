"""The worker pool in-process, with real worker processes and the real model."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

from tests.support import EXPECTED_COUNTS, image_bytes
from yoso.serving.pool import Exit, TaskOverran, WorkerPool
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


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.01)

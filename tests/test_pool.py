"""The worker pool in-process, with real worker processes and the real model."""

from __future__ import annotations

import asyncio
import multiprocessing

import pytest

from tests.support import EXPECTED_COUNTS, image_bytes
from yoso.serving.pool import WorkerPool
from yoso.serving.tasks import ImageJob, Task

IMAGE = "dog_person_horse.jpg"


def test_stopping_the_pool_answers_the_task_still_running_and_the_workers_exit_cleanly(model_store):
    async def run_then_stop():
        pool = WorkerPool(1, model_store.model_dir, ["yolov3-tiny"], cpu_count=1, max_pixels=40_000_000,
                          idle_priority=True)
        await pool.start()
        [process] = multiprocessing.active_children()
        running = pool.submit(Task("yolov3-tiny", 0.5, (ImageJob(image_bytes(IMAGE), annotate=False),), threads=1))
        await pool.stop()  # at once: the task has only just reached the worker
        return await asyncio.wait_for(running, 5), process.exitcode

    outcome, exit_code = asyncio.run(run_then_stop())
    labels = [d.label for d in outcome.images[0].detections]
    assert {label: labels.count(label) for label in labels} == EXPECTED_COUNTS["yolov3-tiny"][IMAGE]
    assert exit_code == 0


def test_the_pool_learns_how_long_a_task_takes_and_when_a_busy_worker_should_be_free(model_store):
    async def two_tasks():
        pool = WorkerPool(1, model_store.model_dir, ["yolov3-tiny"], cpu_count=1, max_pixels=40_000_000,
                          idle_priority=True)
        await pool.start()
        task = Task("yolov3-tiny", 0.5, (ImageJob(image_bytes(IMAGE), annotate=False),), threads=1)
        try:
            unknown = pool.expected_free(0)
            await pool.submit(task)
            learned = pool.durations.expected_s(("yolov3-tiny", 1, 1))
            running = pool.submit(task)
            busy, behind_one = pool.expected_free(0), pool.expected_free(1)
            await running
            return unknown, learned, busy, behind_one
        finally:
            await pool.stop()

    unknown, learned, busy, behind_one = asyncio.run(two_tasks())
    assert unknown == (0.0, 0.0)  # nothing has run yet: admission goes by queue length alone
    assert 0.005 < learned < 5
    assert busy[1] == learned and 0 < busy[0] <= learned  # free once the task just started has run its course
    assert behind_one == pytest.approx((busy[0] + learned, learned), abs=0.01)  # one more task for the one behind

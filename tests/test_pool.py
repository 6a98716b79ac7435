"""The worker pool in-process, with real worker processes and the real model."""

from __future__ import annotations

import asyncio
import multiprocessing

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

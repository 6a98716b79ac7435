"""Which image runs when: a bounded queue in front of the worker pool, with same-model micro-batching.

A request waits here only while every worker is busy, and only if the queue has room and a worker is
expected to take it soon (by default: it would wait behind a task past half its expected time); otherwise
it is refused at once (Overloaded: 503). When a worker frees up, the oldest waiting request goes to it
together with up to `max_batch_size - 1` later ones for the same model and confidence. With a batch delay,
a lone request may wait that long for company while a worker sits idle. A request whose caller has given
up (client gone, timeout) is dropped before it reaches a worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from yoso.serving.pool import WorkerPool
from yoso.serving.tasks import ImageJob, ImageOutcome, Task, TaskOutcome

log = logging.getLogger(__name__)
DEFAULT_WAIT_SHARE = 0.5  # without YOSO_MAX_QUEUE_WAIT_MS: queue only behind a task past half its expected time


class Overloaded(RuntimeError):
    """The queue is full; the caller should answer 503 with Retry-After."""


@dataclass(eq=False)
class Job:
    model: str
    confidence: float
    image: ImageJob
    future: asyncio.Future[tuple[ImageOutcome, TaskOutcome]]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def batch_key(self) -> tuple[str, float]:
        return (self.model, self.confidence)


class Scheduler:
    def __init__(self, pool: WorkerPool, max_queue: int, max_batch_size: int = 1, max_batch_delay_s: float = 0.0,
                 max_wait_s: float | None = None):
        self.pool = pool
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self._queue: deque[Job] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.abandoned = 0
        pool.on_idle = self._dispatch

    @property
    def waiting(self) -> int:
        return sum(1 for job in self._queue if not job.future.done())

    def waiting_by_model(self) -> Counter[str]:
        return Counter(job.model for job in self._queue if not job.future.done())

    def admits(self, held: int) -> bool:
        """Whether one more request may come in while `held` are in the server (running, waiting or on their way)."""
        ahead = held - self.pool.size * self.max_batch_size
        return ahead < 0 or self._may_wait(ahead)

    def _may_wait(self, ahead: int) -> bool:
        """A request may queue behind `ahead` others if the queue has room and a worker is expected soon enough."""
        if ahead >= self.max_queue:
            return False
        free_in_s, running_s = self.pool.expected_free(ahead // self.max_batch_size)
        return free_in_s <= (running_s * DEFAULT_WAIT_SHARE if self.max_wait_s is None else self.max_wait_s)

    async def run(self, model: str, confidence: float, image: ImageJob) -> tuple[ImageOutcome, TaskOutcome]:
        """The outcome of one image, and of the task (batch) it ran in."""
        if self.pool.idle == 0 and not self._may_wait(self.waiting):
            raise Overloaded(f"no worker is expected free soon enough ({self.waiting} requests waiting)")
        job = Job(model, confidence, image, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._dispatch()
        return await job.future  # cancelling this marks the job done: it is skipped, never run

    def _dispatch(self) -> None:
        while self.pool.idle:
            self._drop_abandoned()
            if not self._queue:
                return
            batch = self._take_batch()
            if batch is None:
                return
            self._start(batch)

    def _drop_abandoned(self) -> None:
        """Forget requests whose caller stopped waiting (client gone, timeout) before they ran."""
        abandoned = [job for job in self._queue if job.future.done()]
        for job in abandoned:
            self._queue.remove(job)
        if abandoned:
            self.abandoned += len(abandoned)
            log.debug("dropped %d request(s) whose caller stopped waiting before inference", len(abandoned))

    def _take_batch(self) -> list[Job] | None:
        head = self._queue[0]
        batch = [job for job in self._queue if job.batch_key == head.batch_key]
        batch = batch[: self.max_batch_size]
        wait = head.enqueued + self.max_batch_delay_s - time.monotonic()
        if len(batch) < self.max_batch_size and wait > 0:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)
            return None
        for job in batch:
            self._queue.remove(job)
        return batch

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _start(self, batch: list[Job]) -> None:
        head = batch[0]
        task = Task(head.model, head.confidence, tuple(job.image for job in batch), self.pool.threads_for_next_task())
        running = self.pool.submit(task)
        running.add_done_callback(lambda done: _settle(batch, done))


def _settle(batch: list[Job], done: asyncio.Future[TaskOutcome]) -> None:
    for i, job in enumerate(batch):
        if job.future.done():
            continue
        if done.exception() is not None:
            job.future.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            outcome = done.result()
            job.future.set_result((outcome.images[i], outcome))

"""Which request runs when: a queue in front of the worker pool, with same-model micro-batching.

Admission (yoso.serving.admission) decides which requests may wait here; the scheduler keeps them in order.
When the pool can take a task (a worker is free, or a busy one can have one sent ahead: yoso.serving.pool),
the oldest waiting request goes to it together with up to `max_batch_size - 1` later ones for the same model,
confidence and answer (annotated or not); a task sent ahead and given back before it began is queued again,
first. With a batch delay, a lone request may wait that long for company while a worker sits idle. A request
whose caller has given up (client gone, timeout) is dropped before it reaches a worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from yoso.serving.pool import TaskNotStarted, WorkerPool
from yoso.serving.tasks import JobOutcome, Task, TaskOutcome

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One request's input waiting for a worker (an encoded image, or JSON instances), and the future its
    request awaits."""

    model: str
    confidence: float
    data: bytes | list[Any]
    annotate: bool
    deadline: float  # time.monotonic(): the server's bound on this request (the pool's watchdog uses it)
    expected_wait_s: float  # what admission expected when it let the request queue
    future: asyncio.Future[tuple[JobOutcome, TaskOutcome]]
    enqueued: float = field(default_factory=time.monotonic)
    enqueued_ns: int = field(default_factory=time.time_ns)
    started_ns: int = 0  # when its task began on a worker (0: not yet)
    counted: bool = False  # in Scheduler.queued_by_model: queued, and its caller still waits

    @property
    def batch_key(self) -> tuple[str, float, bool]:
        return (self.model, self.confidence, self.annotate)


class Scheduler:
    def __init__(self, pool: WorkerPool, max_batch_size: int = 1, max_batch_delay_s: float = 0.0):
        self.pool = pool
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self._queue: deque[Job] = deque()
        self._sent_ahead: list[Job] = []  # given to a busy worker, not begun: waiting still, though not queued
        self._counted: Counter[str] = Counter()  # the queue's jobs whose callers still wait, by model
        self._counted_view = MappingProxyType(self._counted)
        self._timer: asyncio.TimerHandle | None = None
        self.abandoned = 0
        # told of a request that left before its turn, having waited past what was expected (those answered: the
        # service tells admission, Admission.served)
        self.on_waited: Callable[[float, float], None] = lambda expected_s, waited_s: None
        pool.on_idle = self._dispatch

    def queued(self) -> list[Job]:
        """Every request waiting for a worker, oldest first, those sent ahead to a busy worker included. (Read by
        /metrics from a thread: the lists are copied at once, never iterated while the loop may change them.)"""
        return [job for job in (*tuple(self._sent_ahead), *tuple(self._queue)) if not job.future.done()]

    def queued_by_model(self) -> Mapping[str, int]:
        """The requests in the queue whose callers still wait, by model (not those sent ahead: see Running.then).
        Kept as jobs come and go: admission reads it for every request, however long the queue. Read-only."""
        return self._counted_view

    def waiting_by_model(self) -> Counter[str]:
        """Every request waiting for a worker, by model, those sent ahead included (/metrics)."""
        return Counter(job.model for job in self.queued())

    def enqueue(self, model: str, confidence: float, data: bytes | list[Any], annotate: bool, deadline: float,
                expected_wait_s: float) -> asyncio.Future[tuple[JobOutcome, TaskOutcome]]:
        """Queue one input now (admission counts it from this moment) and return what its outcome will be.
        Cancelling the future marks the job done: it is skipped, never run."""
        job = Job(model, confidence, data, annotate, deadline, expected_wait_s,
                  asyncio.get_running_loop().create_future())
        job.future.add_done_callback(lambda _: self._count(job, False))  # its caller gave up, or it is answered
        self._queue.append(job)
        self._count(job, True)
        self._dispatch()
        return job.future

    def _count(self, job: Job, counted: bool) -> None:
        if job.counted != counted:
            job.counted = counted
            self._counted[job.model] += 1 if counted else -1
            if not self._counted[job.model]:
                del self._counted[job.model]

    def _dispatch(self) -> None:
        while self.pool.free:
            self._drop_abandoned()
            if not self._queue:
                return
            batch = self._take_batch()
            if batch is None:
                return
            self._start(batch)

    def _drop_abandoned(self) -> None:
        """Forget requests whose caller stopped waiting (client gone, timeout) before they ran. A wait already
        past its expectation is reported all the same: the longest waits must not go unseen."""
        abandoned = [job for job in self._queue if job.future.done()]
        now = time.monotonic()
        for job in abandoned:
            self._queue.remove(job)
            self._count(job, False)
            if now - job.enqueued > job.expected_wait_s:
                self.on_waited(job.expected_wait_s, now - job.enqueued)
        if abandoned:
            self.abandoned += len(abandoned)
            log.debug("dropped %d request(s) whose caller stopped waiting before inference", len(abandoned))

    def _take_batch(self) -> list[Job] | None:
        key = self._queue[0].batch_key
        batch = list(itertools.islice((job for job in self._queue if job.batch_key == key), self.max_batch_size))
        head = batch[0]
        wait = head.enqueued + self.max_batch_delay_s - time.monotonic()
        if len(batch) < self.max_batch_size and wait > 0:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)
            return None
        for job in batch:
            self._queue.remove(job)
            self._count(job, False)
        return batch

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _start(self, batch: list[Job]) -> None:
        head = batch[0]
        task = Task(head.model, head.confidence, tuple(job.data for job in batch), head.annotate,
                    self.pool.threads_for_next_task(), self.pool.config.models[head.model])  # the serving version
        self._sent_ahead += batch  # until it begins: at once on an idle worker

        def began() -> None:
            now_ns = time.time_ns()
            for job in batch:
                self._sent_ahead.remove(job)
                job.started_ns = now_ns

        running = self.pool.submit(task, max(job.deadline for job in batch), began)
        running.add_done_callback(lambda done: self._settle(batch, done))

    def _settle(self, batch: list[Job], done: asyncio.Future[TaskOutcome]) -> None:
        if isinstance(done.exception(), TaskNotStarted):  # its worker went or gave it back: it waits again, first
            for job in batch:
                self._sent_ahead.remove(job)
            self._queue.extendleft(reversed(batch))
            for job in batch:
                self._count(job, not job.future.done())
            self._dispatch()
            return
        for i, job in enumerate(batch):
            if job.future.done():
                continue
            if done.exception() is not None:
                job.future.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                outcome = done.result()
                outcome.jobs[i].queue = (job.enqueued_ns, job.started_ns)
                job.future.set_result((outcome.jobs[i], outcome))

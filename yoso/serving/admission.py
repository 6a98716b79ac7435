"""Admission: which requests come in, and which are refused at once, and why. The whole policy lives here.

The rule is a time budget. A request is admitted while the time it is expected to wait for a worker fits
its budget: `YOSO_MAX_QUEUE_WAIT_MS` (2 s by default), and less when its caller will not wait that long
(`X-Yoso-Timeout-Ms`, or the server's `YOSO_REQUEST_TIMEOUT_S`): then the wait and its own task must fit.
The expected wait comes from what the workers run now and what waits before it, at the task times the
workers have shown: learned per kind of task (model, threads, requests), seeded by each worker's warm-up.
It is stretched by how far recent waits ran past their expectation (the 99th percentile of actual /
expected), so that the budget bounds nearly every wait, not the average one, however noisy the host (the
estimates: yoso/serving/waits.py). Two hard caps stand beside it: `YOSO_MAX_QUEUE` requests waiting
(memory: each holds its upload) and `YOSO_MAX_UPLOADS` uploads still arriving (slow senders hold those
places, never a worker). A request is checked at the edge, before a byte of its upload is read, and again
before it is queued.

Refusals are cheap, not free: most clients resend at once after a 503, and thousands a second would leave the
workers no CPU. So a client refused again within its Retry-After waits that Retry-After out, and refusals are
answered at once up to a few times what the workers serve; past that each is held its turn (at most the budget;
yoso/serving/refusals.py).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, Protocol

from yoso.serving.refusals import RefusalPace, ReturningClients
from yoso.serving.tasks import Running
from yoso.serving.waits import TaskTimes, WaitMargin, run_in_turn

REFUSALS_PER_SERVED = 4.0  # refusals answered at once per image/s the workers can serve ...
MIN_REFUSALS_PER_S = 20.0  # ... and at least this many, however slow the model


class Reason(str, Enum):
    """Why a request was refused (the `reason` label of yoso_requests_shed_total)."""

    budget = "budget"  # it would wait longer than its budget
    queue_cap = "queue_cap"  # YOSO_MAX_QUEUE requests already wait
    uploads = "uploads"  # YOSO_MAX_UPLOADS uploads are already arriving
    draining = "draining"  # shutting down
    starting = "starting"  # the models are still loading, or every worker is being replaced


class Refused(Exception):
    """A request refused at once: answer 503 with `Retry-After: RETRY_AFTER_S` and `detail`."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Workers(Protocol):
    """What admission reads of the worker pool."""

    def running(self) -> list[Running | None]: ...  # per worker that can take tasks: its task, or None if idle


class Queue(Protocol):
    """What admission reads of the queue in front of the workers."""

    def queued_by_model(self) -> Mapping[str, int]: ...  # requests waiting for a worker (not those sent ahead)


@dataclass(eq=False)
class Ticket:
    """An admitted request: what it asks for, when its caller stops waiting, and whether it is still uploading."""

    SCOPE_KEY: ClassVar[str] = "yoso.ticket"  # where an admitted HTTP request's ticket lives in its ASGI scope

    model: str
    admitted: float  # on the admission's clock (time.monotonic())
    deadline: float  # the caller's timeout or the server's, whichever is sooner
    hard_deadline: float  # the server's own bound; a task running past all its requests' gets its worker killed
    clock: Callable[[], float] = field(repr=False)
    on_upload_done: Callable[[], None] = field(repr=False)
    client: Hashable | None = None  # who sent it (an ASGI scope's `client`), if the transport says
    uploading: bool = True
    version: int | None = None  # of the model that answered it (the access log says it)

    @property
    def timeout_s(self) -> float:
        return self.deadline - self.admitted

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def upload_done(self) -> None:
        """The upload has arrived (or will not): the request no longer holds an upload place."""
        if self.uploading:
            self.uploading = False
            self.on_upload_done()


class Admission:
    """The policy: `enter` at the edge, `recheck` before queueing, `served` after (`waited` for a request that
    left before its turn), `hold_refusal` on a 503."""

    def __init__(self, workers: Workers, queue: Queue, times: TaskTimes | None = None, *, budget_s: float,
                 max_queue: int, max_uploads: int, request_timeout_s: float, busy_threads: int,
                 max_batch_size: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.workers = workers
        self.queue = queue
        self.times = TaskTimes() if times is None else times  # learned as tasks end (the service records them)
        self.budget_s = budget_s
        self.max_queue = max_queue
        self.max_uploads = max_uploads
        self.request_timeout_s = request_timeout_s
        self.busy_threads = busy_threads  # threads of a task that starts beside busy workers (cores / workers)
        self.max_batch_size = max_batch_size
        self.clock = clock
        self.margin = WaitMargin(budget_s, clock)
        self.closed: Reason | None = Reason.starting  # the service opens admission once the workers are ready
        self.uploading = 0
        self.held = 0  # refusals being held now
        self._pace = RefusalPace(clock)
        self._returning = ReturningClients(clock)

    def enter(self, model: str, timeout_s: float | None = None, client: Hashable | None = None) -> Ticket:
        """Admit `client`'s request at the edge, before its upload is read; Refused if it may not come in."""
        now = self.clock()
        timeout_s = self.request_timeout_s if timeout_s is None else min(timeout_s, self.request_timeout_s)
        if self.closed is not None:
            state = "shutting down" if self.closed is Reason.draining else "loading its models"
            raise Refused(self.closed, f"The server is {state}; retry shortly.")
        if not self.workers.running():
            raise Refused(Reason.starting, "No inference worker is running (a replacement is starting); retry shortly.")
        if self.uploading >= self.max_uploads:
            raise Refused(Reason.uploads, f"The server is at capacity: {self.uploading} uploads are arriving "
                                          f"(YOSO_MAX_UPLOADS); retry after the Retry-After delay.")
        self._check(model, timeout_s)
        self.uploading += 1
        return Ticket(model, now, now + timeout_s, now + self.request_timeout_s, self.clock, self._upload_done, client)

    def recheck(self, ticket: Ticket, inputs: int = 1) -> float:
        """Check again once the upload (`inputs` jobs) has arrived, before it is queued; Refused if it may no longer
        wait (other uploads arrived meanwhile). A request admitted before a drain began, or before its worker died,
        is served all the same. Returns the expected wait of its last input: tell `served` once it is answered."""
        if not self.workers.running():
            return 0.0  # a replacement is starting: it waits for it, within its deadline
        return self._check(ticket.model, ticket.remaining_s(), inputs)

    def waited(self, expected_s: float, actual_s: float) -> None:
        """A request waited `actual_s` for a worker where `expected_s` was expected: the margin learns from it."""
        self.margin.record(expected_s, actual_s)

    def served(self, ticket: Ticket, expected_wait_s: float) -> None:
        """An admitted request was answered, its wait expected to be `expected_wait_s`. What its caller waited
        for beyond its own task (its upload, its wait, a task that ran long, the answer) is what the budget bounds:
        the margin learns that against the expected wait, not the wait alone."""
        own_task_s = self.times.expected_s((ticket.model, self.busy_threads, 1))
        self.waited(expected_wait_s, self.clock() - ticket.admitted - own_task_s)

    def expected_wait_s(self, running: Sequence[Running | None], waiting: Mapping[str, int]) -> float:
        """When a worker is expected to take a request queued now behind `waiting` (requests by model): every worker
        runs its task (and the one sent ahead to it) to its expected end, then the waiting requests model by model
        (in batches), each task on the worker free first. It costs the same however many requests wait."""
        now = self.clock()
        free_at = [0.0 if task is None else max(0.0, task.started + self.times.expected_s(task.kind) - now)
                   + (0.0 if task.then is None else self.times.expected_s(task.then)) for task in running]
        if not free_at:
            return math.inf
        heapq.heapify(free_at)
        for model, images, tasks in self._tasks(waiting):
            run_in_turn(free_at, tasks, self.times.expected_s((model, self.busy_threads, images)))
        return free_at[0]

    def capacity_per_s(self) -> float:
        """Images per second the workers are expected to serve when all are busy (0 while unknown)."""
        rates = [1 / seconds for (_, threads, images), seconds in self.times.known().items()
                 if threads == self.busy_threads and images == 1 and seconds > 0]
        return len(self.workers.running()) * sum(rates) / len(rates) if rates else 0.0

    def refusal_delay_s(self, client: Hashable | None = None) -> float:
        """How long to hold the refusal being answered now: the rest of its Retry-After for a client refused
        within it; else 0 up to a rate of refusals, its turn past it."""
        if client is not None and (returning_s := self._returning.delay_s(client, self.budget_s)) > 0:
            return returning_s
        rate = max(MIN_REFUSALS_PER_S, REFUSALS_PER_SERVED * self.capacity_per_s())
        return self._pace.delay_s(rate, max_hold_s=self.budget_s)

    async def hold_refusal(self, client: Hashable | None = None) -> None:
        """Wait this refusal's turn (see refusal_delay_s) before its 503 goes out."""
        delay = self.refusal_delay_s(client)
        if delay <= 0:
            return
        self.held += 1
        try:
            await asyncio.sleep(delay)
        finally:
            self.held -= 1

    def _check(self, model: str, timeout_s: float, inputs: int = 1) -> float:
        """Refused unless it may wait (the caps; its first input: the budget; its last: its timeout); else how long."""
        running, waiting = self.workers.running(), self.queue.queued_by_model()
        ahead = sum(task.then[2] for task in running if task is not None and task.then is not None)  # its inputs
        would_wait = sum(waiting.values()) + ahead + inputs - sum(1 for task in running if task is None)
        if would_wait > self.max_queue:
            raise Refused(Reason.queue_cap, f"The server is at capacity: {would_wait} requests would wait for a "
                                            f"worker (YOSO_MAX_QUEUE); retry after the Retry-After delay.")
        factor = self.margin.factor()
        first_s = self.expected_wait_s(running, waiting)
        last_s = self.expected_wait_s(running, _then(waiting, model, inputs - 1)) if inputs > 1 else first_s
        left_s = timeout_s - self.times.expected_s((model, self.busy_threads, 1))
        for wait_s, allowed_s, bound in ((first_s * factor, self.budget_s, "its wait budget (YOSO_MAX_QUEUE_WAIT_MS)"),
                                         (last_s * factor, left_s, "what its timeout leaves after its own inference")):
            if wait_s > allowed_s:
                raise Refused(Reason.budget, f"The server is at capacity: a worker may not be free for "
                                             f"{wait_s * 1000:.0f} ms, past {bound}, {max(0.0, allowed_s) * 1000:.0f} "
                                             f"ms; retry after the Retry-After delay.")
        return last_s

    def _tasks(self, waiting: Mapping[str, int]) -> list[tuple[str, int, int]]:
        """The waiting requests as the tasks they will run in: (model, images per task, tasks)."""
        tasks = []
        for model, count in waiting.items():
            full, rest = divmod(count, self.max_batch_size)
            if full:
                tasks.append((model, self.max_batch_size, full))
            if rest:
                tasks.append((model, rest, 1))
        return tasks

    def _upload_done(self) -> None:
        self.uploading -= 1


def _then(waiting: Mapping[str, int], model: str, inputs: int) -> dict[str, int]:
    """`waiting` with `inputs` more requests for `model`, its requests queued last."""
    others = {other: count for other, count in waiting.items() if other != model}
    return others | {model: waiting.get(model, 0) + inputs}

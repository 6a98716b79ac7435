"""The admission policy on a fake clock, fake workers and a fake queue: deterministic, no sleeps.

The live-server tests of each refusal (tests/test_serving.py) show the same rules through HTTP.
"""

from __future__ import annotations

import asyncio
import heapq
import random

import pytest

from yoso.serving.admission import MIN_REFUSALS_PER_S, Admission, Reason, Refused
from yoso.serving.waits import TaskTimes, WaitMargin, run_in_turn
from yoso.serving.refusals import REFUSAL_BURST_S, RETRY_AFTER_S, RefusalPace, ReturningClients
from yoso.serving.tasks import Running

MODEL = "yolov3-tiny"
TASK_S = 0.125  # a task of MODEL on one thread, one image (exact in binary: boundaries are exact)
BUSY = 1  # threads of a task beside busy workers
CORES = 2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Workers:
    def __init__(self, *tasks: Running | None) -> None:
        self.tasks = list(tasks)

    def running(self) -> list[Running | None]:
        return self.tasks


class Queue:
    def __init__(self, waiting: int = 0) -> None:
        self.models = {MODEL: waiting}

    def queued_by_model(self) -> dict[str, int]:
        return self.models


def learned() -> TaskTimes:
    times = TaskTimes()
    times.record((MODEL, BUSY, 1), TASK_S)
    return times


def busy_since(clock: Clock, elapsed_s: float) -> Running:
    return Running((MODEL, BUSY, 1), clock.now - elapsed_s)


def admission(clock: Clock, workers: Workers, queue: Queue, times: TaskTimes | None = None, **settings) -> Admission:
    options = dict(budget_s=2.0, max_queue=128, max_uploads=32, request_timeout_s=30.0, busy_threads=BUSY)
    gate = Admission(workers, queue, times or learned(), clock=clock, **(options | settings))
    gate.closed = None  # the service opens it once the workers are ready
    return gate


def refusal(gate: Admission, timeout_s: float | None = None) -> Refused:
    with pytest.raises(Refused) as refused:
        gate.enter(MODEL, timeout_s)
    return refused.value


def test_a_request_is_admitted_at_once_while_a_worker_is_idle():
    clock = Clock()
    workers = Workers(busy_since(clock, 0.0), None)
    ticket = admission(clock, workers, Queue()).enter(MODEL)
    assert admission(clock, workers, Queue()).expected_wait_s(workers.running(), {}) == 0
    assert (ticket.model, ticket.deadline, ticket.hard_deadline) == (MODEL, clock.now + 30, clock.now + 30)


def test_the_expected_wait_runs_each_task_to_its_end_then_the_queue_in_order_on_the_first_free_worker():
    clock = Clock()
    workers = Workers(busy_since(clock, 0.04), busy_since(clock, 0.01))  # free in 0.085 and 0.115 s
    gate = admission(clock, workers, Queue())
    waits = [gate.expected_wait_s(workers.running(), {MODEL: ahead}) for ahead in range(4)]
    assert waits == pytest.approx([0.085, 0.115, 0.085 + TASK_S, 0.115 + TASK_S])


def test_waiting_tasks_given_to_the_workers_a_turn_at_a_time_leave_them_free_when_one_by_one_would():
    rng = random.Random(16)
    for _ in range(500):
        free_at = [rng.uniform(0.0, 2.0) for _ in range(rng.randint(1, 6))]
        seconds, tasks = rng.choice([0.01, 0.03, 0.125, 0.5]), rng.randint(0, 300)
        one_by_one = sorted(free_at)
        for _ in range(tasks):
            heapq.heapreplace(one_by_one, one_by_one[0] + seconds)
        in_turns = sorted(free_at)
        run_in_turn(in_turns, tasks, seconds)
        assert sorted(in_turns) == pytest.approx(sorted(one_by_one))


def test_a_task_past_its_expected_time_is_expected_to_end_now():
    clock = Clock()
    workers = Workers(busy_since(clock, 5.0))
    assert admission(clock, workers, Queue()).expected_wait_s(workers.running(), {}) == 0


def test_the_budget_boundary_a_wait_equal_to_the_budget_is_admitted_any_more_is_refused():
    clock = Clock()
    workers = Workers(busy_since(clock, 0.0))  # 15 waiting and the running task: the next waits 16 x 0.125 = 2 s
    assert admission(clock, workers, Queue(15), budget_s=2.0).enter(MODEL)
    refused = refusal(admission(clock, workers, Queue(15), budget_s=1.999))
    assert refused.reason is Reason.budget and "2000 ms" in refused.detail and "1999 ms" in refused.detail
    assert refusal(admission(clock, workers, Queue(16), budget_s=2.0)).reason is Reason.budget


def test_a_refusal_for_the_budget_says_how_long_the_wait_would_be_and_which_bound_it_passes():
    clock = Clock()
    refused = refusal(admission(clock, Workers(busy_since(clock, 0.0)), Queue(27)))
    assert "3500 ms" in refused.detail and "YOSO_MAX_QUEUE_WAIT_MS" in refused.detail and "2000 ms" in refused.detail


def test_waits_that_ran_past_their_expectation_stretch_every_expectation_by_their_99th_percentile():
    clock = Clock()
    workers = Workers(busy_since(clock, 0.0))
    gate = admission(clock, workers, Queue(11))  # expected wait 1.5 s
    assert gate.recheck(gate.enter(MODEL)) == pytest.approx(1.5)  # admitted while the margin is unknown
    for _ in range(WaitMargin.MIN_SAMPLES - 1):
        gate.waited(expected_s=1.0, actual_s=1.4)  # waits ran 40% late
    assert gate.margin.factor() == 1.0  # too few to go by
    gate.waited(expected_s=1.0, actual_s=1.4)
    assert gate.margin.factor() == pytest.approx(1.4)
    refused = refusal(gate)  # 1.5 s x 1.4 = 2.1 s: past the budget
    assert refused.reason is Reason.budget and "2100 ms" in refused.detail


def test_the_margin_learns_what_an_answered_caller_waited_beyond_its_own_task_not_the_wait_alone():
    """The budget bounds what the caller sees, its own task aside: the upload, the wait, a task that ran long and
    the answer all count against the wait that was expected."""
    clock, workers, queue = Clock(), Workers(), Queue(11)
    gate = admission(clock, workers, queue)
    for _ in range(WaitMargin.MIN_SAMPLES):  # requests alike, each from the same moment (within the margin's window)
        clock.now = 100.0
        workers.tasks = [busy_since(clock, 0.0)]  # one worker, its task just begun: 1.5 s to wait at the edge
        ticket = gate.enter(MODEL)
        clock.now += 0.1  # its upload
        expected_s = gate.recheck(ticket)
        ticket.upload_done()
        clock.now += expected_s + TASK_S + 0.05  # waited as expected; its task, or its answer, took 50 ms more
        gate.served(ticket, expected_s)
    assert expected_s == pytest.approx(1.4)
    assert gate.margin.factor() == pytest.approx((0.1 + 1.4 + 0.05) / 1.4)  # about 1.107
    workers.tasks = [busy_since(clock, 0.0)]
    queue.models[MODEL] = 14  # 1.875 s to wait: within the budget, but not once stretched by 1.107
    refused = refusal(gate)
    assert refused.reason is Reason.budget and "2076 ms" in refused.detail


def test_the_margin_ignores_short_waits_and_never_shrinks_or_more_than_doubles_an_expectation():
    margin = WaitMargin(budget_s=2.0, clock=Clock())
    for _ in range(100):
        margin.record(expected_s=0.1, actual_s=0.3)  # 0.1 s is under a quarter of the budget: not at stake
    assert margin.factor() == 1.0
    for _ in range(100):
        margin.record(expected_s=1.0, actual_s=0.8)  # pessimistic expectations are not trusted to admit more
    assert margin.factor() == 1.0
    for late in range(1, 101):
        margin.record(expected_s=1.0, actual_s=1.0 + late / 100)  # ratios 1.01 .. 2.0
    assert margin.factor() == pytest.approx(1.99)  # the 99th percentile of the 200 recorded
    for _ in range(100):
        margin.record(expected_s=1.0, actual_s=5.0)
    assert margin.factor() == WaitMargin.MAX_FACTOR


def test_a_slow_spell_stretches_expectations_for_half_a_minute_at_most():
    """Were old waits kept, a factor stretched far enough would let no request expected to wait a good part of
    the budget in, so no such wait would ever be recorded again, and the factor would never come down."""
    clock = Clock()
    gate = admission(clock, Workers(busy_since(clock, 0.0)), Queue(11))
    for _ in range(40):
        gate.waited(expected_s=1.0, actual_s=5.0)  # a worker was replaced while requests waited
    assert gate.margin.factor() == WaitMargin.MAX_FACTOR and refusal(gate).reason is Reason.budget
    clock.now += WaitMargin.WINDOW_S + 1
    assert gate.margin.factor() == 1.0
    assert gate.enter(MODEL)


def test_a_caller_timeout_shorter_than_the_wait_plus_its_own_task_is_refused_at_once():
    clock = Clock()
    gate = admission(clock, Workers(busy_since(clock, 0.0)), Queue(3))  # expected wait 0.5 s, its own task 0.125 s
    assert gate.enter(MODEL, timeout_s=0.625).deadline == clock.now + 0.625
    refused = refusal(gate, timeout_s=0.62)
    assert refused.reason is Reason.budget and "its timeout" in refused.detail


def test_a_caller_timeout_cannot_extend_the_servers_bounds():
    clock = Clock()
    assert admission(clock, Workers(None), Queue(), request_timeout_s=5.0).enter(MODEL, 60.0).deadline == clock.now + 5
    waiting = admission(clock, Workers(busy_since(clock, 0.0)), Queue(16))  # 2.125 s: over the 2 s budget
    assert refusal(waiting, timeout_s=60.0).reason is Reason.budget


def test_a_task_sent_ahead_to_a_busy_worker_counts_as_waiting_and_runs_after_that_workers_task():
    clock = Clock()
    kind = (MODEL, BUSY, 1)
    workers = Workers(Running(kind, clock.now - 0.04, then=kind), busy_since(clock, 0.01))  # free in 0.21, 0.115
    gate = admission(clock, workers, Queue())
    waits = [gate.expected_wait_s(workers.running(), {MODEL: ahead}) for ahead in range(3)]
    assert waits == pytest.approx([0.115, 0.085 + TASK_S, 0.115 + TASK_S])
    assert admission(clock, workers, Queue(1), max_queue=3).enter(MODEL)  # waiting: the one ahead, one queued
    assert refusal(admission(clock, workers, Queue(2), max_queue=3)).reason is Reason.queue_cap
    batch_ahead = Workers(Running(kind, clock.now, then=(MODEL, BUSY, 3)), busy_since(clock, 0.0))
    assert refusal(admission(clock, batch_ahead, Queue(), max_queue=3)).reason is Reason.queue_cap  # 3 + 1 > 3


def test_the_queue_cap_binds_even_when_the_budget_would_let_a_request_wait():
    clock = Clock()
    workers = Workers(busy_since(clock, 0.0))
    assert admission(clock, workers, Queue(2), max_queue=3).enter(MODEL)
    refused = refusal(admission(clock, workers, Queue(3), max_queue=3))
    assert refused.reason is Reason.queue_cap and "YOSO_MAX_QUEUE" in refused.detail


def test_with_no_queue_a_request_is_admitted_only_by_an_idle_worker():
    clock = Clock()
    assert admission(clock, Workers(None), Queue(), max_queue=0).enter(MODEL)
    assert refusal(admission(clock, Workers(busy_since(clock, 0.0)), Queue(), max_queue=0)).reason is Reason.queue_cap


def test_uploads_arriving_at_once_are_capped_and_each_place_is_given_back_once():
    clock = Clock()
    gate = admission(clock, Workers(None), Queue(), max_uploads=2)
    first, second = gate.enter(MODEL), gate.enter(MODEL)
    assert refusal(gate).reason is Reason.uploads
    first.upload_done()
    first.upload_done()
    assert gate.uploading == 1
    gate.enter(MODEL)
    assert refusal(gate).reason is Reason.uploads
    second.upload_done()
    assert gate.uploading == 1


def test_a_server_starting_or_draining_or_without_a_live_worker_refuses_every_request():
    clock = Clock()
    gate = admission(clock, Workers(None), Queue())
    gate.closed = Reason.starting
    assert refusal(gate).reason is Reason.starting
    gate.closed = Reason.draining
    assert refusal(gate).reason is Reason.draining
    assert refusal(admission(clock, Workers(), Queue())).reason is Reason.starting  # every worker being replaced


def test_a_request_admitted_before_a_drain_or_a_worker_death_is_queued_all_the_same():
    clock = Clock()
    workers = Workers(None)
    gate = admission(clock, workers, Queue())
    ticket = gate.enter(MODEL)
    gate.closed = Reason.draining  # SIGTERM while its upload arrives
    assert gate.recheck(ticket) == 0
    workers.tasks = []  # its worker died: it waits for the replacement, within its deadline
    assert gate.recheck(ticket) == 0


def test_the_recheck_after_the_upload_counts_the_time_already_spent():
    clock = Clock()
    workers, queue = Workers(busy_since(clock, 0.0)), Queue()
    gate = admission(clock, workers, queue)
    ticket = gate.enter(MODEL, timeout_s=1.0)
    clock.now += 0.5  # the upload took half the caller's time; meanwhile three requests arrived, one task began
    queue.models = {MODEL: 3}
    workers.tasks = [busy_since(clock, 0.0)]
    with pytest.raises(Refused) as refused:
        gate.recheck(ticket)  # 0.5 s of wait and 0.125 s of its own task no longer fit in the 0.5 s left
    assert refused.value.reason is Reason.budget


def test_until_a_task_time_is_known_only_the_caps_decide():
    clock = Clock()
    workers = Workers(busy_since(clock, 0.0))
    gate = admission(clock, workers, Queue(100), times=TaskTimes())
    assert gate.expected_wait_s(workers.running(), {MODEL: 100}) == 0
    assert gate.enter(MODEL) and gate.capacity_per_s() == 0


def test_waiting_requests_are_expected_to_run_in_batches():
    clock = Clock()
    times = learned()
    times.record((MODEL, BUSY, 4), 0.3)
    workers = Workers(busy_since(clock, 1.0))  # free now
    gate = admission(clock, workers, Queue(), times=times, max_batch_size=4)
    assert gate.expected_wait_s(workers.running(), {MODEL: 8}) == pytest.approx(0.6)  # two batches of four
    assert gate.expected_wait_s(workers.running(), {MODEL: 9}) == pytest.approx(0.6 + TASK_S)  # and one alone


def test_one_task_far_slower_than_expected_moves_the_expectation_only_as_much_as_three_times_it():
    times = TaskTimes()
    times.record((MODEL, 1, 1), 0.1)
    times.record((MODEL, 1, 1), 30.0)  # a pixel bomb that took a worker half a minute
    assert times.expected_s((MODEL, 1, 1)) == pytest.approx(0.1 + TaskTimes.SMOOTHING * 0.2)


def test_task_times_are_a_moving_average_seeded_by_the_warm_up_and_scaled_by_images_while_unknown():
    times = TaskTimes()
    times.seed((MODEL, 1, 1), 0.2)
    times.seed((MODEL, 1, 1), 0.9)  # a second worker's warm-up does not move the first estimate
    assert times.expected_s((MODEL, 1, 1)) == 0.2
    times.record((MODEL, 1, 1), 0.1)  # a real task moves it by the smoothing weight
    assert times.expected_s((MODEL, 1, 1)) == pytest.approx(0.2 - TaskTimes.SMOOTHING * 0.1)
    assert times.expected_s((MODEL, 1, 3)) == pytest.approx(3 * times.expected_s((MODEL, 1, 1)))
    assert times.expected_s((MODEL, 2, 1)) == 0 and times.expected_s(("other", 1, 1)) == 0


def test_capacity_is_the_workers_times_their_rate_on_their_share_of_the_cores():
    clock = Clock()
    times = learned()
    times.record((MODEL, CORES, 1), 0.05)  # a task alone on both cores is not what a busy pool runs
    assert admission(clock, Workers(None, None), Queue(), times=times).capacity_per_s() == pytest.approx(2 / TASK_S)


def test_refusals_are_answered_at_once_up_to_a_seconds_worth_then_one_per_turn():
    pace = RefusalPace(Clock())
    rate = 10.0
    at_once = [pace.delay_s(rate, max_hold_s=2.0) for _ in range(int(rate * REFUSAL_BURST_S) + 1)]
    assert at_once == [0.0] * len(at_once)
    assert [pace.delay_s(rate, max_hold_s=2.0) for _ in range(3)] == pytest.approx([0.1, 0.2, 0.3])


def test_a_held_refusal_never_waits_past_the_longest_hold_and_a_quiet_spell_restores_the_burst():
    clock = Clock()
    pace = RefusalPace(clock)
    delays = [pace.delay_s(10.0, max_hold_s=0.5) for _ in range(100)]
    assert max(delays) == 0.5 and delays[-1] == 0.5
    clock.now += REFUSAL_BURST_S + 0.5  # the refusals held so far have gone out, and a second has passed
    assert [pace.delay_s(10.0, max_hold_s=0.5) for _ in range(11)] == [0.0] * 11  # a whole burst at once again
    assert pace.delay_s(10.0, max_hold_s=0.5) > 0


def test_refusals_go_at_once_under_twice_the_load_served_and_are_held_in_a_retry_storm():
    """Twice the load it serves makes the server refuse about its capacity each second: those go at once.
    Clients resending at once make refusals come far faster: past the rate, they are held."""
    clock = Clock()
    gate = admission(clock, Workers(None, None), Queue())
    capacity = gate.capacity_per_s()  # 16 images/s
    assert capacity == 16 and capacity < MIN_REFUSALS_PER_S < 4 * capacity
    overload = []
    for _ in range(5 * int(capacity)):  # five seconds of refusing the capacity's worth each second
        clock.now += 1 / capacity
        overload.append(gate.refusal_delay_s())
    assert max(overload) == 0
    storm = [gate.refusal_delay_s() for _ in range(1000)]  # a thousand refusals in the same instant
    assert storm.count(0.0) <= 4 * capacity * REFUSAL_BURST_S + 1 and max(storm) == gate.budget_s


def test_a_client_refused_again_within_its_retry_after_gets_that_refusal_when_it_is_up():
    clock = Clock()
    returning = ReturningClients(clock)
    first, second = ("10.0.0.1", 5000), ("10.0.0.1", 5001)
    assert returning.delay_s(first, 5.0) == 0  # a first refusal goes at once
    clock.now += 0.25
    assert returning.delay_s(first, 5.0) == pytest.approx(RETRY_AFTER_S - 0.25)  # straight back: the rest of it
    assert returning.delay_s(second, 5.0) == 0  # another connection is another client
    clock.now += 0.25  # still before the held refusal has gone out: held a whole Retry-After past it
    assert returning.delay_s(first, 5.0) == pytest.approx(2 * RETRY_AFTER_S - 0.5)
    clock.now += 3 * RETRY_AFTER_S  # it waited as told
    assert returning.delay_s(first, 5.0) == 0 and returning.delay_s(second, 5.0) == 0


def test_the_clients_remembered_are_bounded_and_forgotten_after_their_retry_after(monkeypatch):
    clock = Clock()
    returning = ReturningClients(clock)
    monkeypatch.setattr(ReturningClients, "MAX_CLIENTS", 3)
    for port in range(5):
        returning.delay_s(("h", port), 5.0)
    assert len(returning._answered) == 3 and returning.delay_s(("h", 0), 5.0) == 0  # the oldest went first
    clock.now += RETRY_AFTER_S + 0.01
    returning.delay_s(("h", 9), 5.0)
    assert list(returning._answered) == [("h", 9)]


def test_refusals_to_one_address_going_out_together_are_held_at_most_the_longest_hold():
    """Behind a proxy, many callers share an address: their refusals line up a Retry-After apart, each held at
    most `max_hold_s`."""
    returning = ReturningClients(Clock())
    delays = [returning.delay_s(("10.0.0.9", 0), max_hold_s=2.0) for _ in range(10)]
    assert delays[:3] == [0.0, RETRY_AFTER_S, 2 * RETRY_AFTER_S] and max(delays) == 2.0


def test_admission_holds_a_returning_clients_refusal_and_paces_the_others():
    """A returning client is held whatever the rate; a request with no known client is paced only."""
    clock = Clock()
    gate = admission(clock, Workers(None, None), Queue())
    client = ("127.0.0.1", 40000)
    assert gate.refusal_delay_s(client) == 0
    assert gate.refusal_delay_s(client) == RETRY_AFTER_S  # no time passed: the whole Retry-After
    assert gate.refusal_delay_s() == 0 and gate.refusal_delay_s(("127.0.0.1", 40001)) == 0
    assert gate.enter(MODEL, client=client).client == client  # the ticket carries it to a later refusal


def test_a_held_refusal_is_counted_while_it_waits():
    clock = Clock()
    gate = admission(clock, Workers(None, None), Queue())

    async def hold_one_past_the_burst() -> tuple[int, int]:
        while gate.refusal_delay_s() == 0:  # use up the burst: the next refusal is held
            pass
        holding = asyncio.ensure_future(gate.hold_refusal())
        await asyncio.sleep(0)  # it starts and waits its turn
        during = gate.held
        holding.cancel()  # the client left
        await asyncio.gather(holding, return_exceptions=True)
        return during, gate.held

    assert asyncio.run(hold_one_past_the_burst()) == (1, 0)

"""When a refusal is answered: at once, or held. Holding costs a sleeping coroutine; answering costs CPU.

Most clients resend at once after a 503, whatever its Retry-After says, and every refusal costs the server
process a little of the cores the workers need. Two rules keep refusals from eating them:
- `ReturningClients`: a client refused again within the Retry-After it was given gets its next refusal when
  that Retry-After is up. A retry storm then costs one refusal per client per Retry-After; a new arrival (a new
  connection, another client) is answered at once.
- `RefusalPace`: whoever sends them, refusals are answered at once up to a rate, then each at its turn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

RETRY_AFTER_S = 1  # short: refused clients that come back together should find the queue still busy
REFUSAL_BURST_S = 1.0  # a second's worth of refusals may come at once before any is held


class ReturningClients:
    """When each client (an ASGI scope's `client`: one connection, or one address behind a proxy) was last
    answered a refusal, for the length of a Retry-After; the oldest are forgotten past MAX_CLIENTS."""

    MAX_CLIENTS = 100_000  # bounds the memory: about 20 MB at most

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._answered: dict[Hashable, float] = {}  # client -> when its last refusal went out, roughly oldest first

    def delay_s(self, client: Hashable, max_hold_s: float) -> float:
        """How long to hold this client's refusal: until a Retry-After after its last one, or 0; never more than
        `max_hold_s` (an address behind a proxy may have many refusals going out at once)."""
        now = self.clock()
        self._forget_before(now - RETRY_AFTER_S)
        last = self._answered.pop(client, None)
        delay = 0.0 if last is None else min(max(0.0, last + RETRY_AFTER_S - now), max_hold_s)
        self._answered[client] = now + delay  # to the end: the dict stays in about the order of answers
        if len(self._answered) > self.MAX_CLIENTS:
            del self._answered[next(iter(self._answered))]
        return delay

    def _forget_before(self, moment: float) -> None:
        while self._answered:
            client, answered = next(iter(self._answered.items()))
            if answered >= moment:
                return
            del self._answered[client]


class RefusalPace:
    """A rate for answering refusals: a second's worth at once, then each one at its turn.

    The generic cell rate algorithm: `_due` is when the refusals answered so far would have gone out at
    exactly the rate; a refusal is held for as much as that runs ahead of now, less the burst allowance.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._due = -math.inf

    def delay_s(self, rate_per_s: float, max_hold_s: float) -> float:
        """How long to hold the refusal being answered now (0: at once), never more than `max_hold_s`."""
        now = self.clock()
        due = max(self._due, now)
        self._due = min(due + 1 / rate_per_s, now + REFUSAL_BURST_S + max_hold_s)
        return min(max(0.0, due - now - REFUSAL_BURST_S), max_hold_s)

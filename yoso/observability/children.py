"""A labelled metric's children, each looked up once: prometheus_client's `labels()` checks and converts the
values and takes a lock on every call, and an image request records a dozen labelled samples."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


class Children(Generic[M]):
    """`children(*values)` is `metric.labels(*values)`, remembered (yoso never removes a child)."""

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._known: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._known.get(values)
        if child is None:
            child = self._known[values] = self.metric.labels(*values)
        return child

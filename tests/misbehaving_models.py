"""Plug-in classes that break the contract on purpose, for tests/test_plugins.py: yoso must answer each with a
clear error and carry on. A blank image passes (each is warmed with one when it loads); a real one does not."""

from __future__ import annotations

import time
from pathlib import Path

import yoso


class Raises(yoso.Detector):
    def predict(self, images):
        if any(image.any() for image in images):
            raise ValueError("this model always fails on a real image")
        return [[] for _ in images]


class Miscounts(yoso.Detector):
    def predict(self, images):
        return [] if any(image.any() for image in images) else [[] for _ in images]


class Picky(yoso.Model):
    """Takes numbers only, and says so with yoso.InputError."""

    def setup(self, device: str) -> None:
        yoso.record("setups", 1)

    def predict(self, instances):
        yoso.record("instances_seen", len(instances))
        if not all(isinstance(x, (int, float)) for x in instances):
            raise yoso.InputError("every instance must be a number")
        return [-x for x in instances]


class Hangs(yoso.Model):
    """Sleeps as many seconds as the largest instance: a model stuck in its run phase."""

    def predict(self, instances):
        time.sleep(max(instances))  # a sleep: the hang the watchdog must end
        return instances


def _refuse_to_load() -> None:
    raise RuntimeError("this prediction cannot be read back")


class _Unreadable(str):
    """A JSON string to the worker, which pickles it; unpickling it in the server raises."""

    def __reduce__(self):
        return _refuse_to_load, ()


class Unreadable(yoso.Model):
    """Returns a prediction the server process cannot read: the worker's message about it fails on arrival."""

    def predict(self, instances):
        return [_Unreadable("unreadable") if instance == "unreadable" else instance for instance in instances]


class WaitsForGo(yoso.Model):
    """Its setup lasts until the file `go` names exists: a model still loading, for as long as a test wants."""

    def __init__(self, go: str) -> None:
        self.go = Path(go)

    def setup(self, device: str) -> None:
        while not self.go.exists():
            time.sleep(0.05)  # a sleep: the file appears in another process, which signals nothing

    def predict(self, instances):
        return instances


class FailsSetup(yoso.Detector):
    def setup(self, device: str) -> None:
        raise FileNotFoundError("weights.bin is not where it was expected")

    def predict(self, images):
        return [[] for _ in images]

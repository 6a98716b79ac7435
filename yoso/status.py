"""What the server says about a model: one shape for the service, its HTTP answer (/models) and yosoclient.

Plain data with no dependency, so that the client can share it without importing the server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelStatus:
    """A model of the zoo: installed (its files are in YOSO_MODEL_DIR), loaded (held in memory by
    `workers_loaded` worker processes), its number of classes once installed, and its download size."""

    name: str
    installed: bool
    loaded: bool
    workers_loaded: int
    classes: int | None
    download_bytes: int

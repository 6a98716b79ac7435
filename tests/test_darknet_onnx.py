"""The Darknet to ONNX converter against OpenCV's own Darknet importer: the raw maps of the zoo's real files on real
images, and of a network built here with every layer kind the full yolov3/yolov4 use (mish, shortcut, SPP
max-pooling, grouped route, upsample, scale_x_y), must equal OpenCV's. Then the file: the same bytes each time,
written atomically, used only while it is the conversion of the files beside it, and every weight consumed.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.support import DATA, ROOT, SAMPLE_IMAGES
from yoso.cli import main as yoso_cli
from yoso.model.darknet import onnx_path
from yoso.model.darknet_onnx import ConversionError, convert
from yoso.model.engines import OpenCVEngine, OpenVINOEngine
from yoso.model.onnx_file import convert_files, onnx_for, onnx_on_disk, write_onnx
from yoso.model.store import ModelFiles
from yoso.model.zoo import TINY_MODELS, ZOO

# Measured on the zoo's maps (12 images): at most 1.3e-4 apart, 7e-6 on the box centres. Tight enough that a
# scale_x_y of 1.05 ignored (centres off by up to 2e-3) fails.
ABSOLUTE, RELATIVE = 2e-4, 1e-3


def _blob(images: list[np.ndarray], size: int) -> np.ndarray:
    return cv2.dnn.blobFromImages(images, 0.00392, (size, size), (0, 0, 0), True, crop=False)


def _assert_same_maps(files: ModelFiles, blob: np.ndarray) -> None:
    expected = OpenCVEngine(files).forward(blob)  # OpenCV runs the network at the blob's size
    found = OpenVINOEngine(onnx_for(files.cfg, files.weights, blob.shape[-1]), "f32").forward(blob)
    assert [m.shape for m in found] == [m.shape for m in expected]
    for ours, theirs in zip(found, expected):
        np.testing.assert_allclose(ours, theirs, rtol=RELATIVE, atol=ABSOLUTE)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_the_zoos_raw_maps_equal_opencvs_on_a_batch_of_every_test_image(model_store, name):
    images = [cv2.imread(str(DATA / image)) for image in SAMPLE_IMAGES]
    _assert_same_maps(model_store.files(ZOO[name]), _blob(images, 416))


# Every layer kind of the full yolov3 and yolov4 cfgs, small, with two yolo heads of 2 classes. Like theirs
# (608), its cfg names another size (96) than the one it is served at (64).
NETWORK = """
[net]
width=96
height=96
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=mish

[shortcut]
from=-3
activation=linear

[route]
layers=-1
groups=2
group_id=1

[maxpool]
size=5
stride=1

[route]
layers=-2

[maxpool]
size=9
stride=1

[route]
layers=-1,-3,-4

[maxpool]
size=2
stride=2

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=3,4,5
anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=2
num=6
scale_x_y=1.05

[route]
layers=-3

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,4

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=2
num=6
"""
# (filters, input channels, size, batch norm) of each convolution above, in order.
CONVOLUTIONS = [(8, 3, 3, True), (16, 8, 3, True), (8, 16, 1, True), (16, 8, 3, True), (21, 24, 1, False),
                (8, 24, 1, True), (21, 24, 1, False)]


def _weights(seed: int = 7) -> bytes:
    """A Darknet weights file for NETWORK: header 0.2.0, images seen, then each convolution's values."""
    rng = np.random.default_rng(seed)
    parts = [struct.pack("<3iq", 0, 2, 0, 0)]
    for filters, channels, size, batch_norm in CONVOLUTIONS:
        parts.append(rng.normal(0, 0.1 if batch_norm else 1.0, filters).astype("<f4").tobytes())  # biases: a head's
        # spread its sigmoids over (0, 1), where a wrong scale_x_y shows
        if batch_norm:  # scales, means, variances
            parts += [rng.uniform(0.5, 1.5, filters).astype("<f4").tobytes(),
                      rng.normal(0, 0.1, filters).astype("<f4").tobytes(),
                      rng.uniform(0.5, 1.5, filters).astype("<f4").tobytes()]
        fan_in = channels * size * size
        parts.append(rng.normal(0, 1 / np.sqrt(fan_in), filters * fan_in).astype("<f4").tobytes())
    return b"".join(parts)


@pytest.fixture()
def network(tmp_path) -> ModelFiles:
    cfg, weights = tmp_path / "tiny-net.cfg", tmp_path / "tiny-net.weights"
    cfg.write_text(NETWORK)
    weights.write_bytes(_weights())
    return ModelFiles(cfg, weights, tmp_path / "tiny-net.names")


def test_every_layer_kind_of_the_full_models_gives_opencvs_maps_at_the_size_served_not_the_cfgs(network):
    images = [cv2.imread(str(DATA / image)) for image in ("dog_person_horse.jpg", "fruits.jpg")]
    _assert_same_maps(network, _blob(images, 64))


def test_the_same_files_convert_to_the_same_bytes_in_any_process(network):
    here = convert_files(network.cfg, network.weights, 64)
    elsewhere = subprocess.run(
        [sys.executable, "-c", "import hashlib, sys; from pathlib import Path; from yoso.model.onnx_file import "
         "convert_files; print(hashlib.sha256(convert_files(Path(sys.argv[1]), Path(sys.argv[2]), 64)).hexdigest())",
         str(network.cfg), str(network.weights)], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert hashlib.sha256(here).hexdigest() == elsewhere


def test_the_file_names_its_sources_and_is_written_atomically_beside_them(network):
    target = write_onnx(network.cfg, network.weights, 64)
    assert target == onnx_path(network.cfg) == network.cfg.with_name("tiny-net.onnx")
    assert sorted(path.name for path in target.parent.iterdir()) == ["tiny-net.cfg", "tiny-net.onnx",
                                                                     "tiny-net.weights"]  # no .part left
    props = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert props["darknet_weights_sha256"] == hashlib.sha256(network.weights.read_bytes()).hexdigest()
    assert props["input_size"] == "64"
    assert onnx_on_disk(network.cfg, network.weights, 64) == target.read_bytes()
    written = target.stat().st_mtime_ns
    assert write_onnx(network.cfg, network.weights, 64) == target and target.stat().st_mtime_ns == written


def test_a_file_that_is_not_the_conversion_of_the_files_beside_it_is_not_used(network, tmp_path):
    write_onnx(network.cfg, network.weights, 64)
    assert onnx_on_disk(network.cfg, network.weights, 96) is None  # made for another input size
    network.weights.write_bytes(_weights(seed=8))  # new weights, same size: the old file no longer applies
    assert onnx_on_disk(network.cfg, network.weights, 64) is None
    assert onnx_for(network.cfg, network.weights, 64) == convert_files(network.cfg, network.weights, 64)
    onnx_path(network.cfg).write_bytes(b"not an onnx file")
    assert onnx_on_disk(network.cfg, network.weights, 64) is None
    write_onnx(network.cfg, network.weights, 64)
    assert onnx_on_disk(network.cfg, network.weights, 64) is not None


def test_weights_one_value_short_or_long_are_refused(network):
    weights = network.weights.read_bytes()
    with pytest.raises(ConversionError, match="ends after"):
        convert(NETWORK, weights[:-4])
    with pytest.raises(ConversionError, match="holds .* values; the cfg uses"):
        convert(NETWORK, weights + b"\0\0\0\0")
    with pytest.raises(ConversionError, match="too short to hold a Darknet header"):
        convert(NETWORK, weights[:16])


@pytest.mark.parametrize(("cfg", "message"), [
    (NETWORK.replace("[upsample]", "[crop]"), r"\[crop\], which this converter does not write"),
    (NETWORK.replace("activation=mish", "activation=selu"), "activation 'selu'"),
    (NETWORK.replace("filters=21", "filters=20"), "takes 20 channels"),
    ("[convolutional]\nfilters=8\n", "does not start with a \\[net\\]"),
    (NETWORK.replace("classes=2\nnum=6\n", "num=6\n"), "malformed"),
    (NETWORK.replace("layers=-1,4", "layers=-1,-40"), "names layer -40, which is not an earlier layer"),
    (NETWORK.replace("scale_x_y=1.05", "new_coords=1"), "new_coords or nms_threshold"),
])
def test_a_network_it_cannot_write_exactly_is_refused_with_the_reason(network, cfg, message):
    with pytest.raises(ConversionError, match=message):
        convert(cfg, network.weights.read_bytes())


def test_yoso_models_convert_writes_the_onnx_of_a_users_model(network, tmp_path):
    version = tmp_path / "yolo-mine" / "2"
    version.mkdir(parents=True)
    cfg = shutil.copy(network.cfg, version / "yolo-mine.cfg")
    shutil.copy(network.weights, version / "yolo-mine.weights")
    result = CliRunner().invoke(yoso_cli, ["models", "convert", str(cfg)])
    assert result.exit_code == 0, result.output
    assert (version / "yolo-mine.onnx").read_bytes() == convert_files(Path(cfg), version / "yolo-mine.weights", 416)
    refused = CliRunner().invoke(yoso_cli, ["models", "convert", str(network.cfg), "--weights", str(cfg)])
    assert refused.exit_code != 0 and "cannot convert" in str(refused.exception or refused.output)

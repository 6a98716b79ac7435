"""The plug-in examples in examples/, as a user would serve them.

What is real: a real `python -m yoso.server` process with one worker, serving each example by
YOSO_MODEL_CLASS and YOSO_MODEL_ARGS alone; real OpenCV DNN running a real ONNX graph that the test builds
with the `onnx` package in the Ultralytics layout (its answer is a constant, so the boxes are known: four
candidates, one a near duplicate that NMS must remove); a real scikit-learn classifier fitted on the iris data
sklearn bundles, saved with joblib. In-process checks run the steps through yoso's own runner (LoadedModel),
as a worker does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from examples.sklearn_iris import IrisClassifier
from examples.ultralytics_onnx import UltralyticsOnnx
from tests.support import LiveServer, file_field, http_client, scrape, serving, value
from yoso import Detection
from yoso.serving.runner import LoadedModel

SIDE = 64  # the export's input: SIDE x SIDE
# The export's constant answer, one candidate a row: cx, cy, w, h (input pixels), then the cat and dog scores.
CANDIDATES = [
    [32, 32, 32, 16, 0.90, 0.05],  # a cat in the middle
    [33, 32, 32, 16, 0.80, 0.10],  # the same cat again, a pixel to the right: NMS removes it
    [32, 32, 32, 16, 0.05, 0.60],  # a dog in the cat's place: another class, so NMS keeps it
    [16, 36, 16, 8, 0.10, 0.30],  # a faint dog on the left
]
WIDE = (100, 200)  # height, width: fitted at scale 0.32 with 16 grey rows above and below
CAT_BOX_WIDE = (50, 25, 150, 75)  # the middle candidate back on the wide image
FAINT_DOG_BOX_WIDE = (25, 50, 75, 75)


def ultralytics_export(path: Path, batch: int | str = "batch") -> Path:
    """An ONNX graph shaped like `yolo export format=onnx`'s (dynamic batch unless `batch` is a number), whose
    answer is CANDIDATES whatever the image: a constant plus 0 x the image's mean, so that it reads its input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constant = np.array(CANDIDATES, np.float32).T[None]  # 1 x (4 + 2) x 4
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
         helper.make_node("Reshape", ["mean", "per_image"], ["mean_per_image"]),
         helper.make_node("Mul", ["mean_per_image", "zero"], ["nothing"]),
         helper.make_node("Add", ["nothing", "candidates"], ["output0"])],
        "ultralytics_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, *constant.shape[1:]])],
        [numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "per_image"),
         numpy_helper.from_array(np.array(0, np.float32), "zero"),
         numpy_helper.from_array(constant, "candidates")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    helper.set_model_props(model, {"names": "{0: 'cat', 1: 'dog'}", "imgsz": f"[{SIDE}, {SIDE}]"})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def loaded(detector: UltralyticsOnnx) -> LoadedModel:
    detector.setup("cpu")
    return LoadedModel(detector.name, detector)


class BatchSizes:
    """A network that notes how many images each of its runs is given."""

    def __init__(self, net: cv2.dnn.Net) -> None:
        self.net, self.batch_sizes = net, []

    def setInput(self, blob: np.ndarray) -> None:  # noqa: N802 - OpenCV's spelling
        self.batch_sizes.append(len(blob))
        self.net.setInput(blob)

    def forward(self) -> np.ndarray:
        return self.net.forward()


def boxes(found: list[Detection]) -> list[tuple[str, tuple[int, ...]]]:
    return sorted((d.label, tuple(d.box)) for d in found)


def jpeg(height: int, width: int) -> bytes:
    return cv2.imencode(".jpg", np.full((height, width, 3), 90, np.uint8))[1].tobytes()


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ultralytics_export(tmp_path_factory.mktemp("onnx") / "best.onnx")


# --- the Ultralytics ONNX detector, in process -----------------------------------------------------------------

def test_labels_come_from_the_names_ultralytics_writes_into_the_metadata(export):
    detector = UltralyticsOnnx(path=str(export), input_size=SIDE)
    detector.setup("cpu")
    assert detector.labels == ["cat", "dog"]


def test_labels_given_in_the_arguments_win_over_the_metadata(export):
    model = loaded(UltralyticsOnnx(path=str(export), labels=["tabby", "terrier"], input_size=SIDE))
    found, _ = model.detect([np.zeros((*WIDE, 3), np.uint8)], confidence=0.5)
    assert sorted(d.label for d in found[0]) == ["tabby", "terrier"]


@pytest.mark.parametrize(("shape", "expected_box"), [(WIDE, CAT_BOX_WIDE), ((200, 100), (0, 75, 100, 125))],
                         ids=["wide", "tall"])
def test_boxes_map_back_through_the_letterbox_onto_the_original_image(export, shape, expected_box):
    model = loaded(UltralyticsOnnx(path=str(export), input_size=SIDE))
    found, _ = model.detect([np.zeros((*shape, 3), np.uint8)], confidence=0.5)
    assert boxes(found[0]) == [("cat", expected_box), ("dog", expected_box)]


def test_nms_removes_the_near_duplicate_of_a_class_and_keeps_the_other_class_in_its_place(export):
    model = loaded(UltralyticsOnnx(path=str(export), input_size=SIDE))
    found, _ = model.detect([np.zeros((*WIDE, 3), np.uint8)], confidence=0.5)
    assert sorted((d.label, round(d.confidence, 2)) for d in found[0]) == [("cat", 0.9), ("dog", 0.6)]


def test_the_request_threshold_decides_which_candidates_are_reported(export):
    model = loaded(UltralyticsOnnx(path=str(export), input_size=SIDE))
    found, _ = model.detect([np.zeros((*WIDE, 3), np.uint8)], confidence=0.2)
    assert boxes(found[0]) == [("cat", CAT_BOX_WIDE), ("dog", FAINT_DOG_BOX_WIDE), ("dog", CAT_BOX_WIDE)]


def test_an_image_without_a_candidate_above_the_threshold_has_no_detections(export):
    model = loaded(UltralyticsOnnx(path=str(export), input_size=SIDE))
    found, _ = model.detect([np.zeros((*WIDE, 3), np.uint8)], confidence=0.95)
    assert found == [[]]


@pytest.mark.parametrize(("batch", "batches"), [("batch", True), (1, False)], ids=["dynamic", "fixed"])
def test_a_batch_of_images_runs_whole_when_the_batch_is_dynamic_and_image_by_image_when_fixed(
        tmp_path, batch, batches):
    detector = UltralyticsOnnx(path=str(ultralytics_export(tmp_path / "best.onnx", batch)), input_size=SIDE)
    model = loaded(detector)
    detector.net = net = BatchSizes(detector.net)
    found, stages = model.detect([np.zeros((*WIDE, 3), np.uint8), np.zeros((200, 100, 3), np.uint8)], 0.5)
    assert net.batch_sizes == ([2] if batches else [1, 1])
    assert [len(image) for image in found] == [2, 2]
    assert [stage for stage, _ in stages] == ["preprocess", "predict", "postprocess"]


def test_an_input_size_other_than_the_exported_one_fails_at_setup_saying_which_to_set(export):
    with pytest.raises(ValueError, match=f'"input_size": {SIDE}'):
        UltralyticsOnnx(path=str(export)).setup("cpu")  # the default, 640


# --- the Ultralytics ONNX detector, served ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_server(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"YOSO_MODEL_CLASS": "examples.ultralytics_onnx:UltralyticsOnnx", "YOSO_WORKERS": "1",
           "YOSO_MODEL_ARGS": json.dumps({"path": str(export), "input_size": SIDE})}
    yield from serving(env, tmp_path_factory.mktemp("onnx_server"))


@pytest.fixture()
def onnx_client(onnx_server: LiveServer) -> Iterator[httpx.Client]:
    yield from http_client(onnx_server)


def test_served_detect_answers_the_boxes_on_the_uploaded_image(onnx_client):
    response = onnx_client.post("/detect", params={"confidence": 0.2}, files=file_field(jpeg(*WIDE)))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model"], answer["width"], answer["height"]) == ("ultralytics-onnx", 200, 100)
    found = sorted((d["label"], tuple(d["box"])) for d in answer["detections"])
    assert found == [("cat", CAT_BOX_WIDE), ("dog", FAINT_DOG_BOX_WIDE), ("dog", CAT_BOX_WIDE)]


def test_served_count_objects_counts_by_the_metadata_labels(onnx_client):
    response = onnx_client.post("/count_objects", params={"model": "ultralytics-onnx"}, files=file_field(jpeg(*WIDE)))
    assert response.status_code == 200, response.text
    assert response.json() == {"items": {"cat": 1, "dog": 1}}
    [listed] = onnx_client.get("/models").json()["models"]
    assert listed["classes"] == 2  # read from the file in setup, reported by the workers


def test_served_predict_draws_the_boxes_on_a_jpeg_of_the_same_size(onnx_client):
    response = onnx_client.post("/predict", files=file_field(jpeg(*WIDE)))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    drawn = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == (*WIDE, 3)
    assert not np.all(drawn == drawn[0, 0])  # something was drawn on the flat grey


def test_served_metrics_time_the_three_steps_and_count_the_images(onnx_client):
    assert onnx_client.post("/detect", files=file_field(jpeg(*WIDE))).status_code == 200
    samples = scrape(onnx_client)
    for stage in ("preprocess", "predict", "postprocess"):
        assert value(samples, "yoso_stage_seconds_count", model="ultralytics-onnx", stage=stage) >= 1, stage
    assert value(samples, "yoso_images_processed_total", model="ultralytics-onnx", endpoint="/detect") >= 1


# --- the scikit-learn classifier ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[list[float]], list[str], Path]:
    """Flowers to ask about, the species a classifier fitted here names them, and that classifier's file."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    classifier = LogisticRegression(max_iter=1000).fit(data.data, data.target)
    flowers = data.data[::7]  # all three species, some near the boundaries
    path = tmp_path_factory.mktemp("iris") / "iris.joblib"
    joblib.dump(classifier, path)
    return flowers.tolist(), data.target_names[classifier.predict(flowers)].tolist(), path


@pytest.fixture(scope="module")
def iris_server(iris, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"YOSO_MODEL_CLASS": "examples.sklearn_iris:IrisClassifier", "YOSO_WORKERS": "1",
           "YOSO_MODEL_ARGS": json.dumps({"path": str(iris[2])})}
    yield from serving(env, tmp_path_factory.mktemp("iris_server"))


@pytest.fixture()
def iris_client(iris_server: LiveServer) -> Iterator[httpx.Client]:
    yield from http_client(iris_server)


def test_iris_probabilities_name_each_species_and_pick_the_likeliest(iris):
    flowers, species, path = iris
    classifier = IrisClassifier(path=str(path), probabilities=True)
    classifier.setup("cpu")
    predictions = classifier.predict(flowers)
    assert [p["label"] for p in predictions] == species
    assert all(set(p["probabilities"]) == {"setosa", "versicolor", "virginica"} for p in predictions)
    assert all(max(p["probabilities"], key=p["probabilities"].get) == p["label"] for p in predictions)


def test_served_iris_predicts_the_species_the_fitted_classifier_does(iris, iris_client):
    flowers, species, _ = iris
    response = iris_client.post("/v1/models/iris:predict", json={"instances": flowers})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": species}


def test_served_iris_answers_tritonclient_with_the_tensors_it_declares(iris, iris_server):
    import numpy as np
    import tritonclient.http as triton

    flowers, species, _ = iris
    client = triton.InferenceServerClient(iris_server.url.removeprefix("http://"))
    metadata = client.get_model_metadata("iris")
    assert (metadata["inputs"], metadata["outputs"]) == ([{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                                                         [{"name": "label", "datatype": "BYTES", "shape": [-1]}])
    features = triton.InferInput("features", [len(flowers), 4], "FP32")
    features.set_data_from_numpy(np.array(flowers, dtype=np.float32))
    result = client.infer("iris", [features])
    assert [label.decode() for label in result.as_numpy("label")] == species
    wrong = triton.InferInput("features", [1, 4], "FP64")
    wrong.set_data_from_numpy(np.array(flowers[:1], dtype=np.float64))
    with pytest.raises(triton.InferenceServerException, match="'features' is FP32, not FP64"):
        client.infer("iris", [wrong])


@pytest.mark.parametrize("body", [b"sepal, petal", b'{"instances": []}', b'{"flowers": [[5.1, 3.5, 1.4, 0.2]]}'],
                         ids=["not-json", "no-instances", "no-instances-key"])
def test_served_iris_answers_a_bad_body_with_a_json_error_that_says_what_to_send(iris_client, body):
    response = iris_client.post("/v1/models/iris:predict", content=body,
                                headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "instances" in response.json()["detail"]


def test_served_iris_answers_rows_of_the_wrong_length_with_422_saying_what_it_takes(iris_client):
    response = iris_client.post("/v1/models/iris:predict", json={"instances": [[5.1, 3.5]]})
    assert response.status_code == 422
    assert "model iris cannot take this input: each instance is a row of 4 numbers" in response.json()["detail"]


def test_served_iris_refuses_an_image_with_422_pointing_at_its_route(iris_client):
    response = iris_client.post("/detect", files=file_field(jpeg(*WIDE)))
    assert response.status_code == 422
    assert "/v1/models/iris:predict" in response.json()["detail"]


def test_served_iris_records_its_batch_sizes_in_metrics(iris, iris_client):
    assert iris_client.post("/v1/models/iris:predict", json={"instances": iris[0]}).status_code == 200
    samples = scrape(iris_client)
    assert value(samples, "yoso_model_statistic_count", model="iris", statistic="batch_instances") >= 1
    assert value(samples, "yoso_model_statistic_sum", model="iris", statistic="batch_instances") >= len(iris[0])
    assert value(samples, "yoso_instances_processed_total", model="iris") >= len(iris[0])

"""A scikit-learn classifier saved with joblib, served as a JSON model (KServe V1, and the Open Inference
Protocol with the tensors it declares: `features` FP32 [N, 4] in, `label` BYTES [N] out).

    YOSO_MODEL_CLASS=examples.sklearn_iris:IrisClassifier \
    YOSO_MODEL_ARGS='{"path": "iris.joblib"}' python -m yoso.server

    curl -d '{"instances": [[5.1, 3.5, 1.4, 0.2]]}' localhost:8000/v1/models/iris:predict
    -> {"predictions": ["setosa"]}

Each instance is one row of features; each prediction its class name, or with `"probabilities": true` in
YOSO_MODEL_ARGS, {"label": ..., "probabilities": {class: p, ...}}. The file loads in `setup`, in each worker.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import yoso

IRIS_SPECIES = ("setosa", "versicolor", "virginica")  # what sklearn's iris targets 0, 1, 2 stand for


class IrisClassifier(yoso.Model):
    """`path`: a fitted classifier saved with `joblib.dump`; `class_names`: what its classes stand for, in the
    order of its `classes_` (default: the iris species); `probabilities`: answer each class's probability too."""

    name = "iris"
    inputs = (yoso.Tensor("features", "FP32", (-1, 4)),)  # over /v2 and gRPC: row i is instance i
    outputs = (yoso.Tensor("label", "BYTES", (-1,)),)  # prediction i is row i (with probabilities: JSON text)

    def __init__(self, path: str, class_names: Sequence[str] = IRIS_SPECIES, probabilities: bool = False) -> None:
        self.path = path
        self.class_names = list(class_names)
        self.probabilities = probabilities

    def setup(self, device: str) -> None:
        import joblib  # in the worker only: the server process imports this module just to read `name`

        self.classifier = joblib.load(self.path)

    def predict(self, instances: list[Any]) -> list[Any]:
        yoso.record("batch_instances", len(instances))  # how full the scheduler's batches run, in /metrics
        try:
            if not self.probabilities:
                return [self._name(value) for value in self.classifier.predict(instances)]
            probabilities = self.classifier.predict_proba(instances)
        except ValueError as error:  # rows of the wrong length, or not numbers: that request's 422
            raise yoso.InputError(f"each instance is a row of {self.classifier.n_features_in_} numbers ({error})")
        names = [self._name(value) for value in self.classifier.classes_]
        return [{"label": names[row.argmax()], "probabilities": dict(zip(names, row.tolist()))}
                for row in probabilities]

    def _name(self, value: Any) -> str:
        """A class value as its name: a number indexes `class_names` (iris's targets are 0, 1, 2); a string
        (a classifier fitted on names) is its own."""
        try:
            return self.class_names[operator.index(value)]
        except TypeError:
            return str(value)

"""yoso: you only serve once. Object detectors, and any model you bring as a class, served over HTTP.

The plug-in contract (yoso.contract): subclass `yoso.Detector` (images in, `yoso.Detection`s out) or
`yoso.Model` (JSON in, JSON out), refuse an input with `yoso.InputError`, and record figures of your own with
`yoso.record`; declare a JSON model's tensors for the Open Inference Protocol with `yoso.Tensor`.
"""

from yoso.contract import Detection, Detector, InputError, Model, Tensor, record

__version__ = "1.0.0"
__all__ = ["Detection", "Detector", "InputError", "Model", "Tensor", "record", "__version__"]

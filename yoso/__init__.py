"""yoso: you only serve once. YOLO object detection over HTTP."""

__version__ = "1.0.0"

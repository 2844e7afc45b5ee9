"""ASIF: side-information fusion for sequential recommendation, on TensorFlow Recommenders."""
from asif_tf import _env  # noqa: F401  (must precede any TensorFlow import)

__version__ = "0.1.0"

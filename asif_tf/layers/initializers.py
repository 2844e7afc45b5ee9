"""Weight initializers."""
from asif_tf import _env  # noqa: F401
import tensorflow as tf


def truncated_normal(stddev: float) -> tf.keras.initializers.Initializer:
    """A fresh TruncatedNormal per weight: tf.keras returns identical values from one unseeded
    initializer instance called twice, which would e.g. make a layer's query and key equal."""
    return tf.keras.initializers.TruncatedNormal(stddev=stddev)

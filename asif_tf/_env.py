"""Process environment that must be in place before TensorFlow is first imported.

TFRS 0.7.x is written against Keras 2; TensorFlow >= 2.16 ships Keras 3 as
``tf.keras`` unless ``TF_USE_LEGACY_KERAS=1`` is set *before* TensorFlow is
imported, in which case ``tf.keras`` resolves to the ``tf_keras`` package.
Every top-level package of this project imports this module first, so users
never have to set the variable themselves.
"""
import os

# tf.keras is resolved lazily on first attribute access, so setting the variable
# still works when TensorFlow itself was imported earlier (checked with TF 2.21).
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ INFO/WARNING logs drown the progress bar; users can override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

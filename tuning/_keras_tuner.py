"""KerasTuner, imported so that it drives tf.keras (``tf_keras``) models.

KerasTuner picks its Keras at import time from ``import keras``: with Keras 3 installed
(TensorFlow >= 2.16 depends on it) it binds itself to Keras 3 and then rejects our
tf.keras models ("Expected the model-building function ... to return a valid Keras Model
instance"; keras-team/keras-tuner#1039), whatever ``TF_USE_LEGACY_KERAS`` says. While it is
being imported ``sys.modules["keras"]`` is pointed at ``tf_keras``; ``tf_keras`` has no
``keras.version()``, so KerasTuner selects its tf.keras path, which then imports
``tensorflow.keras`` (= ``tf_keras`` under ``TF_USE_LEGACY_KERAS=1``). The swap is undone
right after, so the rest of the process still sees the real ``keras``.

This is the only place that imports ``keras_tuner``; everything else uses ``kt`` from here.
"""
from asif_tf import _env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

import sys

import tf_keras


def _import_keras_tuner():
    if "keras_tuner" in sys.modules:
        module = sys.modules["keras_tuner"]
    else:
        missing = object()
        saved = sys.modules.get("keras", missing)
        sys.modules["keras"] = tf_keras
        try:
            import keras_tuner as module
        finally:
            if saved is missing:
                sys.modules.pop("keras", None)
            else:
                sys.modules["keras"] = saved
    from keras_tuner.src.backend import config
    if config.multi_backend():
        raise ImportError("keras_tuner was imported before tuning._keras_tuner and is bound to Keras 3, so it "
                          "would reject the tf.keras models of asif_tf; import tuning._keras_tuner (or "
                          "tuning.search) before anything imports keras_tuner")
    return module


kt = _import_keras_tuner()

"""beam_pipelines package of asif."""
from asif_tf import _env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

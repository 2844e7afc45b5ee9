"""The KerasTuner HyperModel: the model of ``asif_tf.train``, built from a searched config.

``build`` and ``fit`` follow ``asif_tf.train.run`` step for step (seed, model from
``registry.build_model``, Adam, variables created before training, the same tf.data
pipelines created after the seed is set), so a trial and ``python -m asif_tf.train
--config best_config.json`` with the same seed and epochs reach the same validation NDCG@20.
"""
from __future__ import annotations

from typing import Dict, Sequence

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.config import ExperimentConfig
from asif_tf.data import input as data_input
from asif_tf.models import registry
from asif_tf.train import SELECTION_METRIC, build_variables
from tuning import space as space_lib
from tuning._keras_tuner import kt

OBJECTIVE = "val_" + SELECTION_METRIC


def objective() -> "kt.Objective":
    """Validation NDCG@20 from the project's full-ranking metric (``asif_tf.metrics``)."""
    return kt.Objective(OBJECTIVE, direction="max")


class RecommenderHyperModel(kt.HyperModel):
    """Builds and trains ``base`` with the hyper-parameters of ``params`` taken from ``hp``.

    ``data_dir`` is the preprocessed dataset; ``info`` its ``DatasetInfo`` (loaded once).
    """

    def __init__(self, base: ExperimentConfig, params: Sequence[space_lib.Param], data_dir: str,
                 info: data_input.DatasetInfo, **kwargs):
        super().__init__(name=f"{base.model.model}_hypermodel", tunable=True, **kwargs)
        self.base, self.params, self.data_dir, self.info = base, list(params), data_dir, info

    def declare_hyperparameters(self, hp) -> None:
        space_lib.declare(hp, self.params)

    def config(self, hp) -> ExperimentConfig:
        """The full experiment config of a trial."""
        values: Dict = space_lib.declare(hp, self.params)
        return space_lib.apply(self.base, self.params, values)

    def build(self, hp):
        cfg = self.config(hp)
        # Same order as asif_tf.train.run: seed, precision policy, model, optimizer, variables.
        tf.keras.utils.set_random_seed(cfg.train.seed)
        tf.keras.mixed_precision.set_global_policy("mixed_float16" if cfg.train.mixed_precision else "float32")
        model = registry.build_model(cfg, self.info)
        optimizer = tf.keras.optimizers.Adam(cfg.train.learning_rate)
        model.compile(optimizer=optimizer)
        build_variables(model, optimizer)
        return model

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        """Trains on the train split, validates on the valid split every epoch; stops a trial
        after ``train.patience`` epochs without a better validation NDCG@20. KerasTuner's
        ``epochs``/``initial_epoch`` (Hyperband) take precedence over ``train.epochs``."""
        cfg = self.config(hp)
        d, t = cfg.data, cfg.train
        train_ds = data_input.train_dataset(self.data_dir, t.batch_size, d.max_seq_len, t.training_samples,
                                            bucket=t.bucket_by_length, seed=t.seed)
        valid_ds = data_input.eval_dataset(self.data_dir, "valid", t.eval_batch_size, d.max_seq_len,
                                           t.bucket_by_length)
        callbacks = list(callbacks or [])
        callbacks.append(tf.keras.callbacks.EarlyStopping(monitor=OBJECTIVE, mode="max", patience=t.patience))
        kwargs.setdefault("epochs", t.epochs)
        kwargs.setdefault("verbose", t.verbose)
        return model.fit(train_ds, validation_data=valid_ds, callbacks=callbacks, **kwargs)

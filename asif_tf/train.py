"""``python -m asif_tf.train``: train ASIF (or a baseline) and report full-ranking test metrics.

With no arguments it trains ASIF on the built-in generated dataset. ``--data DIR`` trains
on a directory written by ``python -m beam_pipelines.preprocess``. The run directory
holds config.json (the resolved config), checkpoints/, best/, logs/ (TensorBoard),
state.json and metrics.json; running again with the same ``--run_dir`` resumes from the
last completed epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional, Sequence

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.cli import HelpFormatter
from asif_tf.config import ExperimentConfig, TrainConfig, add_config_flags, config_from_args
from asif_tf.data import input as data_input
from asif_tf.data.builtin import ensure_builtin_dataset
from asif_tf.models import registry

# Fields that may change when a run is resumed or reused; everything else must match the saved config.
# The run directory is one: a moved or copied run is the same run.
RESUMABLE_FIELDS = {("train", "epochs"), ("train", "verbose"), ("train", "export_dir"), ("train", "patience"),
                    ("train", "run_dir")}
SELECTION_METRIC = "ndcg@20"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m asif_tf.train",
        description="Train ASIF or a baseline on a preprocessed dataset (default: the built-in one), "
                    "select the epoch with the best validation NDCG@20, and report full-ranking test "
                    "HR@10/20, NDCG@10/20 and MRR. Boolean switches take --flag / --no-flag.",
        formatter_class=HelpFormatter)
    parser.add_argument("--config", default=None,
                        help="JSON config file (as written to <run_dir>/config.json); flags override it.")
    add_config_flags(parser)
    return parser


def choose_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when there are several, else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


class _Run:
    """Paths and persistent state of one run directory."""

    def __init__(self, run_dir: str):
        self.dir = run_dir
        self.config = os.path.join(run_dir, "config.json")
        self.state = os.path.join(run_dir, "state.json")
        self.metrics = os.path.join(run_dir, "metrics.json")
        self.checkpoints = os.path.join(run_dir, "checkpoints")
        self.best = os.path.join(run_dir, "best")
        self.logs = os.path.join(run_dir, "logs")

    def read_state(self) -> dict:
        if os.path.exists(self.state):
            with open(self.state, encoding="utf-8") as f:
                return json.load(f)
        return {"epoch": 0, "best": -1.0, "best_epoch": 0, "wait": 0, "history": [], "seconds": 0.0,
                "stopped_early": False}

    def write_json(self, path: str, obj) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        os.replace(tmp, path)   # atomic: a kill never leaves half a file


def config_differences(saved: dict, cfg: ExperimentConfig) -> List[str]:
    """'section.field: old -> new' for each field where ``cfg`` differs from a run's saved config.json,
    leaving out RESUMABLE_FIELDS (the run directory among them) and fields the saved config predates
    (a field is added with a default that keeps the earlier behaviour)."""
    new = cfg.to_dict()
    return [f"{s}.{k}: {saved[s][k]!r} -> {v!r}" for s in new for k, v in new[s].items()
            if (s, k) not in RESUMABLE_FIELDS and k in saved.get(s, {}) and saved[s][k] != v]


def check_run_config(run_dir: str, cfg: ExperimentConfig) -> None:
    """Refuses (SystemExit) to resume or reuse the run in ``run_dir`` under a different config."""
    with open(_Run(run_dir).config, encoding="utf-8") as f:
        diffs = config_differences(json.load(f), cfg)
    if diffs:
        raise SystemExit(f"error: --run_dir {run_dir} holds a run with a different config ({'; '.join(diffs)}). "
                         "Use another --run_dir, or the same flags to resume it.")


class EpochCheckpoint(tf.keras.callbacks.Callback):
    """After each epoch: save model + optimizer, keep the best weights by validation NDCG@20,
    stop early after ``patience`` epochs without improvement, and persist that state."""

    def __init__(self, run: _Run, checkpoint: tf.train.Checkpoint, state: dict, patience: int):
        super().__init__()
        self.run, self.state, self.patience = run, state, patience
        self.latest = tf.train.CheckpointManager(checkpoint, run.checkpoints, max_to_keep=1)
        self.best = tf.train.CheckpointManager(checkpoint, run.best, max_to_keep=1)
        self._t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        value = float(logs.get("val_" + SELECTION_METRIC, -1.0))
        st = self.state
        elapsed = time.time() - self._t0
        st["epoch"] = epoch + 1
        st["seconds"] += elapsed
        # Each epoch's own wall time, so a cost summary can use the median and not count the
        # epoch a paused or core-sharing process stretched (st["seconds"] counts everything).
        st["history"].append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
                              "epoch_seconds": round(elapsed, 3)})
        if value > st["best"]:
            st.update(best=value, best_epoch=epoch + 1, wait=0)
            self.best.save(checkpoint_number=epoch + 1)
        else:
            st["wait"] += 1
        if st["wait"] >= self.patience:
            st["stopped_early"] = True
            self.model.stop_training = True
        self.latest.save(checkpoint_number=epoch + 1)
        self.run.write_json(self.run.state, st)   # written last: the checkpoint it names exists


def run_finished(state: dict, t: TrainConfig) -> bool:
    """Whether a run with this state.json has nothing left to train under TrainConfig ``t``:
    it reached ``t.epochs``, or it stopped early after at least ``t.patience`` epochs without
    improvement (a larger patience extends it)."""
    stopped = state.get("stopped_early", False) and state.get("wait", 0) >= t.patience
    return bool(stopped) or state.get("epoch", 0) >= t.epochs


def build_variables(model, optimizer) -> None:
    """Creates model and optimizer variables so a checkpoint restores into them immediately."""
    model(tf.zeros([1, 2], tf.int64), training=False)
    optimizer.build(model.trainable_variables)


def seeded_model(cfg: ExperimentConfig, data_dir: str):
    """(model, optimizer, dataset info) of a run before its first step: the seed set, the model built and
    compiled under the distribution strategy, its and the optimizer's variables created. The same seed gives
    the same weights, and then the same batches and dropout draws (``bench/probe.py`` relies on it)."""
    tf.keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    info = data_input.load_dataset_info(data_dir, cfg.data.attribute_field_list())
    with choose_strategy().scope():
        model = registry.build_model(cfg, info)
        optimizer = tf.keras.optimizers.Adam(cfg.train.learning_rate)
        model.compile(optimizer=optimizer)
        build_variables(model, optimizer)
    return model, optimizer, info


def run(cfg: ExperimentConfig) -> dict:
    cfg.validate()
    t_start = time.time()
    data_dir = cfg.data.data_dir or ensure_builtin_dataset(cfg.data.builtin_dir)
    run_dir = cfg.train.run_dir or os.path.join("runs", f"{cfg.model.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg.train.run_dir = run_dir
    run = _Run(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    resuming = os.path.exists(run.config)
    if resuming:
        check_run_config(run_dir, cfg)
    run.write_json(run.config, cfg.to_dict())
    state = run.read_state()

    model, optimizer, info = seeded_model(cfg, data_dir)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    latest = tf.train.latest_checkpoint(run.checkpoints)
    if latest and state["epoch"] > 0:
        checkpoint.restore(latest).assert_existing_objects_matched()
        print(f"Resuming {run_dir} from epoch {state['epoch']} ({latest}).", flush=True)

    d, t = cfg.data, cfg.train
    train_ds = data_input.train_dataset(data_dir, t.batch_size, d.max_seq_len, t.training_samples,
                                        bucket=t.bucket_by_length, seed=t.seed)
    valid_ds = data_input.eval_dataset(data_dir, "valid", t.eval_batch_size, d.max_seq_len, t.bucket_by_length)
    test_ds = data_input.eval_dataset(data_dir, "test", t.eval_batch_size, d.max_seq_len, t.bucket_by_length)

    if state["stopped_early"] and state["wait"] < t.patience:
        # A larger --patience extends a run that stopped early: it continues exactly where a run
        # with that patience from the start would have been (it had not stopped yet).
        print(f"Extending {run_dir}: stopped after {state['wait']} epochs without improvement, "
              f"patience is now {t.patience}.", flush=True)
        state["stopped_early"] = False
    done = run_finished(state, t)
    if not done:
        print(f"Training {cfg.model.model} on {data_dir}: {info.num_items} items, "
              f"{info.metadata['splits']['train']} training users, run dir {run_dir}", flush=True)
        callbacks = [EpochCheckpoint(run, checkpoint, state, t.patience),
                     tf.keras.callbacks.TensorBoard(run.logs, profile_batch=0)]
        model.fit(train_ds, validation_data=valid_ds, epochs=t.epochs, initial_epoch=state["epoch"],
                  callbacks=callbacks, verbose=t.verbose)

    best = tf.train.latest_checkpoint(run.best)
    if best:
        checkpoint.restore(best).expect_partial()
    results = {
        "valid": {k: float(v) for k, v in model.evaluate(valid_ds, return_dict=True, verbose=0).items()
                  if k != "aux_loss"},
        "test": {k: float(v) for k, v in model.evaluate(test_ds, return_dict=True, verbose=0).items()
                 if k != "aux_loss"},
        "epochs": state["epoch"], "best_epoch": state["best_epoch"], "stopped_early": state["stopped_early"],
        "seconds": round(state["seconds"], 2), "wall_seconds_this_invocation": round(time.time() - t_start, 2),
        "model": cfg.model.model, "data_dir": data_dir,
    }
    run.write_json(run.metrics, results)
    if t.export_dir:
        from asif_tf import export
        results["export_path"] = export.export_run(run_dir, t.export_dir, model=model, info=info, cfg=cfg)
    _print_results(results)
    return results


def _print_results(results: dict) -> None:
    names = ["hr@10", "hr@20", "ndcg@10", "ndcg@20", "mrr"]
    print(f"\nBest epoch {results['best_epoch']} of {results['epochs']} "
          f"({results['seconds']:.1f} s of training)")
    print("split  " + "  ".join(f"{n:>8}" for n in names))
    for split in ("valid", "test"):
        print(f"{split:<5}  " + "  ".join(f"{results[split][n]:8.4f}" for n in names))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args, args.config)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())

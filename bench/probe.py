"""Short training probes: does a setting train at all, and which override makes it?

Each variant trains one model for ``--steps`` steps in one of ``reproduce.py``'s settings (its model
size, optimiser and every-prefix batches with length buckets), from the same seed and therefore the
same initialisation and batch order, then ranks the validation targets against the whole catalogue.
Before training, on the first batch, it also measures the gradient norms of the two terms of the
training loss (``SequentialRetrievalModel.loss_terms``): the retrieval loss and the encoder's weighted
auxiliary loss (DIF-SR's attribute loss, ASIF's FA loss), over the variables that both reach.

Minutes per variant on 2 cores (a Beauty epoch of every-prefix batches of 256 is 520 steps, 5-7 min
at d=256), where a full run is hours: for telling a setting that learns from one that stays at
popularity level, not for results. A variant is ``name=value[;name=value...]`` of ModelConfig fields,
or of ``learning_rate`` / ``batch_size``; ``default`` is the setting as it is.

  python bench/probe.py --setting cpu256 --dataset beauty --model difsr --steps 520 \\
      --variants lambda_attr=0 lambda_attr=1 default "fusion=gate"
  python bench/probe.py --dataset mini=/path/to/s3rec_dir --model sasrec --steps 20 --variants default

Prints one row per variant (as each finishes) and, with ``--json``, writes them.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

BENCH = pathlib.Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import reproduce  # noqa: E402  (puts the repository on sys.path and sets TF_USE_LEGACY_KERAS)
import tensorflow as tf  # noqa: E402

from asif_tf import train  # noqa: E402
from asif_tf.config import MODELS  # noqa: E402
from asif_tf.data import input as data_input  # noqa: E402

TRAIN_FIELDS = {"learning_rate": float, "batch_size": int}


def parse_value(text: str):
    """'0' -> 0, '1e-4' -> 0.0001, 'true' -> True, 'gate' -> 'gate'."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_variant(spec: str) -> Tuple[Dict[str, object], Dict[str, object]]:
    """'lambda_attr=1;learning_rate=1e-4' -> (model overrides, train overrides); 'default' -> ({}, {})."""
    model, train = {}, {}
    if spec.strip() == "default":
        return model, train
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"variant {spec!r}: expected name=value[;name=value...] or 'default', got {item!r}")
        if name in TRAIN_FIELDS:
            train[name] = TRAIN_FIELDS[name](value)
        else:
            model[name] = parse_value(value)
    return model, train


def shared_variables(main: tf.Tensor, aux: tf.Tensor, tape: tf.GradientTape,
                     variables: Sequence[tf.Variable]) -> Tuple[float, float, int]:
    """Global gradient norms of ``main`` and ``aux`` over the variables both reach, and their count; where
    no variable reaches ``aux`` (an encoder without an auxiliary loss), ``main``'s over all it reaches, 0, 0."""
    g_main = tape.gradient(main, variables, unconnected_gradients=tf.UnconnectedGradients.NONE)
    g_aux = tape.gradient(aux, variables, unconnected_gradients=tf.UnconnectedGradients.NONE)
    both = [(a, b) for a, b in zip(g_main, g_aux) if a is not None and b is not None]
    if not both:
        return float(tf.linalg.global_norm([g for g in g_main if g is not None])), 0.0, 0
    return (float(tf.linalg.global_norm([tf.convert_to_tensor(a) for a, _ in both])),
            float(tf.linalg.global_norm([tf.convert_to_tensor(b) for _, b in both])), len(both))


def seeded_model_and_batches(cfg, data_dir: str):
    """The model and training batches ``asif_tf.train.run`` starts from: the same seed, weights and order."""
    model, _, _ = train.seeded_model(cfg, data_dir)
    d, t = cfg.data, cfg.train
    train_ds = data_input.train_dataset(data_dir, t.batch_size, d.max_seq_len, t.training_samples,
                                        bucket=t.bucket_by_length, seed=t.seed)
    return model, train_ds


def initial_gradients(cfg, data_dir: str) -> Tuple[float, float, float, float, int]:
    """(main loss, aux loss, their gradient norms over the variables both reach, how many) on the first batch."""
    model, train_ds = seeded_model_and_batches(cfg, data_dir)
    first = next(iter(train_ds))
    with tf.GradientTape(persistent=True) as tape:
        main, aux = model.loss_terms(first, training=True)
    return (float(main), float(aux), *shared_variables(main, aux, tape, model.trainable_variables))


def probe(cfg, data_dir: str, steps: int) -> dict:
    """Trains ``cfg`` for ``steps`` steps and evaluates it on the validation split."""
    main, aux, g_main, g_aux, shared = initial_gradients(cfg, data_dir)
    # Rebuilt from the seed, so that the gradient measurement (its dropout draws and its pass over the
    # batches) leaves the training run as the trainer's own first ``steps`` steps would be.
    model, train_ds = seeded_model_and_batches(cfg, data_dir)
    d, t = cfg.data, cfg.train
    valid_ds = data_input.eval_dataset(data_dir, "valid", t.eval_batch_size, d.max_seq_len, t.bucket_by_length)
    started = time.time()
    history = model.fit(train_ds.take(steps), verbose=0)
    trained = time.time() - started
    valid = model.evaluate(valid_ds, return_dict=True, verbose=0)
    return {"steps": steps, "init_main_loss": main, "init_aux_loss": aux,
            "init_grad_main": g_main, "init_grad_aux": g_aux, "shared_variables": shared,
            "train_loss": float(history.history["loss"][-1]), "train_aux_loss": float(history.history["aux_loss"][-1]),
            "valid": {k: float(v) for k, v in valid.items() if k != "aux_loss"},
            "train_seconds": round(trained, 1), "eval_seconds": round(time.time() - started - trained, 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", choices=MODELS, required=True, help="The model to probe.")
    add_dataset_arguments(parser, default_setting="cpu256")
    parser.add_argument("--steps", type=int, default=520,
                        help="Training steps per variant (520 is one Beauty epoch of every-prefix batches "
                             "of 256).")
    parser.add_argument("--variants", nargs="+", default=["default"],
                        help="Overrides, one variant each: name=value[;name=value...] of ModelConfig fields, "
                             "learning_rate or batch_size; 'default' for the setting itself.")
    parser.add_argument("--json", default=None, help="Write the rows to this JSON file.")
    return parser


def add_dataset_arguments(parser: argparse.ArgumentParser, default_setting: str) -> None:
    """The flags that pick the data and the setting a short run starts from (shared with profile_train.py)."""
    parser.add_argument("--dataset", default="beauty",
                        help="beauty or yelp (from --data_root, preprocessed once under --results_dir/data "
                             "as reproduce.py does), or NAME=DIR for any s3rec-format directory.")
    parser.add_argument("--setting", choices=reproduce.SETTINGS, default=default_setting,
                        help="reproduce.py's setting whose model size and optimiser the run starts from "
                             "(default: %(default)s).")
    parser.add_argument("--training_samples", choices=("sequence", "prefix"), default="prefix",
                        help="Training samples, as in reproduce.py (default: prefix, the paper's protocol).")
    parser.add_argument("--seed", type=int, default=reproduce.DEFAULT_SEED,
                        help="Seed (the same seed gives the same initialisation and batches).")
    parser.add_argument("--data_root", default=str(reproduce.REPO.parent / "shared" / "data"),
                        help="Directory holding beauty/ and yelp/ (default: ../shared/data).")
    parser.add_argument("--results_dir", default=str(reproduce.REPO / "bench" / "results"),
                        help="Where the preprocessed datasets are cached (data/, shared with reproduce.py).")


def dataset_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> "reproduce.Dataset":
    """The one dataset --dataset names."""
    datasets = reproduce.parse_datasets(args.dataset, pathlib.Path(args.data_root), "paper")
    if len(datasets) != 1:
        parser.error(f"--dataset: expected one dataset, got {args.dataset!r}")
    return datasets[0]


def variant_config(args: argparse.Namespace, parser: argparse.ArgumentParser, dataset: str, spec: str,
                   model_over: dict, train_over: dict):
    """The setting's config for args.model with one variant's overrides, validated (usage error if not)."""
    try:
        cfg = reproduce.model_config(reproduce.setting_config(args.setting, dataset), args.model, model_over)
    except ValueError as err:
        parser.error(f"variant {spec!r}: {err}")
    for name, value in train_over.items():
        setattr(cfg.train, name, value)
    cfg.train.training_samples, cfg.train.seed = args.training_samples, args.seed
    return cfg.validate()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    try:
        variants = [(spec, *parse_variant(spec)) for spec in args.variants]
    except ValueError as err:
        parser.error(f"--variants: {err}")
    ds = dataset_of(args, parser)
    configs = [(spec, variant_config(args, parser, ds.name, spec, model_over, train_over))
               for spec, model_over, train_over in variants]
    data_dir = reproduce.prepare_dataset(ds, pathlib.Path(args.results_dir).resolve())

    rows: List[dict] = []
    print(f"{args.model} on {ds.name}, setting {args.setting}, {args.steps} steps, seed {args.seed}", flush=True)
    print("| variant | init grad main / aux | train loss (aux) | valid H@20 | valid N@20 | train s |", flush=True)
    print("|---|---|---|---|---|---|", flush=True)
    for spec, cfg in configs:
        row = {"variant": spec, "model": args.model, "dataset": ds.name, "setting": args.setting,
               **probe(cfg, data_dir, args.steps)}
        rows.append(row)
        print(f"| {spec} | {row['init_grad_main']:.4g} / {row['init_grad_aux']:.4g} | {row['train_loss']:.3f} "
              f"({row['train_aux_loss']:.3f}) | {row['valid']['hr@20']:.4f} | {row['valid']['ndcg@20']:.4f} | "
              f"{row['train_seconds']:.0f} |", flush=True)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

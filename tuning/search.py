"""``python -m tuning.search``: KerasTuner search over the hyper-parameters of ASIF (or a baseline).

Every trial builds the model of ``asif_tf.train`` (``registry.build_model``) from a config
made of the searched hyper-parameters plus the ``asif_tf.train`` flags given on the command
line (those are fixed), trains it on the same tf.data pipelines with early stopping on the
validation NDCG@20, and reports the best validation NDCG@20 as the objective. Running the
same command again continues the search from ``<directory>/<project_name>``. At the end the
trials table is printed and written (results.md, results.json) and the best configuration
is written as best_config.json, which ``python -m asif_tf.train --config`` trains again.
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
from asif_tf.config import ExperimentConfig, add_config_flags, config_from_args
from asif_tf.data import input as data_input
from asif_tf.data.builtin import ensure_builtin_dataset
from asif_tf.train import choose_strategy
from tuning import report
from tuning import space as space_lib
from tuning._keras_tuner import kt
from tuning.hypermodel import OBJECTIVE, RecommenderHyperModel, objective

TUNERS = ("bayesian", "hyperband", "random")
DEFAULT_MAX_EPOCHS = 10
SEARCH_FILE = "search.json"
BEST_CONFIG_FILE = "best_config.json"
# Config fields that may differ when a search is resumed: they do not change what a trial computes.
RESUMABLE_FIELDS = {("train", "verbose"), ("train", "run_dir"), ("train", "export_dir")}
# (search.json also records max_trials, which may grow, and the typed flags, which base_config and
# the space already cover.)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.search",
        description="KerasTuner search over the hyper-parameters of ASIF or a baseline, maximising the "
                    "validation NDCG@20 (full ranking, asif_tf.metrics). Searched by default: "
                    + "; ".join(f"{p.name} = {p.describe()}" for p in space_lib.DEFAULT_SPACE.values())
                    + " (lambda_fa, num_bases and fusion for --model asif only). Any asif_tf.train flag "
                    "given below is fixed at that value and not searched. Re-running the same command "
                    "resumes the search; finished trials are not run again.",
        epilog="Example: python -m tuning.search --data data/beauty --tuner bayesian --max_trials 20 "
               "--max_epochs 30 --space hidden_size=64,128,256 --batch_size 512. The winner: "
               "python -m asif_tf.train --config <directory>/<project_name>/best_config.json. "
               "Several machines: see tuning/README.md (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, "
               "KERASTUNER_ORACLE_PORT).",
        formatter_class=HelpFormatter)
    g = parser.add_argument_group("search")
    g.add_argument("--tuner", choices=TUNERS, default="bayesian",
                   help="Search algorithm: Bayesian optimisation (Gaussian process), Hyperband (successive "
                        "halving of epochs across brackets), or random search.")
    g.add_argument("--max_trials", type=_positive_int, default=10,
                   help="Total number of trials of the search (bayesian, random); running again with a larger "
                        "value extends a finished search. Hyperband ignores it: its trials follow from "
                        "--max_epochs and --factor.")
    g.add_argument("--max_epochs", type=_positive_int, default=None,
                   help=f"Most epochs of one trial (the same as --epochs; default {DEFAULT_MAX_EPOCHS}); each "
                        "trial also stops after --patience epochs without a better validation NDCG@20. The "
                        "best config keeps this value as train.epochs.")
    g.add_argument("--factor", type=int, default=3,
                   help="Hyperband only: the reduction factor of epochs and trials between rounds.")
    g.add_argument("--space", action="append", default=[], metavar="NAME=SPEC",
                   help="Replace the range of one searched hyper-parameter: NAME=v1,v2,... (a choice), "
                        "NAME=lo:hi (a range; learning_rate and lambda_fa on a log scale) or NAME=lo:hi:step. "
                        "Repeatable. Searchable names: " + ", ".join(space_lib.DEFAULT_SPACE) + ".")
    g.add_argument("--directory", default="tuning_runs",
                   help="Where searches are kept: <directory>/<project_name> holds the oracle state, one "
                        "trial_* directory per trial, results.md, results.json and best_config.json.")
    g.add_argument("--project_name", default=None,
                   help="Name of this search inside --directory (default: <model>-<tuner>). The same name "
                        "resumes the search; a different search needs a different name or --overwrite.")
    g.add_argument("--overwrite", action="store_true",
                   help="Discard an existing search of the same --directory/--project_name and start over.")
    g.add_argument("--tuner_seed", type=int, default=None,
                   help="Seed of the search algorithm's sampling (default: --seed).")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="Write TensorBoard logs with the HParams dashboard to <project>/tensorboard.")
    add_config_flags(parser)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def fixed_fields(args: argparse.Namespace) -> List[str]:
    """The config fields the user typed a flag for ("model.hidden_size", ...)."""
    return sorted(k for k, v in vars(args).items() if "." in k and v is not None)


class RecordHistory:
    """Tuner mixin: writes each trial's per-epoch metrics and wall time to its trial directory
    (KerasTuner itself keeps the metrics of the best epoch only)."""

    def run_trial(self, trial, *args, **kwargs):
        start = time.time()
        results = super().run_trial(trial, *args, **kwargs)
        histories = [r for r in results if isinstance(r, tf.keras.callbacks.History)]
        if histories:
            h = histories[-1]
            record = {"epoch": list(h.epoch), "seconds": round(time.time() - start, 2),
                      **{k: [float(v) for v in vs] for k, vs in h.history.items()}}
            report.write_json(os.path.join(self.get_trial_dir(trial.trial_id), report.HISTORY_FILE), record)
        return results


def make_tuner(kind: str, hypermodel, *, max_trials: int, max_epochs: int, factor: int, seed: int,
               directory: str, project_name: str, overwrite: bool, strategy=None):
    base = {"bayesian": kt.BayesianOptimization, "hyperband": kt.Hyperband, "random": kt.RandomSearch}[kind]
    cls = type(base.__name__, (RecordHistory, base), {})
    common = dict(objective=objective(), seed=seed, directory=directory, project_name=project_name,
                  overwrite=overwrite, distribution_strategy=strategy)
    if kind == "hyperband":
        return cls(hypermodel, max_epochs=max_epochs, factor=factor, **common)
    return cls(hypermodel, max_trials=max_trials, **common)


def is_worker() -> bool:
    """A worker of a distributed search (KERASTUNER_TUNER_ID other than "chief"): trains trials and
    leaves the oracle and the report to the chief."""
    return bool(os.environ.get("KERASTUNER_ORACLE_IP")) and os.environ.get("KERASTUNER_TUNER_ID") != "chief"


def _check_resume(path: str, state: dict) -> None:
    """A search can only be resumed with what defines its trials unchanged."""
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    diffs = []
    for key, value in state.items():
        if key == "base_config":
            new, old = value, saved.get(key, {})
            diffs += [f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {v!r}" for s in new for k, v in new[s].items()
                      if (s, k) not in RESUMABLE_FIELDS and old.get(s, {}).get(k) != v]
        elif key not in ("max_trials", "fixed") and saved.get(key) != value:
            diffs.append(f"{key}: {saved.get(key)!r} -> {value!r}")
    if diffs:
        raise SystemExit(f"error: {os.path.dirname(path)} holds a search with different settings "
                         f"({'; '.join(diffs)}). Use the same flags to resume it, another --project_name, "
                         "or --overwrite to start over.")


class Setup:
    """What a search needs, resolved from the command line before any training starts."""

    def __init__(self, args: argparse.Namespace):
        self.t_start = time.time()
        cfg = config_from_args(args)
        if args.max_epochs is not None and vars(args).get("train.epochs") not in (None, args.max_epochs):
            raise ValueError(f"--max_epochs {args.max_epochs} and --epochs {cfg.train.epochs} disagree; give one")
        cfg.train.epochs = args.max_epochs or vars(args).get("train.epochs") or DEFAULT_MAX_EPOCHS
        fixed = fixed_fields(args)
        self.params = space_lib.resolve_space(cfg, fixed, space_lib.parse_space_overrides(args.space))
        # The flags the user typed, with their values, for the report ("model.hidden_size": 64).
        self.fixed = {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in fixed}
        if not self.params:
            raise ValueError("nothing to search: every searchable hyper-parameter is fixed by a flag")
        if args.tuner == "bayesian":
            try:
                import scipy  # noqa: F401  (KerasTuner's Gaussian process needs both)
                import sklearn  # noqa: F401
            except ImportError:
                raise ValueError("--tuner bayesian needs scipy and scikit-learn "
                                 "(pip install 'keras-tuner[bayesian]==1.4.8'); "
                                 "or use --tuner random / hyperband") from None
        self.cfg = cfg
        self.data_dir = cfg.data.data_dir or ensure_builtin_dataset(cfg.data.builtin_dir)
        fields = cfg.data.attribute_field_list()
        self.info = data_input.load_dataset_info(self.data_dir, fields)


def run(args: argparse.Namespace, setup: Optional[Setup] = None) -> dict:
    setup = setup or Setup(args)
    cfg, params, data_dir, info = setup.cfg, setup.params, setup.data_dir, setup.info
    hp_names = [p.name for p in params]

    project_name = args.project_name or f"{cfg.model.model}-{args.tuner}"
    project_dir = os.path.join(args.directory, project_name)
    seed = cfg.train.seed if args.tuner_seed is None else args.tuner_seed
    state = {"tuner": args.tuner, "max_trials": args.max_trials, "tuner_seed": seed, "objective": OBJECTIVE,
             "space": space_lib.space_to_dict(params), "fixed": setup.fixed, "base_config": cfg.to_dict(),
             "data_dir": os.path.abspath(data_dir)}
    if args.tuner == "hyperband":
        state["factor"] = args.factor
    search_file = os.path.join(project_dir, SEARCH_FILE)
    if args.overwrite or is_worker():
        pass    # the chief checks the settings; a worker's project directory is its own
    elif os.path.exists(search_file):
        _check_resume(search_file, state)
        print(f"Resuming the search in {project_dir}.", flush=True)
    os.makedirs(project_dir, exist_ok=True)

    strategy = choose_strategy()
    print(f"Search: {args.tuner} over {', '.join(f'{k} = {v}' for k, v in state['space'].items())}; "
          f"{cfg.model.model} on {data_dir} ({info.num_items} items); up to {cfg.train.epochs} epochs a trial; "
          f"{strategy.num_replicas_in_sync} replica(s).", flush=True)
    hypermodel = RecommenderHyperModel(cfg, params, data_dir, info)
    tuner = make_tuner(args.tuner, hypermodel, max_trials=args.max_trials, max_epochs=cfg.train.epochs,
                       factor=args.factor, seed=seed, directory=args.directory, project_name=project_name,
                       overwrite=args.overwrite, strategy=strategy)
    if not is_worker():
        report.write_json(search_file, state)   # after the tuner: --overwrite has cleared the directory

    callbacks = []
    if args.tensorboard:
        callbacks.append(tf.keras.callbacks.TensorBoard(os.path.join(project_dir, "tensorboard"), profile_batch=0))
    tuner.search(callbacks=callbacks, verbose=cfg.train.verbose)
    if is_worker():
        print("Worker done: the chief writes the results.", flush=True)
        return {}
    return finish(tuner, cfg, params, hp_names, project_dir, state, wall=time.time() - setup.t_start)


def finish(tuner, cfg: ExperimentConfig, params, hp_names: Sequence[str], project_dir: str, state: dict,
           wall: float) -> dict:
    rows = report.trial_rows(tuner.oracle, hp_names, tuner.get_trial_dir)
    completed = [r for r in rows if r["objective"] is not None]
    header = {"project_name": os.path.basename(project_dir), "tuner": state["tuner"],
              "model": cfg.model.model, "data_dir": state["data_dir"], "max_epochs": cfg.train.epochs,
              "space": state["space"], "fixed": state["fixed"], "trials": len(rows), "completed_trials": len(completed),
              "trial_seconds_total": round(sum(r["seconds"] or 0.0 for r in rows), 1),
              "wall_seconds_this_invocation": round(wall, 1)}
    result = {"project_dir": project_dir, "rows": rows, "header": header}
    if completed:
        best = completed[0]
        best_hp = tuner.oracle.get_trial(best["trial"]).hyperparameters.values
        winner = space_lib.apply(cfg, params, best_hp)
        if winner.data.data_dir:   # retraining may start from another working directory
            winner.data.data_dir = os.path.abspath(winner.data.data_dir)
        path = os.path.join(project_dir, BEST_CONFIG_FILE)
        report.write_json(path, winner.to_dict())
        header.update(best_trial=best["trial"], best_objective=best["objective"], best_config=path)
        result.update(best_config=path, best=best, config=winner)
    result["files"] = report.write_results(project_dir, rows, hp_names, header)
    print("\n" + report.markdown_table(rows, hp_names))
    if completed:
        print(f"Best: trial {best['trial']}, {OBJECTIVE} = {best['objective']:.4f}. Its config: {path}\n"
              f"Retrain and evaluate it: python -m asif_tf.train --config {path}")
    else:
        print("No trial completed; see the errors above.", file=sys.stderr)
    print(f"Results: {result['files']['markdown']}, {result['files']['json']}; "
          f"wall time {wall:.1f} s.", flush=True)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        setup = Setup(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    result = run(args, setup)
    return 0 if is_worker() or result.get("best_config") else 1


if __name__ == "__main__":
    sys.exit(main())

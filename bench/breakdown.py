"""Where do models differ? Full-ranking metrics of finished runs, per group of users.

    python bench/breakdown.py bench/results/runs/beauty-cpu/{asif,nova,difsr}

Each run directory (written by ``python -m asif_tf.train`` or bench/reproduce.py) is
restored at its best checkpoint (the epoch its test metrics come from; ``--checkpoint
last``: the last epoch trained) and evaluated on
one split with the trainer's own ranking code (``asif_tf.metrics``): every user's target
ranked against the whole catalogue. The users are then grouped

- by history length (the number of items the model sees, at most max_seq_len), and
- by the target's popularity: its occurrences in the training part (``item_counts`` of
  the dataset), so "rare" means the model saw few training examples of that item,

and HR@20 / NDCG@20 are printed per group and run, as a markdown table (``--json``
also writes the numbers). The "all users" row equals the run's metrics.json.
All runs must use the same dataset directory.

A second table compares every run with the first, on the same users: the difference of
the means (other - first) with a 95% paired bootstrap interval over users
(``--bootstrap`` resamples) and the share of resamples in which the other run is ahead.
It measures how much a difference could come from which users happen to be in the test
set; it does not measure run-to-run (seed) variation, which adds to it.

Several seeds of one model are given as one comma-joined argument:

    python bench/breakdown.py runs/beauty-cpu-prefix/asif,runs/beauty-cpu-prefix-seed1/asif \
        runs/beauty-cpu-prefix/nova,runs/beauty-cpu-prefix-seed1/nova

Such a model's per-user metrics are the mean over its runs (so its "all users" row is the
mean of the runs' metrics.json), the paired interval is over users of the seed-averaged
difference, and the paired table also lists the difference seed by seed (the i-th run of
each model against the i-th run of the first, when both have as many runs): how far the
single-run differences spread is the seed variation that the interval leaves out.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Dict, List, Optional, Sequence, Tuple

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from asif_tf import _env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np  # noqa: E402

# Group edges (inclusive lower bounds); the last group is open-ended.
LENGTH_EDGES = (1, 4, 8, 16, 32)
POPULARITY_EDGES = (0, 1, 5, 20, 100)


def bin_labels(edges: Sequence[int], unit: str) -> List[str]:
    out = []
    for lo, hi in zip(edges, list(edges[1:]) + [None]):
        if hi is None:
            out.append(f"{unit} >= {lo}")
        elif hi - lo == 1:
            out.append(f"{unit} = {lo}")
        else:
            out.append(f"{unit} {lo}-{hi - 1}")
    return out


def assign_bins(values: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """Index of the group of each value: int [b] in 0..len(edges)-1 (-1 below the first edge)."""
    return np.searchsorted(np.asarray(edges), values, side="right") - 1


def ranked_users(run_dir: str, split: str, checkpoint: str = "best"
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(history lengths int [u], targets int [u], 0-based ranks int [u], data_dir) of a run's best
    (or last) checkpoint."""
    import tensorflow as tf
    from asif_tf import export
    from asif_tf import metrics as ranking
    from asif_tf.data import input as data_input
    run = export.restore_run(run_dir, checkpoint)
    cfg, model = run.cfg, run.model
    items = model.item_embeddings()
    lengths, targets, ranks = [], [], []
    # No bucketing: the users come in file order, the same for every run of the dataset.
    for batch in data_input.eval_dataset(run.data_dir, split, cfg.train.eval_batch_size,
                                         cfg.data.max_seq_len, bucket=False):
        history = batch["history"]
        ranks.append(ranking.full_ranking_ranks(model(history, training=False), items, batch["target"]).numpy())
        lengths.append(tf.reduce_sum(tf.cast(history > 0, tf.int32), axis=1).numpy())
        targets.append(batch["target"].numpy())
    return np.concatenate(lengths), np.concatenate(targets), np.concatenate(ranks), run.data_dir


def per_user_metrics(ranks: np.ndarray) -> Dict[str, np.ndarray]:
    """HR@20 and NDCG@20 of each user (float [u]) from 0-based ranks, by the trainer's metric code."""
    from asif_tf import metrics as ranking
    values = ranking.metrics_from_ranks(ranks, ks=(20,))
    return {name: values[name].numpy().astype(np.float64) for name in ("hr@20", "ndcg@20")}


def group_metrics(per_user: Dict[str, np.ndarray], mask: np.ndarray) -> Dict[str, float]:
    """Mean of each per-user metric over the users in ``mask`` (bool [u])."""
    return {name: float(values[mask].mean()) for name, values in per_user.items()}


def paired_bootstrap(reference: np.ndarray, other: np.ndarray, num_resamples: int = 2000,
                     seed: int = 0, chunk: int = 100) -> Dict[str, float]:
    """Paired bootstrap over users of mean(other) - mean(reference).

    reference, other: float [u], one value per user, the same users in the same order.
    Returns the observed difference, the 2.5% and 97.5% percentiles of the resampled
    differences, and ``p_ahead``, the share of resamples in which ``other`` is ahead (> 0).
    """
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.ndim != 1 or reference.shape != other.shape or reference.size == 0:
        raise ValueError(f"expected two equal-length non-empty per-user vectors, got shapes "
                         f"{reference.shape} and {other.shape}")
    diff = other - reference                                                     # [u]
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, num_resamples, chunk):   # chunks keep the index matrix small
        idx = rng.integers(0, diff.size, size=(min(chunk, num_resamples - start), diff.size))
        means.append(diff[idx].mean(axis=1))
    means = np.concatenate(means)                                                # [num_resamples]
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diff.mean()), "ci_low": float(low), "ci_high": float(high),
            "p_ahead": float((means > 0).mean())}


def parse_run_groups(entries: Sequence[str]) -> List[List[str]]:
    """One list of run directories per model: each entry is one run directory, or several runs of
    one model (other seeds) joined by commas."""
    groups = [[part.strip() for part in entry.split(",") if part.strip()] for entry in entries]
    for entry, group in zip(entries, groups):
        if not group:
            raise SystemExit(f"error: {entry!r}: expected a run directory, or several joined by commas")
    return groups


def run_names(run_dirs: Sequence[str]) -> List[str]:
    """Short names of the runs for the tables: the directory's name, or parent/name where two
    runs share a name (the same model in two settings, e.g. runs/beauty-cpu{,-seed1}/asif)."""
    paths = [pathlib.Path(os.path.normpath(d)) for d in run_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def group_names(groups: Sequence[Sequence[str]]) -> List[str]:
    """Names of the models: ``run_names`` of each group's first run, with ' (k runs)' for a group of k > 1."""
    return [name if len(group) == 1 else f"{name} ({len(group)} runs)"
            for name, group in zip(run_names([g[0] for g in groups]), groups)]


def breakdown(run_dirs: Sequence, split: str = "test", checkpoint: str = "best",
              num_resamples: int = 2000) -> dict:
    """Per-group metrics of each model and paired intervals against the first.

    run_dirs: one entry per model: a run directory, or a list of run directories of the same
    model (seeds), whose per-user metrics are averaged.
    """
    from asif_tf.data import input as data_input
    model_runs = [[entry] if isinstance(entry, (str, os.PathLike)) else list(entry) for entry in run_dirs]
    runs, members, lengths, targets, data_dir = {}, {}, None, None, None
    for group, name in zip(model_runs, group_names(model_runs)):
        members[name] = []
        for run_dir in group:
            print(f"evaluating {run_dir} ({checkpoint} checkpoint) on {split} ...", file=sys.stderr, flush=True)
            lens, tgts, ranks, ddir = ranked_users(run_dir, split, checkpoint)
            if targets is None:
                lengths, targets, data_dir = lens, tgts, ddir
            elif ddir != data_dir or not np.array_equal(tgts, targets):
                raise SystemExit(f"error: {run_dir} uses dataset {ddir}, not {data_dir} like the first run: "
                                 "compare runs of one dataset")
            members[name].append(per_user_metrics(ranks))
        runs[name] = {metric: np.mean([m[metric] for m in members[name]], axis=0)
                      for metric in members[name][0]}
    counts = data_input.load_dataset_info(data_dir).item_counts
    popularity = counts[targets]
    groups = [("all users", np.ones_like(targets, bool))]
    for labels, values, edges in ((bin_labels(LENGTH_EDGES, "history length"), lengths, LENGTH_EDGES),
                                  (bin_labels(POPULARITY_EDGES, "target train count"), popularity,
                                   POPULARITY_EDGES)):
        bins = assign_bins(values, edges)
        groups += [(label, bins == i) for i, label in enumerate(labels)]
    rows = [{"group": label, "users": int(mask.sum()),
             "runs": {name: group_metrics(per_user, mask) for name, per_user in runs.items()}}
            for label, mask in groups if mask.any()]
    names = list(runs)
    paired = {name: {metric: paired_bootstrap(runs[names[0]][metric], runs[name][metric], num_resamples)
                     for metric in ("hr@20", "ndcg@20")}
              for name in names[1:]} if num_resamples > 0 else {}
    ref_members = members[names[0]]
    for name, stats in paired.items():
        if len(members[name]) > 1 and len(members[name]) == len(ref_members):
            for metric, metric_stats in stats.items():
                metric_stats["per_run"] = [float(m[metric].mean() - r[metric].mean())
                                           for m, r in zip(members[name], ref_members)]
    return {"split": split, "checkpoint": checkpoint, "data_dir": data_dir, "run_dirs": model_runs,
            "rows": rows, "reference": names[0], "num_resamples": num_resamples, "paired": paired}


def _shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies under it (tables get committed)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def markdown(result: dict) -> str:
    names = list(result["rows"][0]["runs"])
    head = "| group | users | " + " | ".join(f"{n} H@20 | {n} N@20" for n in names) + " |"
    lines = [f"Full ranking on {result['split']}, {result['checkpoint']} checkpoint of each run "
             f"({_shown_path(result['data_dir'])}).", "",
             head, "|" + "---|" * (2 + 2 * len(names))]
    for row in result["rows"]:
        cells = [f"{row['runs'][n]['hr@20']:.4f} | {row['runs'][n]['ndcg@20']:.4f}" for n in names]
        lines.append(f"| {row['group']} | {row['users']} | " + " | ".join(cells) + " |")
    if result.get("paired"):
        ref = result["reference"]
        per_run = any("per_run" in stats["ndcg@20"] for stats in result["paired"].values())
        lines += ["", f"Paired difference from {ref} over all users (other - {ref}), 95% bootstrap interval "
                      f"({result['num_resamples']} resamples of the users), share of resamples ahead of {ref}"
                  + (("; for models of several runs, of their per-user means, and 'per run': the i-th run "
                      "against the i-th run of " + ref) if per_run else "") + ":", "",
                  "| run | H@20 diff [95% CI] | ahead | N@20 diff [95% CI] | ahead |"
                  + (" N@20 diff per run |" if per_run else ""),
                  "|---|---|---|---|---|" + ("---|" if per_run else "")]
        for name, stats in result["paired"].items():
            cells = [f"{s['diff']:+.4f} [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}] | {s['p_ahead']:.0%}"
                     for s in (stats["hr@20"], stats["ndcg@20"])]
            if per_run:
                cells.append(", ".join(f"{d:+.4f}" for d in stats["ndcg@20"].get("per_run", [])) or "–")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/breakdown.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+",
                        help="Run directories of finished (or checkpointed) runs, one per model; several runs "
                             "of one model (other seeds) as one argument joined by commas, averaged per user.")
    parser.add_argument("--split", choices=("valid", "test"), default="test",
                        help="Which held-out item to rank. Default: %(default)s")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best: the epoch selected by validation NDCG@20 (what the test metrics report); "
                             "last: the last epoch trained. Default: %(default)s")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                        help="Resamples of the users for the paired intervals against the first run "
                             "(0: no paired table). Default: %(default)s")
    parser.add_argument("--json", default=None, help="Also write the numbers to this JSON file.")
    return parser


def check_run_dirs(run_dirs: Sequence[str]) -> None:
    """Exits with a clear error unless every path is a run directory of asif_tf.train."""
    for run_dir in run_dirs:
        if not os.path.exists(os.path.join(run_dir, "config.json")):
            raise SystemExit(f"error: {run_dir}: no config.json; expected a run directory of asif_tf.train")


def emit(text: str, result: dict, json_path: Optional[str]) -> None:
    """Prints the markdown table; writes the numbers to ``json_path`` when given."""
    print(text)
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    groups = parse_run_groups(args.run_dirs)
    check_run_dirs([run_dir for group in groups for run_dir in group])
    if args.bootstrap < 0:
        raise SystemExit(f"error: --bootstrap {args.bootstrap}: expected 0 or a positive number of resamples")
    result = breakdown(groups, args.split, args.checkpoint, args.bootstrap)
    emit(markdown(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

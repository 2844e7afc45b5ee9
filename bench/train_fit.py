"""How well do finished runs fit their training data? Cross-entropy, dropout off.

    python bench/train_fit.py bench/results/runs/beauty-cpu/{asif,asif-hie=False} [--json out.json]

The training loss Keras logs is measured with dropout on and while the weights move, so
it is a poor gauge of over-fitting. This restores each run's best checkpoint (the epoch its
test metrics come from) and its last one, and measures with dropout off:

- train CE: the full-catalogue softmax cross-entropy of every training position (each
  training sequence, truncated to the run's max_seq_len, predicting each next item, as
  one-sequence training sees it), averaged over positions;
- valid CE: the same cross-entropy of each user's validation item given the history
  before it (one position per user).

A gap between the two that grows from the best to the last checkpoint is over-fitting.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Dict, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from asif_tf import _env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from breakdown import check_run_dirs, emit, run_names  # noqa: E402  (a sibling script, not a package)


def _cross_entropy(queries, targets, items):
    """(sum, N) of the trainer's catalogue cross-entropy of queries float [N, d] with targets int [N]."""
    import tensorflow as tf
    from asif_tf.models.retrieval import catalogue_cross_entropy
    return float(tf.reduce_sum(catalogue_cross_entropy(queries, targets, items))), int(tf.size(targets))


def run_fit(run_dir: str, which: str) -> Dict[str, float]:
    """Train and valid cross-entropy (dropout off) of one checkpoint of a run."""
    import tensorflow as tf
    from asif_tf import export
    from asif_tf.data import input as data_input
    from asif_tf.models.retrieval import last_position_vectors
    run = export.restore_run(run_dir, which)
    cfg, model, path = run.cfg, run.model, run.checkpoint
    items = model.item_embeddings()
    total, count = 0.0, 0
    for batch in data_input.train_dataset(run.data_dir, cfg.train.eval_batch_size, cfg.data.max_seq_len,
                                          "sequence", bucket=True, shuffle=False):
        out = model.encoder(batch["history"], training=False, labels=batch["labels"])
        mask = batch["labels"] > 0
        s, n = _cross_entropy(tf.boolean_mask(out["sequence"], mask), tf.boolean_mask(batch["labels"], mask), items)
        total, count = total + s, count + n
    v_total, v_count = 0.0, 0
    for batch in data_input.eval_dataset(run.data_dir, "valid", cfg.train.eval_batch_size,
                                         cfg.data.max_seq_len, bucket=True):
        vectors = last_position_vectors(model.encoder(batch["history"], training=False)["sequence"],
                                        batch["history"])
        s, n = _cross_entropy(vectors, batch["target"], items)
        v_total, v_count = v_total + s, v_count + n
    state = json.loads(pathlib.Path(run_dir, "state.json").read_text())
    epoch = state["best_epoch"] if which == "best" else state["epoch"]
    return {"epoch": int(epoch), "train_ce": total / count, "valid_ce": v_total / v_count,
            "train_positions": count, "valid_users": v_count, "checkpoint": path}


def markdown(result: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    lines = ["Cross-entropy over the whole catalogue, dropout off (bench/train_fit.py).", "",
             "| run | checkpoint | epoch | train CE | valid CE | gap |", "|---|---|---|---|---|---|"]
    for name, fits in result.items():
        for which, f in fits.items():
            lines.append(f"| {name} | {which} | {f['epoch']} | {f['train_ce']:.4f} | {f['valid_ce']:.4f} | "
                         f"{f['valid_ce'] - f['train_ce']:.4f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/train_fit.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="Run directories of finished (or checkpointed) runs.")
    parser.add_argument("--checkpoints", default="best,last",
                        help="Which checkpoints to measure, comma-separated from best,last. Default: %(default)s")
    parser.add_argument("--json", default=None, help="Also write the numbers to this JSON file.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    which = [w.strip() for w in args.checkpoints.split(",") if w.strip()]
    if not which or any(w not in ("best", "last") for w in which):
        parser.error(f"--checkpoints {args.checkpoints!r}: expected a comma-separated list of best, last")
    check_run_dirs(args.run_dirs)
    result = {}
    for run_dir, name in zip(args.run_dirs, run_names(args.run_dirs)):
        result[name] = {}
        for w in which:
            print(f"measuring {name} ({w} checkpoint) ...", file=sys.stderr, flush=True)
            result[name][w] = run_fit(run_dir, w)
    emit(markdown(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

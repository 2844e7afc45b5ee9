r"""How much does HIE inject, layer by layer? Norms inside trained ASIF runs.

    python bench/hie_norms.py bench/results/runs/yelp-cpu-prefix/asif-lambda_fa=1.0 \
        bench/results/runs/yelp-cpu-prefix/asif-hie_from_layer=1-lambda_fa=1.0

HIE (ASIF.md) adds to the item stream E' of a layer the sign-filtered projection of the fused
stream F' onto the item subspace: E'' = E' + (keep * pA) Q^T. Each run directory is restored at
its best checkpoint (``--checkpoint last``: the last epoch) and its users of one split are passed
through the model; at every real (non-padding) position t of every layer with HIE this records

- ``norm E'``: the norm of the item stream entering HIE (the attention output),
- ``norm inj``: the norm of what HIE adds, E''_t - E'_t,
- ``inj / E'``: their ratio (mean over positions), and ``cos``: the cosine between the two
  (positive: HIE reinforces the item stream, near 0: it adds a new direction; 0 where it adds
  nothing, every sign disagreeing),
- ``norm F'``: the norm of the fused stream HIE reads,

overall and by prefix length (t + 1, the number of items the position sees; a prefix shorter than
the number of bases r spans every item it holds whatever the bases are). The model's output is
unchanged: HIE's result is only observed. A markdown table is printed; ``--json`` writes the
numbers.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Dict, List, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from asif_tf import _env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# a sibling script, not a package: its history-length groups serve as prefix-length groups here
from breakdown import LENGTH_EDGES, assign_bins, bin_labels, check_run_dirs, emit  # noqa: E402

STATS = ("item_norm", "injected_norm", "ratio", "cosine", "fused_norm")


def prefix_group_labels(edges: Sequence[int] = LENGTH_EDGES) -> List[str]:
    return bin_labels(edges, "prefix length")


class HIERecorder:
    """Observes the HIE sublayer of every ASIF layer of an encoder and sums per-position statistics.

    ``sums[layer][stat]`` is float [groups + 1] (the prefix-length groups, then all positions) and
    ``counts[layer]`` int [groups + 1]: the number of real positions summed. Only for eager calls:
    the statistics are read as numpy values.
    """

    def __init__(self, encoder, edges: Sequence[int] = LENGTH_EDGES):
        blocks = getattr(encoder, "blocks", None)
        if blocks is None:
            raise ValueError(f"{type(encoder).__name__} has no layers: HIE norms need an ASIF encoder")
        self.edges = np.asarray(edges)
        self.layers = {i: block.hie for i, block in enumerate(blocks) if getattr(block, "hie", None) is not None}
        groups = len(edges) + 1
        self.sums = {i: {s: np.zeros(groups) for s in STATS} for i in self.layers}
        self.counts = {i: np.zeros(groups, np.int64) for i in self.layers}
        for i, hie in self.layers.items():
            hie.call = self._observing(i, hie.call)

    def _observing(self, layer: int, call):
        def observed(item, fused, valid, rows=None):
            if rows is not None:          # a last-position-only pass (the model's own call): not recorded
                return call(item, fused, valid, rows=rows)
            out = call(item, fused, valid)
            self.add(layer, np.asarray(item, np.float64), np.asarray(out, np.float64) - np.asarray(item, np.float64),
                     np.asarray(fused, np.float64), np.asarray(valid) > 0)
            return out
        return observed

    def add(self, layer: int, item: np.ndarray, injected: np.ndarray, fused: np.ndarray, valid: np.ndarray) -> None:
        """item, injected, fused float [b, n, d]; valid bool [b, n] (real items, right-padded)."""
        item_norm = np.linalg.norm(item, axis=-1)
        injected_norm = np.linalg.norm(injected, axis=-1)
        per_position = {
            "item_norm": item_norm,
            "injected_norm": injected_norm,
            "ratio": injected_norm / np.maximum(item_norm, 1e-12),
            "cosine": np.sum(item * injected, axis=-1) / np.maximum(item_norm * injected_norm, 1e-12),
            "fused_norm": np.linalg.norm(fused, axis=-1),
        }
        prefix = np.cumsum(valid, axis=1)                                          # [b, n] items seen at t
        group = assign_bins(prefix, self.edges)                                   # [b, n]
        for g in range(len(self.edges) + 1):
            # the last slot is every real position
            mask = valid if g == len(self.edges) else valid & (group == g)
            self.counts[layer][g] += int(mask.sum())
            for stat, values in per_position.items():
                self.sums[layer][stat][g] += float(values[mask].sum())

    def means(self) -> Dict[int, Dict[str, List[Optional[float]]]]:
        """{layer: {stat: [mean per prefix group..., mean over all]}}; None for an empty group."""
        return {i: {s: [float(v / c) if c else None for v, c in zip(self.sums[i][s], self.counts[i])]
                    for s in STATS} for i in self.layers}


def hie_norms(run_dir: str, split: str = "valid", checkpoint: str = "best", max_users: Optional[int] = None) -> dict:
    """The HIE statistics of one run (see the module docstring)."""
    from asif_tf import export
    from asif_tf.data import input as data_input
    cfg = export.load_run_config(run_dir)
    if cfg.model.model != "asif":
        raise ValueError(f"{run_dir} is a {cfg.model.model} run: HIE norms need an ASIF run")
    if not cfg.model.hie:
        raise ValueError(f"{run_dir}: the model has no layer with HIE (hie=False)")
    run = export.restore_run(run_dir, checkpoint, cfg=cfg)
    model, path = run.model, run.checkpoint
    recorder = HIERecorder(model.encoder)
    users = 0
    for batch in data_input.eval_dataset(run.data_dir, split, cfg.train.eval_batch_size,
                                         cfg.data.max_seq_len, bucket=False):
        history = batch["history"]
        if max_users is not None:
            history = history[:max_users - users]
        # The full pass: the model's own call computes the last layer at the last item only.
        model.encoder(history, training=False)
        users += int(history.shape[0])
        if max_users is not None and users >= max_users:
            break
    return {"run_dir": run_dir, "checkpoint": path, "split": split, "users": users,
            "num_bases": cfg.model.num_bases, "groups": prefix_group_labels() + ["all"],
            "positions": {str(i): recorder.counts[i].tolist() for i in recorder.layers},
            "layers": {str(i): m for i, m in recorder.means().items()}}


def markdown(results: Sequence[dict]) -> str:
    lines = []
    for result in results:
        lines += [f"**{result['run_dir']}** ({result['split']}, {result['users']} users, r = {result['num_bases']}; "
                  f"{os.path.basename(result['checkpoint'])})", "",
                  "| layer | group | positions | " + " | ".join(
                      ("norm E'", "norm inj", "inj / E'", "cos", "norm F'")) + " |",
                  "|---|---|---|---|---|---|---|---|"]
        for layer, means in result["layers"].items():
            for g, label in enumerate(result["groups"]):
                values = [means[s][g] for s in STATS]
                cells = ["" if v is None else f"{v:.3f}" for v in values]
                lines.append(f"| {layer} | {label} | {result['positions'][layer][g]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/hie_norms.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="Run directories of ASIF runs (asif_tf.train or reproduce.py).")
    parser.add_argument("--split", choices=("valid", "test"), default="valid",
                        help="Whose histories to pass through the model. Default: %(default)s")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best: the epoch selected by validation NDCG@20; last: the last epoch trained. "
                             "Default: %(default)s")
    parser.add_argument("--max_users", type=int, default=None,
                        help="Only the first N users of the split (default: all).")
    parser.add_argument("--json", default=None, help="Also write the numbers to this JSON file.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_users is not None and args.max_users < 1:
        raise SystemExit(f"error: --max_users {args.max_users}: expected a positive number of users")
    check_run_dirs(args.run_dirs)
    try:
        results = [hie_norms(d, args.split, args.checkpoint, args.max_users) for d in args.run_dirs]
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    emit(markdown(results), results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

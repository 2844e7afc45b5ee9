"""Where a training step's time goes: an op-level profile of a few training steps, by model part.

Trains one model for ``--steps`` steps in one of ``reproduce.py``'s settings (its model size,
optimiser and batches, every-prefix by default) under TensorFlow's profiler, after an untraced pass
over the same batches (tracing and warm-up), then sums the time of every TF op the step ran on
TensorFlow's compute threads by the part of the model it belongs to: the op's name scope, with the
backward pass (``gradient_tape/...``) counted with its forward part. So ``asif_layer_0/hie`` is HIE
of the first layer, forward and backward; ops at the top level of the step are named by their type
(``MatMul`` there is the catalogue's logits, ``Adam`` the optimiser update).

  python bench/profile_train.py --dataset yelp --model asif --setting cpu --variant "lambda_fa=1.0"
  python bench/profile_train.py --dataset yelp --model asif --setting cpu --variant "lambda_fa=1.0;hie_from_layer=1"

Prints the parts (seconds summed over threads and their share of all op time), the wall time of the
traced steps, and, with ``--json``, writes them. Op time summed over threads can exceed the wall
time (2 compute threads here); the shares, not the sums, compare parts. A benchmark for finding the
hot spot before optimising, not a test: the figures depend on the machine and on what else runs.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import pathlib
import re
import sys
import tempfile
import time
from typing import Dict, Optional, Sequence

BENCH = pathlib.Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import probe  # noqa: E402  (its import of reproduce puts the repository on sys.path)
import reproduce  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from asif_tf.config import MODELS  # noqa: E402

COMPUTE_LINE_PREFIX = "tf_Compute"       # the executor's threads in the host plane of the trace
BACKWARD_SCOPE = "gradient_tape/"
STACKED_LAYER = re.compile(r"_\d+$")
OP_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def part_of(op_event_name: str) -> Optional[str]:
    """The model part of one op event, or None for an event that is not a TF op.

    Op events are named ``scope/.../op_name:OpType``. The part is the scope up to the sublayer
    (``encoder/asif_layer_0/hie/MatMul_5:BatchMatMulV2`` -> ``asif_layer_0/hie``), the encoder's own
    sublayer for encoder-level ops (``encoder/attribute_embedding``), the first scope without its index
    for other ops (``Adam/mul_3:Mul`` -> ``Adam``, ``AddN_51/inputs_1:UnsortedSegmentSum`` -> ``AddN``),
    and the op type for ops at the top level of the step (``MatMul:MatMul`` -> ``MatMul``).
    """
    scope, sep, op_type = op_event_name.rpartition(":")
    if not sep or not scope or " " in scope or "::" in op_event_name or not OP_TYPE.fullmatch(op_type):
        return None                                  # executor and Python events, not ops
    if scope.startswith(BACKWARD_SCOPE):
        scope = scope[len(BACKWARD_SCOPE):]
    parts = scope.split("/")
    if parts[0] == "encoder" and len(parts) > 2:
        # A stacked layer (asif_layer_0, block_1, nova_layer_2, gru_0, ...) is split by its sublayers.
        return "/".join(parts[1:3]) if STACKED_LAYER.search(parts[1]) else parts[1]
    if parts[0] == "encoder" and len(parts) == 2:
        return "encoder (other ops)"
    if len(parts) == 1:
        return op_type
    return STACKED_LAYER.sub("", parts[0])           # AddN_51 -> AddN (gradient sums), Adam -> Adam


def aggregate(space: "xplane_pb2.XSpace") -> Dict[str, float]:
    """Seconds of op time per model part, summed over the compute threads of the host plane."""
    seconds: Dict[str, float] = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith(COMPUTE_LINE_PREFIX):
                continue
            for event in line.events:
                part = part_of(names[event.metadata_id].name)
                if part is not None:
                    seconds[part] += event.duration_ps / 1e12
    return dict(seconds)


def profile(cfg, data_dir: str, steps: int) -> dict:
    """Trains ``cfg`` for ``steps`` steps twice over the same batches, the second time traced."""
    model, train_ds = probe.seeded_model_and_batches(cfg, data_dir)
    batches = list(train_ds.take(steps))
    fixed = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=train_ds.element_spec)
    model.fit(fixed, verbose=0)                        # tracing and warm-up, not profiled
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        started = time.time()
        model.fit(fixed, verbose=0)
        wall = time.time() - started
        tf.profiler.experimental.stop()
        traces = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))
        if not traces:
            raise RuntimeError(f"the profiler wrote no trace under {logdir}")
        space = xplane_pb2.XSpace()
        space.ParseFromString(pathlib.Path(traces[-1]).read_bytes())
    parts = aggregate(space)
    total = sum(parts.values())
    lengths = [int(b["history"].shape[1]) for b in batches]
    return {"steps": steps, "wall_seconds": round(wall, 2), "op_seconds": round(total, 2),
            "mean_padded_length": round(sum(lengths) / len(lengths), 2),
            "parts": [{"part": name, "seconds": round(s, 3), "share": round(s / total, 4) if total else 0.0}
                      for name, s in sorted(parts.items(), key=lambda kv: -kv[1])]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", choices=MODELS, default="asif", help="The model to profile (default: asif).")
    probe.add_dataset_arguments(parser, default_setting="cpu")
    parser.add_argument("--variant", default="default",
                        help="Overrides, as in probe.py: name=value[;name=value...] of ModelConfig fields, "
                             "learning_rate or batch_size; 'default' for the setting itself.")
    parser.add_argument("--steps", type=int, default=40,
                        help="Training steps traced (the first steps of the epoch's batch order; with "
                             "length buckets these mix lengths, see mean_padded_length in the output).")
    parser.add_argument("--top", type=int, default=20, help="How many parts to print (all go to --json).")
    parser.add_argument("--json", default=None, help="Write the profile to this JSON file.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    try:
        model_over, train_over = probe.parse_variant(args.variant)
    except ValueError as err:
        parser.error(f"--variant: {err}")
    ds = probe.dataset_of(args, parser)
    cfg = probe.variant_config(args, parser, ds.name, args.variant, model_over, train_over)
    data_dir = reproduce.prepare_dataset(ds, pathlib.Path(args.results_dir).resolve())
    result = profile(cfg, data_dir, args.steps)
    result.update(model=args.model, dataset=ds.name, setting=args.setting, variant=args.variant,
                  training_samples=args.training_samples, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(f"{args.model} on {ds.name}, setting {args.setting}, variant {args.variant}: {args.steps} "
          f"{args.training_samples} steps (mean padded length {result['mean_padded_length']}), "
          f"{result['wall_seconds']} s wall, {result['op_seconds']} s of op time summed over threads")
    print("\n| part (forward + backward) | op seconds | share |\n|---|---|---|")
    for row in result["parts"][:args.top]:
        print(f"| {row['part']} | {row['seconds']:.2f} | {100 * row['share']:.1f}% |")
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training speed and peak memory of ASIF on a preprocessed dataset (default: Beauty).

For each setting a fresh subprocess trains on the real train split and reports:
sequences/s (training records consumed per second), targets/s (positions with a loss;
the prefix-equivalent throughput, since one sequence with a loss at every position does
the work of all its prefixes), the time of one full epoch (measured when --steps is 0,
else extrapolated from the measured steps and said so), and the subprocess's peak RSS.

    python bench/train_speed.py --data DIR [--settings d64,d256] [--steps 0] [--out bench/results/train_speed.json]

Prints a table and writes JSON. A benchmark, not a test: figures depend on the machine and
on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = {
    "d64": dict(hidden_size=64, num_layers=2, num_heads=2, inner_size=256),
    "d256": dict(hidden_size=256, num_layers=4, num_heads=8, inner_size=256),
}
VARIANTS = [  # (name, training_samples, bucket_by_length)
    ("sequence+bucket", "sequence", True),
    ("sequence-no-bucket", "sequence", False),
    ("prefix+bucket", "prefix", True),
    ("prefix-no-bucket", "prefix", False),
]

WORKER = r'''
import json, sys, time
import asif_tf
import tensorflow as tf
from asif_tf.config import ExperimentConfig
from asif_tf.data import input as di
from asif_tf.models import registry
args = json.loads(sys.argv[1])
cfg = ExperimentConfig()
for k, v in args["model"].items():
    setattr(cfg.model, k, v)
cfg.train.batch_size = args["batch_size"]
cfg.train.training_samples = args["samples"]     # prefix: the loss reads the last position only
tf.keras.utils.set_random_seed(0)
info = di.load_dataset_info(args["data"])
model = registry.build_model(cfg, info)
model.compile(tf.keras.optimizers.Adam(1e-3))
ds = di.train_dataset(args["data"], cfg.train.batch_size, cfg.data.max_seq_len, args["samples"],
                      bucket=args["bucket"], seed=0)
def describe(batch):
    """(sequences, positions with a loss, padded positions batch x length) of one batch."""
    return (int(tf.shape(batch["history"])[0]), int(tf.reduce_sum(tf.cast(batch["labels"] > 0, tf.int32))),
            int(tf.size(batch["history"])))


epoch = [describe(b) for b in ds]            # what one epoch holds
model.fit(ds.take(3), verbose=0)             # warm-up: tracing
steps = args["steps"] or len(epoch)
if steps < len(epoch):
    # Time exactly the batches the extrapolation counts (the next pass reshuffles).
    timed_batches = list(ds.take(steps))
    timed = [describe(b) for b in timed_batches]
    run_ds = tf.data.Dataset.from_generator(lambda: iter(timed_batches), output_signature=ds.element_spec)
else:
    timed, run_ds = epoch, ds
t = time.time()
model.fit(run_ds, verbose=0)
seconds = time.time() - t
seqs, targets = sum(b[0] for b in timed), sum(b[1] for b in timed)
# Extrapolate by padded positions, which the encoder's cost follows: the first batches of a
# bucketed epoch are shorter than its average.
epoch_seconds = seconds * sum(b[2] for b in epoch) / sum(b[2] for b in timed)
print("RESULT " + json.dumps({"seconds": seconds, "steps": steps, "epoch_steps": len(epoch),
      "sequences_per_s": seqs / seconds, "targets_per_s": targets / seconds,
      "epoch_records": sum(b[0] for b in epoch), "epoch_targets": sum(b[1] for b in epoch),
      "epoch_seconds": epoch_seconds, "extrapolated": steps < len(epoch)}))
'''


def _child_peak_rss_kb(proc) -> int:
    """Peak RSS of one finished child: /proc is gone, so read it from the wait status rusage."""
    return proc._peak_rss_kb


class _Popen(subprocess.Popen):
    """Popen that reaps with wait4, keeping the child's own rusage (ru_maxrss in KiB)."""

    def _try_wait(self, wait_flags):
        pid, sts, usage = os.wait4(self.pid, wait_flags)
        if pid:
            self._peak_rss_kb = usage.ru_maxrss
        return pid, sts


def run_one(data, model_args, samples, bucket, batch_size, steps):
    payload = json.dumps({"data": data, "model": model_args, "samples": samples, "bucket": bucket,
                          "batch_size": batch_size, "steps": steps})
    proc = _Popen([sys.executable, "-c", WORKER, payload], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    stdout, stderr = proc.communicate()
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"benchmark worker failed:\n{stderr[-3000:]}")
    out = json.loads(lines[-1][7:])
    out["peak_rss_mb"] = round(_child_peak_rss_kb(proc) / 1024, 1)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="preprocessed dataset directory (e.g. Beauty)")
    p.add_argument("--settings", default="d64,d256", help=f"comma-separated of {sorted(SETTINGS)}")
    p.add_argument("--variants", default=",".join(v[0] for v in VARIANTS),
                   help="comma-separated variant names: " + "; ".join(v[0] for v in VARIANTS))
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--steps", type=int, default=0,
                   help="training steps to time per setting; 0 = one full epoch (otherwise extrapolated)")
    p.add_argument("--out", default="bench/results/train_speed.json")
    a = p.parse_args(argv)
    wanted = set(a.variants.split(","))
    unknown = wanted - {v[0] for v in VARIANTS}
    if unknown:
        p.error(f"unknown --variants {sorted(unknown)}; expected names from {[v[0] for v in VARIANTS]}")
    rows = []
    for setting in a.settings.split(","):
        for name, samples, bucket in VARIANTS:
            if name not in wanted:
                continue
            r = run_one(a.data, SETTINGS[setting], samples, bucket, a.batch_size, a.steps)
            r.update(setting=setting, variant=name)
            rows.append(r)
            print(f"{setting:5} {name:22} {r['sequences_per_s']:9.0f} seq/s {r['targets_per_s']:9.0f} targets/s "
                  f"epoch {r['epoch_seconds']:7.1f} s{' (extrapolated)' if r['extrapolated'] else ''} "
                  f"peak {r['peak_rss_mb']} MB", flush=True)
    print("\n| setting | variant | seq/s | targets/s | epoch s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['variant']} | {r['sequences_per_s']:.0f} | {r['targets_per_s']:.0f} | "
              f"{r['epoch_seconds']:.1f}{'*' if r['extrapolated'] else ''} | {r['peak_rss_mb']} |")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"data": a.data, "batch_size": a.batch_size, "rows": rows,
                   "time": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count()}, f, indent=2)
    if any(r["extrapolated"] for r in rows):
        print(f"* extrapolated to a full epoch from {a.steps} timed steps")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

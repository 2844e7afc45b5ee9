"""Benchmark of the preprocessing pipeline (beam_pipelines.preprocess).

Runs the pipeline end to end, each run in its own subprocess, on the real S3-Rec
datasets (Beauty, Yelp) and on synthetic S3-Rec logs k times Beauty's size, and
reports wall time, interactions per second and the peak resident memory of the run
(ru_maxrss of that child from os.wait4, which covers the child and anything it waited
for). Prints a table and writes JSON (updated after every run, so a long run that is
stopped still leaves the finished cases).

    python bench/preprocess.py                       # beauty, yelp, synthetic 1x,10x,100x
    python bench/preprocess.py --synthetic_scales 1,10 --datasets beauty

The synthetic logs keep Beauty's shape: users and items scaled by k, per-user lengths
drawn from Beauty's length distribution, items from a fixed power-law popularity over
ranks (the same shape at every scale), 1-6 attribute ids per item. They are generated
by streaming to disk in chunks, never held whole in memory.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BEAUTY_USERS, BEAUTY_ITEMS, BEAUTY_ATTRS = 22363, 12101, 637
REAL = {"beauty": "beauty", "yelp": "yelp", "sports": "sports_and_outdoors", "lastfm": "lastfm"}


def beauty_lengths(data_dir: pathlib.Path):
    """Empirical distribution of Beauty's sequence lengths: (lengths, probabilities)."""
    counts = collections.Counter()
    with gzip.open(data_dir / "beauty" / "Beauty.txt.gz", "rt") as f:
        for line in f:
            n = len(line.split()) - 1
            if n > 0:
                counts[n] += 1
    total = sum(counts.values())
    lengths = sorted(counts)
    return lengths, [counts[n] / total for n in lengths]


def generate_synthetic(data_dir: pathlib.Path, out_dir: pathlib.Path, scale: int,
                       seed: int = 0, chunk_users: int = 20000) -> int:
    """Write Synthetic.txt and Synthetic_item2attributes.json (scale x Beauty);
    returns the number of interactions written."""
    import numpy as np
    rng = np.random.default_rng(seed + scale)
    lengths, probs = beauty_lengths(data_dir)
    n_users, n_items, n_attrs = BEAUTY_USERS * scale, BEAUTY_ITEMS * scale, BEAUTY_ATTRS * scale
    # Power-law popularity over ranks, defined on rank / n_items so its shape does not
    # depend on the scale; items are shuffled so ids carry no popularity order.
    ranks = np.arange(1, n_items + 1, dtype=np.float64) / n_items
    weights = ranks ** -0.6
    cdf = np.cumsum(weights / weights.sum())
    item_ids = rng.permutation(n_items) + 1
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out_dir / "Synthetic.txt", "w") as f:
        for start in range(0, n_users, chunk_users):
            n = min(chunk_users, n_users - start)
            lens = rng.choice(lengths, size=n, p=probs)
            picks = item_ids[np.minimum(np.searchsorted(cdf, rng.random(int(lens.sum()))),
                                        n_items - 1)]
            lines, pos = [], 0
            for u, length in enumerate(lens, start=start + 1):
                lines.append(f"{u} " + " ".join(map(str, picks[pos:pos + length])))
                pos += length
            f.write("\n".join(lines) + "\n")
            written += int(lens.sum())
    with open(out_dir / "Synthetic_item2attributes.json", "w") as f:
        f.write("{")
        for start in range(1, n_items + 1, 100000):
            stop = min(start + 100000, n_items + 1)
            counts = rng.integers(1, 7, size=stop - start)
            attrs = rng.integers(1, n_attrs + 1, size=int(counts.sum()))
            parts, pos = [], 0
            for item, c in zip(range(start, stop), counts):
                parts.append(f'"{item}": [' + ", ".join(map(str, attrs[pos:pos + c])) + "]")
                pos += c
            f.write((", " if start > 1 else "") + ", ".join(parts))
        f.write("}")
    return written


def run_case(name: str, input_path: pathlib.Path, work: pathlib.Path, extra=()) -> dict:
    out = work / f"out_{name}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "beam_pipelines.preprocess", "--format", "s3rec",
           "--input", str(input_path), "--output_dir", str(out), *extra]
    log_path = work / f"{name}.log"
    load_before = os.getloadavg()[0]
    started = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name}: preprocess exited with {code}; log {log_path}:\n{tail}")
    meta = json.loads((out / "metadata.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "case": name,
        "input_interactions": meta["num_parsed_interactions"],
        "users": meta["num_users"],
        "items": meta["num_items"],
        "interactions": meta["num_interactions"],
        "kcore_pipelines": meta["kcore"]["pipelines"],
        "wall_s": round(wall, 2),
        "interactions_per_s": round(meta["num_parsed_interactions"] / wall),
        # CPU seconds of the run; less sensitive than wall time to other load on the machine.
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
        # 1-minute load average before/after: other processes on the machine slow the run.
        "load_avg": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
        "command": " ".join(cmd),
    }


def print_table(rows) -> None:
    header = ("case", "input inter.", "users", "items", "inter. (5-core)", "wall s",
              "CPU s", "inter./s (wall)", "peak RSS MB", "load avg")
    keys = ("case", "input_interactions", "users", "items", "interactions", "wall_s",
            "cpu_s", "interactions_per_s", "peak_rss_mb", "load_avg")
    widths = [max(len(h), *(len(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]))
                            for r in rows)) for h, k in zip(header, keys)]
    fmt = lambda vals: "| " + " | ".join(str(v).rjust(w) for v, w in zip(vals, widths)) + " |"
    print(fmt(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(fmt([f"{r[k]:,}" if isinstance(r[k], int) else r[k] for k in keys]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"),
                        help="the shared datasets (default: ../shared/data beside the repo)")
    parser.add_argument("--datasets", default="beauty,yelp",
                        help=f"real S3-Rec datasets to run, from {sorted(REAL)} ('' for none)")
    parser.add_argument("--synthetic_scales", default="1,10,100",
                        help="synthetic logs, as multiples of Beauty's size ('' for none)")
    parser.add_argument("--work_dir", default=str(REPO / "bench" / "results" / "tmp"),
                        help="scratch space for synthetic inputs and outputs")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "preprocess.json"))
    args = parser.parse_args(argv)

    data_dir = pathlib.Path(args.data_dir)
    if not (data_dir / "beauty").is_dir():
        parser.error(f"--data_dir {data_dir}: no beauty/ dataset there")
    work = pathlib.Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def save():
        output.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count()},
            "runner": "DirectRunner (Beam FnApiRunner, in_memory)",
            "results": rows}, indent=1) + "\n")

    def record(row):
        rows.append(row)
        save()
        print(f"{row['case']}: {row['wall_s']} s wall, {row['cpu_s']} s CPU, "
              f"{row['interactions_per_s']:,} inter/s, {row['peak_rss_mb']} MB, "
              f"load {row['load_avg']}", flush=True)

    for name in [d for d in args.datasets.split(",") if d]:
        if name not in REAL:
            parser.error(f"--datasets: unknown dataset {name!r}; expected some of {sorted(REAL)}")
        record(run_case(name, data_dir / REAL[name], work))
    for scale in [int(s) for s in args.synthetic_scales.split(",") if s]:
        src = work / f"synthetic_{scale}x"
        started = time.time()
        n = generate_synthetic(data_dir, src, scale)
        print(f"generated synthetic {scale}x ({n:,} interactions) in {time.time() - started:.0f} s",
              flush=True)
        row = run_case(f"synthetic_{scale}x", src, work)
        row["scale"] = scale
        record(row)
        shutil.rmtree(src, ignore_errors=True)

    synth = {r["scale"]: r for r in rows if "scale" in r}
    if 1 in synth:
        for scale, r in sorted(synth.items()):
            r["time_ratio_vs_1x"] = round(r["wall_s"] / synth[1]["wall_s"], 2)
            r["cpu_ratio_vs_1x"] = round(r["cpu_s"] / synth[1]["cpu_s"], 2)
        save()
    print()
    print_table(rows)
    if 1 in synth:
        print("\nratio vs synthetic 1x (wall / CPU): " + ", ".join(
            f"{s}x: {r['time_ratio_vs_1x']} / {r['cpu_ratio_vs_1x']}"
            for s, r in sorted(synth.items())))
    print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

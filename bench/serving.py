"""Serving benchmark: gRPC latency and throughput of an exported ASIF model.

``python -m bench.serving [--catalogues 12101,1000000] [--out bench/results/serving.json]``

For each catalogue size it builds an ASIF model of the default size (hidden 64, 2 layers,
max_seq_len 50) over a synthetic catalogue with Beauty-like attributes (one brand, up to
four categories per item), *untrained*: latency does not depend on the weights. It exports
the model (``asif_tf.export.export_model``), starts ``serving.local_server`` on 127.0.0.1 in
its own process, and measures with ``serving.client``:

* time from process start to the first answered request (load + warm-up included),
* export size on disk,
* p50 / p99 latency and requests/s for batch sizes 1 and 32 and 1 and 8 concurrent
  clients (each client a thread with its own channel; bounded by a request count and
  a time limit per cell),
* server RSS before and after a fixed number of batch-1 requests (default 10,000),

each with the server's request batching off and on (``--batching``, the settings of
``serving/batching_parameters.txt``).

Clients and server share this machine's cores, so the numbers are a pessimistic bound
on what the server alone does. Writes bench/results/serving.json and prints a table.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence

from asif_tf import _env  # noqa: F401
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"p99_batch1_ms": {12101: 10.0, 1_000_000: 100.0}, "rps_8_clients_batch1": {12101: 300.0}}


def synthetic_catalogue(num_items: int, data_dir: str, seed: int = 0):
    """DatasetInfo of ``num_items`` items with brand/category attributes, and vocab/item.tsv."""
    from asif_tf.data import schema
    from asif_tf.data.input import DatasetInfo
    rng = np.random.default_rng(seed)
    num_brands, num_categories = max(10, num_items // 5), 600
    brand = np.zeros((num_items + 1, 1), np.int32)
    brand[1:, 0] = rng.integers(1, num_brands + 1, num_items)
    cats = np.zeros((num_items + 1, 4), np.int32)
    n_cats = rng.integers(1, 5, num_items)
    cats[1:] = rng.integers(1, num_categories + 1, (num_items, 4)) * (np.arange(4)[None] < n_cats[:, None])
    counts = np.zeros(num_items + 1, np.int64)
    counts[1:] = (1e5 / (1 + rng.permutation(num_items)) ** 0.8).astype(np.int64) + 1   # Zipf-like popularity
    os.makedirs(os.path.join(data_dir, schema.VOCAB_DIR), exist_ok=True)
    with open(os.path.join(data_dir, schema.VOCAB_DIR, schema.ITEM_VOCAB_FILE), "w", encoding="utf-8") as f:
        f.writelines(f"{i}\tB{i:09d}\n" for i in range(1, num_items + 1))
    info = DatasetInfo(data_dir=data_dir, num_items=num_items,
                       field_vocab_sizes={"brand": num_brands, "categories": num_categories},
                       field_max_tokens={"brand": 1, "categories": 4},
                       item_attributes={"brand": brand, "categories": cats}, item_counts=counts, metadata={})
    return info, [f"B{i:09d}" for i in range(1, num_items + 1)]


def export_untrained(num_items: int, work: str, k: int) -> Dict:
    import tensorflow as tf
    from asif_tf import export
    from asif_tf.config import ExperimentConfig
    from asif_tf.models import registry
    data_dir = os.path.join(work, "data")
    info, tokens = synthetic_catalogue(num_items, data_dir)
    cfg = ExperimentConfig()
    tf.keras.utils.set_random_seed(0)
    model = registry.build_model(cfg, info)
    t0 = time.time()
    path = export.export_model(model, data_dir, info.item_counts, os.path.join(work, "models"),
                               max_seq_len=cfg.data.max_seq_len, k=k)
    seconds = time.time() - t0
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return {"path": path, "tokens": tokens, "export_seconds": round(seconds, 1), "export_mb": round(size / 2**20, 1),
            "hidden_size": cfg.model.hidden_size, "max_seq_len": cfg.data.max_seq_len}


def in_process_latency(path: str, tokens: List[str], max_len: int, batch: int, max_calls: int,
                       max_seconds: float) -> Dict:
    """p50/p99 of the serving signature called in this process: the graph's own cost, no gRPC."""
    import tensorflow as tf
    fn = tf.saved_model.load(path).signatures["serving_default"]
    rng = np.random.default_rng(2)
    pool = []
    for _ in range(32):
        rows = random_histories(rng, tokens, batch, max_len)
        pool.append(tf.constant([r + [""] * (max_len - len(r)) for r in rows]))
    fn(history=pool[0])
    times, deadline = [], time.monotonic() + max_seconds
    while len(times) < max_calls and time.monotonic() < deadline:
        t = time.perf_counter()
        fn(history=pool[len(times) % len(pool)])
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {"batch": batch, "calls": len(times), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model_base: str, batching_file: Optional[str] = None, server_args: Sequence[str] = ()):
    """Starts serving.local_server on a free port (with request batching from ``batching_file``
    if given); returns (process, port, seconds to first answer)."""
    from serving.client import RecommenderClient
    t0 = time.time()
    extra = (["--batching_parameters_file", batching_file] if batching_file else []) + list(server_args)
    proc = subprocess.Popen([sys.executable, "-m", "serving.local_server", "--export_dir", model_base, "--port", "0",
                             "--workers", "16", *extra], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "Serving model" not in line:
        proc.kill()
        raise RuntimeError(f"local server did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1])
    with RecommenderClient(f"127.0.0.1:{port}", timeout_s=60, retries=100) as c:
        c.recommend([[]])
    return proc, port, time.time() - t0


def random_histories(rng, tokens: List[str], batch: int, max_len: int) -> List[List[str]]:
    return [[tokens[i] for i in rng.integers(0, len(tokens), rng.integers(1, max_len + 1))] for _ in range(batch)]


def load_cell(port: int, tokens: List[str], batch: int, clients: int, max_requests: int, max_seconds: float,
              max_len: int, seed: int = 0) -> Dict:
    """``clients`` threads, each with its own channel, sending batch-``batch`` requests until
    ``max_requests`` in all are done or ``max_seconds`` have passed."""
    from serving.client import RecommenderClient
    latencies: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()
    counter = {"sent": 0}
    # Requests are prepared before timing so the client's own Python work is not measured twice.
    rng = np.random.default_rng(seed)
    pool = [random_histories(rng, tokens, batch, max_len) for _ in range(64)]
    deadline = [0.0]
    # This process holds TensorFlow's objects too; keep them out of the collector's full passes,
    # which would otherwise show up as client-side latency spikes (the server does the same).
    gc.collect()
    gc.freeze()
    # The clock starts when every client is connected (the barrier action runs before any is released).
    start = threading.Barrier(clients + 1, action=lambda: deadline.__setitem__(0, time.monotonic() + max_seconds))

    def work(worker: int):
        with RecommenderClient(f"127.0.0.1:{port}", timeout_s=30, retries=0) as c:
            c.recommend(pool[0])                        # connect before the clock starts
            start.wait()
            i = worker
            while time.monotonic() < deadline[0]:
                with lock:
                    if counter["sent"] >= max_requests:
                        return
                    counter["sent"] += 1
                t = time.perf_counter()
                try:
                    c.recommend(pool[i % len(pool)])
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(repr(e)[:200])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t)
                i += clients
    threads = [threading.Thread(target=work, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"batch": batch, "clients": clients, "requests": len(latencies), "errors": len(errors),
            "error_examples": errors[:3], "seconds": round(wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "rps": round(len(latencies) / wall, 1), "users_per_s": round(len(latencies) * batch / wall, 1)}


def bench_catalogue(num_items: int, args) -> List[Dict]:
    """One result per server mode of ``args.batching`` (off: every call alone; on: request batching)."""
    work = tempfile.mkdtemp(prefix=f"asif-serving-{num_items}-")
    try:
        print(f"[{num_items} items] building and exporting an untrained model ...", flush=True)
        exp = export_untrained(num_items, work, args.k)
        graph = [in_process_latency(exp["path"], exp["tokens"], exp["max_seq_len"], b, 300, 10.0) for b in (1, 32)]
        print(f"[{num_items} items] export {exp['export_mb']} MB in {exp['export_seconds']} s; in-process signature "
              + ", ".join(f"batch {g['batch']}: p50 {g['p50_ms']} ms p99 {g['p99_ms']} ms" for g in graph)
              + "; starting server", flush=True)
        return [serve_and_measure(num_items, exp, graph, mode == "on", args) for mode in args.batching]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def serve_and_measure(num_items: int, exp: Dict, graph: List[Dict], batching: bool, args) -> Dict:
    """Starts the server on the export and measures every (batch, clients) cell and the memory run."""
    batching_file = args.batching_parameters_file if batching else None
    label = f"[{num_items} items, batching {'on' if batching else 'off'}]"
    proc, port, startup = start_server(os.path.dirname(exp["path"]), batching_file, args.server_args.split())
    try:
        big = num_items >= 200_000
        cells = []
        for batch in (1, 32):
            for clients in (1, 8):
                n = args.requests_big if big else args.requests
                cell = load_cell(port, exp["tokens"], batch, clients, n, args.cell_seconds, exp["max_seq_len"])
                print(f"{label} batch {batch:>2} clients {clients}: p50 {cell['p50_ms']} ms "
                      f"p99 {cell['p99_ms']} ms {cell['rps']} req/s ({cell['requests']} requests, "
                      f"{cell['errors']} errors)", flush=True)
                cells.append(cell)
        rss_before = rss_mb(proc.pid)
        memory = load_cell(port, exp["tokens"], 1, 8, args.memory_requests, args.memory_seconds,
                           exp["max_seq_len"], seed=1)
        rss_after = rss_mb(proc.pid)
        print(f"{label} RSS {rss_before:.0f} MB -> {rss_after:.0f} MB over {memory['requests']} requests", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"num_items": num_items, "batching": batching, "batching_parameters_file": batching_file,
            "server_args": args.server_args,
            "export_mb": exp["export_mb"], "export_seconds": exp["export_seconds"],
            "start_to_first_answer_s": round(startup, 2), "cells": cells, "in_process_signature": graph,
            "memory": {"requests": memory["requests"], "errors": memory["errors"],
                       "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(rss_after, 1),
                       "p99_ms": memory["p99_ms"], "rps": memory["rps"]},
            "model": {"name": "asif", "trained": False, "hidden_size": exp["hidden_size"],
                      "max_seq_len": exp["max_seq_len"], "k": args.k}}


def check_targets(result: Dict) -> List[str]:
    notes = []
    n = result["num_items"]
    mode = f"batching {'on' if result.get('batching') else 'off'}"
    cell = {(c["batch"], c["clients"]): c for c in result["cells"]}
    for clients in (1, 8):
        p99 = cell[(1, clients)]["p99_ms"]
        target = TARGETS["p99_batch1_ms"].get(n)
        if target is not None and p99 is not None:
            notes.append(f"{n} items, {mode}, batch 1, {clients} client(s): p99 {p99} ms "
                         f"{'<' if p99 < target else '>='} {target} ms target")
    rps_target = TARGETS["rps_8_clients_batch1"].get(n)
    if rps_target:
        rps = cell[(1, 8)]["rps"]
        notes.append(f"{n} items, {mode}, batch 1, 8 clients: {rps} req/s {'>=' if rps >= rps_target else '<'} "
                     f"{rps_target} req/s target")
    mem = result["memory"]
    growth = mem["rss_after_mb"] - mem["rss_before_mb"]
    notes.append(f"{n} items, {mode}: RSS {mem['rss_before_mb']} -> {mem['rss_after_mb']} MB ({growth:+.1f} MB) over "
                 f"{mem['requests']} requests")
    return notes


def print_table(results: List[Dict]) -> None:
    print("\n| catalogue | server batching | batch | clients | requests | p50 ms | p99 ms | req/s | users/s | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for c in r["cells"]:
            print(f"| {r['num_items']:,} | {'on' if r.get('batching') else 'off'} | {c['batch']} | {c['clients']} | {c['requests']} | {c['p50_ms']} | "
                  f"{c['p99_ms']} | {c['rps']} | {c['users_per_s']} | {c['errors']} |")
    print("\n| catalogue | server batching | export MB | start -> first answer s | RSS before MB | RSS after MB | requests between |"
          " in-process b1 p50/p99 ms | in-process b32 p50/p99 ms |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m, g = r["memory"], {x["batch"]: x for x in r["in_process_signature"]}
        print(f"| {r['num_items']:,} | {'on' if r.get('batching') else 'off'} | {r['export_mb']} | {r['start_to_first_answer_s']} | {m['rss_before_mb']} | "
              f"{m['rss_after_mb']} | {m['requests']} | {g[1]['p50_ms']} / {g[1]['p99_ms']} | "
              f"{g[32]['p50_ms']} / {g[32]['p99_ms']} |")
    print()
    for r in results:
        for note in check_targets(r):
            print("- " + note)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--catalogues", default="12101,1000000", help="Comma-separated catalogue sizes.")
    parser.add_argument("--k", type=int, default=10, help="Items per answer.")
    parser.add_argument("--requests", type=int, default=2000, help="Most requests per cell (small catalogues).")
    parser.add_argument("--requests_big", type=int, default=300, help="Most requests per cell (>= 200k items).")
    parser.add_argument("--cell_seconds", type=float, default=15.0, help="Time limit of each cell.")
    parser.add_argument("--memory_requests", type=int, default=10_000, help="Requests between the RSS readings.")
    parser.add_argument("--memory_seconds", type=float, default=180.0, help="Time limit of the memory run.")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench", "results", "serving.json"))
    parser.add_argument("--batching", default="off,on",
                        help="Server modes to measure: off (every call runs alone), on (request batching with "
                             "--batching_parameters_file), or both.")
    parser.add_argument("--batching_parameters_file", default=os.path.join(REPO_ROOT, "serving",
                                                                           "batching_parameters.txt"),
                        help="BatchingParameters the server uses when batching is on.")
    parser.add_argument("--server_args", default="--intra_op_threads 1 --inter_op_threads 2",
                        help="Extra flags for serving.local_server. The default runs each op on one thread and "
                             "two ops at once: batch-1 requests are hundreds of tiny ops, for which splitting "
                             "one op over threads costs more than it saves (in-process batch-1 p50 4.5 -> 2.6 ms "
                             "here); '' keeps TensorFlow's choice.")
    args = parser.parse_args(argv)
    args.batching = [m.strip() for m in args.batching.split(",") if m.strip()]
    if not args.batching or set(args.batching) - {"off", "on"}:
        parser.error(f"--batching: expected off, on or off,on")
    results = [r for n in args.catalogues.split(",") if n for r in bench_catalogue(int(n), args)]
    print_table(results)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    import tensorflow as tf
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"command": "python -m bench.serving " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                               "python": platform.python_version(), "tensorflow": tf.__version__,
                               "load_average_at_end": os.getloadavg()},
                   "note": "untrained models (latency does not depend on the weights); clients share the "
                           "machine's cores with the server",
                   "results": results, "targets": [n for r in results for n in check_targets(r)]},
                  f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

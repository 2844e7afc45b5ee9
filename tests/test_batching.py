"""serving.batching: the request batcher and its BatchingParameters file.

The batcher is driven with a numpy function whose per-row answer is known, so a merged
run must give every caller exactly the rows it would have got alone; the end-to-end
batched server is in test_serving.py.
"""
import os
import threading
import time

import numpy as np
import pytest

from serving.batching import BatchingOptions, QueueFullError, RequestBatcher

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RowFunction:
    """run(signature, {"x": [b, w]}) -> {"sum": [b], "rows": [b, w]}; records each call's batch size."""

    def __init__(self, delay_s=0.0, fail_on=None):
        self.calls, self.delay_s, self.fail_on = [], delay_s, fail_on
        self.lock = threading.Lock()

    def __call__(self, signature, arrays):
        x = arrays["x"]
        with self.lock:
            self.calls.append((signature, x.shape[0]))
        time.sleep(self.delay_s)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("bad row")
        return {"sum": x.sum(axis=1), "rows": x * 2}


def call_concurrently(batcher, requests):
    """Submits every (signature, arrays) from its own thread at once; returns outputs or exceptions."""
    results = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def work(i):
        barrier.wait()
        try:
            results[i] = batcher.submit(*requests[i])
        except Exception as e:  # noqa: BLE001 - returned to the test
            results[i] = e
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_requests_are_merged_and_split_back():
    fn = RowFunction(delay_s=0.01)
    batcher = RequestBatcher(fn, BatchingOptions(max_batch_size=64, batch_timeout_micros=200_000,
                                                 num_batch_threads=1))
    rng = np.random.default_rng(0)
    requests = [("serving_default", {"x": rng.integers(0, 100, (1 + i % 3, 5))}) for i in range(12)]
    results = call_concurrently(batcher, requests)
    for (_, arrays), out in zip(requests, results):
        np.testing.assert_array_equal(out["sum"], arrays["x"].sum(axis=1))
        np.testing.assert_array_equal(out["rows"], arrays["x"] * 2)
    assert sum(b for _, b in fn.calls) == sum(a["x"].shape[0] for _, a in requests)
    assert len(fn.calls) < len(requests)             # at least one merge happened
    assert batcher.requests_run == 12 and batcher.batches_run == len(fn.calls)
    batcher.close()


def test_only_equal_signature_and_shape_are_merged_and_max_batch_size_holds():
    fn = RowFunction(delay_s=0.01)
    batcher = RequestBatcher(fn, BatchingOptions(max_batch_size=4, batch_timeout_micros=100_000,
                                                 num_batch_threads=2))
    requests = [("a", {"x": np.ones((1, 3), np.int64)}) for _ in range(6)] + \
               [("a", {"x": np.ones((1, 7), np.int64)}) for _ in range(3)] + \
               [("b", {"x": np.ones((1, 3), np.int64)}) for _ in range(2)] + \
               [("a", {"x": np.ones((9, 3), np.int64)})]       # larger than max_batch_size: runs alone
    results = call_concurrently(batcher, requests)
    assert not [r for r in results if isinstance(r, Exception)]
    assert [r["sum"].shape[0] for r in results] == [a["x"].shape[0] for _, a in requests]
    assert all(b <= 4 for s, b in fn.calls if b != 9)
    assert ("a", 9) in fn.calls
    # 6 + 3 + 2 rows of three kinds with at most 4 per batch: at least 2 + 1 + 1 runs, never a mix.
    assert sum(b for _, b in fn.calls) == 6 + 3 + 2 + 9
    assert sum(1 for s, _ in fn.calls if s == "b") >= 1
    batcher.close()


def test_error_reaches_every_request_of_the_batch_and_batcher_keeps_working():
    fn = RowFunction(delay_s=0.01, fail_on=-1)
    batcher = RequestBatcher(fn, BatchingOptions(max_batch_size=8, batch_timeout_micros=100_000,
                                                 num_batch_threads=1))
    requests = [("s", {"x": np.full((1, 2), -1 if i == 0 else i)}) for i in range(4)]
    results = call_concurrently(batcher, requests)
    assert any(isinstance(r, RuntimeError) for r in results)
    out = batcher.submit("s", {"x": np.array([[1, 2]])})
    np.testing.assert_array_equal(out["sum"], [3])
    batcher.close()


def test_full_queue_is_refused():
    gate = threading.Event()

    def slow(signature, arrays):
        gate.wait(5)
        return {"y": arrays["x"]}
    batcher = RequestBatcher(slow, BatchingOptions(max_batch_size=2, batch_timeout_micros=0,
                                                   num_batch_threads=1, max_enqueued_batches=1))
    first = threading.Thread(target=batcher.submit, args=("s", {"x": np.zeros((2, 1))}))
    first.start()
    time.sleep(0.2)                                    # the worker holds the first batch
    queued = threading.Thread(target=batcher.submit, args=("s", {"x": np.zeros((2, 1))}))
    queued.start()
    time.sleep(0.2)                                    # two rows wait: the queue (1 x 2 rows) is full
    with pytest.raises(QueueFullError, match="queue is full"):
        batcher.submit("s", {"x": np.zeros((1, 1))})
    gate.set()
    first.join()
    queued.join()
    batcher.close()


def test_batching_parameters_file(tmp_path):
    good = tmp_path / "ok.txt"
    good.write_text("# comment\nmax_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\n"
                    "pad_variable_length_inputs: false\n")
    assert BatchingOptions.from_file(str(good)) == BatchingOptions(max_batch_size=16, batch_timeout_micros=500)
    shipped = BatchingOptions.from_file(os.path.join(REPO_ROOT, "serving", "batching_parameters.txt"))
    assert shipped.max_batch_size == 64 and shipped.batch_timeout_micros == 2000
    for text, message in [("allowed_batch_sizes: 8", "no field named \"allowed_batch_sizes\""),
                          ("max_batch_size { value: 0 }", "max_batch_size must be >= 1"),
                          ("pad_variable_length_inputs: true", "not supported"),
                          ("max_batch_size: 3", "Expected \"{\"")]:
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            BatchingOptions.from_file(str(bad))
    with pytest.raises(ValueError, match="missing.txt"):
        BatchingOptions.from_file(str(tmp_path / "missing.txt"))

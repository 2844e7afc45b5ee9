"""serving.local_server + serving.client end to end, over gRPC on 127.0.0.1.

The answers are compared with the SavedModel called directly and with a numpy ranking of
the in-process model; the bad requests must get the real server's status codes and leave
the server answering.
"""
import os
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf

from asif_tf import export
from serving import client as client_lib
from serving import local_server
from tests.test_export import K, MAX_SEQ_LEN, NUM_ITEMS, reference_topk, write_dataset, write_run

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    data_dir, run_dir, base = str(root / "data"), str(root / "run"), str(root / "models")
    tokens, _ = write_dataset(data_dir)
    model, cfg, info = write_run(run_dir, data_dir)
    # The trainer's path: the in-memory model is exported (test_export covers the rebuild from run_dir).
    path = export.export_run(run_dir, base, model=model, info=info, cfg=cfg, k=K)
    server, port, served_model = local_server.start_server(os.path.join(base, "asif"), port=0)
    client = client_lib.RecommenderClient(f"127.0.0.1:{port}", "asif", timeout_s=30, retries=2)
    yield dict(model=model, info=info, tokens=tokens, path=path, port=port, client=client, base=base,
               served_model=served_model)
    client.close()
    server.stop(grace=None)


HISTORIES = [[3, 7, 1], [], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [40]]


def expected(served, histories, exclude_seen=True):
    """(ids, scores) rows from numpy over the in-process model, popularity for empty histories."""
    tokens, counts = served["tokens"], served["info"].item_counts
    popular = sorted(range(1, NUM_ITEMS + 1), key=lambda i: (-counts[i], i))[:K]
    rows = []
    for h in histories:
        if not h:
            rows.append(([tokens[i] for i in popular], counts[popular] / counts[1:].sum()))
        else:
            ids, scores = reference_topk(served["model"], [h], K, exclude_seen)
            rows.append(([tokens[i] for i in ids[0]], scores[0]))
    return rows


def assert_matches(got, want):
    assert len(got) == len(want)
    for g, (ids, scores) in zip(got, want):
        assert [i for i, _ in g] == ids
        # The encoder's float32 results move by ~1e-4 with the padded width of the batch.
        np.testing.assert_allclose([s for _, s in g], scores, rtol=2e-3, atol=1e-3)


def raw(served, histories):
    return [[served["tokens"][i] for i in h] for h in histories]


def test_end_to_end_topk_equals_export_and_reference(served):
    got = served["client"].recommend(raw(served, HISTORIES))
    assert_matches(got, expected(served, HISTORIES))
    # And the same as the SavedModel called in-process, item for item.
    loaded = tf.saved_model.load(served["path"])
    width = max(len(h) for h in HISTORIES)
    direct = loaded.signatures["serving_default"](history=tf.constant(
        [[served["tokens"][i] for i in h] + [""] * (width - len(h)) for h in HISTORIES]))
    assert [[i for i, _ in row] for row in got] == [[t.decode() for t in r] for r in direct["item_ids"].numpy()]
    assert_matches(served["client"].recommend(raw(served, HISTORIES[:1]), k=2),
                   [([i for i, _ in got[0][:2]], [s for _, s in got[0][:2]])])


def test_user_embedding_metadata_and_status(served):
    c = served["client"]
    vectors = c.user_embeddings(raw(served, [[3, 7, 1]]))
    want = served["model"](tf.constant([[3, 7, 1]], tf.int64), training=False).numpy()
    np.testing.assert_allclose(vectors, want, rtol=1e-3, atol=2e-4)
    spec, sigs = c.metadata()
    assert (spec.name, spec.version.value) == ("asif", 1)
    assert set(sigs.signature_def) == {"serving_default", "user_embedding"}
    inputs = sigs.signature_def["serving_default"].inputs
    assert list(inputs) == ["history"] and inputs["history"].dtype == tf.string.as_datatype_enum
    status = c.status()
    assert [(v.version, v.state) for v in status.model_version_status] == [(1, 30)]   # 30 = AVAILABLE


def _string_proto(rows):
    return client_lib.histories_to_tensor_proto(rows, width=None)


def bad_requests(served):
    """(name, client kwargs, predict kwargs, expected code, text the message must contain)."""
    good = _string_proto(raw(served, [[3, 7]]))
    malformed = _string_proto(raw(served, [[3, 7]]))
    del malformed.string_val[-1]
    return [
        ("unknown model", {"model": "nope"}, {"inputs": {"history": good}}, grpc.StatusCode.NOT_FOUND, "nope"),
        ("unknown version", {"version": 99}, {"inputs": {"history": good}}, grpc.StatusCode.NOT_FOUND, "99"),
        ("unknown signature", {}, {"inputs": {"history": good}, "signature": "predict_all"},
         grpc.StatusCode.NOT_FOUND, "predict_all"),
        ("wrong dtype", {}, {"inputs": {"history": np.array([[3, 7]], np.int64)}},
         grpc.StatusCode.INVALID_ARGUMENT, "DT_STRING"),
        ("wrong rank", {}, {"inputs": {"history": np.array([b"a", b"b"], dtype=object)}},
         grpc.StatusCode.INVALID_ARGUMENT, "shape [?, ?]"),
        ("empty batch", {}, {"inputs": {"history": np.zeros((0, 3), dtype=object).astype(bytes)}},
         grpc.StatusCode.INVALID_ARGUMENT, "batch is empty"),
        ("missing input", {}, {"inputs": {"items": good}}, grpc.StatusCode.INVALID_ARGUMENT, "missing ['history']"),
        ("unknown output", {}, {"inputs": {"history": good}, "output_filter": ["logits"]},
         grpc.StatusCode.INVALID_ARGUMENT, "logits"),
        ("non-UTF-8", {}, {"inputs": {"history": _string_proto([[b"ok", b"\xff\xfe"]])}},
         grpc.StatusCode.INVALID_ARGUMENT, "element [0, 1] is not UTF-8"),
        ("malformed proto", {}, {"inputs": {"history": malformed}}, grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    ]


def test_bad_requests_get_status_and_server_keeps_answering(served):
    want = expected(served, HISTORIES)
    for name, client_kwargs, predict_kwargs, code, text in bad_requests(served):
        with client_lib.RecommenderClient(f"127.0.0.1:{served['port']}", **{"model": "asif", **client_kwargs},
                                          retries=0) as c:
            with pytest.raises(grpc.RpcError) as info:
                c.predict(**predict_kwargs)
        assert info.value.code() == code, (name, info.value.details())
        assert text in info.value.details(), (name, info.value.details())
        assert_matches(served["client"].recommend(raw(served, HISTORIES)), want)


def test_ten_thousand_item_history_is_truncated_not_refused(served):
    rng = np.random.default_rng(5)
    # Items 30..35 stay out of the history so there are candidates left to rank.
    pool = [i for i in range(1, NUM_ITEMS + 1) if not 30 <= i <= 35]
    long_history = [int(i) for i in rng.choice(pool, 10_000)]
    long_history[-MAX_SEQ_LEN:] = [1, 2, 3, 4, 5, 6, 7, 8]     # the items the model sees
    with client_lib.RecommenderClient(f"127.0.0.1:{served['port']}", width=None, timeout_s=30) as c:
        got = c.recommend([raw(served, [long_history])[0] + ["unknown-1"]])
    ids, scores = reference_topk(served["model"], [long_history], K)
    kept = [served["tokens"][i] for i, s in zip(ids[0], scores[0]) if np.isfinite(s)]
    assert [i for i, _ in got[0]] == kept
    assert not {i for i, _ in got[0]} & {served["tokens"][i] for i in long_history}


def test_concurrent_batched_calls(served):
    histories = [[(3 * u + j) % NUM_ITEMS + 1 for j in range(u % 9)] for u in range(32)]
    want = expected(served, histories)
    errors, results = [], [None] * 8

    def work(t):
        try:
            results[t] = served["client"].recommend(raw(served, histories))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in results:
        assert_matches(got, want)


def test_request_batching_merges_concurrent_calls_with_same_answers(served):
    """A second server on the same export with TF Serving-style batching: concurrent batch-1
    calls (one fixed width, as serving.client sends) are merged into fewer graph runs and each
    caller still gets its own user's answer."""
    from serving.batching import BatchingOptions
    server, port, model = local_server.start_server(
        os.path.join(served["base"], "asif"), port=0,
        batching=BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1))
    histories = [[(5 * u + j) % NUM_ITEMS + 1 for j in range(1 + u % 6)] for u in range(16)]
    want = expected(served, histories)
    results, errors = [None] * len(histories), []
    barrier = threading.Barrier(len(histories))

    def work(u):
        try:
            with client_lib.RecommenderClient(f"127.0.0.1:{port}", "asif", timeout_s=30) as c:
                barrier.wait()
                results[u] = c.recommend(raw(served, [histories[u]]))[0]
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    try:
        threads = [threading.Thread(target=work, args=(u,)) for u in range(len(histories))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert_matches(results, want)
        assert model.batcher.requests_run >= len(histories)
        assert model.batcher.batches_run < model.batcher.requests_run
    finally:
        server.stop(grace=None)
        model.batcher.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_unavailable_until_server_starts(served):
    port = _free_port()
    holder = {}

    def start_later():
        time.sleep(1.0)
        holder["server"] = local_server.start_server(os.path.join(served["base"], "asif"), port=port)[0]
    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        with client_lib.RecommenderClient(f"127.0.0.1:{port}", timeout_s=10, retries=40, backoff_s=0.05) as c:
            got = c.recommend(raw(served, [[3, 7, 1]]))
        assert_matches(got, expected(served, [[3, 7, 1]]))
    finally:
        starter.join()
        holder["server"].stop(grace=None)
    with client_lib.RecommenderClient(f"127.0.0.1:{port}", timeout_s=1, retries=1, backoff_s=0.01) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.recommend([["x"]])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_and_client_command_lines(served, capsys):
    proc = subprocess.Popen([sys.executable, "-m", "serving.local_server", "--export_dir",
                             os.path.join(served["base"], "asif"), "--port", "0"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert "Serving model 'asif' version 1" in line, line
        port = int(line.rsplit(":", 1)[1])
        tokens = served["tokens"]
        assert client_lib.main(["--server", f"127.0.0.1:{port}", "--model", "asif", "--history",
                                tokens[3], tokens[7], tokens[1], "--k", "3"]) == 0
        out = capsys.readouterr().out
        ids = expected(served, [[3, 7, 1]])[0][0][:3]
        printed = [line.split()[1] for line in out.splitlines() if line.strip()[:1].isdigit()]
        assert printed == ids
        assert client_lib.main(["--server", f"127.0.0.1:{port}", "--model", "other", "--history", "x"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_server_refuses_directory_without_versions(tmp_path):
    with pytest.raises(FileNotFoundError, match="no version directory"):
        local_server.ServedModel(str(tmp_path))

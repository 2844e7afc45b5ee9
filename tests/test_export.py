"""SavedModel export: the served top-k equals the in-process model's, ranked in numpy.

A tiny preprocessed dataset (item table, metadata, vocabulary with non-numeric raw ids in
shuffled order) and a run directory with a best checkpoint are written to a temporary
directory; the export is rebuilt from them exactly as ``python -m asif_tf.export`` does.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from asif_tf import export
from asif_tf.data import schema
from asif_tf.models import registry
from tests.helpers import tiny_config, tiny_info

NUM_ITEMS = 40
MAX_SEQ_LEN = 8
K = 5


def write_dataset(data_dir, num_items=NUM_ITEMS, seed=0):
    """Items TFRecords + metadata.json + vocab/item.tsv; returns the raw token of each internal id."""
    info = tiny_info(num_items, seed=seed)
    rng = np.random.default_rng(seed)
    tokens = [""] + [f"B0{n:05d}X" for n in rng.permutation(np.arange(100, 100 + num_items))]
    os.makedirs(os.path.join(data_dir, schema.ITEMS_DIR), exist_ok=True)
    os.makedirs(os.path.join(data_dir, schema.VOCAB_DIR), exist_ok=True)
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(data_dir, schema.ITEMS_DIR, "part-00000-of-00001.tfrecord.gz"),
                              opts) as w:
        for i in range(1, num_items + 1):
            attrs = {f: [int(a) for a in table[i] if a > 0] for f, table in info.item_attributes.items()}
            w.write(schema.encode_item_record(i, int(info.item_counts[i]), attrs))
    with open(os.path.join(data_dir, schema.METADATA_FILE), "w") as f:
        json.dump({"schema_version": schema.SCHEMA_VERSION, "num_items": num_items, "num_users": 0,
                   "attribute_fields": info.field_vocab_sizes, "splits": {"train": 0, "valid": 0, "test": 0}}, f)
    # Lines in shuffled order: the mapping must come from the ids in the file, not line numbers.
    with open(os.path.join(data_dir, schema.VOCAB_DIR, schema.ITEM_VOCAB_FILE), "w") as f:
        for i in rng.permutation(np.arange(1, num_items + 1)):
            f.write(f"{i}\t{tokens[i]}\n")
    return tokens, info


def write_run(run_dir, data_dir, seed=0):
    """A run directory as asif_tf.train leaves it: config.json and best/ (model + optimizer)."""
    from asif_tf.data import input as data_input
    cfg = tiny_config()
    cfg.data.data_dir = data_dir
    cfg.data.max_seq_len = MAX_SEQ_LEN
    cfg.model.init_std = 0.3     # well-separated scores, so rankings have no near-ties
    info = data_input.load_dataset_info(data_dir)
    tf.keras.utils.set_random_seed(seed)
    model = registry.build_model(cfg, info)
    optimizer = tf.keras.optimizers.Adam(1e-3)
    model.compile(optimizer=optimizer)
    model(tf.zeros([1, 2], tf.int64), training=False)
    optimizer.build(model.trainable_variables)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write(cfg.to_json())
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer),
                               os.path.join(run_dir, "best"), max_to_keep=1).save(checkpoint_number=1)
    return model, cfg, info


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data_dir, run_dir, base = str(root / "data"), str(root / "run"), str(root / "models")
    tokens, _ = write_dataset(data_dir)
    model, cfg, info = write_run(run_dir, data_dir)
    path = export.export_run(run_dir, base, k=K)
    keep_path = export.export_run(run_dir, base, model_name="asif_keep", k=K, keep_seen=True)
    return dict(model=model, cfg=cfg, info=info, tokens=tokens, path=path, keep_path=keep_path, base=base,
                run_dir=run_dir, data_dir=data_dir)


def reference_topk(model, histories, k, exclude_seen=True, max_seq_len=MAX_SEQ_LEN):
    """Top-k internal ids and scores by numpy over the in-process model (histories: internal ids)."""
    items = model.item_embeddings().numpy()
    out_ids, out_scores = [], []
    for h in histories:
        h = [i for i in h if i > 0]
        x = np.array([h[-max_seq_len:]], np.int64)
        user = model(tf.constant(x), training=False).numpy()[0]
        scores = items @ user
        scores[0] = -np.inf
        if exclude_seen:
            scores[h] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        out_ids.append(order)
        out_scores.append(scores[order])
    return np.array(out_ids), np.array(out_scores)


def to_strings(tokens, histories):
    width = max(len(h) for h in histories)
    return tf.constant([[tokens[i] for i in h] + [""] * (width - len(h)) for h in histories])


def decode(tensor):
    return [[t.decode() for t in row] for row in tensor.numpy()]


HISTORIES = [[3, 7, 1], [12], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [40, 1, 2, 3, 38, 2]]


def test_layout_and_warmup(exported):
    path = exported["path"]
    assert os.path.basename(path) == "1" and os.path.dirname(path) == os.path.join(exported["base"], "asif")
    for name in ("saved_model.pb", "variables/variables.index", "assets/item.tsv",
                 "assets.extra/tf_serving_warmup_requests"):
        assert os.path.exists(os.path.join(path, name)), name
    from tensorflow_serving.apis import prediction_log_pb2
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
            tf.data.TFRecordDataset(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))]
    assert {l.predict_log.request.model_spec.signature_name for l in logs} == {"serving_default", "user_embedding"}
    loaded = tf.saved_model.load(path)
    for log in logs:   # every warm-up request runs on the export
        req = log.predict_log.request
        out = loaded.signatures[req.model_spec.signature_name](history=tf.make_ndarray(req.inputs["history"]))
        assert out


def test_topk_equals_in_process_model(exported):
    loaded = tf.saved_model.load(exported["path"])
    out = loaded.signatures["serving_default"](history=to_strings(exported["tokens"], HISTORIES))
    want_ids, want_scores = reference_topk(exported["model"], HISTORIES, K)
    assert decode(out["item_ids"]) == [[exported["tokens"][i] for i in row] for row in want_ids]
    np.testing.assert_allclose(out["scores"].numpy(), want_scores, rtol=1e-4, atol=1e-4)
    # Seen items (even those older than the max_seq_len window) never come back.
    for row, h in zip(want_ids, HISTORIES):
        assert not set(row) & set(h)


def test_keep_seen_ranks_history_items_too(exported):
    loaded = tf.saved_model.load(exported["keep_path"])
    out = loaded.signatures["serving_default"](history=to_strings(exported["tokens"], HISTORIES))
    want_ids, want_scores = reference_topk(exported["model"], HISTORIES, K, exclude_seen=False)
    assert decode(out["item_ids"]) == [[exported["tokens"][i] for i in row] for row in want_ids]
    np.testing.assert_allclose(out["scores"].numpy(), want_scores, rtol=1e-4, atol=1e-4)


def test_unknown_ids_are_dropped_and_empty_history_gets_most_popular(exported):
    tokens, loaded = exported["tokens"], tf.saved_model.load(exported["path"])
    history = tf.constant([["nope", tokens[3], "", "??", tokens[7], tokens[1]],   # == [3, 7, 1]
                           ["", "", "", "", "", ""],
                           ["unknown-only", "x", "", "", "", ""]])
    out = loaded.signatures["serving_default"](history=history)
    want_ids, want_scores = reference_topk(exported["model"], [[3, 7, 1]], K)
    ids = decode(out["item_ids"])
    assert ids[0] == [tokens[i] for i in want_ids[0]]
    np.testing.assert_allclose(out["scores"].numpy()[0], want_scores[0], rtol=1e-4, atol=1e-4)
    counts = exported["info"].item_counts
    # Most popular by a plain sort over (count desc, id asc).
    popular = sorted(range(1, NUM_ITEMS + 1), key=lambda i: (-counts[i], i))[:K]
    assert ids[1] == ids[2] == [tokens[i] for i in popular]
    np.testing.assert_allclose(out["scores"].numpy()[1], counts[popular] / counts[1:].sum(), rtol=1e-6)


def test_user_embedding_signature(exported):
    loaded = tf.saved_model.load(exported["path"])
    out = loaded.signatures["user_embedding"](history=to_strings(exported["tokens"], HISTORIES))["user_embedding"]
    for row, h in zip(out.numpy(), HISTORIES):
        want = exported["model"](tf.constant([h[-MAX_SEQ_LEN:]], tf.int64), training=False).numpy()[0]
        np.testing.assert_allclose(row, want, rtol=1e-3, atol=2e-4)


def test_non_utf8_is_invalid_argument(exported):
    loaded = tf.saved_model.load(exported["path"])
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](history=tf.constant([[b"\xff\xfe", b"a"]]))


def test_fewer_candidates_than_k_pad_with_empty_ids(tmp_path, exported):
    # History holding all but 2 items: only 2 candidates are left for k = 5.
    loaded = tf.saved_model.load(exported["path"])
    history = list(range(1, NUM_ITEMS - 1))
    out = loaded.signatures["serving_default"](history=to_strings(exported["tokens"], [history]))
    ids = decode(out["item_ids"])[0]
    assert sorted(ids[:2]) == sorted(exported["tokens"][i] for i in (NUM_ITEMS - 1, NUM_ITEMS))
    assert ids[2:] == ["", "", ""] and np.all(np.isneginf(out["scores"].numpy()[0, 2:]))


def test_versions_are_never_overwritten(exported, tmp_path):
    base = str(tmp_path)
    first = export.export_run(exported["run_dir"], base, k=3)
    marker = os.path.join(first, "marker")
    open(marker, "w").close()
    os.makedirs(os.path.join(base, "asif", "7"))   # a version pushed by someone else
    second = export.export_run(exported["run_dir"], base, k=3)
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "8")
    assert os.path.exists(marker) and os.listdir(os.path.join(base, "asif", "7")) == []
    assert sorted(os.listdir(os.path.join(base, "asif"))) == ["1", "7", "8"]   # no staging left behind


def test_cli_and_clear_errors(exported, tmp_path, capsys):
    assert export.main(["--run_dir", exported["run_dir"], "--export_dir", str(tmp_path), "--k", "4",
                        "--model_name", "m"]) == 0
    loaded = tf.saved_model.load(str(tmp_path / "m" / "1"))
    assert loaded.signatures["serving_default"](history=tf.constant([[""]]))["item_ids"].shape == (1, 4)
    assert export.main(["--run_dir", str(tmp_path / "missing"), "--export_dir", str(tmp_path)]) == 2
    assert "config.json not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="k must be in 1..40"):
        export.export_run(exported["run_dir"], str(tmp_path), k=41)


def test_vocabulary_must_match_item_table(tmp_path):
    data_dir = str(tmp_path)
    write_dataset(data_dir, num_items=6)
    path = os.path.join(data_dir, "vocab", "item.tsv")
    with open(path) as f:
        lines = f.readlines()
    with open(path, "w") as f:
        f.writelines(lines[:-1])
    with pytest.raises(ValueError, match="1 item ids of 1..6 have no token"):
        export.read_item_vocab(data_dir, 6)
    with pytest.raises(FileNotFoundError, match="vocab/item.tsv not found"):
        export.read_item_vocab(str(tmp_path / "nowhere"), 6)


@pytest.mark.parametrize("n,k,chunk", [(1000, 10, 64), (1001, 7, 100), (300, 50, 8), (4096, 1, 1024)])
def test_exact_top_k_equals_plain_top_k(n, k, chunk):
    rng = np.random.default_rng(n + k)
    # Rounded scores give many ties; -inf rows and entries mimic excluded items.
    scores = np.round(rng.normal(size=(6, n)), 1).astype(np.float32)
    scores[1, : n - 3] = -np.inf                       # fewer finite candidates than k
    scores[2] = -np.inf
    scores[3, rng.integers(0, n, n // 2)] = -np.inf
    want_values, want_ids = tf.math.top_k(scores, k=k)
    got_values, got_ids = tf.function(lambda s: export.exact_top_k(s, k, chunk))(tf.constant(scores))
    np.testing.assert_array_equal(got_values.numpy(), want_values.numpy())
    finite = np.isfinite(want_values.numpy())
    np.testing.assert_array_equal(got_ids.numpy()[finite], want_ids.numpy()[finite])
    # Rows by numpy: values are the k largest.
    np.testing.assert_array_equal(got_values.numpy(), -np.sort(-scores, axis=1)[:, :k])


def test_restore_run_brings_back_the_saved_weights(exported, tmp_path):
    """restore_run rebuilds the run from its config.json and dataset: same weights as the model that
    was saved, same scores; the dataset directory can be overridden (a moved run)."""
    history = tf.constant([[3, 7, 1, 0], [12, 0, 0, 0]], tf.int64)
    want = exported["model"](history, training=False).numpy()
    want_weights = [w.numpy() for w in exported["model"].weights]
    run = export.restore_run(exported["run_dir"])
    assert run.data_dir == exported["data_dir"] and run.cfg.model.model == exported["cfg"].model.model
    assert run.checkpoint == os.path.join(exported["run_dir"], "best", "ckpt-1")
    assert run.info.num_items == NUM_ITEMS
    got_weights = [w.numpy() for w in run.model.weights]
    assert len(got_weights) == len(want_weights)
    for got, wanted in zip(got_weights, want_weights):
        np.testing.assert_array_equal(got, wanted)
    np.testing.assert_allclose(run.model(history, training=False).numpy(), want, rtol=1e-6, atol=1e-6)
    # A copy of the dataset elsewhere: read from there, not from the path in config.json.
    import shutil
    moved = str(tmp_path / "moved")
    shutil.copytree(exported["data_dir"], moved)
    assert export.restore_run(exported["run_dir"], data_dir=moved).data_dir == moved
    # The run has no per-epoch checkpoints, only best/.
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export.restore_run(exported["run_dir"], "last")

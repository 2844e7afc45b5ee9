"""bench/hie_norms.py: the per-position statistics against a position-by-position recomputation,
and a trained run whose HIE is only observed."""
import json
import pathlib
import types

import numpy as np
import pytest

from tests.test_reproduce import REPO, load_module, load_reproduce, write_s3rec


def load_hie_norms():
    return load_module("hie_norms", REPO / "bench" / "hie_norms.py")


def test_recorded_means_match_a_position_by_position_recomputation():
    hie_norms = load_hie_norms()
    import tensorflow as tf
    from asif_tf.layers.hie import HomogeneousInformationExtraction
    tf.random.set_seed(3)
    hie = HomogeneousInformationExtraction(num_bases=4, max_seq_len=12)
    lengths = [12, 5, 1, 9]
    valid = np.array([[1.0] * k + [0.0] * (12 - k) for k in lengths], np.float32)
    item = tf.random.normal([4, 12, 8])
    fused = tf.random.normal([4, 12, 8])
    recorder = hie_norms.HIERecorder(types.SimpleNamespace(blocks=[types.SimpleNamespace(hie=None),
                                                                  types.SimpleNamespace(hie=hie)]))
    assert list(recorder.layers) == [1]
    out = hie(item, fused, tf.constant(valid)).numpy()
    e, f = item.numpy().astype(np.float64), fused.numpy().astype(np.float64)
    labels = hie_norms.prefix_group_labels() + ["all"]
    assert labels[:3] == ["prefix length 1-3", "prefix length 4-7", "prefix length 8-15"]
    rows = {g: [] for g in labels}
    for b, k in enumerate(lengths):
        for t in range(k):
            inj = out[b, t].astype(np.float64) - e[b, t]
            # a position where every sign disagrees gets nothing from HIE: cosine 0 there
            cosine = (e[b, t] @ inj) / np.sqrt((e[b, t] @ e[b, t]) * (inj @ inj)) if inj @ inj > 0 else 0.0
            values = (np.sqrt(e[b, t] @ e[b, t]), np.sqrt(inj @ inj), np.sqrt(inj @ inj) / np.sqrt(e[b, t] @ e[b, t]),
                      cosine, np.sqrt(f[b, t] @ f[b, t]))
            group = labels[0 if t + 1 < 4 else 1 if t + 1 < 8 else 2]
            rows[group].append(values)
            rows["all"].append(values)
    means = recorder.means()[1]
    for g, label in enumerate(labels):
        assert recorder.counts[1][g] == len(rows[label])
        for s, stat in enumerate(hie_norms.STATS):
            if rows[label]:
                assert means[stat][g] == pytest.approx(np.mean([r[s] for r in rows[label]]), rel=1e-4)
            else:
                assert means[stat][g] is None
    assert 0 < means["injected_norm"][-1]


def test_a_trained_run_is_only_observed(tmp_path, capsys):
    """HIE in the last of two layers: only that layer is reported, every real position of the split is
    counted once, and the model's scores are the same with the recorder on."""
    hie_norms = load_hie_norms()
    reproduce = load_reproduce()
    data = tmp_path / "mini"
    write_s3rec(data, users=40)
    results = tmp_path / "results"
    assert reproduce.main(["--datasets", f"mini={data}", "--sweep", "hie_from", "--sweep_values", "1",
                           "--max_epochs", "1", "--training_samples", "prefix", "--results_dir", str(results),
                           "--verbose", "0"]) == 0
    saved = json.loads((results / "mini-cpu-prefix-sweep-hie_from.json").read_text())
    run_dir = saved["points"][0]["run_dir"]
    out = tmp_path / "norms.json"
    assert hie_norms.main([run_dir, "--json", str(out)]) == 0
    assert "| 1 | all |" in capsys.readouterr().out
    (result,) = json.loads(out.read_text())
    assert list(result["layers"]) == ["1"] and result["users"] == 40

    import tensorflow as tf
    from asif_tf import export
    from asif_tf.data import input as data_input
    cfg = export.load_run_config(run_dir)
    info = data_input.load_dataset_info(cfg.data.data_dir, cfg.data.attribute_field_list())
    model, _ = export.restore_model(run_dir, cfg, info)
    histories = [b["history"] for b in data_input.eval_dataset(cfg.data.data_dir, "valid", 64, cfg.data.max_seq_len,
                                                               bucket=False)]
    assert result["positions"]["1"][-1] == sum(int(tf.reduce_sum(tf.cast(h > 0, tf.int32))) for h in histories)
    before = model(histories[0], training=False).numpy()
    before_sequence = model.encoder(histories[0], training=False)["sequence"].numpy()
    recorder = hie_norms.HIERecorder(model.encoder)
    # Observed (the full pass, which the recorder reads) and not (the model's last-position pass).
    np.testing.assert_allclose(model.encoder(histories[0], training=False)["sequence"].numpy(), before_sequence,
                               rtol=1e-6)
    assert recorder.counts[1][-1] == int(tf.reduce_sum(tf.cast(histories[0] > 0, tf.int32)))
    np.testing.assert_allclose(model(histories[0], training=False).numpy(), before, rtol=1e-6)
    assert recorder.counts[1][-1] == int(tf.reduce_sum(tf.cast(histories[0] > 0, tf.int32)))
    with pytest.raises(SystemExit, match="expected a positive number"):
        hie_norms.main([run_dir, "--max_users", "0"])
    # Runs without HIE are named, before any model is built.
    saved_config = json.loads((pathlib.Path(run_dir) / "config.json").read_text())
    for name, change, message in (("nohie", {"hie": False}, "no layer with HIE"),
                                  ("sasrec", {"model": "sasrec"}, "is a sasrec run")):
        other = tmp_path / name
        other.mkdir()
        config = dict(saved_config, model=dict(saved_config["model"], **change))
        (other / "config.json").write_text(json.dumps(config))
        with pytest.raises(SystemExit, match=message):
            hie_norms.main([str(other)])

"""bench/probe.py on a tiny S3-Rec-format dataset: variants from one initialisation, the gradient
norms of the two loss terms, and usage errors."""
import json

import pytest

from tests.test_reproduce import REPO, load_module, write_s3rec


def load_probe():
    return load_module("probe", REPO / "bench" / "probe.py")


def test_variant_parsing():
    probe = load_probe()
    assert probe.parse_variant("default") == ({}, {})
    assert probe.parse_variant("lambda_attr=1;learning_rate=1e-4;fusion=gate;rsa=false") == (
        {"lambda_attr": 1, "fusion": "gate", "rsa": False}, {"learning_rate": 1e-4})
    with pytest.raises(ValueError, match="expected name=value"):
        probe.parse_variant("lambda_attr")


def test_difsr_variants_share_the_initialisation_and_the_aux_gradient_scales_with_its_weight(tmp_path):
    """The same seed gives every variant the same weights and first batch, so the retrieval loss and
    its gradient are equal across attribute-loss weights, while the weighted attribute loss and its
    gradient scale with the weight (0 at weight 0)."""
    probe = load_probe()
    data = tmp_path / "mini"
    write_s3rec(data, users=40)
    out = tmp_path / "probe.json"
    argv = ["--dataset", f"mini={data}", "--model", "difsr", "--setting", "cpu", "--steps", "2",
            "--variants", "lambda_attr=1", "lambda_attr=3", "lambda_attr=0", "--results_dir", str(tmp_path / "res"),
            "--json", str(out)]
    assert probe.main(argv) == 0
    one, three, zero = json.loads(out.read_text())
    assert [r["variant"] for r in (one, three, zero)] == ["lambda_attr=1", "lambda_attr=3", "lambda_attr=0"]
    assert one["init_main_loss"] == pytest.approx(three["init_main_loss"], rel=1e-6)
    assert one["init_grad_main"] == pytest.approx(three["init_grad_main"], rel=1e-5)
    assert three["init_aux_loss"] == pytest.approx(3 * one["init_aux_loss"], rel=1e-5)
    assert three["init_grad_aux"] == pytest.approx(3 * one["init_grad_aux"], rel=1e-4)
    assert one["init_grad_aux"] > 0 and one["shared_variables"] > 0
    assert zero["init_aux_loss"] == 0 and zero["init_grad_aux"] == 0
    for row in (one, three, zero):
        assert row["steps"] == 2 and 0 <= row["valid"]["ndcg@20"] <= row["valid"]["hr@20"] <= 1


def test_usage_errors(tmp_path, capsys):
    probe = load_probe()
    for argv, message in ((["--model", "difsr", "--steps", "0"], "--steps must be >= 1"),
                          (["--model", "difsr", "--variants", "bogus_field=1"], "unknown model config field"),
                          (["--model", "difsr", "--variants", "lambda_attr"], "expected name=value")):
        with pytest.raises(SystemExit) as err:
            probe.main(argv + ["--results_dir", str(tmp_path)])
        assert err.value.code == 2
        assert message in capsys.readouterr().err


def test_probe_training_is_the_trainers_first_epoch(tmp_path):
    """Measuring the initial gradients leaves the probe's training untouched: a probe of one epoch's
    steps ends where asif_tf.train.run's first epoch of the same config ends (same validation metrics)."""
    probe = load_probe()
    reproduce = load_module("reproduce", REPO / "bench" / "reproduce.py")
    from asif_tf import train
    data = tmp_path / "mini"
    write_s3rec(data, users=40)
    out = tmp_path / "probe.json"
    argv = ["--dataset", f"mini={data}", "--model", "nova", "--setting", "cpu", "--steps", "1000",
            "--results_dir", str(tmp_path / "res"), "--json", str(out)]
    assert probe.main(argv) == 0
    (row,) = json.loads(out.read_text())
    ds = reproduce.parse_datasets(f"mini={data}", tmp_path, "paper")[0]
    cfg = reproduce.model_config(reproduce.setting_config("cpu", ds.name), "nova")
    cfg.data.data_dir = reproduce.prepare_dataset(ds, tmp_path / "res")
    cfg.train.training_samples, cfg.train.epochs, cfg.train.verbose = "prefix", 1, 0
    cfg.train.run_dir = str(tmp_path / "run")
    trained = train.run(cfg)
    for name, value in trained["valid"].items():
        assert row["valid"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name

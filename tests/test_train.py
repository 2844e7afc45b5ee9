"""python -m asif_tf.train: CLI, training on the built-in dataset, resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from asif_tf import train
from asif_tf.config import ExperimentConfig
from asif_tf.data import input as data_input
from asif_tf.data.builtin import ensure_builtin_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def builtin_dir(tmp_path_factory):
    """The built-in dataset, generated and preprocessed by the real Beam pipeline."""
    return ensure_builtin_dataset(str(tmp_path_factory.mktemp("builtin")))


def small_config(data_dir, run_dir, epochs=3):
    cfg = ExperimentConfig()
    cfg.data.data_dir = data_dir
    cfg.model.hidden_size, cfg.model.num_heads, cfg.model.inner_size = 32, 2, 64
    cfg.model.dropout, cfg.model.attention_dropout = 0.2, 0.2
    cfg.train.epochs, cfg.train.run_dir, cfg.train.verbose = epochs, str(run_dir), 0
    cfg.train.learning_rate = 3e-3
    return cfg


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for flag in ["--model", "--epochs", "--batch_size", "--learning_rate", "--hidden_size", "--num_layers",
                 "--num_heads", "--dropout", "--max_seq_len", "--lambda_fa", "--num_bases", "--fusion",
                 "--rsa", "--no-rsa", "--up", "--hie", "--fa", "--loss", "--seed", "--run_dir", "--config",
                 "--data", "--training_samples", "--mixed_precision"]:
        assert flag in text, flag
    # Each config flag states its config default once (argparse's own "(default: None)",
    # the parser-level default that lets --config win, must not be printed after it).
    flat = " ".join(text.split())
    assert "(default: None)" not in flat
    assert ") (default:" not in flat
    from asif_tf.config import ModelConfig, TrainConfig
    assert f"(default: {ModelConfig().hidden_size!r})" in flat
    assert f"(default: {TrainConfig().learning_rate!r})" in flat


def test_bad_flag_values_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        train.main(["--hidden_size", "30", "--num_heads", "4"])
    assert "divisible" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--fusion", "product"])
    assert "invalid choice" in capsys.readouterr().err


def most_popular_ndcg20(data_dir):
    """NDCG@20 of ranking by training popularity, computed with numpy (pessimistic ties)."""
    info = data_input.load_dataset_info(data_dir)
    pop = info.item_counts.astype(np.float64)
    order_score = pop[1:]
    values = []
    for batch in data_input.eval_dataset(data_dir, "test", 1024, 50, bucket=False):
        for t in batch["target"].numpy():
            rank = int(np.sum(order_score >= pop[t])) - 1      # items scoring >= target, minus itself
            values.append(1 / np.log2(rank + 2) if rank < 20 else 0.0)
    return float(np.mean(values))


def _rows(batches, key):
    """Multiset of (history without padding, last label or target) over every batch, and the widths."""
    rows, widths = [], set()
    for batch in batches:
        history = batch["history"].numpy()
        widths.add(history.shape[1])
        last = batch[key].numpy()
        for h, y in zip(history, last):
            real = h[h > 0]
            rows.append((tuple(real), int(y[len(real) - 1]) if key == "labels" else int(y)))
    return sorted(rows), widths


def test_unbucketed_batches_pad_to_max_seq_len_and_hold_the_bucketed_examples(builtin_dir):
    """Without buckets every batch is [b, max_seq_len] (what the research code's per-sequence HIE
    basis sees); with them, batches are narrower; both hold the same examples."""
    n = 12    # shorter than the longest built-in histories, so truncation is exercised too
    for make, key in ((lambda b: data_input.eval_dataset(builtin_dir, "valid", 64, n, bucket=b), "target"),
                      (lambda b: data_input.train_dataset(builtin_dir, 64, n, samples="prefix", bucket=b,
                                                          shuffle=False), "labels")):
        flat, flat_widths = _rows(make(False), key)
        bucketed, bucketed_widths = _rows(make(True), key)
        assert flat_widths == {n}
        assert min(bucketed_widths) < n
        assert flat == bucketed and max(len(h) for h, _ in flat) == n


def test_short_training_beats_most_popular(builtin_dir, tmp_path):
    cfg = small_config(builtin_dir, tmp_path / "run", epochs=3)
    results = train.run(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test"] == pytest.approx(results["test"])
    assert set(saved["test"]) >= {"hr@10", "hr@20", "ndcg@10", "ndcg@20", "mrr"}
    assert saved["epochs"] == 3 and saved["seconds"] > 0
    history = json.loads((tmp_path / "run" / "state.json").read_text())["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    pop = most_popular_ndcg20(builtin_dir)
    assert results["test"]["ndcg@20"] > 1.25 * pop, (results["test"], pop)
    saved_cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert ExperimentConfig.from_dict(saved_cfg).model.hidden_size == 32
    assert os.listdir(tmp_path / "run" / "logs")      # TensorBoard events


def test_resume_refuses_a_different_config(builtin_dir, tmp_path):
    cfg = small_config(builtin_dir, tmp_path / "run", epochs=1)
    cfg.model.num_layers = 1
    train.run(cfg)
    cfg.model.hidden_size = 16
    cfg.model.num_heads = 2
    with pytest.raises(SystemExit, match="different config"):
        train.run(cfg)


def test_config_differences_ignore_resumable_and_newer_fields():
    """A run is resumed or reused only under its own config: a changed model field is a difference,
    a resumable field (epochs, patience) is not, and neither is a field the saved config predates."""
    cfg = ExperimentConfig()
    saved = cfg.to_dict()
    assert train.config_differences(saved, cfg) == []
    saved["model"]["lambda_fa"] = 1.0
    saved["train"]["epochs"] = 7
    saved["train"]["run_dir"] = "/elsewhere/run"         # moved: the same run
    del saved["model"]["attribute_dropout"]
    assert train.config_differences(saved, cfg) == ["model.lambda_fa: 1.0 -> 0.01"]


def test_killed_run_resumes_from_last_checkpoint(builtin_dir, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "asif_tf.train", "--data", builtin_dir, "--run_dir", str(run_dir),
           "--epochs", "4", "--patience", "10", "--hidden_size", "16", "--num_layers", "1",
           "--inner_size", "32", "--verbose", "2"]
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state_file = run_dir / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state_file.exists() and json.loads(state_file.read_text())["epoch"] >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state_file.read_text())["epoch"]
    assert 1 <= killed_at < 4
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"from epoch {killed_at}" in out.stdout
    state = json.loads(state_file.read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]     # no epoch redone, none skipped
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 4
    # The resumed process trained only the remaining epochs.
    assert out.stdout.count("Epoch ") == 4 - killed_at


def test_larger_patience_extends_an_early_stopped_run(builtin_dir, tmp_path):
    cfg = small_config(builtin_dir, tmp_path / "run", epochs=1)
    cfg.model.num_layers, cfg.train.patience = 1, 1
    train.run(cfg)
    state_file = tmp_path / "run" / "state.json"
    # As if epoch 1 had not improved on an earlier best: patience 1 is used up.
    state = json.loads(state_file.read_text())
    state.update(stopped_early=True, wait=1, best=state["best"] + 1.0)
    state_file.write_text(json.dumps(state))
    cfg.train.epochs = 3
    results = train.run(cfg)                      # same patience: the run stays finished
    assert results["epochs"] == 1 and results["stopped_early"]
    cfg.train.patience = 5
    results = train.run(cfg)                      # larger patience: it continues to --epochs
    history = json.loads(state_file.read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert results["epochs"] == 3 and not results["stopped_early"]


def test_config_file_then_flags(tmp_path):
    cfg = ExperimentConfig()
    cfg.model.hidden_size, cfg.model.fusion = 48, "gate"
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    args = train.build_parser().parse_args(["--config", str(path), "--fusion", "concat"])
    from asif_tf.config import config_from_args
    got = config_from_args(args, args.config)
    assert got.model.hidden_size == 48 and got.model.fusion == "concat"
    path.write_text(json.dumps({"model": {"hidden_sise": 3}}))
    with pytest.raises(ValueError, match="hidden_sise"):
        config_from_args(args, str(path))

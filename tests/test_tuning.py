"""tuning/: the KerasTuner search over the asif_tf model builder.

The end-to-end test runs a real 2-trial search on a small generated dataset (the built-in
generator + the Beam preprocessing, a few seconds) and checks what it wrote against values
computed another way: the trial objective against the per-epoch validation history, and the
best config against an independent ``asif_tf.train.run`` of it.
"""
import json
import os
import sys

import pytest

import asif_tf  # noqa: F401
from asif_tf.config import ExperimentConfig
from tuning import search
from tuning import space as space_lib
from tuning._keras_tuner import kt


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A small preprocessed dataset: 300 users, ~100 items, brand + category attributes."""
    from asif_tf.data.builtin import generate_raw
    from beam_pipelines import preprocess
    root = tmp_path_factory.mktemp("tiny")
    generate_raw(str(root / "raw"), num_users=300, num_items=100, num_categories=10, num_brands=12, max_len=20)
    preprocess.run(["--format", "s3rec", "--input", str(root / "raw"), "--output_dir", str(root / "processed"),
                    "--attributes", "typed"])
    return str(root / "processed")


# --- KerasTuner bound to tf.keras --------------------------------------------------------

def test_keras_tuner_is_bound_to_tf_keras_and_keras_is_left_alone():
    import tensorflow as tf
    from keras_tuner.src.backend import config, keras as kt_keras
    assert not config.multi_backend()
    assert kt_keras.models.Model is tf.keras.Model
    if "keras" in sys.modules:   # the real Keras 3 is still what `import keras` gives
        assert sys.modules["keras"].__name__ == "keras"
    assert kt.HyperModel.__module__.startswith("keras_tuner")


# --- search space ------------------------------------------------------------------------

def test_space_overrides_parse_choices_and_ranges():
    got = space_lib.parse_space_overrides(["hidden_size=32, 64", "learning_rate=1e-4:1e-2", "dropout=0:0.4:0.2",
                                           "fusion=sum,gate"])
    assert got["hidden_size"].choices == (32, 64)
    assert (got["learning_rate"].low, got["learning_rate"].high, got["learning_rate"].log) == (1e-4, 1e-2, True)
    assert (got["dropout"].low, got["dropout"].high, got["dropout"].step, got["dropout"].log) == (0.0, 0.4, 0.2, False)
    assert got["fusion"].choices == ("sum", "gate")


@pytest.mark.parametrize("spec, message", [
    ("hidden=32,64", "unknown hyper-parameter 'hidden'"),
    ("hidden_size=32", "at least two values"),
    ("hidden_size=a,b", "must be ints"),
    ("learning_rate=0.1:0.01", "lo < hi"),
    ("learning_rate=0:0.01", "log scale"),
    ("fusion=sum,max", "fusion must be among"),
    ("fusion=a:b", "list of values"),
    ("hidden_size", "NAME=v1,v2"),
])
def test_space_overrides_reject_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        space_lib.parse_space_overrides([spec])


def _names(params):
    return {p.name: p for p in params}


def test_resolve_space_fixed_flags_model_and_compatibility():
    base = ExperimentConfig()
    asif = _names(space_lib.resolve_space(base, []))
    assert set(asif) == set(space_lib.DEFAULT_SPACE)
    # Every (hidden_size, num_heads) pair the search can draw is valid.
    assert all(d % h == 0 for d in asif["hidden_size"].choices for h in asif["num_heads"].choices)

    fixed = _names(space_lib.resolve_space(base, ["model.hidden_size", "train.learning_rate"]))
    assert "hidden_size" not in fixed and "learning_rate" not in fixed

    base.model.hidden_size = 12   # fixed at 12: heads must divide 12
    heads = _names(space_lib.resolve_space(base, ["model.hidden_size"]))["num_heads"].choices
    assert heads == (1, 2, 4) and all(12 % h == 0 for h in heads)
    base.model.hidden_size = 6
    assert _names(space_lib.resolve_space(base, ["model.hidden_size"]))["num_heads"].choices == (1, 2)

    base = ExperimentConfig()
    base.model.num_heads = 4      # fixed heads restrict the hidden sizes instead
    hidden = _names(space_lib.resolve_space(base, ["model.num_heads"]))["hidden_size"].choices
    assert hidden == (32, 64, 128)
    with pytest.raises(ValueError, match="divisible by --num_heads 3"):
        base.model.num_heads = 3
        space_lib.resolve_space(base, ["model.num_heads"])

    base = ExperimentConfig()
    base.model.model = "sasrec"   # ASIF-only hyper-parameters are not searched for a baseline...
    assert set(_names(space_lib.resolve_space(base, []))) == {"hidden_size", "num_layers", "num_heads",
                                                              "dropout", "learning_rate"}
    # ...unless asked for
    overrides = space_lib.parse_space_overrides(["fusion=sum,gate"])
    assert "fusion" in _names(space_lib.resolve_space(base, [], overrides))

    base = ExperimentConfig()
    base.model.fa, base.model.hie, base.data.max_seq_len = False, True, 10
    params = _names(space_lib.resolve_space(base, []))
    assert "lambda_fa" not in params                       # --no-fa: lambda_fa has no effect
    assert params["num_bases"].choices == (4, 8)           # r <= max_seq_len

    with pytest.raises(ValueError, match="both as a fixed flag and in --space"):
        space_lib.resolve_space(ExperimentConfig(), ["model.hidden_size"],
                                space_lib.parse_space_overrides(["hidden_size=32,64"]))


def test_declare_and_apply_map_values_onto_the_config():
    base = ExperimentConfig()
    params = space_lib.resolve_space(base, [])
    hp = kt.HyperParameters()
    values = space_lib.declare(hp, params)
    assert set(values) == {p.name for p in params}
    chosen = {"hidden_size": 128, "num_layers": 3, "num_heads": 4, "dropout": 0.30000000000000004,
              "learning_rate": 0.003, "lambda_fa": 0.5, "num_bases": 8, "fusion": "gate", "tuner/epochs": 3}
    cfg = space_lib.apply(base, params, chosen)
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.model.dropout) == (128, 3, 4, 0.3)
    assert (cfg.train.learning_rate, cfg.model.lambda_fa, cfg.model.num_bases, cfg.model.fusion) == \
        (0.003, 0.5, 8, "gate")
    assert base.model.hidden_size == 64   # the base config is not modified


# --- command line --------------------------------------------------------------------------

def test_help_explains_every_flag(capsys):
    parser = search.build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--tuner", "--max_trials", "--max_epochs", "--directory", "--project_name", "--space",
                 "--data", "--model", "--hidden_size", "--learning_rate", "--overwrite"):
        assert flag in text


def test_user_errors_are_reported_by_the_parser(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        search.main(["--data", tiny_data, "--hidden_size", "16", "--space", "hidden_size=16,32",
                     "--directory", str(tmp_path)])
    assert e.value.code == 2 and "both as a fixed flag and in --space" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search.main(["--data", str(tmp_path / "missing"), "--directory", str(tmp_path)])
    assert "metadata.json not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search.main(["--data", tiny_data, "--max_epochs", "2", "--epochs", "3", "--directory", str(tmp_path)])
    assert "disagree" in capsys.readouterr().err


def test_without_data_the_builtin_dataset_is_used(tiny_data, monkeypatch):
    calls = []

    def fake_builtin(base_dir=""):
        calls.append(base_dir)
        return tiny_data
    monkeypatch.setattr(search, "ensure_builtin_dataset", fake_builtin)
    args = search.build_parser().parse_args(["--builtin_dir", "/somewhere", "--tuner", "random"])
    setup = search.Setup(args)
    assert calls == ["/somewhere"] and setup.data_dir == tiny_data
    assert setup.cfg.data.data_dir == ""   # the best config keeps pointing at the built-in dataset


# --- end to end ----------------------------------------------------------------------------

def _search_argv(data, directory):
    # Tiny model, short histories and one padded length (few retracings) keep each trial to seconds.
    return ["--data", data, "--tuner", "bayesian", "--max_trials", "2", "--max_epochs", "2",
            "--directory", directory, "--project_name", "tiny", "--hidden_size", "8", "--num_layers", "1",
            "--inner_size", "16", "--max_seq_len", "10", "--no-bucket_by_length", "--batch_size", "128",
            "--verbose", "0",
            "--space", "num_bases=2,4", "--no-tensorboard"]


def test_search_writes_results_and_a_best_config_that_retrains_to_the_same_metric(tiny_data, tmp_path,
                                                                                  monkeypatch):
    from asif_tf import train
    directory = str(tmp_path / "search")
    argv = _search_argv(tiny_data, directory)
    assert search.main(argv) == 0
    project = os.path.join(directory, "tiny")

    with open(os.path.join(project, "results.json")) as f:
        results = json.load(f)
    trials = results["trials"]
    assert len(trials) == 2 and all(t["status"] == "COMPLETED" for t in trials)
    for t in trials:
        # The objective is the best epoch of the trial's own validation history.
        with open(os.path.join(project, f"trial_{t['trial']}", "history.json")) as f:
            history = json.load(f)
        assert len(history["val_ndcg@20"]) == t["epochs"] == 2
        assert t["objective"] == pytest.approx(max(history["val_ndcg@20"]), abs=1e-7)
        assert set(t["hyperparameters"]) == {"num_heads", "dropout", "learning_rate", "lambda_fa", "num_bases",
                                             "fusion"}
    assert trials[0]["objective"] >= trials[1]["objective"]
    with open(os.path.join(project, "results.md")) as f:
        table = f.read()
    assert table.count("| COMPLETED |") == 2 and f"{trials[0]['objective']:.4f}" in table

    # The best config is a full ExperimentConfig: the fixed flags plus the best trial's values.
    cfg = ExperimentConfig.from_json_file(os.path.join(project, "best_config.json"))
    best_hp = trials[0]["hyperparameters"]
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.data.max_seq_len, cfg.train.epochs) == (8, 1, 10, 2)
    assert cfg.data.data_dir == tiny_data
    assert (cfg.model.num_heads, cfg.model.fusion, cfg.model.num_bases) == \
        (best_hp["num_heads"], best_hp["fusion"], best_hp["num_bases"])
    assert cfg.train.learning_rate == pytest.approx(best_hp["learning_rate"], rel=1e-9)

    # Retrained by the trainer, it reaches the same validation NDCG@20 (same seed, data order, epochs).
    cfg.train.run_dir = str(tmp_path / "retrain")
    retrained = train.run(cfg)
    assert retrained["valid"]["ndcg@20"] == pytest.approx(trials[0]["objective"], abs=1e-5)

    # Running the same command again resumes: nothing is trained, the trials are left as they were.
    trial_files = sorted(os.path.join(project, d, "trial.json") for d in os.listdir(project)
                         if d.startswith("trial_"))
    before = {p: os.stat(p).st_mtime_ns for p in trial_files}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")
    monkeypatch.setattr(search.RecommenderHyperModel, "fit", no_training)
    assert search.main(argv) == 0
    after = sorted(os.path.join(project, d, "trial.json") for d in os.listdir(project) if d.startswith("trial_"))
    assert after == trial_files and {p: os.stat(p).st_mtime_ns for p in after} == before
    with open(os.path.join(project, "results.json")) as f:
        assert [t["objective"] for t in json.load(f)["trials"]] == [t["objective"] for t in trials]

    # A changed setting is refused instead of being mixed into the same search.
    with pytest.raises(SystemExit, match="different settings.*model.hidden_size: 8 -> 16"):
        search.main([a if a != "8" else "16" for a in argv])

"""bench/reproduce.py end to end on a tiny S3-Rec-format dataset: real preprocessing, two
models, results JSON with learning curves, the Table 2 markdown, and resume."""
import dataclasses
import gzip
import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses resolve their module while the class is built
    spec.loader.exec_module(module)
    return module


def load_reproduce():
    return load_module("reproduce", REPO / "bench" / "reproduce.py")


def write_s3rec(root: pathlib.Path, users=80, items=30, seed=0):
    """<root>/Mini.txt.gz ('user item item ...', items cycling so there is a pattern to learn)
    and Mini_item2attributes.json (one or two attribute ids per item)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    lines = []
    for u in range(1, users + 1):
        start, length = rng.integers(1, items + 1), rng.integers(6, 12)
        lines.append(" ".join([str(u)] + [str((start + j - 1) % items + 1) for j in range(length)]))
    with gzip.open(root / "Mini.txt.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    attrs = {str(i): [int(i % 5) + 1] + ([int(i % 3) + 10] if i % 2 else []) for i in range(1, items + 1)}
    (root / "Mini_item2attributes.json").write_text(json.dumps(attrs))


def test_reproduce_runs_models_writes_curves_and_table_and_resumes(tmp_path):
    reproduce = load_reproduce()
    data = tmp_path / "mini"
    write_s3rec(data)
    results = tmp_path / "results"
    argv = ["--datasets", f"mini={data}", "--models", "sasrec,asif", "--max_epochs", "2", "--patience", "5",
            "--results_dir", str(results), "--verbose", "0"]
    assert reproduce.main(argv) == 0
    saved = json.loads((results / "mini-cpu.json").read_text())
    assert set(saved["runs"]) == {"sasrec", "asif"}
    for name, run in saved["runs"].items():
        run_dir = pathlib.Path(run["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert run["test"]["ndcg@20"] == pytest.approx(metrics["test"]["ndcg@20"])
        assert [c["epoch"] for c in run["curve"]] == [1, 2] and run["epochs"] == 2
        # Cost: the median of the epochs' own wall times, which add up to the run's seconds.
        epoch_seconds = [h["epoch_seconds"] for h in json.loads((run_dir / "state.json").read_text())["history"]]
        assert sum(epoch_seconds) == pytest.approx(metrics["seconds"], abs=0.01)
        assert run["seconds_per_epoch"] == pytest.approx(float(np.median(epoch_seconds)), abs=0.01)
        # The curve's value at the best epoch was measured during fit; the summary's valid
        # metric by a fresh evaluation after restoring the best checkpoint.
        best = run["curve"][run["best_epoch"] - 1]
        assert best["val_ndcg@20"] == pytest.approx(run["valid"]["ndcg@20"], abs=1e-4)
        assert best["val_ndcg@20"] == max(c["val_ndcg@20"] for c in run["curve"])
    table = (results / "table-cpu.md").read_text()
    assert "| SASRec | ours |" in table and "| ASIF | ours |" in table
    asif_row = next(line for line in table.splitlines() if line.startswith("| ASIF | ours |"))
    assert f"{saved['runs']['asif']['test']['ndcg@20']:.4f}" in asif_row
    if importlib.util.find_spec("matplotlib"):
        assert (results / "mini-cpu-curves.png").stat().st_size > 0
    # bench/breakdown.py on the same runs: its "all users" row is the runs' metrics.json, and
    # each grouping partitions the users (user-weighted group means give the overall mean).
    breakdown = load_module("breakdown", REPO / "bench" / "breakdown.py")
    result = breakdown.breakdown([saved["runs"][n]["run_dir"] for n in ("sasrec", "asif")], "test")
    everyone = result["rows"][0]
    assert everyone["group"] == "all users"
    for name in ("sasrec", "asif"):
        for metric in ("hr@20", "ndcg@20"):
            assert everyone["runs"][name][metric] == pytest.approx(saved["runs"][name]["test"][metric], abs=1e-6)
    for prefix in ("history length", "target train count"):
        part = [r for r in result["rows"] if r["group"].startswith(prefix)]
        assert sum(r["users"] for r in part) == everyone["users"]
        mean = sum(r["users"] * r["runs"]["asif"]["ndcg@20"] for r in part) / everyone["users"]
        assert mean == pytest.approx(everyone["runs"]["asif"]["ndcg@20"], abs=1e-9)
    # The paired difference is the difference of the two runs' reported test metrics.
    assert result["reference"] == "sasrec"
    for metric in ("hr@20", "ndcg@20"):
        stats = result["paired"]["asif"][metric]
        assert stats["diff"] == pytest.approx(saved["runs"]["asif"]["test"][metric]
                                              - saved["runs"]["sasrec"]["test"][metric], abs=1e-6)
        assert stats["ci_low"] <= stats["diff"] + 1e-12 and stats["diff"] <= stats["ci_high"] + 1e-12
    text = breakdown.markdown(result)
    assert "| all users |" in text and "| asif | " in text
    # Several runs of one model (seeds) are averaged per user; here the two runs in both orders,
    # so each pooled model's overall metric is the mean of the two runs' metrics.json, the pooled
    # difference is 0, and the run-by-run differences are asif - sasrec and its negative.
    dirs = [saved["runs"][n]["run_dir"] for n in ("sasrec", "asif")]
    assert breakdown.parse_run_groups([",".join(dirs), dirs[1]]) == [dirs, [dirs[1]]]
    pooled = breakdown.breakdown([dirs, dirs[::-1]], "test", num_resamples=200)
    names = list(pooled["rows"][0]["runs"])
    assert len(names) == 2 and names[0].endswith("(2 runs)")
    for name in names:
        for metric in ("hr@20", "ndcg@20"):
            expected = (saved["runs"]["sasrec"]["test"][metric] + saved["runs"]["asif"]["test"][metric]) / 2
            assert pooled["rows"][0]["runs"][name][metric] == pytest.approx(expected, abs=1e-6)
    for metric in ("hr@20", "ndcg@20"):
        stats = pooled["paired"][names[1]][metric]
        gap = saved["runs"]["asif"]["test"][metric] - saved["runs"]["sasrec"]["test"][metric]
        assert stats["diff"] == pytest.approx(0.0, abs=1e-9)
        assert stats["per_run"] == pytest.approx([gap, -gap], abs=1e-6)
    assert "N@20 diff per run" in breakdown.markdown(pooled)
    # bench/train_fit.py: its train CE is the trainer's own loss (SASRec has no auxiliary loss)
    # with dropout off, averaged over every training position of the same sequences.
    train_fit = load_module("train_fit", REPO / "bench" / "train_fit.py")
    sasrec_dir = saved["runs"]["sasrec"]["run_dir"]
    fit = train_fit.run_fit(sasrec_dir, "last")
    import tensorflow as tf
    from asif_tf import export
    from asif_tf.data import input as data_input
    cfg = export.load_run_config(sasrec_dir)
    model, _ = export.restore_model(sasrec_dir, cfg, data_input.load_dataset_info(cfg.data.data_dir), "last")
    total = count = 0
    for batch in data_input.train_dataset(cfg.data.data_dir, 7, cfg.data.max_seq_len, bucket=False, shuffle=False):
        n = int(tf.reduce_sum(tf.cast(batch["labels"] > 0, tf.int32)))
        total, count = total + float(model.compute_loss(batch, training=False)) * n, count + n
    assert fit["epoch"] == 2 and fit["train_positions"] == count
    assert fit["train_ce"] == pytest.approx(total / count, rel=1e-4)
    # Valid CE in numpy from the model's user vectors: log-sum-exp over items 1..V minus the target's logit.
    items = model.item_embeddings().numpy()[1:]
    ces = []
    for batch in data_input.eval_dataset(cfg.data.data_dir, "valid", 5, cfg.data.max_seq_len, bucket=False):
        logits = model(batch["history"], training=False).numpy() @ items.T
        top = logits.max(axis=1)
        lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        ces.extend(lse - logits[np.arange(len(logits)), batch["target"].numpy() - 1])
    assert fit["valid_users"] == len(ces)
    assert fit["valid_ce"] == pytest.approx(np.mean(ces), rel=1e-4)
    assert "| sasrec | last | 2 |" in train_fit.markdown({"sasrec": {"last": fit}})
    # A second invocation trains nothing: the finished runs are reused as they are.
    before = {n: (pathlib.Path(r["run_dir"]) / "state.json").stat().st_mtime for n, r in saved["runs"].items()}
    assert reproduce.main(argv) == 0
    again = json.loads((results / "mini-cpu.json").read_text())
    assert {n: r["test"] for n, r in again["runs"].items()} == {n: r["test"] for n, r in saved["runs"].items()}
    assert before == {n: (pathlib.Path(r["run_dir"]) / "state.json").stat().st_mtime for n, r in again["runs"].items()}


def _add_runs(path, worker, count):
    reproduce = load_reproduce()
    results = reproduce.ResultFile(pathlib.Path(path), {"dataset": "mini"})
    for j in range(count):
        results.add(f"{worker}-{j}", {"value": j})


def test_result_file_merges_runs_of_concurrent_processes(tmp_path):
    """Two reproduce.py processes sharing one results file (one per model, in parallel) keep
    each other's runs: each add re-reads and merges under a lock."""
    import multiprocessing
    path = tmp_path / "mini-cpu.json"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_add_runs, args=(str(path), w, 15)) for w in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    runs = json.loads(path.read_text())["runs"]
    assert sorted(runs) == sorted(f"{w}-{j}" for w in range(3) for j in range(15))
    assert runs["2-14"] == {"value": 14}


def test_processes_started_side_by_side_preprocess_an_uncached_dataset_once(tmp_path):
    """Two reproduce.py runs started together on a dataset not yet cached: one runs the pipeline,
    the other waits for it and reuses its output (two pipelines writing one directory with
    --overwrite broke each other's writes: seen with Beam's FinalizeWrite), and both get the same
    complete dataset."""
    import subprocess
    data = tmp_path / "mini"
    write_s3rec(data)
    code = ("import logging, pathlib, sys; logging.basicConfig(level=logging.INFO); "
            f"sys.path.insert(0, {str(REPO / 'bench')!r}); import reproduce; "
            "ds = reproduce.parse_datasets(sys.argv[1], pathlib.Path('.'), 'paper')[0]; "
            "print('OUT', reproduce.prepare_dataset(ds, pathlib.Path(sys.argv[2])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, f"mini={data}", str(tmp_path / "res")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    logs = "".join(err for _, err in outputs)
    assert logs.count("dataset mini: preprocessing") == 1 and logs.count("dataset mini: using the cached") == 1
    dirs = {line.split(" ", 1)[1] for out, _ in outputs for line in out.splitlines() if line.startswith("OUT ")}
    assert len(dirs) == 1
    meta = json.loads((pathlib.Path(dirs.pop()) / "metadata.json").read_text())
    assert meta["num_users"] == 80


def test_sweep_points_cover_every_invocations_values(tmp_path):
    """Two sweep invocations run in parallel, one value each: whichever writes the points last,
    the points (what the sweep plot draws) are every swept run in the file, in the sweep's order."""
    reproduce = load_reproduce()
    path = tmp_path / "mini-cpu-sweep-r.json"
    first, second = (reproduce.ResultFile(path, {"dataset": "mini"}) for _ in range(2))
    first.add("num_bases=16", {"value": 16, "test": {"ndcg@20": 0.1}})
    second.add("num_bases=2", {"value": 2, "test": {"ndcg@20": 0.2}})
    second.add("num_bases=64", {"value": 64, "test": {"ndcg@20": 0.3}})
    first.set_sweep_points(*reproduce.SWEEPS["r"])      # first never read second's runs itself
    saved = json.loads(path.read_text())
    assert [(p["key"], p["value"]) for p in saved["points"]] == \
        [("num_bases=2", 2), ("num_bases=16", 16), ("num_bases=64", 64)]
    assert saved["swept"] == "num_bases" and saved["points"][2]["test"] == {"ndcg@20": 0.3}
    # Values that are not numbers follow the sweep's default order; unknown ones come last.
    runs = {"fusion=gate": {"value": "gate"}, "other": {"note": "no value"}, "fusion=sum": {"value": "sum"},
            "fusion=new": {"value": "new"}}
    assert [p["key"] for p in reproduce.sweep_points(runs, ("sum", "concat", "gate"))] == \
        ["fusion=sum", "fusion=gate", "fusion=new"]
    assert [p["value"] for p in reproduce.sweep_points(
        {"a": {"value": False}, "b": {"value": True}}, (True, False))] == [True, False]


def test_sweep_values_parse_booleans_and_numbers():
    reproduce = load_reproduce()
    assert reproduce.parse_sweep_values("true,False,1,0", bool) == (True, False, True, False)
    assert reproduce.parse_sweep_values("2, 4", int) == (2, 4)
    with pytest.raises(ValueError):
        reproduce.parse_sweep_values("yes", bool)
    assert reproduce.SWEEPS["ffn"] == ("separate_ffn", (True, False))


def test_table_rows_follow_the_papers_order_whatever_the_invocation_order():
    reproduce = load_reproduce()
    assert reproduce.canonical_order(["asif", "mine", "difsr", "sasrec"], reproduce.DEFAULT_MODELS) == \
        ["sasrec", "difsr", "asif", "mine"]
    assert reproduce.canonical_order(["mini", "yelp", "beauty"], ("beauty", "yelp")) == ["beauty", "yelp", "mini"]
    assert reproduce.canonical_order(["yelp", "beauty", "yelp"], ("beauty", "yelp")) == ["beauty", "yelp"]


def test_breakdown_bins():
    breakdown = load_module("breakdown", REPO / "bench" / "breakdown.py")
    assert breakdown.bin_labels((0, 1, 5), "n") == ["n = 0", "n 1-4", "n >= 5"]
    assert breakdown.assign_bins(np.array([0, 1, 4, 5, 99]), (0, 1, 5)).tolist() == [0, 1, 1, 2, 2]
    assert breakdown.run_names(["r/cpu/asif", "r/cpu/nova/"]) == ["asif", "nova"]
    assert breakdown.run_names(["r/cpu/asif", "r/cpu-seed1/asif", "r/cpu/nova"]) == \
        ["cpu/asif", "cpu-seed1/asif", "nova"]


def test_paired_bootstrap_against_closed_forms():
    breakdown = load_module("breakdown", REPO / "bench" / "breakdown.py")
    rng = np.random.default_rng(3)
    reference = rng.random(4000)
    # A constant shift: every resample has the same difference, so the interval is that point.
    shifted = breakdown.paired_bootstrap(reference, reference + 0.25, num_resamples=300)
    assert shifted["diff"] == pytest.approx(0.25) and shifted["p_ahead"] == 1.0
    assert shifted["ci_low"] == pytest.approx(0.25) and shifted["ci_high"] == pytest.approx(0.25)
    # Noisy per-user differences: the percentile interval matches the normal approximation
    # mean +- 1.96 sd / sqrt(u) of the mean difference (the CLT holds at u = 4000).
    other = reference + rng.normal(0.01, 0.3, reference.size)
    stats = breakdown.paired_bootstrap(reference, other, num_resamples=4000, seed=1)
    diff = other - reference
    half = 1.96 * diff.std() / np.sqrt(diff.size)
    assert stats["diff"] == pytest.approx(diff.mean())
    assert stats["ci_low"] == pytest.approx(diff.mean() - half, abs=0.1 * half)
    assert stats["ci_high"] == pytest.approx(diff.mean() + half, abs=0.1 * half)
    with pytest.raises(ValueError, match="equal-length"):
        breakdown.paired_bootstrap(np.zeros(3), np.zeros(4))


def test_hie_sweeps_need_prefix_training_and_get_their_own_runs(tmp_path, capsys):
    reproduce = load_reproduce()
    data = tmp_path / "mini"
    write_s3rec(data, users=40)
    results = tmp_path / "results"
    argv = ["--datasets", f"mini={data}", "--sweep", "hie_padding", "--max_epochs", "1",
            "--results_dir", str(results), "--verbose", "0"]
    # Under one-sequence training the research HIE would see later items: refused up front.
    with pytest.raises(SystemExit):
        reproduce.main(argv)
    assert "--training_samples prefix" in capsys.readouterr().err
    assert reproduce.main(argv + ["--training_samples", "prefix"]) == 0
    saved = json.loads((results / "mini-cpu-prefix-sweep-hie_padding.json").read_text())
    assert [p["value"] for p in saved["points"]] == [True, False]
    for point in saved["points"]:
        # Prefix runs live apart from the one-sequence runs of the same setting, and every
        # point uses the per-sequence basis, the only HIE where the padding mask changes anything.
        run_dir = pathlib.Path(point["run_dir"])
        assert run_dir.parent == results / "runs" / "mini-cpu-prefix"
        config = json.loads((run_dir / "config.json").read_text())
        assert config["train"]["training_samples"] == "prefix"
        assert config["model"]["hie_causal"] is False
        assert config["model"]["hie_mask_padding"] is point["value"]
    # The masked point is the same model as hie_causal's per-sequence point: one run directory.
    assert pathlib.Path(saved["points"][0]["run_dir"]).name == "asif-hie_causal=False"
    assert reproduce.setting_label("cpu", "sequence") == "cpu"
    assert reproduce.setting_label("paper", "prefix") == "paper-prefix"
    assert reproduce.setting_label("cpu", "sequence", 1) == "cpu-seed1"
    assert reproduce.setting_label("cpu", "prefix", reproduce.DEFAULT_SEED) == "cpu-prefix"
    # Beauty's merged brand + category ids are another dataset: their runs never share a label
    # (results file, run directories) with the categories-only ones.
    assert reproduce.setting_label("cpu", "prefix", reproduce.DEFAULT_SEED, "all") == "cpu-prefix-attrall"
    assert reproduce.setting_label("cpu", "sequence", 1, "all") == "cpu-seed1-attrall"


def test_unbucketed_runs_pad_to_the_full_length_under_their_own_label(tmp_path):
    """--no-bucket_by_length (the research code's batches, and with the per-sequence HIE its exact
    basis) reaches the trainer's config and never shares results or run directories with the
    bucketed runs of the same setting."""
    reproduce = load_reproduce()
    assert reproduce.setting_label("cpu", "prefix", reproduce.DEFAULT_SEED, "paper", False) == "cpu-prefix-nobucket"
    assert reproduce.setting_label("cpu", "sequence", 1, "all", False) == "cpu-seed1-attrall-nobucket"
    data = tmp_path / "mini"
    write_s3rec(data, users=40)
    results = tmp_path / "results"
    argv = ["--datasets", f"mini={data}", "--sweep", "hie_padding", "--sweep_values", "false", "--max_epochs", "1",
            "--training_samples", "prefix", "--lambda_fa", "1.0", "--no-bucket_by_length",
            "--results_dir", str(results), "--verbose", "0"]
    assert reproduce.main(argv) == 0
    saved = json.loads((results / "mini-cpu-prefix-nobucket-fa1-sweep-hie_padding.json").read_text())
    run_dir = pathlib.Path(saved["points"][0]["run_dir"])
    assert run_dir.parent == results / "runs" / "mini-cpu-prefix-nobucket"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["bucket_by_length"] is False
    assert config["model"]["hie_causal"] is False and config["model"]["hie_mask_padding"] is False
    assert config["model"]["lambda_fa"] == 1.0
    assert reproduce.build_parser().parse_args([]).bucket_by_length is True


def test_cpu256_setting_is_the_paper_model_with_a_cpu_optimiser():
    """cpu256 claims the paper's architecture and regularisation: every model field equals the
    paper setting's, and only the optimiser and budget differ."""
    reproduce = load_reproduce()
    for dataset in ("beauty", "yelp"):
        paper = reproduce.setting_config("paper", dataset)
        cpu256 = reproduce.setting_config("cpu256", dataset)
        assert dataclasses.asdict(cpu256.model) == dataclasses.asdict(paper.model)
        assert dataclasses.asdict(cpu256.data) == dataclasses.asdict(paper.data)
        differing = {k for k, v in dataclasses.asdict(cpu256.train).items()
                     if v != dataclasses.asdict(paper.train)[k]}
        assert differing == {"learning_rate", "batch_size", "epochs", "patience"}
    with pytest.raises(ValueError, match="cpu256"):
        reproduce.setting_config("gpu", "beauty")


def test_lambda_fa_override_reuses_sweep_runs_and_labels_its_results(capsys):
    """--lambda_fa sets the FA weight of every ASIF run that uses it, names the run directories as
    the --sweep lambda points are named (so they are trained once), and keeps the results files and
    tables apart from the setting's own."""
    reproduce = load_reproduce()
    plan = [(name, "asif", overrides) for name, overrides in reproduce.ABLATIONS.items()]
    plan += [("nova", "nova", {})]
    weighted = dict((key, overrides) for key, _, overrides in reproduce.with_lambda_fa(plan, 1.0))
    assert weighted["asif"] == {"lambda_fa": 1.0}
    assert weighted["asif-no_hie"] == {"hie": False, "lambda_fa": 1.0}
    assert weighted["asif-no_fa"] == {"fa": False}           # unused weight: the setting's w/o FA run
    assert weighted["nova"] == {}
    assert reproduce.with_lambda_fa(plan, None) == plan
    # The ablation's full-ASIF run is the sweep's lambda_fa=1.0 point: one directory name.
    assert reproduce.variant_name("asif", weighted["asif"]) == reproduce.variant_name("asif", {"lambda_fa": 1.0})
    parser = reproduce.build_parser()
    args = parser.parse_args(["--training_samples", "prefix", "--ablations", "--lambda_fa", "1.0"])
    assert reproduce.results_label(args) == "cpu-prefix-fa1"
    args = parser.parse_args(["--training_samples", "prefix"])
    assert reproduce.results_label(args) == "cpu-prefix"
    for argv, message in ((["--sweep", "lambda", "--lambda_fa", "1"], "leave out --lambda_fa"),
                          (["--lambda_fa", "-1"], "--lambda_fa must be >= 0"),
                          (["--variants", "asif-no_hie"], "give it with --ablations"),
                          (["--ablations", "--variants", "asif-no_hie,bogus"], "unknown ['bogus']")):
        with pytest.raises(SystemExit) as err:
            reproduce.main(argv)
        assert err.value.code == 2
        assert message in capsys.readouterr().err


def run_mini_override(reproduce, tmp_path, model, flags, label_suffix):
    """One epoch of ``model`` on a 40-user s3rec dataset with the override ``flags``; returns its run
    directory, as the results JSON labelled cpu-<label_suffix> records it, and its saved model config."""
    data = tmp_path / "mini"
    write_s3rec(data, users=40)
    results = tmp_path / "results"
    argv = ["--datasets", f"mini={data}", "--models", model, *flags, "--max_epochs", "1",
            "--results_dir", str(results), "--verbose", "0"]
    assert reproduce.main(argv) == 0
    saved = json.loads((results / f"mini-cpu-{label_suffix}.json").read_text())
    run_dir = pathlib.Path(saved["runs"][model]["run_dir"])
    return run_dir, json.loads((run_dir / "config.json").read_text())["model"]


def test_attribute_pooling_override_reaches_the_models_that_embed_attributes(tmp_path):
    """--attribute_pooling sets the pooling of every run of a model with attribute embeddings (not of
    the ID-only models, whose run it does not change), names their run directories by it, labels the
    results apart, and reaches the trainer's config."""
    reproduce = load_reproduce()
    plan = [(m, m, {}) for m in ("sasrec", "fdsa", "gru4rec")] + [("asif-no_fa", "asif", {"fa": False})]
    pooled = dict((key, overrides) for key, _, overrides in reproduce.with_attribute_pooling(plan, "mean"))
    assert pooled == {"sasrec": {}, "fdsa": {"attribute_pooling": "mean"}, "gru4rec": {},
                      "asif-no_fa": {"fa": False, "attribute_pooling": "mean"}}
    assert reproduce.with_attribute_pooling(plan, None) == plan
    parser = reproduce.build_parser()
    args = parser.parse_args(["--training_samples", "prefix", "--lambda_fa", "1", "--attribute_pooling", "mean"])
    assert reproduce.results_label(args) == "cpu-prefix-fa1-poolmean"
    assert parser.parse_args([]).attribute_pooling is None
    run_dir, model_config = run_mini_override(reproduce, tmp_path, "fdsa", ["--attribute_pooling", "mean"], "poolmean")
    assert run_dir == tmp_path / "results" / "runs" / "mini-cpu" / "fdsa-attribute_pooling=mean"
    assert model_config["attribute_pooling"] == "mean"
    assert (tmp_path / "results" / "table-cpu-poolmean.md").exists()


def test_lambda_attr_override_reaches_difsr_only(tmp_path, capsys):
    """--lambda_attr sets DIF-SR's attribute-loss weight in its runs only (the other models keep the
    setting's run), names the run directory by it, labels the results apart, reaches the trainer's
    config, and a negative weight is a usage error."""
    reproduce = load_reproduce()
    plan = [(m, m, {}) for m in ("sasrec", "difsr", "nova")] + [("asif-no_fa", "asif", {"fa": False})]
    weighted = dict((key, overrides) for key, _, overrides in reproduce.with_lambda_attr(plan, 1.0))
    assert weighted == {"sasrec": {}, "difsr": {"lambda_attr": 1.0}, "nova": {}, "asif-no_fa": {"fa": False}}
    assert reproduce.with_lambda_attr(plan, None) == plan
    parser = reproduce.build_parser()
    args = parser.parse_args(["--setting", "cpu256", "--training_samples", "prefix", "--lambda_attr", "1"])
    assert reproduce.results_label(args) == "cpu256-prefix-lattr1"
    assert parser.parse_args([]).lambda_attr is None
    with pytest.raises(SystemExit) as err:
        reproduce.main(["--lambda_attr", "-1"])
    assert err.value.code == 2 and "--lambda_attr must be >= 0" in capsys.readouterr().err
    run_dir, model_config = run_mini_override(reproduce, tmp_path, "difsr", ["--lambda_attr", "0.5"], "lattr0.5")
    assert run_dir == tmp_path / "results" / "runs" / "mini-cpu" / "difsr-lambda_attr=0.5"
    assert model_config["lambda_attr"] == 0.5


def test_a_finished_run_is_not_reused_under_another_config(tmp_path):
    """reproduce.py reuses a finished run directory by name; under a config it was not trained with
    (e.g. a setting whose default changed) it refuses instead of reporting the old run's metrics."""
    reproduce = load_reproduce()
    from asif_tf.config import ExperimentConfig
    run_dir = tmp_path / "asif"
    run_dir.mkdir()
    trained = ExperimentConfig()
    trained.train.run_dir = str(run_dir)
    (run_dir / "config.json").write_text(trained.to_json())
    (run_dir / "state.json").write_text(json.dumps({"epoch": 30, "stopped_early": False, "wait": 0}))
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"ndcg@20": 0.5}}))
    assert reproduce.run_one(ExperimentConfig(), run_dir) == {"test": {"ndcg@20": 0.5}}
    changed = ExperimentConfig()
    changed.model.lambda_fa = 1.0
    with pytest.raises(SystemExit, match=r"different config \(model.lambda_fa: 0.01 -> 1.0\)"):
        reproduce.run_one(changed, run_dir)

"""Reproduction of the paper's tables: ASIF and the baselines on Beauty and Yelp.

Every model goes through the same path: the real preprocessing pipeline
(``beam_pipelines.preprocess``, s3rec format, 5-core, leave-one-out), the same tf.data
input, the same full-catalogue softmax loss and the same full-ranking evaluation
(``asif_tf.train.run``); only the encoder differs. Each model runs in its own run
directory, so the benchmark is resumable: a model whose run finished is not run again,
an interrupted one resumes from its last epoch checkpoint.

Settings (the same budget and early-stopping rule for every model):
  paper  the reference hyper-parameters of ASIF.md: d=256, 4 layers, 8 heads, inner 256,
         dropout 0.5 / attention 0.3, Adam lr 1e-4, batch 2048 (Beauty) / 1024 (Yelp),
         lambda_fa 0.01 (Beauty) / 0.1 (Yelp), up to 200 epochs, patience 10. Meant for a GPU.
  cpu    d=64, 2 layers, 2 heads, inner 256, same dropouts, lr 1e-3, batch 256, up to 100
         epochs, patience 20 (one sequence per user is ~90 steps per Beauty epoch, so SASRec-style
         training needs tens of epochs). Patience 10 was measured to be too short: on Beauty,
         NOVA's validation N@20 still rose from 0.0546 (epoch 30) to 0.0577 (epoch 93) with
         plateaus of up to 8 epochs, while ASIF and DIF-SR were stopped at epoch 29. A run that
         stopped under a smaller patience is extended, not redone.
  cpu256 the paper's architecture and regularisation (d=256, 4 layers, 8 heads, inner 256,
         dropout 0.5 / 0.3) with an optimiser sized for a CPU: Adam lr 5e-4, batch 256, up to 30
         epochs, patience 5. Meant with --training_samples prefix (~520 steps per Beauty epoch,
         ~6 min on 2 cores with length buckets, validation included): the paper's model size
         within hours where the paper's optimiser (lr 1e-4, batch 2048, 200 epochs) would take
         a day.
Model-specific settings (applied in every setting): GRU4Rec uses one GRU layer and embedding
dropout 0.3 (RecBole's defaults); SASRecF is always concatenation (early fusion).
Attributes: categories only where the data has a typed split (Beauty), as in the paper's
reference setting; Yelp's single attribute field is its categories.

Outputs under --results_dir (default bench/results/):
  <dataset>-<setting>.json             per model: valid/test metrics, epochs, best epoch, seconds, learning curve
  <dataset>-<setting>-curves.png       validation N@20 / H@20 and training loss per epoch, every model
  table-<setting>.md                   Table 2 layout: ours, the paper's, relative difference
  <dataset>-<setting>-ablations.json,  ablations-<setting>.md   (--ablations, Table 4 layout)
  <dataset>-<setting>-sweep-<name>.json/.png                    (--sweep lambda|r|fusion, Fig. 6/7;
                                                                ffn|refine|hie_causal|hie_padding|hie_from)
  data/<dataset>-<attributes>/          the preprocessed dataset (cached, git-ignored)
  runs/<dataset>-<setting>/<variant>/   run directories (checkpoints, logs; git-ignored)
With --training_samples prefix, <setting> reads <setting>-prefix (cpu-prefix, paper-prefix);
another --seed adds -seed<N>, --attributes all adds -attrall (cpu-prefix-attrall),
--no-bucket_by_length adds -nobucket (cpu-prefix-nobucket), and
--lambda_fa X adds -faX to the results files and tables (ablations-cpu-prefix-fa1.md; run
directories stay under the setting's label, named asif-lambda_fa=X), and --attribute_pooling M
adds -poolM after it (table-cpu-prefix-fa1-poolmean.md; runs named fdsa-attribute_pooling=M), and
--lambda_attr X adds -lattrX after that (table-cpu256-prefix-lattr1.md; runs named difsr-lambda_attr=X).

Examples:
  python bench/reproduce.py                                       # all models, Beauty + Yelp, cpu setting
  python bench/reproduce.py --setting paper                       # on a GPU machine
  python bench/reproduce.py --setting cpu256 --training_samples prefix --models asif --datasets beauty
  python bench/reproduce.py --models sasrec,asif --datasets beauty --max_epochs 1   # smoke
  python bench/reproduce.py --ablations --datasets beauty
  python bench/reproduce.py --sweep lambda --datasets beauty
  python bench/reproduce.py --sweep hie_causal --training_samples prefix --datasets beauty --patience 5
  python bench/reproduce.py --sweep hie_padding --sweep_values false --training_samples prefix \
      --no-bucket_by_length --lambda_fa 1.0 --datasets beauty --max_epochs 30 --patience 5   # research code's HIE
  python bench/reproduce.py --datasets yelp --training_samples prefix --max_epochs 30 --patience 5 \
      --lambda_fa 1.0 --models fdsa --attribute_pooling mean   # FDSA pooling categories as RecBole does
  python bench/reproduce.py --datasets mini=/path/to/s3rec_dir --models sasrec   # any s3rec directory
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import fcntl
import json
import logging
import os
import pathlib
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from asif_tf import _env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from asif_tf.config import MODELS, ExperimentConfig  # noqa: E402

_LOG = logging.getLogger("reproduce")

DEFAULT_MODELS = ("sasrec", "sasrecf", "fdsa", "nova", "difsr", "gru4rec", "asif")
PAPER_DATASETS = ("beauty", "yelp")          # the paper's datasets, in its tables' order
METRICS = ("hr@10", "hr@20", "ndcg@10", "ndcg@20")
SHORT = {"hr@10": "H@10", "hr@20": "H@20", "ndcg@10": "N@10", "ndcg@20": "N@20"}

# The paper's full-ranking numbers (ASIF.md): model -> dataset -> (H@10, H@20, N@10, N@20).
PAPER: Dict[str, Dict[str, Tuple[float, float, float, float]]] = {
    "sasrec": {"beauty": (.0861, .1225, .0424, .0516), "yelp": (.0647, .0936, .0398, .0471)},
    "sasrecf": {"beauty": (.0776, .1082, .0447, .0540), "yelp": (.0467, .0749, .0249, .0319)},
    "fdsa": {"beauty": (.0839, .1209, .0439, .0532), "yelp": (.0668, .0966, .0403, .0478)},
    "nova": {"beauty": (.0866, .1240, .0441, .0535), "yelp": (.0670, .0952, .0407, .0478)},
    "difsr": {"beauty": (.0871, .1234, .0434, .0526), "yelp": (.0673, .0988, .0412, .0491)},
    "asif": {"beauty": (.0922, .1322, .0453, .0554), "yelp": (.0768, .1131, .0452, .0543)},
}
# Table 4: variant -> dataset -> (H@20, N@20).
PAPER_ABLATIONS: Dict[str, Dict[str, Tuple[float, float]]] = {
    "asif": {"beauty": (.1322, .0554), "yelp": (.1131, .0543)},
    "asif-no_rsa": {"beauty": (.1292, .0540), "yelp": (.1075, .0524)},
    "asif-no_hie": {"beauty": (.1255, .0543), "yelp": (.0996, .0493)},
    "asif-no_up": {"beauty": (.1298, .0550), "yelp": (.1077, .0522)},
    "asif-no_fa": {"beauty": (.1317, .0544), "yelp": (.1108, .0534)},
}
ABLATIONS = {"asif": {}, "asif-no_rsa": {"rsa": False}, "asif-no_hie": {"hie": False},
             "asif-no_up": {"up": False}, "asif-no_fa": {"fa": False}}
ABLATION_LABELS = {"asif": "ASIF", "asif-no_rsa": "w/o RSA", "asif-no_hie": "w/o HIE", "asif-no_up": "w/o UP",
                   "asif-no_fa": "w/o FA"}
MODEL_LABELS = {"sasrec": "SASRec", "sasrecf": "SASRecF", "fdsa": "FDSA", "nova": "NOVA", "difsr": "DIF-SR",
                "gru4rec": "GRU4Rec", "asif": "ASIF"}
# Sweeps of ASIF (paper Figure 6: lambda and r; Figure 7: the fusion function gamma).
SWEEPS = {"lambda": ("lambda_fa", (0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0)),
          "r": ("num_bases", (2, 4, 8, 16, 32, 64)),
          "fusion": ("fusion", ("sum", "concat", "gate")),
          # ASIF.md's (R) choices, to be measured rather than assumed:
          "ffn": ("separate_ffn", (True, False)),            # separate FFN per stream vs one shared
          "refine": ("refine_fused", (True, False)),         # fused stream refined per layer vs static
          "hie_padding": ("hie_mask_padding", (True, False)),  # padded positions masked out of HIE's basis
          "hie_causal": ("hie_causal", (True, False)),         # causal HIE vs one basis per sequence (research)
          # not in the paper: HIE in layers hie_from_layer..L-1 only (0 = every layer); the default values
          # fit the cpu setting's two layers, --sweep_values 2,3 the last two / last one of four
          "hie_from": ("hie_from_layer", (0, 1)),
          # not in the paper: dropout on A, the one input to the fused stream that escapes dropout
          "attr_dropout": ("attribute_dropout", (0.0, 0.2, 0.5)),
          # not in the paper: the fused stream with and without the item ID (F0 = E0 + A vs A)
          "fused_identity": ("fusion", ("sum", "attributes"))}
# Settings a sweep's points share besides the swept field. The padding mask only matters for the
# research code's HIE (one basis per sequence): causal HIE never lets a padded position in.
SWEEP_FIXED = {"hie_padding": {"hie_causal": False}}


DEFAULT_SEED = 42


SETTINGS = ("cpu", "cpu256", "paper")     # see the module docstring


def setting_label(setting: str, training_samples: str, seed: int = DEFAULT_SEED,
                  attributes: str = "paper", bucket_by_length: bool = True) -> str:
    """Names the results files, tables and run directories of a setting. Prefix training is a
    different run (and 5-10x the cost), so it gets its own label instead of colliding with the
    one-sequence runs of the same setting: cpu, cpu-prefix, paper, paper-prefix. Another seed
    repeats a setting to measure run-to-run variation, so it gets its own too: cpu-seed1. So does
    another attribute set (Beauty's merged brand + category ids): cpu-prefix-attrall. And batches
    padded to the full length instead of length buckets (other batches, and what the research code's
    per-sequence HIE basis sees): cpu-prefix-nobucket."""
    label = setting if training_samples == "sequence" else f"{setting}-{training_samples}"
    if seed != DEFAULT_SEED:
        label = f"{label}-seed{seed}"
    if attributes != "paper":
        label = f"{label}-attr{attributes}"
    return label if bucket_by_length else f"{label}-nobucket"


def run_label(args: argparse.Namespace) -> str:
    """The setting's label (``setting_label``) of an invocation's flags: it names the run directories."""
    return setting_label(args.setting, args.training_samples, args.seed, args.attributes, args.bucket_by_length)


def results_label(args: argparse.Namespace) -> str:
    """The label of an invocation's results files and tables: the setting's label, plus -fa<X> when
    --lambda_fa replaces the setting's FA weight (cpu-prefix-fa1) and -pool<mode> when
    --attribute_pooling replaces its pooling (cpu-prefix-fa1-poolmean), and -lattr<X> when --lambda_attr
    replaces DIF-SR's attribute-loss weight (cpu256-prefix-lattr1). Run directories keep the setting's
    label: they are named by what differs from the setting (asif-lambda_fa=1.0), so a run shared with
    a --sweep lambda point is trained once."""
    label = run_label(args)
    if args.lambda_fa is not None:
        label = f"{label}-fa{args.lambda_fa:g}"
    if args.attribute_pooling is not None:
        label = f"{label}-pool{args.attribute_pooling}"
    return label if args.lambda_attr is None else f"{label}-lattr{args.lambda_attr:g}"


def with_lambda_fa(plan: List[Tuple[str, str, dict]], lambda_fa: Optional[float]) -> List[Tuple[str, str, dict]]:
    """``plan`` with ASIF's FA weight set to ``lambda_fa`` in every ASIF run that has the FA loss on
    (not in w/o FA, where the weight is unused and the run is the same whatever it would be)."""
    if lambda_fa is None:
        return plan
    return [(key, model, overrides if model != "asif" or overrides.get("fa") is False
             else {**overrides, "lambda_fa": lambda_fa}) for key, model, overrides in plan]


# The models without attribute embeddings: an attribute-pooling override does not change their run.
ID_ONLY_MODELS = ("sasrec", "gru4rec")


def with_attribute_pooling(plan: List[Tuple[str, str, dict]],
                           pooling: Optional[str]) -> List[Tuple[str, str, dict]]:
    """``plan`` with the pooling of each attribute field's tokens set to ``pooling`` in every run of a
    model that embeds attributes (the ID-only models keep the setting's run: it is the same run)."""
    if pooling is None:
        return plan
    return [(key, model, overrides if model in ID_ONLY_MODELS else {**overrides, "attribute_pooling": pooling})
            for key, model, overrides in plan]


def with_lambda_attr(plan: List[Tuple[str, str, dict]], lambda_attr: Optional[float]) -> List[Tuple[str, str, dict]]:
    """``plan`` with DIF-SR's attribute-prediction weight set to ``lambda_attr`` in every DIF-SR run (the
    weight exists in DIF-SR only; the other models keep the setting's run)."""
    if lambda_attr is None:
        return plan
    return [(key, model, {**overrides, "lambda_attr": lambda_attr} if model == "difsr" else overrides)
            for key, model, overrides in plan]


def parse_sweep_values(text: str, kind: type) -> tuple:
    """'a,b,c' -> values of ``kind``; booleans accept true/false/1/0 (bool('False') would be True)."""
    out = []
    for item in (v.strip() for v in text.split(",")):
        if kind is bool:
            if item.lower() not in ("true", "false", "1", "0"):
                raise ValueError(item)
            out.append(item.lower() in ("true", "1"))
        else:
            out.append(kind(item))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    input_dir: pathlib.Path
    preprocess_args: Tuple[str, ...]      # extra flags of beam_pipelines.preprocess
    attributes: str                       # cache key of the attribute choice


def known_datasets(data_root: pathlib.Path, attributes: str) -> Dict[str, Dataset]:
    """beauty and yelp from ``data_root`` (../shared/data). ``attributes``: paper = categories only
    where a typed split exists; all = every attribute id of the merged file."""
    beauty_args = ("--attributes", "typed", "--attribute_fields", "categories") if attributes == "paper" \
        else ("--attributes", "merged")
    return {"beauty": Dataset("beauty", data_root / "beauty", beauty_args,
                              "categories" if attributes == "paper" else "all"),
            "yelp": Dataset("yelp", data_root / "yelp", ("--attributes", "merged"), "all")}


def setting_config(setting: str, dataset: str) -> ExperimentConfig:
    """The shared hyper-parameters of a setting (every model gets these)."""
    cfg = ExperimentConfig()
    m, t = cfg.model, cfg.train
    if setting == "paper":
        m.hidden_size, m.num_layers, m.num_heads, m.inner_size = 256, 4, 8, 256
        t.learning_rate, t.epochs, t.patience = 1e-4, 200, 10
        t.batch_size = 1024 if dataset == "yelp" else 2048
    elif setting == "cpu":
        m.hidden_size, m.num_layers, m.num_heads, m.inner_size = 64, 2, 2, 256
        t.learning_rate, t.epochs, t.patience, t.batch_size = 1e-3, 100, 20, 256
    elif setting == "cpu256":
        m.hidden_size, m.num_layers, m.num_heads, m.inner_size = 256, 4, 8, 256
        t.learning_rate, t.epochs, t.patience, t.batch_size = 5e-4, 30, 5, 256
    else:
        raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")
    m.dropout, m.attention_dropout, m.init_std, m.layer_norm_eps = 0.5, 0.3, 0.02, 1e-12
    m.attribute_pooling = "sum"
    m.lambda_fa = 0.1 if dataset == "yelp" else 0.01
    cfg.data.max_seq_len = 50
    t.loss, t.eval_batch_size = "softmax", 512
    return cfg


def shared_config(args: argparse.Namespace, dataset: str) -> ExperimentConfig:
    """The setting's config for ``dataset`` with the command line's training overrides applied."""
    cfg = setting_config(args.setting, dataset)
    t = cfg.train
    t.training_samples, t.seed, t.verbose = args.training_samples, args.seed, args.verbose
    t.bucket_by_length = args.bucket_by_length
    if args.max_epochs is not None:
        t.epochs = args.max_epochs
    if args.patience is not None:
        t.patience = args.patience
    if args.batch_size is not None:
        t.batch_size = args.batch_size
    return cfg


def model_config(base: ExperimentConfig, model: str, overrides: Optional[dict] = None) -> ExperimentConfig:
    """``base`` with the model selected, its model-specific settings, then ``overrides`` (ModelConfig fields)."""
    cfg = copy.deepcopy(base)
    cfg.model.model = model
    if model == "gru4rec":
        cfg.model.num_layers, cfg.model.dropout = 1, 0.3          # RecBole's GRU4Rec defaults
    for key, value in (overrides or {}).items():
        if not hasattr(cfg.model, key):
            raise ValueError(f"unknown model config field {key!r}")
        setattr(cfg.model, key, value)
    return cfg.validate()


# ----------------------------------------------------------------------- data


def prepare_dataset(ds: Dataset, results_dir: pathlib.Path) -> str:
    """The preprocessed directory of ``ds`` under results_dir/data/, built once and reused."""
    data_root = results_dir / "data"
    _ignore_in_git(data_root)
    out = data_root / f"{ds.name}-{ds.attributes}"
    # metadata.json is the pipeline's last write, so it marks a complete dataset. Processes started
    # side by side on an uncached dataset take turns: the first preprocesses, the others wait and
    # reuse it (two pipelines writing one directory with --overwrite break each other's writes).
    with exclusive_lock(data_root / f"{out.name}.lock"):
        if (out / "metadata.json").exists():
            _LOG.info("dataset %s: using the cached %s", ds.name, out)
            return str(out)
        if not ds.input_dir.is_dir():
            raise SystemExit(f"error: dataset {ds.name}: input directory {ds.input_dir} does not exist "
                             "(set --data_root to the directory holding beauty/ and yelp/)")
        from beam_pipelines import preprocess
        started = time.time()
        _LOG.info("dataset %s: preprocessing %s -> %s", ds.name, ds.input_dir, out)
        meta = preprocess.run(["--format", "s3rec", "--input", str(ds.input_dir), "--output_dir", str(out),
                               "--overwrite", *ds.preprocess_args])
        _LOG.info("dataset %s: %d users, %d items, %d interactions, fields %s (%.0f s)", ds.name,
                  meta["num_users"], meta["num_items"], meta["num_interactions"], meta["attribute_fields"],
                  time.time() - started)
    return str(out)


@contextlib.contextmanager
def exclusive_lock(path: pathlib.Path):
    """An advisory lock between processes (fcntl.flock on ``path``, created if missing), held for the block."""
    with open(path, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ignore_in_git(path: pathlib.Path) -> None:
    """Generated data and runs never belong in the repository."""
    path.mkdir(parents=True, exist_ok=True)
    marker = path / ".gitignore"
    if not marker.exists():
        marker.write_text("# generated by bench/reproduce.py\n*\n", encoding="utf-8")


# ----------------------------------------------------------------------- runs


def run_one(cfg: ExperimentConfig, run_dir: pathlib.Path) -> dict:
    """Train/evaluate ``cfg`` in ``run_dir`` unless that run already finished; returns its metrics.json."""
    import tensorflow as tf
    from asif_tf import train
    metrics_path, state_path = run_dir / "metrics.json", run_dir / "state.json"
    cfg.train.run_dir = str(run_dir)
    if metrics_path.exists() and state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if train.run_finished(state, cfg.train):
            # A finished run is only reused for the config it was trained with (e.g. not after a
            # setting's default changed under the same run directory name); train.run checks a
            # run it resumes itself.
            train.check_run_config(str(run_dir), cfg)
            _LOG.info("%s: finished earlier (%d epochs), reusing %s", run_dir.name, state.get("epoch", 0),
                      metrics_path)
            return json.loads(metrics_path.read_text(encoding="utf-8"))
    tf.keras.backend.clear_session()
    started = time.time()
    _LOG.info("%s: training %s (d=%d, L=%d, h=%d, lr=%g, batch %d, <= %d epochs, patience %d)", run_dir.name,
              cfg.model.model, cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads,
              cfg.train.learning_rate, cfg.train.batch_size, cfg.train.epochs, cfg.train.patience)
    metrics = train.run(cfg)
    _LOG.info("%s: done in %.0f s wall (%d epochs, best %d, %.0f s training): test H@20 %.4f N@20 %.4f",
              run_dir.name, time.time() - started, metrics["epochs"], metrics["best_epoch"], metrics["seconds"],
              metrics["test"]["hr@20"], metrics["test"]["ndcg@20"])
    return metrics


def run_history(run_dir: pathlib.Path) -> List[dict]:
    """The run's per-epoch history from state.json (Keras logs plus epoch_seconds); [] if none."""
    state_path = run_dir / "state.json"
    if not state_path.exists():
        return []
    return json.loads(state_path.read_text(encoding="utf-8")).get("history", [])


def learning_curve(history: List[dict]) -> List[dict]:
    """Per epoch: training loss and validation metrics, from a run's history."""
    keep = ("epoch", "loss", "aux_loss", *(f"val_{m}" for m in METRICS))
    return [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in h.items() if k in keep} for h in history]


def seconds_per_epoch(metrics: dict, history: List[dict]) -> float:
    """The median of the epochs' wall times in the history: a run paused for a while, or sharing
    its cores with another for some epochs, keeps its typical epoch cost. Runs trained before
    per-epoch times were recorded (or with some epochs missing them): total seconds / epochs."""
    times = [h["epoch_seconds"] for h in history if "epoch_seconds" in h]
    if history and len(times) == len(history):
        return round(float(statistics.median(times)), 2)
    return round(metrics["seconds"] / max(metrics["epochs"], 1), 2)


def summarize(metrics: dict, cfg: ExperimentConfig, run_dir: pathlib.Path) -> dict:
    history = run_history(run_dir)
    return {"curve": learning_curve(history),
            "test": {k: metrics["test"][k] for k in (*METRICS, "mrr") if k in metrics["test"]},
            "valid": {k: metrics["valid"][k] for k in (*METRICS, "mrr") if k in metrics["valid"]},
            "epochs": metrics["epochs"], "best_epoch": metrics["best_epoch"],
            "stopped_early": metrics["stopped_early"], "train_seconds": metrics["seconds"],
            "seconds_per_epoch": seconds_per_epoch(metrics, history),
            "run_dir": str(run_dir), "model_config": dataclasses.asdict(cfg.model)}


def sweep_points(runs: dict, default_values: Sequence) -> List[dict]:
    """The swept runs of a results file (those with a ``value``), each with its ``key``, in plot order:
    numbers ascending, other values (booleans, names) in the sweep's default order, values outside it last."""
    def order(point):
        value = point["value"]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, value, 0, "")
        rank = default_values.index(value) if value in default_values else len(default_values)
        return (1, 0, rank, str(value))
    return sorted((dict(run, key=key) for key, run in runs.items() if "value" in run), key=order)


class ResultFile:
    """A JSON results file rewritten (atomically) after every finished run.

    Several reproduce.py processes may share one results file (e.g. one per model, in
    parallel): ``add`` re-reads the file under an exclusive lock and merges its run into
    what is there, so one process never drops the runs another one wrote.
    """

    def __init__(self, path: pathlib.Path, header: dict):
        self.path = path
        self.header = header
        self.data = self._read()

    def _read(self) -> dict:
        data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        data.update(self.header)
        data.setdefault("runs", {})
        return data

    def add(self, key: str, summary: dict) -> None:
        with self._locked():
            self.data = self._read()
            self.data["runs"][key] = summary
            self._write()

    def set_sweep_points(self, swept: str, default_values: Sequence) -> None:
        """Sets ``points`` (what ``plot_sweep`` plots) from every swept run in the file, merged like
        ``add``: parallel sweep invocations (one value each) then all land in the plot, whichever
        finishes last, instead of each one writing only its own values."""
        with self._locked():
            self.data = self._read()
            self.data.update(points=sweep_points(self.data["runs"], default_values), swept=swept)
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def _locked(self):
        return exclusive_lock(self.path.with_suffix(".json.lock"))


def header(ds: Dataset, setting: str, data_dir: str, base: ExperimentConfig) -> dict:
    return {"dataset": ds.name, "setting": setting, "data_dir": data_dir, "attributes": ds.attributes,
            "shared_config": {"data": dataclasses.asdict(base.data), "train": {
                k: v for k, v in dataclasses.asdict(base.train).items() if k not in ("run_dir", "export_dir")}},
            "device": _device()}


def _device() -> str:
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU(s)" if gpus else f"CPU ({os.cpu_count()} cores)"


# ----------------------------------------------------------------------- tables


def _rel(ours: float, paper: float) -> str:
    return f"{(ours - paper) / paper:+.1%}"


def main_table(results_dir: pathlib.Path, setting: str, datasets: Sequence[str], models: Sequence[str]) -> str:
    """Table 2 layout: one row per model and source (ours / paper / relative difference)."""
    loaded = {d: _load(results_dir / f"{d}-{setting}.json") for d in datasets}
    cols = [f"{d.capitalize()} {SHORT[m]}" for d in datasets for m in METRICS]
    lines = [f"Full-ranking test metrics, setting `{setting}` (ours) vs the paper (ASIF.md).", "",
             "| model | source | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for model in models:
        ours, paper, diff = [], [], []
        for d in datasets:
            run = loaded[d].get("runs", {}).get(model)
            ref = PAPER.get(model, {}).get(d)
            for i, metric in enumerate(METRICS):
                value = run["test"][metric] if run else None
                ours.append(f"{value:.4f}" if value is not None else "–")
                paper.append(f"{ref[i]:.4f}" if ref else "–")
                diff.append(_rel(value, ref[i]) if (value is not None and ref) else "–")
        label = MODEL_LABELS.get(model, model)
        lines.append(f"| {label} | ours | " + " | ".join(ours) + " |")
        if any(PAPER.get(model, {}).get(d) for d in datasets):
            lines.append(f"| {label} | paper | " + " | ".join(paper) + " |")
            lines.append(f"| {label} | rel. diff | " + " | ".join(diff) + " |")
    lines += ["", _cost_lines(loaded, models)]
    return "\n".join(lines) + "\n"


def _cost_lines(loaded: Dict[str, dict], keys: Sequence[str]) -> str:
    rows = ["| dataset | model | epochs (best) | early stop | training s | s/epoch | valid H@20 | valid N@20 |",
            "|---|---|---|---|---|---|---|---|"]
    for d, data in loaded.items():
        for key in keys:
            run = data.get("runs", {}).get(key)
            if run:
                rows.append(f"| {d} | {key} | {run['epochs']} ({run['best_epoch']}) | "
                            f"{'yes' if run['stopped_early'] else 'no'} | {run['train_seconds']:.0f} | "
                            f"{run['seconds_per_epoch']:.1f} | {run['valid']['hr@20']:.4f} | "
                            f"{run['valid']['ndcg@20']:.4f} |")
    return ("Cost, and the validation metrics of the selected epoch. training s: wall time of all epochs "
            "(paused time included); s/epoch: the median epoch (the mean for runs trained before per-epoch "
            "times were recorded):\n\n" + "\n".join(rows))


def ablation_table(results_dir: pathlib.Path, setting: str, datasets: Sequence[str]) -> str:
    """Table 4 layout: H@20 and N@20 per dataset for ASIF and each w/o variant."""
    loaded = {d: _load(results_dir / f"{d}-{setting}-ablations.json") for d in datasets}
    cols = [f"{d.capitalize()} {SHORT[m]}" for d in datasets for m in ("hr@20", "ndcg@20")]
    lines = [f"Ablation (paper Table 4), setting `{setting}`: ours / paper (rel. diff).", "",
             "| variant | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for variant in ABLATIONS:
        cells = []
        for d in datasets:
            run = loaded[d].get("runs", {}).get(variant)
            ref = PAPER_ABLATIONS[variant].get(d)
            for i, metric in enumerate(("hr@20", "ndcg@20")):
                value = run["test"][metric] if run else None
                if value is None:
                    cells.append("–" if not ref else f"– / {ref[i]:.4f}")
                elif ref:
                    cells.append(f"{value:.4f} / {ref[i]:.4f} ({_rel(value, ref[i])})")
                else:
                    cells.append(f"{value:.4f}")
        lines.append(f"| {ABLATION_LABELS[variant]} | " + " | ".join(cells) + " |")
    lines += ["", _cost_lines(loaded, list(ABLATIONS))]
    return "\n".join(lines) + "\n"


def _load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _pyplot(path_json: pathlib.Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _LOG.warning("matplotlib is not installed (pip install matplotlib==3.10.8): %s stays JSON only", path_json)
        return None
    return plt


def plot_curves(path_json: pathlib.Path) -> Optional[pathlib.Path]:
    """Learning curves of every run in a results file: validation N@20 and H@20 per epoch
    (the best epoch marked), and the training loss; ``<results>-curves.png``."""
    data = _load(path_json)
    runs = {k: r for k, r in data.get("runs", {}).items() if r.get("curve")}
    plt = _pyplot(path_json) if runs else None
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key, run in runs.items():
        epochs = [c["epoch"] for c in run["curve"]]
        label = MODEL_LABELS.get(key, ABLATION_LABELS.get(key, key))
        for ax, metric in zip(axes, ("val_ndcg@20", "val_hr@20", "loss")):
            line, = ax.plot(epochs, [c.get(metric, float("nan")) for c in run["curve"]], label=label)
            if metric != "loss" and run.get("best_epoch") in epochs:
                i = epochs.index(run["best_epoch"])
                ax.plot([epochs[i]], [run["curve"][i][metric]], "o", color=line.get_color())
    # Epochs trained before commit 3757aa5 logged the last batch's loss, later ones the epoch's
    # mean; a run resumed across that commit shows the step between the two.
    for ax, title in zip(axes, ("validation N@20", "validation H@20",
                                "training loss\n(epoch mean; last batch before 3757aa5)")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{data.get('dataset')}, setting {data.get('setting')} (dots: best epoch, restored for test)")
    fig.tight_layout()
    out = path_json.with_name(path_json.stem + "-curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_sweep(path_json: pathlib.Path, sweep: str) -> Optional[pathlib.Path]:
    """H@20 and N@20 (test and valid) against the swept value; None when matplotlib is missing."""
    plt = _pyplot(path_json)
    if plt is None:
        return None
    data = _load(path_json)
    points = data.get("points", [])
    if not points:
        return None
    labels = [str(p["value"]) for p in points]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("hr@20", "ndcg@20")):
        for split, style in (("test", "o-"), ("valid", "s--")):
            ax.plot(range(len(points)), [p[split][metric] for p in points], style, label=split)
        ax.set_xticks(range(len(points)), labels)
        ax.set_xlabel(SWEEPS[sweep][0])
        ax.set_title(f"{data['dataset']} {SHORT[metric]}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"ASIF, sweep of {SWEEPS[sweep][0]} (setting {data['setting']})")
    fig.tight_layout()
    out = path_json.with_suffix(".png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------- driver


def variant_name(model: str, overrides: dict) -> str:
    return model + "".join(f"-{k}={v}" for k, v in sorted(overrides.items()))


def parse_datasets(spec: str, data_root: pathlib.Path, attributes: str) -> List[Dataset]:
    known = known_datasets(data_root, attributes)
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" in item:          # NAME=DIR: any s3rec-format directory (no paper numbers)
            name, path = item.split("=", 1)
            out.append(Dataset(name, pathlib.Path(path), (), "all"))
        elif item in known:
            out.append(known[item])
        else:
            raise SystemExit(f"error: --datasets: unknown dataset {item!r}; expected beauty, yelp or NAME=DIR")
    if not out:
        raise SystemExit("error: --datasets is empty")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/reproduce.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"Comma-separated models (of {', '.join(MODELS)}). Default: %(default)s")
    parser.add_argument("--datasets", default="beauty,yelp",
                        help="Comma-separated: beauty, yelp (from --data_root), or NAME=DIR for any s3rec-format "
                             "directory. Default: %(default)s")
    parser.add_argument("--setting", choices=SETTINGS, default="cpu",
                        help="Hyper-parameter setting shared by all models (see above). Default: %(default)s")
    parser.add_argument("--max_epochs", type=int, default=None,
                        help="Override the setting's maximum number of epochs (a finished run with fewer epochs "
                             "and no early stop is resumed up to the new maximum).")
    parser.add_argument("--patience", type=int, default=None, help="Override the early-stopping patience.")
    parser.add_argument("--batch_size", type=int, default=None, help="Override the training batch size.")
    parser.add_argument("--training_samples", choices=("sequence", "prefix"), default="sequence",
                        help="sequence: a loss at every position of one sequence per user (all models here are "
                             "causal, ASIF with causal HIE); prefix: every prefix predicts its next item, the "
                             "paper's protocol, 5-10x more steps; its results, tables and runs are labelled "
                             "<setting>-prefix (e.g. beauty-cpu-prefix.json). Default: %(default)s")
    parser.add_argument("--attributes", choices=("paper", "all"), default="paper",
                        help="paper: Beauty uses its categories only (typed split), as the reference setting; "
                             "all: every attribute id (brand + categories merged; results, tables and runs are labelled "
                             "<setting>-attrall, e.g. beauty-cpu-prefix-attrall.json). Default: %(default)s")
    parser.add_argument("--bucket_by_length", action=argparse.BooleanOptionalAction, default=True,
                        help="Batch sequences of similar length together (5-10x faster on CPU for Beauty's short "
                             "prefixes). --no-bucket_by_length pads every batch to the full length, as the research "
                             "code does; with --sweep hie_padding --sweep_values false that is the research code's "
                             "exact HIE: one basis per sequence, spanning all max_seq_len positions, padding "
                             "included. Results, tables and runs are labelled <setting>-nobucket (e.g. "
                             "cpu-prefix-nobucket). Default: on.")
    parser.add_argument("--ablations", action="store_true",
                        help="Run ASIF and its w/o RSA / HIE / UP / FA variants instead of --models (Table 4).")
    parser.add_argument("--variants", default=None,
                        help="With --ablations: comma-separated subset of its variants to run (of "
                             + ", ".join(ABLATIONS) + "), e.g. to split Table 4 over two machines or "
                             "processes. Default: all.")
    parser.add_argument("--lambda_fa", type=float, default=None,
                        help="ASIF's FA weight (lambda) in every ASIF run of this invocation (models, ablations, "
                             "sweeps other than lambda) instead of the setting's (0.01 Beauty, 0.1 Yelp). Results "
                             "and tables are labelled <label>-fa<X> (e.g. ablations-cpu-prefix-fa1.md); run "
                             "directories are named by the override (asif-lambda_fa=1.0), so the run of a "
                             "--sweep lambda point is reused.")
    parser.add_argument("--attribute_pooling", choices=("sum", "mean"), default=None,
                        help="Pooling of the tokens of one attribute field (Yelp's items have several "
                             "categories each) in every run of a model that embeds attributes, instead of the "
                             "setting's sum. RecBole's FDSA pools by mean (its SASRecF by sum). Results and "
                             "tables are labelled <label>-pool<mode> (e.g. table-cpu-prefix-fa1-poolmean.md); "
                             "run directories are named by the override (fdsa-attribute_pooling=mean).")
    parser.add_argument("--lambda_attr", type=float, default=None,
                        help="DIF-SR's attribute-prediction loss weight in every DIF-SR run instead of the "
                             "config default (10, DIF-SR's Beauty setting). In the cpu256 setting (d=256, lr 5e-4, "
                             "batch 256) weight 10 keeps DIF-SR at popularity level (bench/README.md). Results and "
                             "tables are labelled <label>-lattr<X> (e.g. table-cpu256-prefix-lattr1.md); run "
                             "directories are named by the override (difsr-lambda_attr=1.0).")
    parser.add_argument("--sweep", choices=sorted(SWEEPS), default=None,
                        help="Sweep one ASIF parameter instead of --models: lambda (lambda_fa, Fig. 6), r "
                             "(num_bases, Fig. 6), fusion (gamma, Fig. 7), or one of ASIF.md's reconstructed "
                             "choices: ffn (separate_ffn), refine (refine_fused), hie_causal (causal HIE vs "
                             "the research code's one basis per sequence) and hie_padding (hie_mask_padding of "
                             "the per-sequence basis; these two need --training_samples prefix), and, not in the paper: "
                             "hie_from (hie_from_layer: HIE only from that layer up), attr_dropout "
                             "(attribute_dropout) and fused_identity (the fused stream with or without the ID).")
    parser.add_argument("--sweep_values", default=None,
                        help="Comma-separated values for --sweep (default: "
                             + "; ".join(f"{k}: {','.join(map(str, v[1]))}" for k, v in SWEEPS.items()) + ").")
    parser.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"),
                        help="Directory holding beauty/ and yelp/ in S3-Rec format. Default: %(default)s")
    parser.add_argument("--results_dir", default=str(REPO / "bench" / "results"),
                        help="Where results, the cached datasets and the run directories go. Default: %(default)s")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="Random seed of every run (initialisation, dropout, data order). Another seed "
                             "is a repeat of the setting with its own results, tables and run directories "
                             "(label e.g. cpu-seed1), to measure run-to-run variation. Default: %(default)s")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                        help="Keras verbosity of each run. Default: %(default)s")
    return parser


def canonical_order(items: Sequence[str], canonical: Sequence[str]) -> List[str]:
    """``items`` with the known ones in ``canonical`` order (the paper's) and the others after,
    as given: a table's rows and columns must not depend on which invocation wrote it last."""
    return [c for c in canonical if c in items] + [i for i in items if i not in canonical]


def write_table(results_dir: pathlib.Path, args: argparse.Namespace, names: List[str], models: Sequence[str],
                suffix: str) -> Optional[pathlib.Path]:
    """Writes table-<label>.md (or ablations-<label>.md) from the results files; None for sweeps."""
    if args.sweep:
        return None
    label = results_label(args)
    # Tables also show the other paper dataset when its results (from an earlier invocation) exist;
    # canonical_order keeps each known name once.
    names = canonical_order(names + [d for d in PAPER_DATASETS
                                     if (results_dir / f"{d}-{label}{suffix}.json").exists()], PAPER_DATASETS)
    if args.ablations:
        table_path = results_dir / f"ablations-{label}.md"
        table_path.write_text(ablation_table(results_dir, label, names), encoding="utf-8")
        return table_path
    done = set()
    for d in names:
        done |= set(_load(results_dir / f"{d}-{label}.json").get("runs", {}))
    models = canonical_order(list(models) + [m for m in DEFAULT_MODELS if m in done], DEFAULT_MODELS)
    table_path = results_dir / f"table-{label}.md"
    table_path.write_text(main_table(results_dir, label, names, models), encoding="utf-8")
    return table_path


def parse_names(parser: argparse.ArgumentParser, flag: str, text: str, known: Sequence[str]) -> List[str]:
    """'a, b,c' -> ['a', 'b', 'c'], every name one of ``known`` (else a usage error naming ``flag``)."""
    names = [n for n in (s.strip() for s in text.split(",")) if n]
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"{flag}: unknown {unknown}; expected some of {', '.join(known)}")
    return names


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    for noisy in ("apache_beam", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    models = parse_names(parser, "--models", args.models, MODELS)
    if args.ablations and args.sweep:
        parser.error("--ablations and --sweep are separate runs; give one of them")
    if args.variants is not None and not args.ablations:
        parser.error("--variants selects ablation variants; give it with --ablations")
    variants = list(ABLATIONS) if args.variants is None else parse_names(parser, "--variants", args.variants, ABLATIONS)
    if not variants:
        parser.error("--variants is empty; expected some of " + ", ".join(ABLATIONS))
    if args.lambda_fa is not None and args.lambda_fa < 0:
        parser.error(f"--lambda_fa must be >= 0, got {args.lambda_fa}")
    if args.lambda_fa is not None and args.sweep == "lambda":
        parser.error("--sweep lambda sweeps the FA weight itself; leave out --lambda_fa")
    if args.lambda_attr is not None and args.lambda_attr < 0:
        parser.error(f"--lambda_attr must be >= 0, got {args.lambda_attr}")
    for name in ("max_epochs", "patience", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    datasets = parse_datasets(args.datasets, pathlib.Path(args.data_root), args.attributes)
    results_dir = pathlib.Path(args.results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    _ignore_in_git(results_dir / "runs")

    # What to run: (result key, model, ModelConfig overrides).
    if args.ablations:
        plan = [(name, "asif", ABLATIONS[name]) for name in variants]
        suffix = "-ablations"
    elif args.sweep:
        field, values = SWEEPS[args.sweep]
        if args.sweep_values:
            kind = type(values[0])
            try:
                values = parse_sweep_values(args.sweep_values, kind)
            except ValueError:
                parser.error(f"--sweep_values: expected {kind.__name__} values for {args.sweep}")
        fixed = SWEEP_FIXED.get(args.sweep, {})
        plan = [(f"{field}={v}", "asif", {**fixed, field: v}) for v in values]
        suffix = f"-sweep-{args.sweep}"
    else:
        plan = [(m, m, {}) for m in models]
        suffix = ""
    plan = with_attribute_pooling(with_lambda_fa(plan, args.lambda_fa), args.attribute_pooling)
    plan = with_lambda_attr(plan, args.lambda_attr)

    # Every run's config is validated (asif_tf.config) before any preprocessing or training, so a
    # combination the trainer refuses (e.g. the per-sequence HIE of --sweep hie_causal under
    # one-sequence training) is a usage error up front, not a traceback hours into the plan.
    for ds in datasets:
        for key, model, overrides in plan:
            try:
                model_config(shared_config(args, ds.name), model, overrides)
            except ValueError as err:
                parser.error(f"{ds.name} {key}: {err}")

    label = run_label(args)
    out_label = results_label(args)
    started = time.time()
    for ds in datasets:
        data_dir = prepare_dataset(ds, results_dir)
        base = shared_config(args, ds.name)
        base.data.data_dir = data_dir
        results = ResultFile(results_dir / f"{ds.name}-{out_label}{suffix}.json",
                             header(ds, out_label, data_dir, base))
        for key, model, overrides in plan:
            cfg = model_config(base, model, overrides)
            # A run directory is named by what differs from the model's default, so equal configs share
            # one (the sweep's default point is plain ASIF; hie_padding's masked point is hie_causal's
            # per-sequence point).
            default = model_config(base, model)
            changed = {k: v for k, v in overrides.items() if getattr(default.model, k) != v}
            run_name = variant_name(model, changed)
            run_dir = results_dir / "runs" / f"{ds.name}-{label}" / run_name
            t0 = time.time()
            metrics = run_one(cfg, run_dir)
            summary = summarize(metrics, cfg, run_dir)
            summary["wall_seconds_this_invocation"] = round(time.time() - t0, 1)
            if args.sweep:
                summary["value"] = overrides[SWEEPS[args.sweep][0]]
            results.add(key, summary)
            # The table is rewritten after every run, so a stopped invocation leaves it up to date.
            write_table(results_dir, args, [d.name for d in datasets], models, suffix)
            _LOG.info("[%s %s] %s: test %s", ds.name, out_label, key,
                      "  ".join(f"{SHORT[m]} {summary['test'][m]:.4f}" for m in METRICS))
        if args.sweep:
            results.set_sweep_points(*SWEEPS[args.sweep])
            png = plot_sweep(results.path, args.sweep)
            _LOG.info("sweep %s on %s: %s%s", args.sweep, ds.name, results.path, f", {png}" if png else "")
        curves = plot_curves(results.path)
        _LOG.info("wrote %s%s", results.path, f" and {curves}" if curves else "")

    table_path = write_table(results_dir, args, [ds.name for ds in datasets], models, suffix)
    if table_path:
        _LOG.info("wrote %s", table_path)
        print("\n" + table_path.read_text(encoding="utf-8"))
    _LOG.info("all done in %.0f s", time.time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

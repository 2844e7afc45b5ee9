"""Typed configuration: the one place where defaults live.

Nested dataclasses in the style of tensorflow/models' ``official`` configs. Every
field carries its help text; ``asif_tf.train`` builds its command-line flags from
these fields, ``--config FILE`` loads a JSON file of the same shape, and every run
writes the resolved config next to its results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Dict, List, Optional, get_args, get_origin, get_type_hints


def _field(default, help: str, choices=None, flag: Optional[str] = None):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if flag is not None:
        meta["flag"] = flag
    return dataclasses.field(default=default, metadata=meta)


MODELS = ("asif", "sasrec", "sasrecf", "fdsa", "nova", "difsr", "gru4rec")
# The paper's fusion functions (Figure 7), and one diagnostic that is not in the paper:
# "attributes" leaves the item ID out of the fused stream (F0 = sum_k A_k).
PAPER_FUSIONS = ("sum", "concat", "gate")
FUSIONS = PAPER_FUSIONS + ("attributes",)


@dataclasses.dataclass
class DataConfig:
    data_dir: str = _field("", "Preprocessed dataset directory (output of beam_pipelines.preprocess). "
                               "Empty: the built-in generated dataset.", flag="data")
    builtin_dir: str = _field("", "Where the built-in dataset is generated and cached "
                                  "(default: ~/.cache/asif/builtin-v2).")
    max_seq_len: int = _field(50, "Keep the most recent N items of each history (the paper uses 50).")
    attribute_fields: str = _field("", "Comma-separated attribute fields of the item table to use; "
                                       "empty = all fields of the dataset.")

    def attribute_field_list(self) -> Optional[List[str]]:
        """``attribute_fields`` as a list, or None for every field of the dataset."""
        return [f for f in self.attribute_fields.split(",") if f] or None


@dataclasses.dataclass
class ModelConfig:
    model: str = _field("asif", "Model to train.", choices=MODELS)
    hidden_size: int = _field(64, "Hidden size d (paper: 256; 64 is the CPU starting point).")
    num_layers: int = _field(2, "Number of stacked layers L (paper: 4).")
    num_heads: int = _field(2, "Attention heads h; hidden_size must be divisible by it (paper: 8).")
    inner_size: int = _field(256, "Inner size of the point-wise feed-forward network.")
    dropout: float = _field(0.5, "Hidden dropout rate (embeddings, attention output, FFN).")
    attention_dropout: float = _field(0.3, "Dropout on attention probabilities.")
    init_std: float = _field(0.02, "Std of the truncated-normal initializer of embeddings and projections.")
    layer_norm_eps: float = _field(1e-12, "LayerNorm epsilon.")
    fusion: str = _field("sum", "Fusion function gamma of ID and attribute embeddings (paper Fig. 7); "
                                "'attributes' (not in the paper) leaves the ID out: F0 = sum of the "
                                "attribute embeddings.",
                         choices=FUSIONS)
    attribute_pooling: str = _field("sum", "Pooling of the multi-valued tokens of one attribute field.",
                                    choices=("sum", "mean"))
    rsa: bool = _field(True, "RSA: attention scores of the item stream come from the fused stream "
                             "(--no-rsa: from the item stream itself).")
    up: bool = _field(True, "UP: untied position stream refined every layer "
                            "(--no-up: position embedding added to the inputs, SASRec style).")
    hie: bool = _field(True, "HIE: inject the ID-consistent part of the fused stream (--no-hie: skip).")
    fa: bool = _field(True, "FA: feature-alignment contrastive loss weighted by --lambda_fa (--no-fa: off).")
    num_bases: int = _field(16, "r, the number of orthogonal bases of HIE (paper Fig. 6). Causal HIE factorises "
                                "an r x r Gram matrix per position, so its cost grows as r^3: measured on "
                                "Beauty (d=64, every prefix, 2 cores shared with another run), an epoch "
                                "took ~80 s at r=4, ~105 s at r=16 and ~570 s at r=64.")
    hie_mask_padding: bool = _field(True, "Mask padded positions out of the HIE basis "
                                          "(--no-hie_mask_padding: the unmasked research variant, only with --no-hie_causal; "
                                          "the padded positions it lets in are those of the batch, which pads "
                                          "to its longest sequence, where the research code pads every "
                                          "sequence to max_seq_len).")
    hie_causal: bool = _field(True, "Causal HIE: position t uses a basis built from positions <= t, so a "
                                    "loss at every position does not leak the future. Required with "
                                    "--training_samples sequence. --no-hie_causal: the research code's one basis per "
                                    "sequence (prefix training only); it agrees with causal HIE at the last "
                                    "position for one layer only, since from the second layer on earlier "
                                    "positions have seen later ones in the layers below.")
    hie_from_layer: int = _field(0, "First layer (0-based) that applies HIE: HIE runs in it and in every layer "
                                    "above it. 0: every layer (the paper). Not in the paper: a diagnostic of "
                                    "where in the stack HIE helps (num_layers - 1: the last layer only).")
    refine_fused: bool = _field(True, "Refine the fused stream layer by layer (--no-refine_fused: static).")
    separate_ffn: bool = _field(True, "Separate feed-forward networks per stream "
                                      "(--no-separate_ffn: one FFN shared by the three streams, research code).")
    lambda_fa: float = _field(0.01, "lambda, weight of the FA loss (research default 0.01 Beauty, 0.1 Yelp).")
    fa_temperature: float = _field(0.2, "Temperature tau of the FA contrastive loss.")
    fa_mask_padding: bool = _field(True, "Mask padded positions out of the FA loss.")
    attribute_dropout: float = _field(0.0, "ASIF only: dropout on the attribute embedding A before it enters "
                                           "the fused stream. 0 is the research code, where F0 = E0 + A and A "
                                           "escapes the input dropout; the FA loss always sees A undropped.")
    lambda_attr: float = _field(10.0, "DIF-SR only: weight of the attribute-prediction loss.")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = _field(30, "Maximum number of epochs.")
    batch_size: int = _field(64, "Training batch size: sequences (--training_samples sequence, each carrying a "
                                 "loss at every position) or prefixes.")
    eval_batch_size: int = _field(512, "Batch size of validation and test.")
    learning_rate: float = _field(1e-3, "Adam learning rate (paper: 1e-4 with batch 2048).")
    loss: str = _field("softmax", "softmax: full-catalogue cross-entropy (the paper's); sampled: TFRS "
                                  "Retrieval task with in-batch negatives, log-Q correction and "
                                  "accidental-hit removal, for catalogues too big for a full softmax.",
                       choices=("softmax", "sampled"))
    training_samples: str = _field("sequence", "sequence: one sequence per user with a loss at every "
                                               "position; prefix: every prefix predicts its next item.",
                                   choices=("sequence", "prefix"))
    bucket_by_length: bool = _field(True, "Group sequences of similar length into batches so short "
                                          "histories do not pay for max_seq_len positions (off: every "
                                          "batch is padded to max_seq_len, as in the research code).")
    patience: int = _field(5, "Early stopping: epochs without a better validation NDCG@20.")
    eval_chunk_size: int = _field(65536, "Items scored at once by full-ranking evaluation.")
    seed: int = _field(42, "Random seed (weights, shuffling, dropout).")
    mixed_precision: bool = _field(False, "Use mixed_float16 (GPUs).")
    run_dir: str = _field("", "Run directory (config, checkpoints, TensorBoard logs, metrics.json). "
                              "Re-running with the same directory resumes. Default: runs/<model>-<time>.")
    export_dir: str = _field("", "If set, export the selected model for TF Serving under this base directory.")
    verbose: int = _field(1, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")


@dataclasses.dataclass
class ExperimentConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def validate(self) -> "ExperimentConfig":
        m, t, d = self.model, self.train, self.data
        if m.hidden_size % m.num_heads:
            raise ValueError(f"--hidden_size ({m.hidden_size}) must be divisible by --num_heads ({m.num_heads})")
        for name, value in (("hidden_size", m.hidden_size), ("num_layers", m.num_layers),
                            ("num_heads", m.num_heads), ("max_seq_len", d.max_seq_len),
                            ("batch_size", t.batch_size), ("epochs", t.epochs), ("num_bases", m.num_bases)):
            if value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        for name, value in (("dropout", m.dropout), ("attention_dropout", m.attention_dropout),
                            ("attribute_dropout", m.attribute_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), got {value}")
        if not 0 <= m.hie_from_layer < m.num_layers:
            raise ValueError(f"--hie_from_layer must be in [0, num_layers) = [0, {m.num_layers}), "
                             f"got {m.hie_from_layer}")
        if m.model == "asif" and m.hie and not m.hie_causal and t.training_samples == "sequence":
            raise ValueError("--no-hie_causal with --training_samples sequence would leak future items "
                             "through the HIE basis; use --training_samples prefix or keep --hie_causal")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ExperimentConfig":
        cfg = cls()
        for section_name, section_values in d.items():
            if not hasattr(cfg, section_name):
                raise ValueError(f"unknown config section {section_name!r}; expected one of "
                                 f"{[f.name for f in dataclasses.fields(cls)]}")
            section = getattr(cfg, section_name)
            names = {f.name for f in dataclasses.fields(section)}
            for key, value in section_values.items():
                if key not in names:
                    raise ValueError(f"unknown field {section_name}.{key}; expected one of {sorted(names)}")
                setattr(section, key, _coerce(type(section), key, value))
        return cfg

    @classmethod
    def from_json_file(cls, path: str) -> "ExperimentConfig":
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except FileNotFoundError:
            raise FileNotFoundError(f"--config file {path!r} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"--config file {path!r} is not valid JSON: {e}") from None


def _coerce(section_cls, key, value):
    hint = get_type_hints(section_cls)[key]
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{section_cls.__name__}.{key} must be true/false, got {value!r}")
    if hint in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{section_cls.__name__}.{key} must be a number, got {value!r}")
    return hint(value)


def _sections():
    return [(f.name, f.default_factory) for f in dataclasses.fields(ExperimentConfig)]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per config field, with its help text; defaults are left unset
    (None) so that only flags the user typed override ``--config``."""
    for section_name, factory in _sections():
        group = parser.add_argument_group(f"{section_name} config")
        section_cls = factory
        hints = get_type_hints(section_cls)
        for f in dataclasses.fields(section_cls):
            flag = "--" + f.metadata.get("flag", f.name)
            names = [flag] if flag == "--" + f.name else [flag, "--" + f.name]
            kwargs = dict(dest=f"{section_name}.{f.name}", default=None,
                          help=f"{f.metadata['help']} (default: {f.default!r})")
            if hints[f.name] is bool:
                group.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
            else:
                group.add_argument(*names, type=hints[f.name], choices=f.metadata.get("choices"), **kwargs)


def config_from_args(args: argparse.Namespace, config_file: Optional[str] = None) -> ExperimentConfig:
    """Defaults < ``--config FILE`` < flags the user typed."""
    cfg = ExperimentConfig.from_json_file(config_file) if config_file else ExperimentConfig()
    for key, value in vars(args).items():
        if "." not in key or value is None:
            continue
        section, name = key.split(".", 1)
        setattr(getattr(cfg, section), name, value)
    return cfg.validate()

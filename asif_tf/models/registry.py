"""Models by name: one builder used by train, tuning, export and the benchmarks."""
from __future__ import annotations

from typing import Callable, Dict

from asif_tf.config import ExperimentConfig
from asif_tf.data.input import DatasetInfo
from asif_tf.models.base import SequenceEncoder

_BUILDERS: Dict[str, Callable[[ExperimentConfig, DatasetInfo], SequenceEncoder]] = {}


def register(name: str):
    def wrap(fn):
        _BUILDERS[name] = fn
        return fn
    return wrap


def available_models():
    _load_model_modules()
    return sorted(_BUILDERS)


def common_kwargs(cfg: ExperimentConfig, info: DatasetInfo) -> dict:
    m = cfg.model
    return dict(num_items=info.num_items, hidden_size=m.hidden_size, max_seq_len=cfg.data.max_seq_len,
                field_vocab_sizes=info.field_vocab_sizes, field_max_tokens=info.field_max_tokens,
                attribute_pooling=m.attribute_pooling, init_std=m.init_std)


@register("asif")
def _asif(cfg: ExperimentConfig, info: DatasetInfo) -> SequenceEncoder:
    from asif_tf.models.asif import ASIFEncoder
    m = cfg.model
    return ASIFEncoder(**common_kwargs(cfg, info), num_layers=m.num_layers, num_heads=m.num_heads,
                       inner_size=m.inner_size, dropout=m.dropout, attention_dropout=m.attention_dropout,
                       layer_norm_eps=m.layer_norm_eps, fusion=m.fusion, rsa=m.rsa, up=m.up, hie=m.hie, fa=m.fa,
                       num_bases=m.num_bases, hie_from_layer=m.hie_from_layer, hie_causal=m.hie_causal,
                       hie_mask_padding=m.hie_mask_padding, refine_fused=m.refine_fused,
                       separate_ffn=m.separate_ffn, lambda_fa=m.lambda_fa,
                       fa_temperature=m.fa_temperature, fa_mask_padding=m.fa_mask_padding,
                       attribute_dropout=m.attribute_dropout, name="encoder")


def _load_model_modules() -> None:
    """Baselines register themselves on import (``@register`` in asif_tf/models/baselines/)."""
    import asif_tf.models.baselines  # noqa: F401


def build_encoder(cfg: ExperimentConfig, info: DatasetInfo) -> SequenceEncoder:
    """The encoder named by ``cfg.model.model``, with the dataset's item table loaded."""
    _load_model_modules()
    name = cfg.model.model
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    encoder = _BUILDERS[name](cfg, info)
    encoder.set_item_table(info.item_attributes)
    return encoder


def build_model(cfg: ExperimentConfig, info: DatasetInfo):
    """The compiled-ready tfrs model for ``cfg`` on the dataset described by ``info``."""
    from asif_tf.models.retrieval import SequentialRetrievalModel
    encoder = build_encoder(cfg, info)
    return SequentialRetrievalModel(encoder, loss=cfg.train.loss, item_probabilities=info.item_probabilities(),
                                    eval_chunk_size=cfg.train.eval_chunk_size,
                                    last_position_loss=cfg.train.training_samples == "prefix")

"""Small in-memory datasets and configs for model tests."""
import numpy as np

from asif_tf.config import ExperimentConfig
from asif_tf.data.input import DatasetInfo


def tiny_info(num_items=30, seed=0) -> DatasetInfo:
    rng = np.random.default_rng(seed)
    cats = np.zeros((num_items + 1, 2), np.int32)
    cats[1:, 0] = rng.integers(1, 6, num_items)
    cats[1:, 1] = np.where(rng.random(num_items) < 0.5, rng.integers(1, 6, num_items), 0)
    brand = np.zeros((num_items + 1, 1), np.int32)
    brand[1:, 0] = rng.integers(1, 4, num_items)
    counts = np.concatenate([[0], rng.integers(1, 20, num_items)])
    return DatasetInfo(data_dir="", num_items=num_items, field_vocab_sizes={"categories": 5, "brand": 3},
                       field_max_tokens={"categories": 2, "brand": 1},
                       item_attributes={"categories": cats, "brand": brand}, item_counts=counts,
                       metadata={})


def tiny_config(**model_overrides) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.data.max_seq_len = 8
    m = cfg.model
    m.hidden_size, m.num_layers, m.num_heads, m.inner_size, m.num_bases = 16, 2, 2, 32, 4
    m.dropout = m.attention_dropout = 0.0
    for k, v in model_overrides.items():
        setattr(m, k, v)
    return cfg


def histories(lengths, num_items=30, n=8, seed=1):
    rng = np.random.default_rng(seed)
    h = np.zeros((len(lengths), n), np.int64)
    for i, length in enumerate(lengths):
        h[i, :length] = rng.integers(1, num_items + 1, length)
    return h

"""The built-in dataset: a deterministic synthetic interaction log in which item attributes
carry real signal, preprocessed by the same Beam pipeline as real data.

Generative story. Items belong to one category and one brand (brands sell in a few
categories). Categories follow a sparse Markov chain: after an item of category c the next
item is, with probability ``follow``, of one of c's few successor categories, else random.
Within a category, items are drawn by a Zipf popularity; each user also has a favourite
brand that boosts its items. So the category of the last items predicts the next item's
category, which an attribute-aware model can learn from far fewer examples than the
item-to-item transitions an ID-only model must learn. The catalogue is large for the
number of users (about 2,300 items survive the 5-core filter, with ~22 interactions each),
so item-level statistics stay sparse: measured with the default ASIF (20 epochs, same
seed), test NDCG@20 0.1915 vs 0.1820 for the same model with RSA, HIE, FA and UP off.
"""
from __future__ import annotations

import gzip
import json
import os

import numpy as np

BUILTIN_VERSION = 2
BUILTIN_NAME = "Builtin"


def default_builtin_dir() -> str:
    root = os.environ.get("ASIF_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "asif"))
    return os.path.join(root, f"builtin-v{BUILTIN_VERSION}")


def generate_raw(out_dir: str, num_users: int = 4000, num_items: int = 3000, num_categories: int = 40,
                 num_brands: int = 60, min_len: int = 5, max_len: int = 40, follow: float = 0.85,
                 seed: int = 20261129) -> dict:
    """Writes ``<out_dir>/Builtin.txt.gz`` and ``Builtin_item2attributes_typed.json.gz`` (S3-Rec format)."""
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    category = rng.integers(0, num_categories, num_items)
    brand_categories = [rng.choice(num_categories, 3, replace=False) for _ in range(num_brands)]
    brand = np.array([rng.choice([b for b in range(num_brands) if category[i] in brand_categories[b]] or
                                 [rng.integers(num_brands)]) for i in range(num_items)])
    successors = [rng.choice(num_categories, 3, replace=False) for _ in range(num_categories)]
    by_category = [np.flatnonzero(category == c) for c in range(num_categories)]
    popularity = 1.0 / (1.0 + rng.permutation(num_items)) ** 0.8          # Zipf-like, random order

    def draw(c, fav_brand):
        items = by_category[c]
        if len(items) == 0:
            return int(rng.integers(num_items))
        w = popularity[items] * np.where(brand[items] == fav_brand, 3.0, 1.0)
        return int(rng.choice(items, p=w / w.sum()))

    lines, total = [], 0
    for u in range(num_users):
        length = int(min(max_len, min_len + rng.geometric(0.12)))
        fav_brand = int(rng.integers(num_brands))
        c = int(rng.integers(num_categories))
        seq = []
        for _ in range(length):
            item = draw(c, fav_brand)
            seq.append(item + 1)                                           # ids from 1
            c = int(rng.choice(successors[category[item]])) if rng.random() < follow \
                else int(rng.integers(num_categories))
        total += len(seq)
        lines.append(" ".join(map(str, [u + 1] + seq)))
    with gzip.open(os.path.join(out_dir, f"{BUILTIN_NAME}.txt.gz"), "wt") as f:
        f.write("\n".join(lines) + "\n")
    typed = {"brand": {str(i + 1): int(brand[i]) + 1 for i in range(num_items)},
             "categories": {str(i + 1): [int(category[i]) + 1] for i in range(num_items)}}
    with gzip.open(os.path.join(out_dir, f"{BUILTIN_NAME}_item2attributes_typed.json.gz"), "wt") as f:
        json.dump(typed, f)
    return {"users": num_users, "items": num_items, "interactions": total}


def ensure_builtin_dataset(base_dir: str = "") -> str:
    """Generates and preprocesses the built-in dataset once; returns the preprocessed directory."""
    from asif_tf.data.schema import METADATA_FILE
    base_dir = base_dir or default_builtin_dir()
    processed = os.path.join(base_dir, "processed")
    if os.path.exists(os.path.join(processed, METADATA_FILE)):
        return processed
    raw = os.path.join(base_dir, "raw")
    print(f"Generating the built-in dataset in {base_dir} ...", flush=True)
    generate_raw(raw)
    from beam_pipelines import preprocess
    tmp = processed + ".tmp"
    preprocess.run(["--format", "s3rec", "--input", raw, "--output_dir", tmp, "--attributes", "typed"])
    os.replace(tmp, processed)   # atomic: an interrupted generation is redone, never half-used
    return processed

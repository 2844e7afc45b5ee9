"""Leave-one-out split records and the item table (formats from asif_tf.data.schema)."""
from __future__ import annotations

import collections
from typing import Dict, List, Mapping, Sequence, Tuple

import apache_beam as beam

from asif_tf.data import schema
from beam_pipelines.common import STATS, global_window_value

TRAIN_COUNTS = "train_counts"  # tag of the (item token, occurrences in train) output


def leave_one_out(ids: Sequence[int]) -> List[Tuple[str, List[int], int]]:
    """``(split, history, target)`` records of one user's time-ordered item ids, as the
    schema module defines them: test predicts i_L, valid i_{L-1}, train i_{L-2}, and
    each needs a non-empty history."""
    n = len(ids)
    out = []
    for split, cut in (("test", n - 1), ("valid", n - 2), ("train", n - 3)):
        if cut >= 1:
            out.append((split, list(ids[:cut]), ids[cut]))
    return out


def train_sequence_length(n: int) -> int:
    """Length of ``history + [target]`` of a user's train record (0 without one)."""
    return n - 2 if n >= 4 else 0


class SplitRecords(beam.DoFn):
    """``(user, item tokens in time order)`` -> serialized split records on the outputs
    ``train``/``valid``/``test``; ``(item token, count)`` of the train sequences on
    ``train_counts`` (pre-summed per bundle); counts on ``stats``."""

    def start_bundle(self):
        self._counts = collections.Counter()
        self._stats = collections.Counter()

    def process(self, element, item_vocab: Mapping[str, int]):
        user, items = element
        ids = [item_vocab[i] for i in items]
        n = len(ids)
        self._stats["users"] += 1
        self._stats["interactions"] += n
        records = leave_one_out(ids)
        if not records:
            self._stats["users_without_records"] += 1
        for split, history, target in records:
            self._stats[f"records/{split}"] += 1
            yield beam.pvalue.TaggedOutput(split, schema.encode_split_record(user, history, target))
        self._counts.update(items[:train_sequence_length(n)])

    def finish_bundle(self):
        for item, count in self._counts.items():
            yield beam.pvalue.TaggedOutput(TRAIN_COUNTS, global_window_value((item, count)))
        yield beam.pvalue.TaggedOutput(STATS, global_window_value(dict(self._stats)))


def merge_attribute_records(element) -> Tuple[str, Dict[str, List[str]]]:
    """``(item, [(order_key, {field: values}), ...])`` -> ``(item, {field: values})``;
    several records of one item are concatenated per field in input order."""
    item, records = element
    records = sorted(records, key=lambda r: r[0])
    if len(records) == 1:
        return item, records[0][1]
    merged: Dict[str, List[str]] = {}
    for _, attrs in records:
        for field, values in attrs.items():
            merged.setdefault(field, []).extend(values)
    return item, merged


class KeepItemAttributes(beam.DoFn):
    """Keeps the attribute rows of vocabulary items; also emits, once per bundle, each
    distinct ``(field, value)`` seen, on the ``values`` output."""

    VALUES = "values"

    def start_bundle(self):
        self._values = set()

    def process(self, element, item_vocab: Mapping[str, int]):
        item, attrs = element
        if item in item_vocab:
            for field, values in attrs.items():
                self._values.update((field, v) for v in values)
            yield element

    def finish_bundle(self):
        for pair in self._values:
            yield beam.pvalue.TaggedOutput(self.VALUES, global_window_value(pair))
        self._values = set()


class EncodeItemRows(beam.DoFn):
    """CoGroupByKey rows ``(token, {"id": [id], "count": [n...], "attrs": [{...}]})``
    -> serialized item-table examples; a field without a value gets an empty list."""

    def process(self, element, attr_vocabs: Mapping[str, Mapping[str, int]]):
        _, grouped = element
        ids = list(grouped["id"])
        # Rows without an id would be attributes or counts of an item outside the
        # vocabulary; KeepItemAttributes and the split step never produce them.
        for item_id in ids[:1]:
            count = sum(grouped["count"])
            attrs = list(grouped["attrs"])
            row = attrs[0] if attrs else {}
            encoded = {field: [vocab[v] for v in row.get(field, ())]
                       for field, vocab in attr_vocabs.items()}
            yield schema.encode_item_record(item_id, count, encoded)

"""Per-user sequences and iterative k-core filtering.

A k-core pass counts the interactions of every item, drops the interactions of
items below ``min_item_count`` and then the users left with fewer than
``min_user_count`` interactions. Removing items can push users below the threshold
and vice versa, so passes repeat until one removes nothing. The largest sub-log in
which every user and item has enough interactions is unique, so this fixed point
does not depend on the order of removals (nor on how passes are grouped into
pipelines).

Beam graphs are static: :class:`KCorePasses` unrolls a fixed number of passes and
reports, per pass, how much it removed; the driver (``preprocess.py``) runs another
pipeline over the written result until a pass removed nothing.
"""
from __future__ import annotations

import collections
import json
from typing import List, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_pipelines.common import METRICS_NAMESPACE, STATS, MergeStats, global_window_value


def merge_user_records(element) -> Tuple[str, List[str]]:
    """``(user, [(order_key, [items]), ...])`` -> ``(user, items in time order)``.

    Python's sort is stable and the order key ends with the input position, so equal
    timestamps keep the input order.
    """
    user, records = element
    records = sorted(records, key=lambda r: r[0])
    if len(records) == 1:
        return user, list(records[0][1])
    items: List[str] = []
    for _, chunk in records:
        items.extend(chunk)
    return user, items


class CountItems(beam.DoFn):
    """``(user, items)`` -> ``(item, occurrences)``, pre-summed within a bundle, which
    is far cheaper than one element per interaction."""

    def start_bundle(self):
        self._counts = collections.Counter()

    def process(self, element):
        self._counts.update(element[1])

    def finish_bundle(self):
        for item, count in self._counts.items():
            yield global_window_value((item, count))
        self._counts = collections.Counter()


class KeptItems(MergeStats):
    """``(item, count)`` pairs (one item may come several times) -> frozenset of the
    items whose total count reaches ``min_count``. Accumulates in a Counter like MergeStats."""

    def __init__(self, min_count: int):
        self._min_count = min_count

    def add_input(self, acc, element):
        acc[element[0]] += element[1]
        return acc

    def extract_output(self, acc):
        return frozenset(item for item, n in acc.items() if n >= self._min_count)


class FilterUsers(beam.DoFn):
    """Drops interactions with items not kept, then users below ``min_user_count``.

    Stats (per bundle, keys prefixed by ``prefix``): users/interactions in and kept.
    """

    def __init__(self, min_user_count: int, filter_items: bool, prefix: str):
        self._min_user_count = min_user_count
        self._filter_items = filter_items
        self._prefix = prefix

    def setup(self):
        self._removed_counter = Metrics.counter(METRICS_NAMESPACE, "kcore_removed_interactions")

    def start_bundle(self):
        self._stats = collections.Counter()

    def process(self, element, kept_items=None):
        user, items = element
        n_in = len(items)
        if self._filter_items:
            items = [i for i in items if i in kept_items]
        keep = len(items) >= self._min_user_count and len(items) > 0
        self._stats["users_in"] += 1
        self._stats["interactions_in"] += n_in
        if keep:
            self._stats["users_kept"] += 1
            self._stats["interactions_kept"] += len(items)
            yield user, items
        removed = n_in - (len(items) if keep else 0)
        if removed:
            self._removed_counter.inc(removed)

    def finish_bundle(self):
        stats = {f"{self._prefix}/{k}": v for k, v in self._stats.items()}
        yield beam.pvalue.TaggedOutput(STATS, global_window_value(stats))


class KCorePass(beam.PTransform):
    """One k-core pass over ``(user, items)``; returns ``(kept, stats)``."""

    def __init__(self, min_user_count: int, min_item_count: int, prefix: str):
        super().__init__()
        self._min_user_count = min_user_count
        self._min_item_count = min_item_count
        self._prefix = prefix

    def expand(self, users):
        filter_items = self._min_item_count > 0
        dofn = FilterUsers(self._min_user_count, filter_items, self._prefix)
        if filter_items:
            kept_items = (users
                          | "CountItems" >> beam.ParDo(CountItems())
                          | "KeptItems" >> beam.CombineGlobally(KeptItems(self._min_item_count)))
            out = users | "Filter" >> beam.ParDo(
                dofn, kept_items=beam.pvalue.AsSingleton(kept_items)).with_outputs(
                    STATS, main="kept")
        else:
            out = users | "Filter" >> beam.ParDo(dofn).with_outputs(STATS, main="kept")
        return out.kept, out[STATS]


class KCorePasses(beam.PTransform):
    """``num_passes`` unrolled k-core passes; returns ``(kept, [stats, ...])``.

    The stats of pass ``p`` have keys ``<prefix>/pass_<p>/{users,interactions}_{in,kept}``.
    """

    def __init__(self, min_user_count: int, min_item_count: int, num_passes: int, prefix: str):
        super().__init__()
        self._min_user_count = min_user_count
        self._min_item_count = min_item_count
        self._num_passes = num_passes
        self._prefix = prefix

    def expand(self, users):
        stats = []
        for p in range(self._num_passes):
            name = f"{self._prefix}/pass_{p}"
            users, s = users | f"KCorePass{p}" >> KCorePass(
                self._min_user_count, self._min_item_count, name)
            stats.append(s)
        return users, stats


def encode_user(element) -> str:
    """``(user, items)`` as one JSON line of the intermediate files."""
    return json.dumps(element, ensure_ascii=False, separators=(",", ":"))


def decode_user(line: str):
    user, items = json.loads(line)
    return user, items


def pass_converged(stats: dict, prefix: str, num_passes: int) -> Tuple[bool, int]:
    """(whether some pass of the round removed nothing, interactions removed)."""
    removed_total = 0
    converged = False
    for p in range(num_passes):
        key = f"{prefix}/pass_{p}"
        n_in = stats.get(f"{key}/interactions_in", 0)
        kept = stats.get(f"{key}/interactions_kept", 0)
        removed_total += n_in - kept
        if n_in == kept:
            converged = True
    return converged, removed_total


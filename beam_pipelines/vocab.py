"""Id vocabularies of items and attribute values.

Ids are contiguous from 1 (0 is schema.PADDING_ID). Tokens are sorted numerically
when every token of the vocabulary is an integer, otherwise lexicographically, so a
dataset whose items are already numbered 1..N (S3-Rec) keeps its ids.

A vocabulary is materialized in one place (a CombineGlobally) and broadcast as a side
input: the vocabularies are as large as the catalogue, not as the interaction log.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Sequence

import apache_beam as beam

from asif_tf.data import schema
from beam_pipelines.common import global_window_value, write_text

_INT = re.compile(r"^[+-]?\d+$")


def sorted_tokens(tokens: Iterable[str]) -> List[str]:
    """Tokens in id order: numeric if all are integers, else lexicographic."""
    tokens = list(tokens)
    if tokens and all(_INT.match(t) for t in tokens):
        # The token itself breaks ties between spellings of one number ("7", "07").
        return sorted(tokens, key=lambda t: (int(t), t))
    return sorted(tokens)


def build_vocab(tokens: Iterable[str]) -> Dict[str, int]:
    """{token: id} with ids 1..n in :func:`sorted_tokens` order."""
    return {t: i for i, t in enumerate(sorted_tokens(set(tokens)), start=1)}


def vocab_tsv(vocab: Mapping[str, int]) -> str:
    """The ``id<TAB>token`` lines of a vocabulary, sorted by id."""
    return "".join(f"{i}\t{t}\n" for t, i in sorted(vocab.items(), key=lambda kv: kv[1]))


class DistinctItems(beam.DoFn):
    """``(user, items)`` -> each item once per bundle."""

    def start_bundle(self):
        self._seen = set()

    def process(self, element):
        self._seen.update(element[1])

    def finish_bundle(self):
        for item in self._seen:
            yield global_window_value(item)
        self._seen = set()


class ItemVocab(beam.CombineFn):
    """Item tokens (repeats allowed) -> ``{token: id}``."""

    def create_accumulator(self):
        return set()

    def add_input(self, acc, token):
        acc.add(token)
        return acc

    def merge_accumulators(self, accs):
        out = set()
        for acc in accs:
            out |= acc
        return out

    def extract_output(self, acc):
        return build_vocab(acc)


class AttributeVocabs(beam.CombineFn):
    """``(field, value)`` pairs -> ``{field: {value: id}}``; every field in
    ``fields`` is present, even one without a value."""

    def __init__(self, fields: Sequence[str]):
        self._fields = tuple(fields)

    def create_accumulator(self):
        return {}

    def add_input(self, acc, element):
        field, value = element
        acc.setdefault(field, set()).add(value)
        return acc

    def merge_accumulators(self, accs):
        out: Dict[str, set] = {}
        for acc in accs:
            for field, values in acc.items():
                out.setdefault(field, set()).update(values)
        return out

    def extract_output(self, acc):
        fields = sorted(set(self._fields) | set(acc))
        return {f: build_vocab(acc.get(f, ())) for f in fields}


class WriteItemVocab(beam.DoFn):
    """Writes ``vocab/item.tsv`` from the item vocabulary."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, vocab):
        path = f"{self._output_dir}/{schema.VOCAB_DIR}/{schema.ITEM_VOCAB_FILE}"
        write_text(path, vocab_tsv(vocab))
        yield path


class WriteAttributeVocabs(beam.DoFn):
    """Writes ``vocab/attr_<field>.tsv`` for every attribute field."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, vocabs):
        for field, vocab in vocabs.items():
            path = f"{self._output_dir}/{schema.VOCAB_DIR}/{schema.attr_vocab_file(field)}"
            write_text(path, vocab_tsv(vocab))
            yield path

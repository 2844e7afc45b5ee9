"""Small building blocks shared by the preprocessing transforms.

Counts that end up in metadata.json are carried as data (per-bundle dicts merged by
:class:`MergeStats` and written by :class:`WriteJson`), not read back from Beam
metrics: committed metrics are not supported by every runner, and data is exact on
all of them. The same counts also go to Beam metric counters, for the runner's UI.
"""
from __future__ import annotations

import collections
import gzip
import io
import json
from typing import Iterator, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

METRICS_NAMESPACE = "asif.preprocess"
STATS = "stats"  # tag of the per-bundle statistics output of a DoFn

_GZIP_MAGIC = b"\x1f\x8b"


def global_window_value(value) -> WindowedValue:
    """Wrap a finish_bundle output (the pipeline is batch, in the global window)."""
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


class MergeStats(beam.CombineFn):
    """Sums dicts of counts key by key."""

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, acc, stats):
        acc.update(stats)
        return acc

    def merge_accumulators(self, accs):
        out = collections.Counter()
        for acc in accs:
            out.update(acc)
        return out

    def extract_output(self, acc):
        return dict(sorted(acc.items()))


def write_text(path: str, text: str) -> None:
    """Write a whole (small) text file on any Beam filesystem."""
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


def read_text(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


class WriteJson(beam.DoFn):
    """Writes its (single) input element as a JSON file at ``path``."""

    def __init__(self, path: str):
        self._path = path

    def process(self, element):
        write_text(self._path, json.dumps(element, indent=1, sort_keys=True) + "\n")
        yield self._path


def open_binary(path: str):
    """Open a file on any Beam filesystem; gzip is detected by its magic bytes, not
    by the name, so a gzipped file without '.gz' is read as well."""
    from apache_beam.io.filesystem import CompressionTypes
    raw = io.BufferedReader(FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED),
                            buffer_size=1 << 20)
    if raw.peek(2)[:2] == _GZIP_MAGIC:
        return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=1 << 20)
    return raw


def iter_lines(path: str) -> Iterator[Tuple[int, bytes]]:
    """(1-based line number, raw line without the line break) of a text file."""
    with open_binary(path) as f:
        for line_no, line in enumerate(f, 1):
            yield line_no, line.rstrip(b"\r\n")


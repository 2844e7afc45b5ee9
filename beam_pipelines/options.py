"""Command-line options of the preprocessing pipeline.

The preprocess flags are parsed by :mod:`argparse`; every flag the parser does not
know is handed to Beam's :class:`~apache_beam.options.pipeline_options.PipelineOptions`
(``--runner``, ``--project``, ``--temp_location``, ``--setup_file``, ...). A flag that
neither side knows is an error, so that a typo (``--min_usr_count``) cannot be
silently ignored.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from typing import List, Optional, Sequence, Tuple

from asif_tf.cli import HelpFormatter

FORMATS = ("s3rec", "recbole", "amazon", "csv")
ATTRIBUTE_CHOICES = ("auto", "merged", "typed", "none")

# Field names become feature names (attr/<field>) and file names (attr_<field>.tsv).
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class PreprocessError(ValueError):
    """An error the user can fix: bad flag, missing file, too many bad records."""


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    """Resolved preprocess flags (Beam's own flags are kept apart, in ``beam_args``)."""

    format: str
    input: Tuple[str, ...]
    output_dir: str
    item_attributes_file: Tuple[str, ...] = ()
    attributes: str = "auto"
    attribute_fields: Optional[Tuple[str, ...]] = None
    merged_attribute_field: str = "attributes"
    user_column: str = "user_id"
    item_column: str = "item_id"
    time_column: str = "timestamp"
    delimiter: str = ","
    multi_value_separator: str = "|"
    min_user_count: int = 5
    min_item_count: int = 5
    max_bad_fraction: float = 0.01
    kcore_passes_per_pipeline: int = 2
    num_shards: int = 0
    work_dir: Optional[str] = None
    keep_work_dir: bool = False
    overwrite: bool = False

    def to_json(self) -> dict:
        """JSON-serializable dict of the options (stored in metadata.json)."""
        out = dataclasses.asdict(self)
        out["input"] = list(self.input)
        out["item_attributes_file"] = list(self.item_attributes_file)
        out["attribute_fields"] = (None if self.attribute_fields is None
                                   else list(self.attribute_fields))
        return out


def _csv_list(value: str) -> Tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    for item in items:
        if not _FIELD_NAME.match(item):
            raise argparse.ArgumentTypeError(
                f"attribute field name {item!r} may only contain letters, digits, '_', '.', '-'"
                " (it becomes a feature name and a file name)")
    return items


def _field_name(value: str) -> str:
    if not _FIELD_NAME.match(value):
        raise argparse.ArgumentTypeError(
            f"attribute field name {value!r} may only contain letters, digits, '_', '.', '-'")
    return value


def _non_negative_int(value: str) -> int:
    try:
        parsed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    if parsed < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    return parsed


def _positive_int(value: str) -> int:
    parsed = _non_negative_int(value)
    if parsed == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return parsed


def _fraction(value: str) -> float:
    try:
        parsed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    if not 0.0 <= parsed <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    return parsed


def _delimiter(value: str) -> str:
    value = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(value, value)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(
            f"the delimiter must be one character (or '\\t' / 'tab'), got {value!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors raise PreprocessError instead of exiting,
    so that the Python API (``run(argv)``) reports them as exceptions."""

    def error(self, message):  # noqa: D401 (argparse API)
        raise PreprocessError(f"{self.prog}: {message}")


def build_arg_parser() -> argparse.ArgumentParser:
    """The argparse parser of the preprocess flags (Beam flags are not listed here)."""
    parser = _Parser(
        prog="python -m beam_pipelines.preprocess",
        allow_abbrev=False,  # so that Beam's --runner etc. are never taken as an abbreviation
        formatter_class=HelpFormatter,
        description=(
            "Turn a raw interaction log into the asif TFRecord dataset (see "
            "asif_tf/data/schema.py): parse (bad records go to <output_dir>/dead_letter), "
            "iterative k-core, item and attribute vocabularies, per-user time-ordered "
            "sequences, leave-one-out train/valid/test records, the item table and "
            "metadata.json."),
        epilog=(
            "Every other flag is a Beam pipeline option and is passed to Beam unchanged, e.g. "
            "--runner DataflowRunner --project P --region R --temp_location gs://B/tmp "
            "--setup_file ./setup.py. Without --runner (or with --runner DirectRunner) the "
            "pipeline runs in this process on Beam's FnApiRunner. See beam_pipelines/README.md."))
    parser.add_argument(
        "--format", required=True, choices=FORMATS,
        help="Input format. s3rec: <Name>.txt ('user item item ...' per line, in time order) "
             "+ <Name>_item2attributes[_typed].json; recbole: atomic .inter + .item files; "
             "amazon: Amazon review JSON lines (+ meta_*.json lines, JSON or Python literals); "
             "csv: a delimited file with a header naming user, item and time columns.")
    parser.add_argument(
        "--input", required=True, nargs="+", metavar="PATH",
        help="Interaction input: a directory (files found by the format's naming pattern), "
             "file(s) or glob(s). Local or any Beam filesystem (gs://, s3://, hdfs://). "
             "Gzipped files are read transparently.")
    parser.add_argument("--output_dir", required=True, help="Where the dataset is written.")
    parser.add_argument(
        "--item_attributes_file", nargs="+", default=(), metavar="PATH",
        help="Item attribute file(s). Needed for csv attributes; for the other formats it "
             "overrides the attribute file found next to the interactions (s3rec "
             "item2attributes JSON, recbole .item, amazon meta_*.json).")
    parser.add_argument(
        "--attributes", choices=ATTRIBUTE_CHOICES, default="auto",
        help="s3rec only: which attribute file of the input directory to use. merged: "
             "<Name>_item2attributes.json (one field); typed: "
             "<Name>_item2attributes_typed.json (one field per key); auto: merged if "
             "present, else typed; none: no attributes. With every format, 'none' disables "
             "attributes.")
    parser.add_argument(
        "--attribute_fields", type=_csv_list, default=None, metavar="F1,F2",
        help="Comma-separated attribute fields to keep (typed s3rec keys, recbole .item "
             "columns, amazon 'brand'/'categories', csv attribute columns). Default: all "
             "(recbole: every token/token_seq column; amazon: brand,categories).")
    parser.add_argument(
        "--merged_attribute_field", type=_field_name,
        default="attributes",
        help="Name of the single field of a merged s3rec item2attributes file.")
    parser.add_argument("--user_column", default="user_id",
                        help="recbole/csv: the user column (recbole: name without ':type').")
    parser.add_argument("--item_column", default="item_id",
                        help="recbole/csv: the item column, in the interaction and the "
                             "item attribute file.")
    parser.add_argument(
        "--time_column", default="timestamp",
        help="recbole/csv: the time column (numbers, or ISO-8601 date-times for csv). "
             "Pass '' to use the input order as the time order.")
    parser.add_argument("--delimiter", type=_delimiter, default=",",
                        help="csv: field delimiter ('\\t' or 'tab' for tabs).")
    parser.add_argument("--multi_value_separator", default="|",
                        help="csv: separator of the values of a multi-valued attribute cell.")
    parser.add_argument(
        "--min_user_count", type=_non_negative_int, default=5,
        help="k-core: keep only users with at least this many interactions, iterated with "
             "--min_item_count until nothing changes (0 disables the user condition). "
             "The default 5/5 is the usual 5-core of the sequential recommendation papers.")
    parser.add_argument("--min_item_count", type=_non_negative_int, default=5,
                        help="k-core: keep only items with at least this many interactions "
                             "(0 disables the item condition).")
    parser.add_argument(
        "--max_bad_fraction", type=_fraction, default=0.01,
        help="Fail when more than this fraction of the input records (interaction lines "
             "and attribute records) is malformed. Bad records are always counted and "
             "written to <output_dir>/dead_letter/ with the reason.")
    parser.add_argument(
        "--kcore_passes_per_pipeline", type=_positive_int, default=2,
        help="k-core passes unrolled in one Beam pipeline. The driver runs further "
             "pipelines until a pass removes nothing (a fixed point).")
    parser.add_argument("--num_shards", type=_non_negative_int, default=0,
                        help="Shards per TFRecord output (0: the runner decides).")
    parser.add_argument("--work_dir", default=None,
                        help="Where a run-<time>-<id>/ directory of intermediate files is made (default: "
                             "<output_dir>/_work); it is removed at the end.")
    parser.add_argument("--keep_work_dir", action="store_true",
                        help="Do not delete the intermediate files.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace a dataset already in --output_dir (otherwise that is an error).")
    return parser


def parse_args(argv: Sequence[str]) -> Tuple[PreprocessOptions, List[str]]:
    """Split argv into the preprocess options and the Beam pipeline arguments.

    Raises PreprocessError for a bad value or for a flag that neither the preprocess
    parser nor any Beam PipelineOptions class defines.
    """
    parser = build_arg_parser()
    known, rest = parser.parse_known_args(list(argv))
    _check_beam_args(rest)
    if known.format == "csv" and known.attribute_fields is not None and not known.item_attributes_file:
        raise PreprocessError("--attribute_fields with --format csv needs --item_attributes_file")
    return PreprocessOptions(
        format=known.format,
        input=tuple(known.input),
        output_dir=known.output_dir.rstrip("/") or "/",
        item_attributes_file=tuple(known.item_attributes_file),
        attributes=known.attributes,
        attribute_fields=known.attribute_fields,
        merged_attribute_field=known.merged_attribute_field,
        user_column=known.user_column,
        item_column=known.item_column,
        time_column=known.time_column,
        delimiter=known.delimiter,
        multi_value_separator=known.multi_value_separator,
        min_user_count=known.min_user_count,
        min_item_count=known.min_item_count,
        max_bad_fraction=known.max_bad_fraction,
        kcore_passes_per_pipeline=known.kcore_passes_per_pipeline,
        num_shards=known.num_shards,
        work_dir=known.work_dir.rstrip("/") if known.work_dir else None,
        keep_work_dir=known.keep_work_dir,
        overwrite=known.overwrite,
    ), rest


def _check_beam_args(args: Sequence[str]) -> None:
    """Reject arguments that no Beam PipelineOptions class defines."""
    from apache_beam.options.pipeline_options import PipelineOptions

    positional = [a for a in args if not a.startswith("-")]
    if positional and not any(a.startswith("--") for a in args):
        raise PreprocessError(f"unexpected argument(s) {positional}; every option is a --flag")
    opts = PipelineOptions(list(args))
    known = set(opts.get_all_options(retain_unknown_options=False))
    everything = set(opts.get_all_options(retain_unknown_options=True))
    unknown = sorted(everything - known)
    if unknown:
        flags = ", ".join("--" + u for u in unknown)
        raise PreprocessError(
            f"unknown flag(s) {flags}: neither a preprocess flag (see --help) nor a Beam "
            "pipeline option")

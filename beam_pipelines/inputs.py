"""Finding the input files of each format and choosing their parsers (driver side).

Everything here runs in the launching process before any pipeline is built, so a
missing file, an unknown column or an ambiguous directory is reported at once, with
the path and what was expected, instead of as a worker failure.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import posixpath
from typing import List, Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from beam_pipelines import readers
from beam_pipelines.options import _FIELD_NAME, PreprocessError, PreprocessOptions


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """The files to read and the parsers to read them with."""

    interaction_files: Tuple[str, ...]
    attribute_files: Tuple[str, ...]
    interaction_parser: object
    attribute_parser: Optional[object]
    declared_fields: Tuple[str, ...]  # fields the output must have even if empty


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _is_dir(path: str) -> bool:
    if "://" not in path:
        import os
        return os.path.isdir(path)
    # Object stores have no directories: a trailing '/' or existing children say so.
    if path.endswith("/"):
        return True
    return bool(_match(path.rstrip("/") + "/*"))


def _match(pattern: str) -> List[str]:
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def _list_dir(path: str) -> List[str]:
    files = _match(path.rstrip("/") + "/*")
    return [f for f in files if not posixpath.basename(f).startswith(".") and not _is_dir(f)]


def _expand(paths: Sequence[str], what: str) -> Tuple[List[str], List[str]]:
    """(files named or matched explicitly, files found in the named directories)."""
    explicit, in_dirs = [], []
    for path in paths:
        if _is_glob(path):
            matched = _match(path)
            if not matched:
                raise PreprocessError(f"{what}: no file matches {path!r}")
            explicit.extend(matched)
        elif _is_dir(path):
            in_dirs.extend(_list_dir(path))
        elif FileSystems.exists(path):
            explicit.append(path)
        else:
            raise PreprocessError(f"{what}: {path!r} does not exist (expected a file, a "
                                  "directory or a glob)")
    return explicit, in_dirs


def _name(path: str) -> str:
    """Base name without a trailing .gz."""
    base = posixpath.basename(path)
    return base[:-3] if base.endswith(".gz") else base


def _pick(files: Sequence[str], *patterns: str, exclude: Sequence[str] = ()) -> List[str]:
    return [f for f in files
            if any(fnmatch.fnmatch(_name(f), p) for p in patterns)
            and not any(fnmatch.fnmatch(_name(f), p) for p in exclude)]


def resolve_inputs(opts: PreprocessOptions) -> InputPlan:
    """The files and parsers of ``opts.format``; raises PreprocessError on a problem."""
    resolver = {"s3rec": _s3rec, "recbole": _recbole, "amazon": _amazon, "csv": _csv}.get(opts.format)
    if resolver is None:
        raise PreprocessError(f"unknown --format {opts.format!r}; expected one of "
                              "s3rec, recbole, amazon, csv")
    plan = resolver(opts)
    if not plan.interaction_files:
        raise PreprocessError(f"no {opts.format} interaction file found in --input "
                              f"{list(opts.input)}")
    if opts.attributes == "none":
        plan = dataclasses.replace(plan, attribute_files=(), attribute_parser=None,
                                   declared_fields=())
    for field in plan.declared_fields:
        if not _FIELD_NAME.match(field):
            raise PreprocessError(
                f"attribute column {field!r} of {list(plan.attribute_files)}: a field name may "
                "only contain letters, digits, '_', '.', '-' (it becomes a feature and a file "
                "name); choose the columns with --attribute_fields")
    return plan


def _attribute_override(opts: PreprocessOptions) -> Optional[List[str]]:
    if not opts.item_attributes_file:
        return None
    explicit, in_dirs = _expand(opts.item_attributes_file, "--item_attributes_file")
    files = explicit + in_dirs
    if not files:
        raise PreprocessError(f"--item_attributes_file {list(opts.item_attributes_file)}: "
                              "no file found")
    return files


def _s3rec(opts: PreprocessOptions) -> InputPlan:
    explicit, in_dirs = _expand(opts.input, "--input")
    seq_patterns = ("*.txt",)
    merged_patterns = ("*_item2attributes.json",)
    typed_patterns = ("*_item2attributes_typed.json",)
    sequences = _pick(explicit, "*", exclude=("*.json",)) + _pick(
        in_dirs, *seq_patterns, exclude=("*_sample.txt",))
    stems = sorted({_name(f)[:-len(".txt")] for f in _pick(in_dirs, *seq_patterns,
                                                              exclude=("*_sample.txt",))})
    if len(stems) > 1:
        raise PreprocessError(
            f"--input: found the S3-Rec sequence files of several datasets {stems}; pass "
            "the one to use as a file (e.g. --input DIR/<Name>.txt.gz)")
    if not sequences:
        raise PreprocessError(f"--input {list(opts.input)}: no S3-Rec sequence file "
                              "(expected <Name>.txt or <Name>.txt.gz, one 'user item ...' "
                              "line per user)")
    attr_files = _attribute_override(opts)
    if attr_files is None:
        attr_files = _pick(explicit, "*.json")
        if not attr_files and opts.attributes != "none":
            candidates = list(in_dirs)
            if not in_dirs:
                # An explicit <Name>.txt: its attribute files sit beside it.
                for seq in sequences:
                    stem = _name(seq)[:-len(".txt")] if _name(seq).endswith(".txt") else None
                    if stem:
                        candidates.extend(f for f in _list_dir(posixpath.dirname(seq) or ".")
                                          if _name(f).startswith(stem + "_"))
            merged = _pick(candidates, *merged_patterns)
            typed = _pick(candidates, *typed_patterns)
            if opts.attributes == "merged":
                if not merged:
                    raise PreprocessError(f"--attributes merged: no <Name>_item2attributes.json"
                                          f"[.gz] in --input {list(opts.input)}")
                attr_files = merged
            elif opts.attributes == "typed":
                if not typed:
                    raise PreprocessError(f"--attributes typed: no <Name>_item2attributes_"
                                          f"typed.json[.gz] in --input {list(opts.input)}")
                attr_files = typed
            else:
                attr_files = merged or typed
    parser = readers.S3RecAttributes(merged_field=opts.merged_attribute_field,
                                     fields=opts.attribute_fields)
    # Merged or typed shows only in the file's content, so the fields come from the data.
    return InputPlan(tuple(sequences), tuple(attr_files), readers.S3RecSequences(),
                     parser if attr_files else None, ())


def _check_header(fn) -> None:
    """Run a header check on the driver, reporting its ValueError as a user error."""
    try:
        fn()
    except ValueError as e:
        raise PreprocessError(str(e)) from None


def _recbole(opts: PreprocessOptions) -> InputPlan:
    explicit, in_dirs = _expand(opts.input, "--input")
    inter = _pick(explicit, "*.inter") + _pick(in_dirs, "*.inter")
    if not inter:
        raise PreprocessError(f"--input {list(opts.input)}: no RecBole interaction file "
                              "(expected <name>.inter or <name>.inter.gz)")
    parser = readers.RecBoleInteractions(opts.user_column, opts.item_column, opts.time_column)
    for path in inter:
        def check(path=path):
            names = [c[0] for c in readers.recbole_columns(path)]
            readers._column_index(path, names, opts.user_column, "--user_column")
            readers._column_index(path, names, opts.item_column, "--item_column")
            if opts.time_column:
                readers._column_index(path, names, opts.time_column, "--time_column")
        _check_header(check)
    items = _attribute_override(opts)
    if items is None:
        items = _pick(explicit, "*.item") + _pick(in_dirs, "*.item")
    attr_parser = readers.RecBoleItems(opts.item_column, opts.attribute_fields)
    fields: Tuple[str, ...] = ()
    for path in items:
        def check(path=path):
            cols = attr_parser.attribute_columns(path, readers.recbole_columns(path))
            return tuple(name for _, name, _ in cols)
        try:
            fields = check()
        except ValueError as e:
            raise PreprocessError(str(e)) from None
    return InputPlan(tuple(inter), tuple(items), parser, attr_parser if items else None,
                     fields if items else ())


def _amazon(opts: PreprocessOptions) -> InputPlan:
    explicit, in_dirs = _expand(opts.input, "--input")
    all_files = explicit + in_dirs
    meta = _pick(all_files, "meta_*")
    reviews = [f for f in _pick(explicit, "*") if f not in meta] + _pick(
        in_dirs, "*.json", "*.jsonl", "*.ndjson", exclude=("meta_*",))
    fields = opts.attribute_fields if opts.attribute_fields is not None else readers.AMAZON_FIELDS
    unknown = [f for f in fields if f not in readers.AMAZON_FIELDS]
    if unknown:
        raise PreprocessError(f"--attribute_fields {unknown}: the amazon format has the "
                              f"attribute fields {list(readers.AMAZON_FIELDS)}")
    override = _attribute_override(opts)
    if override is not None:
        meta = override
    if not reviews:
        raise PreprocessError(f"--input {list(opts.input)}: no Amazon review file (expected "
                              "JSON-lines files such as reviews_<Category>_5.json.gz; "
                              "metadata files are named meta_*)")
    return InputPlan(tuple(reviews), tuple(meta), readers.AmazonReviews(),
                     readers.AmazonMetadata(tuple(fields)) if meta else None,
                     tuple(fields) if meta else ())


def _csv(opts: PreprocessOptions) -> InputPlan:
    explicit, in_dirs = _expand(opts.input, "--input")
    files = explicit + in_dirs
    parser = readers.CsvInteractions(opts.user_column, opts.item_column, opts.time_column,
                                      opts.delimiter)
    for path in files:
        def check(path=path):
            names = [c.strip() for c in readers._split_csv_line(readers.read_header_line(path),
                                                                 opts.delimiter)]
            readers._column_index(path, names, opts.user_column, "--user_column")
            readers._column_index(path, names, opts.item_column, "--item_column")
            if opts.time_column:
                readers._column_index(path, names, opts.time_column, "--time_column")
        _check_header(check)
    attr_files = _attribute_override(opts) or []
    attr_parser = readers.CsvAttributes(opts.item_column, opts.attribute_fields, opts.delimiter,
                                        opts.multi_value_separator)
    fields: Tuple[str, ...] = ()
    for path in attr_files:
        def check(path=path):
            names = [c.strip() for c in readers._split_csv_line(readers.read_header_line(path),
                                                                 opts.delimiter)]
            readers._column_index(path, names, opts.item_column, "--item_column")
            if opts.attribute_fields is None:
                return tuple(n for n in names if n != opts.item_column)
            for f in opts.attribute_fields:
                readers._column_index(path, names, f, "--attribute_fields")
            return tuple(opts.attribute_fields)
        try:
            fields = check()
        except ValueError as e:
            raise PreprocessError(str(e)) from None
    return InputPlan(tuple(files), tuple(attr_files), parser,
                     attr_parser if attr_files else None, fields)

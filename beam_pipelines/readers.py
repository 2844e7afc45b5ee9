"""Readers of the four input formats.

Each format has a parser of interaction files and one of item-attribute files. A
parser is a small frozen dataclass (picklable, its options given at construction)
whose ``records(path, file_index)`` yields, for each input record, either a parsed
value or a :class:`BadRecord` saying why the record was rejected. The DoFns
:class:`ReadInteractions` and :class:`ReadAttributes` run a parser over whole files,
send bad records to a dead-letter output and count records per bundle.

Parsed values:

* interactions: ``(user, (order_key, [item, ...]))`` where ``order_key`` is
  ``(time, file_index, line_number)`` and the items of one record are in time order
  (S3-Rec lines hold a whole sequence; the other formats one item per line). Sorting
  a user's records by ``order_key`` orders them by time and, on equal times, by
  input position, so the sort is stable with respect to the input order.
* attributes: ``(item, (order_key, {field: [value, ...]}))``.

A file is read by one worker from start to end (line numbers are part of the order
key and gzip is not splittable); large logs should therefore come as several files,
which are read in parallel.
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import datetime
import json
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_pipelines.common import METRICS_NAMESPACE, STATS, iter_lines, open_binary

BAD = "bad"  # tag of the dead-letter output


class BadRecord(NamedTuple):
    """A malformed input record: where it is, why it was rejected, what it was."""

    file: str
    line: int
    reason: str
    raw: str

    def to_json(self) -> str:
        return json.dumps({"file": self.file, "line": self.line, "reason": self.reason,
                           "raw": self.raw}, ensure_ascii=False)


def _token(value) -> Optional[str]:
    """A raw id as a clean token, or None when it cannot be one (empty, or holding a
    tab / line break that would corrupt the TSV vocabularies)."""
    if value is None or isinstance(value, (dict, list, tuple, bool, float)):
        return None
    token = str(value).strip()
    if not token or "\t" in token or "\n" in token or "\r" in token:
        return None
    return token


def _decode(raw: bytes) -> Tuple[Optional[str], str]:
    """(text, printable text) of a raw line; text is None when it is not UTF-8."""
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, raw.decode("utf-8", "replace")


def _text_lines(path: str, lines=None):
    """(line_no, text, None) for each non-blank line, or (line_no, None, BadRecord) for a line
    that is not UTF-8. ``lines`` continues an ``iter_lines`` iterator (after a header)."""
    for line_no, raw in (iter_lines(path) if lines is None else lines):
        text, shown = _decode(raw)
        if text is None:
            yield line_no, None, _bad_line(path, line_no, "line is not valid UTF-8", shown)
        elif text.strip():
            yield line_no, text, None


def _number(value: str) -> float:
    return float(value)


def _time_value(value: str) -> float:
    """A timestamp as a number: a number as is, an ISO-8601 date-time as seconds since
    the epoch (naive ones are taken as UTC)."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parsed = datetime.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def _bad_line(path: str, line_no: int, reason: str, text: str) -> BadRecord:
    return BadRecord(path, line_no, reason, text)


# --------------------------------------------------------------------------- s3rec


@dataclasses.dataclass(frozen=True)
class S3RecSequences:
    """``<Name>.txt``: ``user item item ...`` per line; the position is the time."""

    def records(self, path: str, file_index: int):
        for line_no, text, bad in _text_lines(path):
            if bad is not None:
                yield bad
                continue
            tokens = text.split()
            if len(tokens) < 2:
                yield _bad_line(path, line_no,
                                "expected '<user> <item> [<item> ...]', found a user with no items",
                                text)
                continue
            # split() never yields empty tokens or tokens with whitespace.
            yield tokens[0], ((0.0, file_index, line_no), tokens[1:])


@dataclasses.dataclass(frozen=True)
class S3RecAttributes:
    """``<Name>_item2attributes.json``: ``{"item": [attr, ...]}`` (one field, named
    ``merged_field``), or the typed variant ``{"field": {"item": attr | [attr, ...]}}``
    (one field per key, restricted to ``fields`` when given). The layout is told apart
    by the content: typed when every top-level value is an object."""

    merged_field: str = "attributes"
    fields: Optional[Tuple[str, ...]] = None

    def records(self, path: str, file_index: int):
        with open_binary(path) as f:
            data = f.read()
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: expected an S3-Rec item2attributes JSON object, "
                             f"but the file is not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a JSON object {{item: [attribute ids]}} or "
                             f"{{field: {{item: attribute ids}}}}, got {type(obj).__name__}")
        typed = bool(obj) and all(isinstance(v, dict) for v in obj.values())
        if typed:
            wanted = self.fields if self.fields is not None else tuple(obj)
            missing = [f for f in wanted if f not in obj]
            if missing:
                raise ValueError(f"{path}: attribute field(s) {missing} not in the typed "
                                 f"attribute file; it has {sorted(obj)}")
            record_no = 0
            for field in wanted:
                for item, values in obj[field].items():
                    record_no += 1
                    yield self._record(path, file_index, record_no, item, field, values,
                                       f"[{field!r}][{item!r}]")
        else:
            for record_no, (item, values) in enumerate(obj.items(), 1):
                yield self._record(path, file_index, record_no, item, self.merged_field,
                                   values, f"[{item!r}]")

    @staticmethod
    def _record(path, file_index, record_no, item, field, values, where):
        raw = json.dumps({str(item): values}, ensure_ascii=False)
        token = _token(item)
        if token is None:
            return BadRecord(path, record_no, f"entry {where}: item id is empty or holds a tab "
                             "or line break", raw)
        if not isinstance(values, list):
            values = [values]
        tokens = [_token(v) for v in values]
        if any(t is None for t in tokens):
            return BadRecord(path, record_no, f"entry {where}: expected attribute ids (numbers "
                             "or strings), found an empty or non-scalar value", raw)
        return token, ((0.0, file_index, record_no), {field: tokens})


# ------------------------------------------------------------------------- recbole


def _recbole_header(path: str, text: str) -> List[Tuple[str, str]]:
    """[(name, type)] of a RecBole atomic-file header 'name:type<TAB>...'."""
    columns = []
    for cell in text.split("\t"):
        name, sep, typ = cell.strip().partition(":")
        if not sep or typ not in ("token", "token_seq", "float", "float_seq"):
            raise ValueError(f"{path}: expected a RecBole header of tab-separated "
                             f"'name:type' cells (type token, token_seq, float or float_seq); "
                             f"got {cell!r}")
        columns.append((name, typ))
    return columns


def read_header_line(path: str) -> str:
    """The first line of a (possibly gzipped) text file; raises on an empty file."""
    for _, raw in iter_lines(path):
        return raw.decode("utf-8", "replace")
    raise ValueError(f"{path}: the file is empty, expected a header line")


def recbole_columns(path: str) -> List[Tuple[str, str]]:
    return _recbole_header(path, read_header_line(path))


def _column_index(path: str, names: Sequence[str], name: str, flag: str) -> int:
    if name not in names:
        raise ValueError(f"{path}: no column {name!r} (set it with {flag}); the header has "
                         f"{list(names)}")
    return names.index(name)


class _HeaderedInteractions:
    """The record loop shared by the header-plus-rows interaction formats (RecBole .inter,
    CSV): subclasses say how to read the header, split a row and parse a time."""

    header_desc = "a header line"
    columns_desc = "columns"
    time_error = "is not a number"

    def header_names(self, path: str, text: str) -> List[str]:
        raise NotImplementedError

    def split(self, text: str) -> List[str]:
        raise NotImplementedError

    def parse_time(self, cell: str) -> float:
        return _number(cell)

    def records(self, path: str, file_index: int):
        lines = iter_lines(path)
        names = None
        for _, raw in lines:
            names = self.header_names(path, raw.decode("utf-8", "replace"))
            break
        if names is None:
            raise ValueError(f"{path}: the file is empty, expected {self.header_desc}")
        u = _column_index(path, names, self.user_column, "--user_column")
        i = _column_index(path, names, self.item_column, "--item_column")
        t = (_column_index(path, names, self.time_column, "--time_column")
             if self.time_column else None)
        n = len(names)
        for line_no, text, bad in _text_lines(path, lines):
            if bad is not None:
                yield bad
                continue
            try:
                cells = self.split(text)
            except csv.Error as e:
                yield _bad_line(path, line_no, f"not a delimited line: {e}", text)
                continue
            if len(cells) != n:
                yield _bad_line(path, line_no, f"expected {n} {self.columns_desc} {names}, "
                                f"got {len(cells)}", text)
                continue
            user, item = _token(cells[u]), _token(cells[i])
            if user is None or item is None:
                yield _bad_line(path, line_no, f"empty {self.user_column!r} or "
                                f"{self.item_column!r}", text)
                continue
            time = 0.0
            if t is not None:
                try:
                    time = self.parse_time(cells[t])
                except ValueError:
                    yield _bad_line(path, line_no, f"{self.time_column!r} {self.time_error}: "
                                    f"{cells[t]!r}", text)
                    continue
            yield user, ((time, file_index, line_no), [item])


@dataclasses.dataclass(frozen=True)
class RecBoleInteractions(_HeaderedInteractions):
    """RecBole ``.inter``: tab-separated with a ``name:type`` header."""

    user_column: str = "user_id"
    item_column: str = "item_id"
    time_column: str = "timestamp"

    header_desc = "a RecBole header line"
    columns_desc = "tab-separated columns"

    def header_names(self, path: str, text: str) -> List[str]:
        return [c[0] for c in _recbole_header(path, text)]

    def split(self, text: str) -> List[str]:
        return text.split("\t")


@dataclasses.dataclass(frozen=True)
class RecBoleItems:
    """RecBole ``.item``: the item column plus attribute columns; a token column gives
    one value, a token_seq column space-separated values (an empty cell: none)."""

    item_column: str = "item_id"
    fields: Optional[Tuple[str, ...]] = None

    def attribute_columns(self, path: str, columns: List[Tuple[str, str]]) -> List[Tuple[int, str, bool]]:
        """[(index, name, is_sequence)] of the attribute columns to read."""
        names = [c[0] for c in columns]
        _column_index(path, names, self.item_column, "--item_column")
        if self.fields is None:
            return [(k, name, typ == "token_seq") for k, (name, typ) in enumerate(columns)
                    if name != self.item_column and typ in ("token", "token_seq")]
        out = []
        for field in self.fields:
            k = _column_index(path, names, field, "--attribute_fields")
            out.append((k, field, columns[k][1] in ("token_seq", "float_seq")))
        return out

    def records(self, path: str, file_index: int):
        lines = iter_lines(path)
        columns = None
        for _, raw in lines:
            columns = _recbole_header(path, raw.decode("utf-8", "replace"))
            break
        if columns is None:
            raise ValueError(f"{path}: the file is empty, expected a RecBole header line")
        names = [c[0] for c in columns]
        i = names.index(self.item_column) if self.item_column in names else None
        wanted = self.attribute_columns(path, columns)
        n = len(names)
        for line_no, text, bad in _text_lines(path, lines):
            if bad is not None:
                yield bad
                continue
            cells = text.split("\t")
            if len(cells) != n:
                yield _bad_line(path, line_no, f"expected {n} tab-separated columns {names}, "
                                f"got {len(cells)}", text)
                continue
            item = _token(cells[i])
            if item is None:
                yield _bad_line(path, line_no, f"empty {self.item_column!r}", text)
                continue
            attrs = {}
            for k, name, is_seq in wanted:
                cell = cells[k].strip()
                values = cell.split() if is_seq else ([cell] if cell else [])
                attrs[name] = values
            yield item, ((0.0, file_index, line_no), attrs)


# -------------------------------------------------------------------------- amazon


def _json_or_literal(text: str):
    """A JSON object, or (old Amazon dumps) a Python dict literal."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


_AMAZON_USER_KEYS = ("reviewerID", "user_id")
_AMAZON_ITEM_KEYS = ("asin", "parent_asin")
_AMAZON_TIME_KEYS = ("unixReviewTime", "timestamp")
AMAZON_FIELDS = ("brand", "categories")


def _object_lines(path: str):
    """(line_no, text, dict, None) for each line holding a JSON object or Python dict
    literal; (line_no, text, None, BadRecord) for any other non-blank line."""
    for line_no, text, bad in _text_lines(path):
        if bad is not None:
            yield line_no, None, None, bad
            continue
        obj = _json_or_literal(text)
        if not isinstance(obj, dict):
            yield line_no, text, None, _bad_line(path, line_no, "not a JSON object (nor a Python dict literal)",
                                                 text)
            continue
        yield line_no, text, obj, None


def _first_key(obj: dict, keys: Sequence[str]):
    for key in keys:
        if key in obj:
            return obj[key]
    return None


@dataclasses.dataclass(frozen=True)
class AmazonReviews:
    """Amazon review dumps, one review per line (2014/2018: reviewerID, asin,
    unixReviewTime; 2023: user_id, asin, timestamp), JSON or Python literals."""

    def records(self, path: str, file_index: int):
        for line_no, text, obj, bad in _object_lines(path):
            if bad is not None:
                yield bad
                continue
            user = _token(_first_key(obj, _AMAZON_USER_KEYS))
            item = _token(_first_key(obj, _AMAZON_ITEM_KEYS))
            time = _first_key(obj, _AMAZON_TIME_KEYS)
            if user is None:
                yield _bad_line(path, line_no, "missing or empty reviewer id "
                                f"(one of {list(_AMAZON_USER_KEYS)})", text)
                continue
            if item is None:
                yield _bad_line(path, line_no, "missing or empty item id "
                                f"(one of {list(_AMAZON_ITEM_KEYS)})", text)
                continue
            try:
                if isinstance(time, bool):
                    raise TypeError
                time = float(time)
            except (TypeError, ValueError):
                yield _bad_line(path, line_no, "missing or non-numeric review time "
                                f"(one of {list(_AMAZON_TIME_KEYS)})", text)
                continue
            yield user, ((time, file_index, line_no), [item])


@dataclasses.dataclass(frozen=True)
class AmazonMetadata:
    """Amazon product metadata lines (JSON or Python literals): ``asin``, ``brand``
    and ``categories`` (a list of category paths, flattened with duplicates removed;
    the 2018/2023 flat ``category``/``categories`` lists are accepted too)."""

    fields: Tuple[str, ...] = AMAZON_FIELDS

    def records(self, path: str, file_index: int):
        for line_no, text, obj, bad in _object_lines(path):
            if bad is not None:
                yield bad
                continue
            item = _token(_first_key(obj, _AMAZON_ITEM_KEYS))
            if item is None:
                yield _bad_line(path, line_no, "missing or empty 'asin'", text)
                continue
            attrs = {}
            error = None
            if "brand" in self.fields:
                brand = obj.get("brand")
                if brand is None or (isinstance(brand, str) and not brand.strip()):
                    attrs["brand"] = []
                else:
                    token = _token(brand)
                    if token is None:
                        error = "'brand' is not a string"
                    attrs["brand"] = [token]
            if "categories" in self.fields:
                cats = obj.get("categories", obj.get("category", []))
                values, ok = _flatten_categories(cats)
                if not ok:
                    error = "'categories' is not a list of category names or of category paths"
                attrs["categories"] = values
            if error:
                yield _bad_line(path, line_no, error, text)
                continue
            yield item, ((0.0, file_index, line_no), attrs)


def _flatten_categories(cats) -> Tuple[List[str], bool]:
    if cats is None:
        return [], True
    if not isinstance(cats, list):
        return [], False
    out: List[str] = []
    seen = set()
    for entry in cats:
        for name in (entry if isinstance(entry, list) else [entry]):
            token = _token(name)
            if token is None:
                return [], False
            if token not in seen:
                seen.add(token)
                out.append(token)
    return out, True


# ----------------------------------------------------------------------------- csv


def _split_csv_line(text: str, delimiter: str) -> List[str]:
    return next(csv.reader([text], delimiter=delimiter))


@dataclasses.dataclass(frozen=True)
class CsvInteractions(_HeaderedInteractions):
    """A delimited file whose header names the user, item and time columns."""

    user_column: str = "user_id"
    item_column: str = "item_id"
    time_column: str = "timestamp"
    delimiter: str = ","

    time_error = "is neither a number nor an ISO-8601 date-time"

    def header_names(self, path: str, text: str) -> List[str]:
        return [c.strip() for c in _split_csv_line(text, self.delimiter)]

    def split(self, text: str) -> List[str]:
        return _split_csv_line(text, self.delimiter)

    def parse_time(self, cell: str) -> float:
        return _time_value(cell)


@dataclasses.dataclass(frozen=True)
class CsvAttributes:
    """A delimited item-attribute file: the item column plus attribute columns (all
    other columns unless ``fields`` is given); multi-valued cells are split on
    ``separator``."""

    item_column: str = "item_id"
    fields: Optional[Tuple[str, ...]] = None
    delimiter: str = ","
    separator: str = "|"

    def records(self, path: str, file_index: int):
        lines = iter_lines(path)
        names = None
        for _, raw in lines:
            names = [c.strip() for c in _split_csv_line(raw.decode("utf-8", "replace"),
                                                         self.delimiter)]
            break
        if names is None:
            raise ValueError(f"{path}: the file is empty, expected a header line")
        i = _column_index(path, names, self.item_column, "--item_column")
        if self.fields is None:
            wanted = [(k, name) for k, name in enumerate(names) if k != i]
        else:
            wanted = [(_column_index(path, names, f, "--attribute_fields"), f)
                      for f in self.fields]
        n = len(names)
        for line_no, text, bad in _text_lines(path, lines):
            if bad is not None:
                yield bad
                continue
            try:
                cells = _split_csv_line(text, self.delimiter)
            except csv.Error as e:
                yield _bad_line(path, line_no, f"not a delimited line: {e}", text)
                continue
            if len(cells) != n:
                yield _bad_line(path, line_no, f"expected {n} columns {names}, got {len(cells)}",
                                text)
                continue
            item = _token(cells[i])
            if item is None:
                yield _bad_line(path, line_no, f"empty {self.item_column!r}", text)
                continue
            attrs = {}
            bad = False
            for k, name in wanted:
                values = [v.strip() for v in cells[k].split(self.separator)]
                values = [v for v in values if v]
                if any(_token(v) is None for v in values):
                    bad = True
                attrs[name] = values
            if bad:
                yield _bad_line(path, line_no, "an attribute value holds a tab or line break",
                                text)
                continue
            yield item, ((0.0, file_index, line_no), attrs)


# ---------------------------------------------------------------------------- DoFns


@beam.typehints.with_output_types(Tuple[str, Any])
class _ReadFiles(beam.DoFn):
    """Runs a parser over ``(file_index, path)`` elements. Good records go to the main
    output, BadRecords to the ``bad`` output (as dead-letter JSON lines), and per-bundle
    counts ``{<kind>_records, <kind>_bad_records, ...}`` to the ``stats`` output."""

    kind = "records"

    def __init__(self, parser):
        self._parser = parser

    def setup(self):
        self._records_counter = Metrics.counter(METRICS_NAMESPACE, f"{self.kind}_records")
        self._bad_counter = Metrics.counter(METRICS_NAMESPACE, f"{self.kind}_bad_records")

    def start_bundle(self):
        self._records = 0
        self._bad = 0
        self._values = 0

    def process(self, element):
        file_index, path = element
        records = bad = values = 0
        for record in self._parser.records(path, file_index):
            records += 1
            if isinstance(record, BadRecord):
                bad += 1
                yield beam.pvalue.TaggedOutput(BAD, record.to_json())
            else:
                values += self._value_count(record[1][1])
                yield record
        self._records += records
        self._bad += bad
        self._values += values
        self._records_counter.inc(records)
        self._bad_counter.inc(bad)

    def finish_bundle(self):
        from beam_pipelines.common import global_window_value
        yield beam.pvalue.TaggedOutput(STATS, global_window_value({
            f"{self.kind}_records": self._records,
            f"{self.kind}_bad_records": self._bad,
            f"{self.kind}_values": self._values,
        }))


    @staticmethod
    def _value_count(payload) -> int:
        return len(payload)


class ReadInteractions(_ReadFiles):
    """Interaction files -> ``(user, (order_key, [items]))``; ``interaction_values``
    in the stats counts the parsed interactions."""

    kind = "interaction"


class ReadAttributes(_ReadFiles):
    """Attribute files -> ``(item, (order_key, {field: [values]}))``;
    ``attribute_values`` in the stats counts the (item, value) pairs."""

    kind = "attribute"

    @staticmethod
    def _value_count(payload) -> int:
        return sum(len(v) for v in payload.values())

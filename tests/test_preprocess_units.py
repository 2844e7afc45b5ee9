"""Unit tests of the preprocessing DoFns and helpers (Beam TestPipeline + assert_that)."""
from __future__ import annotations

import gzip
import json

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from asif_tf.data import schema
from beam_pipelines import kcore, readers, sequences, vocab
from beam_pipelines.common import STATS, MergeStats
from beam_pipelines.options import PreprocessError, parse_args


def pipeline():
    # The DirectRunner would first try to download the Prism runner binary.
    return test_pipeline.TestPipeline(runner=FnApiRunner())


def test_sorted_tokens_numeric_or_lexicographic():
    assert vocab.sorted_tokens(["10", "9", "100", "1"]) == ["1", "9", "10", "100"]
    assert vocab.sorted_tokens(["10", "9", "b", "a"]) == ["10", "9", "a", "b"]
    assert vocab.build_vocab(["3", "1", "2", "3"]) == {"1": 1, "2": 2, "3": 3}
    assert vocab.vocab_tsv({"b": 2, "a": 1}) == "1\ta\n2\tb\n"


def test_leave_one_out_follows_the_schema():
    assert sequences.leave_one_out([5, 6, 7, 8]) == [
        ("test", [5, 6, 7], 8), ("valid", [5, 6], 7), ("train", [5], 6)]
    assert sequences.leave_one_out([5, 6, 7]) == [("test", [5, 6], 7), ("valid", [5], 6)]
    assert sequences.leave_one_out([5, 6]) == [("test", [5], 6)]
    assert sequences.leave_one_out([5]) == []
    assert sequences.train_sequence_length(4) == 2 and sequences.train_sequence_length(3) == 0


def test_merge_user_records_is_stable_on_equal_times():
    element = ("u", [((5.0, 0, 9), ["late"]), ((1.0, 0, 7), ["b"]), ((1.0, 0, 3), ["a"]),
                     ((1.0, 1, 1), ["c"])])
    assert kcore.merge_user_records(element) == ("u", ["a", "b", "c", "late"])


def test_s3rec_reader_dead_letters(tmp_path):
    path = tmp_path / "Toy.txt.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"1 10 11 12\n\n2\n3 12 10\n4 \xff\xfe 1\n")
    with pipeline() as p:
        out = (p | beam.Create([(0, str(path))])
               | beam.ParDo(readers.ReadInteractions(readers.S3RecSequences())).with_outputs(
                   readers.BAD, STATS, main="records"))
        assert_that(out.records, equal_to([("1", ((0.0, 0, 1), ["10", "11", "12"])),
                                           ("3", ((0.0, 0, 4), ["12", "10"]))]),
                    label="records")
        reasons = out[readers.BAD] | beam.Map(lambda r: (json.loads(r)["line"],
                                                        json.loads(r)["reason"]))
        assert_that(reasons, equal_to([
            (3, "expected '<user> <item> [<item> ...]', found a user with no items"),
            (5, "line is not valid UTF-8")]), label="bad")
        stats = out[STATS] | beam.CombineGlobally(MergeStats())
        assert_that(stats, equal_to([{"interaction_records": 4, "interaction_bad_records": 2,
                                      "interaction_values": 5}]), label="stats")


def test_s3rec_attribute_reader_both_layouts(tmp_path):
    merged = tmp_path / "m.json"
    merged.write_text(json.dumps({"1": [3, 4], "2": [], "3": "x", "4": [{"bad": 1}]}))
    records = list(readers.S3RecAttributes(merged_field="tags").records(str(merged), 0))
    assert records[:3] == [("1", ((0.0, 0, 1), {"tags": ["3", "4"]})),
                           ("2", ((0.0, 0, 2), {"tags": []})),
                           ("3", ((0.0, 0, 3), {"tags": ["x"]}))]
    assert isinstance(records[3], readers.BadRecord) and records[3].line == 4
    typed = tmp_path / "t.json"
    typed.write_text(json.dumps({"brand": {"1": 7}, "categories": {"1": [2, 3], "2": [3]}}))
    records = list(readers.S3RecAttributes(fields=("categories",)).records(str(typed), 1))
    assert records == [("1", ((0.0, 1, 1), {"categories": ["2", "3"]})),
                       ("2", ((0.0, 1, 2), {"categories": ["3"]}))]
    with pytest.raises(ValueError, match="not in the typed attribute file"):
        list(readers.S3RecAttributes(fields=("color",)).records(str(typed), 1))


def test_kcore_pass_filters_items_then_users():
    users = [("u1", ["a", "b", "a"]), ("u2", ["a", "c"]), ("u3", ["b", "b", "c", "d"])]
    # Item counts a=3 b=3 c=2 d=1; with k_item=2 d goes, then u2 (a, c) has 2 < 3 items.
    with pipeline() as p:
        kept, stats = (p | beam.Create(users)
                       | kcore.KCorePass(min_user_count=3, min_item_count=2, prefix="t"))
        assert_that(kept, equal_to([("u1", ["a", "b", "a"]), ("u3", ["b", "b", "c"])]),
                    label="kept")
        assert_that(stats | beam.CombineGlobally(MergeStats()), equal_to([{
            "t/users_in": 3, "t/interactions_in": 9, "t/users_kept": 2,
            "t/interactions_kept": 6}]), label="stats")


def test_pass_converged():
    stats = {"r/pass_0/interactions_in": 9, "r/pass_0/interactions_kept": 6,
             "r/pass_1/interactions_in": 6, "r/pass_1/interactions_kept": 6}
    assert kcore.pass_converged(stats, "r", 2) == (True, 3)
    assert kcore.pass_converged(stats, "r", 1) == (False, 3)


def test_split_records_and_train_counts():
    item_vocab = {"x": 1, "y": 2, "z": 3}
    with pipeline() as p:
        vocab_pc = p | "Vocab" >> beam.Create([item_vocab])
        out = (p | "Users" >> beam.Create([("u1", ["x", "y", "z", "x", "y"]), ("u2", ["z"])])
               | beam.ParDo(sequences.SplitRecords(), item_vocab=beam.pvalue.AsSingleton(
                   vocab_pc)).with_outputs(*schema.SPLITS, sequences.TRAIN_COUNTS, STATS))
        for split, expected in (("test", [("u1", [1, 2, 3, 1], 2)]),
                                ("valid", [("u1", [1, 2, 3], 1)]),
                                ("train", [("u1", [1, 2], 3)])):
            assert_that(out[split] | f"Decode{split}" >> beam.Map(schema.decode_split_record),
                        equal_to(expected), label=split)
        assert_that(out[sequences.TRAIN_COUNTS] | beam.CombinePerKey(sum),
                    equal_to([("x", 1), ("y", 1), ("z", 1)]), label="counts")


def test_item_rows_fill_missing_fields_with_empty_lists():
    attr_vocabs = {"genre": {"a": 1, "b": 2}, "year": {"1999": 1}}
    rows = [("x", {"id": [1], "count": [2, 3], "attrs": [{"genre": ["b", "a"]}]}),
            ("y", {"id": [2], "count": [], "attrs": []})]
    with pipeline() as p:
        vocabs = p | "Vocabs" >> beam.Create([attr_vocabs])
        encoded = (p | beam.Create(rows)
                   | beam.ParDo(sequences.EncodeItemRows(),
                                attr_vocabs=beam.pvalue.AsSingleton(vocabs))
                   | beam.Map(schema.decode_item_record))
        assert_that(encoded, equal_to([(1, 5, {"genre": [2, 1], "year": []}),
                                       (2, 0, {"genre": [], "year": []})]))


def test_attribute_vocabs_keep_declared_fields():
    fn = vocab.AttributeVocabs(["genre", "empty"])
    acc = fn.create_accumulator()
    for pair in [("genre", "b"), ("genre", "a"), ("year", "2001"), ("genre", "b")]:
        acc = fn.add_input(acc, pair)
    assert fn.extract_output(fn.merge_accumulators([acc, fn.create_accumulator()])) == {
        "empty": {}, "genre": {"a": 1, "b": 2}, "year": {"2001": 1}}


def test_parse_args_splits_beam_flags():
    opts, beam_args = parse_args(["--format", "csv", "--input", "a.csv", "b.csv",
                                  "--output_dir", "out/", "--runner", "DataflowRunner",
                                  "--project", "p", "--min_item_count", "0"])
    assert opts.input == ("a.csv", "b.csv") and opts.output_dir == "out"
    assert opts.min_item_count == 0 and opts.min_user_count == 5
    assert beam_args == ["--runner", "DataflowRunner", "--project", "p"]
    with pytest.raises(PreprocessError, match="non-negative integer"):
        parse_args(["--format", "csv", "--input", "a", "--output_dir", "o",
                    "--min_user_count", "-1"])
    with pytest.raises(PreprocessError, match="may only contain"):
        parse_args(["--format", "csv", "--input", "a", "--output_dir", "o",
                    "--item_attributes_file", "i", "--attribute_fields", "a b"])


def test_resolve_inputs_finds_files_by_format(shared_data, tmp_path):
    from beam_pipelines.inputs import resolve_inputs

    def plan(*args):
        opts, _ = parse_args(["--output_dir", str(tmp_path / "o"), *args])
        return resolve_inputs(opts)

    beauty = shared_data / "beauty"
    p = plan("--format", "s3rec", "--input", str(beauty))
    assert p.interaction_files == (str(beauty / "Beauty.txt.gz"),)
    assert p.attribute_files == (str(beauty / "Beauty_item2attributes.json.gz"),)
    # An explicit sequence file finds its attribute files beside it.
    p = plan("--format", "s3rec", "--input", str(beauty / "Beauty.txt.gz"), "--attributes", "typed")
    assert p.attribute_files == (str(beauty / "Beauty_item2attributes_typed.json.gz"),)
    assert plan("--format", "s3rec", "--input", str(beauty), "--attributes",
                "none").attribute_parser is None
    p = plan("--format", "recbole", "--input", str(shared_data / "ml-100k"))
    assert p.declared_fields == ("movie_title", "release_year", "class")
    with pytest.raises(PreprocessError, match="no column 'genre'.*--attribute_fields"):
        plan("--format", "recbole", "--input", str(shared_data / "ml-100k"),
             "--attribute_fields", "genre")
    with pytest.raises(PreprocessError, match="no S3-Rec sequence file"):
        plan("--format", "s3rec", "--input", str(shared_data))
    (tmp_path / "Toy.txt").write_text("1 2 3\n")
    with pytest.raises(PreprocessError, match="--attributes merged: no"):
        plan("--format", "s3rec", "--input", str(tmp_path), "--attributes", "merged")

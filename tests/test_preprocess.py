"""End-to-end tests of the preprocessing pipeline (beam_pipelines.preprocess).

Every expected value is computed in the test from the source files with plain
Python, independently of the pipeline code.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import pathlib

import pytest

from asif_tf.data import schema
from beam_pipelines.options import PreprocessError
from beam_pipelines.preprocess import run


# ---------------------------------------------------------------------- helpers


def read_records(path_pattern):
    import tensorflow as tf
    files = sorted(glob.glob(path_pattern))
    assert files, f"no file matches {path_pattern}"
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def read_splits(out):
    return {split: [schema.decode_split_record(r)
                    for r in read_records(schema.split_file_pattern(str(out), split))]
            for split in schema.SPLITS}


def read_items(out):
    return [schema.decode_item_record(r) for r in read_records(schema.items_file_pattern(str(out)))]


def read_vocab(out, name):
    """{id: token} of a vocabulary file, checking the ids are 1..n in file order."""
    lines = (pathlib.Path(out) / schema.VOCAB_DIR / name).read_text(encoding="utf-8").splitlines()
    vocab = {}
    for expected_id, line in enumerate(lines, start=1):
        id_, token = line.split("\t")
        assert int(id_) == expected_id
        vocab[expected_id] = token
    return vocab


def read_dead_letter(out):
    rows = []
    for path in sorted(glob.glob(f"{out}/{schema.DEAD_LETTER_DIR}/part-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def sequences_from_test_split(out):
    """{user: [item tokens]} rebuilt from the test records and vocab/item.tsv."""
    item_vocab = read_vocab(out, schema.ITEM_VOCAB_FILE)
    return {user: [item_vocab[i] for i in history + [target]]
            for user, history, target in read_splits(out)["test"]}


def plain_kcore(seqs, k_user, k_item):
    """Iterative k-core by repeated whole-log scans (reference implementation)."""
    seqs = {u: list(s) for u, s in seqs.items()}
    while True:
        counts = collections.Counter(i for s in seqs.values() for i in s)
        new = {}
        for u, s in seqs.items():
            kept = [i for i in s if counts[i] >= k_item]
            if kept and len(kept) >= k_user:
                new[u] = kept
        if new == seqs:
            return new
        seqs = new


def check_split_consistency(out, seqs):
    """The three splits follow the schema's leave-one-out definition for every user."""
    splits = read_splits(out)
    item_vocab = read_vocab(out, schema.ITEM_VOCAB_FILE)
    by_split = {s: {u: ([item_vocab[i] for i in h], item_vocab[t]) for u, h, t in recs}
                for s, recs in splits.items()}
    for split, back in (("test", 1), ("valid", 2), ("train", 3)):
        expected = {u: (s[:-back], s[-back]) for u, s in seqs.items() if len(s) - back >= 1}
        assert by_split[split] == expected, split
    return splits


# ------------------------------------------------------------------------ Beauty


def load_s3rec(path):
    seqs = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            tokens = line.split()
            if tokens:
                seqs[tokens[0]] = tokens[1:]
    return seqs


@pytest.fixture(scope="module")
def beauty(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("beauty")
    metadata = run(["--format", "s3rec", "--input", str(shared_data / "beauty"),
                    "--output_dir", str(out)])
    return out, metadata


def test_beauty_counts(beauty, shared_data):
    out, metadata = beauty
    seqs = load_s3rec(shared_data / "beauty" / "Beauty.txt.gz")
    with gzip.open(shared_data / "beauty" / "Beauty_item2attributes.json.gz", "rt") as f:
        attrs = json.load(f)
    assert metadata["num_users"] == len(seqs) == 22363
    assert metadata["num_items"] == len({i for s in seqs.values() for i in s}) == 12101
    assert metadata["num_interactions"] == sum(map(len, seqs.values())) == 198502
    assert metadata["attribute_fields"] == {
        "attributes": len({a for v in attrs.values() for a in v})} == {"attributes": 637}
    assert metadata["splits"] == {"train": 22363, "valid": 22363, "test": 22363}
    assert metadata["num_bad_records"] == 0
    assert metadata["num_input_records"] == 22363 + 12101
    assert metadata["schema_version"] == schema.SCHEMA_VERSION
    assert metadata["format"] == "s3rec"
    assert json.loads((out / schema.METADATA_FILE).read_text()) == metadata
    assert read_dead_letter(out) == []


def test_beauty_every_sequence_round_trips(beauty, shared_data):
    out, _ = beauty
    seqs = load_s3rec(shared_data / "beauty" / "Beauty.txt.gz")
    # S3-Rec ids 1..N are kept as the ids.
    assert read_vocab(out, schema.ITEM_VOCAB_FILE) == {i: str(i) for i in range(1, 12102)}
    assert sequences_from_test_split(out) == seqs
    splits = check_split_consistency(out, seqs)
    assert len(splits["test"]) == len({u for u, _, _ in splits["test"]}) == 22363


def test_beauty_item_table(beauty, shared_data):
    out, _ = beauty
    seqs = load_s3rec(shared_data / "beauty" / "Beauty.txt.gz")
    with gzip.open(shared_data / "beauty" / "Beauty_item2attributes.json.gz", "rt") as f:
        attrs = json.load(f)
    train_counts = collections.Counter(i for s in seqs.values() if len(s) >= 4 for i in s[:-2])
    item_vocab = read_vocab(out, schema.ITEM_VOCAB_FILE)
    attr_vocab = read_vocab(out, schema.attr_vocab_file("attributes"))
    rows = read_items(out)
    assert sorted(r[0] for r in rows) == list(range(1, 12102))
    for item_id, count, row_attrs in rows:
        token = item_vocab[item_id]
        assert count == train_counts[token]
        assert [attr_vocab[a] for a in row_attrs["attributes"]] == [str(a) for a in attrs[token]]


def test_beauty_typed_attributes(shared_data, tmp_path):
    with gzip.open(shared_data / "beauty" / "Beauty_item2attributes_typed.json.gz", "rt") as f:
        typed = json.load(f)
    n_brand = len({str(v) for v in typed["brand"].values()})
    n_cat = len({str(a) for v in typed["categories"].values() for a in v})
    assert (n_brand, n_cat) == (435, 202)  # the README's numbers
    metadata = run(["--format", "s3rec", "--input", str(shared_data / "beauty"),
                    "--output_dir", str(tmp_path), "--attributes", "typed",
                    "--kcore_passes_per_pipeline", "1"])
    assert metadata["attribute_fields"] == {"brand": n_brand, "categories": n_cat}
    assert metadata["num_interactions"] == 198502
    brand_vocab = read_vocab(tmp_path, schema.attr_vocab_file("brand"))
    item_vocab = read_vocab(tmp_path, schema.ITEM_VOCAB_FILE)
    rows = read_items(tmp_path)
    with_brand = 0
    for item_id, _, attrs in rows:
        token = item_vocab[item_id]
        expected = [str(typed["brand"][token])] if token in typed["brand"] else []
        assert [brand_vocab[a] for a in attrs["brand"]] == expected
        with_brand += bool(expected)
    assert with_brand == 7492  # "7,492 of 12,101 items have a brand" (beauty/SOURCE.md)


# ----------------------------------------------------------------- MovieLens-100K


def test_movielens_recbole_5core(shared_data, tmp_path):
    with gzip.open(shared_data / "ml-100k" / "ml-100k.inter.gz", "rt") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in f]
    names = [h.split(":")[0] for h in header]
    u, i, t = names.index("user_id"), names.index("item_id"), names.index("timestamp")
    events = collections.defaultdict(list)
    for pos, row in enumerate(rows):
        events[row[u]].append((float(row[t]), pos, row[i]))
    seqs = {user: [item for _, _, item in sorted(ev)] for user, ev in events.items()}
    core = plain_kcore(seqs, 5, 5)

    with gzip.open(shared_data / "ml-100k" / "ml-100k.item.gz", "rt") as f:
        item_header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        item_rows = [line.rstrip("\n").split("\t") for line in f]
    ci, cc = item_header.index("item_id"), item_header.index("class")
    genres = {r[ci]: r[cc].split() for r in item_rows}
    kept_items = {x for s in core.values() for x in s}

    metadata = run(["--format", "recbole", "--input", str(shared_data / "ml-100k"),
                    "--output_dir", str(tmp_path), "--attribute_fields", "class,release_year"])
    assert metadata["num_users"] == len(core) == 943
    assert metadata["num_items"] == len(kept_items) == 1349
    assert metadata["num_interactions"] == sum(map(len, core.values())) == 99287
    assert metadata["attribute_fields"]["class"] == len(
        {g for x in kept_items for g in genres[x]}) == 19
    assert sequences_from_test_split(tmp_path) == core
    check_split_consistency(tmp_path, core)
    class_vocab = read_vocab(tmp_path, schema.attr_vocab_file("class"))
    item_vocab = read_vocab(tmp_path, schema.ITEM_VOCAB_FILE)
    # Raw MovieLens ids are integers, so their vocabulary is in numeric order.
    assert list(item_vocab.values()) == sorted(kept_items, key=int)
    for item_id, _, attrs in read_items(tmp_path):
        assert [class_vocab[a] for a in attrs["class"]] == genres[item_vocab[item_id]]


# ------------------------------------------------------------------------ amazon


def test_amazon_reviews_and_metadata(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = [  # (reviewer, asin, time) in file order; ties at t=100 keep file order
        ("A1", "B0002", 300), ("A1", "B0001", 100), ("A2", "B0001", 100),
        ("A1", "B0003", 100), ("A2", "B0003", 50), ("A2", "B0002", 200),
        ("A3", "B0003", 10), ("A3", "B0001", 20),
    ]
    lines = []
    for k, (user, asin, t) in enumerate(good):
        rec = {"reviewerID": user, "asin": asin, "unixReviewTime": t, "overall": 5.0,
               "reviewText": "nice\ttab"}
        # Old dumps are Python literals, newer ones JSON: mix both.
        lines.append(repr(rec) if k % 2 else json.dumps(rec))
    bad_lines = {
        "{not json at all": "not a JSON object",
        json.dumps({"reviewerID": "A9", "unixReviewTime": 5}): "item id",
        json.dumps({"reviewerID": "A9", "asin": "B0009", "unixReviewTime": "yesterday"}):
            "review time",
        json.dumps({"asin": "B0009", "unixReviewTime": 7}): "reviewer id",
    }
    all_lines = lines[:3] + list(bad_lines)[:2] + lines[3:] + list(bad_lines)[2:]
    with gzip.open(src / "reviews_Toy_5.json.gz", "wt") as f:
        f.write("\n".join(all_lines) + "\n")
    meta = [
        {"asin": "B0001", "brand": "Acme", "categories": [["Toys", "Cars"], ["Toys", "Red"]]},
        {"asin": "B0002", "categories": [["Toys"]]},
        {"asin": "B0003", "brand": "Zeta", "categories": [["Toys", "Cars"]]},
        {"asin": "B0404", "brand": "Gone", "categories": [["Other"]]},  # never reviewed
    ]
    meta_lines = [repr(m) for m in meta] + ["{'asin': 'B0005', 'brand': "]
    (src / "meta_Toy.json").write_text("\n".join(meta_lines) + "\n")

    out = tmp_path / "out"
    metadata = run(["--format", "amazon", "--input", str(src), "--output_dir", str(out),
                    "--min_user_count", "0", "--min_item_count", "0",
                    "--max_bad_fraction", "0.5"])
    expected = collections.defaultdict(list)
    for pos, (user, asin, t) in enumerate(good):
        expected[user].append((t, pos, asin))
    expected = {u: [a for _, _, a in sorted(v)] for u, v in expected.items()}
    assert expected == {"A1": ["B0001", "B0003", "B0002"], "A2": ["B0003", "B0001", "B0002"],
                        "A3": ["B0003", "B0001"]}
    assert sequences_from_test_split(out) == expected
    check_split_consistency(out, expected)
    assert metadata["num_interactions"] == len(good)
    assert metadata["num_bad_records"] == len(bad_lines) + 1
    assert metadata["num_input_records"] == len(good) + len(bad_lines) + len(meta_lines)

    dead = read_dead_letter(out)
    assert len(dead) == len(bad_lines) + 1
    by_raw = {d["raw"]: d for d in dead}
    for raw, reason in bad_lines.items():
        assert reason in by_raw[raw]["reason"], by_raw[raw]
        assert by_raw[raw]["file"].endswith("reviews_Toy_5.json.gz")
        assert by_raw[raw]["line"] == all_lines.index(raw) + 1
    assert by_raw[meta_lines[-1]]["file"].endswith("meta_Toy.json")

    assert metadata["attribute_fields"] == {"brand": 2, "categories": 3}
    brand = read_vocab(out, schema.attr_vocab_file("brand"))
    cats = read_vocab(out, schema.attr_vocab_file("categories"))
    assert list(brand.values()) == ["Acme", "Zeta"]
    assert list(cats.values()) == ["Cars", "Red", "Toys"]
    item_vocab = read_vocab(out, schema.ITEM_VOCAB_FILE)
    got = {item_vocab[i]: ([brand[a] for a in at["brand"]], [cats[a] for a in at["categories"]])
           for i, _, at in read_items(out)}
    assert got == {"B0001": (["Acme"], ["Toys", "Cars", "Red"]),
                   "B0002": ([], ["Toys"]),
                   "B0003": (["Zeta"], ["Toys", "Cars"])}


# --------------------------------------------------------------------------- csv


def test_csv_with_attributes_and_dead_letter(tmp_path):
    log = tmp_path / "log.csv"
    good = [("u1", "x,1", "2020-01-02T00:00:00"), ("u1", "y", "2020-01-01T00:00:00"),
            ("u2", "y", "1577836800"), ("u2", "z", "1577836800"), ("u1", "z", "2020-01-03")]
    bad = {'u3,y': "expected 3 columns", 'u3,y,not-a-date': "neither a number",
           ',y,5': "empty"}
    lines = ["user,item,ts"]
    for k, (u, i, t) in enumerate(good):
        lines.append(f'{u},"{i}",{t}' if "," in i else f"{u},{i},{t}")
        if k == 1:
            lines.extend(bad)
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    metadata = run(["--format", "csv", "--input", str(log), "--output_dir", str(out),
                    "--user_column", "user", "--item_column", "item", "--time_column", "ts",
                    "--min_user_count", "0", "--min_item_count", "0", "--max_bad_fraction", "0.5"])
    # Hand-derived: u1 by date y (01-01), "x,1" (01-02), z (01-03); u2's equal
    # timestamps keep the file order.
    expected = {"u1": ["y", "x,1", "z"], "u2": ["y", "z"]}
    assert sequences_from_test_split(out) == expected
    check_split_consistency(out, expected)
    assert metadata["num_bad_records"] == len(bad)
    assert metadata["num_input_records"] == len(good) + len(bad)
    dead = read_dead_letter(out)
    reasons = {d["raw"]: d["reason"] for d in dead}
    assert set(reasons) == set(bad)
    for raw, reason in bad.items():
        assert reason in reasons[raw]
    assert metadata["attribute_fields"] == {}


def test_csv_attribute_file(tmp_path):
    log = tmp_path / "log.tsv"
    log.write_text("user_id\titem_id\ttimestamp\nu1\tx\t1\nu1\ty\t2\nu2\ty\t1\nu2\tz\t2\n")
    attrs = tmp_path / "items.tsv"
    attrs.write_text("item_id\tgenre\tyear\nx\ta|b\t1999\ny\tb\t\nz\t\t2001\nw\tc\t2002\n"
                     "broken line\n")
    out = tmp_path / "out"
    metadata = run(["--format", "csv", "--input", str(log), "--output_dir", str(out),
                    "--delimiter", "tab", "--item_attributes_file", str(attrs),
                    "--min_user_count", "0", "--min_item_count", "0",
                    "--max_bad_fraction", "0.5"])
    # Item w is not in the log, so its genre c and year 2002 are not in the vocabularies.
    assert metadata["attribute_fields"] == {"genre": 2, "year": 2}
    genre = read_vocab(out, schema.attr_vocab_file("genre"))
    year = read_vocab(out, schema.attr_vocab_file("year"))
    assert list(genre.values()) == ["a", "b"] and list(year.values()) == ["1999", "2001"]
    item_vocab = read_vocab(out, schema.ITEM_VOCAB_FILE)
    rows = {item_vocab[i]: (c, [genre[a] for a in at["genre"]], [year[a] for a in at["year"]])
            for i, c, at in read_items(out)}
    # Train counts: only users with >= 4 items have a train record, so all are 0 here.
    assert rows == {"x": (0, ["a", "b"], ["1999"]), "y": (0, ["b"], []),
                    "z": (0, [], ["2001"])}
    assert [d["raw"] for d in read_dead_letter(out)] == ["broken line"]


def test_too_many_bad_records_fail_with_clear_error(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n" + "u1,a,1\n" * 8 + "u1,b\nu1,c,yesterday\n")
    with pytest.raises(PreprocessError) as info:
        run(["--format", "csv", "--input", str(log), "--output_dir", str(tmp_path / "out"),
             "--min_user_count", "0", "--min_item_count", "0", "--max_bad_fraction", "0.1"])
    message = str(info.value)
    assert "2 of 10 input records" in message and "--max_bad_fraction 0.1" in message
    assert "dead_letter" in message and "expected 3 columns" in message
    assert len(read_dead_letter(tmp_path / "out")) == 2


# ------------------------------------------------------------------------ k-core


def test_kcore_needs_several_pipelines_and_reaches_the_fixed_point(tmp_path):
    # A dense 2-core (u1..u3 x a..c) plus a chain where each removal exposes the next:
    # item f has one user, dropping it leaves u8 with one item, which drops e, ...
    seqs = {"u1": ["a", "b", "c"], "u2": ["b", "c", "a"], "u3": ["c", "a", "b"],
            "u4": ["a", "p"], "u5": ["p", "q"], "u6": ["q", "r"], "u7": ["r", "s"],
            "u8": ["s", "f"], "u9": ["b", "b"]}
    expected = plain_kcore(seqs, 2, 2)
    assert expected == {"u1": ["a", "b", "c"], "u2": ["b", "c", "a"], "u3": ["c", "a", "b"],
                        "u9": ["b", "b"]}
    log = tmp_path / "log.csv"
    rows = ["user_id,item_id,timestamp"]
    for u, items in seqs.items():
        rows.extend(f"{u},{i},{t}" for t, i in enumerate(items))
    log.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    metadata = run(["--format", "csv", "--input", str(log), "--output_dir", str(out),
                    "--min_user_count", "2", "--min_item_count", "2",
                    "--kcore_passes_per_pipeline", "1"])
    got = sequences_from_test_split(out)
    assert got == expected
    counts = collections.Counter(i for s in got.values() for i in s)
    assert min(counts.values()) >= 2 and min(map(len, got.values())) >= 2
    assert metadata["kcore"]["pipelines"] > 2  # several rounds were needed
    assert metadata["kcore"]["removed_interactions"] == (
        sum(map(len, seqs.values())) - sum(map(len, expected.values())))
    assert not os.path.exists(out / "_work")


# ------------------------------------------------------------------------ errors


def test_user_errors_are_clear(tmp_path):
    with pytest.raises(PreprocessError, match="does not exist"):
        run(["--format", "s3rec", "--input", str(tmp_path / "missing.txt"),
             "--output_dir", str(tmp_path / "o")])
    with pytest.raises(PreprocessError, match="invalid choice: 'parquet'"):
        run(["--format", "parquet", "--input", "x", "--output_dir", "y"])
    with pytest.raises(PreprocessError, match="unknown flag.*--min_usr_count"):
        run(["--format", "s3rec", "--input", "x", "--output_dir", "y", "--min_usr_count", "3"])
    log = tmp_path / "log.csv"
    log.write_text("user,item,time\nu,i,1\n")
    with pytest.raises(PreprocessError, match="no column 'user_id'.*--user_column"):
        run(["--format", "csv", "--input", str(log), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(PreprocessError, match="no interaction is left after k-core"):
        run(["--format", "csv", "--input", str(log), "--output_dir", str(tmp_path / "o"),
             "--user_column", "user", "--item_column", "item", "--time_column", "time"])
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / schema.METADATA_FILE).write_text("{}")
    with pytest.raises(PreprocessError, match="already holds a dataset.*--overwrite"):
        run(["--format", "csv", "--input", str(log), "--output_dir", str(tmp_path / "o2"),
             "--user_column", "user", "--item_column", "item", "--time_column", "time"])

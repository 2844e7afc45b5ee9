"""Raw interaction logs -> the asif TFRecord dataset (``python -m beam_pipelines.preprocess``).

The driver runs a short sequence of Beam pipelines, each on the chosen runner:

1. **ingest**: read and parse the interaction and attribute files (malformed records
   go to ``<output_dir>/dead_letter/`` with the reason), group interactions per user
   (a GroupByKey) into time-ordered sequences, run the first k-core passes and write
   the sequences and the merged attribute rows to the work directory.
   The driver then fails if more than ``--max_bad_fraction`` of the records were bad.
2. **k-core rounds**: while no pass of the last round has removed nothing, another
   pipeline reads the sequences, runs more passes and writes them again. A pass that
   removes nothing proves that its input is a fixed point (every user and every item
   has at least the minimum count).
3. **build**: item and attribute vocabularies (side inputs), leave-one-out split
   records, the item table, the vocabulary files. The driver writes metadata.json
   from the counts the pipelines produced as data.

No step gathers the interaction log into one process: only the item and attribute
vocabularies are materialized (as side inputs), and per-user grouping is a
GroupByKey, so the same code runs on Dataflow, Flink or Spark.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import uuid
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from asif_tf.data import schema
from beam_pipelines import kcore, sequences, vocab
from beam_pipelines.common import STATS, MergeStats, WriteJson, iter_lines, read_text
from beam_pipelines.inputs import InputPlan, resolve_inputs
from beam_pipelines.options import PreprocessError, PreprocessOptions, parse_args
from beam_pipelines.readers import BAD, ReadAttributes, ReadInteractions

_LOG = logging.getLogger(__name__)

_DIRECT_RUNNER_NAMES = ("directrunner", "direct", "switchingdirectrunner", "fnapirunner")
_OUTPUT_SUBDIRS = schema.SPLITS + (schema.ITEMS_DIR, schema.VOCAB_DIR, schema.DEAD_LETTER_DIR)


# ----------------------------------------------------------------------- pipelines


def _make_pipeline(beam_args: Sequence[str]) -> beam.Pipeline:
    """A pipeline on the runner named by ``--runner``.

    DirectRunner (the default) is mapped onto Beam's FnApiRunner, which is what the
    DirectRunner runs batch pipelines on, except that Beam >= 2.6x first tries the Prism
    runner, a binary it downloads at run time; that fails without network access.
    """
    options = PipelineOptions(list(beam_args))
    runner_name = options.view_as(StandardOptions).runner
    if options.view_as(DirectOptions).direct_running_mode == "multi_threading":
        raise PreprocessError("--direct_running_mode multi_threading is not supported (it can "
                              "lose records on this Beam version); use in_memory (the "
                              "default) or multi_processing")
    if runner_name is None or runner_name.lower() in _DIRECT_RUNNER_NAMES:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def _run(pipeline: beam.Pipeline, name: str) -> None:
    started = time.time()
    result = pipeline.run()
    state = result.wait_until_finish()
    if state not in (None, "DONE", beam.runners.runner.PipelineState.DONE):
        raise RuntimeError(f"the {name} pipeline ended in state {state}")
    _LOG.info("%s pipeline done in %.1f s", name, time.time() - started)


def _read_files(p, label: str, files: Sequence[str], dofn):
    """Parse ``files`` with ``dofn``; one element per file, spread over workers."""
    return (p
            | f"{label}Files" >> beam.Create(list(enumerate(files)))
            | f"{label}Spread" >> beam.Reshuffle()
            | f"{label}Parse" >> beam.ParDo(dofn).with_outputs(BAD, STATS, main="records"))


def _write_jsonl(pcoll, label: str, prefix: str, num_shards: int = 0):
    return pcoll | label >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl",
                                                num_shards=num_shards)


def _write_stats(p, label: str, stats: List, path: str):
    return (stats | f"{label}Flatten" >> beam.Flatten(pipeline=p)
            | f"{label}Merge" >> beam.CombineGlobally(MergeStats())
            | f"{label}Write" >> beam.ParDo(WriteJson(path)))


def _encode_attribute_row(element) -> str:
    return json.dumps(element, ensure_ascii=False, separators=(",", ":"))


def _decode_attribute_row(line: str):
    item, attrs = json.loads(line)
    return item, attrs


def build_ingest_pipeline(p: beam.Pipeline, opts: PreprocessOptions, plan: InputPlan,
                          work_dir: str) -> None:
    """Parse, dead-letter, per-user sequences, the first k-core passes."""
    parsed = _read_files(p, "Interactions", plan.interaction_files,
                         ReadInteractions(plan.interaction_parser))
    stats = [parsed[STATS]]
    bad = [parsed[BAD]]
    users = (parsed.records
             | "GroupByUser" >> beam.GroupByKey()
             | "TimeOrder" >> beam.Map(kcore.merge_user_records))
    if plan.attribute_parser is not None and plan.attribute_files:
        attrs = _read_files(p, "Attributes", plan.attribute_files,
                            ReadAttributes(plan.attribute_parser))
        stats.append(attrs[STATS])
        bad.append(attrs[BAD])
        _write_jsonl(attrs.records
                     | "GroupByItem" >> beam.GroupByKey()
                     | "MergeAttributes" >> beam.Map(sequences.merge_attribute_records)
                     | "EncodeAttributes" >> beam.Map(_encode_attribute_row),
                     "WriteAttributes", f"{work_dir}/attributes/part")
    _write_jsonl(bad | "FlattenBad" >> beam.Flatten(pipeline=p), "WriteDeadLetter",
                 f"{opts.output_dir}/{schema.DEAD_LETTER_DIR}/part", opts.num_shards)
    if _kcore_enabled(opts):
        users, kstats = users | "KCore" >> kcore.KCorePasses(
            opts.min_user_count, opts.min_item_count, opts.kcore_passes_per_pipeline, "round_0")
        stats.extend(kstats)
    _write_jsonl(users | "EncodeUsers" >> beam.Map(kcore.encode_user), "WriteUsers",
                 f"{work_dir}/round_0/part")
    _write_stats(p, "Stats", stats, f"{work_dir}/stats/ingest.json")


def build_kcore_pipeline(p: beam.Pipeline, opts: PreprocessOptions, work_dir: str,
                         round_no: int) -> None:
    """More k-core passes over the sequences of the previous round."""
    users = (p
             | "ReadUsers" >> beam.io.ReadFromText(f"{work_dir}/round_{round_no - 1}/part-*")
             | "DecodeUsers" >> beam.Map(kcore.decode_user))
    users, kstats = users | "KCore" >> kcore.KCorePasses(
        opts.min_user_count, opts.min_item_count, opts.kcore_passes_per_pipeline,
        f"round_{round_no}")
    _write_jsonl(users | "EncodeUsers" >> beam.Map(kcore.encode_user), "WriteUsers",
                 f"{work_dir}/round_{round_no}/part")
    _write_stats(p, "Stats", kstats, f"{work_dir}/stats/round_{round_no}.json")


def _vocab_items(item_vocab):
    return list(item_vocab.items())


def _vocab_size_stats(item_vocab) -> Dict[str, int]:
    return {"num_items": len(item_vocab)}


def _attr_size_stats(attr_vocabs) -> Dict[str, int]:
    return {f"attr_vocab/{field}": len(v) for field, v in attr_vocabs.items()}


def build_output_pipeline(p: beam.Pipeline, opts: PreprocessOptions, plan: InputPlan,
                          work_dir: str, round_no: int) -> None:
    """Vocabularies, split records, item table, vocabulary files."""
    out = opts.output_dir
    users = (p
             | "ReadUsers" >> beam.io.ReadFromText(f"{work_dir}/round_{round_no}/part-*")
             | "DecodeUsers" >> beam.Map(kcore.decode_user))
    item_vocab = (users
                  | "DistinctItems" >> beam.ParDo(vocab.DistinctItems())
                  | "ItemVocab" >> beam.CombineGlobally(vocab.ItemVocab()))
    item_vocab_si = beam.pvalue.AsSingleton(item_vocab)
    _ = item_vocab | "WriteItemVocab" >> beam.ParDo(vocab.WriteItemVocab(out))

    split = users | "Split" >> beam.ParDo(sequences.SplitRecords(), item_vocab=item_vocab_si
                                          ).with_outputs(*schema.SPLITS,
                                                         sequences.TRAIN_COUNTS, STATS)
    for name in schema.SPLITS:
        _ = split[name] | f"Write_{name}" >> beam.io.WriteToTFRecord(
            f"{out}/{name}/part", file_name_suffix=schema.RECORD_SUFFIX,
            compression_type=CompressionTypes.GZIP, num_shards=opts.num_shards)
    train_counts = split[sequences.TRAIN_COUNTS] | "SumTrainCounts" >> beam.CombinePerKey(sum)

    if plan.attribute_parser is not None and plan.attribute_files:
        kept = (p
                | "ReadAttributes" >> beam.io.ReadFromText(f"{work_dir}/attributes/part-*")
                | "DecodeAttributes" >> beam.Map(_decode_attribute_row)
                | "KeepItemAttributes" >> beam.ParDo(
                    sequences.KeepItemAttributes(), item_vocab=item_vocab_si).with_outputs(
                        sequences.KeepItemAttributes.VALUES, main="rows"))
        rows = kept.rows
        attr_vocabs = (kept[sequences.KeepItemAttributes.VALUES]
                       | "AttributeVocabs" >> beam.CombineGlobally(
                           vocab.AttributeVocabs(plan.declared_fields)))
    else:
        rows = p | "NoAttributeRows" >> beam.Create([])
        attr_vocabs = p | "NoAttributeVocabs" >> beam.Create([{}])
    _ = attr_vocabs | "WriteAttributeVocabs" >> beam.ParDo(vocab.WriteAttributeVocabs(out))

    item_ids = item_vocab | "ItemIds" >> beam.FlatMap(_vocab_items)
    _ = ({"id": item_ids, "count": train_counts, "attrs": rows}
         | "JoinItems" >> beam.CoGroupByKey()
         | "EncodeItems" >> beam.ParDo(sequences.EncodeItemRows(),
                                       attr_vocabs=beam.pvalue.AsSingleton(attr_vocabs))
         | "WriteItems" >> beam.io.WriteToTFRecord(
             f"{out}/{schema.ITEMS_DIR}/part", file_name_suffix=schema.RECORD_SUFFIX,
             compression_type=CompressionTypes.GZIP, num_shards=opts.num_shards))
    stats = [split[STATS],
             item_vocab | "ItemVocabSize" >> beam.Map(_vocab_size_stats),
             attr_vocabs | "AttributeVocabSizes" >> beam.Map(_attr_size_stats)]
    _write_stats(p, "Stats", stats, f"{work_dir}/stats/build.json")


# -------------------------------------------------------------------------- driver


def _kcore_enabled(opts: PreprocessOptions) -> bool:
    return opts.min_user_count > 0 or opts.min_item_count > 0


def _is_local(path: str) -> bool:
    return "://" not in path


def _delete_tree(path: str) -> None:
    """Delete a directory tree of our own making on any filesystem."""
    if _is_local(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    for pattern in (f"{path}/*/*", f"{path}/*"):
        matched = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        if matched:
            FileSystems.delete(matched)


def _prepare_output_dir(opts: PreprocessOptions) -> None:
    """Refuse to mix with an existing dataset unless --overwrite; a dead_letter/ left
    alone by a failed run (too many bad records) is simply replaced."""
    existing = []
    if FileSystems.exists(f"{opts.output_dir}/{schema.METADATA_FILE}"):
        existing.append(schema.METADATA_FILE)
    for sub in _OUTPUT_SUBDIRS:
        if sub != schema.DEAD_LETTER_DIR and FileSystems.match(
                [f"{opts.output_dir}/{sub}/*"])[0].metadata_list:
            existing.append(sub + "/")
    if existing and not opts.overwrite:
        raise PreprocessError(
            f"--output_dir {opts.output_dir} already holds a dataset ({', '.join(existing)}); "
            "pass --overwrite to replace it or choose another directory")
    for sub in _OUTPUT_SUBDIRS:
        _delete_tree(f"{opts.output_dir}/{sub}")
    if FileSystems.exists(f"{opts.output_dir}/{schema.METADATA_FILE}"):
        FileSystems.delete([f"{opts.output_dir}/{schema.METADATA_FILE}"])


def _read_json(path: str) -> dict:
    return json.loads(read_text(path))


def _dead_letter_examples(output_dir: str, limit: int = 3) -> List[str]:
    pattern = f"{output_dir}/{schema.DEAD_LETTER_DIR}/part-*.jsonl"
    examples: List[str] = []
    for m in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        for _, raw in iter_lines(m.path):
            examples.append(raw.decode("utf-8", "replace")[:300])
            if len(examples) >= limit:
                return examples
    return examples


def _check_bad_fraction(opts: PreprocessOptions, stats: dict) -> None:
    total = stats.get("interaction_records", 0) + stats.get("attribute_records", 0)
    bad = stats.get("interaction_bad_records", 0) + stats.get("attribute_bad_records", 0)
    if total and bad / total > opts.max_bad_fraction:
        examples = "\n  ".join(_dead_letter_examples(opts.output_dir))
        raise PreprocessError(
            f"{bad} of {total} input records ({bad / total:.2%}) are malformed, more than "
            f"--max_bad_fraction {opts.max_bad_fraction:g} allows (input: {list(opts.input)}, "
            f"format {opts.format}). Every bad record and its reason is in "
            f"{opts.output_dir}/{schema.DEAD_LETTER_DIR}/; the first ones:\n  {examples}")


def run(argv: Sequence[str]) -> dict:
    """Run the preprocessing with command-line style ``argv``; returns the metadata
    dict written to ``<output_dir>/metadata.json``.

    Raises PreprocessError for problems the user can fix (bad flag, missing input,
    too many malformed records, nothing left after k-core).
    """
    opts, beam_args = parse_args(argv)
    plan = resolve_inputs(opts)
    _prepare_output_dir(opts)
    # A fresh sub-directory per run: only what this run wrote is ever deleted.
    work_base = opts.work_dir or f"{opts.output_dir}/_work"
    work_dir = f"{work_base}/run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    started = time.time()
    _LOG.info("preprocess %s: %d interaction file(s), %d attribute file(s)", opts.format,
              len(plan.interaction_files), len(plan.attribute_files))
    try:
        metadata = _run_pipelines(opts, plan, beam_args, work_dir)
    finally:
        if not opts.keep_work_dir:
            _delete_tree(work_dir)
            if _is_local(work_base):
                try:
                    os.rmdir(work_base)  # only if no other run uses it
                except OSError:
                    pass
    _LOG.info("preprocess done in %.1f s: %d users, %d items, %d interactions",
              time.time() - started, metadata["num_users"], metadata["num_items"],
              metadata["num_interactions"])
    return metadata


def _run_pipelines(opts: PreprocessOptions, plan: InputPlan, beam_args: Sequence[str],
                   work_dir: str) -> dict:
    p = _make_pipeline(beam_args)
    build_ingest_pipeline(p, opts, plan, work_dir)
    _run(p, "ingest")
    ingest = _read_json(f"{work_dir}/stats/ingest.json")
    _check_bad_fraction(opts, ingest)
    if not ingest.get("interaction_values", 0):
        raise PreprocessError(f"no interaction could be parsed from {list(plan.interaction_files)}")

    round_no, passes, removed = 0, 0, 0
    if _kcore_enabled(opts):
        stats = ingest
        while True:
            converged, round_removed = kcore.pass_converged(
                stats, f"round_{round_no}", opts.kcore_passes_per_pipeline)
            passes += opts.kcore_passes_per_pipeline
            removed += round_removed
            if converged:
                break
            round_no += 1
            p = _make_pipeline(beam_args)
            build_kcore_pipeline(p, opts, work_dir, round_no)
            _run(p, f"k-core round {round_no}")
            stats = _read_json(f"{work_dir}/stats/round_{round_no}.json")
        last = f"round_{round_no}/pass_{opts.kcore_passes_per_pipeline - 1}"
        if not stats.get(f"{last}/interactions_kept", 0):
            raise PreprocessError(
                f"no interaction is left after k-core filtering with --min_user_count "
                f"{opts.min_user_count} and --min_item_count {opts.min_item_count} "
                f"({ingest.get('interaction_values', 0)} parsed interactions); lower them")

    p = _make_pipeline(beam_args)
    build_output_pipeline(p, opts, plan, work_dir, round_no)
    _run(p, "build")
    build = _read_json(f"{work_dir}/stats/build.json")

    attribute_fields = {k[len("attr_vocab/"):]: v for k, v in build.items()
                        if k.startswith("attr_vocab/")}
    metadata = {
        "schema_version": schema.SCHEMA_VERSION,
        "format": opts.format,
        "num_users": build.get("users", 0),
        "num_items": build.get("num_items", 0),
        "num_interactions": build.get("interactions", 0),
        "attribute_fields": dict(sorted(attribute_fields.items())),
        "splits": {s: build.get(f"records/{s}", 0) for s in schema.SPLITS},
        "num_users_without_records": build.get("users_without_records", 0),
        "num_input_records": ingest.get("interaction_records", 0)
                             + ingest.get("attribute_records", 0),
        "num_bad_records": ingest.get("interaction_bad_records", 0)
                           + ingest.get("attribute_bad_records", 0),
        "num_input_interaction_records": ingest.get("interaction_records", 0),
        "num_bad_interaction_records": ingest.get("interaction_bad_records", 0),
        "num_input_attribute_records": ingest.get("attribute_records", 0),
        "num_bad_attribute_records": ingest.get("attribute_bad_records", 0),
        "num_parsed_interactions": ingest.get("interaction_values", 0),
        "kcore": {"min_user_count": opts.min_user_count,
                  "min_item_count": opts.min_item_count,
                  "passes": passes, "pipelines": round_no + 1 if _kcore_enabled(opts) else 0,
                  "removed_interactions": removed},
        "input_files": {"interactions": list(plan.interaction_files),
                        "attributes": list(plan.attribute_files)},
        "options": opts.to_json(),
        "beam_args": list(beam_args),
    }
    with FileSystems.create(f"{opts.output_dir}/{schema.METADATA_FILE}") as f:
        f.write((json.dumps(metadata, indent=2) + "\n").encode("utf-8"))
    return metadata


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``python -m beam_pipelines.preprocess`` / ``asif-preprocess``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        metadata = run(sys.argv[1:] if argv is None else argv)
    except PreprocessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: metadata[k] for k in ("num_users", "num_items", "num_interactions",
                                                "attribute_fields", "splits",
                                                "num_bad_records")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

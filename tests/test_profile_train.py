"""bench/profile_train.py: op names to model parts, the sums over a trace, and one real traced run."""
import json

import pytest

from tests.test_reproduce import REPO, load_module, write_s3rec


def load_profile():
    return load_module("profile_train", REPO / "bench" / "profile_train.py")


def test_op_names_map_to_model_parts():
    prof = load_profile()
    cases = {
        "encoder/asif_layer_0/hie/MatMul_5:BatchMatMulV2": "asif_layer_0/hie",
        "gradient_tape/encoder/asif_layer_0/hie/Cholesky/MatrixTriangularSolve:MatrixTriangularSolve":
            "asif_layer_0/hie",                                       # backward counted with its forward part
        "encoder/block_1/attention/softmax/Softmax:Softmax": "block_1/attention",
        "encoder/attribute_embedding/embed/embedding_lookup:ResourceGather": "attribute_embedding",
        "encoder/MatMul:MatMul": "encoder (other ops)",
        "Adam/mul_3:Mul": "Adam",
        "AddN_51/inputs_1:UnsortedSegmentSum": "AddN",
        "MatMul:MatMul": "MatMul",
        "SparseSoftmaxCrossEntropyWithLogits/SparseSoftmaxCrossEntropyWithLogits:SparseSoftmaxCrossEntropyWithLogits":
            "SparseSoftmaxCrossEntropyWithLogits",
    }
    for name, part in cases.items():
        assert prof.part_of(name) == part, name
    for not_an_op in ("ExecutorState::Process", "train_function", "EagerLocalExecute: __inference_train_function_1"):
        assert prof.part_of(not_an_op) is None, not_an_op


def test_aggregate_sums_compute_threads_only():
    """A synthetic trace: op events on two compute threads are summed by part; the python thread's
    events and non-op events are not counted."""
    prof = load_profile()
    space = prof.xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    names = {1: "encoder/asif_layer_0/hie/Cholesky:Cholesky",
             2: "gradient_tape/encoder/asif_layer_0/hie/MatMul:BatchMatMulV2",
             3: "MatMul:MatMul", 4: "ExecutorState::Process"}
    for key, name in names.items():
        plane.event_metadata[key].id = key
        plane.event_metadata[key].name = name
    for thread, events in (("tf_Compute/1", [(1, 2.0), (2, 0.5), (3, 1.0), (4, 9.0)]),
                           ("tf_Compute/2", [(2, 0.25), (3, 3.0)]),
                           ("python", [(1, 100.0), (3, 100.0)])):
        line = plane.lines.add(name=thread)
        for key, seconds in events:
            line.events.add(metadata_id=key, duration_ps=int(seconds * 1e12))
    got = prof.aggregate(space)
    assert got == pytest.approx({"asif_layer_0/hie": 2.0 + 0.5 + 0.25, "MatMul": 1.0 + 3.0})


def test_profiles_a_real_training_run(tmp_path, capsys):
    """Three traced ASIF steps on a tiny dataset: HIE, the layers and the optimiser show up, and the
    shares add up to one."""
    prof = load_profile()
    data = tmp_path / "mini"
    write_s3rec(data, users=40)
    out = tmp_path / "profile.json"
    argv = ["--dataset", f"mini={data}", "--model", "asif", "--setting", "cpu", "--steps", "3",
            "--variant", "hidden_size=16;num_heads=1;inner_size=16", "--results_dir", str(tmp_path / "res"),
            "--json", str(out)]
    assert prof.main(argv) == 0
    result = json.loads(out.read_text())
    parts = {row["part"]: row for row in result["parts"]}
    assert {"asif_layer_0/hie", "asif_layer_1/hie", "Adam"} <= set(parts)
    assert sum(row["share"] for row in result["parts"]) == pytest.approx(1.0, abs=1e-3)
    assert result["op_seconds"] == pytest.approx(sum(row["seconds"] for row in result["parts"]), abs=0.05)
    assert result["steps"] == 3 and result["wall_seconds"] > 0
    assert "| asif_layer_0/hie |" in capsys.readouterr().out


def test_usage_errors(tmp_path, capsys):
    prof = load_profile()
    for argv, message in ((["--steps", "0"], "--steps must be >= 1"),
                          (["--variant", "bogus_field=1"], "unknown model config field"),
                          (["--variant", "lambda_fa"], "expected name=value")):
        with pytest.raises(SystemExit) as err:
            prof.main(argv + ["--results_dir", str(tmp_path)])
        assert err.value.code == 2
        assert message in capsys.readouterr().err

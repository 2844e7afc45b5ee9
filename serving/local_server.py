"""A local stand-in for TensorFlow Serving: the same gRPC API over the same export directory.

``python -m serving.local_server --export_dir BASE/asif --port 8500``

The real ``tensorflow_model_server`` binary is not installable everywhere (no registry
ships it, Docker may be unavailable), yet development and tests need a server that
speaks its API. This one implements, from ``tensorflow_serving.apis``:

* ``PredictionService.Predict`` and ``PredictionService.GetModelMetadata``
* ``ModelService.GetModelStatus``

(Classify, Regress, MultiInference and HandleReloadConfigRequest answer UNIMPLEMENTED.)
It loads the newest integer version under ``--export_dir``, replays the version's
``assets.extra/tf_serving_warmup_requests`` before it starts answering, and validates
every request before running the model, answering as the real server does:

====================================================  ==================
request                                               status
====================================================  ==================
model name other than the served one                  NOT_FOUND
version (or version label) not loaded                 NOT_FOUND
signature name not in the SavedModel                  NOT_FOUND
missing or extra input, unknown output_filter name    INVALID_ARGUMENT
wrong dtype, wrong rank, malformed TensorProto        INVALID_ARGUMENT
batch of 0 rows                                       INVALID_ARGUMENT
string that is not UTF-8                              INVALID_ARGUMENT
message over --max_message_mb                         RESOURCE_EXHAUSTED
====================================================  ==================

Every message names the input and what was expected. Histories of any length are
accepted: the model keeps the most recent ``max_seq_len`` known items (and still
excludes every item of the history from the results), exactly as under the real
server, so a 10,000-item history is answered, not refused; the message size limit is
the bound. An error while running the model is returned as the TensorFlow error's
status code; nothing a client sends stops the server.

With ``--enable_batching [--batching_parameters_file F]`` concurrent Predict calls of equal
input shape are merged into one graph run, as the real server's batching does
(``serving.batching``; a full batch queue answers UNAVAILABLE).

Not implemented (the real server has them): several models, version policies other
than "latest", polling for new versions (restart to pick one up), the REST API.
"""
from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import time
from concurrent import futures
from typing import Optional, Sequence, Tuple

from asif_tf import _env  # noqa: F401
from asif_tf.cli import HelpFormatter
import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc)

from serving.batching import BatchingOptions, QueueFullError, RequestBatcher

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


class RequestError(Exception):
    """A request the server refuses: a gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def find_versions(model_base: str) -> Sequence[int]:
    if not os.path.isdir(model_base):
        raise FileNotFoundError(f"--export_dir {model_base} is not a directory (expected BASE/<model_name>)")
    return sorted(int(n) for n in os.listdir(model_base)
                  if n.isdigit() and os.path.exists(os.path.join(model_base, n, "saved_model.pb")))


class ServedModel:
    """One loaded version: its callable signatures and their SignatureDefs."""

    def __init__(self, model_base: str, name: Optional[str] = None, version: Optional[int] = None):
        versions = find_versions(model_base)
        if not versions:
            raise FileNotFoundError(f"no version directory (an integer name with a saved_model.pb) under "
                                    f"{model_base}; export one with `python -m asif_tf.export`")
        self.version = int(version) if version is not None else versions[-1]
        if self.version not in versions:
            raise FileNotFoundError(f"version {self.version} not under {model_base} (have {list(versions)})")
        self.name = name or os.path.basename(os.path.normpath(model_base))
        self.path = os.path.join(model_base, str(self.version))
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(self.path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        self.signature_defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items()
                               if not k.startswith("__")}
        self._loaded = tf.saved_model.load(self.path)
        self.functions = {k: self._loaded.signatures[k] for k in self.signature_defs}
        self.batcher: Optional[RequestBatcher] = None
        self.load_time = time.time()

    def warm_up(self) -> int:
        """Replays the warm-up records (as the real server does before AVAILABLE); returns their count."""
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        n = 0
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.HasField("predict_log"):
                request = log.predict_log.request
                request.model_spec.name = self.name
                self.predict(request)
                n += 1
        return n

    # Validation ---------------------------------------------------------------------------
    def check_spec(self, spec) -> None:
        if spec.name != self.name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: model {spec.name!r} (this server serves "
                               f"{self.name!r})")
        if spec.HasField("version") and spec.version.value != self.version:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: model {spec.name!r} version {spec.version.value} "
                               f"(loaded version: {self.version})")
        if spec.version_label:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"version label {spec.version_label!r} of model {spec.name!r} is not assigned")

    def signature(self, name: str):
        name = name or DEFAULT_SIGNATURE
        if name not in self.signature_defs:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Serving signature key {name!r} not found; model {self.name!r} has "
                               f"{sorted(self.signature_defs)}")
        return name, self.signature_defs[name]

    @staticmethod
    def _to_numpy(name: str, proto, info) -> np.ndarray:
        if proto.dtype != info.dtype:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r}: expects dtype {types_pb2.DataType.Name(info.dtype)}, got "
                               f"{types_pb2.DataType.Name(proto.dtype)}")
        if proto.tensor_shape.unknown_rank:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: the tensor shape is missing")
        shape = [d.size for d in proto.tensor_shape.dim]
        want = [d.size for d in info.tensor_shape.dim]
        if not info.tensor_shape.unknown_rank:
            if len(shape) != len(want) or any(w >= 0 and s != w for s, w in zip(shape, want)):
                pretty = "[" + ", ".join("?" if w < 0 else str(w) for w in want) + "]"
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {name!r}: expects shape {pretty} (batch first), got {shape}")
        if any(s < 0 for s in shape):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: negative dimension in {shape}")
        if shape and shape[0] == 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r}: the batch is empty (shape {shape}); send at least one row")
        try:
            if proto.dtype == types_pb2.DT_STRING and not proto.tensor_content:
                count = int(np.prod(shape)) if shape else 1
                if len(proto.string_val) != count:
                    raise ValueError(f"{len(proto.string_val)} strings for shape {shape} ({count} elements)")
                array = np.array(list(proto.string_val), dtype=object).reshape(shape)
            else:
                array = tf.make_ndarray(proto)
        except (ValueError, TypeError) as e:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: malformed TensorProto: {e}")
        if proto.dtype == types_pb2.DT_STRING:
            for index, value in np.ndenumerate(array):
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"input {name!r}: element {list(index)} is not UTF-8 ({e.reason} at byte "
                                       f"{e.start} of {value[:32]!r})")
        return array

    # Calls ---------------------------------------------------------------------------------
    def predict(self, request) -> predict_pb2.PredictResponse:
        self.check_spec(request.model_spec)
        sig_name, sig = self.signature(request.model_spec.signature_name)
        missing = sorted(set(sig.inputs) - set(request.inputs))
        extra = sorted(set(request.inputs) - set(sig.inputs))
        if missing or extra:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"signature {sig_name!r} takes inputs {sorted(sig.inputs)}; "
                               + (f"missing {missing}" if missing else "") + ("; " if missing and extra else "")
                               + (f"unknown {extra}" if extra else ""))
        unknown_outputs = sorted(set(request.output_filter) - set(sig.outputs))
        if unknown_outputs:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output_filter names {unknown_outputs}, not outputs of signature {sig_name!r} "
                               f"({sorted(sig.outputs)})")
        arrays = {name: self._to_numpy(name, request.inputs[name], sig.inputs[name]) for name in sig.inputs}
        batches = {a.shape[0] for a in arrays.values() if a.ndim}
        if len(batches) > 1:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"inputs disagree on the batch size: {sorted(batches)}")
        try:
            if self.batcher is not None:
                outputs = self.batcher.submit(sig_name, arrays)
            else:
                outputs = self.run_signature(sig_name, arrays)
        except QueueFullError as e:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, str(e))
        except tf.errors.OpError as e:
            # TensorFlow's error codes are gRPC's status codes.
            raise RequestError(_grpc_code(e.error_code), f"signature {sig_name!r}: {e.message}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name, response.model_spec.signature_name = self.name, sig_name
        response.model_spec.version.value = self.version
        for name in request.output_filter or outputs:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    def run_signature(self, sig_name: str, arrays) -> dict:
        """One graph run of a signature: numpy inputs (validated) -> numpy outputs."""
        sig = self.signature_defs[sig_name]
        outputs = self.functions[sig_name](**{k: tf.constant(v, dtype=tf.as_dtype(sig.inputs[k].dtype))
                                              for k, v in arrays.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    def enable_batching(self, options: BatchingOptions) -> None:
        """From now on, concurrent Predict calls are merged into batches (``serving.batching``)."""
        self.batcher = RequestBatcher(self.run_signature, options)

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        self.check_spec(request.model_spec)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"metadata_field must be ['signature_def'] (the only metadata served), got {fields}")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = self.version
        sigs = get_model_metadata_pb2.SignatureDefMap()
        for k, v in self.signature_defs.items():
            sigs.signature_def[k].CopyFrom(v)
        response.metadata["signature_def"].Pack(sigs)
        return response

    def status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        if spec.name != self.name:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name!r}")
        if spec.HasField("version") and spec.version.value != self.version:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find version {spec.version.value} of model {spec.name!r}")
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = self.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


def _grpc_code(tf_code: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code
    return grpc.StatusCode.INTERNAL


def _guarded(fn):
    """Turns refusals into their status and anything unexpected into INTERNAL, never a crash."""
    def handler(self, request, context):
        try:
            return fn(self, request, context)
        except RequestError as e:
            context.abort(e.code, e.message)
        except Exception as e:  # noqa: BLE001 - the server must outlive any request
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
    handler.__name__, handler.__doc__ = fn.__name__, fn.__doc__
    return handler


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model: ServedModel):
        self.model = model

    @_guarded
    def Predict(self, request, context):
        return self.model.predict(request)

    @_guarded
    def GetModelMetadata(self, request, context):
        return self.model.metadata(request)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, model: ServedModel):
        self.model = model

    @_guarded
    def GetModelStatus(self, request, context):
        return self.model.status(request)


def start_server(model_base: str, port: int = 0, host: str = "127.0.0.1", model_name: Optional[str] = None,
                 workers: int = 8, max_message_mb: int = 64,
                 batching: Optional[BatchingOptions] = None) -> Tuple[grpc.Server, int, ServedModel]:
    """Loads and warms the newest version under ``model_base`` and starts serving it.

    ``batching``: merge concurrent Predict calls with these settings (None: every call runs alone).
    Returns (server, bound port, model); ``port=0`` picks a free port. Call ``server.stop(grace)``.
    """
    model = ServedModel(model_base, model_name)
    model.warm_up()
    # Everything loaded so far (TensorFlow's and the model's Python objects, hundreds of
    # thousands) lives as long as the server: keep it out of the garbage collector's full
    # passes, which otherwise stall a request for tens of milliseconds now and then.
    gc.collect()
    gc.freeze()
    if batching is not None:
        model.enable_batching(batching)
    limit = max_message_mb * 1024 * 1024
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(model), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(model), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    server.start()
    return server, bound, model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.local_server",
        description="Serve the newest version of an exported model over TF Serving's gRPC API "
                    "(PredictionService, ModelService) for local development and tests.",
        formatter_class=HelpFormatter)
    parser.add_argument("--export_dir", required=True, help="Model base directory: BASE/<model_name>.")
    parser.add_argument("--model_name", default=None, help="Name clients use (default: the directory's name).")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port, printed).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (127.0.0.1: this machine only).")
    parser.add_argument("--workers", type=int, default=8, help="Request handler threads.")
    parser.add_argument("--max_message_mb", type=int, default=64, help="Largest request or response, in MiB.")
    parser.add_argument("--enable_batching", action="store_true",
                        help="Merge concurrent Predict calls of equal input shape into one graph run, like TF "
                             "Serving's --enable_batching (clients must send one fixed history width).")
    parser.add_argument("--batching_parameters_file", default=None,
                        help="BatchingParameters text proto, the file TF Serving takes (e.g. "
                             "serving/batching_parameters.txt); implies --enable_batching. Without it: "
                             "TF Serving's defaults.")
    parser.add_argument("--intra_op_threads", type=int, default=0,
                        help="Threads one op may use (0: TensorFlow's choice); like TF Serving's "
                             "--tensorflow_intra_op_parallelism.")
    parser.add_argument("--inter_op_threads", type=int, default=0,
                        help="Ops run concurrently (0: TensorFlow's choice); like TF Serving's "
                             "--tensorflow_inter_op_parallelism.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # Must precede the first TensorFlow op of the process (the model load).
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    try:
        batching = None
        if args.batching_parameters_file:
            batching = BatchingOptions.from_file(args.batching_parameters_file)
        elif args.enable_batching:
            batching = BatchingOptions()
        server, port, model = start_server(args.export_dir, args.port, args.host, args.model_name, args.workers,
                                           args.max_message_mb, batching)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Serving model {model.name!r} version {model.version} ({model.path}) on {args.host}:{port}", flush=True)
    if batching is not None:
        print(f"Batching: {batching}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(grace=2).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

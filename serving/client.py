"""gRPC client of an ASIF model served by TensorFlow Serving (or ``serving.local_server``).

Library::

    from serving.client import RecommenderClient
    with RecommenderClient("localhost:8500", model="asif") as client:
        for recs in client.recommend([["B0001", "B0042"], []], k=10):
            print(recs)            # [(item_id, score), ...], best first

CLI::

    python -m serving.client --server localhost:8500 --model asif --history B0001 B0042 --k 10

Every call has a deadline (``timeout_s``); calls that fail with UNAVAILABLE (server
starting, restarting, connection dropped) are retried with exponential backoff, since a
Predict has no side effects. Other errors (INVALID_ARGUMENT, NOT_FOUND, ...) are raised
at once as ``grpc.RpcError``. ``tls=True`` uses a TLS channel (system roots, or
``root_certificates``).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

from asif_tf import _env  # noqa: F401
from asif_tf.cli import HelpFormatter
import grpc
import numpy as np

SERVING_SIGNATURE = "serving_default"
EMBEDDING_SIGNATURE = "user_embedding"
INPUT_NAME = "history"
DEFAULT_WIDTH = 50
# Matches the server side's default receive limit headroom; histories are small, but a batch
# of long ones is not.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

Token = Union[str, bytes]


def _tensor_pb2():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    return tensor_pb2, tensor_shape_pb2, types_pb2


def histories_to_tensor_proto(histories: Sequence[Sequence[Token]], width: Optional[int] = DEFAULT_WIDTH):
    """A tf.string TensorProto [batch, w] of right-padded histories.

    ``width``: every row is padded to exactly this many items (TF Serving's batcher only merges
    requests of equal shape), keeping the most recent ``width`` items of longer histories;
    ``None`` sends every item, padded to the longest row.
    """
    tensor_pb2, tensor_shape_pb2, types_pb2 = _tensor_pb2()
    rows = [[t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in h] for h in histories]
    if width is not None:
        if width < 1:
            raise ValueError(f"width must be >= 1 or None, got {width}")
        rows = [r[-width:] for r in rows]
        w = width
    else:
        w = max([len(r) for r in rows] + [1])
    flat = [t for r in rows for t in r + [b""] * (w - len(r))]
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(rows)),
                                                   tensor_shape_pb2.TensorShapeProto.Dim(size=w)])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=flat)


def tensor_proto_to_numpy(proto) -> np.ndarray:
    """numpy array of a TensorProto (strings as bytes objects)."""
    import tensorflow as tf
    return tf.make_ndarray(proto)


class RecommenderClient:
    """PredictionService client with deadlines and retries on UNAVAILABLE.

    Args:
      server: "host:port" of the gRPC endpoint (TF Serving's --port, 8500 by default).
      model: model name in the server's models.config.
      timeout_s: deadline of each attempt.
      retries: attempts after the first one, on UNAVAILABLE only.
      backoff_s: first retry delay; doubles each retry (capped at 2 s).
      tls: use a TLS channel; ``root_certificates`` (PEM bytes) overrides the system roots.
      width: history width sent (see ``histories_to_tensor_proto``); None = the whole history.
    """

    def __init__(self, server: str, model: str = "asif", timeout_s: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.05, tls: bool = False, root_certificates: Optional[bytes] = None,
                 width: Optional[int] = DEFAULT_WIDTH, version: Optional[int] = None):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
        if ":" not in server:
            raise ValueError(f"server must be HOST:PORT, got {server!r}")
        self.server, self.model, self.timeout_s, self.retries = server, model, float(timeout_s), int(retries)
        self.backoff_s, self.width, self.version = float(backoff_s), width, version
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        if tls:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(server, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(server, options=options)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_service = model_service_pb2_grpc.ModelServiceStub(self.channel)

    # Context manager ------------------------------------------------------------------------
    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Transport ------------------------------------------------------------------------------
    def _call(self, method, request):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _model_spec(self, spec, signature: Optional[str] = None) -> None:
        spec.name = self.model
        if signature:
            spec.signature_name = signature
        if self.version is not None:
            spec.version.value = int(self.version)

    # Calls ----------------------------------------------------------------------------------
    def predict(self, inputs: Dict[str, object], signature: str = SERVING_SIGNATURE,
                output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        """Raw Predict: ``inputs`` maps names to TensorProtos or numpy arrays; returns numpy outputs."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature)
        for name, value in inputs.items():
            proto = value if hasattr(value, "SerializeToString") else tf.make_tensor_proto(value)
            request.inputs[name].CopyFrom(proto)
        request.output_filter.extend(output_filter)
        response = self._call(self.prediction.Predict, request)
        return {name: tensor_proto_to_numpy(t) for name, t in response.outputs.items()}

    def recommend(self, histories: Sequence[Sequence[Token]], k: Optional[int] = None) -> List[List[Tuple[str, float]]]:
        """Top items of each history (one batch call): lists of (item_id, score), best first.

        ``k`` cuts the export's k down (a model returns as many items as it was exported with);
        empty slots (fewer candidates than k) are left out.
        """
        if not histories:
            raise ValueError("histories is empty: send at least one history (it may be [])")
        out = self.predict({INPUT_NAME: histories_to_tensor_proto(histories, self.width)})
        ids, scores = out["item_ids"], out["scores"]
        results = []
        for row_ids, row_scores in zip(ids, scores):
            row = [(i.decode("utf-8"), float(s)) for i, s in zip(row_ids, row_scores) if i]
            results.append(row[:k] if k else row)
        return results

    def user_embeddings(self, histories: Sequence[Sequence[Token]]) -> np.ndarray:
        """float [batch, d] user vectors (the ``user_embedding`` signature)."""
        out = self.predict({INPUT_NAME: histories_to_tensor_proto(histories, self.width)},
                           signature=EMBEDDING_SIGNATURE)
        return out["user_embedding"]

    def metadata(self):
        """GetModelMetadata: the SignatureDefMap of the served version."""
        from tensorflow_serving.apis import get_model_metadata_pb2
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        response = self._call(self.prediction.GetModelMetadata, request)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigs)
        return response.model_spec, sigs

    def status(self):
        """GetModelStatus: the served versions and their states."""
        from tensorflow_serving.apis import get_model_status_pb2
        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        return self._call(self.model_service.GetModelStatus, request)

    def wait_until_available(self, timeout_s: float = 60.0) -> None:
        """Polls GetModelStatus until a version is AVAILABLE (e.g. right after starting a server)."""
        from tensorflow_serving.apis import get_model_status_pb2
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                status = self.status()
                if any(v.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
                       for v in status.model_version_status):
                    return
            except grpc.RpcError as e:
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"model {self.model!r} not available at {self.server} after {timeout_s} s"
                           + (f" (last error: {last.code().name}: {last.details()})" if last else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.client",
        description="Ask a TensorFlow Serving ASIF model for the top items after a history of raw item ids.",
        formatter_class=HelpFormatter)
    parser.add_argument("--server", default="localhost:8500", help="gRPC endpoint HOST:PORT.")
    parser.add_argument("--model", default="asif", help="Model name on the server.")
    parser.add_argument("--history", nargs="*", action="append", default=None, metavar="ID",
                        help="Raw item ids, oldest first; repeat the flag for a batch of users; "
                             "no ids = an empty history (most popular items).")
    parser.add_argument("--k", type=int, default=None, help="Items to print per user (at most the export's k).")
    parser.add_argument("--timeout", type=float, default=5.0, help="Deadline of each attempt in seconds.")
    parser.add_argument("--retries", type=int, default=3, help="Retries on UNAVAILABLE.")
    parser.add_argument("--tls", action="store_true", help="Use TLS.")
    parser.add_argument("--root_certs", default=None, help="PEM file of root certificates for --tls.")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH,
                        help="Pad/truncate histories to this many most recent items; 0 sends them whole.")
    parser.add_argument("--version", type=int, default=None, help="Ask for this model version (default: latest).")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k is not None and args.k < 1:
        parser.error(f"--k must be >= 1, got {args.k}")
    histories = args.history if args.history is not None else [[]]
    roots = None
    if args.root_certs:
        with open(args.root_certs, "rb") as f:
            roots = f.read()
    try:
        with RecommenderClient(args.server, args.model, timeout_s=args.timeout, retries=args.retries, tls=args.tls,
                               root_certificates=roots, width=args.width or None, version=args.version) as client:
            results = client.recommend(histories, k=args.k)
    except grpc.RpcError as e:
        print(f"error: {args.server} model {args.model!r}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for user, (history, recs) in enumerate(zip(histories, results)):
        print(f"# user {user}: history {' '.join(history) or '(empty)'}")
        print(f"{'rank':>4}  {'item_id':<24} {'score':>10}")
        for rank, (item, score) in enumerate(recs, 1):
            print(f"{rank:>4}  {item:<24} {score:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

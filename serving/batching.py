"""Server-side request batching for ``serving.local_server``, as TF Serving's ``--enable_batching``.

Concurrent Predict calls of the same signature whose inputs have the same shape past the
batch dimension are merged into one run of the graph (for this model: one encoder call and
one matmul against the item table for up to ``max_batch_size`` users), then the outputs are
split back by rows. The settings are read from the same ``batching_parameters.txt`` the
official server takes (``--batching_parameters_file``), in protobuf text format:

=========================  ===================================================================
field                      meaning here (as in TF Serving)
=========================  ===================================================================
max_batch_size             most rows in one run; a single request with more rows runs alone
batch_timeout_micros       longest time the oldest queued request waits for the batch to fill
num_batch_threads          batches that run at once
max_enqueued_batches       queue bound (x max_batch_size rows); beyond it UNAVAILABLE
pad_variable_length_inputs only ``false``: requests of different widths are never merged
=========================  ===================================================================

Other fields of TF Serving's ``BatchingParameters`` (``allowed_batch_sizes``,
``thread_pool_name``, ...) are refused with an error naming the field, not ignored.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Callable, Deque, Dict, Hashable, List, Optional, Tuple

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, text_format, wrappers_pb2
from google.protobuf import message_factory

Arrays = Dict[str, np.ndarray]


class QueueFullError(Exception):
    """The batch queue holds ``max_enqueued_batches * max_batch_size`` rows already (UNAVAILABLE)."""


def _batching_parameters_class():
    """The subset of TF Serving's ``BatchingParameters`` message (session_bundle_config.proto)
    this server honours, built at run time: the tensorflow-serving-api wheel does not ship it.
    Parsing with protobuf's own text_format keeps the file syntax exactly the server's."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="asif_local_server_batching.proto", package="asif.local_server", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    message = file_proto.message_type.add(name="BatchingParameters")
    int64_value = ".google.protobuf.Int64Value"
    for number, name in enumerate(("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                                   "max_enqueued_batches"), 1):
        message.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                          type_name=int64_value, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    message.field.add(name="pad_variable_length_inputs", number=7, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
    pool.AddSerializedFile(file_proto.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("asif.local_server.BatchingParameters"))


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Batching settings; the defaults are TF Serving's own defaults."""
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = 4
    max_enqueued_batches: int = 100

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            low = 0 if field.name == "batch_timeout_micros" else 1
            if value < low:
                raise ValueError(f"batching parameter {field.name} must be >= {low}, got {value}")

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> "BatchingOptions":
        proto = _batching_parameters_class()()
        try:
            text_format.Parse(text, proto)
        except text_format.ParseError as e:
            raise ValueError(f"{source}: not a BatchingParameters text proto this server supports: {e}") from None
        if proto.pad_variable_length_inputs:
            raise ValueError(f"{source}: pad_variable_length_inputs: true is not supported (TF Serving pads with a "
                             "tensor's first element, which this model reads as history); send one fixed width")
        values = {f.name: getattr(proto, f.name).value for f in dataclasses.fields(cls) if proto.HasField(f.name)}
        return cls(**values)

    @classmethod
    def from_file(cls, path: str) -> "BatchingOptions":
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ValueError(f"--batching_parameters_file {path}: {e.strerror}") from None
        return cls.from_text(text, path)


class _Task:
    __slots__ = ("arrays", "rows", "arrived", "done", "outputs", "error")

    def __init__(self, arrays: Arrays, rows: int):
        self.arrays, self.rows, self.arrived = arrays, rows, time.monotonic()
        self.done = threading.Event()
        self.outputs: Optional[Arrays] = None
        self.error: Optional[BaseException] = None


class RequestBatcher:
    """Merges concurrent calls of ``run(signature, arrays) -> outputs`` (numpy in, numpy out,
    every array batch-major) that share a signature and the per-row shapes of their inputs."""

    def __init__(self, run: Callable[[str, Arrays], Arrays], options: BatchingOptions):
        self._run, self.options = run, options
        self._cond = threading.Condition()
        self._queues: Dict[Hashable, Deque[_Task]] = collections.OrderedDict()
        self._queued_rows: Dict[Hashable, int] = collections.defaultdict(int)
        self._total_rows, self._closed = 0, False
        self.batches_run = 0        # how many graph runs served how many requests: for tests and stats
        self.requests_run = 0
        self._threads = [threading.Thread(target=self._worker, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _key(signature: str, arrays: Arrays) -> Hashable:
        return (signature,) + tuple((name, arrays[name].shape[1:], arrays[name].dtype.str) for name in sorted(arrays))

    def submit(self, signature: str, arrays: Arrays) -> Arrays:
        """Runs ``arrays`` (every one [rows, ...]) in some batch; blocks until its outputs are ready."""
        rows = int(next(iter(arrays.values())).shape[0])
        task, key = _Task(arrays, rows), self._key(signature, arrays)
        limit = self.options.max_enqueued_batches * self.options.max_batch_size
        with self._cond:
            if self._closed:
                raise QueueFullError("the server is shutting down")
            if self._total_rows + rows > limit and self._total_rows > 0:
                raise QueueFullError(f"the batch queue is full ({self._total_rows} rows waiting; "
                                     f"max_enqueued_batches x max_batch_size = {limit})")
            self._queues.setdefault(key, collections.deque()).append(task)
            self._queued_rows[key] += rows
            self._total_rows += rows
            self._cond.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs  # type: ignore[return-value]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)

    # Workers -------------------------------------------------------------------------------
    def _next_batch(self) -> Optional[Tuple[str, List[_Task]]]:
        """Under the lock: waits for a batch that is full or whose oldest request timed out."""
        timeout = self.options.batch_timeout_micros / 1e6
        while not self._closed:
            if not self._queues:
                self._cond.wait()
                continue
            # The queue whose oldest request has waited longest goes first.
            key = min(self._queues, key=lambda k: self._queues[k][0].arrived)
            queue = self._queues[key]
            wait = queue[0].arrived + timeout - time.monotonic()
            if self._queued_rows[key] < self.options.max_batch_size and wait > 0:
                self._cond.wait(wait)
                continue
            tasks = [queue.popleft()]
            rows = tasks[0].rows
            while queue and rows + queue[0].rows <= self.options.max_batch_size:
                rows += queue[0].rows
                tasks.append(queue.popleft())
            self._queued_rows[key] -= rows
            self._total_rows -= rows
            if not queue:
                del self._queues[key], self._queued_rows[key]
            return key[0], tasks
        return None

    def _worker(self) -> None:
        while True:
            with self._cond:
                job = self._next_batch()
            if job is None:
                return
            signature, tasks = job
            try:
                if len(tasks) == 1:
                    outputs = self._run(signature, tasks[0].arrays)
                    tasks[0].outputs = outputs
                else:
                    merged = {name: np.concatenate([t.arrays[name] for t in tasks]) for name in tasks[0].arrays}
                    outputs = self._run(signature, merged)
                    start = 0
                    for t in tasks:
                        t.outputs = {name: value[start:start + t.rows] for name, value in outputs.items()}
                        start += t.rows
            except BaseException as e:  # noqa: BLE001 - every waiting request gets the error
                for t in tasks:
                    t.error = e
            with self._cond:
                self.batches_run += 1
                self.requests_run += len(tasks)
            for t in tasks:
                t.done.set()

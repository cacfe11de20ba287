"""TensorBoard scalar event files through tensorboardX (a small, well-kept library with the
``tensorboard.Event`` protocol buffers and their TFRecord framing; no TensorFlow): one
``events.out.tfevents.*`` file per stage and process life in ``logdir``, written synchronously
(tensorboardX's ``RecordWriter``, not its ``SummaryWriter``, whose queue thread writes events
at its own pace) and flushed after every logged step, so a killed run keeps what it logged. A remote ``logdir`` (gs://, whose objects
cannot be appended to) is written in a local temporary directory and uploaded whole by
``flush()``, which the training loop calls at every checkpoint and at the end.
"""
from __future__ import annotations

import importlib
import math
import os
import sys
import tempfile

from pojax import fs


def _tensorboardx(module: str):
    """``tensorboardX.<module>``, imported without torch.

    tensorboardX's package ``__init__`` imports its ``SummaryWriter``, whose module runs ``import
    torch`` when torch is installed (only to accept torch tensors as values): 2.5-4 s of a run's
    start on 2 cores, for a writer pojax never uses. While tensorboardX is first imported, and only
    if torch is not already loaded, ``sys.modules["torch"] = None`` makes that import fail as if
    torch were absent (tensorboardX catches the ImportError); the entry is removed right after, so
    a later ``import torch`` anywhere loads it normally.
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        return importlib.import_module(f"tensorboardX.{module}")
    sys.modules["torch"] = None
    try:
        return importlib.import_module(f"tensorboardX.{module}")
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key, grouped as transformers' TensorBoardCallback
    groups TRL's logs (``rewrite_logs``): ``eval_loss`` → ``eval/loss``, ``eval_rewards/margins``
    → ``eval/rewards/margins``, anything else under ``train/`` (``train/loss``,
    ``train/learning_rate``)."""
    return "eval/" + key[len("eval_"):] if key.startswith("eval_") else "train/" + key


class EventWriter:
    """Scalar summaries of a stage (see the module docstring)."""

    def __init__(self, logdir: str):
        import socket
        import time

        event_pb2 = _tensorboardx("proto.event_pb2")
        RecordWriter = _tensorboardx("record_writer").RecordWriter

        self.remote = logdir if fs.is_remote(logdir) else None
        if self.remote is None:
            os.makedirs(logdir, exist_ok=True)
            local = logdir
        else:
            self._staging = tempfile.TemporaryDirectory(prefix="pojax-events-")
            local = self._staging.name
        now = time.time()
        self.path = os.path.join(local, f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}")
        self._event = event_pb2.Event
        self._records = RecordWriter(self.path)
        self._write(event_pb2.Event(wall_time=now, step=0, file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def scalars(self, step: int, values: dict) -> None:
        """Writes every finite number of ``values`` (non-numbers are skipped) as one event."""
        import time

        summary_pb2 = _tensorboardx("proto.summary_pb2")

        numbers = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        if numbers:
            self._write(self._event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=numbers)))

    def flush(self) -> None:
        if self.remote is not None:
            fs.upload(self.path, fs.join(self.remote, os.path.basename(self.path)))

"""TensorBoard scalar event files through tensorboardX (a small, well-kept library with the
``tensorboard.Event`` protocol buffers and their TFRecord framing; no TensorFlow): one
``events.out.tfevents.*`` file per stage and process life in ``logdir``, written synchronously
(tensorboardX's ``RecordWriter``, not its ``SummaryWriter``, whose queue thread writes events
at its own pace) and flushed after every logged step, so a killed run keeps what it logged. A remote ``logdir`` (gs://, whose objects
cannot be appended to) is written in a local temporary directory and uploaded whole by
``flush()``, which the training loop calls at every checkpoint and at the end.
"""
from __future__ import annotations

import math
import os
import tempfile

from pojax import fs


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

        from tensorboardX.proto import event_pb2
        from tensorboardX.record_writer import RecordWriter

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

        from tensorboardX.proto import summary_pb2

        numbers = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        if numbers:
            self._write(self._event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=numbers)))

    def flush(self) -> None:
        if self.remote is not None:
            fs.upload(self.path, fs.join(self.remote, os.path.basename(self.path)))

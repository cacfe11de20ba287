"""TensorBoard scalar event files, written without TensorFlow.

An event file is a TFRecord stream: per record, the payload length (uint64 little-endian), the
masked CRC-32C of those 8 bytes, the payload, and the payload's masked CRC-32C. Each payload is
a serialized ``tensorboard.Event`` protocol buffer:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

Written by hand (about 60 lines) because the libraries that do it (tensorboardX, tensorboard,
TensorFlow) are not dependencies of pojax; tests decode the files with the protobuf runtime
from descriptors built in the test, and check CRC-32C against RFC 3720's test vectors.
"""
from __future__ import annotations

import math
import os
import socket
import struct
import tempfile
import time

from pojax import fs


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli polynomial, reflected
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_event(step: int, wall_time: float, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    """One serialized Event with a scalar summary value per (tag, value)."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(int(step))
    if file_version is not None:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(_field(1, _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", v))
                          for tag, v in scalars.items())
        out += _field(5, values)
    return out


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key, grouped as transformers' TensorBoardCallback
    groups TRL's logs (``rewrite_logs``): ``eval_loss`` → ``eval/loss``, ``eval_rewards/margins``
    → ``eval/rewards/margins``, anything else under ``train/`` (``train/loss``,
    ``train/learning_rate``)."""
    return "eval/" + key[len("eval_"):] if key.startswith("eval_") else "train/" + key


def record(payload: bytes) -> bytes:
    """One TFRecord frame around ``payload``."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))


class EventWriter:
    """Appends scalar summaries to a new ``events.out.tfevents.*`` file in ``logdir``.

    For a remote ``logdir`` (gs://, where objects cannot be appended to) the file grows in a
    local temporary directory and ``flush()`` uploads it whole; locally ``flush()`` does
    nothing."""

    def __init__(self, logdir: str):
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
        self.remote_path = fs.join(logdir, name) if fs.is_remote(logdir) else None
        if self.remote_path is None:
            os.makedirs(logdir, exist_ok=True)
            self.path = os.path.join(logdir, name)
        else:
            self._staging = tempfile.TemporaryDirectory(prefix="pojax-events-")
            self.path = os.path.join(self._staging.name, name)
        with open(self.path, "wb") as f:
            f.write(record(encode_event(0, now, file_version="brain.Event:2")))

    def scalars(self, step: int, values: dict) -> None:
        """Writes every finite number of ``values`` (non-numbers are skipped)."""
        numbers = {k: float(v) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        if numbers:
            with open(self.path, "ab") as f:
                f.write(record(encode_event(step, time.time(), numbers)))

    def flush(self) -> None:
        if self.remote_path is not None:
            fs.upload(self.path, self.remote_path)

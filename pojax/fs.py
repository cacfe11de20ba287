"""Run files on a local disk or in a Google Cloud Storage bucket (``--workdir=gs://bucket/run``).

Paths are plain strings; a remote one goes through ``etils.epath`` (the library orbax and grain
already use for checkpoints), which reaches gs:// through fsspec + gcsfs, or through
tf.io.gfile when TensorFlow is installed. Local paths keep using ``open`` and ``os``.

An object in a bucket is written whole and cannot be appended to, so the writers of a run
(pojax.train.metrics, pojax.train.tensorboard) keep what they append in memory or in a local
file and upload it at ``flush()``; a Hugging Face export is written to a local directory and
then copied up (``staged_dir``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from typing import IO, Iterator

# Schemes a workdir may use: orbax writes gs:// arrays with TensorStore's GCS driver; other
# object stores would need their own TensorStore driver, which orbax does not pick.
REMOTE_SCHEMES = ("gs",)


class WorkdirError(ValueError):
    """A workdir this installation cannot write to (unknown scheme or missing client library)."""


def scheme(path: str) -> str | None:
    """``"gs"`` for ``gs://bucket/x``; None for a local path."""
    path = os.fspath(path)
    return path.split("://", 1)[0].lower() if "://" in path else None


def is_remote(path: str) -> bool:
    return scheme(path) is not None


def check_workdir(workdir: str | None) -> None:
    """Raises WorkdirError, before anything runs, when ``workdir`` is a URL this installation
    cannot write: a scheme other than gs://, or gs:// without its client libraries, which would
    otherwise only be imported at the first write: gcsfs (etils.epath's fsspec backend, unless
    TensorFlow's gfile is installed) and google-cloud-storage (orbax asks the bucket's layout)."""
    s = scheme(workdir) if workdir else None
    if s is None:
        return
    if s not in REMOTE_SCHEMES:
        raise WorkdirError(f"workdir {workdir}: unsupported scheme {s}://; use a local directory or "
                           f"{', '.join(f'{r}://' for r in REMOTE_SCHEMES)}")
    import fsspec

    missing = []
    if importlib.util.find_spec("tensorflow") is None:
        try:
            fsspec.get_filesystem_class(s)
        except ImportError:
            missing.append("gcsfs")
    try:
        storage = importlib.util.find_spec("google.cloud.storage")
    except ImportError:  # no google.cloud namespace at all
        storage = None
    if storage is None:
        missing.append("google-cloud-storage")
    if missing:
        raise WorkdirError(f"workdir {workdir}: writing to {s}:// needs {' and '.join(missing)}: "
                           f"pip install {' '.join(missing)} (or the tpu extra: pip install 'pojax[tpu]')")


def _epath(path: str):
    from etils import epath

    return epath.Path(path)


def join(path: str, *parts: str) -> str:
    """``os.path.join``, which also joins ``gs://bucket/x`` correctly on POSIX."""
    return os.path.join(path, *parts)


def makedirs(path: str) -> None:
    """Creates ``path`` and its parents (a bucket has no directories: nothing to do there)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
    return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def open_file(path: str, mode: str = "r") -> IO:
    """``open`` for a local path; a whole-object reader or writer for a remote one (no "a")."""
    if not is_remote(path):
        return open(path, mode)
    if "a" in mode or "+" in mode:
        raise ValueError(f"{path}: objects in a bucket are written whole (mode {mode!r})")
    return _epath(path).open(mode)


def read_text(path: str) -> str:
    with open_file(path) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` (a remote object appears whole when the upload completes)."""
    with open_file(path, "w") as f:
        f.write(text)


def upload(local: str, path: str) -> None:
    """Copies the local file ``local`` to ``path`` (local or remote)."""
    if is_remote(path):
        with open(local, "rb") as src, open_file(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    elif os.path.abspath(local) != os.path.abspath(path):
        shutil.copyfile(local, path)


@contextlib.contextmanager
def staged_dir(path: str) -> Iterator[str]:
    """A local directory for writers that only take local paths (safetensors, tokenizers):
    ``path`` itself when it is local; otherwise a temporary directory whose files are copied to
    ``path`` when the block ends without an error."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pojax-stage-") as local:
        yield local
        for root, _, files in os.walk(local):
            for name in files:
                src = os.path.join(root, name)
                upload(src, join(path, os.path.relpath(src, local)))

"""``reference.cache_dir``: precomputed reference values stored with a JSON manifest of everything
they depend on (likelihood and draw settings, data rows, the reference's parameters); a later run
reuses them only when its manifest matches, and otherwise stops with a ConfigError naming what
differs. Written atomically (values, then the manifest naming their sha256), by process 0."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pojax.config import ConfigError
from pojax.likelihood import diffusion as dl
from pojax.train.objectives import _draw_key, reference_values

CACHE_VERSION = 1
MANIFEST_FILE, VALUES_FILE = "reference_manifest.json", "reference_values.npz"
_FULL_HASH_ELEMENTS = 1 << 20  # leaves up to this size are hashed whole
_SAMPLED_ELEMENTS = 1 << 16  # larger ones: a strided sample of about this many elements


def params_fingerprint(model) -> str:
    """sha256 of the model's parameters: per leaf its path, shape, dtype and bytes. Leaves over
    2^20 elements contribute a strided sample (~2^16 elements, taken on device) instead of every
    byte, so an 8B model hashes in seconds; a change confined to unsampled elements of such a
    leaf would go unnoticed. The bytes are gathered from every process (multi-host safe) and
    do not depend on the mesh: the same parameters give the same fingerprint on any sharding."""
    from flax import nnx
    from jax.experimental import multihost_utils

    host = lambda x: np.ascontiguousarray(multihost_utils.process_allgather(x, tiled=True))
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
        h.update(f"{jax.tree_util.keystr(path)}|{tuple(leaf.shape)}|{leaf.dtype};".encode())
        if leaf.size <= _FULL_HASH_ELEMENTS:
            h.update(host(leaf).tobytes())
        else:
            stride = -(-leaf.size // _SAMPLED_ELEMENTS)
            h.update(host(jax.jit(lambda x: jnp.ravel(x)[::stride])(leaf)).tobytes())
    return h.hexdigest()


def rows_fingerprint(splits: dict) -> str:
    """sha256 of the data rows every split holds (token ids, masks, labels, example ids; any
    ref_* values excluded), in order, with each array's name, shape and dtype."""
    h = hashlib.sha256()
    for split in sorted(splits):
        for k in sorted(splits[split]):
            if k.startswith("ref_"):
                continue
            a = np.ascontiguousarray(np.asarray(splits[split][k]))
            h.update(f"{split}/{k}|{a.shape}|{a.dtype};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _key_list(key) -> list[int]:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).tolist()


def reference_manifest(reference, splits: dict, config, *, mask_id: int | None) -> dict:
    """What precomputed reference values depend on: the likelihood and its draw settings
    (diffusion: draw key, n_mc, estimator, eps, mask id, fixed per-example draws), the data
    settings that shape the rows, a fingerprint of the rows and one of the reference's parameters
    (``params_fingerprint``); plus the model settings, only to explain a parameter mismatch."""
    lk, data = config.likelihood, config.data
    settings = {"likelihood.kind": lk.kind, "likelihood.chunk_size": lk.chunk_size, "data.format": data.format}
    if data.format != "gym":  # the gym's rows do not depend on these (the row fingerprint covers them anyway)
        settings |= {"data.max_prompt_length": data.max_prompt_length,
                     "data.max_completion_length": data.max_completion_length,
                     "data.chat_template": data.chat_template}
    if mask_id is not None:
        settings |= {"likelihood.n_mc": lk.n_mc, "likelihood.estimator": lk.estimator,
                     "likelihood.eps": float(dl.DEFAULT_EPS), "likelihood.mask_id": int(mask_id),
                     # fold_in(key, example_id), the same every step; fresh per-step draws are not precomputable
                     "likelihood.draws": "fixed_per_example",
                     "likelihood.draw_key": _key_list(_draw_key(config))}
    manifest = {"version": CACHE_VERSION, "settings": settings,
                "rows": {k: len(next(iter(v.values()))) for k, v in splits.items()},
                "data_fingerprint": rows_fingerprint(splits),
                "model_fingerprint": params_fingerprint(reference),
                "model": {"model.path": config.model.path, "model.family": config.model.family,
                          "train.seed": config.train.seed, "train.sft_steps": config.train.sft_steps}}
    return json.loads(json.dumps(manifest))  # as it reads back from disk (tuples → lists)


def _differences(stored: dict, current: dict) -> list[str]:
    if stored.get("version") != current["version"]:
        return [f"the cache has format version {stored.get('version')!r}, this pojax writes {current['version']}"]
    out = []
    settings = stored.get("settings", {})
    for k in list(current["settings"]) + [k for k in settings if k not in current["settings"]]:
        a, b = settings.get(k, "<unset>"), current["settings"].get(k, "<unset>")
        if a != b:
            hint = " (derived from train.seed)" if k == "likelihood.draw_key" else ""
            out.append(f"values were made with {k}={json.dumps(a)}, this run has {json.dumps(b)}{hint}")
    if stored.get("data_fingerprint") != current["data_fingerprint"] or stored.get("rows") != current["rows"]:
        out.append(f"values were made for other data rows (rows {stored.get('rows')}, fingerprint "
                   f"{str(stored.get('data_fingerprint'))[:12]}; this run: rows {current['rows']}, fingerprint "
                   f"{current['data_fingerprint'][:12]})")
    if stored.get("model_fingerprint") != current["model_fingerprint"]:
        changed = [f"{k}={json.dumps(v)} (this run {json.dumps(current['model'].get(k))})"
                   for k, v in stored.get("model", {}).items() if current["model"].get(k) != v]
        out.append(f"values were made by another reference model (parameter fingerprint "
                   f"{str(stored.get('model_fingerprint'))[:12]}, this run's {current['model_fingerprint'][:12]}"
                   + (f"; made with {', '.join(changed)}" if changed else "") + ")")
    return out


def _atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``: a
    reader sees the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_cache(cache_dir: str, manifest: dict, values: dict) -> None:
    """The values first, then the manifest naming their sha256: a crash in between leaves no
    manifest, so the next run recomputes rather than trusting a partial cache."""
    os.makedirs(cache_dir, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **{f"{split}.{k}": v for split, vals in values.items() for k, v in vals.items()})
    blob = buf.getvalue()
    _atomic_write(os.path.join(cache_dir, VALUES_FILE), blob)
    manifest = dict(manifest, values={"file": VALUES_FILE, "sha256": hashlib.sha256(blob).hexdigest()})
    _atomic_write(os.path.join(cache_dir, MANIFEST_FILE), json.dumps(manifest, indent=1, sort_keys=True).encode())


def _read_values(cache_dir: str, stored: dict) -> dict:
    path = os.path.join(cache_dir, stored["values"]["file"])
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise ConfigError("reference.cache_dir", f"{path}: cannot read the stored values ({e}); delete "
                          f"{cache_dir} to recompute them") from None
    if hashlib.sha256(blob).hexdigest() != stored["values"]["sha256"]:
        raise ConfigError("reference.cache_dir", f"{path} does not match its manifest (sha256 differs: changed "
                          f"or truncated); delete {cache_dir} to recompute the values")
    values = {}
    with np.load(io.BytesIO(blob)) as npz:
        for name in npz.files:
            split, _, k = name.partition(".")
            values.setdefault(split, {})[k] = npz[name]
    for split, n in stored["rows"].items():
        if any(len(v) != n for v in values.get(split, {}).values()) or split not in values:
            raise ConfigError("reference.cache_dir", f"{path}: the {split!r} values do not have {n} rows")
    return values


def precomputed_reference(reference, splits: dict, config, *, mask_id: int | None,
                          batch_size: int) -> tuple[dict, bool | None]:
    """({split: {ref_*: [N]}}, reused) for ``splits`` = {"train": rows, "held_out": rows, ...}.

    reference.cache_dir = "": computed here (``reference_values``), reused = None. Otherwise the
    values in the directory are reused (True) when its manifest equals this run's
    (``reference_manifest``); with no manifest they are computed and written (False), atomically,
    by process 0.

    Raises:
      ConfigError (reference.cache_dir): the stored values were made with other settings, draws,
        data rows or reference model (every difference named), or the values file is missing
        or does not match its manifest.
    """
    compute = lambda: {split: reference_values(reference, rows, config, mask_id=mask_id, batch_size=batch_size)
                       for split, rows in splits.items()}
    cache_dir = config.reference.get("cache_dir", "")
    if not cache_dir:
        return compute(), None
    manifest = reference_manifest(reference, splits, config, mask_id=mask_id)
    path = os.path.join(cache_dir, MANIFEST_FILE)
    if os.path.exists(path):
        try:
            with open(path) as f:
                stored = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError("reference.cache_dir", f"{path}: unreadable manifest ({e}); delete {cache_dir} "
                              "to recompute the values") from None
        diffs = _differences(stored, manifest)
        if diffs:
            raise ConfigError("reference.cache_dir", f"{cache_dir} cannot serve this run: " + "; ".join(diffs)
                              + ". Delete it or point reference.cache_dir elsewhere to recompute")
        logging.info("reference values: reused from %s", cache_dir)
        return _read_values(cache_dir, stored), True
    values = compute()
    if jax.process_index() == 0:
        _write_cache(cache_dir, manifest, values)
    logging.info("reference values: computed and written to %s", cache_dir)
    return values, False

"""Versioned checkpoints: atomic, verified, pruned, loadable without torch.distributed.

Layout under the checkpoint directory::

    v00000007/
        model.pt        # state_dict of the unsharded StreamRecModel (plain tensors)
        optimizer.pt    # the trainer's optimizer state, unsharded (plain tensors; resume only)
        holdout.json    # the examples the promotion check judges with (trainer rank 0 only)
        retrieval.npz   # with a retriever: the catalogue's item ids and item-tower vectors
        id_maps.npz     # with model.id_maps: each mapped table's IdMap (models.id_map)
        manifest.json   # Manifest below, with the sha256 of every other file

Scorers read ``model.pt`` only (:func:`load_checkpoint`); ``optimizer.pt`` holds the embedding
tables' RowWiseAdagrad accumulators and dense Adagrad's state, which a resumed trainer needs to
continue exactly where it stopped (:func:`latest_resumable`).

**Deltas.** A version whose manifest has ``delta_of = P`` holds ``model-delta.pt`` and
``optimizer-delta.pt`` instead: the embedding rows (and their optimizer rows) that changed since
version ``P``, plus every other tensor in full. A delta's rows of tensor ``K`` are stored as
``K`` (``n x ...`` values) and ``K@rows`` (``n`` int64 row indices). Version ``P`` is itself a
full snapshot or a delta, so each version names a chain back to a full snapshot;
:func:`load_checkpoint`, :func:`load_optimizer_state` and :func:`latest_resumable` rebuild the
full state through it, verifying every file on the way, and pruning keeps the chains of the
versions it keeps. A scorer holding version ``P`` applies only the newer deltas
(:func:`chain`, :func:`load_delta`, :func:`apply_delta`).

A version is written to ``.tmp-v00000007-<pid>/``, every file and the directory are fsync'ed,
and the directory is renamed into place: a reader sees a complete version or none. Loading
verifies the manifest, the feature-spec digest and each file's sha256, and reads tensors with
``torch.load(weights_only=True)`` (no pickled code runs).

torch (and :mod:`models.id_map`, which needs torchrec's hashing module) is imported by the
functions that read or write tensors, not by this module: commands that only read manifests
(``streamrec model list``, the promotion bookkeeping) start in a fraction of a second instead of
paying the 4-8 s that importing torch takes here (``tests/unit/test_checkpoint.py`` checks it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from streaming.errors import CheckpointError, CorruptCheckpoint

if TYPE_CHECKING:
    import torch

    from models.id_map import IdMap

FORMAT = 1
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
MODEL_DELTA_FILE = "model-delta.pt"
OPTIMIZER_DELTA_FILE = "optimizer-delta.pt"
ROWS_SUFFIX = "@rows"  # delta key of the row indices of the values under the key before it
HOLDOUT_FILE = "holdout.json"
RETRIEVAL_FILE = "retrieval.npz"
ID_MAPS_FILE = "id_maps.npz"
_VERSION_DIR = re.compile(r"^v(\d{8})$")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a version holds besides its tensors: the ``manifest.json`` of a version directory.

    ``offsets``: ``"topic:partition"`` -> next offset to consume, over all ranks; ``metrics``:
    prequential AUC / log-loss, train loss and window size at publish time (None where
    undefined); ``spec_digest``: :meth:`FeatureSpec.digest` of the model; ``files``: name ->
    sha256, filled in by :func:`write_checkpoint`. ``kafka_cluster_id`` and ``topic_ids`` (topic
    name -> topic id) say which Kafka cluster and which topic instances ``offsets`` belong to
    (empty in manifests written before they were recorded): a topic created again under the
    same name, or a new cluster, starts at offset 0 again, and saved offsets mean nothing there.
    ``examples_seen`` counts the examples consumed (their offsets are behind ``offsets``), of
    which ``examples_held_out`` were held out (never trained on) to judge checkpoints;
    ``promotion`` is the verdict on this checkpoint (see :mod:`trainer.promotion`; empty in
    manifests written before promotion existed). ``delta_of``: the version this one's delta
    applies to (0 for a full snapshot).
    """

    version: int
    created_at_ms: int
    step: int
    examples_seen: int
    offsets: dict[str, int]  # "topic:partition" -> next offset to consume
    metrics: dict[str, float]
    spec_digest: str
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    format: int = FORMAT
    kafka_cluster_id: str = ""  # the cluster the offsets were read from ("" = not recorded)
    topic_ids: dict[str, str] = field(default_factory=dict)  # topic name -> id at that time
    examples_held_out: int = 0  # of examples_seen: held out for promotion checks, not trained
    promotion: dict[str, Any] = field(default_factory=dict)  # the verdict (trainer.promotion)
    delta_of: int = 0  # > 0: a delta on that version (see the module docstring); 0: full

    def to_json(self) -> bytes:
        """Indented JSON with sorted keys (the bytes of ``manifest.json``)."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Parse ``manifest.json``; raises :class:`CorruptCheckpoint` if unreadable or malformed."""
        try:
            doc = orjson.loads(raw)
            return cls(**doc)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise CorruptCheckpoint(f"unreadable manifest: {exc}") from None


def version_dir(root: Path, version: int) -> Path:
    """The directory of ``version`` under ``root`` (``v00000007``); it may not exist."""
    return root / f"v{version:08d}"


def list_versions(root: Path) -> list[int]:
    """Version numbers present under ``root``, oldest first (unverified; temp dirs excluded)."""
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _VERSION_DIR.match(p.name)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    root: Path,
    state_dict: Mapping[str, torch.Tensor],
    manifest: Manifest,
    keep: int,
    optimizer_state: Mapping[str, torch.Tensor] | None = None,
    protect: Collection[int] = (),
    blobs: Mapping[str, bytes] | None = None,
) -> Path:
    """Write version ``manifest.version`` atomically (``model.pt``, ``optimizer.pt`` when
    ``optimizer_state`` is given, any ``blobs`` (file name -> bytes), ``manifest.json`` with
    every file's sha256); prune to the newest ``keep`` versions, never removing a version in
    ``protect`` (the served one and the rollback target) nor one that a kept version's chain
    needs. With ``manifest.delta_of`` set, ``state_dict`` and ``optimizer_state`` are deltas
    (rows as ``K`` and ``K@rows``) and go to ``model-delta.pt`` and ``optimizer-delta.pt``."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    final = version_dir(root, manifest.version)
    if final.exists():
        raise CheckpointError(f"checkpoint version {manifest.version} already exists at {final}")
    tmp = root / f".tmp-v{manifest.version:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        delta = manifest.delta_of > 0
        tensors = {MODEL_DELTA_FILE if delta else MODEL_FILE: state_dict}
        if optimizer_state is not None:
            tensors[OPTIMIZER_DELTA_FILE if delta else OPTIMIZER_FILE] = optimizer_state
        for name, content in tensors.items():
            torch.save({k: v.detach().cpu().contiguous() for k, v in content.items()}, tmp / name)
        for name, raw in (blobs or {}).items():
            (tmp / name).write_bytes(raw)
        names = [*tensors, *(blobs or {})]
        done = Manifest(**{**asdict(manifest), "files": {name: _sha256(tmp / name) for name in names}})
        (tmp / "manifest.json").write_bytes(done.to_json())
        for f in (*(tmp / name for name in names), tmp / "manifest.json", tmp):
            _fsync(f)
        tmp.rename(final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(root, keep, protect)
    return final


def prune(root: Path, keep: int, protect: Collection[int] = ()) -> list[int]:
    """Remove all but the newest ``keep`` versions, the ``protect``ed ones and every version
    their delta chains need; returns the versions removed."""
    versions = list_versions(root)
    wanted = set(versions[-keep:]) | (set(protect) & set(versions))
    needed: set[int] = set()
    for v in wanted:
        needed.add(v)
        with contextlib.suppress(CorruptCheckpoint):  # a damaged link keeps what is before it
            needed.update(m.version for _, m in chain(version_dir(root, v)))
    removed = [v for v in versions if v not in needed]
    for v in removed:
        shutil.rmtree(version_dir(root, v), ignore_errors=True)
    return removed


def read_manifest(path: Path) -> Manifest:
    """The manifest of the version directory ``path``, unverified; raises :class:`CorruptCheckpoint`."""
    try:
        return Manifest.from_json((path / "manifest.json").read_bytes())
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{path}: manifest.json missing") from None


def _verified_tensors(path: Path, manifest: Manifest, name: str) -> dict[str, Any]:
    """Load ``name`` of the version directory ``path`` after checking its sha256 against the
    manifest; raises :class:`CorruptCheckpoint`."""
    import torch

    file = _verified(path, manifest, name)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad archives
        raise CorruptCheckpoint(f"{path}: {name} does not load: {exc}") from None


def read_blob(path: Path, manifest: Manifest, name: str) -> bytes | None:
    """The verified bytes of file ``name`` of a version directory (None if the manifest lists
    no such file). Raises :class:`CorruptCheckpoint`."""
    if name not in manifest.files:
        return None
    return _verified(path, manifest, name).read_bytes()


def _verified(path: Path, manifest: Manifest, name: str) -> Path:
    """``path / name`` once its sha256 matches the manifest; raises :class:`CorruptCheckpoint`."""
    if name not in manifest.files:
        raise CorruptCheckpoint(f"{path}: manifest lists no {name}")
    file = path / name
    if not file.is_file():
        raise CorruptCheckpoint(f"{path}: {name} missing")
    actual = _sha256(file)
    digest = manifest.files[name]
    if actual != digest:
        raise CorruptCheckpoint(f"{path}: {name} sha256 {actual[:12]}... != manifest {digest[:12]}...")
    return file


def _checked_manifest(path: Path, spec_digest: str | None) -> Manifest:
    manifest = read_manifest(path)
    if manifest.format != FORMAT:
        raise CorruptCheckpoint(f"{path}: format {manifest.format}, this build reads {FORMAT}")
    if spec_digest is not None and manifest.spec_digest != spec_digest:
        raise CorruptCheckpoint(
            f"{path}: feature spec {manifest.spec_digest} != this model's {spec_digest}")
    return manifest


def chain(path: Path, spec_digest: str | None = None) -> list[tuple[Path, Manifest]]:
    """The versions that make up version directory ``path``, oldest first: a full snapshot,
    then the deltas on it up to ``path`` itself (just ``[path]`` for a full snapshot). Every
    link's manifest is read and checked (format, spec); raises :class:`CorruptCheckpoint` for
    a missing or malformed link."""
    links: list[tuple[Path, Manifest]] = []
    while True:
        manifest = _checked_manifest(path, spec_digest)
        links.append((path, manifest))
        if not manifest.delta_of:
            return links[::-1]
        if manifest.delta_of >= manifest.version:
            raise CorruptCheckpoint(f"{path}: delta of v{manifest.delta_of}, not an older version")
        path = version_dir(path.parent, manifest.delta_of)
        if not path.is_dir():
            raise CorruptCheckpoint(f"{links[-1][0]}: delta of v{manifest.delta_of}, which is gone")


def load_delta(path: Path, manifest: Manifest, optimizer: bool = False) -> dict[str, Any]:
    """The verified model delta (``optimizer``: the optimizer delta) of a delta version."""
    return _verified_tensors(path, manifest, OPTIMIZER_DELTA_FILE if optimizer else MODEL_DELTA_FILE)


def apply_delta(state: dict[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> None:
    """Apply ``delta`` to the full ``state`` in place: rows ``K@rows`` of tensor ``K`` take the
    delta's values, tensors without rows are replaced whole (copied into place, so a module's
    parameters behind ``state`` change too). Raises :class:`CorruptCheckpoint` for a key or
    shape the state does not have."""
    import torch

    with torch.no_grad():
        for key, values in delta.items():
            if key.endswith(ROWS_SUFFIX):
                continue
            target = state.get(key)
            rows = delta.get(key + ROWS_SUFFIX)
            if target is None:
                raise CorruptCheckpoint(f"delta holds {key}, which the model does not have")
            if rows is None:
                if tuple(target.shape) != tuple(values.shape):
                    raise CorruptCheckpoint(f"delta {key}: shape {tuple(values.shape)}, the "
                                            f"model has {tuple(target.shape)}")
                target.copy_(values)
            else:
                if (len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(target))) \
                        or tuple(values.shape[1:]) != tuple(target.shape[1:]) \
                        or len(values) != len(rows):
                    raise CorruptCheckpoint(f"delta {key}: {len(rows)} rows, values "
                                            f"{tuple(values.shape)}, the model has "
                                            f"{tuple(target.shape)}")
                target.index_copy_(0, rows.long(), values.to(target.dtype))


def load_checkpoint(path: Path, spec_digest: str | None = None) -> tuple[Manifest, dict[str, Any]]:
    """Verify and load one version directory's manifest and model weights (what a scorer needs;
    optimizer state is neither read nor hashed). A delta is rebuilt through its chain (every
    link verified). Raises :class:`CorruptCheckpoint`."""
    links = chain(path, spec_digest)
    state = _verified_tensors(links[0][0], links[0][1], MODEL_FILE)
    for link, manifest in links[1:]:
        apply_delta(state, load_delta(link, manifest))
    return links[-1][1], state


def load_optimizer_state(path: Path, manifest: Manifest) -> dict[str, Any] | None:
    """The verified optimizer state of a version directory (rebuilt through its chain for a
    delta), or None if a version in it has none (written before optimizer state was saved).
    Raises :class:`CorruptCheckpoint`."""
    links = chain(path) if manifest.delta_of else [(path, manifest)]
    if OPTIMIZER_FILE not in links[0][1].files \
            or any(OPTIMIZER_DELTA_FILE not in m.files for _, m in links[1:]):
        return None
    state = _verified_tensors(links[0][0], links[0][1], OPTIMIZER_FILE)
    for link, m in links[1:]:
        apply_delta(state, load_delta(link, m, optimizer=True))
    return state


def latest_valid(root: Path, spec_digest: str | None = None) -> tuple[Manifest, dict[str, Any]] | None:
    """The newest version that verifies; corrupt newer ones are skipped (and reported)."""
    for version in reversed(list_versions(root)):
        try:
            return load_checkpoint(version_dir(root, version), spec_digest)
        except CorruptCheckpoint as exc:
            log.error("skipping checkpoint: %s", exc)
    return None


@dataclass(frozen=True, slots=True)
class Resumable:
    """What a restarted trainer loads: the manifest, the model weights and the optimizer state
    (None for a checkpoint written before optimizer state was saved), from directory ``path``."""

    manifest: Manifest
    model: dict[str, Any]
    optimizer: dict[str, Any] | None
    path: Path


def latest_resumable(root: Path, spec_digest: str | None = None) -> Resumable | None:
    """The newest version whose model *and* optimizer state verify (a version with a corrupt
    ``optimizer.pt`` is skipped like a corrupt model: resuming it would not be exact)."""
    for version in reversed(list_versions(root)):
        path = version_dir(root, version)
        try:
            manifest, model = load_checkpoint(path, spec_digest)
            return Resumable(manifest, model, load_optimizer_state(path, manifest), path)
        except CorruptCheckpoint as exc:
            log.error("skipping checkpoint: %s", exc)
    return None


def pack_item_vectors(ids: Sequence[str], vectors: np.ndarray,
                      inputs: Mapping[str, np.ndarray] | None = None) -> bytes:
    """The bytes of ``retrieval.npz``: item ids ``N`` (a unicode array) and their item-tower
    vectors ``N x K`` float32, in one uncompressed npz (loads without pickle), plus ``inputs``
    (name -> array of ``N`` rows: what the trainer needs to rebuild its catalogue on resume;
    scorers do not read them)."""
    if len(ids) != len(vectors):
        raise CheckpointError(f"{len(ids)} item ids but {len(vectors)} vectors")
    out = io.BytesIO()
    np.savez(out, items=np.asarray(list(ids), dtype=str),
             vectors=np.asarray(vectors, dtype=np.float32), **(inputs or {}))
    return out.getvalue()


def unpack_item_vectors(raw: bytes, inputs: Collection[str] = ()
                        ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """:func:`pack_item_vectors` reversed: ``(ids, N x K float32, {name: array})`` with the
    ``inputs`` named; raises :class:`CorruptCheckpoint` for anything else."""
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            ids, vectors = z["items"].tolist(), z["vectors"]
            extra = {name: z[name] for name in inputs}
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptCheckpoint(f"{RETRIEVAL_FILE} does not load: {exc}") from None
    if vectors.ndim != 2 or len(ids) != len(vectors) or vectors.dtype != np.float32 \
            or any(len(a) != len(ids) for a in extra.values()):
        raise CorruptCheckpoint(f"{RETRIEVAL_FILE}: {len(ids)} ids, vectors "
                                f"{vectors.shape} {vectors.dtype}")
    return ids, vectors, extra


def pack_id_maps(maps: Mapping[str, IdMap]) -> bytes:
    """The bytes of ``id_maps.npz``: each table's :meth:`IdMap.state` arrays as
    ``<table>/<name>``, in one uncompressed npz (loads without pickle)."""
    out = io.BytesIO()
    np.savez(out, **{f"{table}/{name}": a for table, m in maps.items()
                     for name, a in m.state().items()})
    return out.getvalue()


def unpack_id_maps(raw: bytes) -> dict[str, IdMap]:
    """:func:`pack_id_maps` reversed: table -> :class:`IdMap`; raises
    :class:`CorruptCheckpoint` for anything else."""
    from models.id_map import IdMap

    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        tables: dict[str, dict[str, np.ndarray]] = {}
        for key, a in arrays.items():
            table, _, name = key.partition("/")
            tables.setdefault(table, {})[name] = a
        return {table: IdMap.from_state(state) for table, state in tables.items()}
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise CorruptCheckpoint(f"{ID_MAPS_FILE} does not load: {exc}") from None


def now_ms() -> int:
    """Wall-clock time in ms since the epoch (a manifest's ``created_at_ms``)."""
    return int(time.time() * 1000)


def remove_stale_tmp(root: Path) -> None:
    """Leftovers of writers that died mid-write."""
    if root.is_dir():
        for p in root.glob(".tmp-v*"):
            with contextlib.suppress(OSError):
                shutil.rmtree(p)

"""Speaker registry and reference-clip cache: what the pipeline derives from a reference clip, kept on disk.

A *speaker* is a named voice: `store.put("alice", tensors, ...)` once, then `store.get("alice", fingerprint)`
in any later process. A *clip* entry holds the same kind of tensors for an ad-hoc reference file, keyed by
the sha256 of the file's bytes (not its path): alternating voices stay cached, an edited file is a new key.
The tensors are opaque here (`dict[str, torch.Tensor]`). Every entry records the fingerprint of the model
that made it and is never handed to another model: `get` refuses, `cache_get` misses.

Layout in the store folder (a data folder that may hold other things; only these are touched):
    speakers.sqlite3                        metadata: tables `speakers` and `clips` (WAL journal)
    speakers/{spk,clip}-<uuid>.safetensors  one file per entry, written once, never modified

Crash safety. An entry's tensors go to a temporary file in speakers/ (fsynced); then, holding SQLite's write
lock, the file is renamed to its final, never-reused name and its row is inserted in the same transaction.
So a row never points at a missing or partial file, and a crash leaves at worst an unreferenced file, which
the next `SpeakerStore()` deletes (under the same write lock, so a live writer's file is never taken). A file is
deleted only after the commit that dropped its row. Several processes may share a store (SQLite locking,
busy timeout); a network file system is not supported (WAL needs shared memory).

Memory. Recently used entries are kept in a bounded LRU (a count of entries) keyed by file name. A hit costs
one indexed SQLite lookup (which sees other processes' overwrites and removals, and gives the fingerprint)
and no tensor read. Returned dicts are fresh, the tensors in them are shared with the LRU: do not modify
them in place.

The same registry can live in PostgreSQL instead (speakers_pg.PostgresSpeakerStore, same API and guarantees,
shared by several machines): `open_store(spec)` picks the backend from a `--store` value (folder or URL).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, NamedTuple, Optional, Union

import torch
from safetensors.torch import load_file, save

from .errors import IndexTTSFastError, OptionError
from .lru import LRU
from .paths import HOME_ENV, default_store_dir  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from .speakers_pg import PostgresSpeakerStore

# Tests only: seconds to sleep after an entry's file is in place and before its row is committed.
PAUSE_ENV = "INDEXTTS_FAST_TEST_PAUSE_BEFORE_COMMIT"
# How error messages tell the user to see the registered ids (the CLI may set its own command here).
LIST_HINT = "`indextts-fast speakers list`"

DB_NAME = "speakers.sqlite3"
TENSOR_DIR = "speakers"
SCHEMA_VERSION = 1
_ID_RULE = "1 to 64 characters from letters, digits, '-', '_', '.', not starting with '-' or '.'"
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_FINAL_RE = re.compile(r"(spk|clip)-[0-9a-f]{32}\.safetensors")
_TEMP_RE = re.compile(r"\.tmp-(\d+)-[0-9a-f]{32}\.safetensors")
_INHERITED: list = []  # connections a forked child must keep open and unused
_TEMP_GRACE_S = 3600.0  # a temp file this old is abandoned even if its pid looks alive (pid reuse)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS speakers (
    speaker_id        TEXT PRIMARY KEY,
    file              TEXT NOT NULL UNIQUE,
    audio_sha256      TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    created           REAL NOT NULL,
    source            TEXT,
    duration_s        REAL,
    tensors           TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clips (
    audio_sha256      TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    file              TEXT NOT NULL UNIQUE,
    created           REAL NOT NULL,
    last_used         INTEGER NOT NULL,
    source            TEXT,
    duration_s        REAL,
    tensors           TEXT NOT NULL,
    PRIMARY KEY (audio_sha256, model_fingerprint)
);
"""


class SpeakerError(IndexTTSFastError):
    """A speaker-registry or clip-cache operation that cannot be done."""


class SpeakerIdError(SpeakerError, ValueError):
    """An empty or unsafe speaker id."""


class UnknownSpeakerError(SpeakerError, LookupError):
    """No speaker is registered under this id."""


class SpeakerExistsError(SpeakerError):
    """The id is taken and overwrite was not asked for."""


class FingerprintMismatchError(SpeakerError):
    """The entry was made by a different model than the one asking for it."""


class StoreCorruptError(SpeakerError):
    """An entry's file is missing or does not hold what its row says (damaged from outside)."""


class TensorSpec(NamedTuple):
    dtype: str  # "float32", "bfloat16", ...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SpeakerRecord:
    speaker_id: str
    audio_sha256: str
    model_fingerprint: str
    created: datetime  # UTC
    source: Optional[str]  # the reference file it was made from, as the caller named it
    duration_s: Optional[float]
    tensors: dict[str, TensorSpec]
    file: str  # name in <root>/speakers

    def to_dict(self) -> dict:
        d = asdict(self)
        d["created"] = self.created.isoformat()
        d["tensors"] = {k: {"dtype": v.dtype, "shape": list(v.shape)} for k, v in self.tensors.items()}
        return d


@dataclass(frozen=True)
class ClipRecord:
    audio_sha256: str
    model_fingerprint: str
    created: datetime  # UTC
    last_used: int  # store-wide use counter: larger = more recent
    source: Optional[str]
    duration_s: Optional[float]
    tensors: dict[str, TensorSpec]
    file: str


def sha256_of(data: Union[bytes, str, os.PathLike]) -> str:
    """Hex sha256 of raw bytes, or of a file's bytes when given a path."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    with open(data, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def validate_speaker_id(speaker_id: object) -> str:
    if not isinstance(speaker_id, str) or not _ID_RE.fullmatch(speaker_id):
        raise SpeakerIdError(f"invalid speaker id {speaker_id!r}: use {_ID_RULE}")
    return speaker_id


def _check_sha(audio_sha256: object) -> str:
    if not isinstance(audio_sha256, str) or not _SHA_RE.fullmatch(audio_sha256):
        raise OptionError(f"audio_sha256 must be 64 lowercase hex digits (sha256_of(file)), got {audio_sha256!r}")
    return audio_sha256


def _check_fingerprint(model_fingerprint: object) -> str:
    if not isinstance(model_fingerprint, str) or not model_fingerprint:
        raise OptionError(f"model_fingerprint must be a non-empty string, got {model_fingerprint!r}")
    return model_fingerprint


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Private contiguous CPU copies (the caller may go on to modify its tensors)."""
    if not isinstance(tensors, Mapping) or not tensors:
        raise OptionError("tensors must be a non-empty dict of name -> torch.Tensor")
    out = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or not isinstance(t, torch.Tensor):
            raise OptionError(f"tensors must map non-empty names to torch.Tensor, got {name!r}: {type(t).__name__}")
        out[name] = t.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
    return out


def _specs(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {k: TensorSpec(str(t.dtype).removeprefix("torch."), tuple(t.shape)) for k, t in tensors.items()}


def _specs_from_json(text: str) -> dict[str, TensorSpec]:
    return {k: TensorSpec(dtype, tuple(shape)) for k, (dtype, shape) in json.loads(text).items()}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The one place tensor files are read (tests count calls to prove memory hits skip it)."""
    return load_file(str(path))


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows; rename is journaled there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pause_for_tests() -> None:
    seconds = os.environ.get(PAUSE_ENV)
    if seconds:
        print("indextts-fast: paused before commit", file=sys.stderr, flush=True)
        time.sleep(float(seconds))


def _temp_abandoned(path: Path, pid: int) -> bool:
    if os.name == "posix" and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, someone else's
    try:
        return time.time() - path.stat().st_mtime > _TEMP_GRACE_S
    except FileNotFoundError:
        return False


class RegistryQueries:
    """The registry's read queries, shared by the SQLite store and the PostgreSQL one (speakers_pg.py): they
    differ only in their parameter placeholder and in what names an entry's tensors (`_COLS`)."""

    _PH = "?"
    _COLS = "speaker_id, audio_sha256, model_fingerprint, created, source, duration_s, tensors, file"

    def _check_put(self, speaker_id: str, model_fingerprint: str, audio_sha256: str, overwrite: bool) -> None:
        """A put's arguments, and an early SpeakerExistsError before any tensor is written (the write itself
        decides races)."""
        validate_speaker_id(speaker_id)
        _check_fingerprint(model_fingerprint)
        _check_sha(audio_sha256)
        if not overwrite and self._query(f"SELECT 1 FROM speakers WHERE speaker_id = {self._PH}", (speaker_id,)):
            raise _exists(speaker_id)

    def _unknown(self, speaker_id: str) -> UnknownSpeakerError:
        ids = [r[0] for r in self._query("SELECT speaker_id FROM speakers ORDER BY speaker_id LIMIT 11")]
        return _unknown_error(speaker_id, ids, self.root)

    def show(self, speaker_id: str) -> SpeakerRecord:
        """The metadata of one speaker, including its tensor names, dtypes and shapes."""
        validate_speaker_id(speaker_id)
        rows = self._query(f"SELECT {self._COLS} FROM speakers WHERE speaker_id = {self._PH}", (speaker_id,))
        if not rows:
            raise self._unknown(speaker_id)
        return _speaker_record(rows[0])

    def list(self) -> list[SpeakerRecord]:
        return [_speaker_record(r) for r in self._query(f"SELECT {self._COLS} FROM speakers ORDER BY speaker_id")]


class SpeakerStore(RegistryQueries):
    """Speaker registry + content-hash clip cache in one folder. Thread-safe; several processes may share it.

    memory_entries: entries (speakers and clips together) kept loaded in memory; 0 disables.
    cache_entries: clip entries kept on disk, least recently used evicted first; 0 disables the clip cache.
    """

    def __init__(self, root: Union[str, os.PathLike, None] = None, *, memory_entries: int = 32,
                 cache_entries: int = 64, busy_timeout_s: float = 60.0):
        if memory_entries < 0 or cache_entries < 0:
            raise OptionError(f"memory_entries and cache_entries must be >= 0, got {memory_entries}, {cache_entries}")
        self.root = Path(root).expanduser() if root is not None else default_store_dir()
        self.tensor_dir = self.root / TENSOR_DIR
        self.memory_entries = memory_entries
        self.cache_entries = cache_entries
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._memory: LRU = LRU(memory_entries)   # file name -> tensors
        self._connection: Optional[sqlite3.Connection] = None
        self._connection_pid = -1
        try:
            self.tensor_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpeakerError(f"cannot create the speaker store folder {self.root}: {e}") from e
        try:
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise SpeakerError(f"{self.root / DB_NAME} was made by a newer indextts-fast (schema {version})")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:  # e.g. "file is not a database"
            raise SpeakerError(f"{self.root / DB_NAME} is not a usable speaker index: {e}") from e
        self.collect_garbage()

    # ---- connection and transactions -------------------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        """One connection per process (a connection must not cross a fork)."""
        if self._connection is None or self._connection_pid != os.getpid():
            if self._connection is not None:  # inherited through fork: closing it here could drop the
                _INHERITED.append(self._connection)  # parent's or our own POSIX locks, so never close it
            conn = sqlite3.connect(self.root / DB_NAME, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            _use_wal(conn, self.busy_timeout_s)
            conn.execute("PRAGMA synchronous = FULL")  # a committed removal must not come back after power loss
            self._connection, self._connection_pid = conn, os.getpid()
        return self._connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: takes SQLite's write lock at once (waits up to busy_timeout_s for it)."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise SpeakerError(f"cannot write to the speaker store {self.root} (busy for more than "
                                   f"{self.busy_timeout_s:g} s, or read-only): {e}") from e
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._connection_pid == os.getpid():
                self._connection.close()
            self._connection = None
            self._memory.clear()

    def __enter__(self) -> "SpeakerStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- files and memory --------------------------------------------------------------------------------
    def _put(self, table: str, key: dict, meta: dict, tensors: Mapping[str, torch.Tensor],
             overwrite: bool) -> None:
        """Write an entry: file to a temp name, then rename + row in one transaction; then drop replaced files."""
        prepared = _prepare(tensors)
        specs = _specs(prepared)
        name = f"{'spk' if table == 'speakers' else 'clip'}-{uuid.uuid4().hex}.safetensors"
        final = self.tensor_dir / name
        temp = self.tensor_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}.safetensors"
        row = {**key, **meta, "file": name,
               "tensors": json.dumps({k: [v.dtype, list(v.shape)] for k, v in specs.items()})}
        header = {"indextts_fast": table, "model_fingerprint": row["model_fingerprint"],
                  "key": "/".join(str(v) for v in key.values())}  # makes a lone file self-describing
        where = " AND ".join(f"{k} = ?" for k in key)
        try:
            _write_durably(temp, save(prepared, metadata=header))
            with self._write() as db:
                old = db.execute(f"SELECT file FROM {table} WHERE {where}", tuple(key.values())).fetchone()
                if old is not None and not overwrite:
                    raise _exists(key["speaker_id"])
                os.replace(temp, final)
                _fsync_dir(self.tensor_dir)
                _pause_for_tests()
                if table == "clips":  # the entry just made is the most recently used
                    row["last_used"] = db.execute("SELECT COALESCE(MAX(last_used), 0) + 1 FROM clips").fetchone()[0]
                db.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                           tuple(row.values()))
                dropped = [old[0]] if old is not None else []
                if table == "clips":
                    dropped += self._evict_clips(db)
        except BaseException:
            temp.unlink(missing_ok=True)
            try:  # normally the row is absent; checking covers an interrupt landing just after COMMIT
                if not self._query(f"SELECT 1 FROM {table} WHERE file = ?", (name,)):
                    final.unlink(missing_ok=True)
            except sqlite3.Error:
                pass  # leave it: an unreferenced file is removed by the next collect_garbage()
            raise
        self._forget(dropped)
        if name not in dropped:  # (a clip evicted at once when cache_entries is tiny)
            self._remember(name, prepared)

    def _forget(self, files: list[str]) -> None:
        """Drop memory entries and delete files whose rows are committed as gone."""
        with self._lock:
            for f in files:
                self._memory.pop(f, None)
        for f in files:
            (self.tensor_dir / f).unlink(missing_ok=True)

    def _remember(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.memory_entries == 0:
            return
        with self._lock:
            self._memory.put(name, tensors)

    def _load(self, name: str, specs: dict[str, TensorSpec], what: str) -> Optional[dict[str, torch.Tensor]]:
        """The entry's tensors from memory, else from its file; None when the file is gone."""
        with self._lock:
            hit = self._memory.get_fresh(name)
            if hit is not None:
                return dict(hit)
        path = self.tensor_dir / name
        try:
            tensors = _read_tensors(path)
        except FileNotFoundError:
            return None
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise StoreCorruptError(f"{what}: cannot read {path}: {e}") from e
        if _specs(tensors) != specs:
            raise StoreCorruptError(f"{what}: {path} does not hold the tensors its index row lists")
        self._remember(name, tensors)
        return dict(tensors)

    def collect_garbage(self) -> list[str]:
        """Delete files that no row refers to (left by a crash between file and row, or row and file) and
        abandoned temp files. Runs under the write lock, so a live writer's file is never taken."""
        removed = []
        with self._write() as db:
            referenced = {r[0] for r in db.execute("SELECT file FROM speakers UNION ALL SELECT file FROM clips")}
            for path in self.tensor_dir.iterdir():
                temp = _TEMP_RE.fullmatch(path.name)
                if (_FINAL_RE.fullmatch(path.name) and path.name not in referenced) or (
                        temp and _temp_abandoned(path, int(temp.group(1)))):
                    path.unlink(missing_ok=True)
                    removed.append(path.name)
        return removed

    # ---- speakers ----------------------------------------------------------------------------------------
    def put(self, speaker_id: str, tensors: Mapping[str, torch.Tensor], *, model_fingerprint: str,
            audio_sha256: str, source: Optional[str] = None, duration_s: Optional[float] = None,
            overwrite: bool = False) -> SpeakerRecord:
        """Register `tensors` (derived from a reference clip) under `speaker_id`."""
        self._check_put(speaker_id, model_fingerprint, audio_sha256, overwrite)
        meta = dict(audio_sha256=audio_sha256, model_fingerprint=model_fingerprint, created=time.time(),
                    source=source, duration_s=None if duration_s is None else float(duration_s))
        self._put("speakers", {"speaker_id": speaker_id}, meta, tensors, overwrite)
        return self.show(speaker_id)

    def get(self, speaker_id: str, model_fingerprint: str) -> dict[str, torch.Tensor]:
        """The speaker's tensors; refuses an entry made by another model (FingerprintMismatchError)."""
        _check_fingerprint(model_fingerprint)
        record = self.show(speaker_id)
        while True:
            if record.model_fingerprint != model_fingerprint:
                raise _mismatch_error(record, model_fingerprint)
            tensors = self._load(record.file, record.tensors, f"speaker {speaker_id!r}")
            if tensors is not None:
                return tensors
            again = self.show(speaker_id)  # replaced by another process between lookup and read?
            if again.file == record.file:
                raise StoreCorruptError(f"speaker {speaker_id!r}: its file {self.tensor_dir / record.file} is "
                                        f"missing; register it again: {_again(speaker_id)}")
            record = again

    def remove(self, speaker_id: str) -> SpeakerRecord:
        record = self.show(speaker_id)
        with self._write() as db:
            row = db.execute("SELECT file FROM speakers WHERE speaker_id = ?", (speaker_id,)).fetchone()
            if row is None:
                raise self._unknown(speaker_id)
            db.execute("DELETE FROM speakers WHERE speaker_id = ?", (speaker_id,))
        self._forget([row[0]])
        return record

    # ---- clip cache --------------------------------------------------------------------------------------
    def cache_get(self, audio_sha256: str, model_fingerprint: str) -> Optional[dict[str, torch.Tensor]]:
        """Tensors cached for these audio bytes and this model, or None (then compute and `cache_put`)."""
        key = (_check_sha(audio_sha256), _check_fingerprint(model_fingerprint))
        where = "audio_sha256 = ? AND model_fingerprint = ?"
        with self._lock:
            self._db.execute("PRAGMA synchronous = NORMAL")  # a lost use-count update is harmless: skip the fsync
            try:
                with self._write() as db:
                    row = db.execute(f"SELECT file, tensors FROM clips WHERE {where}", key).fetchone()
                    if row is None:
                        return None
                    db.execute(f"UPDATE clips SET last_used = (SELECT MAX(last_used) + 1 FROM clips) WHERE {where}",
                               key)
            finally:
                self._db.execute("PRAGMA synchronous = FULL")
        try:
            tensors = self._load(row[0], _specs_from_json(row[1]), f"cached clip {audio_sha256[:12]}")
        except StoreCorruptError:
            tensors = None
        if tensors is None:  # evicted by another process meanwhile, or damaged: a miss (drop a damaged row)
            with self._write() as db:
                db.execute("DELETE FROM clips WHERE file = ?", (row[0],))
            self._forget([row[0]])
        return tensors

    def cache_put(self, audio_sha256: str, model_fingerprint: str, tensors: Mapping[str, torch.Tensor], *,
                  source: Optional[str] = None, duration_s: Optional[float] = None) -> None:
        """Cache tensors for these audio bytes and this model; evicts the least recently used beyond cache_entries."""
        key = {"audio_sha256": _check_sha(audio_sha256), "model_fingerprint": _check_fingerprint(model_fingerprint)}
        if self.cache_entries == 0:
            return
        meta = dict(created=time.time(), last_used=0, source=source,  # last_used: set by _put
                    duration_s=None if duration_s is None else float(duration_s))
        self._put("clips", key, meta, tensors, overwrite=True)

    def _evict_clips(self, db: sqlite3.Connection) -> list[str]:
        """Inside _put's transaction: drop the least recently used rows beyond cache_entries."""
        old = db.execute("SELECT file FROM clips ORDER BY last_used DESC LIMIT -1 OFFSET ?",
                         (self.cache_entries,)).fetchall()
        db.executemany("DELETE FROM clips WHERE file = ?", old)
        return [r[0] for r in old]

    def cache_list(self) -> list[ClipRecord]:
        """Cached clips, most recently used first."""
        return [_clip_record(r) for r in self._query(f"SELECT {_CLIP_COLS} FROM clips ORDER BY last_used DESC")]

    def cache_clear(self) -> int:
        with self._write() as db:
            files = [r[0] for r in db.execute("SELECT file FROM clips")]
            db.execute("DELETE FROM clips")
        self._forget(files)
        return len(files)


_CLIP_COLS = "audio_sha256, model_fingerprint, created, last_used, source, duration_s, tensors, file"


def _again(speaker_id: str) -> str:
    return f"`indextts-fast speakers add {speaker_id} AUDIO --overwrite` (API: overwrite=True)"


def _unknown_error(speaker_id: str, ids: list[str], where: object) -> UnknownSpeakerError:
    """The error for an id not registered in `where`; `ids`: up to 11 registered ids, sorted."""
    known = (f"registered ids include: {', '.join(ids[:10])}{', ...' if len(ids) > 10 else ''}" if ids
             else "no speakers are registered")
    return UnknownSpeakerError(f"no speaker {speaker_id!r} in {where}; {known} (list them with {LIST_HINT})")


def _mismatch_error(record: SpeakerRecord, model_fingerprint: str) -> FingerprintMismatchError:
    """The error for asking `record`'s tensors with another model's fingerprint."""
    source = f" ({record.source})" if record.source else ""
    return FingerprintMismatchError(
        f"speaker {record.speaker_id!r} was registered with a different model (fingerprint "
        f"{record.model_fingerprint[:16]}, this model {model_fingerprint[:16]}); its tensors do not fit "
        f"this model. Register it again from its reference audio{source}: {_again(record.speaker_id)}")


def _exists(speaker_id: str) -> SpeakerExistsError:
    return SpeakerExistsError(f"speaker {speaker_id!r} is already registered; pass --overwrite (API: overwrite=True)"
                              " to replace it")


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _speaker_record(row: tuple) -> SpeakerRecord:
    sid, sha, fp, created, source, dur, specs, file = row
    return SpeakerRecord(sid, sha, fp, _utc(created), source, dur, _specs_from_json(specs), file)


def _clip_record(row: tuple) -> ClipRecord:
    sha, fp, created, last_used, source, dur, specs, file = row
    return ClipRecord(sha, fp, _utc(created), last_used, source, dur, _specs_from_json(specs), file)


def open_store(spec: Union[str, os.PathLike, None] = None,
               **options) -> Union[SpeakerStore, "PostgresSpeakerStore"]:
    """The speaker store named by a `--store` value: a ``postgresql://`` or ``postgres://`` URL opens the
    PostgreSQL store (speakers_pg, imported only then; needs psycopg: pip install 'indextts-fast[postgres]'),
    anything else is the folder of a SpeakerStore (None or "": default_store_dir()). `options` go to the
    store's constructor (memory_entries, cache_entries); both stores have the same API and guarantees."""
    if isinstance(spec, str) and spec.strip().lower().startswith(("postgresql://", "postgres://")):
        from .speakers_pg import PostgresSpeakerStore

        return PostgresSpeakerStore(spec.strip(), **options)
    return SpeakerStore(spec or None, **options)


def _use_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Put the index in WAL mode (persistent, so usually it already is: reading the mode takes no lock).
    Switching needs a moment with no other connection in a transaction and SQLite answers "database is
    locked" at once instead of waiting on its busy handler: retried here, for up to `timeout_s`."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)

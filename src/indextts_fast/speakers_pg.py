"""Speaker registry and clip cache in PostgreSQL: speakers.SpeakerStore's API, records, errors and guarantees,
for processes on several machines sharing one store (`open_store("postgresql://user@host/db")`).

Tables, in the connection's search_path, created if missing: `speaker_store_schema` (one row: the schema
version), `speakers` (one row per speaker) and `clips` (one per audio_sha256 + model_fingerprint, with a
store-wide `last_used` counter). A row holds the metadata, `version` (new for every write; records show it as
`file`) and `data`: a bytea with the safetensors serialisation of the tensors, which only reads of tensors fetch.

Crash safety. Every write is one transaction: a writer killed (or a connection lost) at any point leaves the
previous entry or the new one, whole, never a mix of the two.

Concurrency. Any number of connections may write at once. `put` is one `INSERT ... ON CONFLICT`; with
overwrite=False it is `DO NOTHING`, so of racing writers of one id exactly one wins and the others get
SpeakerExistsError. Clip writes and `cache_clear` take a transaction-scoped advisory lock, so the cache never
holds more than cache_entries rows. A deadlock or serialization failure is retried; waiting for a lock longer
than busy_timeout_s is a SpeakerError.

Memory. Recently used entries are kept in a bounded LRU keyed by `version`. A hit costs one small indexed query
(no tensor bytes), which sees overwrites and removals made through other connections, processes or machines.
Returned dicts are fresh, the tensors in them are shared with the LRU: do not modify them in place.

Connections. Each operation borrows a connection of this process from a pool (opening one when none is idle),
so no two threads use one at the same time. After os.fork() the child leaves the inherited connections alone
(closing them would end the parent's sessions) and opens its own.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Optional, TypeVar

import torch
from safetensors.torch import load, save

from .errors import OptionError
from .lru import LRU
from .speakers import (_INHERITED, ClipRecord, SpeakerError, SpeakerRecord, StoreCorruptError, _again,
                       _check_fingerprint, _check_sha, _clip_record, _exists, _mismatch_error, _pause_for_tests,
                       _prepare, _speaker_record, _specs, _specs_from_json, validate_speaker_id, RegistryQueries)

try:
    import psycopg
except ImportError:  # needed only when a PostgreSQL store is opened
    psycopg = None

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS speaker_store_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS speakers (
    speaker_id TEXT PRIMARY KEY, version TEXT NOT NULL UNIQUE,
    audio_sha256 TEXT NOT NULL, model_fingerprint TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
    source TEXT, duration_s DOUBLE PRECISION, tensors TEXT NOT NULL, data BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS clips (
    audio_sha256 TEXT NOT NULL, model_fingerprint TEXT NOT NULL, version TEXT NOT NULL UNIQUE,
    created DOUBLE PRECISION NOT NULL, last_used BIGINT NOT NULL,
    source TEXT, duration_s DOUBLE PRECISION, tensors TEXT NOT NULL, data BYTEA NOT NULL,
    PRIMARY KEY (audio_sha256, model_fingerprint)
);
CREATE INDEX IF NOT EXISTS clips_last_used ON clips (last_used);
CREATE SEQUENCE IF NOT EXISTS clip_uses;
ALTER TABLE speakers ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE clips ALTER COLUMN data SET STORAGE EXTERNAL
"""  # STORAGE EXTERNAL: tensor bytes hardly compress, so PostgreSQL need not try
_SPEAKER_COLS = "speaker_id, audio_sha256, model_fingerprint, created, source, duration_s, tensors, version"
_CLIP_COLS = "audio_sha256, model_fingerprint, created, last_used, source, duration_s, tensors, version"
_KEYS = {"speakers": ("speaker_id",), "clips": ("audio_sha256", "model_fingerprint")}
_SCHEMA_LOCK, _CLIP_LOCK = 0x1D7E_F057_0001, 0x1D7E_F057_0002  # pg_advisory_xact_lock keys (per database)
_RETRIES = 5
_T = TypeVar("_T")


class PostgresSpeakerStore(RegistryQueries):
    """Speaker registry + content-hash clip cache in a PostgreSQL database. Thread-safe; any number of
    processes on any number of machines may share it.

    url: a libpq URL, postgresql://user[:password]@host[:port]/db[?options]; `root` is it without the password.
    memory_entries: entries (speakers and clips together) kept loaded in memory; 0 disables.
    cache_entries: clip entries kept in the database, least recently used evicted first; 0 disables the clip cache.
    busy_timeout_s: how long a write waits for a lock another writer holds. connect_timeout_s: per connection.
    """

    _PH, _COLS = "%s", _SPEAKER_COLS    # RegistryQueries: psycopg's placeholder, the version as `file`

    def __init__(self, url: str, *, memory_entries: int = 32, cache_entries: int = 64, busy_timeout_s: float = 60.0,
                 connect_timeout_s: float = 30.0):
        if memory_entries < 0 or cache_entries < 0:
            raise OptionError(f"memory_entries and cache_entries must be >= 0, got {memory_entries}, {cache_entries}")
        if psycopg is None:
            raise SpeakerError("a PostgreSQL speaker store needs psycopg 3: pip install 'indextts-fast[postgres]'")
        self.url, self.root = url, _redact(url)
        self.memory_entries, self.cache_entries = memory_entries, cache_entries
        self.busy_timeout_s, self.connect_timeout_s = busy_timeout_s, connect_timeout_s
        self._lock = threading.RLock()
        self._memory: LRU = LRU(memory_entries)  # version -> tensors
        self._idle: list = []  # this process's connections not in use
        self._pid = os.getpid()
        version = self._write(_create_schema)
        if version > SCHEMA_VERSION:
            raise SpeakerError(f"the speaker store {self.root} was made by a newer indextts-fast (schema {version})")

    # ---- connections and transactions -------------------------------------------------------------------
    def _connect(self) -> "psycopg.Connection":
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout_s)))
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{round(self.busy_timeout_s * 1000)}ms",))
        except psycopg.Error as e:
            raise SpeakerError(f"cannot connect to the speaker store {self.root}: {e}") from e
        return conn

    @contextmanager
    def _connection(self) -> Iterator["psycopg.Connection"]:
        """A connection for this thread alone until the block ends: an idle one of this process, else a new one.
        It goes back to the pool only when healthy and outside any transaction; else it is closed."""
        if self._pid != os.getpid():  # forked: the pool, and a lock some thread held at the fork, are the parent's
            _INHERITED.extend(self._idle)  # kept unused and never closed (psycopg does not close them in a child)
            self._idle, self._lock, self._pid = [], threading.RLock(), os.getpid()
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        except psycopg.errors.TransactionRollback:
            raise  # deadlock or serialization failure: _write retries
        except psycopg.errors.LockNotAvailable as e:
            raise SpeakerError(f"cannot write to the speaker store {self.root} (busy for more than "
                               f"{self.busy_timeout_s:g} s): {e}") from e
        except psycopg.OperationalError as e:  # connection lost, server shut down, ...
            raise SpeakerError(f"the speaker store {self.root} failed: {e}") from e
        finally:
            if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.close()
            else:
                with self._lock:
                    self._idle.append(conn)

    def _write(self, work: Callable[["psycopg.Connection"], _T]) -> _T:
        """work(conn) in one transaction: all of it is committed, or none of it. Retried when the server reports
        a deadlock or a serialization failure (nothing of the failed try was committed)."""
        attempt = 0
        while True:
            try:
                with self._connection() as conn, conn.transaction():
                    return work(conn)
            except psycopg.errors.TransactionRollback:
                attempt += 1
                if attempt == _RETRIES:
                    raise
                time.sleep(0.02 * 2 ** attempt)

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """One statement, committed on its own: its rows, if it returns any."""
        with self._connection() as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        """Close this process's idle connections and empty the memory; a later call reconnects."""
        with self._lock:
            idle, self._idle = (self._idle, []) if self._pid == os.getpid() else ([], self._idle)
            self._memory.clear()
        for conn in idle:
            conn.close()

    def __enter__(self) -> "PostgresSpeakerStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- entries and memory ------------------------------------------------------------------------------
    def _put(self, table: str, row: dict, tensors: Mapping[str, torch.Tensor], overwrite: bool) -> dict:
        """Write one entry in one transaction: its row and tensors under a new version, replacing the row of the
        same key when `overwrite` (else SpeakerExistsError, even against a racing writer); for a clip, then
        evict the least recently used beyond cache_entries. Returns the row written (its version is new)."""
        prepared = _prepare(tensors)
        key = _KEYS[table]
        version = f"{'spk' if table == 'speakers' else 'clip'}-{uuid.uuid4().hex}"
        header = {"indextts_fast": table, "model_fingerprint": row["model_fingerprint"],
                  "key": "/".join(str(row[k]) for k in key)}  # makes lone bytes self-describing
        row = {**row, "version": version, "data": save(prepared, metadata=header),
               "tensors": json.dumps({k: [v.dtype, list(v.shape)] for k, v in _specs(prepared).items()})}
        columns, values = list(row), ["%s"] * len(row)
        if table == "clips":  # the entry just made is the most recently used
            columns, values = columns + ["last_used"], values + ["nextval('clip_uses')"]
        changes = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
        insert = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(values)}) ON CONFLICT "
                  f"({', '.join(key)}) {f'DO UPDATE SET {changes}' if overwrite else 'DO NOTHING'} RETURNING version")
        where = " AND ".join(f"{k} = %s" for k in key)

        def write(conn: "psycopg.Connection") -> list[str]:
            if table == "clips":
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CLIP_LOCK,))
            old = [r[0] for r in conn.execute(f"SELECT version FROM {table} WHERE {where} FOR UPDATE",
                                              tuple(row[k] for k in key))]
            if (old and not overwrite) or conn.execute(insert, tuple(row.values())).fetchone() is None:
                raise _exists(row["speaker_id"])  # (None: a racing writer's row committed since the SELECT)
            if table == "clips":
                old += [r[0] for r in conn.execute("DELETE FROM clips WHERE version IN (SELECT version FROM clips "
                                                   "ORDER BY last_used DESC OFFSET %s) RETURNING version",
                                                   (self.cache_entries,))]
            _pause_for_tests()
            return old

        dropped = self._write(write)
        self._forget(dropped)
        if version not in dropped:  # (a clip evicted at once when cache_entries is tiny)
            self._remember(version, prepared)
        return row

    def _forget(self, versions: list[str]) -> None:
        with self._lock:
            for v in versions:
                self._memory.pop(v, None)

    def _remember(self, version: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.memory_entries:
            with self._lock:
                self._memory.put(version, tensors)

    def _load(self, table: str, version: str, specs: dict, what: str, hint: str = "") -> Optional[dict]:
        """The entry's tensors from memory, else from its row; None when that version's row is gone."""
        with self._lock:
            hit = self._memory.get_fresh(version)
            if hit is not None:
                return dict(hit)
        with self._connection() as conn:
            data = _fetch(conn, table, version)
        if data is None:
            return None
        try:
            tensors = load(data)
        except Exception as e:  # safetensors raises its own error types for damaged bytes
            raise StoreCorruptError(f"{what}: its tensors in {self.root} cannot be read: {e}{hint}") from e
        if _specs(tensors) != specs:
            raise StoreCorruptError(f"{what}: its data in {self.root} does not hold the tensors its row lists{hint}")
        self._remember(version, tensors)
        return dict(tensors)

    def collect_garbage(self) -> list[str]:
        """Nothing to collect: tensors live in their rows, so nothing can be left unreferenced. Returns []."""
        return []

    # ---- speakers ----------------------------------------------------------------------------------------
    def put(self, speaker_id: str, tensors: Mapping[str, torch.Tensor], *, model_fingerprint: str,
            audio_sha256: str, source: Optional[str] = None, duration_s: Optional[float] = None,
            overwrite: bool = False) -> SpeakerRecord:
        """Register `tensors` (derived from a reference clip) under `speaker_id`."""
        self._check_put(speaker_id, model_fingerprint, audio_sha256, overwrite)   # _put decides races
        row = dict(speaker_id=speaker_id, audio_sha256=audio_sha256, model_fingerprint=model_fingerprint,
                   created=time.time(), source=source, duration_s=None if duration_s is None else float(duration_s))
        written = self._put("speakers", row, tensors, overwrite)
        return _speaker_record(tuple(written[c] for c in _SPEAKER_COLS.split(", ")))

    def get(self, speaker_id: str, model_fingerprint: str) -> dict[str, torch.Tensor]:
        """The speaker's tensors; refuses an entry made by another model (FingerprintMismatchError)."""
        _check_fingerprint(model_fingerprint)
        while True:
            record = self.show(speaker_id)
            if record.model_fingerprint != model_fingerprint:
                raise _mismatch_error(record, model_fingerprint)
            tensors = self._load("speakers", record.file, record.tensors, f"speaker {speaker_id!r}",
                                 f"; register it again: {_again(speaker_id)}")
            if tensors is not None:
                return tensors
            # replaced or removed through another connection between the two queries: look again

    def remove(self, speaker_id: str) -> SpeakerRecord:
        validate_speaker_id(speaker_id)
        rows = self._query(f"DELETE FROM speakers WHERE speaker_id = %s RETURNING {_SPEAKER_COLS}", (speaker_id,))
        if not rows:
            raise self._unknown(speaker_id)
        record = _speaker_record(rows[0])
        self._forget([record.file])
        return record

    # ---- clip cache --------------------------------------------------------------------------------------
    def cache_get(self, audio_sha256: str, model_fingerprint: str) -> Optional[dict[str, torch.Tensor]]:
        """Tensors cached for these audio bytes and this model, or None (then compute and `cache_put`)."""
        key = (_check_sha(audio_sha256), _check_fingerprint(model_fingerprint))
        rows = self._query("UPDATE clips SET last_used = nextval('clip_uses') WHERE audio_sha256 = %s AND "
                           "model_fingerprint = %s RETURNING version, tensors", key)
        if not rows:
            return None
        version, specs = rows[0]
        try:
            tensors = self._load("clips", version, _specs_from_json(specs), f"cached clip {audio_sha256[:12]}")
        except StoreCorruptError:
            tensors = None
        if tensors is None:  # evicted through another connection meanwhile, or damaged: a miss (drop a damaged row)
            self._query("DELETE FROM clips WHERE version = %s", (version,))
            self._forget([version])
        return tensors

    def cache_put(self, audio_sha256: str, model_fingerprint: str, tensors: Mapping[str, torch.Tensor], *,
                  source: Optional[str] = None, duration_s: Optional[float] = None) -> None:
        """Cache tensors for these audio bytes and this model; evicts the least recently used beyond cache_entries."""
        row = dict(audio_sha256=_check_sha(audio_sha256), model_fingerprint=_check_fingerprint(model_fingerprint),
                   created=time.time(), source=source, duration_s=None if duration_s is None else float(duration_s))
        if self.cache_entries:
            self._put("clips", row, tensors, overwrite=True)

    def cache_list(self) -> list[ClipRecord]:
        """Cached clips, most recently used first."""
        return [_clip_record(r) for r in self._query(f"SELECT {_CLIP_COLS} FROM clips ORDER BY last_used DESC")]

    def cache_clear(self) -> int:
        def clear(conn: "psycopg.Connection") -> list[str]:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CLIP_LOCK,))
            return [r[0] for r in conn.execute("DELETE FROM clips RETURNING version")]

        versions = self._write(clear)
        self._forget(versions)
        return len(versions)


def _fetch(conn: "psycopg.Connection", table: str, version: str) -> Optional[bytes]:
    """The one place tensor bytes are read from the database (tests count calls to prove memory hits skip it)."""
    row = conn.execute(f"SELECT data FROM {table} WHERE version = %s", (version,), binary=True).fetchone()
    return None if row is None else bytes(row[0])


def _create_schema(conn: "psycopg.Connection") -> int:
    """In _write's transaction: create the tables if missing (under an advisory lock, so that racing first opens
    are safe; never over tables of the same names made by something else); the schema version of the store."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
    tables = conn.execute("SELECT to_regclass('speaker_store_schema'), to_regclass('speakers'), "
                          "to_regclass('clips')").fetchone()
    if tables[0] is None:
        if any(tables):
            raise SpeakerError(f"database {conn.info.dbname!r} has tables named speakers or clips that indextts-fast "
                               "did not make: use another database, or a schema of its own (?options=-csearch_path%3D"
                               "NAME in the URL)")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute("INSERT INTO speaker_store_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
    return conn.execute("SELECT max(version) FROM speaker_store_schema").fetchone()[0]


def _redact(url: str) -> str:
    """The URL without its password (as messages and `root` show it)."""
    url = re.sub(r"(://[^/@:?]*:)[^/@?]*@", r"\1***@", url)
    return re.sub(r"(?i)\b(password=)[^&\s]*", r"\1***", url)

"""The PostgreSQL speaker store (indextts_fast.speakers_pg) against a real, throwaway PostgreSQL server: the
behaviours tests/test_speakers.py checks for the SQLite store (exact round trips, reopening, the memory LRU,
fingerprint refusal, id rules, the content-hash clip cache, SIGKILLed and racing writers, fork), plus what a
shared database adds: changes made through another store are seen, racing `put`s of one id, `open_store`.

The server: Debian's postgresql binaries (/usr/lib/postgresql/*/bin), initdb'd in a temporary folder and started
with pg_ctl on 127.0.0.1 (a free port, trust auth, fsync off), as the `postgres` OS user when run as root; one
database per test; stopped and deleted at the end of the session. Without the binaries the module is skipped,
saying which package to install.

Run as a script, this file is the writer child: tests/_speaker_writer.py's modes, with ROOT a PostgreSQL URL.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import torch

from indextts_fast import speakers
from indextts_fast.commands import open_store as open_store_from_args
from indextts_fast.errors import OptionError
from indextts_fast.speakers import (PAUSE_ENV, FingerprintMismatchError, SpeakerError, SpeakerExistsError,
                                    SpeakerIdError, SpeakerStore, StoreCorruptError, UnknownSpeakerError, open_store,
                                    sha256_of)
from conftest import free_port as _free_port
from test_speakers import (AUDIO, FP, W, add, assert_same, check_fingerprint_mismatch, check_memory_lru,
                           check_survives_reopening, check_unknown_speaker, posix_only, voice, wait_for_line)

INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
if not INITDB:
    pytest.skip("needs a PostgreSQL server's binaries (/usr/lib/postgresql/*/bin/initdb, pg_ctl): "
                "apt-get install postgresql", allow_module_level=True)
psycopg = pytest.importorskip("psycopg", reason="needs psycopg 3: pip install -e '.[test]' (or 'psycopg[binary]')")
from indextts_fast import speakers_pg  # noqa: E402  (needs psycopg)
from indextts_fast.speakers_pg import PostgresSpeakerStore  # noqa: E402


def sql(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on a connection of its own (the test acting from outside the store)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def url(pg_server) -> str:
    """A fresh, empty database for this test (dropped after it, with any connection left open)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    sql(f"{pg_server}/postgres", f"CREATE DATABASE {name}")
    yield f"{pg_server}/{name}"
    sql(f"{pg_server}/postgres", f"DROP DATABASE {name} WITH (FORCE)")


def calls(monkeypatch, owner, name: str) -> list:
    """Record every call of owner.name (its arguments after the first), then call it."""
    seen, real = [], getattr(owner, name)

    def counting(first, *args, **kw):
        seen.append(args)
        return real(first, *args, **kw)

    monkeypatch.setattr(owner, name, counting)
    return seen


@pytest.fixture
def fetches(monkeypatch) -> list:
    """Every read of tensor bytes from the database, as (table, version)."""
    return calls(monkeypatch, speakers_pg, "_fetch")


@pytest.fixture
def queries(monkeypatch) -> list:
    """Every single-statement query a store makes, as (sql, params)."""
    return calls(monkeypatch, PostgresSpeakerStore, "_query")


def versions(fetched: list) -> list[str]:
    return [version for _table, version in fetched]


# ---- speakers --------------------------------------------------------------------------------------------

def test_round_trip_is_exact_and_private(url):
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8,
              torch.uint8, torch.bool]
    tensors = {str(dt)[6:]: (torch.randn(3, 5) * 100).to(dt) for dt in dtypes}
    tensors |= {"scalar": torch.tensor(-2.5), "empty": torch.ones(2, 0, 4), "strided": torch.randn(6, 4)[::2].t(),
                "extremes": torch.tensor([float("nan"), float("inf"), -0.0, 5e-324], dtype=torch.float64)}
    want = {k: v.clone() for k, v in tensors.items()}
    store = PostgresSpeakerStore(url)
    record = add(store, "alice", tensors, source="alice.wav", duration_s=1.5)
    tensors["float32"].zero_()  # the caller's tensors are not the stored ones
    for got in (store.get("alice", FP), PostgresSpeakerStore(url).get("alice", FP)):  # memory, then database
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            assert torch.equal(got[k].view(-1).view(torch.uint8), want[k].contiguous().view(-1).view(torch.uint8)), k
    assert record == store.show("alice") and record.file.startswith("spk-")
    assert (record.speaker_id, record.audio_sha256, record.model_fingerprint) == ("alice", AUDIO, FP)
    assert record.source == "alice.wav" and record.duration_s == 1.5
    assert record.tensors["bfloat16"] == ("bfloat16", (3, 5)) and record.tensors["strided"] == ("float32", (4, 3))
    assert record.tensors["scalar"].shape == () and record.tensors["empty"].shape == (2, 0, 4)


def test_registry_survives_reopening(url):
    check_survives_reopening(lambda: PostgresSpeakerStore(url))


def test_memory_hit_is_one_query_and_no_tensor_transfer(url, fetches, queries):
    add(PostgresSpeakerStore(url), "alice", voice(1))
    store = PostgresSpeakerStore(url)  # empty memory
    assert_same(store.get("alice", FP), voice(1))
    assert versions(fetches) == [store.show("alice").file]
    sql(url, "UPDATE speakers SET data = '\\x0102'::bytea")  # a hit must not need the bytes
    del queries[:]
    for _ in range(3):
        assert_same(store.get("alice", FP), voice(1))
    assert len(fetches) == 1 and len(queries) == 3  # one small query per hit
    # a fresh store has to read them, and says clearly what is wrong and what to do
    with pytest.raises(StoreCorruptError, match="alice.*cannot be read.*overwrite=True"):
        PostgresSpeakerStore(url).get("alice", FP)


def test_memory_lru_is_bounded(url, fetches):
    check_memory_lru(lambda **kw: PostgresSpeakerStore(url, **kw), lambda: versions(fetches))


def test_writes_go_to_memory(url, fetches):
    store = PostgresSpeakerStore(url)
    add(store, "alice", voice(1))
    assert_same(store.get("alice", FP), voice(1))
    assert fetches == []


def test_fingerprint_mismatch_is_refused(url, fetches):
    check_fingerprint_mismatch(lambda: PostgresSpeakerStore(url))
    fetches.clear()
    store = PostgresSpeakerStore(url)
    with pytest.raises(FingerprintMismatchError):
        store.get("alice", "model-A")
    assert fetches == []  # refused before any tensor is read


def test_unknown_speaker(url):
    check_unknown_speaker(PostgresSpeakerStore(url), where=" in postgresql://")


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".hidden", "-rf", "a b", "nul\0", "é", "x" * 65, None, b"bob"])
def test_bad_ids_are_refused(url, bad):
    store = PostgresSpeakerStore(url)
    for call in (lambda: add(store, bad, voice(1)), lambda: store.get(bad, FP), lambda: store.show(bad),
                 lambda: store.remove(bad)):
        with pytest.raises(SpeakerIdError, match="invalid speaker id.*letters, digits"):
            call()
    assert store.list() == []


def test_bad_arguments_are_refused(url):
    store = PostgresSpeakerStore(url)
    for tensors in ({}, {"a": [1, 2]}, {"": torch.ones(1)}):
        with pytest.raises(OptionError):
            add(store, "alice", tensors)
    with pytest.raises(OptionError, match="audio_sha256"):
        store.put("alice", voice(1), model_fingerprint=FP, audio_sha256="abc")
    with pytest.raises(OptionError, match="model_fingerprint"):
        store.cache_put(AUDIO, "", voice(1))
    with pytest.raises(OptionError):
        PostgresSpeakerStore(url, cache_entries=-1)
    assert store.list() == [] and store.cache_list() == [] and sql(url, "SELECT count(*) FROM speakers") == [(0,)]


def test_overwrite_and_remove_are_seen_by_other_stores(url, fetches):
    """Two stores on one database stand for two machines: memory never serves a replaced or removed entry."""
    mine, theirs = PostgresSpeakerStore(url), PostgresSpeakerStore(url)
    first = add(mine, "alice", voice(1))
    assert_same(theirs.get("alice", FP), voice(1))  # now in their memory
    with pytest.raises(SpeakerExistsError, match="'alice'.*overwrite=True"):
        add(theirs, "alice", voice(2))
    assert theirs.show("alice") == first
    second = add(mine, "alice", voice(2), overwrite=True)
    assert second.file != first.file
    assert_same(theirs.get("alice", FP), voice(2))  # not the old tensors still in their memory
    assert_same(mine.get("alice", FP), voice(2))
    assert versions(fetches) == [first.file, second.file]
    assert theirs.remove("alice") == second and mine.list() == []
    with pytest.raises(UnknownSpeakerError):
        mine.get("alice", FP)
    assert sql(url, "SELECT count(*) FROM speakers") == [(0,)]


def test_racing_puts_of_one_id_have_one_winner(url):
    """Writers on their own connections register the same ids at the same moment: each id gets exactly one."""
    stores = [PostgresSpeakerStore(url) for _ in range(4)]
    start, outcomes = threading.Barrier(len(stores)), []

    def race(n: int) -> None:
        start.wait()
        for i in range(8):
            try:
                add(stores[n], f"id{i}", voice(100 * n + i))
                outcomes.append((i, n))
            except SpeakerExistsError:
                pass

    threads = [threading.Thread(target=race, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = dict(outcomes)
    assert sorted(i for i, _ in outcomes) == list(range(8))  # one winner per id
    for i, n in winners.items():
        assert_same(stores[(n + 1) % len(stores)].get(f"id{i}", FP), voice(100 * n + i))


# ---- crashes, races and concurrency ----------------------------------------------------------------------

def spawn(*args, env: dict | None = None) -> subprocess.Popen:
    """This file as the writer child (tests/_speaker_writer.py's modes on the PostgreSQL store)."""
    return subprocess.Popen([sys.executable, __file__, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def check_consistent(url: str, numel: int) -> PostgresSpeakerStore:
    """Every listed speaker and cached clip loads and is exactly what the writer wrote for its seed."""
    store = PostgresSpeakerStore(url)
    clips = store.cache_list()
    assert len(clips) <= 2
    loaded = [(r.speaker_id, store.get(r.speaker_id, FP)) for r in store.list()]
    loaded += [(c.audio_sha256, store.cache_get(c.audio_sha256, FP)) for c in clips]
    for key, tensors in loaded:
        seed = int(tensors["seed"])
        assert key in (f"k{seed % 3}", W.clip_sha(seed))
        assert_same(tensors, W.entry(numel, seed))
    return store


def check_consistent_entries(url: str, want: dict[str, int]) -> PostgresSpeakerStore:
    """Exactly the speakers `want` lists (id -> seed), each as written; each cached clip as written."""
    store = PostgresSpeakerStore(url)
    assert [r.speaker_id for r in store.list()] == sorted(want)
    for speaker_id, seed in want.items():
        assert_same(store.get(speaker_id, FP), W.entry(1000, seed))
    seeds = {W.clip_sha(s): s for s in want.values()}
    for clip in store.cache_list():
        assert_same(store.cache_get(clip.audio_sha256, FP), W.entry(1000, seeds[clip.audio_sha256]))
    return store


@posix_only
def test_kill_before_commit_keeps_previous_entry(url):
    add(PostgresSpeakerStore(url), "big", W.entry(1000, 1))
    proc = spawn("overwrite", url, "big", 2_000_000, 2, env={PAUSE_ENV: "120"})
    wait_for_line(proc, proc.stderr, "paused before commit")
    reader = PostgresSpeakerStore(url)  # while the writer holds the row: readers see the old entry, unblocked
    assert_same(reader.get("big", FP), W.entry(1000, 1))
    kill(proc)
    store = PostgresSpeakerStore(url)
    assert [r.speaker_id for r in store.list()] == ["big"] and store.show("big") == reader.show("big")
    assert_same(store.get("big", FP), W.entry(1000, 1))
    add(store, "big", voice(3), overwrite=True)  # the killed writer's lock is gone
    assert_same(reader.get("big", FP), voice(3))


def _try(call):
    """call(), or the SpeakerError it raised."""
    try:
        return call()
    except SpeakerError as e:
        return e


@posix_only
@pytest.mark.parametrize("writer_ends", ["commits", "is killed"])
def test_put_racing_an_uncommitted_writer(url, writer_ends):
    """put(overwrite=False) waits for a writer's uncommitted row of the same id: SpeakerExistsError if it
    commits, success if it dies."""
    proc = spawn("overwrite", url, "race", 1000, 2, env={PAUSE_ENV: "4" if writer_ends == "commits" else "120"})
    wait_for_line(proc, proc.stderr, "paused before commit")
    store = PostgresSpeakerStore(url)
    assert store.list() == []  # not committed yet
    outcome = []
    racer = threading.Thread(target=lambda: outcome.append(_try(lambda: add(store, "race", voice(9)))))
    racer.start()
    racer.join(1.0)
    assert racer.is_alive(), f"put did not wait for the writer's row: {outcome}"
    if writer_ends == "commits":
        assert proc.wait(60) == 0
    else:
        kill(proc)
    racer.join(60)
    winner = W.entry(1000, 2) if writer_ends == "commits" else voice(9)
    assert isinstance(outcome[0], SpeakerExistsError if writer_ends == "commits" else speakers.SpeakerRecord)
    assert_same(PostgresSpeakerStore(url).get("race", FP), winner)


@posix_only
def test_clip_bound_holds_against_an_uncommitted_writer(url, tmp_path):
    """A clip write waits for another's uncommitted one, so between them they keep cache_entries, not one more."""
    store = PostgresSpeakerStore(url, cache_entries=2)  # (as the writer's)
    for seed in (1, 2):
        store.cache_put(W.clip_sha(seed), FP, W.entry(1000, seed))
    (tmp_path / "go").touch()
    proc = spawn("add", url, "late", 1, tmp_path / "go", env={PAUSE_ENV: "2"})
    for _ in range(2):  # its speaker, then its clip (which has evicted seed 1), each paused before commit
        wait_for_line(proc, proc.stderr, "paused before commit")
    racer = threading.Thread(target=store.cache_put, args=(W.clip_sha(3), FP, W.entry(1000, 3)))
    racer.start()
    assert proc.wait(60) == 0
    racer.join(60)
    assert [c.audio_sha256 for c in store.cache_list()] == [W.clip_sha(3), W.clip_sha(W.add_seed("late", 0))]


@posix_only
def test_kill_at_random_points_leaves_a_consistent_store(url):
    numel = 1_000_000
    for delay in (0.0, 0.1, 0.4, 0.8):
        proc = spawn("churn", url, numel)
        wait_for_line(proc, proc.stdout, "ready")
        time.sleep(delay)
        kill(proc)
        check_consistent(url, numel)
    assert PostgresSpeakerStore(url).list(), "no writer got as far as one commit"


def test_concurrent_writer_processes(url, tmp_path):
    go, count = tmp_path / "go", 6
    procs = [spawn("add", url, prefix, count, go) for prefix in ("alpha", "beta")]
    for proc in procs:
        wait_for_line(proc, proc.stdout, "ready")
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    store = check_consistent_entries(url, {f"{p}-{i}": W.add_seed(p, i) for p in ("alpha", "beta") for i in range(count)})
    assert len(store.cache_list()) == 2  # the bound holds under racing clip writers


def test_threads_share_a_store(url):
    store = PostgresSpeakerStore(url, memory_entries=4)
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                add(store, f"t{n}-{i}", voice(10 * n + i))
                store.cache_put(sha256_of(bytes([n, i])), FP, voice(i))
                assert_same(store.get(f"t{n}-{(i + 1) // 2}", FP), voice(10 * n + (i + 1) // 2))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(store.list()) == 20 and len(store.cache_list()) == 20


def backend(store: PostgresSpeakerStore) -> int:
    """The server process serving the store's (pooled) connection."""
    return store._query("SELECT pg_backend_pid()")[0][0]


def _add_in_child(store: PostgresSpeakerStore) -> None:
    add(store, "child", voice(7), source=f"backend {backend(store)}")
    store.close()  # closes the child's own connection: the parent's session must live on


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_store_used_across_fork(url):
    """A forked child opens its own connection (the inherited one stays the parent's, and keeps working)."""
    store = PostgresSpeakerStore(url)
    add(store, "parent", voice(6))
    mine = backend(store)
    child = multiprocessing.get_context("fork").Process(target=_add_in_child, args=(store,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert store.show("child").source != f"backend {mine}" and backend(store) == mine
    assert [r.speaker_id for r in store.list()] == ["child", "parent"]
    assert_same(store.get("child", FP), voice(7))
    add(store, "after", voice(8))
    assert_same(PostgresSpeakerStore(url).get("after", FP), voice(8))


# ---- clip cache --------------------------------------------------------------------------------------------

def test_clip_cache_by_content(url, tmp_path, fetches):
    a, a_copy, b = tmp_path / "a.wav", tmp_path / "copy of a.wav", tmp_path / "b.wav"
    a.write_bytes(b"RIFF voice a")
    a_copy.write_bytes(b"RIFF voice a")
    b.write_bytes(b"RIFF voice b")
    sha_a, sha_b = sha256_of(a), sha256_of(b)
    store = PostgresSpeakerStore(url, cache_entries=2)
    assert store.cache_get(sha_a, FP) is None
    store.cache_put(sha_a, FP, voice(1), source="a.wav", duration_s=2.0)
    store.cache_put(sha_b, FP, voice(2))
    assert_same(store.cache_get(sha256_of(a_copy), FP), voice(1))  # same bytes, another path
    for _ in range(3):  # alternating voices stay cached (and in memory: no tensor transfer)
        assert_same(store.cache_get(sha_a, FP), voice(1))
        assert_same(store.cache_get(sha_b, FP), voice(2))
    assert fetches == [] and store.cache_get(sha_a, "other-model") is None  # another model never gets them
    a.write_bytes(b"RIFF voice a, edited")  # an edited file is a miss, then recomputed
    sha_edited = sha256_of(a)
    assert store.cache_get(sha_edited, FP) is None
    store.cache_put(sha_edited, FP, voice(3))  # b was used last before that: the old a is evicted
    assert [c.audio_sha256 for c in store.cache_list()] == [sha_edited, sha_b]
    assert store.cache_get(sha_a, FP) is None and sql(url, "SELECT count(*) FROM clips") == [(2,)]
    again = PostgresSpeakerStore(url, cache_entries=2)  # survives reopening, with its use order
    assert_same(again.cache_get(sha_edited, FP), voice(3))
    assert_same(again.cache_get(sha_b, FP), voice(2))
    again.cache_put(sha_a, FP, voice(1), source="a.wav")
    clips = again.cache_list()
    assert [c.audio_sha256 for c in clips] == [sha_a, sha_b] and clips[0].last_used > clips[1].last_used
    assert clips[0].tensors == speakers._specs(voice(1)) and clips[0].source == "a.wav"
    assert again.cache_clear() == 2 and again.cache_list() == [] and again.cache_get(sha_b, FP) is None


def test_clip_cache_and_speakers_are_separate(url):
    store = PostgresSpeakerStore(url, cache_entries=1)
    add(store, "alice", voice(1))
    for seed in range(3):
        store.cache_put(sha256_of(bytes([seed])), FP, voice(seed))
    assert [r.speaker_id for r in store.list()] == ["alice"] and len(store.cache_list()) == 1
    off = PostgresSpeakerStore(url, cache_entries=0)
    off.cache_put(AUDIO, FP, voice(1))
    assert off.cache_get(AUDIO, FP) is None


def test_damaged_clip_is_a_miss(url):
    PostgresSpeakerStore(url).cache_put(AUDIO, FP, voice(1))
    sql(url, "UPDATE clips SET data = 'not safetensors'::bytea")
    fresh = PostgresSpeakerStore(url)
    assert fresh.cache_get(AUDIO, FP) is None and fresh.cache_list() == []


# ---- opening -----------------------------------------------------------------------------------------------

def test_open_store_picks_the_backend(url, tmp_path, monkeypatch):
    password_url = url.replace("postgres@", "postgres:s3cret@")  # (trust auth ignores it)
    for spec in (url, url.replace("postgresql://", "postgres://"), password_url):
        store = open_store(spec, memory_entries=3)
        assert isinstance(store, PostgresSpeakerStore) and store.memory_entries == 3
    assert "s3cret" not in store.root and "postgres:***@" in store.root
    add(store, "alice", voice(1))
    with pytest.raises(UnknownSpeakerError) as e:
        store.show("bob")
    assert "s3cret" not in str(e.value)
    assert isinstance(open_store_from_args(argparse.Namespace(store=url)), PostgresSpeakerStore)
    folder = open_store(tmp_path / "folder")
    assert isinstance(folder, SpeakerStore) and folder.root == tmp_path / "folder"
    assert open_store(str(tmp_path / "f2"), cache_entries=5).cache_entries == 5
    monkeypatch.setenv(speakers.HOME_ENV, str(tmp_path / "home"))
    for spec in (None, ""):
        assert open_store(spec).root == tmp_path / "home"
    assert open_store_from_args(argparse.Namespace(store=None)).root == tmp_path / "home"
    public = {n for n in dir(SpeakerStore) if not n.startswith("_")}
    assert public <= set(dir(PostgresSpeakerStore))  # the same API


def test_connection_and_schema_errors_are_clear(url):
    closed = f"postgresql://postgres@127.0.0.1:{_free_port()}/nothing"
    with pytest.raises(SpeakerError, match="cannot connect to the speaker store postgresql://postgres@127"):
        open_store(closed)
    PostgresSpeakerStore(url)
    sql(url, "UPDATE speaker_store_schema SET version = 99")
    with pytest.raises(SpeakerError, match="newer indextts-fast"):
        PostgresSpeakerStore(url)
    sql(url, "DROP TABLE speaker_store_schema, speakers, clips")
    sql(url, "CREATE TABLE clips (id INTEGER)")  # someone else's: never used, never cleared
    with pytest.raises(SpeakerError, match="tables named speakers or clips that indextts-fast did not make"):
        PostgresSpeakerStore(url)
    assert sql(url, "SELECT to_regclass('speakers')") == [(None,)]


if __name__ == "__main__":  # the writer child: the modes of tests/_speaker_writer.py, on the PostgreSQL store
    speakers.SpeakerStore = speakers.open_store  # it opens SpeakerStore(ROOT, cache_entries=2): ROOT is a URL
    W.main(*sys.argv[1:])

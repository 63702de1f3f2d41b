"""Speaker registry and clip cache (indextts_fast.speakers): exact round trips, restarts, memory LRU,
fingerprint refusal, id rules, content-hash cache, and consistency after a writer is SIGKILLed or raced."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from indextts_fast import speakers
from indextts_fast.errors import IndexTTSFastError, OptionError
from indextts_fast.speakers import (PAUSE_ENV, FingerprintMismatchError, SpeakerExistsError, SpeakerIdError,
                                    SpeakerStore, StoreCorruptError, UnknownSpeakerError, default_store_dir, sha256_of)

WRITER = Path(__file__).with_name("_speaker_writer.py")
_spec = importlib.util.spec_from_file_location("_speaker_writer", WRITER)
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

FP = W.FINGERPRINT
AUDIO = sha256_of(b"reference audio")
posix_only = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")


def voice(seed: int) -> dict[str, torch.Tensor]:
    """A small entry shaped like the pipeline's: named tensors of several dtypes."""
    g = torch.Generator().manual_seed(seed)
    return {"spk_cond_emb": torch.randn(1, 7, 12, generator=g), "prompt_mel": torch.randn(1, 8, 5, generator=g),
            "style": torch.randn(1, 4, generator=g).to(torch.bfloat16),
            "prompt_codes": torch.randint(0, 100, (1, 5), generator=g)}


def add(store: SpeakerStore, speaker_id: str, tensors, fp: str = FP, **kw):
    return store.put(speaker_id, tensors, model_fingerprint=fp, audio_sha256=AUDIO, **kw)


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


def tensor_files(root: Path) -> set[str]:
    return {p.name for p in (root / speakers.TENSOR_DIR).iterdir()}


def referenced_files(store: SpeakerStore) -> set[str]:
    return {r.file for r in store.list()} | {c.file for c in store.cache_list()}


@pytest.fixture
def reads(monkeypatch) -> list:
    """Every tensor-file read, as the list of paths read."""
    seen = []
    real = speakers._read_tensors

    def counting(path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(speakers, "_read_tensors", counting)
    return seen


# ---- speakers --------------------------------------------------------------------------------------------

def test_round_trip_is_exact_and_private(tmp_path):
    tensors = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 2).bfloat16(),
               "f64": torch.randn(2).double(), "i64": torch.tensor([-(2**40), 7]),
               "i8": torch.tensor([-3, 4], dtype=torch.int8),
               "u8": torch.tensor([0, 255], dtype=torch.uint8), "b": torch.tensor([True, False]),
               "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3), "transposed": torch.randn(4, 6).t(),
               "special": torch.tensor([float("-inf"), float("inf"), -0.0, 1e-45])}
    want = {k: v.clone() for k, v in tensors.items()}
    store = SpeakerStore(tmp_path)
    record = add(store, "alice", tensors, source="alice.wav", duration_s=3.25)
    tensors["f32"].zero_()  # the caller's tensors are not the stored ones
    assert_same(store.get("alice", FP), want)
    assert_same(SpeakerStore(tmp_path).get("alice", FP), want)  # from disk, too
    assert record.speaker_id == "alice" and record.audio_sha256 == AUDIO and record.model_fingerprint == FP
    assert record.source == "alice.wav" and record.duration_s == 3.25
    assert record.tensors["transposed"] == ("float32", (6, 4)) and record.tensors["scalar"] == ("float32", ())
    assert record.tensors["bf16"].dtype == "bfloat16" and record.tensors["empty"].shape == (0, 3)
    assert record.to_dict()["tensors"]["i64"] == {"dtype": "int64", "shape": [2]}


def check_survives_reopening(open_store) -> None:
    """What one store instance wrote, a new one (a restart, another process) lists, shows and reads."""
    with open_store() as store:
        add(store, "bob", voice(1), source="b.wav")
        add(store, "alice", voice(2))
        before = store.list()
    again = open_store()
    assert again.list() == before and [r.speaker_id for r in before] == ["alice", "bob"]
    assert again.show("bob") == before[1]
    assert_same(again.get("bob", FP), voice(1))
    assert_same(again.get("alice", FP), voice(2))


def test_registry_survives_restart(tmp_path):
    check_survives_reopening(lambda: SpeakerStore(tmp_path))


def test_memory_hit_reads_nothing(tmp_path, reads):
    add(SpeakerStore(tmp_path), "alice", voice(1))
    store = SpeakerStore(tmp_path)  # empty memory
    assert_same(store.get("alice", FP), voice(1))
    assert len(reads) == 1
    (tmp_path / speakers.TENSOR_DIR / store.show("alice").file).unlink()  # a hit must not need the file
    for _ in range(3):
        assert_same(store.get("alice", FP), voice(1))
    assert len(reads) == 1
    # a fresh store has to read it, and says clearly that it is gone
    with pytest.raises(StoreCorruptError, match="alice.*missing.*overwrite=True"):
        SpeakerStore(tmp_path).get("alice", FP)


def check_memory_lru(open_store, loaded) -> None:
    """The memory LRU holds `memory_entries` entries, evicts the least recently used, 0 disables it (shared with
    the PostgreSQL store's tests). open_store(**options) opens the registry; loaded() lists the entries read so
    far (as their record `file`)."""
    with open_store() as store:
        for i, sid in enumerate("abc"):
            add(store, sid, voice(i))
    store = open_store(memory_entries=2)
    files = {sid: store.show(sid).file for sid in "abc"}
    for sid in "abc":
        store.get(sid, FP)
    assert loaded() == [files[s] for s in "abc"] and len(store._memory) == 2
    store.get("c", FP), store.get("b", FP)  # both held
    assert len(loaded()) == 3
    store.get("a", FP)  # evicted; reloading it evicts c, the least recently used
    store.get("b", FP)
    store.get("c", FP)
    assert loaded()[3:] == [files["a"], files["c"]] and len(store._memory) == 2
    nomem = open_store(memory_entries=0)
    nomem.get("a", FP), nomem.get("a", FP)
    assert loaded()[5:] == [files["a"]] * 2


def test_memory_lru_is_bounded(tmp_path, reads):
    check_memory_lru(lambda **kw: SpeakerStore(tmp_path, **kw), lambda: reads)


def test_writes_go_to_memory(tmp_path, reads):
    store = SpeakerStore(tmp_path)
    add(store, "alice", voice(1))
    assert_same(store.get("alice", FP), voice(1))
    assert reads == []


def check_fingerprint_mismatch(open_store) -> None:
    """An entry made by another model is refused (by this store and a fresh one on the same registry) until it is
    registered again (shared by the SQLite and the PostgreSQL store tests; `open_store()` opens the registry)."""
    store = open_store()
    add(store, "alice", voice(1), fp="model-A", source="alice.wav")
    with pytest.raises(FingerprintMismatchError,
                       match=r"'alice'.*different model.*alice\.wav.*speakers add alice AUDIO --overwrite"):
        store.get("alice", "model-B")
    with pytest.raises(FingerprintMismatchError):
        open_store().get("alice", "model-B")  # refused before any tensor is read
    add(store, "alice", voice(2), fp="model-B", overwrite=True)  # re-registering is the cure
    assert_same(store.get("alice", "model-B"), voice(2))
    with pytest.raises(FingerprintMismatchError):
        store.get("alice", "model-A")


def check_unknown_speaker(store, where: str = "") -> None:
    """An unknown id, in an empty registry and among others (named, with how to list them); `where`: a pattern
    the message must show between the id and the ids."""
    with pytest.raises(UnknownSpeakerError, match=r"'carol'.*no speakers are registered.*speakers list"):
        store.get("carol", FP)
    add(store, "alice", voice(1))
    add(store, "bob", voice(2))
    for call in (lambda: store.get("carol", FP), lambda: store.show("carol"), lambda: store.remove("carol")):
        with pytest.raises(UnknownSpeakerError, match=rf"no speaker 'carol'{where}.*alice, bob.*list them") as e:
            call()
        assert isinstance(e.value, IndexTTSFastError) and isinstance(e.value, LookupError)


def test_fingerprint_mismatch_is_refused(tmp_path):
    check_fingerprint_mismatch(lambda: SpeakerStore(tmp_path))


def test_unknown_speaker(tmp_path):
    check_unknown_speaker(SpeakerStore(tmp_path))


@pytest.mark.parametrize("bad", ["", "a/b", "a\\b", "../x", ".", "..", ".hidden", "-rf", "a b", "tab\t", "nul\0",
                                 "é", "x" * 65, "a:b", None, 7, b"alice"])
def test_bad_ids_are_refused(tmp_path, bad):
    store = SpeakerStore(tmp_path)
    for call in (lambda: add(store, bad, voice(1)), lambda: store.get(bad, FP), lambda: store.show(bad),
                 lambda: store.remove(bad)):
        with pytest.raises(SpeakerIdError, match="invalid speaker id.*letters, digits") as e:
            call()
        assert isinstance(e.value, ValueError)
    assert store.list() == [] and tensor_files(tmp_path) == set()


@pytest.mark.parametrize("good", ["a", "A-b_c.1", "_x", "0", "x" * 64, "voice.v2"])
def test_good_ids(tmp_path, good):
    store = SpeakerStore(tmp_path)
    add(store, good, voice(1))
    assert_same(SpeakerStore(tmp_path).get(good, FP), voice(1))


def test_bad_arguments(tmp_path):
    store = SpeakerStore(tmp_path)
    for tensors in ({}, {"a": [1, 2]}, {"": torch.ones(1)}, [torch.ones(1)]):
        with pytest.raises(OptionError):
            add(store, "alice", tensors)
    with pytest.raises(OptionError, match="audio_sha256"):
        store.put("alice", voice(1), model_fingerprint=FP, audio_sha256="abc")
    with pytest.raises(OptionError, match="model_fingerprint"):
        store.put("alice", voice(1), model_fingerprint="", audio_sha256=AUDIO)
    with pytest.raises(OptionError):
        SpeakerStore(tmp_path, memory_entries=-1)
    assert store.list() == [] and tensor_files(tmp_path) == set()


def test_overwrite_and_remove(tmp_path):
    store = SpeakerStore(tmp_path)
    add(store, "alice", voice(1))
    first = store.show("alice")
    with pytest.raises(SpeakerExistsError, match="'alice'.*overwrite=True"):
        add(store, "alice", voice(2))
    assert store.show("alice") == first and tensor_files(tmp_path) == {first.file}  # nothing written
    assert_same(store.get("alice", FP), voice(1))
    second = add(store, "alice", voice(2), overwrite=True)
    assert second.file != first.file and tensor_files(tmp_path) == {second.file}  # old file deleted
    assert_same(store.get("alice", FP), voice(2))  # not the old tensors still in memory
    assert_same(SpeakerStore(tmp_path).get("alice", FP), voice(2))
    assert store.remove("alice") == second
    assert store.list() == [] and tensor_files(tmp_path) == set()
    with pytest.raises(UnknownSpeakerError):
        store.get("alice", FP)


def test_other_processes_changes_are_seen(tmp_path):
    """Two SpeakerStore objects on one folder stand for two processes: memory never serves a replaced entry."""
    mine, theirs = SpeakerStore(tmp_path), SpeakerStore(tmp_path)
    add(mine, "alice", voice(1))
    assert_same(mine.get("alice", FP), voice(1))
    add(theirs, "alice", voice(2), overwrite=True)
    assert_same(mine.get("alice", FP), voice(2))
    theirs.remove("alice")
    with pytest.raises(UnknownSpeakerError):
        mine.get("alice", FP)


def test_orphans_are_cleaned_and_foreign_files_kept(tmp_path):
    store = SpeakerStore(tmp_path)
    add(store, "alice", voice(1))
    kept = store.show("alice").file
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tensors = tmp_path / speakers.TENSOR_DIR
    orphan = tensors / ("spk-" + "0" * 32 + ".safetensors")
    dead_temp = tensors / f".tmp-{int(dead.stdout)}-{'1' * 32}.safetensors"
    live_temp = tensors / f".tmp-{os.getpid()}-{'2' * 32}.safetensors"  # a writer still at work
    for p in (orphan, dead_temp, live_temp, tensors / "notes.txt"):
        p.write_bytes(b"partial")
    SpeakerStore(tmp_path)
    assert tensor_files(tmp_path) == {kept, live_temp.name, "notes.txt"}


def test_damaged_index_is_a_clear_error(tmp_path):
    (tmp_path / speakers.DB_NAME).write_bytes(b"not a database" * 100)
    with pytest.raises(speakers.SpeakerError, match="not a usable speaker index"):
        SpeakerStore(tmp_path)


def test_default_store_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("INDEXTTS_FAST_HOME", str(tmp_path / "home"))
    assert default_store_dir() == tmp_path / "home"
    assert SpeakerStore().root == tmp_path / "home"
    monkeypatch.delenv("INDEXTTS_FAST_HOME")
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert default_store_dir() == tmp_path / "xdg" / "indextts-fast"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert default_store_dir() == Path.home() / ".cache" / "indextts-fast"


# ---- clip cache ------------------------------------------------------------------------------------------

def test_clip_cache_by_content(tmp_path, reads):
    a, b, a_copy = tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "copy of a.wav"
    a.write_bytes(b"RIFF voice a")
    b.write_bytes(b"RIFF voice b")
    a_copy.write_bytes(a.read_bytes())
    store = SpeakerStore(tmp_path / "store", cache_entries=2)
    sha_a, sha_b = sha256_of(a), sha256_of(b)
    assert sha_a == sha256_of(a.read_bytes()) == sha256_of(a_copy) != sha_b
    assert store.cache_get(sha_a, FP) is None
    store.cache_put(sha_a, FP, voice(1), source="a.wav", duration_s=2.0)
    store.cache_put(sha_b, FP, voice(2))
    assert_same(store.cache_get(sha256_of(a_copy), FP), voice(1))  # same bytes, another path
    for _ in range(3):  # alternating voices stay cached (and in memory: no reads)
        assert_same(store.cache_get(sha_a, FP), voice(1))
        assert_same(store.cache_get(sha_b, FP), voice(2))
    assert reads == []
    assert store.cache_get(sha_a, "other-model") is None  # another model never gets them
    a.write_bytes(b"RIFF voice a, edited")  # an edited file is a miss, then recomputed
    sha_edited = sha256_of(a)
    assert store.cache_get(sha_edited, FP) is None
    store.cache_put(sha_edited, FP, voice(3))  # b was used last before that: the old a is evicted
    assert [c.audio_sha256 for c in store.cache_list()] == [sha_edited, sha_b]
    assert store.cache_get(sha_a, FP) is None
    assert len(tensor_files(tmp_path / "store")) == 2  # bounded on disk
    again = SpeakerStore(tmp_path / "store", cache_entries=2)  # survives a restart, with its use order
    assert_same(again.cache_get(sha_edited, FP), voice(3))
    assert_same(again.cache_get(sha_b, FP), voice(2))
    again.cache_put(sha_a, FP, voice(1))
    assert [c.audio_sha256 for c in again.cache_list()] == [sha_a, sha_b]
    record = again.cache_list()[0]
    assert record.tensors == {k: speakers.TensorSpec(str(v.dtype)[6:], tuple(v.shape)) for k, v in voice(1).items()}
    assert again.cache_clear() == 2 and again.cache_list() == [] and tensor_files(tmp_path / "store") == set()


def test_clip_cache_and_speakers_are_separate(tmp_path):
    store = SpeakerStore(tmp_path, cache_entries=1)
    add(store, "alice", voice(1))
    for seed in range(3):
        store.cache_put(sha256_of(bytes([seed])), FP, voice(seed))
    assert [r.speaker_id for r in store.list()] == ["alice"] and len(store.cache_list()) == 1
    assert len(tensor_files(tmp_path)) == 2
    off = SpeakerStore(tmp_path / "off", cache_entries=0)
    off.cache_put(AUDIO, FP, voice(1))
    assert off.cache_get(AUDIO, FP) is None


def test_clip_cache_missing_file_is_a_miss(tmp_path):
    store = SpeakerStore(tmp_path)
    store.cache_put(AUDIO, FP, voice(1))
    (tmp_path / speakers.TENSOR_DIR / store.cache_list()[0].file).unlink()
    fresh = SpeakerStore(tmp_path)
    assert fresh.cache_get(AUDIO, FP) is None and fresh.cache_list() == []


# ---- crashes and concurrency -----------------------------------------------------------------------------

def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WRITER), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def wait_for_line(proc: subprocess.Popen, stream, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([stream], [], [], deadline - time.monotonic())[0]:
            line = stream.readline()
            if text in line:
                return
            if not line:
                break
    proc.kill()
    pytest.fail(f"child never printed {text!r}: {proc.communicate()}")


def check_consistent(root: Path, numel: int) -> SpeakerStore:
    """Every listed entry loads and is exactly what the writer wrote for it; no unreferenced files remain."""
    store = SpeakerStore(root)
    for record in store.list():
        tensors = store.get(record.speaker_id, FP)
        seed = int(tensors["seed"])
        assert record.speaker_id == f"k{seed % 3}"
        assert_same(tensors, W.entry(numel, seed))
    clips = store.cache_list()
    assert len(clips) <= 2
    for clip in clips:
        tensors = store.cache_get(clip.audio_sha256, FP)
        seed = int(tensors["seed"])
        assert clip.audio_sha256 == W.clip_sha(seed)
        assert_same(tensors, W.entry(numel, seed))
    assert tensor_files(root) == referenced_files(store)
    return store


@posix_only
def test_kill_between_file_and_commit_keeps_previous_entry(tmp_path):
    add(SpeakerStore(tmp_path), "big", W.entry(1000, 1))
    proc = spawn("overwrite", tmp_path, "big", 2_000_000, 2, env={PAUSE_ENV: "120"})
    wait_for_line(proc, proc.stderr, "paused before commit")
    assert len(tensor_files(tmp_path)) == 2  # the new file is in place, its row not committed
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    store = SpeakerStore(tmp_path)
    assert [r.speaker_id for r in store.list()] == ["big"]
    assert_same(store.get("big", FP), W.entry(1000, 1))
    assert tensor_files(tmp_path) == {store.show("big").file}  # the orphan is gone


@posix_only
def test_kill_at_random_points_leaves_a_consistent_store(tmp_path):
    numel = 1_000_000
    for delay in (0.0, 0.05, 0.15, 0.3, 0.6):
        proc = spawn("churn", tmp_path, numel)
        wait_for_line(proc, proc.stdout, "ready")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, proc.stderr.read()
        check_consistent(tmp_path, numel)
    assert SpeakerStore(tmp_path).list(), "no writer got as far as one commit"


def test_concurrent_writers(tmp_path):
    go, count = tmp_path / "go", 6
    procs = [spawn("add", tmp_path / "store", prefix, count, go) for prefix in ("alpha", "beta")]
    for proc in procs:
        wait_for_line(proc, proc.stdout, "ready")
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    store = SpeakerStore(tmp_path / "store")
    want = {f"{p}-{i}": W.add_seed(p, i) for p in ("alpha", "beta") for i in range(count)}
    assert [r.speaker_id for r in store.list()] == sorted(want)
    for speaker_id, seed in want.items():
        assert_same(store.get(speaker_id, FP), W.entry(1000, seed))
    clips = store.cache_list()
    assert len(clips) == 2
    seeds = {W.clip_sha(s): s for s in want.values()}
    for clip in clips:
        assert_same(store.cache_get(clip.audio_sha256, FP), W.entry(1000, seeds[clip.audio_sha256]))
    assert tensor_files(tmp_path / "store") == referenced_files(store)


def _add_in_child(store: SpeakerStore) -> None:
    add(store, "child", voice(7))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_store_used_across_fork(tmp_path):
    """A forked child opens its own connection (an inherited one must not be used) and its write is seen."""
    store = SpeakerStore(tmp_path)
    add(store, "parent", voice(6))
    child = multiprocessing.get_context("fork").Process(target=_add_in_child, args=(store,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert [r.speaker_id for r in store.list()] == ["child", "parent"]
    assert_same(store.get("child", FP), voice(7))
    add(store, "after", voice(8))
    assert_same(SpeakerStore(tmp_path).get("after", FP), voice(8))

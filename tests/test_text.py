"""Text front end: golden parity over the public text set, refusals, hash-seed independence, warnings."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings

import pytest

from indextts_fast.errors import ModelFolderError, OptionError
from indextts_fast.text import TextFrontEnd, UnknownTokensWarning, split_segments
from indextts_fast.text.pyhash import set_order_seed0, str_hash_seed0


@pytest.fixture(scope="module")
def front(assets_dir) -> TextFrontEnd:
    return TextFrontEnd(assets_dir / "bpe.model").load()


def test_public_text_goldens_exact(text_ref_dir):
    from indextts_fast.parity.text import check

    results = list(check(text_ref_dir))
    failed = [r.line() for r in results if not r.passed]
    assert not failed, "\n".join(failed[:20])
    cases = sum(1 for line in (text_ref_dir / "cases.jsonl").read_text(encoding="utf-8").splitlines() if line)
    assert len({r.name.split(".")[0] for r in results}) == cases


def test_fast_chinese_path_equals_whole_text_fst(text_ref_dir):
    """The span decomposition gives what one whole-text FST call gives, on a long mixed text."""
    from indextts_fast.text.frontend import default_backend

    backend = default_backend()
    lines = (text_ref_dir / "cases.jsonl").read_text("utf-8").splitlines()
    texts = [json.loads(line).get("text") or "" for line in lines]
    long_text = "".join(t for t in texts if t.strip())[:2500]
    assert backend.zh(long_text) == backend.zh_whole_text(long_text)


@pytest.mark.parametrize("max_tokens", [0, -1, 2.5, True, None])
def test_bad_segment_size_is_refused(front, max_tokens):
    with pytest.raises(OptionError, match="max_text_tokens_per_segment"):
        front.split_segments(["▁A", "▁B", "▁C"], max_tokens)


def test_bad_quick_streaming_is_refused():
    with pytest.raises(OptionError, match="quick_streaming_tokens"):
        split_segments(["▁A"], 10, quick_streaming_tokens=-1)


@pytest.mark.parametrize("text", ["", "   ", "\n", "\t \r\n  \n", "　　"])
def test_text_without_tokens_is_refused(front, text):
    assert front.tokenize(text) == []  # the front end itself reproduces the goldens: empty in, empty out
    with pytest.raises(OptionError, match="text yields no tokens"):
        front.segments_for_synthesis(text)


def test_non_string_text_is_refused(front):
    with pytest.raises(OptionError, match="must be a str"):
        front.tokenize(b"bytes")


def test_glossary_errors(front, assets_dir):
    bad_template = TextFrontEnd(assets_dir / "bpe.model", glossary={"TTS": "T\\1S"})
    with pytest.raises(OptionError, match="replacement template"):  # official: re.error escapes on the zh path
        bad_template.tokenize("这个TTS引擎")
    with pytest.warns(RuntimeWarning, match="English text normalisation failed"):  # official: silently skipped
        assert bad_template.normalize("The TTS engine") == "The TTS engine"
    with pytest.raises(OptionError, match="reading of 'TTS'"):
        TextFrontEnd(assets_dir / "bpe.model", glossary={"TTS": 5})
    with pytest.raises(OptionError, match="mapping"):
        front.normalizer.load_glossary(["TTS"])


def test_glossary_from_yaml(front, assets_dir, tmp_path):
    (tmp_path / "glossary.yaml").write_text("C++:\n  zh: C 加加\n  en: C plus plus\n", encoding="utf-8")
    with_glossary = TextFrontEnd(assets_dir / "bpe.model")
    assert with_glossary.normalizer.load_glossary_yaml(tmp_path / "glossary.yaml")
    assert with_glossary.normalize("写C++很快。") == "写C 加加很快."
    assert front.normalize("I like c++") != "I like C plus plus"  # glossaries are per front end


def test_missing_bpe_model(tmp_path):
    with pytest.raises(ModelFolderError, match="bpe.model"):
        TextFrontEnd(tmp_path / "bpe.model")


def test_unknown_token_warning_names_tokens(front):
    with pytest.warns(UnknownTokensWarning, match=r"2 unknown token\(s\).*'😂'.*'『'"):
        segments = front.segments_for_synthesis("你好😂世界『再见")
    assert sum(s.count(2) for s in segments) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        front.segments_for_synthesis("今天天气很好。")  # no warning for a clean text


@pytest.mark.filterwarnings("ignore:a text segment exceeds:RuntimeWarning")
def test_segments_for_synthesis_ids(front):
    text = "今天是2024年3月15日，天气很好。I love you! " * 6
    tokens = front.tokenize(text)
    for q in (0, 10):
        ids = front.segments_for_synthesis(text, max_tokens=20, quick_streaming_tokens=q)
        assert ids == [front.encode(s) for s in front.split_segments(tokens, 20, q)]
        assert all(len(s) <= 20 for s in ids)
        assert sum(map(len, ids)) == len(tokens)


def test_length_cut_warns():
    with pytest.warns(RuntimeWarning, match="cut by length"):
        assert split_segments(["▁X"] * 7, 3) == [["▁X"] * 3, ["▁X"], ["▁X"] * 3]


def test_set_order_emulates_cpython_seed0():
    """Our pure-Python set order equals CPython's with PYTHONHASHSEED=0 (the goldens' seed)."""
    rng = random.Random(3)
    alphabet = "abxuüe中国翰·-2𠀀"
    lists = [["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(rng.randint(1, 40))]
             for _ in range(60)]
    code = ("import json,sys; t=json.load(sys.stdin);"
            "print(json.dumps([[list(set(x)), [hash(s) for s in x]] for x in t]))")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = json.loads(subprocess.run([sys.executable, "-c", code], input=json.dumps(lists), capture_output=True,
                                    text=True, env=env, check=True).stdout)
    for items, (order, hashes) in zip(lists, out):
        assert [str_hash_seed0(s) for s in items] == hashes
        assert set_order_seed0(items) == order


def test_output_independent_of_hash_seed(assets_dir):
    """The official pinyin/name protection depends on PYTHONHASHSEED; ours reproduces seed 0 under any seed."""
    texts = ["ju2 u2 qu4", "xue2 e2", "约瑟夫·高登-莱维特和约翰·史密斯说ni3hao3", "GPT-5-nano and F5-TTS, ju3 qu4"]
    code = ("import json,sys; from indextts_fast.text import TextFrontEnd; f=TextFrontEnd(sys.argv[1]);"
            "print(json.dumps([[f.normalize(t), f.tokenize(t)] for t in json.loads(sys.argv[2])]))")
    results = []
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", code, str(assets_dir / "bpe.model"), json.dumps(texts)],
                             capture_output=True, text=True, env=env, check=True)
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    assert results[0] == results[1] == results[2]
    assert results[0][0][0] == "JV2 u2 QV4"  # the goldens' seed-0 outcome


def test_from_folder_loads_glossary_yaml(tiny_dir, tmp_path):
    """A model folder's glossary.yaml replaces the (empty) glossary, as in the official IndexTTS2 constructor."""
    import shutil

    from indextts_fast.config import ModelFolder

    for name in ("config.yaml", "bpe.model"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    assert TextFrontEnd.from_folder(ModelFolder(tmp_path)).normalizer.glossary == {}
    (tmp_path / "glossary.yaml").write_text("TTS: T T S\n", encoding="utf-8")
    front = TextFrontEnd.from_folder(ModelFolder(tmp_path))
    assert front.normalizer.glossary == {"TTS": "T T S"}
    assert front.tokenize("这个TTS引擎") == front.tokenize("这个T T S引擎")

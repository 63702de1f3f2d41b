"""Parity of the text front end: run `cases.jsonl` of a text reference folder against `goldens/text.jsonl`.

Per text case: the normalised string, the back-end (FST) calls, the SentencePiece input, the tokens, the ids
with the unknown tokens, and the segments for every (max, quick_streaming) pair of the goldens, computed from
the *golden* tokens so a normalisation difference cannot hide a splitter bug. Split-only cases: the segments.
All comparisons are exact. Where the official code raised or silently dropped tokens (glossary template
errors on the Chinese path, max segment size <= 0), we expect an OptionError instead.

The bpe.model is the one whose sha256 `goldens/meta.json` records, looked up in the reference folder, the
folder `indextts2-assets` beside it, then the copy bundled with the package.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Iterator, Optional

from ..errors import IndexTTSFastError, OptionError
from . import CaseResult, check_fact

STAGE = "text"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise IndexTTSFastError(f"{path} not found: not a text reference folder")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def find_bpe_model(ref_dir: Path, meta: dict) -> Path:
    want = meta.get("files_sha256", {}).get("bpe.model")
    bundled = Path(__file__).resolve().parents[1] / "assets" / "indextts2" / "bpe.model"
    candidates = [ref_dir / "bpe.model", ref_dir.parent / "indextts2-assets" / "bpe.model", bundled]
    for path in candidates:
        if path.is_file() and (want is None or hashlib.sha256(path.read_bytes()).hexdigest() == want):
            return path
    raise IndexTTSFastError(f"no bpe.model with sha256 {want} (goldens/meta.json) among {[str(p) for p in candidates]}")


def _outcome(fn):
    """(value, None) or (None, exception) of fn(), without printing the warnings the front end issues."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(), None
    except Exception as exc:  # noqa: BLE001 - reported, never hidden
        return None, exc


def _expect_refusal(name: str, exc: Optional[Exception], official: str) -> CaseResult:
    return check_fact(STAGE, name, isinstance(exc, OptionError),
                      f"official {official}; expected OptionError, got {type(exc).__name__ if exc else 'a result'}")


def _diff(got, want) -> str:
    if isinstance(got, list) and isinstance(want, list):
        for i, (g, w) in enumerate(zip(got, want)):
            if g != w:
                return f"first difference at [{i}]: {g!r} != golden {w!r} (lengths {len(got)}, {len(want)})"
        return f"lengths {len(got)} != golden {len(want)}"
    return f"{got!r} != golden {want!r}"


def _check_segments(case_id: str, tokens: list[str], golden: dict) -> Iterator[CaseResult]:
    from ..text.segment import split_counting

    errors = golden.get("segment_errors") or {}
    segments = golden.get("segments") or {}
    warns = golden.get("segment_warnings") or {}
    for m_key in sorted(set(segments) | set(errors), key=int):
        failures = []
        for q_key in sorted(set(segments.get(m_key, {})) | set(errors.get(m_key, {})), key=int):
            m, q = int(m_key), int(q_key)
            got, exc = _outcome(lambda: split_counting(tokens, m, q))
            if m_key in errors and q_key in errors[m_key]:
                official = f"raised {errors[m_key][q_key]['type']}"
            elif m < 1:
                official = "dropped every token"
            else:
                official = None
            if official is not None:
                if not isinstance(exc, OptionError):
                    failures.append(f"Q={q}: official {official}, expected OptionError, got "
                                    f"{type(exc).__name__ if exc else 'segments'}")
                continue
            if exc is not None:
                failures.append(f"Q={q}: {type(exc).__name__}: {exc}")
                continue
            segs, cuts = got
            want = segments[m_key][q_key]
            if segs != want:
                failures.append(f"Q={q}: {len(segs)} segments {[len(s) for s in segs]} != golden "
                                f"{len(want)} {[len(s) for s in want]}")
            elif len(cuts) != warns.get(m_key, {}).get(q_key, 0):
                failures.append(f"Q={q}: {len(cuts)} length-cut warnings != golden {warns[m_key][q_key]}")
        yield check_fact(STAGE, f"{case_id}.segments[M={m_key}]", not failures, "; ".join(failures))


def _same_calls(got: list[dict], want: list[dict]) -> tuple[bool, str]:
    if len(got) != len(want):
        return False, f"{len(got)} back-end calls != golden {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if g["backend"] != w["backend"] or g["input"] != w["input"]:
            return False, f"call {i}: {g['backend']} input {g['input']!r} != golden {w['backend']} {w['input']!r}"
        if ("error" in g) != ("error" in w) or g.get("output") != w.get("output"):
            return False, f"call {i}: {g.get('output', g.get('error'))!r} != golden {w.get('output', w.get('error'))!r}"
    return True, ""


def _check_text_case(front, case: dict, golden: dict) -> Iterator[CaseResult]:
    from ..text.frontend import normalization_applies
    from ..text.normalize import validate_glossary
    from ..text.tokenize import UNK_ID, pretokenize

    cid = case["id"]
    text = case["text"]
    refused = None  # a glossary we refuse to load counts as the case's refusal
    try:
        front.normalizer.glossary = validate_glossary(case["glossary"]) if case.get("glossary") else {}
    except OptionError as exc:
        refused = exc

    def outcome(fn):
        return (None, refused) if refused is not None else _outcome(fn)

    try:
        calls: list = []
        normalized, exc = outcome(lambda: front.normalizer.normalize(text, calls))
        if golden.get("normalize_error"):
            yield _expect_refusal(f"{cid}.normalized", exc, f"raised {golden['normalize_error']['type']}")
        elif exc is not None:
            yield check_fact(STAGE, f"{cid}.normalized", False, f"{type(exc).__name__}: {exc}")
        else:
            want = golden["normalized"]
            yield check_fact(STAGE, f"{cid}.normalized", normalized == want, _diff(normalized, want))
            ok, detail = _same_calls(calls, golden.get("backend_calls") or [])
            yield check_fact(STAGE, f"{cid}.backend_calls", ok, detail)
            if golden.get("normalize_applied"):
                sp_input = pretokenize(normalized)
                yield check_fact(STAGE, f"{cid}.sp_input", sp_input == golden["sp_input"],
                                 _diff(sp_input, golden["sp_input"]))

        if not normalization_applies(text) or normalized is None:
            tokens, exc = outcome(lambda: front.tokenize(text))
        else:  # the official tokenize: normalise (done above), pre-tokenise, SentencePiece
            tokens, exc = outcome(lambda: front.pieces(normalized))
        if golden.get("tokenize_error"):
            yield _expect_refusal(f"{cid}.tokens", exc, f"raised {golden['tokenize_error']['type']}")
            return
        if exc is not None:
            yield check_fact(STAGE, f"{cid}.tokens", False, f"{type(exc).__name__}: {exc}")
        else:
            yield check_fact(STAGE, f"{cid}.tokens", tokens == golden["tokens"], _diff(tokens, golden["tokens"]))
            ids = front.encode(tokens)
            unknown = [t for t, i in zip(tokens, ids) if i == UNK_ID]
            ok = ids == golden["ids"] and unknown == golden["unk_tokens"] and len(unknown) == golden["num_unk"]
            yield check_fact(STAGE, f"{cid}.ids", ok, _diff(ids, golden["ids"]) if ids != golden["ids"]
                             else f"unknown tokens {unknown} != golden {golden['unk_tokens']}")
        yield from _check_segments(cid, golden["tokens"], golden)
    finally:
        front.normalizer.glossary = {}


def check(ref_dir: Path) -> Iterator[CaseResult]:
    from ..text.frontend import TextFrontEnd

    ref = Path(ref_dir)
    cases = _read_jsonl(ref / "cases.jsonl")
    goldens = {g["id"]: g for g in _read_jsonl(ref / "goldens" / "text.jsonl")}
    meta_path = ref / "goldens" / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    front = None
    for case in cases:
        golden = goldens.get(case["id"])
        if golden is None:
            yield check_fact(STAGE, f"{case['id']}", False, "no golden record for this case")
            continue
        if case.get("text") is None:
            yield from _check_segments(case["id"], case.get("tokens") or [], golden)
            continue
        if front is None:
            front = TextFrontEnd(find_bpe_model(ref, meta)).load()
        try:
            yield from _check_text_case(front, case, golden)
        except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others
            yield check_fact(STAGE, f"{case['id']}.<crashed>", False, f"{type(exc).__name__}: {exc}")

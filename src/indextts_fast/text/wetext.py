"""The WeTextProcessing back end (the one the official code uses on Linux, and the goldens' back end).

Chinese: `tn.chinese.normalizer.Normalizer` with the official options (interjections and erhua kept). Its FSTs
differ from the ones shipped in the wheel, so they are compiled on first use (about 6 s) into a cache folder
(`$INDEXTTS_FAST_CACHE`, else `$XDG_CACHE_HOME/indextts_fast`, else `~/.cache/indextts_fast`) and read from there
afterwards. English: `tn.english.normalizer.Normalizer` on the FSTs shipped in the wheel.

Speed. Composing a text with the Chinese tagger costs 0.25 ms per character of plain text and several times more
around numbers, so the official whole-text call takes 3-7 s for 10,000 characters. The tagger is a closure over
token grammars (date, money, measure, cardinal, sport, ...) plus `char`, which copies any single character. A
character that no other grammar can cover where it stands is therefore always its own `char` token, and the text
splits there into independent pieces. We find the spans other grammars could cover with a deterministic automaton
of their inputs (built from the same grammars, cached next to the FSTs), run the FST on those spans only (with an
LRU cache), and map every other character through a per-character table filled by the FST itself. The split
is exact for the token lattice; the one thing it changes is float32 rounding of path weights, which grow by 100
per character. Single Chinese tokens differ in weight by at least 0.01, which float32 resolves while the weight
before a span stays under 2^18 (about 2,600 characters of preceding text); beyond that the official result can
itself depend on where a span sits. Every golden, and the whole-text call on 60 random 2,000-10,000-character
texts dense in numbers, dates, units and scores, agree with the split. English is run whole, as officially: its
grammars rank readings by weight differences of 1e-4, lost in float32 after about 20 words, so there the
official reading does depend on the preceding text (golden p-long-07), and no split can be exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

# The version the goldens were made with; the token-span automaton below replicates its Chinese grammar list.
PINNED_VERSION = "1.2.0"
ZH_OPTIONS = dict(remove_interjections=False, remove_erhua=False, overwrite_cache=False)
# sha256 of the compiled Chinese FSTs made with WeTextProcessing 1.2.0 / pynini 2.1.7 and ZH_OPTIONS.
ZH_FST_SHA256 = {
    "zh_tn_tagger.fst": "50381efdb844eb7879a6b90b298f30cd685ecd9ea46160d6f67572579ffcbce8",
    "zh_tn_verbalizer.fst": "0a869324b311373ee177c7e1d1d69228053b63407403edfdc0de502bdc9e1b49",
}
ZH_SPANS_FILE = "zh_token_spans.json"

log = logging.getLogger(__name__)


def cache_root() -> Path:
    if os.environ.get("INDEXTTS_FAST_CACHE"):
        return Path(os.environ["INDEXTTS_FAST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "indextts_fast"


def installed_version() -> str:
    from importlib.metadata import version

    return version("WeTextProcessing")


@contextlib.contextmanager
def _quiet_wetext():
    """WeTextProcessing logs every FST load at INFO level on its own handler; silence it while we load."""
    logger = logging.getLogger("wetext")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _zh_grammars() -> list:
    """The non-`char` token grammars of the Chinese tagger, as tn.chinese.normalizer 1.2.0 builds them, each
    composed with the tagger's pre-processor (traditional -> simplified), as the tagger does per token."""
    from tn.chinese.rules.cardinal import Cardinal
    from tn.chinese.rules.date import Date
    from tn.chinese.rules.fraction import Fraction
    from tn.chinese.rules.math import Math
    from tn.chinese.rules.measure import Measure
    from tn.chinese.rules.money import Money
    from tn.chinese.rules.preprocessor import PreProcessor
    from tn.chinese.rules.sport import Sport
    from tn.chinese.rules.time import Time
    from tn.chinese.rules.whitelist import Whitelist

    pre = PreProcessor(traditional_to_simple=True).processor
    cardinal = Cardinal()
    rules = [Date(), Whitelist(remove_erhua=ZH_OPTIONS["remove_erhua"]), Sport(cardinal=cardinal),
             Fraction(cardinal=cardinal), Measure(cardinal=cardinal), Money(cardinal=cardinal), Time(), cardinal,
             Math(cardinal=cardinal)]
    return [pre @ rule.tagger for rule in rules]


def _input_automaton(fst) -> dict:
    """The minimal DFA (over UTF-8 bytes) of the inputs a token grammar accepts, as a JSON-able table."""
    import pynini

    dfa = pynini.arcmap(fst.project("input"), map_type="rmweight").optimize()
    zero = pynini.Weight.zero(dfa.weight_type())
    return {
        "start": dfa.start(),
        "final": [q for q in dfa.states() if dfa.final(q) != zero],
        "arcs": [[[a.ilabel, a.nextstate] for a in dfa.arcs(q)] for q in dfa.states()],
    }


def _build_span_automaton(folder: Path) -> None:
    import pynini

    table = _input_automaton(pynini.union(*_zh_grammars()))
    (folder / ZH_SPANS_FILE).write_text(json.dumps(table, separators=(",", ":")), encoding="utf-8")


def _fallback_root() -> Path:
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"indextts_fast-{user}"


def _complete(folder: Path, version: str) -> bool:
    return (folder / "zh_tn_tagger.fst").is_file() and (folder / "zh_tn_verbalizer.fst").is_file() \
        and (version != PINNED_VERSION or (folder / ZH_SPANS_FILE).is_file())


def _zh_cache_dir() -> Path:
    """The folder holding the compiled Chinese FSTs (and span automaton); built once, atomically."""
    version = installed_version()
    folder_name = f"wetextprocessing-{version}-indextts-1"  # bump the suffix when the cached files change
    for root in (cache_root(), _fallback_root()):
        if _complete(root / folder_name, version):
            return root / folder_name
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder_name + ".", dir=root))
    except OSError:
        log.warning("cache folder %s is not writable; using %s", root, _fallback_root())
        root = _fallback_root()
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder_name + ".", dir=root))
    folder = root / folder_name
    try:
        from tn.chinese.normalizer import Normalizer

        log.info("compiling the Chinese text-normalisation FSTs into %s (once)", folder)
        with _quiet_wetext():
            Normalizer(cache_dir=str(tmp), **ZH_OPTIONS)
        if version == PINNED_VERSION:
            for file_name, digest in ZH_FST_SHA256.items():
                if _sha256(tmp / file_name) != digest:
                    log.warning("%s built by WeTextProcessing %s differs from the goldens' build", file_name, version)
            _build_span_automaton(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first (keep its folder), or an incomplete one is in the way
            if not _complete(folder, version):
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class _SpanScanner:
    """Finds the spans of a text that some non-`char` grammar could cover (overlapping possible matches merged).

    The grammars' inputs are one byte DFA, stepped a character at a time (memoised per state and character).
    """

    def __init__(self, table: dict):
        self.start = table["start"]
        self.final = [False] * len(table["arcs"])
        for q in table["final"]:
            self.final[q] = True
        self.arcs = [dict(map(tuple, arcs)) for arcs in table["arcs"]]
        self._step: dict[tuple[int, str], int] = {}

    def step(self, state: int, char: str) -> int:
        key = (state, char)
        nxt = self._step.get(key)
        if nxt is None:
            nxt = state
            for byte in char.encode("utf-8", "surrogatepass"):
                nxt = self.arcs[nxt].get(byte, -1)
                if nxt < 0:
                    break
            self._step[key] = nxt
        return nxt

    def spans(self, text: str) -> list[tuple[int, int]]:
        n = len(text)
        merged: list[list[int]] = []
        # furthest accepting end reachable from (position, state), shared by scans that meet there
        furthest: dict[tuple[int, int], int] = {}
        for a in range(n):
            state, i, path, best = self.start, a, [], -1
            while i < n:
                state = self.step(state, text[i])
                if state < 0:
                    break
                i += 1
                known = furthest.get((i, state))
                if known is not None:
                    best = known
                    break
                path.append((i, state))
            for i_s in reversed(path):  # remember what this scan learnt for later scans that meet it
                if self.final[i_s[1]]:
                    best = max(best, i_s[0])
                furthest[i_s] = best
            if best <= a:
                continue
            if merged and a < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], best)
            else:
                merged.append([a, best])
        return [(a, b) for a, b in merged]


class WeTextBackend:
    """Chinese and English FST normalisers of WeTextProcessing. `zh(text)` / `en(text)` raise on FST failure."""

    name = "wetextprocessing"

    def __init__(self, fast: bool = True):
        try:
            import pynini
            from tn.chinese.normalizer import Normalizer as ZhNormalizer
            from tn.english.normalizer import Normalizer as EnNormalizer
        except ImportError as exc:  # pragma: no cover - the dependency is declared in pyproject
            raise ImportError("the text front end needs WeTextProcessing: pip install WeTextProcessing==1.2.0") from exc
        del pynini
        self.version = installed_version()
        if self.version != PINNED_VERSION:
            log.warning("WeTextProcessing %s installed; the goldens were made with %s", self.version, PINNED_VERSION)
        folder = _zh_cache_dir()
        with _quiet_wetext():
            self._zh = ZhNormalizer(cache_dir=str(folder), **ZH_OPTIONS)
            self._en = EnNormalizer(overwrite_cache=False)
        self._scanner = None
        if fast and (folder / ZH_SPANS_FILE).is_file():
            self._scanner = _SpanScanner(json.loads((folder / ZH_SPANS_FILE).read_text(encoding="utf-8")))
        self._single: dict[str, str] = {}
        self._zh_span = lru_cache(maxsize=4096)(self._zh.normalize)

    def en(self, text: str) -> str:
        # Run whole, as officially. No split is exact here: the English grammars prefer readings by weight
        # differences of 1e-4, which float32 loses once a path weighs over ~2048 (about 20 words), so the
        # official reading of e.g. "BA 287" depends on how much text precedes it.
        return self._en.normalize(text)

    def zh_whole_text(self, text: str) -> str:
        """One FST call on the whole text, as the official code does (slow; for checks and timings)."""
        return self._zh.normalize(text)

    def zh(self, text: str) -> str:
        if self._scanner is None:
            return self._zh.normalize(text)
        out, pos = [], 0
        for a, b in self._scanner.spans(text):
            out.extend(self._zh_char(c) for c in text[pos:a])
            out.append(self._zh_span(text[a:b]))
            pos = b
        out.extend(self._zh_char(c) for c in text[pos:])
        return "".join(out)

    def _zh_char(self, char: str) -> str:
        out = self._single.get(char)
        if out is None:
            out = self._single[char] = self._zh.normalize(char)
        return out


_backend = None
_backend_lock = threading.Lock()


def default_backend():
    """The process-wide WeTextProcessing back end (loaded on first use: ~1 s, ~7 s the very first time)."""
    global _backend
    with _backend_lock:
        if _backend is None:
            _backend = WeTextBackend()
        return _backend

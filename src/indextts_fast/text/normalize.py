"""Text normalisation with the official IndexTTS2 rules (SPEC-text.md section 4) around an FST back end.

The order of steps, the protections with placeholders and their quirks are the official ones; each quirk that
changes output is named where it is reproduced. The FST back end (numbers, dates, units, ...) is
WeTextProcessing, as in the official code on Linux (see wetext.py).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import OptionError
from .pyhash import set_order_seed0

# `<word|reading>` pronunciation annotations, kept verbatim through normalisation.
ANNOTATION = re.compile(r"<([^|>\n]+)\|([^>\n]+)>")

_INITIALS = r"(?:[bpmfdtnlgkhjqxzcsryw]|[zcs]h)"
_FINALS = "|".join([r"[aeiouüv]", r"[ae]i", r"u[aio]", r"ao", r"ou", r"i[aue]", r"[uüv]e", r"[uvü]ang?", r"uai",
                    r"[aeiuv]n", r"[aeio]ng", r"ia[no]", r"i[ao]ng"])
# A pinyin syllable with tone digit 1-5, not preceded by a Latin letter (case-insensitive: also `ſ` and `K`,
# which Python folds to s and k). The alternation order matters: Python takes the first alternative that fits.
PINYIN_TONE = re.compile(rf"(?<![a-z])((?:{_INITIALS}?(?:{_FINALS})|ng|er)([1-5]))", re.IGNORECASE)
# Chinese names: CJK runs joined by `-`, `·` or `—` (greedy: neighbouring characters come along).
NAME = re.compile(r"[\u4e00-\u9fff]+(?:[-·—][\u4e00-\u9fff]+){1,2}")
# Technical terms such as GPT-5-nano: a letter, letters/digits, then one or more `-letters/digits` groups.
TECH_TERM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+")
TECH_HYPHEN = "<H>"
TECH_RESTORE = re.compile(r"\s*<H>\s*")
# Quirk: no word boundary on the left, so `summit's` becomes `summit is`.
CONTRACTION = re.compile(r"(what|where|who|which|how|t?here|it|s?he|that|this)'s", re.IGNORECASE)
EMAIL = re.compile(r"^[a-zA-Z0-9]+@[a-zA-Z0-9]+\.[a-zA-Z]+$")  # `$` also matches before a final newline
CJK_IDEOGRAPH = re.compile(r"[\u4e00-\u9fff]")
LATIN_LETTER = re.compile(r"[a-zA-Z]")
# j/q/x + u/ü (+ n, e, an) -> v; only the last repetition of the middle group survives, as in the original.
JQX_U = re.compile(r"([jqx])[uü](n|e|an)*(\d)", re.IGNORECASE)

# Character table, applied in one left-to-right pass; earlier entries win (so `，，，` can never match).
COMMON_CHARS = {
    "：": ",", "；": ",", ";": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": " ", "·": "-", "、": ",",
    "...": "…", ",,,": "…", "，，，": "…", "……": "…",
    "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'", "(": "'", ")": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "—": "-", "～": "-", "~": "-",
    "「": "'", "」": "'", ":": ",",
}
ZH_CHARS = {"$": ".", **COMMON_CHARS}


def _table_pattern(table: Mapping[str, str]) -> re.Pattern:
    return re.compile("|".join(re.escape(k) for k in table))


_COMMON_PATTERN = _table_pattern(COMMON_CHARS)
_ZH_PATTERN = _table_pattern(ZH_CHARS)


def _alpha_tag(n: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa (bijective base 26), the annotation placeholder tag."""
    tag = ""
    while True:
        tag = chr(ord("a") + n % 26) + tag
        n = n // 26 - 1
        if n < 0:
            return tag


def protect_annotations(text: str) -> tuple[str, dict[str, str]]:
    saved: dict[str, str] = {}

    def placeholder(m: re.Match) -> str:
        key = f"PRONPLACEHOLDER{_alpha_tag(len(saved))}PRONPLACEHOLDER"
        saved[key] = m.group(0)
        return key

    return ANNOTATION.sub(placeholder, text), saved


def restore_plain(text: str, saved: Mapping[str, str]) -> str:
    for key, value in saved.items():
        text = text.replace(key, value)
    return text


def uses_chinese(text: str) -> bool:
    """The official language decision: Chinese path unless the text is plain English without pinyin."""
    if CJK_IDEOGRAPH.search(text) or not LATIN_LETTER.search(text) or EMAIL.match(text):
        return True
    return PINYIN_TONE.search(text) is not None


def _distinct(matches: list[str]) -> list[str]:
    # Official quirk: list(set(matches)), whose order depends on the hash seed; we use seed 0's order.
    return set_order_seed0(matches)


def _protect_each(text: str, found: list[str], placeholder: str) -> tuple[str, dict[str, str]]:
    """Replace each distinct match in turn (plain substring replacement) by placeholder.format(letter)."""
    saved: dict[str, str] = {}
    for i, original in enumerate(_distinct(found)):
        key = placeholder.format(chr(ord("a") + i))
        text = text.replace(original, key)
        saved[key] = original
    return text, saved


def correct_pinyin(syllable: str) -> str:
    """j/q/x syllables: u/ü -> v where Mandarin spells it so, then upper case; others unchanged."""
    if syllable[0] not in "jqxJQX":
        return syllable
    return JQX_U.sub(r"\g<1>v\g<2>\g<3>", syllable).upper()


def protect_tech_terms(text: str) -> tuple[str, bool]:
    found = TECH_TERM.findall(text)
    if not found:
        return text, False
    for term in sorted(_distinct(found), key=len, reverse=True):
        text = text.replace(term, term.replace("-", TECH_HYPHEN))
    return text, True


def restore_tech_terms(text: str, had_terms: bool) -> str:
    # Quirk: any `<H>` (also a literal one of the input) and the whitespace around it becomes `-`.
    return TECH_RESTORE.sub("-", text) if had_terms else text


def validate_glossary(glossary: Any, source: str = "glossary") -> dict:
    """A glossary maps terms to a reading, or to {"zh": reading, "en": reading} (either key may be missing)."""
    if not isinstance(glossary, Mapping):
        raise OptionError(f"{source} must be a mapping of term -> reading, got {type(glossary).__name__}")
    for term, reading in glossary.items():
        if not isinstance(term, str) or not term:
            raise OptionError(f"{source}: term {term!r} is not a non-empty string")
        if isinstance(reading, Mapping):
            bad = {k: v for k, v in reading.items() if not isinstance(v, str)}
            if bad:
                raise OptionError(f"{source}: readings of {term!r} must be strings, got {bad!r}")
        elif not isinstance(reading, str):
            raise OptionError(f"{source}: reading of {term!r} must be a string or a zh/en mapping, got {reading!r}")
    return dict(glossary)


class TextNormalizer:
    """`normalize(text)` as the official TextNormalizer(enable_glossary=True) does it, on a given back end."""

    def __init__(self, backend=None, glossary: Optional[Mapping] = None):
        self._backend = backend
        self.glossary: dict = {}
        if glossary:
            self.load_glossary(glossary)

    @property
    def backend(self):
        if self._backend is None:
            from .wetext import default_backend

            self._backend = default_backend()
        return self._backend

    # ---- glossary -------------------------------------------------------------------------------
    def load_glossary(self, glossary: Mapping) -> None:
        """Merge terms into the glossary (official `load_glossary`)."""
        self.glossary.update(validate_glossary(glossary))

    def load_glossary_yaml(self, path: str | Path) -> bool:
        """Replace the glossary by a YAML file's mapping, if the file holds a non-empty one (official behaviour)."""
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if not data or not isinstance(data, dict):
            return False
        self.glossary = validate_glossary(data, str(path))
        return True

    def apply_glossary(self, text: str, lang: str) -> str:
        # Longest terms first; each matched case-insensitively; a mapping without this language falls back
        # to the term itself; the reading is a regular-expression replacement template (backslashes count).
        for term in sorted(self.glossary, key=len, reverse=True):
            reading = self.glossary[term]
            if isinstance(reading, Mapping):
                reading = reading.get(lang, term)
            text = re.compile(re.escape(term), re.IGNORECASE).sub(reading, text)
        return text

    # ---- normalise ------------------------------------------------------------------------------
    def normalize(self, text: str, calls: Optional[list] = None) -> str:
        """The normalised text. `calls`, if given, receives every back-end call as {backend, input, output|error}."""
        text, annotations = protect_annotations(text)
        if uses_chinese(text):
            result = self._normalize_zh(text, calls)
        else:
            result = self._normalize_en(text, calls)
        return restore_plain(result, annotations)

    def _normalize_zh(self, text: str, calls: Optional[list]) -> str:
        text = CONTRACTION.sub(r"\1 is", text)
        if self.glossary:
            try:
                text = self.apply_glossary(text, "zh")
            except (re.error, TypeError) as exc:  # the official code lets this escape as it is
                raise OptionError(f"glossary reading is not a valid replacement template: {exc}") from exc
        text, had_terms = protect_tech_terms(text.rstrip())
        text, pinyin = _protect_each(text, [m.group(1) for m in PINYIN_TONE.finditer(text)], "<pinyin_{}>")
        text, names = _protect_each(text, NAME.findall(text), "<n_{}>")
        try:
            result = self._call("zh", text, calls)
        except Exception as exc:
            # Official quirk changed on purpose: the official code prints the traceback and returns "" (the
            # whole text silently dropped); we refuse the text instead.
            raise OptionError(f"the Chinese text normaliser failed on this text ({type(exc).__name__}: {exc})") from exc
        result = restore_plain(result, names)
        result = restore_plain(result, {key: correct_pinyin(s) for key, s in pinyin.items()})
        result = restore_tech_terms(result, had_terms)
        return _ZH_PATTERN.sub(lambda m: ZH_CHARS[m.group()], result)

    def _normalize_en(self, text: str, calls: Optional[list]) -> str:
        try:
            text = CONTRACTION.sub(r"\1 is", text)
            if self.glossary:
                text = self.apply_glossary(text, "en")
            protected, had_terms = protect_tech_terms(text)
            result = restore_tech_terms(self._call("en", protected, calls), had_terms)
        except Exception as exc:
            # Official behaviour kept (the goldens record it): any failure here leaves the text un-normalised.
            warnings.warn(f"English text normalisation failed ({type(exc).__name__}: {exc}); "
                          "the text is used without number/date expansion", RuntimeWarning, stacklevel=3)
            result = text
        return _COMMON_PATTERN.sub(lambda m: COMMON_CHARS[m.group()], result)

    def _call(self, lang: str, text: str, calls: Optional[list]) -> str:
        fn = self.backend.zh if lang == "zh" else self.backend.en
        try:
            out = fn(text)
        except Exception as exc:
            if calls is not None:
                error = {"type": type(exc).__name__, "message": str(exc)}
                calls.append({"backend": lang, "input": text, "error": error})
            raise
        if calls is not None:
            calls.append({"backend": lang, "input": text, "output": out})
        return out

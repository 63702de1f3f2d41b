"""Text front end: normalise + tokenise + segment a 10,000-character mixed Chinese/English paragraph.

The paragraph is mixed prose with occasional numbers, dates, units and English words, at about the density
of the golden long texts; a number-dense variant (about four times the FST work) is timed as well.
Reports the one-off initialisation (loading the FSTs; compiling them too when the cache is cold), the first
paragraph (fills the per-character table), and the steady state over fresh paragraphs (new numbers each time, so
no span cache hit is reused between repetitions), split into normalise / tokenise / segment. For scale it also
times the official way of running the Chinese FST (one call on the whole text) on the same paragraph, and an
English-only paragraph (the English path has no span decomposition). Needs no model: uses the bundled bpe.model.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from .common import machine, table

# Mixed prose with occasional numbers, dates, units and English (about the density of the golden long texts).
_PROSE = [
    "清晨六点半，城市还没有完全醒来，老李已经推着他的早餐车来到了地铁站口。",
    "他在这里摆摊已经整整{n}年了，每天早上能卖掉{big}多份早餐。",
    "隔壁的小店换了新招牌，老板说这是他第三次创业，希望这次能坚持下去。",
    "上周我终于入手了新款的 MacBook Pro，配置是 M3 Pro 芯片和{n}GB 统一内存，官网售价￥{money}。",
    "先说外观：机身依旧是熟悉的铝合金一体成型，做工扎实，拿在手里很有分量。",
    "屏幕的亮度和色彩都很出色，看电影和修照片都是一种享受，续航也比上一代好了不少。",
    "这次旅行我们一共去了七个城市，每个城市停留两到三天，吃了很多当地的小吃。",
    "会议定在{date}，地点在公司三楼的大会议室，请大家提前十分钟到场。",
    "她说 I will be there at {time}，然后就挂了电话，留下我一个人站在雨里发呆。",
    "我们的团队花了整整一个夏天，才把这个 text front end 的每一个细节都对齐到官方实现。",
    "医生叮嘱他要多喝水、少熬夜，体温一旦超过{temp}℃就要马上回医院复查。",
    "那天晚上的风很大，窗外的树枝不停地拍打着玻璃，像是有人在轻轻敲门。",
    "孩子们在操场上追逐打闹，笑声一直传到很远的地方，连路过的行人都忍不住停下脚步。",
    "根据最新的统计，今年参加比赛的选手比去年增加了{pct}%，创下了历史新高。",
    "这本书我读了三遍，每一遍都有新的收获，尤其是最后一章关于时间和记忆的讨论。",
    "The new model supports many languages and runs much faster on an ordinary laptop.",
]
# Number-dense sentences (a worst case: about four times the spans of the prose above).
_DENSE = [
    "今天是{date}，北京时间{time}，气温{temp}℃，湿度{pct}%。",
    "这台MacBook Pro配置了{n}GB内存和{n}TB SSD，官网售价￥{money}，比去年便宜了{pct}%。",
    "他在这里摆摊已经整整{n}年了，从最初一天只卖出{n}个包子，到现在每天早上能卖掉{big}多份早餐。",
    "比赛进行到第{n}分钟，中国队{n}:{n}领先，现场大约有{big}名观众。",
    "我们的GPT-{n}-nano模型在F5-TTS基准上跑出了{dec}的成绩，延迟只有{n}毫秒。",
    "请拨打客服电话{phone}，或者发邮件给我们，工作时间是每天{time}到{time}。",
    "这条路全长{dec}公里，限速{n}km/h，开车大约需要{n}分钟。",
    "“你确定吗？”她问道。他笑了笑说：“当然，我们明天{time}见。”",
    "会议记录：第一，预算增加{pct}%；第二，招聘{n}名工程师；第三，项目在{date}上线。",
    "The new model supports {n} languages and runs {dec} times faster on a laptop.",
]
_EN = [
    "On {en_date}, Dr. Smith paid ${money} for {n} tickets to the conference in Boston.",
    "The temperature dropped to {temp} degrees, and {pct}% of the roads were closed by {time}.",
    "It's about {n} km from here; we'll drive at {n} km/h and arrive before {time}.",
    "GPT-{n}-nano beat F5-TTS by {dec} points, which is what everyone expected anyway.",
    "Call us at {phone} or visit the office on the {n}th floor, room {big}.",
    "He walked down the long road past the old mill, the river and the fields, thinking of nothing.",
]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]


def paragraph(chars: int, seed: int, kind: str = "prose") -> str:
    """A deterministic paragraph of exactly `chars` characters with fresh numbers for each seed."""
    rng = random.Random(seed)
    fill = {
        "date": lambda: f"{rng.randint(1990, 2030)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日",
        "en_date": lambda: f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(1990, 2030)}",
        "time": lambda: f"{rng.randint(0, 23)}:{rng.randint(0, 59):02d}",
        "temp": lambda: f"{rng.randint(-10, 39)}.{rng.randint(0, 9)}",
        "pct": lambda: str(rng.randint(1, 99)),
        "n": lambda: str(rng.randint(2, 99)),
        "big": lambda: str(rng.randint(100, 99999)),
        "dec": lambda: f"{rng.randint(1, 99)}.{rng.randint(1, 99)}",
        "money": lambda: f"{rng.randint(1, 99)},{rng.randint(100, 999)}.{rng.randint(10, 99)}",
        "phone": lambda: f"1{rng.randint(30, 89)}-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}",
    }
    templates = {"prose": _PROSE, "dense": _DENSE, "english": _EN}[kind]
    out, size = [], 0
    while size < chars:
        text = rng.choice(templates)
        for key, make in fill.items():
            while "{" + key + "}" in text:
                text = text.replace("{" + key + "}", make(), 1)
        out.append(text + (" " if kind == "english" else ""))
        size += len(out[-1])
    return "".join(out)[:chars]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chars", type=int, default=10000, help="paragraph length in characters (default 10000)")
    p.add_argument("--repeat", type=int, default=5, help="steady-state repetitions (default 5)")
    p.add_argument("--max-tokens", type=int, default=120, help="max_text_tokens_per_segment (default 120)")
    p.add_argument("--bpe", type=Path, default=None, help="bpe.model (default: the bundled one)")
    p.add_argument("--no-official", action="store_true", help="skip timing the whole-text FST call")


def _pass(front, text: str, max_tokens: int) -> dict:
    from ..text.tokenize import pretokenize

    t0 = time.perf_counter()
    normalized = front.normalize(text)
    t1 = time.perf_counter()
    tokens = front.tokenizer.pieces(pretokenize(normalized))
    t2 = time.perf_counter()
    segments = front.split_segments(tokens, max_tokens)
    t3 = time.perf_counter()
    return {"total_s": t3 - t0, "normalize_s": t1 - t0, "tokenize_s": t2 - t1, "segment_s": t3 - t2,
            "tokens": len(tokens), "segments": len(segments)}


def run(args: argparse.Namespace) -> dict:
    import warnings

    from ..text.frontend import TextFrontEnd
    from ..text.wetext import cache_root

    warnings.simplefilter("ignore", RuntimeWarning)  # length-cut warnings of the splitter
    bpe = args.bpe or Path(__file__).resolve().parents[1] / "assets" / "indextts2" / "bpe.model"
    cold = not any(cache_root().glob("wetextprocessing-*/zh_tn_tagger.fst"))
    t0 = time.perf_counter()
    front = TextFrontEnd(bpe).load()
    init_s = time.perf_counter() - t0

    first = _pass(front, paragraph(args.chars, seed=0), args.max_tokens)
    steady = [_pass(front, paragraph(args.chars, seed=1 + i), args.max_tokens) for i in range(args.repeat)]
    n_more = max(1, args.repeat // 2)
    dense = [_pass(front, paragraph(args.chars, seed=100 + i, kind="dense"), args.max_tokens) for i in range(n_more)]
    english = [_pass(front, paragraph(args.chars, seed=200 + i, kind="english"), args.max_tokens)
               for i in range(n_more)]
    med = {k: statistics.median(r[k] for r in steady) for k in ("total_s", "normalize_s", "tokenize_s", "segment_s")}
    rows = [
        {"what": "init (load FSTs" + (", compile: cold cache)" if cold else ")"), "s": init_s},
        {"what": "first mixed paragraph", "s": first["total_s"], "tokens": first["tokens"]},
        {"what": "steady mixed paragraph (median)", "s": med["total_s"], "tokens": steady[0]["tokens"]},
        {"what": "  normalise", "s": med["normalize_s"]},
        {"what": "  pre-tokenise + SentencePiece", "s": med["tokenize_s"]},
        {"what": "  segment", "s": med["segment_s"]},
        {"what": "number-dense mixed paragraph (median)", "s": statistics.median(r["total_s"] for r in dense),
         "tokens": dense[0]["tokens"]},
        {"what": "English-only paragraph (median)", "s": statistics.median(r["total_s"] for r in english),
         "tokens": english[0]["tokens"]},
    ]
    result = {"chars": args.chars, "init_s": init_s, "cold_cache": cold, "first": first, "steady": steady,
              "steady_median": med, "dense": dense, "english": english, "machine": machine()}
    if not args.no_official:
        text = paragraph(args.chars, seed=1)
        t0 = time.perf_counter()
        official = front.normalizer.backend.zh_whole_text(text)
        result["official_whole_text_zh_fst_s"] = time.perf_counter() - t0
        result["official_equal"] = official == front.normalizer.backend.zh(text)
        rows.append({"what": "official: one zh FST call on the text", "s": result["official_whole_text_zh_fst_s"]})
    print(f"text front end, {args.chars}-character paragraphs (CPU, timings noisy on a shared machine)")
    print(table(rows, [("what", "stage", "s"), ("s", "seconds", ".3f"), ("tokens", "tokens", "d")]))
    if "official_equal" in result:
        print(f"span-decomposed zh normalisation equals the whole-text FST call: {result['official_equal']}; "
              f"speed-up of the zh FST step {result['official_whole_text_zh_fst_s'] / med['normalize_s']:.1f}x")
    return result

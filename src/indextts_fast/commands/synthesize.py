"""Speak a text (or a text file) in a voice (an audio file, or a registered speaker) and write the audio."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_engine_arguments, add_settings_arguments, open_engine, parse_precision, settings_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--voice", metavar="AUDIO", help="reference clip of the voice (wav/flac/ogg/mp3)")
    who.add_argument("--speaker", metavar="ID", help="a speaker registered with `speakers add`")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text")
    what.add_argument("--text-file", metavar="FILE")
    p.add_argument("--out", required=True, metavar="FILE", help="output audio: .wav, .flac or .ogg")
    emo = p.add_argument_group("emotion")
    emo.add_argument("--emotion-audio", metavar="AUDIO", help="a clip whose emotion to speak with")
    emo.add_argument("--emotion-alpha", type=float, default=1.0, help="strength of the emotion, 0..1")
    emo.add_argument("--emotion-vector", metavar="W,W,W,W,W,W,W,W",
                     help="8 weights: happy,angry,sad,afraid,disgusted,melancholic,surprised,calm")
    emo.add_argument("--emotion-random", action="store_true", help="random emotion-matrix rows (vector mode)")
    emo.add_argument("--emotion-from-text", action="store_true",
                     help="derive the emotion vector from text with the folder's emotion classifier")
    emo.add_argument("--emotion-text", metavar="TEXT", help="the text to read the emotion from (default: --text)")
    add_settings_arguments(p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--profile", action="store_true", help="print the stage timing table")


def run(args: argparse.Namespace) -> int:
    from ..checks import check_output_path, read_text_file
    from ..errors import OptionError
    from ..options import check_seed
    from ..plan import make_plan
    from ..presets import resolve

    # everything the request names is checked before the model loads (and before torch is imported)
    text = read_text_file(args.text_file) if args.text_file else args.text
    if not text.strip():
        raise OptionError(f"{'text file ' + args.text_file if args.text_file else '--text'} is empty: give something to say")
    check_output_path(args.out)
    if args.seed is not None:
        check_seed(args.seed)
    resolve(args.preset, settings_overrides(args))
    make_plan(parse_precision(args.precision), device=args.device, force=args.force_precision)
    for flag, audio in (("--voice", args.voice), ("--emotion-audio", args.emotion_audio)):
        if audio is not None and not Path(audio).is_file():
            raise OptionError(f"{flag} {audio}: no such audio file")
    if not 0.0 <= args.emotion_alpha <= 1.0:
        raise OptionError(f"--emotion-alpha {args.emotion_alpha} is outside 0..1")
    vector = None
    if args.emotion_vector:
        try:
            vector = [float(v) for v in args.emotion_vector.split(",")]
        except ValueError:
            raise OptionError(f"--emotion-vector {args.emotion_vector!r}: needs 8 comma-separated numbers") from None
        if len(vector) != 8:
            raise OptionError(f"--emotion-vector has {len(vector)} numbers; it needs 8 (happy,angry,sad,afraid,"
                              "disgusted,melancholic,surprised,calm)")
    from ..pipeline import Emotion

    emotion = Emotion(audio=args.emotion_audio, alpha=args.emotion_alpha, vector=vector, use_random=args.emotion_random,
                      from_text=args.emotion_from_text or args.emotion_text is not None, text=args.emotion_text)
    engine = open_engine(args)
    result = engine.synthesize(text, voice=args.voice, speaker_id=args.speaker, emotion=emotion, preset=args.preset,
                               seed=args.seed, profile=args.profile, **settings_overrides(args))
    out = result.save(args.out)
    print(f"wrote {out}: {result.duration:.2f} s, {len(result.segments)} segment(s), seed {result.seed}, "
          f"RTF {result.timings.rtf:.3f}")
    if args.profile:
        print(result.timings.table())
    return 0

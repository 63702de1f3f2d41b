"""The `indextts-fast` command line. Each command lives in its own module with
`add_arguments(parser)` and `run(args) -> int`; modules keep heavy imports (torch) inside `run`."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

from .errors import IndexTTSFastError

# command -> (module, one-line help). Order is the order of `indextts-fast --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "synthesize": ("indextts_fast.commands.synthesize", "speak a text in a voice and write the audio"),
    "speakers": ("indextts_fast.commands.speakers", "register, list, show and remove voices"),
    "presets": ("indextts_fast.commands.presets", "list the named presets with every value"),
    "profile": ("indextts_fast.commands.profile", "time every stage over N runs, presets side by side"),
    "compare": ("indextts_fast.commands.compare", "speak texts x voices x presets with the same seeds, measure every clip"),
    "listen": ("indextts_fast.commands.listen", "blind listening test of a compare run (127.0.0.1), MOS per preset"),
    "soak": ("indextts_fast.commands.soak", "many consecutive generations, flagging every anomaly"),
    "fidelity": ("indextts_fast.commands.fidelity", "measure a bf16/int8 precision mode against fp32, stage by stage"),
    "check-parity": ("indextts_fast.parity.command", "check a reference folder's goldens against this implementation"),
    "make-checkpoint": ("indextts_fast.makeckpt", "write a random-weight model folder in the official layout"),
    "serve": ("indextts_fast.commands.serve", "an OpenAI-compatible speech server (127.0.0.1; voices, streaming)"),
    "doctor": ("indextts_fast.commands.doctor", "what this CPU runs natively, per precision mode, and what auto picks"),
    "bench": ("indextts_fast.benchmarks", "time one stage on a full-size random model (gpt, s2mel, vocoder, text)"),
}


def build_parser(only: Optional[str] = "") -> argparse.ArgumentParser:
    """The parser. `only`: None builds every command's arguments (imports every command module); a command
    name builds that one's and lists the others; "" lists them all without importing any (so that
    `indextts-fast --help` and each command's own arguments parse without loading torch)."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="indextts-fast", description="Fast, measured IndexTTS2 inference.")
    parser.add_argument("--version", action="version", version=f"indextts-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _command_of(argv: list[str]) -> str:
    """The command named in argv (the first argument that is one), or ""."""
    return next((a for a in argv if a in COMMANDS), "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_of(argv)).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except IndexTTSFastError as exc:
        print(f"indextts-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

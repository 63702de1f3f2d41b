"""Manage registered voices: a clip's conditioning is extracted once and stored under an id."""

from __future__ import annotations

import argparse

from . import add_engine_arguments, add_store_argument, open_engine, open_store


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="register a voice: speakers add ID AUDIO --model-dir DIR")
    add.add_argument("speaker_id", metavar="ID")
    add.add_argument("audio", metavar="AUDIO")
    add.add_argument("--overwrite", action="store_true", help="replace an existing entry with this id")
    add_engine_arguments(add)
    for name, help_text in (("list", "list registered voices"), ("show", "show one voice"),
                            ("remove", "delete a registered voice")):
        q = sub.add_parser(name, help=help_text)
        if name != "list":
            q.add_argument("speaker_id", metavar="ID")
        add_store_argument(q)


def run(args: argparse.Namespace) -> int:
    if args.action == "add":
        record = open_engine(args).register_speaker(args.speaker_id, args.audio, overwrite=args.overwrite)
        print(f"registered {record.speaker_id} ({record.audio_sha256[:12]}, model {record.model_fingerprint})")
        return 0
    store = open_store(args)
    if args.action == "list":
        records = store.list()
        if not records:
            print(f"no speakers registered in {store.root}")
        for r in records:
            print(f"{r.speaker_id}\t{r.created}\t{r.source}\tmodel {r.model_fingerprint}")
    elif args.action == "show":
        for key, value in store.show(args.speaker_id).to_dict().items():
            if key == "tensors":
                value = ", ".join(f"{k} {v['dtype']}{tuple(v['shape'])}" for k, v in value.items())
            print(f"{key:<18} {value}")
    elif args.action == "remove":
        store.remove(args.speaker_id)
        print(f"removed {args.speaker_id}")
    return 0

"""``segresearch`` command line.

Each command is a row of ``COMMANDS``: its one-line help, the function that adds its
arguments (``segresearch.cli.arguments``) and the function that runs it, each named as
``"module:function"``. Only the chosen command's modules are imported, in ``load``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from segresearch import __version__
from segresearch.cli.common import EXIT_INTERRUPTED, die, fresh_line


@dataclass(frozen=True)
class Command:
    help: str
    arguments: str  # "module:function" adding the command's arguments to its parser
    run: str  # "module:function" running it: args -> exit status
    extra: str = ""  # the optional dependency set its module needs, named when it is missing


_ARGS = "segresearch.cli.arguments"
COMMANDS: dict[str, Command] = {
    "run": Command("segment what a query describes in a video or image",
                   f"{_ARGS}:add_run_arguments", "segresearch.cli.run:cmd_run"),
    "demo": Command("the whole loop on a synthetic clip with a recorded policy",
                    f"{_ARGS}:add_demo_arguments", "segresearch.cli.demo:cmd_demo"),
    "data": Command("prepare datasets for RL training and evaluation",
                    f"{_ARGS}:add_data_arguments", "segresearch.cli.data:cmd_data"),
    "eval": Command("evaluate on OK-VOS (J&F) or an image set (gIoU/cIoU)",
                    f"{_ARGS}:add_eval_arguments", "segresearch.cli.eval:cmd_eval"),
    "segment": Command("masks for saved predictions (ours or the published dump)",
                       f"{_ARGS}:add_segment_arguments", "segresearch.cli.eval:cmd_segment"),
    "train": Command("RL training with verl (GRPO or DAPO presets; KEY=VALUE overrides)",
                     f"{_ARGS}:add_train_arguments", "segresearch.cli.train:cmd_train"),
    "serve": Command("run a service", f"{_ARGS}:add_serve_arguments", "segresearch.cli.serve:cmd_serve",
                     extra="server"),
    "kb": Command("build and query a local dense knowledge base (FAISS)",
                  f"{_ARGS}:add_kb_arguments", "segresearch.cli.kb:cmd_kb"),
}


def load(target: str) -> Callable[..., Any]:
    """The function ``"module:function"`` names, its module imported now. The one lazy
    import of the CLI, so that a command pays only for itself: the graph pulls in LangGraph
    and the model clients (~1.7 s), training pulls verl, Ray and torch (~12 s), and
    ``--help`` needs neither."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``only``, of that one command: the others are
    listed (for ``--help`` and spelling mistakes) without their arguments, whose
    definitions need ``Context``."""
    p = argparse.ArgumentParser(prog="segresearch", description="Knowledge-grounded video and image segmentation.")
    sub = p.add_subparsers(dest="command", required=True)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for name, cmd in COMMANDS.items():
        sp = sub.add_parser(name, help=cmd.help)
        if only is None or only == name:
            load(cmd.arguments)(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the command is the first word that is not an option: the top level has only flags
    chosen = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=chosen).parse_args(argv)
    cmd = COMMANDS[args.command]
    check_environment = load("segresearch.agents.context:check_environment")
    try:  # a malformed SEGRESEARCH_* variable: one line naming it, before any work
        check_environment()
    except ValueError as e:
        return die(str(e))
    try:
        run = load(cmd.run)
    except ImportError as e:
        if not cmd.extra:
            raise
        return die(f"{e} (install the {cmd.extra} extra: pip install 'segresearch[{cmd.extra}]')")
    try:
        return int(run(args))
    except KeyboardInterrupt:
        print(f"{fresh_line()}interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

"""The `compscale` command: one argparse tree gathered from each layer's command module.

Each module below exposes `register(subparsers)`; its handlers take the parsed args and return an
exit code. Modules import torch and ray inside their handlers, so `compscale gmse` never starts Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "compscale.cli_gmse",
    "compscale.cli_fit",
    "orchestrator.cli_advise",
    "workers.cli",
    "orchestrator.cli_sweep",
    "orchestrator.cli_report",
    "orchestrator.cli_explain",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compscale", description="Scaling-law sweeps over compressed representations."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as error:  # OSError: a path the user gave, mostly
        print(f"compscale {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a command that can resume (submit) says how before this
        print(f"compscale {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

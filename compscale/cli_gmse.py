"""Placeholder until this layer's commands land."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `compscale` parser."""

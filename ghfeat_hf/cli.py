"""The ``ghfeat`` command line: thin argument parsing over library functions."""

from __future__ import annotations

import argparse

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghfeat",
        description="GH-Feat (Generative Hierarchical Features) for PyTorch, transformers and timm.",
    )
    parser.add_argument("--version", action="version", version=f"ghfeat-hf {__version__}")
    parser.add_subparsers(dest="command", title="commands", metavar="<command>")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())

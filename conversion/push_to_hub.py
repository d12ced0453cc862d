"""Upload a converted or trained GH-Feat directory (with its StyleGAN sub-directories) to the Hugging Face Hub.

    python conversion/push_to_hub.py ghfeat-ffhq --repo-id <org>/ghfeat-ffhq-256 [--metrics parity_report.json]

The model cards are rendered again with the repo id and any measured numbers before the upload (metric names and
values are escaped for Markdown there). A failure prints one line, ``push_to_hub: error: <what>``, and exits with
status 1 (``--debug`` raises the exception with its traceback instead).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from ghfeat_hf.hub import push_to_hub  # noqa: E402


def hub_repo_id(text: str) -> str:
    """argparse type of Hub repo ids (they end up in the model cards' usage snippets)."""
    try:
        validate_repo_id(text)
    except HFValidationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def one_line(text: str) -> str:
    """``text`` with its control characters (newlines included) escaped, for a one-line error message."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda match: ascii(match.group())[1:-1], text)


def read_metrics(path: str) -> dict[str, Any]:
    """A JSON object of metric name -> number, string or bool (what the card's table can show)."""
    metrics = json.loads(Path(path).read_text())
    if type(metrics) is not dict or not all(type(value) in (int, float, str, bool) for value in metrics.values()):
        raise ValueError(f"{path}: metrics must be a JSON object of name -> number, string or bool")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="push_to_hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="directory written by the converter or a trainer")
    parser.add_argument("--repo-id", type=hub_repo_id, required=True, help="target Hub repo, e.g. <org>/ghfeat-ffhq-256")
    parser.add_argument("--metrics", default=None, help="JSON file of measured numbers (name -> value) for the card")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--debug", action="store_true", help="raise errors with their traceback instead of one line")
    args = parser.parse_args(argv)
    try:
        metrics = read_metrics(args.metrics) if args.metrics else None
        url = push_to_hub(args.directory, args.repo_id, token=args.token, private=args.private,
                          commit_message=args.commit_message, metrics=metrics)
    except Exception as error:  # OSError (files, network), ValueError (JSON, directory layout)
        if args.debug:
            raise
        print(f"push_to_hub: error: {one_line(str(error))}", file=sys.stderr)
        return 1
    print(f"uploaded {args.directory} -> {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

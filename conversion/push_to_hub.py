"""Upload a converted or trained GH-Feat directory (with its StyleGAN sub-directories) to the Hugging Face Hub.

    python conversion/push_to_hub.py ghfeat-ffhq --repo-id ghfeat-hf/ghfeat-ffhq-256 [--metrics parity_report.json]

The model cards are rendered again with the repo id and any measured numbers before the upload (metric names and
values are escaped for Markdown there). An error is one line, ``push_to_hub: error: <what>``, with the exit status of
every ghfeat command (2: a refused argument or file, 1: the system or the Hub refused); ``--debug`` (or
``GHFEAT_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ghfeat_hf.error_reporting import DEBUG_ENV, run_command
from ghfeat_hf.errors import UsageError
from ghfeat_hf.hub import hub_repo_id, push_to_hub
from ghfeat_hf.model_names import OFFICIAL_HUB_REPO

PROG = "push_to_hub"


def read_metrics(path: str) -> dict[str, Any]:
    """A JSON object of metric name -> number, string or bool (what the card's table can show)."""
    try:
        metrics = json.loads(Path(path).read_text())
    except ValueError as error:  # not JSON, not UTF-8
        raise UsageError(f"{path}: not a JSON file ({error})") from error
    if type(metrics) is not dict or not all(type(value) in (int, float, str, bool) for value in metrics.values()):
        raise UsageError(f"{path}: metrics must be a JSON object of name -> number, string or bool")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="directory written by the converter or a trainer")
    parser.add_argument("--repo-id", type=hub_repo_id, required=True,
                        help=f"target Hub repo, e.g. {OFFICIAL_HUB_REPO} for the converted official FFHQ model")
    parser.add_argument("--metrics", default=None, help="JSON file of measured numbers (name -> value) for the card")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error instead of one line (also: {DEBUG_ENV}=1)")
    args = parser.parse_args(argv)

    def upload() -> None:
        metrics = read_metrics(args.metrics) if args.metrics else None
        url = push_to_hub(args.directory, args.repo_id, token=args.token, private=args.private,
                          commit_message=args.commit_message, metrics=metrics)
        print(f"uploaded {args.directory} -> {url}")

    return run_command(PROG, upload, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())

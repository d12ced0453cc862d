"""Upload a converted or trained GH-Feat directory (with its StyleGAN sub-directories) to the Hugging Face Hub.

    python conversion/push_to_hub.py ghfeat-ffhq --repo-id <org>/ghfeat-ffhq-256 [--metrics parity_report.json]

The model cards are rendered again with the repo id and any measured numbers before the upload.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from ghfeat_hf.hub import push_to_hub  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="directory written by the converter or a trainer")
    parser.add_argument("--repo-id", required=True, help="target Hub repo, e.g. <org>/ghfeat-ffhq-256")
    parser.add_argument("--metrics", default=None, help="JSON file of measured numbers (name -> value) for the card")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token)")
    parser.add_argument("--commit-message", default=None)
    args = parser.parse_args(argv)
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    url = push_to_hub(args.directory, args.repo_id, token=args.token, private=args.private,
                      commit_message=args.commit_message, metrics=metrics)
    print(f"uploaded {args.directory} -> {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``ghfeat convert``: an official GH-Feat / StyleGAN v1 TensorFlow pickle into model folders.

    ghfeat convert --pickle ghfeat-encoder-ffhq-256.pkl                 # -> ./ghfeat-ffhq
    ghfeat convert --pickle PKL --output DIR [--overwrite] [--push-to-hub ORG/NAME] [--debug]

``python conversion/convert_official_tf.py`` (a checkout's script) runs this same command.
"""

from __future__ import annotations

import argparse
import logging
import os

from ..error_reporting import DEBUG_ENV
from ..hub import hub_repo_id
from ..model_names import OFFICIAL_HUB_REPO, OFFICIAL_LOCAL_NAME, OFFICIAL_PICKLE, OFFICIAL_PICKLES, OFFICIAL_REPOSITORY

logger = logging.getLogger("ghfeat.convert")

_RELEASED = "\n".join(f"  {name:<32} -> {entry.output}" for name, entry in OFFICIAL_PICKLES.items())
EPILOG = f"""\
The released pickles are linked from the README of the official GH-Feat repository ({OFFICIAL_REPOSITORY}).
Without --output, each becomes this folder (any other file: {OFFICIAL_LOCAL_NAME}):
{_RELEASED}
Every loader takes ./{OFFICIAL_LOCAL_NAME} as a path: AutoModel.from_pretrained("{OFFICIAL_LOCAL_NAME}") run in this
folder, ghfeat extract --model {OFFICIAL_LOCAL_NAME}, ... Its copy on the Hugging Face Hub is {OFFICIAL_HUB_REPO}.

An encoder pickle (E, G, D, Gs) gives OUTPUT/ (GHFeatModel, image processor, model card),
OUTPUT/stylegan-generator/ and OUTPUT/stylegan-discriminator/; a StyleGAN pickle (G, D, Gs) gives the two StyleGAN
folders. The pickle is never unpickled (nothing in it runs), and OUTPUT appears only once everything is written.

exit status:
  0    converted (and uploaded, with --push-to-hub)
  2    refused: an argument; a file that is not an official network pickle (unsafe, over budget, corrupt, not a
       regular file); networks that do not match the official architecture; an existing OUTPUT without --overwrite
  1    the system refused: a missing or unreadable pickle, an output that could not be written, the upload; or an
       unexpected error
  130  interrupted
An error is one line on stderr, "ghfeat convert: error: <file>: <what>"; --debug (or {DEBUG_ENV}=1) shows the
traceback instead.
"""


def default_output(pickle_path: str | os.PathLike) -> str:
    """The folder a pickle converts to without ``--output``: a released pickle's own name, else ``ghfeat-ffhq``."""
    official = OFFICIAL_PICKLES.get(os.path.basename(os.fspath(pickle_path)))
    return official.output if official else OFFICIAL_LOCAL_NAME


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``convert`` to the ``ghfeat`` sub-commands."""
    parser = subparsers.add_parser(
        "convert",
        help=f"convert an official GH-Feat/StyleGAN TensorFlow pickle into model folders (./{OFFICIAL_LOCAL_NAME})",
        description="Convert an official GH-Feat / StyleGAN v1 TensorFlow pickle into transformers model folders, "
                    "without TensorFlow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pickle", required=True,
                        help=f"official encoder pickle (E, G, D, Gs), e.g. {OFFICIAL_PICKLE}, or StyleGAN pickle "
                             "(G, D, Gs)")
    parser.add_argument("--output", help=f"output folder (default: {OFFICIAL_LOCAL_NAME}; see below)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output (only once everything is converted)")
    parser.add_argument("--repo-id", type=hub_repo_id,
                        help="Hub repo id the model cards' usage snippets name (default: --push-to-hub, else "
                             "<org>/OUTPUT)")
    parser.add_argument("--domain", help="image domain named in the model cards (default: the released pickle's, "
                                         "e.g. 'FFHQ faces')")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", type=hub_repo_id,
                        help=f"upload the result to this Hub repo (the official FFHQ model is {OFFICIAL_HUB_REPO})")
    # SUPPRESS: without the flag, `ghfeat --debug convert ...` keeps the top-level value
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=f"show the traceback of an error instead of one line (also: {DEBUG_ENV}=1)")
    parser.set_defaults(handler=run_convert)
    return parser


def run_convert(args: argparse.Namespace) -> int:
    """Convert ``args.pickle``, then upload with ``--push-to-hub``; errors propagate to the shared error path."""
    from transformers.utils.logging import disable_progress_bar

    from ..hub import push_to_hub
    from .convert import convert

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    disable_progress_bar()  # the converter logs its own progress; stderr stays one line on a failure
    output = args.output or default_output(args.pickle)
    written = convert(args.pickle, output, args.push_to_hub or args.repo_id, args.domain, args.overwrite)
    for kind, directory in written.items():
        logger.info("wrote %s -> %s", kind, directory)
    if args.push_to_hub:
        logger.info("uploaded -> %s", push_to_hub(output, args.push_to_hub))
    return 0


__all__ = ["EPILOG", "add_convert_parser", "default_output", "run_convert"]

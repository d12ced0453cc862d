"""Convert an official GH-Feat / StyleGAN v1 TensorFlow pickle into transformers folders: ``ghfeat convert`` as a
script of the checkout (the converter itself is ``ghfeat_hf.conversion``, installed with the package).

    python conversion/convert_official_tf.py --pickle ghfeat-encoder-ffhq-256.pkl --output ghfeat-ffhq

Options, outputs and exit statuses are those of ``ghfeat convert --help``; an error is one line,
``ghfeat convert: error: <file>: <what>`` (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import sys

from ghfeat_hf.cli import main as ghfeat_main


def main(argv: list[str] | None = None) -> int:
    """Run ``ghfeat convert`` with ``argv`` (default: the script's arguments); returns the exit status."""
    return ghfeat_main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env bash
# Rewrite constraints/ci.txt, the CI lock, from the environment `make test-latest` built and tested.
set -euo pipefail
cd "$(dirname "$0")/.."

freeze=.venv-latest/freeze.txt
if [[ ! -f "$freeze" ]]; then
    echo "scripts/ci-lock.sh: no $freeze; run \`make test-latest\` first" >&2
    exit 1
fi
{
    echo "# The CI lock: every distribution .ci/run installs, pinned (pip reads it through PIP_CONSTRAINT)."
    echo "# Produced by \`make test-latest\` (a fresh .venv-latest/ with the newest releases pyproject.toml allows,"
    echo "# on which the default suite then ran), then \`make ci-lock\`: \`pip freeze --all --exclude-editable\` of"
    echo "# that venv, less pip. Regenerate the same way; make test-latest and make test-lowest ignore this file."
    echo "# Built with $(.venv-latest/bin/python --version) on $(date -u +%Y-%m-%d)."
    grep -viE '^pip==' "$freeze"
} > constraints/ci.txt
echo "constraints/ci.txt: $(grep -vc '^#' constraints/ci.txt) pins"

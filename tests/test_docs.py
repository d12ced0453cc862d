"""The documentation runs: every fenced bash / sh / shell / console / python block of README.md, the training
recipes, the benchmark reports, the embedded models' cards and the model card templates (rendered for tiny models)
runs as written, or carries a doc-test marker that says why not (``tests/doc_blocks.py``).

Shell blocks run in order, one document at a time, in a fresh copy of the working tree (a new git checkout), as a
reader would type them: a block runs after the earlier shell blocks of its document that run too, in the same
directory, so the README's training commands train a StyleGAN and then an encoder against it. Identical sequences
(a recipe and the model card that embeds it) run once. Python blocks run on their own in an empty directory. Every
block runs offline (``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1``) on one thread, with the running interpreter's
``python``, ``ghfeat`` and ``accelerate`` first on the PATH; ``pip install`` runs as ``--dry-run`` (it resolves
the requirements against this environment and leaves it as it is). The terminal summary counts the blocks that ran
and lists the marked ones with their reasons.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import train_stylegan
from ghfeat_hf import GHFeatModel, StyleGANDiscriminator, StyleGANGenerator
from ghfeat_hf.hub import save_ghfeat_directory
from ghfeat_hf.model_card import PROVENANCE_FILE, render_model_card
from scripts.doc_measurements import (
    MEASUREMENTS,
    measure_embedded_model,
    measure_evaluation,
    measured_spans,
    read_record,
)
from tests.conftest import tiny_discriminator_config, tiny_generator_config, tiny_ghfeat_config
from tests.doc_blocks import (
    ROOT,
    Block,
    Marker,
    card_templates,
    parse_blocks,
    relative,
    static_documents,
)

BLOCK_TIMEOUT, SLOW_BLOCK_TIMEOUT = 900, 4 * 3600
OUTPUT_TAIL = 4000
# each template's cards: the GH-Feat card, and the StyleGAN card of a generator and of a discriminator
TEMPLATE_VARIANTS = {"ghfeat.md": ("ghfeat",), "stylegan.md": ("generator", "discriminator")}

DOCUMENTS = {relative(path): parse_blocks(path.read_text(), relative(path)) for path in static_documents()}
TEMPLATES = {relative(path): parse_blocks(path.read_text(), relative(path)) for path in card_templates()}


@dataclass
class Outcome:
    returncode: int
    output: str
    seconds: float


@dataclass
class Tally:
    """What the summary reports: the blocks run (and how many reused an identical sequence's run)."""

    ran: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    seconds: float = 0.0


TALLY = Tally()
_OUTCOMES: dict[tuple, Outcome] = {}
_CLONES: dict[tuple, Path] = {}


def _param(block: Block, *variant: str):
    marks = [pytest.mark.slow] if block.marked("slow") else []
    return pytest.param(block, *variant, id=block.id + "".join(f"[{name}]" for name in variant), marks=marks)


def _environment(pythonpath: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "GHFEAT_MODEL"}
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(pythonpath),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        # a dry run resolves the requirements against this environment and changes nothing; without build isolation
        # (pip reads PIP_NO_BUILD_ISOLATION=0 as --no-build-isolation), as the isolated build's own install would
        # be a dry run too and leave no backend
        PIP_DRY_RUN="1", PIP_NO_BUILD_ISOLATION="0",
    )
    return env


def _execute(command: list[str], cwd: Path, pythonpath: Path, slow: bool) -> Outcome:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=cwd, env=_environment(pythonpath), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=SLOW_BLOCK_TIMEOUT if slow else BLOCK_TIMEOUT)
        returncode, output = done.returncode, done.stdout
    except subprocess.TimeoutExpired as timeout:
        returncode, output = -1, f"timed out after {timeout.timeout} s\n{timeout.output or ''}"
    seconds = time.perf_counter() - start
    TALLY.seconds += seconds
    return Outcome(returncode, output, seconds)


def _fresh_clone(directory: Path) -> Path:
    """The working tree's files (tracked, and untracked but not ignored) copied into ``directory``, made a git
    checkout of its own like a clone (``ghfeat evaluate --update-model-card`` writes into a checkout's models)."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                 capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"the shell blocks run in a copy of a git checkout: {error}")
    for name in filter(None, listing.split("\0")):
        if (ROOT / name).is_file():  # listed but deleted in the working tree: not copied
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, directory / name)
    subprocess.run(["git", "init", "-q"], cwd=directory, check=True)
    return directory


def _runs_by_default(block: Block) -> bool:
    return block.marker is None or block.marked("shorten")


def _shell_sequence(block: Block) -> list[Block]:
    """``block`` after the earlier shell blocks of its document that run in the default selection."""
    earlier = [other for other in DOCUMENTS.get(block.document, [])
               if other.is_shell and other.line < block.line and _runs_by_default(other)]
    return [*earlier, block]


def _key(sequence: list[Block]) -> tuple:
    return tuple((block.language, block.script()) for block in sequence)


def _run_sequence(sequence: list[Block], factory: pytest.TempPathFactory) -> Outcome:
    """Run the last block of ``sequence`` in the clone where the blocks before it ran (each once per session)."""
    key = _key(sequence)
    if key in _OUTCOMES:
        return _OUTCOMES[key]
    if len(sequence) > 1:
        before = _run_sequence(sequence[:-1], factory)
        if before.returncode != 0:
            return Outcome(before.returncode, f"the earlier block {sequence[-2].id} failed:\n{before.output}", 0.0)
        clone = _CLONES[key[:-1]]
    else:
        clone = _fresh_clone(factory.mktemp("clone"))
    _OUTCOMES[key] = _execute(["bash", "-e", "-o", "pipefail", "-c", sequence[-1].script()], clone, clone,
                              sequence[-1].marked("slow"))
    _CLONES[key] = clone
    return _OUTCOMES[key]


def _run_python(block: Block, directory: Path) -> Outcome:
    (directory / "doc_block.py").write_text(block.script())
    return _execute([sys.executable, "doc_block.py"], directory, ROOT, block.marked("slow"))


def _check(block: Block, outcome: Outcome, shared: bool) -> None:
    (TALLY.shared if shared else TALLY.ran).append(block.id)
    assert outcome.returncode == 0, (f"{block.id} ({block.language}) exited {outcome.returncode}:\n"
                                     f"{block.script()}\n--- output (tail) ---\n{outcome.output[-OUTPUT_TAIL:]}")


def _run(block: Block, tmp_path: Path, factory: pytest.TempPathFactory) -> None:
    """Run a block or skip it for its marker (a malformed marker fails)."""
    assert not block.marked("invalid"), f"{block.id}: malformed marker {block.marker.detail!r}"
    if block.marked("skip"):
        pytest.skip(f"marked: {block.marker.detail}")
    if block.is_shell:
        sequence = _shell_sequence(block)
        shared = _key(sequence) in _OUTCOMES
        _check(block, _run_sequence(sequence, factory), shared)
    else:
        _check(block, _run_python(block, tmp_path), shared=False)


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    """Adds the documentation summary to pytest's terminal summary."""
    manager = request.config.pluginmanager
    if not manager.has_plugin("ghfeat-doc-blocks"):
        manager.register(_SummaryPlugin(), "ghfeat-doc-blocks")


class _SummaryPlugin:
    @staticmethod
    def pytest_terminal_summary(terminalreporter) -> None:
        blocks = [block for blocks in (*DOCUMENTS.values(), *TEMPLATES.values()) for block in blocks if block.runnable]
        marked = [block for block in blocks if block.marked("skip") or block.marked("slow")]
        terminalreporter.section("documentation blocks (tests/test_docs.py)")
        terminalreporter.write_line(
            f"{len(TALLY.ran)} ran ({TALLY.seconds:.0f} s), {len(TALLY.shared)} shared the run of an identical "
            f"block sequence, {len(marked)} marked (of {len(blocks)} blocks; template blocks count once per "
            "template):")
        for block in marked:
            terminalreporter.write_line(f"  {block.marker.action:5} {block.id}: {block.marker.detail}")


@pytest.mark.parametrize("block", [_param(block) for blocks in DOCUMENTS.values() for block in blocks if block.runnable])
def test_block_runs_or_is_marked(block: Block, tmp_path, tmp_path_factory):
    _run(block, tmp_path, tmp_path_factory)


@pytest.mark.parametrize("document, handed_on", [
    ("README.md", ["runs/fmnist32-stylegan/stylegan-generator/model.safetensors", "runs/enc/ghfeat/model.safetensors"]),
    ("training/recipes/ghfeat-fmnist32.md", ["runs/fmnist32-encoder-v2b/ghfeat/model.safetensors",
                                             "ghfeat_hf/pretrained/ghfeat-fmnist32/evaluation.json"]),
])
def test_training_commands_run_in_sequence(document: str, handed_on: list[str], tmp_path_factory):
    """A document's training commands run in order in one fresh clone, each on what the one before wrote: the
    StyleGAN, the encoder trained against it, the packaged and evaluated model."""
    sequence = _shell_sequence([block for block in DOCUMENTS[document] if block.is_shell and _runs_by_default(block)][-1])
    outcome = _run_sequence(sequence, tmp_path_factory)
    assert outcome.returncode == 0, outcome.output[-OUTPUT_TAIL:]
    clone = _CLONES[_key(sequence)]
    assert [path for path in handed_on if not (clone / path).is_file()] == []


@pytest.fixture(scope="module")
def rendered_cards(tmp_path_factory) -> dict[str, list[Block]]:
    """The blocks of cards rendered for tiny models, by variant; the usage snippets load the tiny directory."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("cards")
    directories = {
        "ghfeat": save_ghfeat_directory(GHFeatModel(tiny_ghfeat_config()).eval(), root / "ghfeat"),
        "generator": root / "generator",
        "discriminator": root / "discriminator",
    }
    StyleGANGenerator(tiny_generator_config()).save_pretrained(directories["generator"])
    StyleGANDiscriminator(tiny_discriminator_config()).save_pretrained(directories["discriminator"])
    cards = {}
    for variant, directory in directories.items():
        card = render_model_card(directory, repo_id=str(directory))
        cards[variant] = parse_blocks(card.read_text(), f"{variant} card")
    return cards


@pytest.mark.parametrize("block, variant", [_param(block, variant) for name, blocks in TEMPLATES.items()
                                            for block in blocks if block.runnable
                                            for variant in TEMPLATE_VARIANTS[Path(name).name]])
def test_card_template_block_runs_or_is_marked(block: Block, variant: str, rendered_cards, tmp_path,
                                                tmp_path_factory):
    """The template's block as a rendered card holds it: the same position, language and marker."""
    template_blocks = TEMPLATES[block.document]
    rendered = rendered_cards[variant]
    assert len(rendered) == len(template_blocks), f"the {variant} card has other blocks than {block.document}"
    position = template_blocks.index(block)
    card_block = rendered[position]
    assert (card_block.language, card_block.marker) == (block.language, block.marker), "lost in rendering"
    _run(Block(block.document, block.line, card_block.language, card_block.code, card_block.marker), tmp_path,
         tmp_path_factory)


def test_markers_and_shortening():
    text = ("<!-- doc-test: skip (needs the Hub) -->\n```bash\nhub\n```\n\n<!-- doc-test: skip () -->\n```python\n"
            "x = 1\n```\n<!-- doc-test: shorten (train.py += --max_steps 2) -->\n```bash\npython train.py \\\n"
            "    --a 1  # note\nls\n```\n\n  ~~~\n  plain\n  ~~~\n")
    hub, empty_reason, shortened, plain = parse_blocks(text, "doc.md")
    assert [block.line for block in (hub, empty_reason, shortened, plain)] == [2, 7, 11, 17]
    assert hub.marked("skip") and hub.marker.detail == "needs the Hub" and hub.runnable
    assert empty_reason.marked("invalid")
    assert shortened.script() == "python train.py      --a 1 --max_steps 2  # note\nls\n"
    assert plain.language == "" and plain.code == "plain\n" and plain.marker is None and not plain.runnable
    with pytest.raises(ValueError, match="no command holds 'other.py'"):
        Block("doc.md", 1, "bash", "python train.py\n", Marker("shorten", "other.py += --x 1")).script()


def test_every_template_has_its_cards():
    assert set(TEMPLATE_VARIANTS) == {Path(name).name for name in TEMPLATES}, (
        "a new model card template needs its variants in TEMPLATE_VARIANTS")


def test_every_fence_names_its_language():
    """A block without a language would run nowhere: each fence says what it holds (```bash, ```text, ...)."""
    unnamed = [block.id for blocks in (*DOCUMENTS.values(), *TEMPLATES.values()) for block in blocks
               if not block.language]
    assert unnamed == []


def test_embedded_card_source_is_the_recipe():
    """The embedded model's card quotes its recipe (markers included) as the packaging step wrote it."""
    recipe = (ROOT / "training" / "recipes" / "ghfeat-fmnist32.md").read_text().strip()
    provenance = json.loads((ROOT / "ghfeat_hf" / "pretrained" / "ghfeat-fmnist32" / PROVENANCE_FILE).read_text())
    assert provenance["source"] == recipe


def test_embedded_card_is_rendered_from_its_files(tmp_path):
    """Rendering the embedded model's card again from its files and the templates gives the shipped card."""
    shipped = ROOT / "ghfeat_hf" / "pretrained" / "ghfeat-fmnist32"
    copy = shutil.copytree(shipped, tmp_path / shipped.name)
    assert render_model_card(copy).read_text() == (shipped / "README.md").read_text()


def test_stylegan_default_length_is_announced(capsys):
    """The README's word on a StyleGAN run without --max_steps: the default length, in --help and at the start."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"stops after {train_stylegan.DEFAULT_MAX_STEPS:,} steps and says so" in readme
    args = train_stylegan.parse_args(["--dataset", "d", "--output_dir", "o"])
    assert args.max_steps == train_stylegan.DEFAULT_MAX_STEPS
    assert f"the default {train_stylegan.DEFAULT_MAX_STEPS} steps" in capsys.readouterr().err
    assert train_stylegan.parse_args(["--dataset", "d", "--output_dir", "o", "--max_steps", "7"]).max_steps == 7
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        train_stylegan.parse_args(["--help"])
    assert f"Not given: {train_stylegan.DEFAULT_MAX_STEPS}" in " ".join(capsys.readouterr().out.split())


def test_documented_measurements_match_the_record():
    """Every measured span of the docs holds the text that the recorded measurements give, and the measurements that
    need no run (the embedded model's size, the evaluation time its reports record) still hold."""
    record = read_record()
    spans = measured_spans()
    assert {key for _, key, _ in spans} == set(MEASUREMENTS), "each measurement is quoted, and only those"
    for document, key, text in spans:
        assert text == MEASUREMENTS[key](record), f"{document}: the span {key!r} disagrees with the record"
    now = {"embedded_model": measure_embedded_model(), "evaluation": measure_evaluation()}
    for key in ("embedded-model-size", "evaluation-time"):
        assert MEASUREMENTS[key](now) == MEASUREMENTS[key](record), (
            f"{key} changed: run python scripts/doc_measurements.py")

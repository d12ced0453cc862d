"""Shared test setup: offline Hub, tiny model configurations and builders, the official-TF fixtures, a recording Hub
API and subprocess runners. Plain helper functions (shared assertions, data writers) are in ``helpers.py``."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read once at huggingface_hub import: set before any HF import
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from ghfeat_hf import (  # noqa: E402
    GHFeatConfig,
    GHFeatImageProcessor,
    GHFeatModel,
    StyleGANDiscriminatorConfig,
    StyleGANGeneratorConfig,
)

REPO = Path(__file__).resolve().parents[1]
# A Python subprocess that imports the tests and the training modules: the checkout, and training/ as the training
# scripts see it (pyproject.toml's pytest pythonpath does the same for the test process).
TRAINING_PYTHONPATH = os.pathsep.join([str(REPO), str(REPO / "training")])
SHARED = Path(os.environ.get("GHFEAT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
OFFICIAL_FIXTURES = SHARED / "fixtures" / "official-tf"


def tiny_generator_config(resolution: int = 32, **overrides) -> StyleGANGeneratorConfig:
    """A StyleGAN small enough for unit tests; 128 px exercises the fused up/down convolutions."""
    kwargs = dict(resolution=resolution, fmap_base=128, fmap_max=32, latent_size=16, dlatent_size=16,
                  mapping_fmaps=16, mapping_layers=2)
    return StyleGANGeneratorConfig(**{**kwargs, **overrides})


def tiny_ghfeat_config(resolution: int = 32, depth: int = 18, num_channels: int = 3, **overrides) -> GHFeatConfig:
    """A tiny GH-Feat model; ``num_channels`` is both the encoder's input and the generator's output channels."""
    small = resolution <= 64
    # initializer_range 0.1 keeps the codes of a random tiny encoder O(1) (the default 0.02 gives ~1e-8, which
    # would make every tolerance check pass trivially)
    kwargs = dict(depth=depth, base_width=8, extra_stage_channels=32, pyramid_channels=16, image_size=resolution,
                  num_channels=num_channels, stem_stride=1 if small else 2, stem_pool=not small, initializer_range=0.1,
                  generator_config=tiny_generator_config(resolution, num_channels=num_channels).to_dict())
    return GHFeatConfig(**{**kwargs, **overrides})


def tiny_discriminator_config(resolution: int = 32, num_channels: int = 3, **overrides) -> StyleGANDiscriminatorConfig:
    kwargs = dict(resolution=resolution, num_channels=num_channels, fmap_base=128, fmap_max=32)
    return StyleGANDiscriminatorConfig(**{**kwargs, **overrides})


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., GHFeatModel]:
    """The builder ``tiny_model(seed=0, image_size=32)`` of a random GH-Feat in eval mode: a 32 px generator (8 layers:
    coarse 0-1, middle 2-3, fine 4-7) and an encoder taking ``image_size`` px (a multiple of 16)."""

    def build(seed: int = 0, image_size: int = 32) -> GHFeatModel:
        torch.manual_seed(seed)
        return GHFeatModel(tiny_ghfeat_config(image_size=image_size)).eval()

    return build


@pytest.fixture(scope="session")
def save_tiny_model(tiny_model) -> Callable[[Path], Path]:
    """``save_tiny_model(directory) -> directory`` saves a 32 px GH-Feat (model and processor) whose encoder weights
    give O(1) codes (the default init gives ~1e-7)."""

    def save(directory: Path) -> Path:
        model = tiny_model()
        with torch.no_grad():
            for parameter in model.encoder.parameters():
                if parameter.ndim > 1:
                    parameter.normal_(0.0, math.sqrt(1.0 / parameter[0].numel()))
        model.save_pretrained(directory)
        GHFeatImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
        return directory

    return save


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls that would go over HTTP."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])  # a staged copy, gone after the call: record what it held
        uploaded = {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
        self.calls.append(("upload_folder", kwargs["repo_id"], {**kwargs, "files": uploaded}))
        return type("Commit", (), {"commit_url": f"https://hub.example/{kwargs['repo_id']}/commit/1"})()


@pytest.fixture
def recording_api() -> RecordingApi:
    """A fresh :class:`RecordingApi` (``.calls`` lists ``(method, repo_id, kwargs)``) to pass as ``api=``."""
    return RecordingApi()


@pytest.fixture(scope="session")
def run_python() -> Callable[..., dict]:
    """``run_python(code, env=None) -> dict`` runs ``code`` (dedented) in a fresh offline Python process, asserts it
    succeeds and returns the JSON object printed on its last stdout line."""

    def run(code: str, env: dict | None = None) -> dict:
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    return run


ACCEPTANCE = 'import ghfeat_hf; from transformers import AutoModel; AutoModel.from_pretrained("ghfeat-ffhq")'


@pytest.fixture(scope="session")
def run_acceptance_line() -> Callable[[Path], subprocess.CompletedProcess]:
    """``run_acceptance_line(directory)`` runs the exact ``python -c`` line loading ``ghfeat-ffhq`` (``ACCEPTANCE``)
    in ``directory``, offline, and returns the completed process."""

    def run(directory: Path) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        return subprocess.run([sys.executable, "-c", ACCEPTANCE], cwd=directory, env=env, capture_output=True,
                              text=True, timeout=300)

    return run


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions are faster on one thread; several threads crawl on a busy shared CPU. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


PARITY_LINES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    """Print the measured parity errors against the official TensorFlow references."""
    if PARITY_LINES:
        terminalreporter.section("parity with the official TensorFlow code (relative error ||out-ref||/||ref||)")
        for line in PARITY_LINES:
            terminalreporter.write_line(line)


HOSTILE_SECONDS, HOSTILE_BYTES = 10.0, 1 << 30


@pytest.fixture
def hostile_budget():
    """Each hostile-input case must use less than 10 s of CPU and raise the process's peak memory by less than 1 GiB
    (SECURITY.md). CPU time, not wall time: it bounds the work an input causes whatever else the machine runs.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("hostile_budget")``; cases that could block (where
    no CPU is spent) arm their own alarm."""
    import resource
    import time

    peak_kib, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.process_time()
    yield
    seconds = time.process_time() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kib) * 1024
    assert seconds < HOSTILE_SECONDS, f"the case took {seconds:.1f} s of CPU (budget {HOSTILE_SECONDS:.0f} s)"
    assert grown < HOSTILE_BYTES, f"the case raised the peak memory by {grown / 2**20:.0f} MiB (budget 1 GiB)"

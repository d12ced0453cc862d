"""Shared test setup: offline Hub, tiny model configurations, the official-TF fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read once at huggingface_hub import: set before any HF import
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from ghfeat_hf import GHFeatConfig, StyleGANDiscriminatorConfig, StyleGANGeneratorConfig  # noqa: E402

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
    """Each hostile-input case must finish within 10 s and raise the process's peak memory by less than 1 GiB
    (SECURITY.md). Modules opt in with ``pytestmark = pytest.mark.usefixtures("hostile_budget")``; cases that could
    block also arm their own alarm."""
    import resource
    import time

    peak_kib, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    yield
    seconds = time.monotonic() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kib) * 1024
    assert seconds < HOSTILE_SECONDS, f"the case took {seconds:.1f} s (budget {HOSTILE_SECONDS:.0f} s)"
    assert grown < HOSTILE_BYTES, f"the case raised the peak memory by {grown / 2**20:.0f} MiB (budget 1 GiB)"

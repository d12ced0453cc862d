"""training/train_stylegan.py: end-to-end run, exports, exact resume after a kill, bf16, two CPU processes."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.test_utils import get_launch_command
from safetensors.torch import load_file
from transformers import AutoModel

import ghfeat_hf  # noqa: F401  (registers the Auto classes)
import growing
import stylegan_trainer
import train_stylegan
from ghfeat_hf import StyleGANDiscriminator, StyleGANGenerator
from tests.helpers import photo_crops, write_saved_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def reset_accelerate_singletons():
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def photo_dataset(tmp_path_factory):
    """24 readable scikit-image crops (RGB, L, RGBA, P; 40-56 px) and 2 unreadable rows, saved with save_to_disk."""
    return write_saved_dataset(tmp_path_factory.mktemp("data") / "photos", photo_crops(24), corrupt=2)


def tiny_args(dataset, output_dir, *extra):
    return [
        "--dataset", str(dataset), "--output_dir", str(output_dir), "--resolution", "16", "--fmap_base", "64",
        "--fmap_max", "16", "--latent_size", "16", "--mapping_layers", "2", "--batch_size", "8",
        "--num_samples", "8", "--grid_columns", "4", "--log_every", "1", "--seed", "5", *extra,
    ]


def test_end_to_end_exports_samples_and_tensorboard(tmp_path, photo_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train_stylegan.main(tiny_args(photo_dataset, tmp_path, "--max_steps", "4", "--checkpointing_steps", "2",
                                           "--sample_every", "2"))
    assert result["step"] == 4 and result["images_seen"] == 32
    history = result["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(np.isfinite(list(h.values())).all() for h in history)
    assert all(h["r1_penalty"] > 0 and h["grad_norm_G"] > 0 and h["grad_norm_D"] > 0 for h in history)
    assert history[0]["loss_D"] == pytest.approx(history[0]["loss_D_real"] + history[0]["loss_D_fake"]
                                                 + 5.0 * history[0]["r1_penalty"], rel=1e-5)
    # 26 rows with 2 unreadable ones, batches of 8 (drop_last): epoch 0 consumed 3 batches
    assert result["epoch"] == 1 and result["skipped_samples"] >= 1

    generator = AutoModel.from_pretrained(tmp_path / "stylegan-generator")
    discriminator = AutoModel.from_pretrained(tmp_path / "stylegan-discriminator")
    assert isinstance(generator, StyleGANGenerator) and isinstance(discriminator, StyleGANDiscriminator)
    assert generator.config.resolution == 16 and generator.config.style_mixing_prob == 0.9
    assert generator.mapping.w_avg.abs().sum() > 0  # the tracked average w is exported
    with torch.no_grad():
        assert discriminator(generator(torch.randn(4, 16))).shape == (4, 1)
    # The export is the EMA generator: close to, but not equal to, the raw generator of the last checkpoint.
    raw = load_file(tmp_path / "checkpoints" / "checkpoint_4" / "model.safetensors")
    exported = load_file(tmp_path / "stylegan-generator" / "model.safetensors")
    key = "synthesis.layers.1.conv.weight"
    assert not torch.equal(raw["generator." + key], exported[key])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_2", "checkpoint_4"]

    grids = sorted((tmp_path / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000004.png"]
    grid = PIL.Image.open(grids[-1])
    assert grid.width > 4 * 64 and grid.height > 2 * 64 and np.asarray(grid).std() > 5
    events = EventAccumulator(str(tmp_path / "logs" / "train_stylegan")).Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss_D", "train/loss_G", "train/r1_penalty", "train/D_real", "train/D_fake", "train/lr_G",
                "train/grad_norm_G", "train/grad_norm_D", "perf/images_per_second", "data/skipped_samples"):
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("train/loss_G")] == [1, 2, 3, 4]
    assert events.Scalars("train/loss_G")[-1].value == pytest.approx(history[-1]["loss_G"], rel=1e-6)
    assert events.Tags()["images"] == ["samples/ema"]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["images_seen"] == 32 and summary["num_processes"] == 1


def test_kill_and_resume_is_bit_identical(tmp_path, photo_dataset, monkeypatch):
    common = ("--max_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2", "--sample_every", "0")
    full = train_stylegan.main(tiny_args(photo_dataset, tmp_path / "full", *common))
    AcceleratorState._reset_state(True)

    original = stylegan_trainer.StyleGANTrainer.step

    def killed_at_step_5(trainer, micro_batches, step):
        if step == 4:  # the 5th update: checkpoint_4 is the newest one on disk
            raise KeyboardInterrupt("simulated kill")
        return original(trainer, micro_batches, step)

    monkeypatch.setattr(stylegan_trainer.StyleGANTrainer, "step", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_stylegan.main(tiny_args(photo_dataset, tmp_path / "cut", *common))
    monkeypatch.setattr(stylegan_trainer.StyleGANTrainer, "step", original)
    AcceleratorState._reset_state(True)
    checkpoints = tmp_path / "cut" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_2", "checkpoint_4"]

    resumed = train_stylegan.main(tiny_args(photo_dataset, tmp_path / "cut", *common,
                                            "--resume_from_checkpoint", "latest"))
    assert resumed["resumed_from"].endswith("checkpoint_4") and resumed["steps_run"] == 2
    assert [h["step"] for h in resumed["history"]] == [5, 6]
    assert resumed["history"] == full["history"][4:]  # every loss term, bit for bit
    assert resumed["images_seen"] == full["images_seen"] and resumed["epoch"] == full["epoch"]
    for name in ("stylegan-generator", "stylegan-discriminator"):
        a = load_file(tmp_path / "full" / name / "model.safetensors")
        b = load_file(tmp_path / "cut" / name / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # The checkpoint counter continued after the resume: 6 was written, 2 retired, nothing stale remains.
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_4", "checkpoint_6"]
    state = json.loads((checkpoints / "checkpoint_6" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["images_seen"] == 48
    a = load_file(tmp_path / "full" / "checkpoints" / "checkpoint_6" / "model_1.safetensors")
    b = load_file(checkpoints / "checkpoint_6" / "model_1.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_mixed_precision_runs_on_cpu(tmp_path, photo_dataset):
    result = train_stylegan.main(tiny_args(photo_dataset, tmp_path, "--max_steps", "2", "--mixed_precision", "bf16",
                                           "--report_to", "none", "--checkpointing_steps", "0", "--num_workers", "1"))
    assert result["step"] == 2
    assert all(np.isfinite(list(h.values())).all() for h in result["history"])
    generator = StyleGANGenerator.from_pretrained(tmp_path / "stylegan-generator")
    assert generator.dtype == torch.float32  # autocast only: the weights stay fp32


def test_streaming_grayscale_resume_is_exact(tmp_path, photo_dataset):
    """Streaming data (IterableDataset, position-based flips) and 1-channel images also resume bit for bit."""
    common = ("--streaming", "--num_channels", "1", "--max_steps", "4", "--checkpointing_steps", "2",
              "--sample_every", "0", "--report_to", "none")
    full = train_stylegan.main(tiny_args(photo_dataset, tmp_path / "full", *common))
    AcceleratorState._reset_state(True)
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "checkpoint_4")  # as if killed after checkpoint_2
    resumed = train_stylegan.main(tiny_args(photo_dataset, tmp_path / "cut", *common, "--resume_from_checkpoint",
                                            "latest"))
    assert resumed["history"] == full["history"][2:] and resumed["steps_run"] == 2
    generator = StyleGANGenerator.from_pretrained(tmp_path / "cut" / "stylegan-generator")
    assert generator.config.num_channels == 1 and generator(torch.randn(2, 16)).shape == (2, 1, 16, 16)


def test_help_documents_every_option_with_default(capsys):
    with pytest.raises(SystemExit):
        train_stylegan.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--dataset", "--image_column", "--image-column", "--resolution", "--num_channels", "--fmap_base",
                   "--fmap_max", "--latent_size", "--mapping_layers", "--r1_gamma", "--r1_interval", "--ema_kimg",
                   "--learning_rate", "--adam_beta1", "--adam_beta2", "--adam_epsilon", "--mixed_precision",
                   "--gradient_accumulation_steps", "--report_to", "--seed", "--output_dir", "--logging_dir",
                   "--checkpointing_steps", "--checkpoints_total_limit", "--resume_from_checkpoint", "--max_steps",
                   "--batch_size", "--sample_every", "--num_workers", "--compile", "--channels_last"):
        assert option in text, option
    assert "(default: 0.001)" in text and "(default: 10.0)" in text and "(default: tensorboard)" in text


def test_refuses_empty_batches(capsys):
    """Batch size and gradient accumulation are checked by the shared engine arguments: no run with global batch 0."""
    for flag in ("--gradient_accumulation_steps", "--batch_size"):
        with pytest.raises(SystemExit):
            train_stylegan.parse_args(["--dataset", "d", "--output_dir", "o", flag, "0"])
        assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err


def test_style_mixing_crossovers_restrict_where_mixing_crosses_over(capsys):
    """--style_mixing_crossovers draws the crossover layer from the given list only; layers outside the generator
    are refused with their range."""
    args = train_stylegan.parse_args(["--dataset", "d", "--output_dir", "o", "--resolution", "32",
                                      "--style_mixing_crossovers", "4", "6", "--max_steps", "1"])
    generator, _ = stylegan_trainer.build_networks(args)
    torch.manual_seed(0)
    cutoffs = {int(stylegan_trainer.sample_latents(2, generator.config, "cpu", args.style_mixing_crossovers)[2])
               for _ in range(200)}
    assert cutoffs == {4, 6, 8}  # 8 == num_layers: the 10% of minibatches without mixing
    torch.manual_seed(0)
    default = {int(stylegan_trainer.sample_latents(2, generator.config, "cpu")[2]) for _ in range(400)}
    assert default == set(range(1, 9))
    with pytest.raises(SystemExit):
        train_stylegan.parse_args(["--dataset", "d", "--output_dir", "o", "--style_mixing_crossovers", "8"])
    assert "a 32 px generator has 8 layers, crossovers are in [1, 7]" in capsys.readouterr().err


def test_grow_from_a_lower_resolution_run(tmp_path, photo_dataset):
    """--grow_from starts a 16 px run from an 8 px run's exports: the mapping, the 4x4 / 8x8 synthesis layers and w_avg
    of its generator; the 8x8 block (the 16 px discriminator's second block) and the 4x4 head of its discriminator.
    What the small run lacks (the 16 px layers) starts as in a new run; a run of the same resolution is refused."""
    small_dir = tmp_path / "small"
    train_stylegan.main(tiny_args(photo_dataset, small_dir, "--resolution", "8", "--max_steps", "2"))
    AcceleratorState._reset_state(True)
    small_g = StyleGANGenerator.from_pretrained(small_dir / "stylegan-generator")
    small_d = StyleGANDiscriminator.from_pretrained(small_dir / "stylegan-discriminator")
    args = train_stylegan.parse_args(tiny_args(photo_dataset, tmp_path / "big", "--grow_from", str(small_dir),
                                               "--max_steps", "1"))
    torch.manual_seed(0)
    generator, discriminator = stylegan_trainer.build_networks(args)
    torch.manual_seed(0)
    fresh_g, fresh_d = stylegan_trainer.build_networks(train_stylegan.parse_args(tiny_args(
        photo_dataset, tmp_path / "fresh", "--max_steps", "1")))
    small_gs, big_gs, fresh_gs = small_g.state_dict(), generator.state_dict(), fresh_g.state_dict()
    for key in ("mapping.w_avg", "mapping.layers.0.weight", "synthesis.layers.0.const", "synthesis.layers.3.conv.weight",
                "synthesis.layers.3.style.weight", "synthesis.layers.3.noise"):
        assert torch.equal(big_gs[key], small_gs[key]), key
    assert not torch.equal(big_gs["synthesis.layers.4.conv.weight"], small_gs["synthesis.layers.3.conv.weight"])
    assert torch.equal(big_gs["synthesis.layers.4.conv.weight"], fresh_gs["synthesis.layers.4.conv.weight"])
    small_ds, big_ds = small_d.state_dict(), discriminator.state_dict()
    # 16 px D: blocks 0 (16 -> 8), 1 (8 -> 4); the 8 px D's block 0 (8 -> 4) is the 16 px D's block 1.
    assert torch.equal(big_ds["network.blocks.1.conv0.weight"], small_ds["network.blocks.0.conv0.weight"])
    assert torch.equal(big_ds["network.final_dense.weight"], small_ds["network.final_dense.weight"])
    assert torch.equal(big_ds["network.blocks.0.conv0.weight"], fresh_d.state_dict()["network.blocks.0.conv0.weight"])
    assert train_stylegan.main(tiny_args(photo_dataset, tmp_path / "big", "--grow_from", str(small_dir),
                                         "--max_steps", "2"))["step"] == 2
    with pytest.raises(ValueError, match="needs a lower-resolution run"):
        stylegan_trainer.build_networks(train_stylegan.parse_args(tiny_args(
            photo_dataset, tmp_path / "same", "--resolution", "8", "--grow_from", str(small_dir), "--max_steps", "1")))


def test_fade_in_blends_the_previous_run(tmp_path, photo_dataset):
    """--fade_in_steps: at weight 0 the 16 px networks are exactly the 8 px run's (its images upscaled, its scores
    of the downscaled images), at weight 1 the new layers alone; a fade-in run checkpoints, resumes and exports the
    plain discriminator; a fade over two resolution steps or without --grow_from is refused."""
    small_dir = tmp_path / "small"
    train_stylegan.main(tiny_args(photo_dataset, small_dir, "--resolution", "8", "--max_steps", "2"))
    AcceleratorState._reset_state(True)
    small_g = StyleGANGenerator.from_pretrained(small_dir / "stylegan-generator").eval()
    small_d = StyleGANDiscriminator.from_pretrained(small_dir / "stylegan-discriminator").eval()
    args = train_stylegan.parse_args(tiny_args(photo_dataset, tmp_path / "big", "--grow_from", str(small_dir),
                                               "--fade_in_steps", "4", "--max_steps", "1"))
    generator, discriminator = stylegan_trainer.build_networks(args)
    fade_out, previous_from_rgb = growing.fade_in_layers(generator, small_dir)
    mixing = stylegan_trainer.MixingGenerator(generator, fade_out).eval()
    fading_d = growing.FadeInDiscriminator(discriminator, previous_from_rgb).eval()
    z = torch.randn(8, generator.config.latent_size, generator=torch.Generator().manual_seed(0))
    no_mixing = torch.tensor(generator.config.num_layers)
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        upscaled = F.interpolate(small_g.synthesis(small_g.mapping(z), noise_mode="const"), scale_factor=2)
        new_layers = generator.synthesis(generator.mapping(z), noise_mode="const")
        assert not torch.allclose(upscaled, new_layers, atol=1e-3)
        for module in (fade_out, fading_d):
            module.alpha.fill_(0.0)
        torch.testing.assert_close(mixing(z, z, no_mixing, noise_mode="const")[0], upscaled, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fading_d(images), small_d(F.avg_pool2d(images, 2)), atol=1e-5, rtol=1e-5)
        for module in (fade_out, fading_d):
            module.alpha.fill_(1.0)
        torch.testing.assert_close(mixing(z, z, no_mixing, noise_mode="const")[0], new_layers, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fading_d(images), discriminator(images), atol=1e-5, rtol=1e-5)

    trainer, _ = stylegan_trainer.build_trainer(Accelerator(cpu=True), args)
    fading = (trainer.g_module.fade_in, trainer.accelerator.unwrap_model(trainer.discriminator))
    assert [(trainer.set_fade_in(step), *(float(module.alpha) for module in fading)) for step in (0, 2, 9)] == [
        (0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)]
    AcceleratorState._reset_state(True)

    run = tiny_args(photo_dataset, tmp_path / "big", "--grow_from", str(small_dir), "--fade_in_steps", "4",
                    "--checkpointing_steps", "2", "--sample_every", "0")
    assert train_stylegan.main([*run, "--max_steps", "2"])["step"] == 2
    AcceleratorState._reset_state(True)
    resumed = train_stylegan.main([*run, "--max_steps", "3", "--resume_from_checkpoint", "latest"])
    assert resumed["resumed_from"] and resumed["step"] == 3
    exported = StyleGANDiscriminator.from_pretrained(tmp_path / "big" / "stylegan-discriminator")
    assert set(exported.state_dict()) == set(discriminator.state_dict())

    with pytest.raises(ValueError, match="one resolution step"):
        wide = train_stylegan.parse_args(tiny_args(photo_dataset, tmp_path / "wide", "--resolution", "32", "--grow_from",
                                                   str(small_dir), "--fade_in_steps", "2", "--max_steps", "1"))
        growing.fade_in_layers(stylegan_trainer.build_networks(wide)[0], small_dir)
    with pytest.raises(SystemExit):
        train_stylegan.parse_args(tiny_args(photo_dataset, tmp_path / "x", "--fade_in_steps", "2", "--max_steps", "1"))


def test_two_cpu_processes(tmp_path, photo_dataset):
    """A real 2-process gloo run (accelerate launch --multi_gpu with ACCELERATE_USE_CPU=1)."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    launch = get_launch_command(multi_gpu=True, num_processes=2, main_process_port=29000 + os.getpid() % 1000)
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch[2:]]  # this interpreter's accelerate
    command += [str(ROOT / "training" / "train_stylegan.py"),
                *tiny_args(photo_dataset, tmp_path, "--max_steps", "3", "--checkpointing_steps", "2",
                           "--sample_every", "0", "--batch_size", "4")]
    start = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "[rank 0/2]" in text and "[rank 1/2]" in text
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 8
    assert summary["images_seen"] == 3 * 4 * 2  # the batches of both ranks were counted
    first, second = summary["rank_checksums"]
    assert first == second  # both ranks hold the same generator after DDP updates
    assert (tmp_path / "checkpoints" / "checkpoint_2" / "random_states_1.pkl").is_file()
    assert AutoModel.from_pretrained(tmp_path / "stylegan-generator").config.resolution == 16
    print(f"two-process run: {time.perf_counter() - start:.1f} s", file=sys.stderr)

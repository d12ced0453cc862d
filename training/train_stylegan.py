#!/usr/bin/env python
"""Train a StyleGAN v1 generator and discriminator (``D_basic``) at a fixed resolution with accelerate.

The generator this writes (``<output_dir>/stylegan-generator``, the EMA generator with its tracked ``w_avg``) and
the discriminator (``<output_dir>/stylegan-discriminator``) are what the GH-Feat encoder trainer loads.

What follows the official StyleGAN v1 recipe (NVlabs/stylegan ``training/loss.py``, ``networks_stylegan.py``):
non-saturating logistic loss, R1 on reals (``gamma / 2 * E[|grad D(x)|^2]``), style mixing with one crossover
layer per minibatch, the tracked average w (``w_avg = lerp(mean_w, w_avg, dlatent_avg_beta)`` on every generator
pass), the mapping network's equalized-lr multiplier, Adam (lr 0.001, betas (0.0, 0.99), eps 1e-8), random
noise during training, generator EMA with a half-life of ``--ema_kimg`` thousand images, horizontal mirroring.
What differs: no progressive growing (one fixed resolution); one D update then one G update per step.

Examples::

    python training/train_stylegan.py --dataset fashion-mnist --output_dir runs/fmnist --max_steps 2000
    accelerate launch training/train_stylegan.py --dataset ./my_images --resolution 64 --output_dir runs/x
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/train_stylegan.py ...
    python training/train_stylegan.py ... --resume_from_checkpoint latest
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import warnings
from collections import deque
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `training` and `ghfeat_hf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from ghfeat_hf import StyleGANDiscriminator, StyleGANDiscriminatorConfig, StyleGANGenerator, StyleGANGeneratorConfig
from ghfeat_hf.data import load_training_images, make_image_dataloader
from ghfeat_hf.error_reporting import run_script
from training.engine import (
    CheckpointManager,
    Progress,
    TrainState,
    add_engine_args,
    build_accelerator,
    export_pretrained,
    grad_norm,
    init_trackers,
    iterate_batches,
    log_scalars,
    loss_scale,
    maybe_channels_last,
    maybe_compile,
    maybe_no_sync,
    memory_stats,
    save_image_grid,
    seed_step,
    shard_iterable_dataset,
    tensor_to_pil,
)
from training.losses import discriminator_logistic_loss, generator_nonsaturating_loss, r1_penalty

GENERATOR_DIR = "stylegan-generator"
DISCRIMINATOR_DIR = "stylegan-discriminator"
DEFAULT_MAX_STEPS = 1000  # the run length when --max_steps is not given (announced)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", type=str, required=True,
                      help="'fashion-mnist' (Debian package dataset-fashion-mnist, padded to 32x32), a Hub dataset id, "
                           "an image folder, or a save_to_disk directory.")
    data.add_argument("--split", type=str, default=None, help="Dataset split; None picks 'train' or the only split.")
    data.add_argument("--image_column", "--image-column", dest="image_column", type=str, default="image",
                      help="Column holding the images.")
    data.add_argument("--streaming", action="store_true", help="Stream the dataset (IterableDataset).")
    data.add_argument("--shuffle_buffer", type=int, default=1000, help="Shuffle buffer of streamed datasets.")
    data.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N samples.")
    data.add_argument("--mirror_augment", action=argparse.BooleanOptionalAction, default=True,
                      help="Random horizontal flips (p = 0.5).")
    model = parser.add_argument_group("model (StyleGAN v1 at a fixed resolution)")
    model.add_argument("--resolution", type=int, default=32, help="Image resolution (power of two >= 4).")
    model.add_argument("--num_channels", type=int, choices=[1, 3], default=3,
                       help="Image channels: 3 replicates grayscale to RGB as GHFeatImageProcessor does.")
    model.add_argument("--fmap_base", type=int, default=8192, help="StyleGAN width schedule: nf(s) = min(fmap_base / 2^s, fmap_max).")
    model.add_argument("--fmap_max", type=int, default=128, help="Maximum feature maps per layer (512 officially).")
    model.add_argument("--latent_size", type=int, default=128, help="Size of z, w and the mapping layers (512 officially).")
    model.add_argument("--mapping_layers", type=int, default=4, help="Dense layers of the mapping network (8 officially).")
    model.add_argument("--mapping_lr_multiplier", type=float, default=0.01, help="Equalized-lr multiplier of the mapping network.")
    model.add_argument("--style_mixing_prob", type=float, default=0.9, help="Style-mixing regularisation probability.")
    model.add_argument("--dlatent_avg_beta", type=float, default=0.995, help="Decay of the tracked average w.")
    optim = parser.add_argument_group("optimisation and losses")
    optim.add_argument("--learning_rate", type=float, default=0.001, help="Adam learning rate of G and D.")
    optim.add_argument("--adam_beta1", type=float, default=0.0, help="Adam beta1.")
    optim.add_argument("--adam_beta2", type=float, default=0.99, help="Adam beta2.")
    optim.add_argument("--adam_epsilon", type=float, default=1e-8, help="Adam epsilon.")
    optim.add_argument("--r1_gamma", type=float, default=10.0, help="R1 regularisation weight gamma (0 disables R1).")
    optim.add_argument("--r1_interval", type=int, default=1,
                       help="Lazy R1: apply it every N steps, scaled by N (1: every step, as StyleGAN v1).")
    optim.add_argument("--ema_kimg", type=float, default=10.0, help="Half-life of the generator EMA, in thousands of images.")
    output = parser.add_argument_group("samples")
    output.add_argument("--num_samples", type=int, default=32, help="Images in the sample grid (fixed z, EMA generator).")
    output.add_argument("--grid_columns", type=int, default=8, help="Columns of the sample grid.")
    add_engine_args(parser)
    # The length stays optional (other callers build arguments without one) but never silent: its default is in
    # --help and announced when a run uses it.
    max_steps = next(action for action in parser._actions if action.dest == "max_steps")
    max_steps.default = argparse.SUPPRESS
    max_steps.help = (f"Total optimizer updates of the run (resumes included). Not given: {DEFAULT_MAX_STEPS} "
                      f"({DEFAULT_MAX_STEPS * 32:,} images at batch 32), announced at the start; the Fashion-MNIST "
                      "recipe runs 10000.")
    args = parser.parse_args(argv)
    if not hasattr(args, "max_steps"):
        args.max_steps = DEFAULT_MAX_STEPS
        print(f"train_stylegan.py: no --max_steps given: this run stops after the default {DEFAULT_MAX_STEPS} steps.",
              file=sys.stderr, flush=True)
    if args.r1_interval < 1:
        parser.error("--r1_interval must be >= 1")
    return args


class MixingGenerator(nn.Module):
    """Training view of a :class:`StyleGANGenerator`: mapping, style mixing and synthesis in one ``forward``
    (one DDP forward). Returns the images and the batch mean of w (before mixing) for the ``w_avg`` update."""

    def __init__(self, generator: StyleGANGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, z_mix: torch.Tensor, cutoff: torch.Tensor, noise_mode: str = "random"):
        mapping = self.generator.mapping
        w = mapping(z)
        w_mean = w[:, 0].detach().float().mean(0)
        # Layers >= cutoff take w(z_mix); cutoff == num_layers means no mixing. Like the official graph, both
        # mappings always run (and a tensor cutoff keeps torch.compile from specialising on its value).
        layers = torch.arange(w.shape[1], device=w.device).view(1, -1, 1)
        w = torch.where(layers < cutoff, w, mapping(z_mix))
        return self.generator.synthesis(w, noise_mode=noise_mode), w_mean


def sample_latents(batch: int, config: StyleGANGeneratorConfig, device) -> tuple[torch.Tensor, ...]:
    """z, the second z of style mixing and the crossover layer as a 0-d tensor (num_layers: no mixing); one
    crossover per minibatch, drawn in [1, num_layers) with probability style_mixing_prob, as StyleGAN v1 does."""
    z = torch.randn(batch, config.latent_size, device=device)
    z_mix = torch.randn(batch, config.latent_size, device=device)
    mix = float(torch.rand(())) < config.style_mixing_prob and config.num_layers > 1
    cutoff = int(torch.randint(1, config.num_layers, ())) if mix else config.num_layers
    return z, z_mix, torch.tensor(cutoff, device=device)


@torch.no_grad()
def update_w_avg(accelerator, generator: StyleGANGenerator, w_mean: torch.Tensor) -> None:
    if accelerator.num_processes > 1:
        w_mean = accelerator.reduce(w_mean, reduction="mean")
    w_avg = generator.mapping.w_avg
    w_avg.copy_(torch.lerp(w_mean.to(w_avg.dtype), w_avg, generator.config.dlatent_avg_beta))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema = lerp(model, ema, beta)`` for parameters; buffers (w_avg, noise) are copied (StyleGAN v1 ``Gs``)."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def d_step(ctx: dict, micro_batches: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """One discriminator update: logistic loss on G's fakes and the reals, plus R1 on the reals."""
    accelerator, args = ctx["accelerator"], ctx["args"]
    discriminator, g_module, optimizer = ctx["D"], ctx["g_module"], ctx["d_opt"]
    do_r1 = args.r1_gamma > 0 and step % args.r1_interval == 0
    totals = {k: torch.zeros((), device=accelerator.device) for k in ("loss_D", "loss_D_real", "loss_D_fake",
                                                                      "r1_penalty", "D_real", "D_fake")}
    for index, reals in enumerate(micro_batches):
        z, z_mix, cutoff = sample_latents(reals.shape[0], ctx["g_config"], accelerator.device)
        with torch.no_grad(), accelerator.autocast():
            fakes, w_mean = g_module(z, z_mix, cutoff)
        update_w_avg(accelerator, g_module.generator, w_mean)
        reals = reals.detach().requires_grad_(do_r1)
        with maybe_no_sync(accelerator, discriminator, index == len(micro_batches) - 1), accelerator.autocast():
            fake_scores = discriminator(fakes.detach()).float()
            real_scores = discriminator(reals).float()
            loss_real, loss_fake = discriminator_logistic_loss(real_scores, fake_scores)
            loss = loss_fake + loss_real
            r1 = torch.zeros((), device=loss.device)
            if do_r1:
                r1 = r1_penalty(real_scores, reals, scale=loss_scale(accelerator))
                loss = loss + r1 * (args.r1_gamma * 0.5 * args.r1_interval)
            accelerator.backward(loss)
        for key, value in (("loss_D", loss), ("loss_D_real", loss_real), ("loss_D_fake", loss_fake),
                           ("r1_penalty", r1), ("D_real", real_scores.mean()), ("D_fake", fake_scores.mean())):
            totals[key] += value.detach() / len(micro_batches)
    totals["grad_norm_D"] = torch.tensor(grad_norm(discriminator.parameters()))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return totals


def g_step(ctx: dict, batch_size: int, step: int) -> dict[str, torch.Tensor]:
    """One generator update (non-saturating logistic loss), then the EMA update."""
    accelerator, args = ctx["accelerator"], ctx["args"]
    g_train, g_module, optimizer = ctx["G"], ctx["g_module"], ctx["g_opt"]
    d_module = accelerator.unwrap_model(ctx["D"])
    d_module.requires_grad_(False)
    total = torch.zeros((), device=accelerator.device)
    try:
        for index in range(args.gradient_accumulation_steps):
            z, z_mix, cutoff = sample_latents(batch_size, ctx["g_config"], accelerator.device)
            with maybe_no_sync(accelerator, g_train, index == args.gradient_accumulation_steps - 1), accelerator.autocast():
                fakes, w_mean = g_train(z, z_mix, cutoff)
                loss = generator_nonsaturating_loss(d_module(fakes))
                accelerator.backward(loss)
            update_w_avg(accelerator, g_module.generator, w_mean)
            total += loss.detach() / args.gradient_accumulation_steps
    finally:
        d_module.requires_grad_(True)
    norm = grad_norm(g_train.parameters())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    update_ema(ctx["G_ema"], g_module.generator, ctx["ema_beta"])
    return {"loss_G": total, "grad_norm_G": torch.tensor(norm)}


def build_networks(args: argparse.Namespace) -> tuple[StyleGANGenerator, StyleGANDiscriminator]:
    """A new generator and discriminator of the architecture the flags describe (random weights)."""
    common = dict(resolution=args.resolution, num_channels=args.num_channels, fmap_base=args.fmap_base,
                  fmap_max=args.fmap_max)
    g_config = StyleGANGeneratorConfig(
        **common, latent_size=args.latent_size, dlatent_size=args.latent_size, mapping_fmaps=args.latent_size,
        mapping_layers=args.mapping_layers, mapping_lr_multiplier=args.mapping_lr_multiplier,
        style_mixing_prob=args.style_mixing_prob, dlatent_avg_beta=args.dlatent_avg_beta,
    )
    return StyleGANGenerator(g_config), StyleGANDiscriminator(StyleGANDiscriminatorConfig(**common))


def build_training(accelerator, args: argparse.Namespace, dataloader=None,
                   prepare_dataloader: bool = True) -> tuple[dict, object]:
    """The context of :func:`training_step` (also used by ``benchmarks/train_step.py``): new networks, the EMA
    generator, channels_last / torch.compile as flagged, both Adam optimizers, all ``accelerator.prepare``d (with the
    map-style ``dataloader`` when given and ``prepare_dataloader``). Returns ``(ctx, dataloader)``."""
    generator, discriminator = build_networks(args)
    g_ema = copy.deepcopy(generator).eval().requires_grad_(False)
    generator = maybe_channels_last(generator, args.channels_last)
    discriminator = maybe_channels_last(discriminator, args.channels_last)
    g_train = maybe_compile(MixingGenerator(generator), args.compile)
    if args.compile and args.r1_gamma == 0:
        discriminator = maybe_compile(discriminator, True)
    adam = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    g_opt = torch.optim.Adam(g_train.parameters(), **adam)
    d_opt = torch.optim.Adam(discriminator.parameters(), **adam)
    if dataloader is not None and prepare_dataloader:
        g_train, discriminator, g_opt, d_opt, dataloader = accelerator.prepare(
            g_train, discriminator, g_opt, d_opt, dataloader
        )
    else:
        g_train, discriminator, g_opt, d_opt = accelerator.prepare(g_train, discriminator, g_opt, d_opt)
    g_ema.to(accelerator.device)
    global_batch = args.batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    sample_z = torch.randn(args.num_samples, generator.config.latent_size,
                           generator=torch.Generator().manual_seed(args.seed))
    ctx = dict(accelerator=accelerator, args=args, G=g_train, g_module=accelerator.unwrap_model(g_train),
               D=discriminator, G_ema=g_ema, g_opt=g_opt, d_opt=d_opt, g_config=generator.config,
               ema_beta=0.5 ** (global_batch / max(args.ema_kimg * 1000.0, 1e-8)),
               sample_z=sample_z.to(accelerator.device))
    return ctx, dataloader


def training_step(ctx: dict, micro_batches: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """One training step as the loop runs it (also timed by ``benchmarks/train_step.py``): channels_last inputs when
    flagged, the step's seed, the D update (R1 on steps that are multiples of ``--r1_interval``), then the G update
    and the EMA update."""
    args = ctx["args"]
    if args.channels_last:
        micro_batches = [m.contiguous(memory_format=torch.channels_last) for m in micro_batches]
    seed_step(args.seed, step, ctx["accelerator"].process_index)
    metrics = d_step(ctx, micro_batches, step)
    metrics.update(g_step(ctx, args.batch_size, step))
    return metrics


def save_samples(ctx: dict, step: int) -> Path:
    accelerator, args = ctx["accelerator"], ctx["args"]
    path = Path(args.output_dir) / "samples" / f"step_{step:07d}.png"
    if accelerator.is_main_process:
        g_ema = ctx["G_ema"]
        with torch.no_grad():
            images = torch.cat([g_ema(z, noise_mode="const") for z in ctx["sample_z"].split(64)])
        pils = tensor_to_pil(images)
        rows = [pils[i : i + args.grid_columns] for i in range(0, len(pils), args.grid_columns)]
        save_image_grid(accelerator, rows, path, step, tag="samples/ema", cell_size=max(args.resolution, 64))
    accelerator.wait_for_everyone()
    return path


def export_models(ctx: dict) -> None:
    """Write the EMA generator (with w_avg) and the discriminator as transformers model directories."""
    output_dir = Path(ctx["args"].output_dir)
    export_pretrained(ctx["accelerator"], ctx["G_ema"], output_dir / GENERATOR_DIR)
    export_pretrained(ctx["accelerator"], ctx["D"], output_dir / DISCRIMINATOR_DIR)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # DDP notices that the [1, C] grads of some tiny equalized layers are not laid out like its buckets: harmless.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    accelerator = build_accelerator(args)
    rank, world = accelerator.process_index, accelerator.num_processes
    print(f"[rank {rank}/{world}] device={accelerator.device} mixed_precision={accelerator.mixed_precision}", flush=True)

    with accelerator.main_process_first():
        dataset = load_training_images(args.dataset, args.split, args.image_column, args.streaming,
                                       args.max_train_samples)
    if args.streaming:
        dataset = shard_iterable_dataset(dataset.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer), accelerator)
    dataloader = make_image_dataloader(
        dataset, args.batch_size, args.resolution, num_channels=args.num_channels, image_column=args.image_column,
        random_flip=args.mirror_augment, seed=args.seed, shuffle=True, drop_last=True, num_workers=args.num_workers,
    )

    ctx, dataloader = build_training(accelerator, args, dataloader, prepare_dataloader=not args.streaming)
    g_ema, g_opt, d_opt, g_config = ctx["G_ema"], ctx["g_opt"], ctx["d_opt"], ctx["g_config"]

    state = TrainState()
    accelerator.register_for_checkpointing(state)
    accelerator.register_for_checkpointing(g_ema)
    checkpoints = CheckpointManager(accelerator, args.output_dir, args.checkpoints_total_limit)
    resumed = checkpoints.resume(args.resume_from_checkpoint, state)
    init_trackers(accelerator, "train_stylegan", args)

    global_batch = args.batch_size * world * args.gradient_accumulation_steps
    n_params = {name: sum(p.numel() for p in m.parameters())
                for name, m in (("G", ctx["g_module"].generator), ("D", ctx["D"]))}
    accelerator.print(
        f"StyleGAN {args.resolution}px x{args.num_channels}: G {n_params['G'] / 1e6:.2f}M, D {n_params['D'] / 1e6:.2f}M "
        f"params; layer widths {g_config.layer_channels}; global batch {global_batch}; "
        f"{'resumed from ' + str(resumed) if resumed else 'new run'} at step {state.step}/{args.max_steps}"
    )

    batches = iterate_batches(accelerator, dataloader, state, prepared=not args.streaming)
    progress = Progress(accelerator, args.max_steps, state, images_per_step=global_batch)
    history: deque[dict[str, float]] = deque(maxlen=10000)  # per-step metrics of this invocation (last 10k)
    steps_run, exported_at = 0, None
    while state.step < args.max_steps:
        micro = [next(batches)["pixel_values"] for _ in range(args.gradient_accumulation_steps)]
        metrics = training_step(ctx, micro, state.step)
        state.step += 1
        steps_run += 1
        values = {k: float(v) for k, v in metrics.items()}
        history.append({"step": state.step, **values})
        progress.update(state, loss_D=values["loss_D"], loss_G=values["loss_G"])
        if state.step % args.log_every == 0 or state.step == args.max_steps:
            keys = sorted(metrics)
            stacked = torch.stack([metrics[k].float().to(accelerator.device) for k in keys])
            if world > 1:
                stacked = accelerator.reduce(stacked, reduction="mean")
            scalars = {f"train/{k}": v for k, v in zip(keys, stacked.tolist())}
            scalars.update({"train/lr_G": g_opt.param_groups[0]["lr"], "train/lr_D": d_opt.param_groups[0]["lr"],
                            "perf/images_per_second": progress.images_per_second, "data/epoch": state.epoch,
                            "data/images_seen": state.images_seen, "data/skipped_samples": state.skipped_samples,
                            "train/w_avg_norm": g_ema.mapping.w_avg.norm(), **memory_stats(accelerator)})
            log_scalars(accelerator, scalars, state.step)
        with progress.excluded():  # left out of the reported throughput
            if args.sample_every > 0 and state.step % args.sample_every == 0:
                save_samples(ctx, state.step)
            if args.checkpointing_steps > 0 and state.step % args.checkpointing_steps == 0:
                checkpoints.save(state, on_saved=lambda _: export_models(ctx))
                exported_at = state.step
    progress.close()
    throughput = progress.training_images_per_second

    if steps_run == 0 or args.sample_every <= 0 or state.step % args.sample_every != 0:
        save_samples(ctx, state.step)
    checkpoints.save(state)
    if exported_at != state.step:
        export_models(ctx)
    # Proof that the ranks trained one model: the generator checksum of every process (all equal under DDP).
    checksum = sum(float(p.detach().double().sum()) for p in ctx["g_module"].generator.parameters())
    checksums = accelerator.gather(torch.tensor([checksum], dtype=torch.float64, device=accelerator.device)).tolist()
    summary = {
        "step": state.step, "epoch": state.epoch, "images_seen": state.images_seen,
        "skipped_samples": state.skipped_samples, "num_processes": world, "global_batch_size": global_batch,
        "steps_run": steps_run, "images_per_second": throughput, "resumed_from": str(resumed) if resumed else None,
        "rank_checksums": checksums, "last": history[-1] if history else None,
    }
    print(f"[rank {rank}/{world}] finished at step {state.step}: {steps_run} steps in this run", flush=True)
    if accelerator.is_main_process:
        if math.isfinite(throughput):
            print(f"throughput: {throughput:.2f} images/s ({global_batch / throughput:.3f} s/step at global batch "
                  f"{global_batch}; training steps only: the first step, sample grids and checkpoint saves with their "
                  "exports excluded)", flush=True)
        (Path(args.output_dir) / "train_summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {**summary, "history": list(history), "output_dir": args.output_dir}


if __name__ == "__main__":
    run_script(main)

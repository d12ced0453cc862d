"""The networks, optimizers and the two updates of one StyleGAN v1 training step (discriminator, then generator).

The recipe they implement is described in ``training/train_stylegan.py``; ``benchmarks/train_step.py`` times exactly
:meth:`StyleGANTrainer.step`.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from acceleration import grad_norm, loss_scale, maybe_channels_last, maybe_compile, maybe_no_sync
from checkpoints import export_pretrained
from data_loop import seed_step
from ghfeat_hf import StyleGANDiscriminator, StyleGANDiscriminatorConfig, StyleGANGenerator, StyleGANGeneratorConfig
from growing import (
    DISCRIMINATOR_DIR,
    GENERATOR_DIR,
    FadeInDiscriminator,
    FadeInOutput,
    fade_in_layers,
    grow_from,
    unwrap_discriminator,
)
from losses import discriminator_logistic_loss, generator_nonsaturating_loss, r1_penalty
from tracking import save_image_grid, tensor_to_pil


class MixingGenerator(nn.Module):
    """Training view of a :class:`StyleGANGenerator`: mapping, style mixing and synthesis in one ``forward``
    (one DDP forward). Returns the images and the batch mean of w (before mixing) for the ``w_avg`` update.
    With ``fade_in`` (``--fade_in_steps``), the synthesis output is blended with the previous run's."""

    def __init__(self, generator: StyleGANGenerator, fade_in: FadeInOutput | None = None):
        super().__init__()
        self.generator = generator
        self.fade_in = fade_in

    def forward(self, z: torch.Tensor, z_mix: torch.Tensor, cutoff: torch.Tensor, noise_mode: str = "random"):
        mapping = self.generator.mapping
        w = mapping(z)
        w_mean = w[:, 0].detach().float().mean(0)
        # Layers >= cutoff take w(z_mix); cutoff == num_layers means no mixing. Like the official graph, both
        # mappings always run (and a tensor cutoff keeps torch.compile from specialising on its value).
        layers = torch.arange(w.shape[1], device=w.device).view(1, -1, 1)
        w = torch.where(layers < cutoff, w, mapping(z_mix))
        if self.fade_in is not None:
            return self.fade_in(self.generator.synthesis, w, noise_mode), w_mean
        return self.generator.synthesis(w, noise_mode=noise_mode), w_mean


def sample_latents(batch: int, config: StyleGANGeneratorConfig, device,
                   crossovers: Sequence[int] | None = None) -> tuple[torch.Tensor, ...]:
    """z, the second z of style mixing and the crossover layer as a 0-d tensor (num_layers: no mixing); one
    crossover per minibatch, with probability style_mixing_prob, drawn uniformly from ``crossovers`` (default
    ``[1, num_layers)``, as StyleGAN v1 does)."""
    z = torch.randn(batch, config.latent_size, device=device)
    z_mix = torch.randn(batch, config.latent_size, device=device)
    mix = float(torch.rand(())) < config.style_mixing_prob and config.num_layers > 1
    if not mix:
        cutoff = config.num_layers
    elif crossovers:
        cutoff = crossovers[int(torch.randint(len(crossovers), ()))]
    else:
        cutoff = int(torch.randint(1, config.num_layers, ()))
    return z, z_mix, torch.tensor(cutoff, device=device)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema = lerp(model, ema, beta)`` for parameters; buffers (w_avg, noise) are copied (StyleGAN v1 ``Gs``)."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def build_networks(args: argparse.Namespace) -> tuple[StyleGANGenerator, StyleGANDiscriminator]:
    """A new generator and discriminator of the architecture the flags describe (random weights)."""
    common = dict(resolution=args.resolution, num_channels=args.num_channels, fmap_base=args.fmap_base,
                  fmap_max=args.fmap_max)
    g_config = StyleGANGeneratorConfig(
        **common, latent_size=args.latent_size, dlatent_size=args.latent_size, mapping_fmaps=args.latent_size,
        mapping_layers=args.mapping_layers, mapping_lr_multiplier=args.mapping_lr_multiplier,
        style_mixing_prob=args.style_mixing_prob, dlatent_avg_beta=args.dlatent_avg_beta,
    )
    generator, discriminator = StyleGANGenerator(g_config), StyleGANDiscriminator(StyleGANDiscriminatorConfig(**common))
    if args.grow_from:
        grow_from(generator, discriminator, Path(args.grow_from))
    return generator, discriminator


class StyleGANTrainer:
    """The networks, optimizers and updates of StyleGAN v1 training (also used by the benchmark).

    ``generator`` (a :class:`MixingGenerator`) and ``discriminator`` are what ``accelerator.prepare`` returned
    (DDP-wrapped when several processes run, possibly compiled); ``g_module`` is the plain ``MixingGenerator``;
    ``g_ema`` is the EMA generator the samples and the export come from (register it for checkpointing).
    """

    def __init__(self, accelerator: Accelerator, args: argparse.Namespace, generator: nn.Module,
                 discriminator: nn.Module, g_ema: StyleGANGenerator, g_opt: torch.optim.Optimizer,
                 d_opt: torch.optim.Optimizer):
        self.accelerator, self.args = accelerator, args
        self.generator, self.discriminator, self.g_ema = generator, discriminator, g_ema
        self.g_module = accelerator.unwrap_model(generator)
        self.g_config = self.g_module.generator.config
        self.g_opt, self.d_opt = g_opt, d_opt
        global_batch = args.batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        self.ema_beta = 0.5 ** (global_batch / max(args.ema_kimg * 1000.0, 1e-8))
        sample_z = torch.randn(args.num_samples, self.g_config.latent_size,
                               generator=torch.Generator().manual_seed(args.seed))
        self.sample_z = sample_z.to(accelerator.device)

    @torch.no_grad()
    def update_w_avg(self, w_mean: torch.Tensor) -> None:
        """``w_avg = lerp(mean w of the global batch, w_avg, dlatent_avg_beta)``."""
        if self.accelerator.num_processes > 1:
            w_mean = self.accelerator.reduce(w_mean, reduction="mean")
        w_avg = self.g_module.generator.mapping.w_avg
        w_avg.copy_(torch.lerp(w_mean.to(w_avg.dtype), w_avg, self.g_config.dlatent_avg_beta))

    def discriminator_step(self, micro_batches: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """One discriminator update: logistic loss on G's fakes and the reals, plus R1 on the reals on steps that
        are multiples of ``--r1_interval``. ``micro_batches``: ``[B, C, H, W]`` reals in [-1, 1]."""
        accelerator, args, discriminator = self.accelerator, self.args, self.discriminator
        do_r1 = args.r1_gamma > 0 and step % args.r1_interval == 0
        totals = {k: torch.zeros((), device=accelerator.device) for k in ("loss_D", "loss_D_real", "loss_D_fake",
                                                                          "r1_penalty", "D_real", "D_fake")}
        for index, reals in enumerate(micro_batches):
            z, z_mix, cutoff = sample_latents(reals.shape[0], self.g_config, accelerator.device,
                                              args.style_mixing_crossovers)
            with torch.no_grad(), accelerator.autocast():
                fakes, w_mean = self.g_module(z, z_mix, cutoff)
            self.update_w_avg(w_mean)
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
        self.d_opt.step()
        self.d_opt.zero_grad(set_to_none=True)
        return totals

    def generator_step(self) -> dict[str, torch.Tensor]:
        """One generator update (non-saturating logistic loss) over ``--gradient_accumulation_steps`` micro-batches
        of ``--batch_size`` latents, then the EMA update."""
        accelerator, args = self.accelerator, self.args
        d_module = accelerator.unwrap_model(self.discriminator)
        d_module.requires_grad_(False)
        total = torch.zeros((), device=accelerator.device)
        micro_steps = args.gradient_accumulation_steps
        try:
            for index in range(micro_steps):
                z, z_mix, cutoff = sample_latents(args.batch_size, self.g_config, accelerator.device,
                                                 args.style_mixing_crossovers)
                with maybe_no_sync(accelerator, self.generator, index == micro_steps - 1), accelerator.autocast():
                    fakes, w_mean = self.generator(z, z_mix, cutoff)
                    loss = generator_nonsaturating_loss(d_module(fakes))
                    accelerator.backward(loss)
                self.update_w_avg(w_mean)
                total += loss.detach() / micro_steps
        finally:
            d_module.requires_grad_(True)
        norm = grad_norm(self.generator.parameters())
        self.g_opt.step()
        self.g_opt.zero_grad(set_to_none=True)
        update_ema(self.g_ema, self.g_module.generator, self.ema_beta)
        return {"loss_G": total, "grad_norm_G": torch.tensor(norm)}

    def step(self, micro_batches: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Training step ``step`` as the loop runs it: channels_last inputs when flagged, the step's seed, the D
        update, then the G and EMA updates. Returns the step's scalars (0-d tensors)."""
        args = self.args
        if args.channels_last:
            micro_batches = [m.contiguous(memory_format=torch.channels_last) for m in micro_batches]
        seed_step(args.seed, step, self.accelerator.process_index)
        if args.fade_in_steps:
            self.set_fade_in(step)
        metrics = self.discriminator_step(micro_batches, step)
        metrics.update(self.generator_step())
        return metrics

    def set_fade_in(self, step: int) -> float:
        """Set the fade-in weight of step ``step``, ``min(step / --fade_in_steps, 1)``, in G and D; returns it."""
        alpha = min(step / self.args.fade_in_steps, 1.0)
        self.g_module.fade_in.alpha.fill_(alpha)
        self.accelerator.unwrap_model(self.discriminator).alpha.fill_(alpha)
        return alpha

    def save_samples(self, step: int) -> Path:
        """The EMA generator's images of the fixed sample latents as a grid, ``samples/step_<step>.png``."""
        accelerator, args = self.accelerator, self.args
        path = Path(args.output_dir) / "samples" / f"step_{step:07d}.png"
        if accelerator.is_main_process:
            with torch.no_grad():
                images = torch.cat([self.g_ema(z, noise_mode="const") for z in self.sample_z.split(64)])
            pils = tensor_to_pil(images)
            rows = [pils[i : i + args.grid_columns] for i in range(0, len(pils), args.grid_columns)]
            save_image_grid(accelerator, rows, path, step, tag="samples/ema", cell_size=max(args.resolution, 64))
        accelerator.wait_for_everyone()
        return path

    def export(self) -> None:
        """Write the EMA generator (with w_avg) and the discriminator as transformers model directories."""
        output_dir = Path(self.args.output_dir)
        export_pretrained(self.accelerator, self.g_ema, output_dir / GENERATOR_DIR)
        export_pretrained(self.accelerator, unwrap_discriminator(self.accelerator.unwrap_model(self.discriminator)),
                          output_dir / DISCRIMINATOR_DIR)


def build_trainer(accelerator: Accelerator, args: argparse.Namespace, dataloader=None,
                  prepare_dataloader: bool = True) -> tuple[StyleGANTrainer, object]:
    """New networks, the EMA generator, channels_last / torch.compile as flagged, both Adam optimizers, all
    ``accelerator.prepare``d (with the map-style ``dataloader`` when given and ``prepare_dataloader``).

    Returns ``(trainer, dataloader)``.
    """
    generator, discriminator = build_networks(args)
    g_ema = copy.deepcopy(generator).eval().requires_grad_(False)
    fade_in = None
    if args.fade_in_steps:
        fade_in, previous_from_rgb = fade_in_layers(generator, Path(args.grow_from))
        discriminator = FadeInDiscriminator(discriminator, previous_from_rgb)
    g_train = maybe_channels_last(MixingGenerator(generator, fade_in), args.channels_last)
    discriminator = maybe_channels_last(discriminator, args.channels_last)
    g_train = maybe_compile(g_train, args.compile)
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
    return StyleGANTrainer(accelerator, args, g_train, discriminator, g_ema, g_opt, d_opt), dataloader

"""The ``Accelerator`` of a run and what the trainers apply through it: memory format, ``torch.compile``, DDP's
``no_sync``, SyncBatchNorm, the GradScaler's loss scale and gradient norms."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed


def build_accelerator(args: argparse.Namespace, **accelerator_kwargs: Any) -> Accelerator:
    """An ``Accelerator`` configured from the shared run flags (``arguments.add_run_args``), then ``set_seed(args.seed)`` (same seed on every rank).

    Uses accelerate's seedable sampler (``data_seed=args.seed``) so shuffles depend only on ``(seed, epoch)``,
    and explicit checkpoint names (``automatic_checkpoint_naming=False``; see :class:`CheckpointManager`).
    """
    output_dir = Path(args.output_dir)
    logging_dir = Path(args.logging_dir) if args.logging_dir else output_dir / "logs"
    report_to = None if str(args.report_to).lower() in ("", "none") else args.report_to
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(logging_dir), automatic_checkpoint_naming=False
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        **accelerator_kwargs,
    )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    return accelerator


def maybe_channels_last(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``module.to(memory_format=torch.channels_last)`` when enabled (feed it channels_last inputs too)."""
    return module.to(memory_format=torch.channels_last) if enabled else module


def maybe_compile(module: torch.nn.Module, enabled: bool, **compile_kwargs: Any) -> torch.nn.Module:
    """``torch.compile(module)`` when enabled. Compiled modules do not support double backward (e.g. R1)."""
    return torch.compile(module, **compile_kwargs) if enabled else module


def maybe_no_sync(accelerator: Accelerator, model: torch.nn.Module, last: bool) -> AbstractContextManager:
    """``accelerator.no_sync(model)`` except on the ``last`` micro-batch of an accumulated step (gradients all-reduce
    once per step)."""
    return nullcontext() if last else accelerator.no_sync(model)


def convert_sync_batchnorm(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """``SyncBatchNorm`` for multi-process runs on accelerators (the encoder's BN statistics then span all ranks).

    Returns ``model`` unchanged on one process, or on the CPU, where PyTorch's SyncBatchNorm cannot run (each
    rank then normalises with its own batch statistics; a warning says so). Call before ``accelerator.prepare``.
    """
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if accelerator.num_processes <= 1 or not has_bn:
        return model
    if accelerator.device.type == "cpu":
        warnings.warn("SyncBatchNorm is not supported on the CPU: keeping per-process BatchNorm statistics.", stacklevel=2)
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """Global L2 norm of the gradients (0.0 when there are none)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def loss_scale(accelerator: Accelerator) -> float | None:
    """The GradScaler's current loss scale under fp16, None otherwise (pass it to ``losses.r1_penalty``)."""
    return accelerator.scaler.get_scale() if accelerator.scaler is not None else None

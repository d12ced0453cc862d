"""BatchNorm whose statistics span every process of a run, on any device (gloo on the CPU included).

The official multi-GPU GH-Feat encoder normalises over the global batch (8 GPUs x 12 images). PyTorch's
``SyncBatchNorm`` does that on accelerators only; :class:`CrossProcessBatchNorm` does it with any backend, so a
multi-process CPU run has the same statistics as a single process on the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from acceleration import convert_sync_batchnorm


class _AllReduceSum(torch.autograd.Function):
    """Differentiable ``all_reduce(SUM)``: the backward all-reduces the gradients (gradient of the summed losses)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class CrossProcessBatchNorm(_BatchNorm):
    """BatchNorm (1d/2d/3d) whose training-mode statistics span every process of the default group.

    Works with any backend, gloo included, so it also runs on the CPU where ``torch.nn.SyncBatchNorm`` refuses.
    Per-channel sums and sums of squares (float64) and the sample count are all-reduced in one differentiable
    collective; the running statistics use the unbiased global variance, as ``BatchNorm`` does. Outside
    training mode, or without an initialised multi-process group, it is exactly ``BatchNorm``. Parameters and buffers
    have BatchNorm's names, so state dicts are interchangeable.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.float()
        count = torch.full((1,), x.numel() // channels, dtype=torch.float64, device=x.device)
        local = torch.cat([x.sum(dims, dtype=torch.float64), x.square().sum(dims, dtype=torch.float64), count])
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean64 = total[:channels] / n
        var64 = (total[channels:2 * channels] / n - mean64.square()).clamp_min(0)
        mean, var = mean64.float(), var64.float()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var64 * (n / (n - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape).float() + self.bias.view(shape).float()
        return y.to(input.dtype)


def convert_cross_process_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm*d`` of ``module`` by a :class:`CrossProcessBatchNorm` sharing its tensors."""
    converted = module
    if isinstance(module, _BatchNorm) and not isinstance(module, CrossProcessBatchNorm):
        converted = CrossProcessBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                          module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, convert_cross_process_batchnorm(child))
    return converted


def synchronize_batchnorm(module: nn.Module, accelerator, enabled: bool = True) -> tuple[nn.Module, str]:
    """BatchNorm over the global batch when several processes run; returns ``(module, description)``."""
    if accelerator.num_processes <= 1:
        return module, "BatchNorm (one process)"
    if not enabled:
        return module, "BatchNorm per process (--no-sync_batchnorm)"
    if accelerator.device.type == "cpu":
        return convert_cross_process_batchnorm(module), "CrossProcessBatchNorm (all_reduce over gloo)"
    return convert_sync_batchnorm(module, accelerator), "torch.nn.SyncBatchNorm"

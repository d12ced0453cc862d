"""Name and layout mapping from the official TF variables to our PyTorch state dicts.

Every PyTorch key is translated to the TF variable it comes from (``tf_name_for_*``); the transforms are:
conv kernels ``[kh, kw, C_in, C_out] -> [C_out, C_in, kh, kw]``, dense matrices ``[in, out] -> [out, in]``,
BatchNorm ``gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var``, everything else
as is. No kernel flips are needed for StyleGAN v1 / GH-Feat. Equalized-lr scales stay runtime factors, so
the stored values are copied unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np
import torch

from ..errors import UsageError

BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
UNIT_SCOPES = {"shortcut": "Shortcut", "conv_a": "Conva", "conv_b": "Convb", "conv_c": "Convc"}
HEAD_SCOPES = ("HighLevel", "MidLevel", "LowLevel")


class ConversionError(UsageError):
    """The pickle's networks do not match the official architecture (names, shapes, hyper-parameters)."""


def _conv_or_norm(scope: str, module: str, param: str) -> str:
    """TF name of a ``conv.<param>`` or ``norm.<param>`` tensor inside an encoder scope."""
    if module == "norm":
        return f"{scope}/batch_norm/{BN_NAMES[param]}"
    return f"{scope}/{param}"


def tf_name_for_encoder(key: str) -> str | None:
    """TF variable name (inside ``E_gpu0``) of an ``encoder.*`` key; None for keys TF does not have."""
    if key.endswith("num_batches_tracked"):
        return None
    parts = key.split(".")[1:]
    if parts[0] == "stem":
        return _conv_or_norm("Conv0", parts[1], parts[2])
    if parts[0] == "stages":
        stage, unit, block, module, param = parts[1:]
        return _conv_or_norm(f"stage{int(stage) + 1}_unit{int(unit) + 1}/{UNIT_SCOPES[block]}", module, param)
    if parts[0] == "extra_stage":
        block, module, param = parts[1:]
        return _conv_or_norm(f"stage5/{UNIT_SCOPES[block]}", module, param)
    if parts[0] == "fpn":
        kind, index, param = parts[1:]
        scope = f"fpn/lconv_{int(index) + 3}" if kind == "lateral_convs" else f"fpn/fconv_{index}"
        return f"{scope}/{param}"
    if parts[0] == "alignment":
        return f"fuse_conv_{parts[2]}/{parts[3]}"
    if parts[0] == "heads":
        index, module, param = parts[1:]
        return _conv_or_norm(HEAD_SCOPES[int(index)], "norm" if module == "norm" else "conv", param)
    raise KeyError(key)


def _synthesis_scope(layer: int) -> str:
    resolution = 2 ** (layer // 2 + 2)
    if layer == 0:
        return "4x4/Const"
    if layer == 1:
        return "4x4/Conv"
    return f"{resolution}x{resolution}/{'Conv0_up' if layer % 2 == 0 else 'Conv1'}"


def tf_name_for_synthesis(key: str) -> str:
    """TF variable name (inside the ``synthesis`` component) of a ``synthesis.*`` key."""
    parts = key.split(".")[1:]
    if parts[0] == "to_rgb":
        return f"ToRGB_lod0/{parts[1]}"
    layer, rest = int(parts[1]), parts[2:]
    scope = _synthesis_scope(layer)
    if rest == ["noise"]:
        return f"noise{layer}"
    if rest == ["noise_strength"]:
        return f"{scope}/Noise/weight"
    if rest[0] == "style":
        return f"{scope}/StyleMod/{rest[1]}"
    return f"{scope}/{rest[-1]}"


def tf_name_for_mapping(key: str) -> str:
    """TF variable name (relative to ``G``/``Gs``) of a ``mapping.*`` key."""
    if key == "mapping.w_avg":
        return "dlatent_avg"
    match = re.fullmatch(r"mapping\.layers\.(\d+)\.(weight|bias)", key)
    return f"mapping/Dense{match.group(1)}/{match.group(2)}"


def tf_name_for_discriminator(key: str, resolution: int) -> str:
    """TF variable name (inside ``D``) of a ``network.*`` key of [`StyleGANDiscriminator`]."""
    parts = key.split(".")[1:]
    fixed = {"from_rgb": "FromRGB_lod0", "final_conv": "4x4/Conv", "final_dense": "4x4/Dense0", "output": "4x4/Dense1"}
    if parts[0] in fixed:
        return f"{fixed[parts[0]]}/{parts[-1]}"
    block_resolution = resolution >> int(parts[1])
    scope = "Conv0" if parts[2] == "conv0" else "Conv1_down"
    return f"{block_resolution}x{block_resolution}/{scope}/{parts[-1]}"


def to_torch_layout(name: str, value: np.ndarray) -> torch.Tensor:
    """TF layout -> PyTorch layout: ``*/weight`` kernels to ``[out, in, kh, kw]``, dense matrices transposed.

    float64 values beyond the float32 range become inf here (quietly: [`build_state_dict`] reports them).
    """
    with np.errstate(over="ignore"):
        array = np.asarray(value, dtype=np.float32)
    if name.endswith("/weight") and array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    elif name.endswith("/weight") and array.ndim == 2:
        array = array.T
    return torch.from_numpy(np.ascontiguousarray(array))


def build_state_dict(
    expected: Mapping[str, torch.Tensor],
    variables: Mapping[str, np.ndarray],
    tf_name: Callable[[str], str | None],
    source: str,
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Fill every key of ``expected`` (a reference state dict) from ``variables``.

    Returns the state dict and the set of TF names used. Raises [`ConversionError`] listing the first
    problems (missing variables, shape differences, values beyond float32, negative BatchNorm variances) on one line
    when the pickle does not fit.
    """
    state, used, problems = {}, set(), []
    for key, reference in expected.items():
        name = tf_name(key)
        if name is None:
            state[key] = torch.zeros(reference.shape, dtype=reference.dtype)
            continue
        if name not in variables:
            problems.append(f"missing {source} variable '{name}' (for {key}, shape {list(reference.shape)})")
            continue
        tensor = to_torch_layout(name, variables[name])
        if tuple(tensor.shape) != tuple(reference.shape):
            problems.append(
                f"{source} variable '{name}' has shape {list(np.shape(variables[name]))}, "
                f"expected {list(reference.shape)} in PyTorch layout for {key}"
            )
            continue
        if not torch.isfinite(tensor).all():
            problems.append(f"{source} variable '{name}' has values beyond the float32 range")
        elif name.endswith("/moving_variance") and (tensor < 0).any():
            problems.append(f"{source} variable '{name}' (a BatchNorm variance) has negative values")
        state[key] = tensor.to(reference.dtype)
        used.add(name)
    if problems:
        more = f"; ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ConversionError(f"The pickle does not match the official GH-Feat/StyleGAN layout: "
                              f"{'; '.join(problems[:10])}{more}")
    return state, used

"""Plain helper functions of the tests: assertions several modules share and the data files they write.

Per-test objects (tiny models, fakes, runners) are fixtures in ``conftest.py``.
"""

import copy
import io
from collections.abc import Callable
from pathlib import Path

import accelerate
import datasets
import numpy as np
import PIL.Image
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from transformers import PreTrainedModel
from transformers.integrations import accelerate as transformers_accelerate
from transformers.modeling_layers import GradientCheckpointingLayer


def assert_checkpointing_recomputes_exactly(
    model: torch.nn.Module,
    enable: Callable[[torch.nn.Module], None],
    forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
) -> None:
    """A train step with gradient checkpointing (``enable``) gives the outputs and gradients of a plain one, and
    really recomputes: the first trunk unit runs twice, and every BatchNorm inside a checkpointed layer has its
    running statistics updated twice (as by two plain forwards), the others once."""
    plain, checkpointed, twice = (copy.deepcopy(model).train() for _ in range(3))
    enable(checkpointed)
    unit_calls = []
    first_unit = next(module for module in checkpointed.modules() if isinstance(module, GradientCheckpointingLayer))
    first_norm = next(module for module in first_unit.modules() if isinstance(module, _BatchNorm))
    first_norm.register_forward_pre_hook(lambda *_: unit_calls.append(1))
    outputs = []
    for candidate in (plain, checkpointed):
        output = forward(candidate, pixels)
        output.square().mean().backward()
        outputs.append(output)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    assert len(unit_calls) == 2  # forward + recomputation in the backward pass
    for (name, param), reference in zip(checkpointed.named_parameters(), plain.parameters()):
        torch.testing.assert_close(param.grad, reference.grad, rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():
        forward(twice, pixels)
        forward(twice, pixels)
    recomputed = {
        f"{name}.{inner}".rstrip(".")
        for name, layer in checkpointed.named_modules() if isinstance(layer, GradientCheckpointingLayer)
        for inner, module in layer.named_modules() if isinstance(module, _BatchNorm)
    }
    assert recomputed
    expected_models = dict(plain.named_modules()), dict(twice.named_modules())
    for name, module in checkpointed.named_modules():
        if isinstance(module, _BatchNorm):
            expected = expected_models[name in recomputed][name]
            for stat in ("running_mean", "running_var", "num_batches_tracked"):
                torch.testing.assert_close(getattr(module, stat), getattr(expected, stat), msg=f"{name}.{stat}")


def split_blocks(model: PreTrainedModel, infer_auto_device_map, whole: set[str]) -> set[str]:
    """Blocks of ``model._no_split_modules`` split by device maps over two small fake GPUs (then the CPU) that keep
    the classes ``whole`` whole; the GPU budgets range from 1/8 to 1/2 of the model."""
    size = sum(tensor.numel() * tensor.element_size() for tensor in (*model.parameters(), *model.buffers()))
    blocks = [name for name, module in model.named_modules() if type(module).__name__ in model._no_split_modules]
    split = set()
    for fraction in range(2, 9):
        device_map = infer_auto_device_map(model, no_split_module_classes=whole,
                                           max_memory={0: size // fraction, 1: size // fraction, "cpu": 10 * size})
        assert 1 in device_map.values()  # the model really spreads over both devices
        split |= {block for block in blocks if any(key.startswith(block + ".") for key in device_map)}
    return split


def assert_device_map_keeps_blocks_whole(model: PreTrainedModel) -> None:
    """device_map="auto" (transformers' and accelerate's planners) never splits a block of ``_no_split_modules``."""
    for infer in (transformers_accelerate.infer_auto_device_map, accelerate.infer_auto_device_map):
        assert split_blocks(model, infer, set()) != set()  # the budgets split blocks if nothing keeps them whole
        assert split_blocks(model, infer, model._no_split_modules) == set()


def photo_crops(count: int = 12, size: int = 40, seed: int = 0) -> list[PIL.Image.Image]:
    """Crops of scikit-image's bundled photos, in several modes and sizes (RGB, L, RGBA, P)."""
    from skimage import data as skdata

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.camera(), skdata.rocket()]
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        photo = photos[index % len(photos)]
        crop = size + 8 * (index % 3)
        top = int(rng.integers(0, photo.shape[0] - crop))
        left = int(rng.integers(0, photo.shape[1] - crop))
        image = PIL.Image.fromarray(photo[top : top + crop, left : left + crop])
        mode = ("RGB", "L", "RGBA", "P")[index % 4]
        images.append(image.convert(mode) if image.mode != mode else image)
    return images


def write_saved_dataset(path: Path, images, corrupt: int = 0) -> Path:
    """save_to_disk directory of the images (PNG bytes) plus `corrupt` rows of garbage bytes."""
    records = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        records.append({"bytes": buffer.getvalue(), "path": None})
    records += [{"bytes": b"definitely not an image " * (k + 1), "path": None} for k in range(corrupt)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    dataset = datasets.Dataset.from_dict({"image": records, "label": list(range(len(records)))}, features=features)
    dataset.save_to_disk(str(path))
    return path

"""Hostile model directories and inputs: `load_model` and the `ghfeat` commands refuse them with one line naming the
file and the key (never a traceback, never silently wrong results); well-formed directories load exactly as before;
PIL color modes are converted to real RGB.

Every hostile directory is a copy of a tiny well-formed one (`save_ghfeat_directory`) with one thing broken.
"""

import colorsys
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import PIL.Image
import pytest
import torch
from PIL import ImageCms
from safetensors.torch import load_file, save_file

import ghfeat_hf
from ghfeat_hf import GHFeatImageProcessor, GHFeatModel
from ghfeat_hf.cli import main
from ghfeat_hf.errors import UsageError
from ghfeat_hf.hub import save_ghfeat_directory
from ghfeat_hf.runtime import load_model, resolve_device, resolve_model_path

from .conftest import tiny_ghfeat_config

pytestmark = pytest.mark.usefixtures("one_thread", "hostile_budget")

WEIGHTS, CONFIG, PROCESSOR = "model.safetensors", "config.json", "preprocessor_config.json"
STEM = "encoder.stem.conv.weight"


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> Path:
    return save_ghfeat_directory(GHFeatModel(tiny_ghfeat_config()).eval(), tmp_path_factory.mktemp("good") / "model")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "a.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(autouse=True)
def _no_model_from_the_environment(monkeypatch):
    monkeypatch.delenv("GHFEAT_MODEL", raising=False)


# ----------------------------------------------------------------------------------------------------------------
# Tampering


def edit_weights(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def tamper(directory: Path) -> None:
        state = load_file(directory / WEIGHTS)
        edit(state)
        save_file(state, directory / WEIGHTS, metadata={"format": "pt"})

    return tamper


def edit_json(name: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def tamper(directory: Path) -> None:
        data = json.loads((directory / name).read_text())
        edit(data)
        (directory / name).write_text(json.dumps(data))

    return tamper


def write_bytes(name: str, content: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Replace file `name` by `content(old bytes)`."""

    def tamper(directory: Path) -> None:
        (directory / name).write_bytes(content((directory / name).read_bytes()))

    return tamper


def set_nan(state: dict[str, torch.Tensor]) -> None:
    state[STEM].view(-1)[0] = math.nan


def drop(prefix: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        for key in [key for key in state if key.startswith(prefix)]:
            del state[key]

    return edit


def to_int64(state: dict[str, torch.Tensor]) -> None:
    for key, tensor in state.items():
        state[key] = tensor.round().long()


def negative_running_var(state: dict[str, torch.Tensor]) -> None:
    state["encoder.stem.norm.running_var"][0] = -1.0


def grayscale_processor(data: dict) -> None:
    data.update(num_channels=1, image_mean=[1.0], image_std=[1.0])


# name -> (tamper, fragments the message must hold: the file and the key)
HOSTILE = {
    "missing stem": (edit_weights(drop(STEM)), [WEIGHTS, "missing", STEM]),
    "missing heads": (edit_weights(drop("encoder.heads.")), [WEIGHTS, "missing", "encoder.heads.0.linear.bias"]),
    "unexpected tensor": (
        edit_weights(lambda state: state.update({"encoder.extra.weight": torch.zeros(3)})),
        [WEIGHTS, "1 tensor (", "outside", "encoder.extra.weight"],
    ),
    "reshaped tensor": (
        edit_weights(lambda state: state.update({STEM: state[STEM][:, :, :5, :5].contiguous()})),
        [WEIGHTS, STEM, "shape [8, 3, 5, 5]", "[8, 3, 7, 7]"],
    ),
    "depth 34 config over depth-18 weights": (
        edit_json(CONFIG, lambda data: data.update(depth=34)),
        [WEIGHTS, CONFIG, "missing", "encoder.stages.0.2."],
    ),
    "int64 weights": (edit_weights(to_int64), [WEIGHTS, "encoder.", "I64", "expected F32 or F16 or BF16"]),
    "NaN weight": (edit_weights(set_nan), [WEIGHTS, STEM, "NaN"]),
    "negative running variance": (
        edit_weights(negative_running_var),
        [WEIGHTS, "encoder.stem.norm.running_var", "negative"],
    ),
    "config without model_type": (
        edit_json(CONFIG, lambda data: data.pop("model_type")),
        [CONFIG, "'model_type' is missing", "'ghfeat'"],
    ),
    "config of another model": (
        edit_json(CONFIG, lambda data: data.update(model_type="bert")),
        [CONFIG, "'model_type' is 'bert'", "'ghfeat'"],
    ),
    "config invalid JSON": (write_bytes(CONFIG, lambda old: old[: len(old) // 2]), [CONFIG, "not valid JSON"]),
    "config JSON list": (write_bytes(CONFIG, lambda old: b"[1, 2]"), [CONFIG, "expected a JSON object", "list"]),
    "config missing": (lambda directory: (directory / CONFIG).unlink(), ["no config.json"]),
    "config width out of range": (edit_json(CONFIG, lambda data: data.update(base_width=0)), [CONFIG, "base_width"]),
    "head groups inconsistent": (
        edit_json(CONFIG, lambda data: data.update(head_layer_groups=[2, 2, 2])),
        [CONFIG, "head_layer_groups", "summing to 8"],
    ),
    "weights missing": (lambda directory: (directory / WEIGHTS).unlink(), [f"no {WEIGHTS}"]),
    "weights empty": (write_bytes(WEIGHTS, lambda old: b""), [WEIGHTS, "empty"]),
    "weights truncated": (write_bytes(WEIGHTS, lambda old: old[: len(old) // 2]), [WEIGHTS, "truncated", "tensor"]),
    "weights garbage": (
        write_bytes(WEIGHTS, lambda old: np.random.default_rng(0).bytes(4096)),
        [WEIGHTS, "not a safetensors file", "header length"],
    ),
    "weights with a garbage header": (
        write_bytes(WEIGHTS, lambda old: (16).to_bytes(8, "little") + b"\xff" * 16 + b"data"),
        [WEIGHTS, "header is not JSON"],
    ),
    "processor invalid JSON": (write_bytes(PROCESSOR, lambda old: b"{'size': 32"), [PROCESSOR, "not valid JSON"]),
    "processor rescale_factor 0": (
        edit_json(PROCESSOR, lambda data: data.update(rescale_factor=0)),
        [PROCESSOR, "rescale_factor", "positive"],
    ),
    "processor size not positive": (
        edit_json(PROCESSOR, lambda data: data.update(size={"height": -32, "width": 32})),
        [PROCESSOR, "size", "positive"],
    ),
    "processor size of another model": (
        edit_json(PROCESSOR, lambda data: data.update(size={"height": 64, "width": 64})),
        [PROCESSOR, "'size' is 64x64", "32x32"],
    ),
    "processor channels of another model": (
        edit_json(PROCESSOR, grayscale_processor),
        [PROCESSOR, "'num_channels' is 1", "3 channels"],
    ),
}


def hostile_copy(good_dir: Path, tmp_path: Path, tamper: Callable[[Path], None]) -> Path:
    directory = tmp_path / "model"
    shutil.copytree(good_dir, directory)
    tamper(directory)
    return directory


def assert_cli_refuses(argv: list[str], fragments: list[str], image: Path, tmp_path: Path, capsys) -> None:
    """`ghfeat extract` and `ghfeat reconstruct` with `argv` exit with 2 and one stderr line holding `fragments`."""
    commands = (["extract", str(image), "-o", str(tmp_path / "features.parquet"), "--no-progress"],
                ["reconstruct", str(image), "-o", str(tmp_path / "grid.png")])
    for command in commands:
        capsys.readouterr()
        assert main([*command, *argv]) == 2, command
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (command, err)
        assert all(fragment in lines[0] for fragment in fragments), (command, lines[0])
    assert not (tmp_path / "features.parquet").exists() and not (tmp_path / "grid.png").exists()


# ----------------------------------------------------------------------------------------------------------------
# Model directories


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_directory_is_refused(case, good_dir, image, tmp_path, capsys):
    tamper, fragments = HOSTILE[case]
    directory = hostile_copy(good_dir, tmp_path, tamper)
    with pytest.raises(UsageError) as error:
        load_model(directory)
    message = str(error.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    assert_cli_refuses(["--model", str(directory), "--device", "cpu"], fragments, image, tmp_path, capsys)


@pytest.mark.parametrize("argv, fragments", [
    (["--model", ""], ["--model is empty"]),
    (["--model", " "], ["--model is empty"]),
    (["--device", "meta"], ["device 'meta'", "cannot run"]),
])
def test_empty_model_and_meta_device_are_refused(argv, fragments, good_dir, image, tmp_path, capsys):
    assert_cli_refuses(["--model", str(good_dir), "--device", "cpu", *argv], fragments, image, tmp_path, capsys)


def test_empty_model_and_unusable_devices_in_python(good_dir):
    with pytest.raises(UsageError, match="--model is empty"):
        resolve_model_path("")
    with pytest.raises(UsageError, match="--model is empty"):
        load_model("")
    for device in ("meta", "cuda:99" if torch.cuda.is_available() else "cuda", "xpu:99"):
        with pytest.raises(UsageError, match=f"device '{device}'"):
            resolve_device(device)
        with pytest.raises(UsageError, match=f"device '{device}'"):
            load_model(good_dir, device=device)
    with pytest.raises(UsageError, match="Hub id"):
        load_model("org/no-such-ghfeat-model")  # offline and not cached


def assert_loads_exactly(directory: Path) -> GHFeatModel:
    """`load_model` gives the weights of the file bit for bit (in float32), in eval mode, and the directory's
    processor; returns the model."""
    model, processor = load_model(directory, device="cpu")
    stored = load_file(directory / WEIGHTS)
    state = model.state_dict()
    assert state.keys() == stored.keys()
    assert all(torch.equal(state[key], stored[key].to(state[key].dtype)) for key in stored)
    assert all(tensor.dtype == torch.float32 for tensor in model.parameters())
    assert not any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    assert not model.training and model.config.name_or_path == str(directory)
    assert processor.to_dict() == GHFeatImageProcessor.from_pretrained(directory).to_dict()
    return model


@pytest.mark.parametrize("where", ["saved", "embedded"])
def test_well_formed_directories_load_as_from_pretrained_does(where, good_dir):
    directory = good_dir if where == "saved" else ghfeat_hf.embedded_model_path()
    model = assert_loads_exactly(directory)
    reference = GHFeatModel.from_pretrained(directory).eval()
    pixels = torch.rand(2, model.config.num_channels, 32, 32) * 2 - 1
    with torch.inference_mode():
        ours, theirs = model(pixel_values=pixels), reference(pixel_values=pixels)
        assert torch.equal(ours.pooler_output, theirs.pooler_output)
        assert torch.equal(model.reconstruct(pixels), reference.reconstruct(pixels))


def test_half_precision_weights_are_accepted(good_dir, tmp_path):
    directory = hostile_copy(good_dir, tmp_path, edit_weights(lambda state: state.update(
        {key: tensor.to(torch.bfloat16) for key, tensor in state.items() if tensor.is_floating_point()})))
    assert_loads_exactly(directory)


def test_hub_ids_are_checked_like_directories(good_dir, tmp_path, monkeypatch):
    """A Hub id resolves, offline, to a populated cache; its files go through the same checks."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for repo, tamper in (("org/good", lambda directory: None), ("org/nan", edit_weights(set_nan))):
        snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
        hostile_copy(good_dir, snapshot.parent, tamper).rename(snapshot)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    model, _ = load_model("org/good")
    assert model.config.name_or_path == "org/good"
    assert torch.equal(model.encoder.stem.conv.weight, load_file(good_dir / WEIGHTS)[STEM])
    with pytest.raises(UsageError, match=f"models--org--nan/snapshots/0+/{WEIGHTS}: tensor '{STEM}' holds NaN"):
        load_model("org/nan")


def test_config_keys_that_steer_transformers_loading_are_ignored(good_dir, tmp_path):
    """`transformers_weights` (another weights file) and `dtype` in config.json change what `from_pretrained`
    loads; the strict loader reads model.safetensors, in float32, whatever they say."""
    def redirect(directory: Path) -> None:
        state = load_file(directory / WEIGHTS)
        set_nan(state)
        save_file(state, directory / "other.safetensors", metadata={"format": "pt"})
        edit_json(CONFIG, lambda data: data.update(transformers_weights="other.safetensors", dtype="float16"))(
            directory)

    directory = hostile_copy(good_dir, tmp_path, redirect)
    assert torch.isnan(GHFeatModel.from_pretrained(directory).encoder.stem.conv.weight).any()  # what we avoid
    assert_loads_exactly(directory)


def test_directory_without_processor_gets_the_models_own(tmp_path):
    directory = tmp_path / "gray"
    GHFeatModel(tiny_ghfeat_config(num_channels=1)).save_pretrained(directory)
    _, processor = load_model(directory)
    assert processor.num_channels == 1 and (processor.size.height, processor.size.width) == (32, 32)


def test_from_pretrained_keeps_transformers_behaviour(good_dir, tmp_path):
    """Python users of `GHFeatModel.from_pretrained` are not affected: a missing tensor is initialised afresh."""
    directory = hostile_copy(good_dir, tmp_path, edit_weights(drop(STEM)))
    assert GHFeatModel.from_pretrained(directory).encoder.stem.conv.weight.shape == (8, 3, 7, 7)


# ----------------------------------------------------------------------------------------------------------------
# PIL color modes


def processed(image: PIL.Image.Image) -> np.ndarray:
    """The processor's output as 0-255 RGB values, `(H, W, 3)`, at the image's own size."""
    processor = GHFeatImageProcessor(size={"height": image.height, "width": image.width})
    return np.moveaxis(processor(image)["pixel_values"][0], 0, -1) * 127.5 + 127.5


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def test_hsv_images_are_converted_to_rgb(pixels):
    reference = np.array([[colorsys.hsv_to_rgb(*(pixel / 255)) for pixel in row] for row in pixels]) * 255
    result = processed(PIL.Image.fromarray(pixels, "HSV"))
    np.testing.assert_allclose(result, np.round(reference), atol=1e-3)
    assert np.abs(result - pixels).max() > 100  # the HSV bytes read as RGB would be far off


def test_lab_images_are_converted_to_rgb(pixels):
    lab = PIL.Image.fromarray(pixels, "LAB")
    reference = ImageCms.profileToProfile(lab, ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                          outputMode="RGB")
    result = processed(lab)
    np.testing.assert_allclose(result, np.asarray(reference), atol=1e-3)
    assert np.abs(result - pixels).max() > 100
    # an RGB photo converted to LAB by ImageCms comes back within the 8-bit LAB quantisation
    rgb = PIL.Image.fromarray(pixels)
    to_lab = ImageCms.profileToProfile(rgb, ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                       outputMode="LAB")
    assert np.abs(processed(to_lab) - pixels).mean() < 3


def test_ycbcr_and_cmyk_images_are_converted_to_rgb(pixels):
    y, cb, cr = (pixels[..., index].astype(np.float64) for index in range(3))
    jpeg = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                     y + 1.772 * (cb - 128)], axis=-1)
    np.testing.assert_allclose(processed(PIL.Image.fromarray(pixels, "YCbCr")), np.clip(jpeg, 0, 255), atol=1.5)
    cmyk = np.random.default_rng(2).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    naive = (255 - cmyk[..., :3].astype(np.float64)) * (255 - cmyk[..., 3:].astype(np.float64)) / 255
    np.testing.assert_allclose(processed(PIL.Image.fromarray(cmyk, "CMYK")), naive, atol=1)


def test_premultiplied_alpha_is_composited_like_straight_alpha(pixels):
    alpha = np.random.default_rng(3).integers(64, 256, (16, 16, 1), dtype=np.uint8)
    rgba = PIL.Image.fromarray(np.concatenate([pixels, alpha], axis=-1), "RGBA")
    assert np.abs(processed(rgba.convert("RGBa")) - processed(rgba)).max() <= 4
    gray = rgba.convert("LA")
    assert np.abs(processed(gray.convert("La")) - processed(gray)).max() <= 4

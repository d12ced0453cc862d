"""Tests for `GHFeatImageProcessor` (CPU, PIL backend)."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from ghfeat_hf.image_processing_ghfeat import GHFeatImageProcessor

STEP = 1 / 127.5  # one uint8 level in model space


def _rgb_image() -> np.ndarray:
    """A real (512, 512, 3) uint8 photo, or a smooth synthetic one when scikit-image is missing."""
    try:
        from skimage import data

        return data.astronaut()
    except ImportError:
        y, x = np.mgrid[0:512, 0:512]
        return np.stack([x // 2, y // 2, (x + y) // 4], axis=-1).astype(np.uint8)


def _gray_image() -> np.ndarray:
    """A real (512, 512) uint8 grayscale photo, or a synthetic one when scikit-image is missing."""
    try:
        from skimage import data

        return data.camera()
    except ImportError:
        return _rgb_image()[..., 0].copy()


@pytest.fixture(scope="module")
def processor() -> GHFeatImageProcessor:
    return GHFeatImageProcessor()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return _rgb_image()


@pytest.fixture(scope="module")
def rgb256(rgb) -> np.ndarray:
    return np.ascontiguousarray(rgb[100:356, 150:406])


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return _gray_image()


def _run(processor, images, **kwargs) -> np.ndarray:
    return processor(images, return_tensors="np", **kwargs)["pixel_values"]


def _to_model_space(hwc_uint8: np.ndarray) -> np.ndarray:
    """Official GH-Feat mapping `x / 255 * 2 - 1`, as a (1, 3, H, W) float64 array."""
    return (hwc_uint8.astype(np.float64) / 255 * 2 - 1).transpose(2, 0, 1)[None]


def _pil_bilinear(hwc_uint8: np.ndarray, size=(256, 256)) -> np.ndarray:
    return np.asarray(PIL.Image.fromarray(hwc_uint8).resize(size, PIL.Image.BILINEAR))


def test_defaults_and_serialized_keys(processor):
    assert processor.model_input_names == ["pixel_values"]
    assert (processor.size.height, processor.size.width) == (256, 256)
    config = processor.to_dict()
    assert config["image_processor_type"] == "GHFeatImageProcessor"
    assert config["rescale_factor"] == 1 / 127.5
    assert list(config["image_mean"]) == [1.0, 1.0, 1.0] and list(config["image_std"]) == [1.0, 1.0, 1.0]
    assert config["resample"] == PIL.Image.BILINEAR


def test_exact_scaling_without_resize(processor, rgb256):
    out = processor(PIL.Image.fromarray(rgb256), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 256, 256) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _to_model_space(rgb256), rtol=0, atol=1e-6)
    assert out.min().item() >= -1 and out.max().item() <= 1


@pytest.mark.parametrize("height, width", [(512, 512), (300, 200), (90, 170)])  # downscale, non-square, upscale
def test_resize_matches_pil_bilinear(processor, rgb, height, width):
    image = np.ascontiguousarray(rgb[:height, :width])
    out = _run(processor, PIL.Image.fromarray(image))
    np.testing.assert_allclose(out, _to_model_space(_pil_bilinear(image)), rtol=0, atol=1e-6)


def test_custom_size(rgb):
    out = _run(GHFeatImageProcessor(size=64), rgb)
    np.testing.assert_allclose(out, _to_model_space(_pil_bilinear(rgb, (64, 64))), rtol=0, atol=1e-6)
    out = _run(GHFeatImageProcessor(size={"height": 32, "width": 48}), rgb)
    assert out.shape == (1, 3, 32, 48)


def test_grayscale_replicated(processor, gray):
    out = _run(processor, PIL.Image.fromarray(gray))
    expected = _pil_bilinear(gray).astype(np.float64) / 255 * 2 - 1
    for channel in range(3):
        np.testing.assert_allclose(out[0, channel], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out, _run(processor, gray))
    np.testing.assert_array_equal(out, _run(processor, gray[..., None]))
    np.testing.assert_array_equal(out, _run(processor, PIL.Image.fromarray(gray).convert("LA")))


def test_alpha_and_palette(processor, rgb256):
    rgb_out = _run(processor, PIL.Image.fromarray(rgb256))
    opaque = np.concatenate([rgb256, np.full((256, 256, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(_run(processor, PIL.Image.fromarray(opaque)), rgb_out)
    np.testing.assert_array_equal(_run(processor, opaque), rgb_out)
    np.testing.assert_allclose(_run(processor, opaque.astype(np.float32) / 255), rgb_out, rtol=0, atol=1e-6)
    # Fully transparent pixels are composited onto white.
    transparent = opaque.copy()
    transparent[..., 3] = 0
    np.testing.assert_array_equal(_run(processor, PIL.Image.fromarray(transparent)), np.ones_like(rgb_out))
    np.testing.assert_array_equal(_run(processor, transparent), np.ones_like(rgb_out))
    palette = PIL.Image.fromarray(rgb256).quantize(64)
    expected = _to_model_space(np.asarray(palette.convert("RGB")))
    np.testing.assert_allclose(_run(processor, palette), expected, rtol=0, atol=1e-6)


def test_sixteen_bit_inputs(processor, gray):
    gray256 = np.ascontiguousarray(gray[::2, ::2])
    wide = gray256.astype(np.uint16) * 257
    expected = _run(processor, gray256)
    pil16 = PIL.Image.fromarray(wide)
    assert pil16.mode == "I;16"
    for image in (pil16, pil16.convert("I"), wide, torch.from_numpy(wide.astype(np.int32)).to(torch.uint16)):
        np.testing.assert_allclose(_run(processor, image), expected, rtol=0, atol=1e-6)
    # With resizing, PIL's 8-bit path rounds twice (once per pass), the float path not at all.
    resized = _run(processor, gray.astype(np.uint16) * 257)
    np.testing.assert_allclose(resized, _run(processor, gray), rtol=0, atol=STEP + 1e-6)
    full = _run(processor, PIL.Image.fromarray(np.full((16, 16), 65535, np.uint16)))
    np.testing.assert_array_equal(full, np.ones_like(full))


def test_arrays_and_tensors_match_pil(processor, rgb, rgb256):
    for image in (rgb256, rgb):
        expected = _run(processor, PIL.Image.fromarray(image))
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        for variant in (image, chw, torch.from_numpy(image), torch.from_numpy(chw)):
            np.testing.assert_array_equal(_run(processor, variant), expected)
    float_out = _run(processor, torch.from_numpy(rgb256).permute(2, 0, 1).float() / 255)
    np.testing.assert_allclose(float_out, _to_model_space(rgb256), rtol=0, atol=1e-6)
    float_resized = _run(processor, rgb.astype(np.float64) / 255)
    np.testing.assert_allclose(float_resized, _run(processor, rgb), rtol=0, atol=STEP + 1e-6)


def test_batches(processor, rgb, rgb256, gray):
    single = _run(processor, rgb256)
    batch = np.stack([rgb256, rgb256[::-1]])
    out = _run(processor, batch)
    assert out.shape == (2, 3, 256, 256)
    np.testing.assert_array_equal(out[:1], single)
    np.testing.assert_array_equal(_run(processor, torch.from_numpy(batch).permute(0, 3, 1, 2)), out)
    mixed = _run(processor, [PIL.Image.fromarray(rgb), gray, rgb256])
    assert mixed.shape == (3, 3, 256, 256)
    np.testing.assert_array_equal(mixed[2:], single)


def test_input_data_format_resolves_ambiguity(processor):
    image = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)  # both ends could be channels
    hwc = _run(processor, image, do_resize=False)
    assert hwc.shape == (1, 3, 3, 4)
    np.testing.assert_allclose(hwc, _to_model_space(image), rtol=0, atol=1e-6)
    assert _run(processor, torch.from_numpy(image), do_resize=False).shape == (1, 3, 4, 3)
    chw = _run(processor, image, do_resize=False, input_data_format="channels_first")
    np.testing.assert_allclose(chw, _to_model_space(image.transpose(1, 2, 0)), rtol=0, atol=1e-6)


def test_file_paths(processor, tmp_path, gray):
    path = tmp_path / "gray16.png"
    PIL.Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    expected = _run(processor, gray.astype(np.uint16) * 257)
    np.testing.assert_array_equal(_run(processor, path), expected)
    np.testing.assert_array_equal(_run(processor, [str(path)]), expected)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 0), np.uint8), "empty"),
        (torch.zeros(3, 0, 8), "empty"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty batch"),
        (PIL.Image.new("RGB", (0, 4)), "empty"),
        (np.zeros(16, np.uint8), "shape"),
        (np.zeros((1, 1, 8, 8, 3), np.uint8), "shape"),
        (torch.zeros(2, 1, 3, 8, 8), "shape"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        (torch.full((3, 8, 8), float("inf")), "infinite"),
        (np.full((8, 8, 3), 2.0), r"\[0, 1\]"),
        (np.zeros((8, 8, 2), np.uint8), "channel"),
        (np.zeros((8, 8, 5), np.uint8), "channel"),
        (np.zeros((8, 8, 3), np.int64), "dtype"),
        ("definitely/not/an/image.png", "not an existing file"),
        ({"pixel_values": 0}, "Unsupported image type"),
        (None, "Unsupported image type"),
        ([], "empty list"),
        ([[np.zeros((8, 8, 3), np.uint8)]], "Nested"),
    ],
)
def test_bad_inputs_raise(processor, image, message):
    with pytest.raises(ValueError, match=message):
        processor(image, return_tensors="pt")


def test_sixteen_bit_out_of_range_raises(processor):
    with pytest.raises(ValueError, match="16-bit"):
        processor(PIL.Image.fromarray(np.full((8, 8), 70000, np.int32)), return_tensors="pt")


def test_save_load_round_trip(tmp_path, rgb):
    processor = GHFeatImageProcessor(size=128)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "GHFeatImageProcessor"
    assert saved["size"] == {"height": 128, "width": 128}
    loaded = GHFeatImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    np.testing.assert_array_equal(_run(loaded, rgb), _run(processor, rgb))


def test_postprocess_inverts_preprocess(processor, rgb256, gray):
    batch = [rgb256, np.repeat(gray[:256, :256, None], 3, axis=-1)]
    pixel_values = processor(batch, return_tensors="pt")["pixel_values"]
    restored = processor.postprocess(pixel_values)
    assert len(restored) == 2 and all(image.mode == "RGB" for image in restored)
    for image, original in zip(restored, batch):
        np.testing.assert_array_equal(np.asarray(image), original)
    np.testing.assert_array_equal(np.asarray(processor.postprocess(pixel_values[0].numpy())[0]), rgb256)


def test_postprocess_rounding_and_clipping(processor):
    values = torch.tensor([-2.0, -1.0, -0.999, 0.0, 0.996, 1.0, 3.0]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    pixels = np.asarray(processor.postprocess(values)[0])[0, :, 0]
    np.testing.assert_array_equal(pixels, [0, 0, 0, 128, 254, 255, 255])
    with pytest.raises(ValueError, match="NaN"):
        processor.postprocess(torch.full((1, 3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        processor.postprocess(torch.zeros(1, 2, 4, 4))


# ----------------------------------------------------------------------------------------------------------------
# Grayscale (num_channels=1)


@pytest.fixture(scope="module")
def gray_processor() -> GHFeatImageProcessor:
    return GHFeatImageProcessor(num_channels=1)


def test_grayscale_processor_takes_pil_luminance(gray_processor, rgb, rgb256, gray):
    """8-bit inputs: PIL's "L" of the RGB image the 3-channel path sees (transparency on white), then resized."""
    expected = _to_model_space(_pil_bilinear(np.asarray(PIL.Image.fromarray(rgb).convert("L")))[..., None])
    out = _run(gray_processor, PIL.Image.fromarray(rgb))
    assert out.shape == (1, 1, 256, 256) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    for variant in (rgb, torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))):
        np.testing.assert_array_equal(_run(gray_processor, variant), out)
    np.testing.assert_allclose(_run(gray_processor, gray), _run(GHFeatImageProcessor(), gray)[:, :1], rtol=0, atol=0)
    np.testing.assert_array_equal(_run(gray_processor, PIL.Image.fromarray(gray).convert("LA")),
                                  _run(gray_processor, PIL.Image.fromarray(gray)))
    half = np.concatenate([rgb256, np.full((256, 256, 1), 128, np.uint8)], axis=-1)
    on_white = PIL.Image.alpha_composite(PIL.Image.new("RGBA", (256, 256), "white"), PIL.Image.fromarray(half))
    expected = _to_model_space(np.asarray(on_white.convert("L"))[..., None])
    np.testing.assert_allclose(_run(gray_processor, PIL.Image.fromarray(half)), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(_run(gray_processor, half), _run(gray_processor, PIL.Image.fromarray(half)))


def test_grayscale_processor_sixteen_bit_and_float_use_luma_weights(gray_processor, rgb256, gray):
    weights = np.array([0.299, 0.587, 0.114])
    luma = (rgb256.astype(np.float64) / 255) @ weights
    expected = (luma * 2 - 1)[None, None]
    for image in (rgb256.astype(np.float32) / 255, torch.from_numpy(rgb256.astype(np.float64) / 255).permute(2, 0, 1),
                  rgb256.astype(np.uint16) * 257):
        np.testing.assert_allclose(_run(gray_processor, image), expected, rtol=0, atol=1e-5)
    # PIL's 8-bit "L" rounds to the nearest level: within half a step of the float luma.
    np.testing.assert_allclose(_run(gray_processor, rgb256), expected, rtol=0, atol=STEP / 2 + 1e-6)
    gray256 = np.ascontiguousarray(gray[::2, ::2])
    for image in (PIL.Image.fromarray(gray256.astype(np.uint16) * 257), gray256.astype(np.float32) / 255):
        np.testing.assert_allclose(_run(gray_processor, image), _run(gray_processor, gray256), rtol=0, atol=1e-6)
    rgba = np.concatenate([rgb256.astype(np.float64) / 255, np.full((256, 256, 1), 0.5)], axis=-1)
    on_white = (rgba[..., :3] * 0.5 + 0.5) @ weights
    np.testing.assert_allclose(_run(gray_processor, rgba), (on_white * 2 - 1)[None, None], rtol=0, atol=1e-5)


def test_grayscale_processor_batches_and_postprocess(gray_processor, rgb, rgb256, gray):
    out = gray_processor([PIL.Image.fromarray(rgb), gray, rgb256], return_tensors="pt")["pixel_values"]
    assert out.shape == (3, 1, 256, 256) and out.min() >= -1 and out.max() <= 1
    restored = gray_processor.postprocess(out)
    assert [image.mode for image in restored] == ["L"] * 3 and restored[0].size == (256, 256)
    np.testing.assert_array_equal(np.asarray(restored[2]), np.asarray(PIL.Image.fromarray(rgb256).convert("L")))
    assert gray_processor.postprocess(out[0].numpy())[0].mode == "L"


def test_grayscale_processor_settings_are_saved(tmp_path, rgb):
    processor = GHFeatImageProcessor(size=32, num_channels=1)
    assert list(processor.image_mean) == [1.0] and list(processor.image_std) == [1.0]
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["num_channels"] == 1 and saved["image_mean"] == [1.0] and saved["image_std"] == [1.0]
    loaded = GHFeatImageProcessor.from_pretrained(tmp_path)
    assert loaded.num_channels == 1 and loaded.to_dict() == processor.to_dict()
    np.testing.assert_array_equal(_run(loaded, rgb), _run(processor, rgb))
    assert GHFeatImageProcessor().to_dict()["num_channels"] == 3
    model_config = {"model_type": "ghfeat", "image_size": 64, "num_channels": 1}
    from_model = GHFeatImageProcessor.from_dict(model_config)
    assert from_model.num_channels == 1 and dict(from_model.size) == {"height": 64, "width": 64}


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(num_channels=2), "num_channels must be 1"), (dict(num_channels=1, image_mean=[0.5] * 3), "image_mean"),
     (dict(image_std=[1.0]), "image_std")],
)
def test_bad_channel_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GHFeatImageProcessor(**kwargs)

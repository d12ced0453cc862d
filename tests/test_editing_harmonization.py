"""Harmonization (ghfeat_hf.editing.harmonization): masks, pasting and the encode-decode of the composite."""

import numpy as np
import PIL.Image
import pytest
import torch

from ghfeat_hf.editing import box_mask, harmonize, image_mask, masks_at_resolution, paste_region, resize_images
from ghfeat_hf.editing.harmonization import parse_box
from ghfeat_hf.errors import UsageError
from tests.editing_helpers import demo_pixel_values


def test_box_and_image_masks(tmp_path):
    mask = box_mask((64, 48), (8, 4, 24, 20))
    assert mask.shape == (48, 64) and mask.sum() == 16 * 16 and mask[4, 8] == 1 and mask[20, 24] == 0
    for box in ((8, 4, 8, 20), (0, 0, 65, 10), (-1, 0, 4, 4)):
        with pytest.raises(UsageError, match="empty or outside"):
            box_mask((64, 48), box)
    assert parse_box("1,2,3,4") == (1, 2, 3, 4)
    with pytest.raises(UsageError, match="left,top,right,bottom"):
        parse_box("1,2,3")

    gray = np.zeros((48, 64), np.uint8)
    gray[:, 32:] = 255
    PIL.Image.fromarray(gray).save(tmp_path / "mask.png")
    loaded = image_mask(tmp_path / "mask.png", size=(64, 48))
    assert loaded.shape == (48, 64) and loaded[:, 32:].min() == 1 and loaded[:, :32].max() == 0
    rgba = PIL.Image.new("RGBA", (64, 48), (255, 255, 255, 0))
    rgba.paste((0, 0, 0, 255), (0, 0, 10, 48))
    assert image_mask(rgba).sum() == 10 * 48  # the alpha channel, not the colour
    with pytest.raises(UsageError, match="the mask is 64x48 but the image is 32x32"):
        image_mask(tmp_path / "mask.png", size=(32, 32))
    with pytest.raises(UsageError, match="cannot read the mask"):
        image_mask(tmp_path / "missing.png")

    small = masks_at_resolution([mask, loaded], 32)
    assert small.shape == (2, 1, 32, 32)
    torch.testing.assert_close(small.mean(dim=(1, 2, 3)), torch.tensor([1 / 12, 1 / 2]), atol=5e-3, rtol=0)  # area


def test_paste_region_takes_the_masked_pixels_from_the_source():
    base, source = torch.full((2, 3, 8, 8), -1.0), torch.full((1, 3, 8, 8), 1.0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:6] = 1.0
    mask[..., 6, 6] = 0.25
    pasted = paste_region(base, source, mask)
    assert pasted.shape == (2, 3, 8, 8)
    assert (pasted[..., 2:4, 2:6] == 1).all() and (pasted[..., 0, :] == -1).all()
    torch.testing.assert_close(pasted[..., 6, 6], torch.full((2, 3), -0.5))
    with pytest.raises(UsageError, match="share the encoder's input size"):
        paste_region(base, source, torch.zeros(1, 1, 4, 4))


def test_harmonize_with_empty_and_full_regions(tiny_model):
    model = tiny_model()
    base, source = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        base_reconstruction, source_reconstruction = model.reconstruct(base), model.reconstruct(source)
    empty = harmonize(model, base, source, torch.zeros(1, 1, 32, 32))
    torch.testing.assert_close(empty.pasted, base)
    torch.testing.assert_close(empty.harmonized, base_reconstruction, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(empty.base_reconstruction, base_reconstruction, rtol=1e-4, atol=1e-4)
    full = harmonize(model, base, source, torch.ones(1, 1, 32, 32), batch_size=3)
    torch.testing.assert_close(full.harmonized, source_reconstruction, rtol=1e-4, atol=1e-4)

    calls = []

    def invert(model_, pixel_values):
        calls.append(pixel_values.shape)
        return model_.encode(pixel_values)

    mask = masks_at_resolution(box_mask((32, 32), (8, 8, 24, 24)), 32)
    result = harmonize(model, base, source, mask, invert=invert)
    assert calls == [(4, 3, 32, 32)]  # the composites and the bases, inverted together
    assert (result.harmonized - base_reconstruction).abs().max() > 1e-3


def test_an_opaque_alpha_channel_is_not_the_mask():
    white_on_black = np.zeros((48, 64), np.uint8)
    white_on_black[:, :10] = 255
    for mode in ("RGBA", "LA"):
        image = PIL.Image.fromarray(white_on_black).convert(mode)  # alpha 255 everywhere
        assert image.getchannel("A").getextrema() == (255, 255)
        assert image_mask(image).sum() == 10 * 48, mode  # the gray level, not the all-ones alpha


def test_16_bit_and_float_masks_keep_their_scale(tmp_path):
    levels = np.array([[0, 16384, 32768, 65535]], np.uint16).repeat(3, axis=0)
    PIL.Image.fromarray(levels).save(tmp_path / "mask16.png")
    assert PIL.Image.open(tmp_path / "mask16.png").mode.startswith("I")
    expected = torch.tensor(levels / 65535.0, dtype=torch.float32)
    for mask in (tmp_path / "mask16.png", levels, PIL.Image.fromarray(levels.astype(np.int32))):  # I;16 and I
        torch.testing.assert_close(image_mask(mask, size=(4, 3)), expected)

    soft = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    for mask in (soft, soft.astype(np.float64), torch.from_numpy(soft), PIL.Image.fromarray(soft)):  # F mode
        torch.testing.assert_close(image_mask(mask), torch.from_numpy(soft))
    for bad in (soft * 255, np.full((3, 4), np.nan, np.float32), np.full((3, 4), 70000, np.int32)):
        with pytest.raises(UsageError, match="outside"):
            image_mask(bad)
    with pytest.raises(UsageError, match="cannot read the mask"):
        image_mask(np.zeros((3, 4, 3), np.float32))


def test_a_mask_file_pastes_its_region_and_harmonization_stays_at_the_generator_resolution(tmp_path, tiny_model):
    # an encoder input size (16 px) other than the generator resolution (32 px): everything returned is 32 px
    model = tiny_model(image_size=16)
    base, source = demo_pixel_values(2, size=16), demo_pixel_values(4, size=16)[2:]
    region = np.zeros((16, 16), np.uint8)
    region[8:, 4:12] = 255  # lower middle, white = from the source
    PIL.Image.fromarray(region).save(tmp_path / "mask.png")
    mask = masks_at_resolution(image_mask(tmp_path / "mask.png", size=(16, 16)), 16)
    result = harmonize(model, base, source, mask)
    for images in (result.pasted, result.harmonized, result.base_reconstruction):
        assert images.shape == (2, 3, 32, 32)
    pasted = result.pasted.view(2, 3, 16, 2, 16, 2)[..., 0, :, 0]  # area-enlarged by 2: undo it
    inside = torch.from_numpy(region == 255).expand_as(pasted)
    torch.testing.assert_close(pasted[inside], source[inside])
    torch.testing.assert_close(pasted[~inside], base[~inside])
    assert (base[inside] - source[inside]).abs().max() > 0.5  # the region really changed
    torch.testing.assert_close(resize_images(base, 32), harmonize(model, base, source, mask * 0).pasted)

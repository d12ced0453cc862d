"""Image processor class for GH-Feat (PIL backend, no torchvision needed)."""

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers import PilBackend
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict, load_image

from .configuration_ghfeat import GHFeatConfig

_VALID_CHANNELS = (1, 3, 4)
_OUTPUT_CHANNELS = (1, 3)
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, the weights of PIL's "RGB" -> "L" conversion
_ALPHA_MODES = ("RGBA", "LA", "PA")
_UNPREMULTIPLIED = {"RGBa": "RGBA", "La": "LA"}  # premultiplied alpha, undone before compositing


def _finite_numbers(value: Any) -> bool:
    """Whether `value` is a finite number or a non-empty sequence of them (bools and strings excluded)."""
    values = value if isinstance(value, (list, tuple)) and value else [value]
    return all(
        isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item) for item in values
    )


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """An 8-bit PIL image in mode "RGB" (see the class docstring for each mode); transparency (an alpha band or a
    palette's transparent index) is composited onto white."""
    mode = image.mode
    try:
        image = image.convert(_UNPREMULTIPLIED[mode]) if mode in _UNPREMULTIPLIED else image
        if image.mode in _ALPHA_MODES or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"Unsupported PIL image mode {mode!r}: {error}") from error


def _flatten(image: PIL.Image.Image, num_channels: int) -> np.ndarray:
    """An 8-bit PIL image as a `(num_channels, H, W)` uint8 array: RGB ([`_to_rgb`]), or PIL's "L" of that RGB
    image for one channel."""
    image = _to_rgb(image)
    if num_channels == 1:
        return np.asarray(image.convert("L"))[None]
    return np.moveaxis(np.asarray(image), -1, 0)


class GHFeatImageProcessor(PilBackend):
    r"""
    Constructs a GH-Feat image processor, reproducing the official GH-Feat preprocessing: convert to RGB, bilinear
    resize to the model resolution, then `x / 255 * 2 - 1` (expressed as `rescale_factor=1/127.5`, `image_mean=1`,
    `image_std=1`). The result is `pixel_values` of shape `(batch_size, num_channels, height, width)`, float32 in
    `[-1, 1]` (pass `return_tensors="pt"` to get a `torch.Tensor`).

    Args:
        size (`dict[str, int]` or `int`, *optional*, defaults to `{"height": 256, "width": 256}`):
            Output resolution, the model's input resolution. Must be a `{"height", "width"}` size (an `int` `n`
            means `n x n`). Any other `ImagesKwargs` (`resample`, `do_resize`, ...) overrides the defaults below.
        num_channels (`int`, *optional*, defaults to 3):
            Output channels, the model's input channels (saved in `preprocessor_config.json`): 3 for RGB, 1 for
            grayscale models, where every input is converted to its luminance after the RGB conversion below:
            PIL's "L" conversion for 8-bit inputs, the same ITU-R 601 weights `(0.299, 0.587, 0.114)` in float for
            16-bit and float inputs. `image_mean` / `image_std` default to `num_channels` ones; lists given must
            have `num_channels` values.

    Accepted inputs: one image, a list of images, or a 4-D array/tensor holding a batch. An image is
        - a `PIL.Image.Image` of any size and mode. 8-bit modes are converted to RGB with PIL's `convert`:
            - `RGB` as is, `RGBX` without its padding band, `L` and `1` replicated to RGB, `P` through its palette;
            - `RGBA`, `LA`, `PA` and images with a `transparency` entry (palette index or color) are composited onto
              white; `RGBa` and `La` (premultiplied alpha) are un-premultiplied first;
            - `YCbCr`: the JPEG (full-range ITU-R BT.601) YCbCr -> RGB conversion;
            - `CMYK`: `R = (255 - C) * (255 - K) / 255` (likewise G, B), no color management;
            - `HSV` (Pillow's layout: hue 0-255 for 0-360 degrees, saturation and value 0-255): the exact HSV -> RGB
              conversion (as `colorsys.hsv_to_rgb`);
            - `LAB` (Pillow's layout: L* 0-255 for 0-100, a* and b* offset by 128): CIE L*a*b* (D50) to sRGB, the
              conversion of `PIL.ImageCms` with its built-in LAB and sRGB profiles (Pillow >= 9.3);
            - a mode the installed Pillow cannot convert raises a `ValueError` naming it.
          Embedded ICC profiles are not applied (the pixels are read as sRGB). 16-bit grayscale (`I;16*`, and `I`
          holding values in `[0, 65535]`) is divided by 257, so 65535 maps to 1.0; `F` is read as float in `[0, 1]`;
        - a path to an image file (`str` or `os.PathLike`), opened with PIL without any mode conversion, or an
          `http(s)://` URL (loaded as RGB by `transformers.image_utils.load_image`);
        - a `np.ndarray` or `torch.Tensor` of shape `(H, W)`, `(H, W, C)` or `(C, H, W)` with `C` in `{1, 3, 4}`
          (gray, RGB, RGBA) and dtype `uint8` (`[0, 255]`), `uint16` (`[0, 65535]`) or floating point (`[0, 1]`).
          A batch is `(N, H, W, C)` or `(N, C, H, W)`. The channel axis is the one of size 1, 3 or 4; when both ends
          qualify, NumPy arrays are read as channels-last and tensors as channels-first, unless
          `input_data_format` says otherwise. 8-bit arrays follow exactly the PIL path above.

    8-bit inputs are resized with PIL's 8-bit resampling (as the official code resizes uint8 images); 16-bit and
    float inputs are resized per channel in PIL's float mode, so they keep their precision. Empty, NaN/inf,
    out-of-range, wrong-rank, wrong-channel-count or non-image inputs raise a `ValueError`.
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    size = {"height": 256, "width": 256}
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 127.5
    do_normalize = True
    image_mean = [1.0, 1.0, 1.0]
    image_std = [1.0, 1.0, 1.0]

    def __init__(self, num_channels: int = 3, **kwargs: Any) -> None:
        if isinstance(num_channels, bool) or num_channels not in _OUTPUT_CHANNELS:
            raise ValueError(f"num_channels must be 1 (grayscale) or 3 (RGB), got {num_channels!r}.")
        for key in ("image_mean", "image_std"):
            if kwargs.get(key) is None:
                kwargs[key] = [1.0] * num_channels
        super().__init__(**kwargs)
        self.num_channels = num_channels
        for key in ("image_mean", "image_std"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)) and len(value) != num_channels:
                raise ValueError(f"{key} has {len(value)} values for num_channels={num_channels}: {list(value)}.")
        self._check_settings()

    def _check_settings(self) -> None:
        """Raise a ValueError naming a setting no image can be processed with."""
        factor = self.rescale_factor
        if not _finite_numbers(factor) or factor <= 0:
            raise ValueError(f"rescale_factor must be a positive finite number, got {factor!r}.")
        sides = (self.size.height, self.size.width)
        if not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides):
            raise ValueError(f"size must give a positive integer 'height' and 'width', got {dict(self.size)}.")
        if not _finite_numbers(self.image_mean):
            raise ValueError(f"image_mean must be finite numbers, got {self.image_mean!r}.")
        if not _finite_numbers(self.image_std) or 0 in np.atleast_1d(self.image_std):
            raise ValueError(f"image_std must be finite non-zero numbers, got {self.image_std!r}.")

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs: Any) -> "GHFeatImageProcessor":
        """
        Build the processor from a `preprocessor_config.json` dict, or from a GH-Feat *model* configuration dict
        (`model_type == "ghfeat"`): the default processor at the model's `image_size` and `num_channels`.

        transformers >= 5.25 passes a local directory's `config.json` here when it holds timm's `pretrained_cfg`,
        as directories written by ghfeat-hf before 0.2 do; they thus keep their model's resolution.
        """
        if image_processor_dict.get("model_type") == GHFeatConfig.model_type:
            size = int(image_processor_dict.get("image_size", cls.size["height"]))
            num_channels = int(image_processor_dict.get("num_channels", 3))
            image_processor_dict = {"size": {"height": size, "width": size}, "num_channels": num_channels}
        return super().from_dict(image_processor_dict, **kwargs)

    def fetch_images(self, image_url_or_urls: ImageInput | str | os.PathLike) -> ImageInput:
        """Open file paths and URLs (recursively in lists and other sequences, such as a `datasets` column); pass
        images through; reject anything else."""
        if isinstance(image_url_or_urls, Sequence) and not isinstance(image_url_or_urls, (str, bytes)):
            return [self.fetch_images(image) for image in image_url_or_urls]
        if isinstance(image_url_or_urls, (PIL.Image.Image, np.ndarray, torch.Tensor)):
            return image_url_or_urls
        if isinstance(image_url_or_urls, str) and image_url_or_urls.startswith(("http://", "https://")):
            return load_image(image_url_or_urls)
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            path = os.fspath(image_url_or_urls)
            if not os.path.isfile(path):
                raise ValueError(f"Image path {path!r} is not an existing file.")
            try:
                with PIL.Image.open(path) as image:
                    return PIL.ImageOps.exif_transpose(image)
            except OSError as error:
                raise ValueError(f"Could not read {path!r} as an image: {error}") from error
        raise ValueError(
            f"Unsupported image type {type(image_url_or_urls).__name__}: expected a PIL image, a numpy array, a torch "
            "tensor, a path to an image file, or a list of these."
        )

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        """Return a flat list of single images; a 4-D array or tensor is split along its first axis."""
        if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):  # also a `datasets` column
            if len(images) == 0:
                raise ValueError("Expected at least one image, got an empty list.")
            if any(isinstance(image, (list, tuple)) for image in images):
                raise ValueError("Nested lists of images are not supported, pass a flat list.")
            return self.fetch_images(list(images))
        images = self.fetch_images(images)
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            if images.shape[0] == 0:
                raise ValueError(f"Got an empty batch of shape {tuple(images.shape)}.")
            return list(images)
        return [images]

    def process_image(
        self, image: ImageInput, input_data_format: str | ChannelDimension | None = None, **kwargs
    ) -> np.ndarray:
        """
        Convert one image to an array of shape `(num_channels, H, W)` (RGB or luminance): `uint8` for 8-bit inputs,
        float32 in `[0, 255]` for 16-bit and float inputs.
        """
        if isinstance(image, PIL.Image.Image):
            return self._pil_to_array(image)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            image = image.float().numpy() if image.dtype == torch.bfloat16 else image.numpy()
            channels_last = False
        else:
            channels_last = True
        if image.ndim not in (2, 3):
            raise ValueError(
                f"Expected an image of shape (H, W), (H, W, C) or (C, H, W), got shape {tuple(image.shape)}."
            )
        if image.size == 0:
            raise ValueError(f"Got an empty image of shape {tuple(image.shape)}.")

        if image.ndim == 2:
            image = image[..., None]
        else:
            if input_data_format is None:
                first, last = image.shape[0] in _VALID_CHANNELS, image.shape[-1] in _VALID_CHANNELS
                if not (first or last):
                    raise ValueError(
                        f"Unsupported channel count in image of shape {image.shape}: expected 1, 3 or 4 channels in "
                        "(H, W, C) or (C, H, W) layout."
                    )
                channels_last = last and (channels_last or not first)
            else:
                channels_last = ChannelDimension(input_data_format) == ChannelDimension.LAST
            image = image if channels_last else np.moveaxis(image, 0, -1)
            if image.shape[-1] not in _VALID_CHANNELS:
                raise ValueError(f"Unsupported channel count {image.shape[-1]}: expected 1, 3 or 4.")

        if image.dtype == np.uint8:
            image = image[..., 0] if image.shape[-1] == 1 else image
            return self._pil_to_array(PIL.Image.fromarray(np.ascontiguousarray(image)))
        if image.dtype.type is np.uint16:
            image = image.astype(np.float64) / 257
        elif np.issubdtype(image.dtype, np.floating):
            image = image.astype(np.float64)
            if not np.isfinite(image).all():
                raise ValueError("Image contains NaN or infinite values.")
            if image.min() < 0 or image.max() > 1:
                raise ValueError(f"Float images must lie in [0, 1], got values in [{image.min()}, {image.max()}].")
            image = image * 255
        else:
            raise ValueError(f"Unsupported image dtype {image.dtype}: expected uint8, uint16 or floating point.")

        if image.shape[-1] == 4:
            alpha = image[..., 3:] / 255
            image = image[..., :3] * alpha + 255 * (1 - alpha)
        if self.num_channels == 1 and image.shape[-1] == 3:
            image = image @ np.array(_LUMA_WEIGHTS)[:, None]
        elif self.num_channels == 3 and image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        return np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32)

    def _pil_to_array(self, image: PIL.Image.Image) -> np.ndarray:
        """Convert a PIL image to a `(num_channels, H, W)` array (see `process_image`)."""
        if image.width == 0 or image.height == 0:
            raise ValueError(f"Got an empty image of size {image.size}.")
        if image.mode in _SIXTEEN_BIT_MODES:
            array = np.asarray(image)
            if array.min() < 0 or array.max() > 65535:
                raise ValueError(
                    f"PIL mode {image.mode!r} is read as 16-bit, got values in [{array.min()}, {array.max()}]."
                )
            return self.process_image(array.astype(np.uint16))
        if image.mode == "F":
            return self.process_image(np.asarray(image))
        return _flatten(image, self.num_channels)

    def resize(
        self, image: np.ndarray, size: SizeDict, resample: PILImageResampling | int | None = None, **kwargs
    ) -> np.ndarray:
        """
        Resize a `(C, H, W)` image to `(C, size.height, size.width)` with PIL, channel by channel: 8-bit
        resampling for `uint8` images, float (`F` mode) resampling, clipped to `[0, 255]`, otherwise.
        """
        if not (size.height and size.width):
            raise ValueError(f"GHFeatImageProcessor needs a {{'height', 'width'}} size, got {dict(size)}.")
        resample = PILImageResampling.BILINEAR if resample is None else resample
        planes = [
            PIL.Image.fromarray(plane).resize((size.width, size.height), resample=resample) for plane in image
        ]
        resized = np.stack([np.asarray(plane) for plane in planes])
        return resized if resized.dtype == np.uint8 else np.clip(resized, 0, 255)

    def postprocess(self, pixel_values: torch.Tensor | np.ndarray) -> list[PIL.Image.Image]:
        """
        Map model-space images back to PIL images as the official GH-Feat code does:
        `uint8(clip((x + 1) * 127.5 + 0.5, 0, 255))`.

        Args:
            pixel_values (`torch.Tensor` or `np.ndarray`):
                Images of shape `(batch_size, C, height, width)` or `(C, height, width)` with `C` 3 (RGB) or 1
                (grayscale), values in `[-1, 1]` (values outside are clipped).

        Returns:
            `list[PIL.Image.Image]`: one image of size `(width, height)` per batch element, mode "RGB" for 3
            channels, "L" for 1.
        """
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().cpu().double().numpy()
        images = np.asarray(pixel_values, dtype=np.float64)
        images = images[None] if images.ndim == 3 else images
        if images.ndim != 4 or images.shape[1] not in _OUTPUT_CHANNELS or images.size == 0:
            raise ValueError(
                f"Expected pixel_values of shape (B, C, H, W) or (C, H, W) with C 3 or 1, got {images.shape}."
            )
        if not np.isfinite(images).all():
            raise ValueError("pixel_values contains NaN or infinite values.")
        images = np.clip((images + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
        return [PIL.Image.fromarray(np.ascontiguousarray(image)) for image in images]


__all__ = ["GHFeatImageProcessor"]

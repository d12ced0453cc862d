#!/usr/bin/env python
"""Train the domain classifier that judges generated and style-mixed images (`ghfeat_hf.evaluation.DomainClassifier`).

It trains on the training split of a labelled image dataset, reports its accuracy on the test split (never used for
any choice) and saves a ``save_pretrained`` directory (``config.json``, ``model.safetensors``, ``metrics.json``,
``README.md``) that ``ghfeat evaluate style-mixing --classifier`` and ``ghfeat evaluate generation --classifier``
load. The Fashion-MNIST classifier shipped in the package (``ghfeat_hf/pretrained/classifiers/fashion-mnist-cnn``)
is this command's output::

    python training/train_classifier.py --dataset fashion-mnist --output_dir runs/fashion-mnist-cnn

A run takes minutes on a CPU, so it does not checkpoint: an interrupted run is simply started again.
Augmentation: random translation by up to ``--max_shift`` pixels (zero fill) and horizontal flips, so mirrored
generator samples are in-domain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ghfeat_hf import GHFeatImageProcessor
from ghfeat_hf.error_reporting import run_script
from ghfeat_hf.evaluation.domain_classifier import DomainClassifier
from ghfeat_hf.evaluation.metrics import accuracy_with_ci
from ghfeat_hf.evaluation.splits import class_names, encode_labels, load_split
from ghfeat_hf.image_io import to_pil_image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", required=True, help="fashion-mnist, a Hub dataset id, an image folder or a "
                        "save_to_disk folder (with a label column)")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--test_split", default="test")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--resolution", type=int, default=32, help="input size (images are resized to it)")
    parser.add_argument("--num_channels", type=int, default=1, choices=[1, 3])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128], help="channels of the conv stages")
    parser.add_argument("--feature_dim", type=int, default=128, help="width of the penultimate (feature) layer")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="AdamW peak lr (one-cycle schedule)")
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--max_shift", type=int, default=2, help="random translation in pixels (0: none)")
    parser.add_argument("--max_train_samples", type=int, help="first N training images (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--no_progress", action="store_true")
    return parser.parse_args(argv)


def load_pixels(dataset, processor: GHFeatImageProcessor, image_column: str, batch_size: int = 1024) -> torch.Tensor:
    """`pixel_values [N, C, R, R]` in [-1, 1] of a split, through the GH-Feat processor."""
    return torch.cat([
        processor(images=[to_pil_image(raw) for raw in dataset[start:start + batch_size][image_column]],
                  return_tensors="pt")["pixel_values"] for start in range(0, len(dataset), batch_size)])


def augment(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations by up to `max_shift` pixels (the border filled with -1, black)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if max_shift <= 0:
        return images
    size = images.shape[-1]
    padded = F.pad(images, [max_shift] * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(size))[:, None, :, None]
    cols = (offsets[:, 1, None] + torch.arange(size))[:, None, None, :]
    batch = torch.arange(len(images))[:, None, None, None]
    channels = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, channels, rows, cols]


def accuracy(model: DomainClassifier, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy with its 95% Wilson interval."""
    return accuracy_with_ci(model.predict(pixel_values)[0].numpy(), labels.numpy())


def write_model_card(output_dir: Path, args: argparse.Namespace, metrics: dict) -> None:
    low, high = metrics["test_accuracy_ci95"]
    lines = [
        "---", "library_name: ghfeat-hf", "license: mit", "tags:", "- image-classification", "- ghfeat", "---", "",
        f"# Domain classifier for `{args.dataset}`", "",
        "A small CNN (`ghfeat_hf.evaluation.DomainClassifier`) that judges generated and style-mixed images for "
        "`ghfeat evaluate style-mixing` and `ghfeat evaluate generation` (its penultimate features are the space "
        "of the Fréchet distance).", "",
        "| metric | value |", "|---|---|",
        f"| test accuracy ({metrics['test_images']} images) | {100 * metrics['test_accuracy']:.2f}% "
        f"[{100 * low:.2f}, {100 * high:.2f}] |",
        f"| training accuracy | {100 * metrics['train_accuracy']:.2f}% |",
        f"| parameters | {metrics['parameters']:,} |", "",
        "Trained with:", "", "```bash",
        "python training/train_classifier.py " + " ".join(metrics["command"]), "```", "",
    ]
    (output_dir / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    processor = GHFeatImageProcessor(size={"height": args.resolution, "width": args.resolution},
                                     num_channels=args.num_channels)
    train, test = load_split(args.dataset, args.train_split), load_split(args.dataset, args.test_split)
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    labels, values = encode_labels({"train": train, "test": test}, args.label_column)
    classes = class_names(train, args.label_column) or [str(value) for value in values]
    train_x, test_x = (load_pixels(split, processor, args.image_column) for split in (train, test))
    train_y, test_y = (torch.as_tensor(labels[role], dtype=torch.int64) for role in ("train", "test"))
    model = DomainClassifier(num_channels=args.num_channels, resolution=args.resolution, num_classes=len(classes),
                             widths=args.widths, feature_dim=args.feature_dim, label_names=classes)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train_x, train_y), batch_size=args.batch_size,
                                         shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.learning_rate, epochs=args.epochs,
                                                    steps_per_epoch=len(loader))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    augmentation_rng = torch.Generator().manual_seed(args.seed + 1)
    bar = tqdm(total=args.epochs * len(loader), desc="classifier", disable=args.no_progress or
               not accelerator.is_main_process, dynamic_ncols=True)
    for epoch in range(args.epochs):
        model.train()
        for images, labels in loader:
            images = augment(images.cpu(), args.max_shift, augmentation_rng).to(accelerator.device)
            with accelerator.autocast():
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()

    classifier = accelerator.unwrap_model(model)
    test_metrics = accuracy(classifier, test_x, test_y)
    metrics = {"test_accuracy": test_metrics["accuracy"], "test_accuracy_ci95": test_metrics["ci95"],
               "test_images": len(test_y), "train_accuracy": accuracy(classifier, train_x, train_y)["accuracy"],
               "train_images": len(train_y), "parameters": sum(p.numel() for p in classifier.parameters()),
               "command": sys.argv[1:] if argv is None else list(argv)}
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        classifier.save_pretrained(output_dir)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_model_card(output_dir, args, metrics)
        print(f"test accuracy {100 * metrics['test_accuracy']:.2f}% -> {output_dir}")
    return metrics


if __name__ == "__main__":
    run_script(main)

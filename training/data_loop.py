"""The data side of a training loop and the randomness of each step: what makes a resumed run continue exactly.

A trainer's loop, over the pieces of ``arguments``, ``acceleration``, ``checkpoints`` and ``tracking``::

    args = parser.parse_args(argv)                 # with arguments.add_run_args(parser)
    accelerator = build_accelerator(args)          # seeded, seedable sampler, trackers not started yet
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    state = TrainState()
    accelerator.register_for_checkpointing(state)  # + any other object with state_dict/load_state_dict
    checkpoints = CheckpointManager(accelerator, args.output_dir, args.checkpoints_total_limit)
    checkpoints.resume(args.resume_from_checkpoint, state)   # "latest", a path, or None
    init_trackers(accelerator, "my_project", args)
    batches = iterate_batches(accelerator, dataloader, state)  # endless; resumes mid-epoch exactly
    progress = Progress(accelerator, args.max_steps, state, images_per_step=global_batch)
    while state.step < args.max_steps:
        batch = next(batches)                       # fetch data BEFORE seeding the step
        seed_step(args.seed, state.step, accelerator.process_index)
        ... forward / accelerator.backward / optimizer.step ...
        state.step += 1
        progress.update(state, loss=...)
        if state.step % args.log_every == 0: log_scalars(accelerator, {...}, state.step)
        if state.step % args.checkpointing_steps == 0:
            with progress.excluded(): checkpoints.save(state)   # left out of the reported throughput
    checkpoints.save(state); accelerator.end_training()

Exact resume: data order comes from accelerate's seedable sampler + ``set_epoch`` + ``skip_first_batches``
(:func:`iterate_batches`); per-sample augmentation from :func:`ghfeat_hf.data.flip_decision`; all other
randomness of a step from :func:`seed_step`, which reseeds the global RNGs from ``(seed, step, rank)``, so a
resumed run does not depend on how much RNG state was consumed before (dataloader iterator creation, model
init, ...).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device

from checkpoints import TrainState


def _mix(*values: int) -> int:
    x = 0x243F6A8885A308D3
    for value in values:
        x = (x ^ (int(value) & 0xFFFFFFFFFFFFFFFF)) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF



def seed_step(seed: int, step: int, rank: int = 0) -> int:
    """Reseed python, numpy and torch (all devices) from ``(seed, step, rank)``; returns the seed used.

    Call it once per optimizer step, after fetching that step's batches: the step's randomness (latents,
    noise, dropout, ...) is then a pure function of the step, which makes resumed runs bit-identical.
    """
    value = _mix(seed, step, rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value


def shard_iterable_dataset(dataset, accelerator: Accelerator):
    """Give each process its own part of a streaming ``datasets.IterableDataset`` (``split_dataset_by_node``).

    Shuffle with a fixed seed *before* sharding. Do not pass the resulting DataLoader to ``accelerator.prepare``
    (it would shard again); :func:`iterate_batches` moves its batches to the device.
    """
    if accelerator.num_processes == 1:
        return dataset
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(dataset, rank=accelerator.process_index, world_size=accelerator.num_processes)


def _batch_size_of(batch: Any) -> int:
    if isinstance(batch, dict):
        values = [batch["pixel_values"]] if "pixel_values" in batch else list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        values = [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


def iterate_batches(
    accelerator: Accelerator, dataloader: Iterable, state: TrainState, *, prepared: bool | None = None
) -> Iterator[Any]:
    """Endless batches, epoch after epoch, keeping ``state`` (epoch, position, images, skipped) up to date.

    Calls ``set_epoch(state.epoch)`` on the loader and on its dataset at each epoch start and, on the first epoch
    after a resume, skips the ``state.batches_in_epoch`` batches already consumed (``accelerator.skip_first_batches``
    for prepared loaders; reading and dropping them otherwise). Batches with zero images (every sample
    unreadable) are consumed but not yielded. ``images_seen`` and ``skipped_samples`` (``batch["num_skipped"]``)
    are summed over processes, so every rank must pull batches in lockstep.
    """
    if prepared is None:
        prepared = dataloader in getattr(accelerator, "_dataloaders", [])
    dataset = getattr(dataloader, "dataset", None)
    while True:
        if hasattr(dataloader, "set_epoch"):
            # with several processes a prepared loader forwards the epoch to its sampler only
            dataloader.set_epoch(state.epoch)
        if hasattr(dataset, "set_epoch"):  # e.g. ImageRows: the epoch of the per-sample mirror flips
            dataset.set_epoch(state.epoch)
        skip = state.batches_in_epoch
        if skip and prepared:
            loader = accelerator.skip_first_batches(dataloader, skip)
        else:
            loader = iter(dataloader)
            for _ in range(skip):
                next(loader)
        produced = skip
        for batch in loader:
            produced += 1
            state.batches_in_epoch += 1
            if not prepared:
                batch = send_to_device(batch, accelerator.device)
            images = _batch_size_of(batch)
            skipped = int(torch.as_tensor(batch.get("num_skipped", 0)).sum()) if isinstance(batch, dict) else 0
            counts = torch.tensor([images, skipped], dtype=torch.long, device=accelerator.device)
            if accelerator.num_processes > 1:
                counts = accelerator.reduce(counts, reduction="sum")
            state.images_seen += int(counts[0])
            state.skipped_samples += int(counts[1])
            if images:
                yield batch
        if produced == 0:
            raise ValueError("The dataloader produced no batch in a whole epoch (dataset smaller than one batch?).")
        state.epoch += 1
        state.batches_in_epoch = 0

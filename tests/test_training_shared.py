"""The trainers' shared pieces (training/acceleration.py, arguments.py, checkpoints.py, data_loop.py, tracking.py):
exact resume, atomic checkpoints, retention and the counter trap, logging helpers."""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from accelerate.state import AcceleratorState

import acceleration
import arguments
import checkpoints
import data_loop
import tracking
from ghfeat_hf.data import flip_decision, make_image_dataloader
from tests.conftest import TRAINING_PYTHONPATH

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(autouse=True)
def reset_accelerate_singletons():
    yield
    AcceleratorState._reset_state(True)


def run_args(output_dir, *extra):
    parser = argparse.ArgumentParser()
    arguments.add_run_args(parser)
    return parser.parse_args(["--output_dir", str(output_dir), "--report_to", "none", *extra])


class Points(torch.utils.data.Dataset):
    """20 samples; the batch dict has no pixel_values, so iterate_batches counts the first tensor's rows."""

    def __init__(self, n=20):
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 6, generator=generator)
        self.y = torch.randn(n, 1, generator=generator)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "num_skipped": torch.tensor(i % 7 == 0)}


def run_loop(output_dir, max_steps, checkpointing_steps=3, resume=None, limit=None, fail_save_at=None):
    """A miniature trainer built from the shared pieces, with randomness in every step (dropout) and epochs of 5 batches."""
    args = run_args(output_dir, "--max_steps", str(max_steps), "--checkpointing_steps", str(checkpointing_steps),
                       "--seed", "3")
    accelerator = acceleration.build_accelerator(args)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    loader = torch.utils.data.DataLoader(Points(), batch_size=4, shuffle=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = checkpoints.TrainState()
    accelerator.register_for_checkpointing(state)
    manager = checkpoints.CheckpointManager(accelerator, output_dir, limit)
    resumed = manager.resume(resume, state)
    batches = data_loop.iterate_batches(accelerator, loader, state)
    losses = {}
    while state.step < max_steps:
        batch = next(batches)
        data_loop.seed_step(args.seed, state.step, accelerator.process_index)
        loss = torch.nn.functional.mse_loss(model(batch["x"]) + 0.01 * torch.randn(1), batch["y"])
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        state.step += 1
        losses[state.step] = loss.item()
        if state.step % checkpointing_steps == 0:
            if fail_save_at == state.step:
                original = accelerator.save_state

                def crashing_save(output_dir, original=original, **kwargs):
                    original(output_dir, **kwargs)  # the files are written ... then the process dies
                    raise KeyboardInterrupt("killed during save")

                accelerator.save_state = crashing_save
            manager.save(state)
    weights = {k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    return SimpleNamespace(losses=losses, weights=weights, state=state, manager=manager, resumed=resumed,
                           accelerator=accelerator, lr=scheduler.get_last_lr()[0])


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    full = run_loop(tmp_path / "full", 12)
    AcceleratorState._reset_state(True)
    run_loop(tmp_path / "cut", 7)  # "killed" after step 7: checkpoints at 3 and 6 (mid-epoch 2, batch 1)
    AcceleratorState._reset_state(True)
    resumed = run_loop(tmp_path / "cut", 12, resume="latest")
    assert resumed.resumed.name == "checkpoint_6"
    assert list(resumed.losses) == list(range(7, 13))
    assert all(resumed.losses[s] == full.losses[s] for s in resumed.losses)
    assert all(torch.equal(full.weights[k], resumed.weights[k]) for k in full.weights)
    assert resumed.lr == full.lr
    assert (resumed.state.step, resumed.state.epoch, resumed.state.batches_in_epoch) == (12, 2, 2)
    assert full.state.images_seen == resumed.state.images_seen == 48
    # samples 0, 7, 14 are flagged as skipped: 3 per epoch, 2 full epochs + whatever the third epoch drew
    assert full.state.skipped_samples == resumed.state.skipped_samples >= 6


def test_checkpoint_counter_and_retention(tmp_path):
    first = run_loop(tmp_path, 6, checkpointing_steps=2, limit=2)
    assert [p.name for p in first.manager.checkpoints()] == ["checkpoint_4", "checkpoint_6"]
    assert first.accelerator.project_configuration.iteration == 7
    AcceleratorState._reset_state(True)
    second = run_loop(tmp_path, 10, checkpointing_steps=2, limit=2, resume="latest")
    assert second.accelerator.project_configuration.iteration == 11
    names = [p.name for p in second.manager.checkpoints()]
    assert names == ["checkpoint_8", "checkpoint_10"]  # the counter continued: nothing stale survives
    weights = second.manager.checkpoints()[-1] / "model.safetensors"
    state_file = second.manager.checkpoints()[-1] / checkpoints.TRAINER_STATE_NAME
    assert weights.stat().st_mode & 0o777 == state_file.stat().st_mode & 0o777  # readable like the JSON next to it
    assert [checkpoints.checkpoint_step(p) for p in second.manager.checkpoints()] == [8, 10]


def test_older_or_implicit_resume_is_refused(tmp_path):
    run_loop(tmp_path, 6, checkpointing_steps=2)
    AcceleratorState._reset_state(True)
    with pytest.raises(ValueError, match="Refusing to resume from .*checkpoint_4"):
        run_loop(tmp_path, 8, checkpointing_steps=2, resume=str(tmp_path / "checkpoints" / "checkpoint_4"))
    AcceleratorState._reset_state(True)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run_loop(tmp_path, 8, checkpointing_steps=2)
    AcceleratorState._reset_state(True)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        run_loop(tmp_path, 8, resume=str(tmp_path / "nope"))
    AcceleratorState._reset_state(True)
    fresh = run_loop(tmp_path / "new", 2, resume="latest")  # "latest" with nothing there: a new run
    assert fresh.resumed is None and fresh.state.step == 2


def test_resume_with_another_process_count_is_refused(tmp_path):
    run_loop(tmp_path, 3)
    state_file = tmp_path / "checkpoints" / "checkpoint_3" / checkpoints.TRAINER_STATE_NAME
    state = json.loads(state_file.read_text())
    assert state["num_processes"] == 1
    state_file.write_text(json.dumps({**state, "num_processes": 2}))
    AcceleratorState._reset_state(True)
    with pytest.raises(ValueError, match="written by 2 processes, this run has 1.*per process"):
        run_loop(tmp_path, 6, resume="latest")


def test_crash_during_save_keeps_previous_checkpoint(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_loop(tmp_path, 9, checkpointing_steps=3, fail_save_at=6)
    directory = tmp_path / "checkpoints"
    assert sorted(p.name for p in directory.iterdir()) == [".tmp-checkpoint_6", "checkpoint_3"]
    AcceleratorState._reset_state(True)
    resumed = run_loop(tmp_path, 9, checkpointing_steps=3, resume="latest")
    assert resumed.resumed.name == "checkpoint_3"  # the interrupted save never became "latest"
    assert not (directory / ".tmp-checkpoint_6").exists()  # cleaned at start
    assert [p.name for p in resumed.manager.checkpoints()] == ["checkpoint_3", "checkpoint_6", "checkpoint_9"]
    AcceleratorState._reset_state(True)
    reference = run_loop(tmp_path / "ref", 9, checkpointing_steps=3)
    assert all(torch.equal(reference.weights[k], resumed.weights[k]) for k in reference.weights)


def test_atomic_directory_keeps_old_on_failure(tmp_path):
    target = tmp_path / "export"
    with checkpoints.atomic_directory(target) as temporary:
        (temporary / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with checkpoints.atomic_directory(target) as temporary:
            (temporary / "a.txt").write_text("two")
            raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "one"
    with checkpoints.atomic_directory(target) as temporary:
        (temporary / "b.txt").write_text("three")
    assert sorted(os.listdir(target)) == ["b.txt"]
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_atomic_directory_removes_what_crashed_writers_left(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()
    dead, alive = finished.pid, os.getppid()
    target = tmp_path / "export"
    for name in (f".tmp-export-{dead}", f".tmp-export-{alive}", f".tmp-export-2-{dead}", f".tmp-other-{dead}"):
        (tmp_path / name).mkdir()
    with checkpoints.atomic_directory(target) as temporary:
        (temporary / "a.txt").write_text("one")
    (tmp_path / f".old-export-{dead}").mkdir()  # crashed between the rename aside and the deletion
    with checkpoints.atomic_directory(target) as temporary:
        (temporary / "a.txt").write_text("two")
    # a running writer's directory and other targets' directories are left alone
    assert sorted(os.listdir(tmp_path)) == sorted(["export", f".tmp-export-{alive}", f".tmp-export-2-{dead}",
                                                  f".tmp-other-{dead}"])
    assert (target / "a.txt").read_text() == "two"


def test_export_pretrained_writes_readable_weights(tmp_path):
    from accelerate import Accelerator

    from ghfeat_hf import GHFeatModel
    from tests.conftest import tiny_ghfeat_config

    checkpoints.export_pretrained(Accelerator(cpu=True), GHFeatModel(tiny_ghfeat_config()), tmp_path / "export")
    files = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "export").iterdir()}
    assert files["model.safetensors"] == files["config.json"]


def test_image_grid_png_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = run_args(tmp_path)
    args.report_to = "tensorboard"
    accelerator = acceleration.build_accelerator(args)
    tracking.init_trackers(accelerator, "grid_test", args)
    images = tracking.tensor_to_pil(torch.linspace(-1, 1, 6 * 3 * 8 * 8).view(6, 3, 8, 8))
    assert images[0].mode == "RGB" and np.asarray(images[0])[0, 0, 0] == 0 and np.asarray(images[-1])[-1, -1, -1] == 255
    grid = tracking.save_image_grid(accelerator, [images[:3], images[3:]], tmp_path / "g.png", step=5, tag="s/grid")
    values = {"a": torch.tensor(1.5), "b": float("nan"), "c": 2, "d": "text", "e": torch.tensor(float("inf"))}
    logged = tracking.log_scalars(accelerator, values, step=5)
    assert sorted(logged) == ["a", "b", "c", "e"] and logged["a"] == 1.5 and logged["c"] == 2.0
    accelerator.end_training()
    assert PIL.Image.open(tmp_path / "g.png").size == grid.size and grid.size[0] > 3 * 8
    events = EventAccumulator(str(tmp_path / "logs" / "grid_test")).Reload()
    assert events.Tags()["images"] == ["s/grid"] and {"a", "b", "e"} <= set(events.Tags()["scalars"])
    assert events.Scalars("a")[0].value == 1.5 and events.Scalars("a")[0].step == 5
    assert math.isnan(events.Scalars("b")[0].value) and events.Scalars("e")[0].value == math.inf  # divergence shows


def test_iterate_batches_skips_empty_and_counts(tmp_path):
    accelerator = acceleration.build_accelerator(run_args(tmp_path))
    batches = [{"pixel_values": torch.zeros(n, 1, 2, 2), "num_skipped": torch.tensor(s)} for n, s in ((3, 1), (0, 3), (2, 0))]
    state = checkpoints.TrainState()
    iterator = data_loop.iterate_batches(accelerator, batches, state)
    got = [next(iterator)["pixel_values"].shape[0] for _ in range(3)]
    assert got == [3, 2, 3]  # the empty batch is consumed but not yielded; then epoch 1 starts
    assert (state.epoch, state.batches_in_epoch, state.images_seen, state.skipped_samples) == (1, 1, 8, 5)
    with pytest.raises(ValueError, match="no batch in a whole epoch"):
        next(data_loop.iterate_batches(accelerator, [], checkpoints.TrainState()))


def _flip_epochs_worker(tmp):
    """2 processes (debug_launcher): record which images of each batch were mirrored, with their epoch."""
    accelerator = acceleration.build_accelerator(run_args(tmp))
    ramp = PIL.Image.fromarray(np.tile(np.arange(8, dtype=np.uint8)[None, :, None] * 30, (8, 1, 3)))  # bright right
    rows = datasets.Dataset.from_dict({"image": [ramp] * 8}, features=datasets.Features({"image": datasets.Image()}))
    loader = accelerator.prepare(make_image_dataloader(rows, 2, 8, random_flip=True, seed=0))
    state = checkpoints.TrainState()
    batches = data_loop.iterate_batches(accelerator, loader, state)
    seen = []
    for _ in range(8):  # 2 batches per rank and epoch: 4 epochs
        batch = next(batches)
        for index, image in zip(batch["indices"].tolist(), batch["pixel_values"]):
            seen.append([state.epoch, index, bool(image[0, 0, 0] > image[0, 0, -1])])
    Path(tmp, f"rank{accelerator.process_index}.json").write_text(json.dumps(seen))


def test_two_processes_mirror_each_epoch_anew(tmp_path):
    """With several processes the prepared loader forwards set_epoch to its sampler only; iterate_batches sets the
    dataset's epoch too, so the flips follow flip_decision(seed, epoch, index) instead of repeating epoch 0's."""
    code = ("from accelerate import debug_launcher; from tests.test_training_shared import _flip_epochs_worker; "
            f"debug_launcher(_flip_epochs_worker, args=({str(tmp_path)!r},), num_processes=2)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": TRAINING_PYTHONPATH, "OMP_NUM_THREADS": "1"})
    seen = [row for rank in (0, 1) for row in json.loads((tmp_path / f"rank{rank}.json").read_text())]
    assert {epoch for epoch, _, _ in seen} == {0, 1, 2, 3}
    assert all(flipped == flip_decision(0, epoch, index) for epoch, index, flipped in seen), seen
    flips_per_index = {}
    for _, index, flipped in seen:
        flips_per_index.setdefault(index, set()).add(flipped)
    assert any(len(flips) == 2 for flips in flips_per_index.values())  # an image mirrored in some epochs only


def test_shard_iterable_dataset_and_sync_batchnorm():
    stream = datasets.Dataset.from_dict({"i": list(range(10))}).to_iterable_dataset(num_shards=2)
    parts = [
        [row["i"] for row in data_loop.shard_iterable_dataset(stream, SimpleNamespace(num_processes=2, process_index=r))]
        for r in range(2)
    ]
    assert sorted(parts[0] + parts[1]) == list(range(10)) and not set(parts[0]) & set(parts[1]) and parts[0]
    single = SimpleNamespace(num_processes=1, process_index=0)
    assert data_loop.shard_iterable_dataset(stream, single) is stream

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    cpu2 = SimpleNamespace(num_processes=2, device=torch.device("cpu"))
    gpu2 = SimpleNamespace(num_processes=2, device=torch.device("cuda", 0))
    assert acceleration.convert_sync_batchnorm(model, single) is model
    with pytest.warns(UserWarning, match="not supported on the CPU"):
        assert acceleration.convert_sync_batchnorm(model, cpu2) is model  # SyncBatchNorm cannot run on the CPU
    converted = acceleration.convert_sync_batchnorm(model, gpu2)
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)


def test_bf16_accelerator_and_helpers(tmp_path):
    accelerator = acceleration.build_accelerator(run_args(tmp_path, "--mixed_precision", "bf16"))
    with accelerator.autocast():
        assert torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4)).dtype == torch.bfloat16
    assert data_loop.seed_step(1, 5, 0) == data_loop.seed_step(1, 5, 0) != data_loop.seed_step(1, 5, 1)
    data_loop.seed_step(1, 5, 0)
    a = torch.rand(3)
    data_loop.seed_step(1, 5, 0)
    assert torch.equal(a, torch.rand(3))
    layer = torch.nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    assert acceleration.grad_norm(layer.parameters()) == pytest.approx(np.sqrt(3.0))
    assert tracking.memory_stats(accelerator)["memory/peak_rss_mb"] > 10
    state = checkpoints.TrainState(step=4, images_seen=9, extra={"k": 1})
    restored = checkpoints.TrainState()
    restored.load_state_dict(state.state_dict())
    assert restored == state
    progress = tracking.Progress(accelerator, 10, checkpoints.TrainState(), images_per_step=8)
    progress.times.clear()
    progress.times.extend([(0.0, 0), (2.0, 4)])
    assert progress.images_per_second == 16.0
    progress.close()


def test_run_arguments_must_be_positive(tmp_path, capsys):
    for flag in ("--batch_size", "--gradient_accumulation_steps"):
        for value in ("0", "-2", "two"):
            with pytest.raises(SystemExit):
                run_args(tmp_path, flag, value)
            assert f"argument {flag}: " in capsys.readouterr().err
    args = run_args(tmp_path, "--batch_size", "3", "--gradient_accumulation_steps", "2")
    assert (args.batch_size, args.gradient_accumulation_steps) == (3, 2)


def test_throughput_leaves_out_the_first_step_and_excluded_work(tmp_path, monkeypatch):
    accelerator = acceleration.build_accelerator(run_args(tmp_path))
    clock = iter([0.0, 10.0, 11.0, 14.0, 15.0, 16.0, 17.0, 30.0, 40.0])
    monkeypatch.setattr(tracking.time, "perf_counter", lambda: next(clock))
    progress = tracking.Progress(accelerator, 10, checkpoints.TrainState(), images_per_step=4)  # t = 0
    state = checkpoints.TrainState(step=1)
    progress.update(state)  # t = 10: the end of the first (warm-up) step, not measured
    assert math.isnan(progress.training_images_per_second)
    with progress.excluded():  # t = 11 .. 14: a checkpoint save
        pass
    state.step = 2
    progress.update(state)  # t = 15: 5 s since the first step, 3 of them excluded
    state.step = 3
    progress.update(state)  # t = 16
    assert progress.training_images_per_second == pytest.approx(2 * 4 / 3.0)
    with progress.excluded():  # t = 17 .. 30: the final validation, after the last step: no effect
        pass
    assert progress.training_images_per_second == pytest.approx(2 * 4 / 3.0)
    progress.close()

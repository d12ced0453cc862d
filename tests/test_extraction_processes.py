"""`ghfeat extract` split between processes (`accelerate launch`, gloo on the CPU): the same output as one process,
per-process resume after a SIGKILL, streaming datasets split between processes, and the shares themselves."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from accelerate.test_utils import get_launch_command

from ghfeat_hf.cli import main
from ghfeat_hf.extraction import DatasetSource, dataset_source, file_sources, partial_path, read_extraction_metadata
from ghfeat_hf.extraction.sharded import rank_directory, recorded_process_count
from ghfeat_hf.extraction.sources import block_bounds

from .helpers import photo_crops, write_saved_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
BATCH = 8
CORRUPT = ["img_03.png", "img_08.png"]
IMAGES = 200
"""Files of the folder (two corrupt): six per process, three batches each."""


def launch_command(*arguments: str) -> list[str]:
    """`accelerate launch` of two CPU processes (this interpreter's accelerate, a port of this test run)."""
    launch = get_launch_command(multi_gpu=True, num_processes=2, main_process_port=29000 + (os.getpid() + 7) % 1000)
    return [sys.executable, "-m", "accelerate.commands.launch", *launch[2:], *arguments]


@pytest.fixture
def launch_env(monkeypatch) -> dict:
    env = {"ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, save_tiny_model):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """IMAGES files: PNG crops of real photos (RGB, L, RGBA, P) and two corrupt ones, in one folder."""
    root = tmp_path_factory.mktemp("photos")
    for index, image in enumerate(photo_crops(IMAGES, size=24)):
        image.save(root / f"img_{index:02d}.png")
    for name in CORRUPT:
        (root / name).write_bytes(b"not a png at all")
    return root


def extract_args(folder: Path, model_dir: Path, output: Path, *extra: str) -> list[str]:
    return ["extract", str(folder), "-o", str(output), "--model", str(model_dir), "--batch-size", str(BATCH),
            "--num-workers", "0", "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def single(folder, model_dir, tmp_path_factory) -> Path:
    """The one-process output the multi-process runs must reproduce."""
    output = tmp_path_factory.mktemp("single") / "features.parquet"
    assert main(extract_args(folder, model_dir, output, "--keep-codes")) == 0
    return output


def read_table(output: Path) -> pa.Table:
    """The rows of a Parquet output, one file or a split folder."""
    return pa.concat_tables([pq.read_table(path) for path in read_extraction_metadata(output).get("files", [output])])


def assert_same_output(output: Path, reference: Path) -> None:
    """Same ids in the same order (each once), same skip records, features allclose."""
    got, expected = read_table(output), read_table(reference)
    ids = got.column("id").to_pylist()
    assert ids == expected.column("id").to_pylist() and len(set(ids)) == len(ids)
    assert got.column_names == expected.column_names
    for column in got.column_names[1:]:
        np.testing.assert_allclose(np.stack(got.column(column).to_numpy(zero_copy_only=False)),
                                   np.stack(expected.column(column).to_numpy(zero_copy_only=False)), atol=1e-5, rtol=0)
    skipped = [read_extraction_metadata(path)["skipped"] for path in (output, reference)]
    assert [(record["id"], record["error"].split(":")[0]) for record in skipped[0]] == [
        (record["id"], record["error"].split(":")[0]) for record in skipped[1]]


@pytest.mark.slow
def test_two_processes_give_the_single_process_output(single, folder, model_dir, tmp_path, launch_env, capfd):
    """`ghfeat extract --num-processes 2`: two CPU processes through accelerate, one output like one process's."""
    output = tmp_path / "features.parquet"
    assert main(extract_args(folder, model_dir, output, "--keep-codes", "--num-processes", "2")) == 0
    out = capfd.readouterr().out
    assert out.count(f"wrote {IMAGES - len(CORRUPT)} rows") == 1  # printed by the main process only
    for index in (0, 1):
        assert f"process {index}: " in out and "MiB" in out
    assert not partial_path(output).exists()
    assert_same_output(output, single)
    assert read_extraction_metadata(output)["num_processes"] == 2
    table = pq.read_table(single)
    assert np.abs(np.stack(table.column("ghfeat").to_numpy(zero_copy_only=False))).mean() > 0.1  # not vacuous
    # The finished output resumes as it is, also with another process count.
    assert main(extract_args(folder, model_dir, output, "--keep-codes", "--resume")) == 0
    assert f"wrote {IMAGES - len(CORRUPT)} rows" in capfd.readouterr().out


KILLABLE = """
import os, sys, time
from pathlib import Path
from ghfeat_hf.extraction import extract_features
from ghfeat_hf.runtime import load_model

model_dir, folder, output, pids = sys.argv[1:]
Path(pids, os.environ["RANK"]).write_text(str(os.getpid()))
model, processor = load_model(model_dir)
extract_features(model, processor, folder, output, batch_size={batch}, device="cpu", keep_codes=True, num_workers=0,
                 progress=False, on_batch=lambda progress: time.sleep(0.4))
"""


def test_sigkill_of_one_process_then_resume(single, folder, model_dir, tmp_path, launch_env, capfd):
    """SIGKILL process 1 of a 2-process run; a one-process --resume is refused; `ghfeat extract --num-processes 2
    --resume` (through `accelerate launch`) finishes with the one-process output, no row twice."""
    output, pids = tmp_path / "features.parquet", tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "killable.py"
    script.write_text(textwrap.dedent(KILLABLE.format(batch=BATCH)))
    job = subprocess.Popen(launch_command(str(script), str(model_dir), str(folder), str(output), str(pids)),
                           env=launch_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress = rank_directory(partial_path(output), 1) / "progress.json"
    killed = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None:
            try:
                parts = json.loads(progress.read_text())["parts"]
            except (OSError, ValueError, KeyError):
                parts = []
            if parts:  # one batch of process 1 committed
                killed = int((pids / "1").read_text())
                os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.05)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert killed is not None, "process 1 ended before it could be killed: " + stderr[-2000:]
    assert job.returncode != 0 and not output.exists()
    assert recorded_process_count(partial_path(output)) == 2
    done = [json.loads((rank_directory(partial_path(output), index) / "progress.json").read_text())
            for index in (0, 1)]
    committed = sum(part["rows"] for state in done for part in state["parts"])
    assert 0 < committed < IMAGES - len(CORRUPT)

    assert main(extract_args(folder, model_dir, output, "--keep-codes", "--resume")) == 2
    assert "split between 2 process(es) and this one has 1" in capfd.readouterr().err

    assert main(extract_args(folder, model_dir, output, "--keep-codes", "--resume", "--num-processes", "2")) == 0
    out = capfd.readouterr().out
    assert f"wrote {IMAGES - len(CORRUPT)} rows to {output} ({committed} from the interrupted run)" in out
    assert "process 0: " in out and "process 1: " in out and "peak RSS" in out
    assert not partial_path(output).exists()
    assert_same_output(output, single)
    assert read_extraction_metadata(output)["num_processes"] == 2


STREAMING = """
import sys
import datasets
from ghfeat_hf.extraction import DatasetSource, extract_features
from ghfeat_hf.runtime import load_model

model_dir, data, out = sys.argv[1:]
model, processor = load_model(model_dir)
whole = datasets.load_from_disk(data)
for shards in (3, 1):  # 3 shards: contiguous files per process; 1 shard: one example out of two each
    source = DatasetSource(whole.to_iterable_dataset(num_shards=shards), description="stream")
    extract_features(model, processor, source, f"{out}/stream-{shards}.parquet", batch_size=2, device="cpu",
                     progress=False, max_rows_per_file=4 if shards == 3 else None)
"""


def test_streaming_dataset_split_between_two_processes(model_dir, tmp_path, launch_env):
    """A streaming dataset split between two processes (by files, into a split output, and by examples): every row
    once, in order."""
    data = write_saved_dataset(tmp_path / "data", photo_crops(9, size=24), corrupt=2)
    script = tmp_path / "streaming.py"
    script.write_text(textwrap.dedent(STREAMING))
    result = subprocess.run(launch_command(str(script), str(model_dir), str(data), str(tmp_path)), env=launch_env,
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from ghfeat_hf.extraction import extract_features
    from ghfeat_hf.runtime import load_model

    model, processor = load_model(model_dir)
    reference = tmp_path / "single.parquet"
    extract_features(model, processor, DatasetSource(datasets.load_from_disk(str(data)).to_iterable_dataset(),
                                                     description="stream"), reference, batch_size=2, progress=False)
    files = read_extraction_metadata(tmp_path / "stream-3.parquet")["files"]
    assert [pq.ParquetFile(path).metadata.num_rows for path in files] == [4, 4, 1]
    for shards in (3, 1):
        output = tmp_path / f"stream-{shards}.parquet"
        ids = read_table(output).column("id").to_pylist()
        assert ids == [str(index) for index in range(9)]  # every row once, in order; the corrupt rows skipped
        assert [record["id"] for record in read_extraction_metadata(output)["skipped"]] == ["9", "10"]
        assert_same_output(output, reference)


def test_shares_cover_the_source_once_in_order(folder, tmp_path):
    """Blocks of a file list and of a `Dataset`, files and examples of a stream (resumed mid-share too)."""
    assert [block_bounds(10, index, 3) for index in range(3)] == [(0, 4), (4, 7), (7, 10)]
    files = file_sources([str(folder)])
    shares = [files.shard(index, 3) for index in range(3)]
    assert [item_id for share in shares for item_id in share.ids] == files.ids
    assert [item.position for item in shares[1].items()] == list(range(len(shares[1].ids)))

    dataset = datasets.Dataset.from_dict({"image": [f"p{index}" for index in range(11)]})
    source = DatasetSource(dataset)
    parts = [source.shard(index, 2) for index in range(2)]
    assert [item.id for part in parts for item in part.items()] == [str(index) for index in range(11)]
    assert parts[1].load(0) == "p6"

    def payloads(part, start=0):
        return [item.payload for item in part.items(start)]

    by_files = DatasetSource(dataset.to_iterable_dataset(num_shards=3))
    blocks = [by_files.shard(index, 2) for index in range(2)]
    assert [block.split_mode for block in blocks] == ["blocks", "blocks"]
    assert payloads(blocks[0]) + payloads(blocks[1]) == [f"p{index}" for index in range(11)]
    assert payloads(blocks[1], 2) == payloads(blocks[1])[2:]

    by_examples = DatasetSource(dataset.to_iterable_dataset(num_shards=1))
    odd = by_examples.shard(1, 2)
    assert odd.split_mode == "examples" and payloads(odd) == [f"p{index}" for index in range(1, 11, 2)]
    assert payloads(odd, 2) == ["p5", "p7", "p9"]  # a resumed share skips its own rows, not the stream's

    streamed = dataset_source(str(write_saved_dataset(tmp_path / "d", photo_crops(3))), streaming=True)
    assert streamed.shard(0, 2).split_mode == "examples"

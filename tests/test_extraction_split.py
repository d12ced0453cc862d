"""`ghfeat extract --max-rows-per-file`: a Parquet output split into `<stem>-NNNNN-of-MMMMM.parquet` files in source
order (resume, overwrite, refusals), and the merge of partial runs with O(1) order checks."""

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ghfeat_hf.cli import main
from ghfeat_hf.errors import UsageError
from ghfeat_hf.extraction import extract_features, read_extraction_metadata
from ghfeat_hf.extraction.merge import RankRows, merged_rows, merged_skipped
from ghfeat_hf.extraction.storage import PartialRun, row_schema
from ghfeat_hf.runtime import load_model

from .helpers import photo_crops

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGES = 13


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, save_tiny_model):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for index, image in enumerate(photo_crops(IMAGES, size=24)):
        image.save(root / f"img_{index:02d}.png")
    (root / "img_05b.png").write_bytes(b"not a png")  # a skip record between rows
    return root


def args(folder, model_dir, output, *extra):
    return ["extract", str(folder), "-o", str(output), "--model", str(model_dir), "--batch-size", "3",
            "--device", "cpu", "--no-progress", *extra]


def test_split_output_in_order_loads_with_datasets(folder, model_dir, tmp_path, capsys):
    """13 rows in files of 5: three files (5, 5, 3) whose rows in name order are the one-file output's, loaded in
    order by `datasets`; resume of the finished folder, refusals, overwrite into one file and back."""
    single, split = tmp_path / "one.parquet", tmp_path / "features.parquet"
    assert main(args(folder, model_dir, single)) == 0
    assert main(args(folder, model_dir, split, "--max-rows-per-file", "5")) == 0
    assert f"wrote {IMAGES} rows to {split}" in capsys.readouterr().out
    names = sorted(path.name for path in split.iterdir())
    assert names == [f"features-0000{index}-of-00003.parquet" for index in range(3)]
    assert [pq.ParquetFile(split / name).metadata.num_rows for name in names] == [5, 5, 3]
    meta = read_extraction_metadata(split, verify=True)
    assert meta["num_rows"] == IMAGES and meta["files"] == [str(split / name) for name in names]
    assert [record["id"] for record in meta["skipped"]] == ["img_05b.png"]
    expected = pq.read_table(single)
    got = pa.concat_tables([pq.read_table(path) for path in meta["files"]])
    assert got.column("id").to_pylist() == expected.column("id").to_pylist() == [
        f"img_{index:02d}.png" for index in range(IMAGES)]
    np.testing.assert_allclose(np.stack(got.column("ghfeat").to_numpy(zero_copy_only=False)),
                               np.stack(expected.column("ghfeat").to_numpy(zero_copy_only=False)), atol=1e-6)
    loaded = datasets.load_dataset("parquet", data_files=str(split / "*.parquet"), split="train")
    assert loaded["id"] == expected.column("id").to_pylist()

    assert main(args(folder, model_dir, split, "--max-rows-per-file", "5", "--resume")) == 0
    assert f"wrote {IMAGES} rows" in capsys.readouterr().out
    assert main(args(folder, model_dir, split, "--max-rows-per-file", "5")) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args(folder, model_dir, split, "--max-rows-per-file", "4", "--resume")) == 2
    assert "max_rows_per_file: 5 then, 4 now" in capsys.readouterr().err
    assert main(args(folder, model_dir, split, "--overwrite")) == 0  # the folder becomes one file
    assert split.is_file() and read_extraction_metadata(split)["num_rows"] == IMAGES
    assert main(args(folder, model_dir, split, "--max-rows-per-file", "13", "--overwrite")) == 0
    assert [path.name for path in split.iterdir()] == ["features-00000-of-00001.parquet"]

    for output in ("f.npy", "f.safetensors", "f.arrow"):
        assert main(args(folder, model_dir, tmp_path / output, "--max-rows-per-file", "5")) == 2
        assert "splits Parquet outputs only" in capsys.readouterr().err

    (split / "features-00000-of-00001.parquet").rename(split / "features-00000-of-00002.parquet")
    with pytest.raises(UsageError, match="holds 1 of its 2 files"):
        read_extraction_metadata(split)
    other = tmp_path / "mine.parquet"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(args(folder, model_dir, other, "--max-rows-per-file", "5", "--overwrite")) == 2
    assert "is a folder" in capsys.readouterr().err and (other / "notes.txt").is_file()


def test_split_output_resumes_after_an_interruption(folder, model_dir, tmp_path):
    """A split run interrupted after two batches resumes into the same files as an uninterrupted one."""
    model, processor = load_model(model_dir)
    output = tmp_path / "features.parquet"
    batches = []

    def crash(progress):
        batches.append(progress)
        if len(batches) == 2:
            raise KeyboardInterrupt

    options = {"batch_size": 3, "device": "cpu", "progress": False, "max_rows_per_file": 4}
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, processor, folder, output, on_batch=crash, **options)
    assert not output.exists()
    result = extract_features(model, processor, folder, output, resume=True, **options)
    assert result.num_resumed == 6 and result.num_rows == IMAGES
    files = read_extraction_metadata(output)["files"]
    assert [pq.ParquetFile(path).metadata.num_rows for path in files] == [4, 4, 4, 1]
    ids = [item_id for path in files for item_id in pq.read_table(path).column("id").to_pylist()]
    assert ids == [f"img_{index:02d}.png" for index in range(IMAGES)]


def partial_run(directory, positions: list[list[int]], skipped: tuple[int, ...] = ()) -> PartialRun:
    """A partial run committing one batch of rows per list of positions (ids `p<position>`)."""
    schema = row_schema([2], [0], False, False, 2, False)
    run = PartialRun.start(directory, schema, {}, key="_position")
    for batch in positions:
        rows = {"id": [f"p{position}" for position in batch], "ghfeat": [[float(p), 0.0] for p in batch],
                "_position": batch, "_fingerprint": [None] * len(batch)}
        run.commit(pa.RecordBatch.from_pydict(rows, schema=run.schema), [])
    run.commit(None, [{"id": f"p{position}", "position": position, "error": "bad", "fingerprint": None}
                      for position in skipped])
    return run


def test_merge_streams_blocks_and_interleaved_shares_and_refuses_repeats(tmp_path):
    """Blocks come out whole in rank order, one-example-of-two shares interleave; chunks stay within
    `chunk_rows`; an item committed twice (within a run, across runs, or as a row and a skip record) is refused."""
    first = partial_run(tmp_path / "a", [[0, 1, 2], [4]], skipped=(3,))
    second = partial_run(tmp_path / "b", [[0, 1], [2, 3]])
    blocks = [RankRows(first, lambda local: local), RankRows(second, lambda local: local + 5)]
    chunks = list(merged_rows(blocks, ["id"], chunk_rows=3))
    assert [chunk.num_rows for chunk in chunks] == [3, 3, 2]
    assert [i for chunk in chunks for i in chunk.column("id").to_pylist()] == ["p0", "p1", "p2", "p4", "p0", "p1",
                                                                               "p2", "p3"]
    assert [record["id"] for record in merged_skipped(blocks, positional_ids=True)] == ["3"]
    interleaved = [RankRows(first, lambda local: local * 2), RankRows(second, lambda local: local * 2 + 1)]
    ids = [i for chunk in merged_rows(interleaved, ["id"], 100, positional_ids=True)
           for i in chunk.column("id").to_pylist()]
    assert ids == ["0", "1", "2", "3", "4", "5", "7", "8"]  # 6 is the skip record of `first`

    overlapping = [RankRows(first, lambda local: local), RankRows(second, lambda local: local + 4)]
    with pytest.raises(UsageError, match="position 4 is committed more than once"):
        list(merged_rows(overlapping, ["id"], 100))
    with pytest.raises(UsageError, match="position 3 is committed more than once"):
        list(merged_rows([RankRows(first, lambda local: local), RankRows(second, lambda local: local + 3)],
                         ["id"], 100))
    repeated = partial_run(tmp_path / "c", [[0, 1], [1, 2]])
    with pytest.raises(UsageError, match="position 1 is committed more than once"):
        list(merged_rows([RankRows(repeated, lambda local: local)], ["id"], 100))
    unordered = partial_run(tmp_path / "d", [[2, 3], [0, 1]])  # changed inputs extracted again at the end
    ids = [i for chunk in merged_rows([RankRows(unordered, lambda local: local)], ["id"], 3)
           for i in chunk.column("id").to_pylist()]
    assert ids == ["p0", "p1", "p2", "p3"]

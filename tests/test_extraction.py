"""`ghfeat extract` and `ghfeat_hf.extraction` on a real-photo folder with corrupt files, resumes and formats."""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import safetensors.numpy
import skimage.data
import torch

from ghfeat_hf import GHFeatImageProcessor, GHFeatModel
from ghfeat_hf.cli import main
from ghfeat_hf.errors import UsageError
from ghfeat_hf.extraction import (
    extract_features,
    partial_path,
    read_extraction_metadata,
    read_partial_progress,
    reconstruction_names,
)
from ghfeat_hf.runtime import load_model, model_fingerprint, parse_layers

from .conftest import tiny_ghfeat_config

BATCH = 16
CORRUPT = ["broken/empty.jpg", "broken/noise.png", "broken/truncated.jpg"]
GRAY, RGBA = "set_1/gray.png", "set_2/deep/rgba.png"


def photo_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` RGB crops (40-72 px) of scikit-image's bundled photos."""
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
              skimage.data.immunohistochemistry(), np.stack([skimage.data.camera()] * 3, axis=-1)]
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        size = int(rng.integers(40, 73))
        top, left = (int(rng.integers(0, photo.shape[axis] - size)) for axis in (0, 1))
        crops.append(np.ascontiguousarray(photo[top:top + size, left:left + size]))
    return crops


def build_folder(root: Path) -> Path:
    """200 image files in nested folders: 195 RGB PNG/JPEG crops, one grayscale PNG, one RGBA PNG and three
    corrupt files (an empty file, random bytes named .png, a truncated JPEG); plus a text file to ignore."""
    crops = photo_crops(197)
    for index, crop in enumerate(crops[:195]):
        folder = root / f"set_{index % 4}" / ("" if index % 3 else "deep")
        folder.mkdir(parents=True, exist_ok=True)
        image = PIL.Image.fromarray(crop)
        if index % 2:
            image.save(folder / f"img_{index:03d}.jpg", quality=90)
        else:
            image.save(folder / f"img_{index:03d}.png")
    PIL.Image.fromarray(crops[195].mean(axis=-1).astype(np.uint8), "L").save(root / GRAY)
    alpha = np.tile(np.linspace(40, 255, crops[196].shape[1]).astype(np.uint8), (crops[196].shape[0], 1))
    PIL.Image.fromarray(np.dstack([crops[196], alpha]), "RGBA").save(root / RGBA)
    (root / "broken").mkdir()
    (root / "broken/empty.jpg").write_bytes(b"")
    (root / "broken/noise.png").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    buffer = io.BytesIO()
    PIL.Image.fromarray(skimage.data.astronaut()[:256, :256]).save(buffer, format="JPEG", quality=95)
    (root / "broken/truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "notes.txt").write_text("not an image\n")
    assert sum(1 for path in root.rglob("*") if path.is_file() and path.suffix != ".txt") == 200
    return root


def expected_vectors(model_dir: Path, paths: list[Path]) -> np.ndarray:
    model = GHFeatModel.from_pretrained(model_dir).eval()
    processor = GHFeatImageProcessor.from_pretrained(model_dir)
    images = []
    for path in paths:
        with PIL.Image.open(path) as image:
            images.append(image.copy())
    with torch.inference_mode():
        return model(pixel_values=processor(images, return_tensors="pt")["pixel_values"]).pooler_output.numpy()


def read_rows(path: Path) -> dict:
    table = pq.read_table(path)
    return {"ids": table.column("id").to_pylist(),
            "ghfeat": np.stack(table.column("ghfeat").to_numpy(zero_copy_only=False)),
            "metadata": read_extraction_metadata(path)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, save_tiny_model):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def full_run(model_dir, folder, tmp_path_factory):
    """One uninterrupted CLI run over the 200-file folder (2 decoding workers), with codes and tiled arrays."""
    output = tmp_path_factory.mktemp("full") / "features.parquet"
    stdout = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(stdout):
        code = main(["extract", str(folder), "-o", str(output), "--model", str(model_dir), "--batch-size", str(BATCH),
                     "--num-workers", "2", "--keep-codes", "--keep-tiled", "--device", "cpu", "--no-progress"])
    assert code == 0
    return output, stdout.getvalue()


def test_folder_extraction_acceptance(full_run, folder, model_dir, tmp_path):
    output, stdout = full_run
    assert output.exists() and not partial_path(output).exists()
    rows = read_rows(output)
    assert len(rows["ids"]) == 197
    expected_ids = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                          if path.is_file() and path.suffix != ".txt" and path.relative_to(folder).as_posix()
                          not in CORRUPT)
    assert rows["ids"] == expected_ids  # sorted source order
    skipped = rows["metadata"]["skipped"]
    assert [record["id"] for record in skipped] == CORRUPT
    assert all(record["error"] for record in skipped)
    assert "truncated" in next(record["error"] for record in skipped if record["id"].endswith("truncated.jpg"))
    assert rows["metadata"]["layers"] == list(range(8))
    assert f"wrote 197 rows to {output}" in stdout
    for path in CORRUPT:
        assert f"  {path}: " in stdout

    # The output is a datasets-loadable Parquet file.
    loaded = datasets.load_dataset("parquet", data_files=str(output), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == 197 and loaded.column_names[:2] == ["id", "ghfeat"]
    table = loaded.with_format("numpy")[:]
    assert table["ghfeat"].shape == (197, 352) and table["tiled_codes"].shape == (197, 8, 64)
    assert [table[f"style_code_{layer:02d}"].shape[1] for layer in range(8)] == [64, 64, 64, 64, 32, 32, 16, 16]
    np.testing.assert_array_equal(np.concatenate([table[f"style_code_{layer:02d}"] for layer in range(8)], 1),
                                  table["ghfeat"])
    np.testing.assert_array_equal(table["tiled_codes"][:, 6, :16], table["style_code_06"])
    np.testing.assert_array_equal(table["tiled_codes"][:, 6, 16:32], table["style_code_06"])

    # Vectors equal model(pixel_values=processor(image)).pooler_output, grayscale and RGBA included.
    check = [GRAY, RGBA, expected_ids[0], expected_ids[100], expected_ids[-1]]
    reference = expected_vectors(model_dir, [folder / item for item in check])
    got = np.stack([table["ghfeat"][rows["ids"].index(item)] for item in check])
    assert np.abs(reference).mean() > 0.1  # the check is not vacuous
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)
    assert np.abs(table["ghfeat"][0] - table["ghfeat"][1]).max() > 0.1


def test_interrupt_then_resume_gives_the_same_rows(full_run, folder, model_dir, tmp_path, capsys):
    output = tmp_path / "features.parquet"
    model, processor = load_model(model_dir)

    def crash_after_three(progress):
        if progress.batches == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(model, processor, folder, output, batch_size=BATCH, num_workers=2, keep_codes=True,
                         keep_tiled=True, progress=False, on_batch=crash_after_three)
    assert not output.exists()  # nothing half-written: only the partial state
    assert not [path for path in output.parent.iterdir() if path.name.startswith(".")]
    state = read_partial_progress(output)
    # "broken/*" sorts first: the three corrupt files are in the first batch.
    assert state["rows"] == 3 * BATCH - 3 and len(state["skipped"]) == 3
    # A torn record batch at the end of the part (a kill in the middle of a write) is ignored on resume.
    with open(partial_path(output) / "part-00000.arrows", "ab") as handle:
        handle.write(b"\xff\xff\xff\xff" + os.urandom(500))

    assert main(["extract", str(folder), "-o", str(output), "--model", str(model_dir), "--no-progress",
                 "--keep-codes", "--keep-tiled"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["extract", str(folder), "-o", str(output), "--model", str(model_dir), "--batch-size", str(BATCH),
                 "--num-workers", "0", "--keep-codes", "--keep-tiled", "--resume", "--no-progress"]) == 0
    assert f"wrote 197 rows to {output} ({3 * BATCH - 3} from the interrupted run)" in capsys.readouterr().out
    assert not partial_path(output).exists()
    assert pq.read_table(output).equals(pq.read_table(full_run[0]))
    assert read_extraction_metadata(output)["skipped"] == read_extraction_metadata(full_run[0])["skipped"]

    # Resuming a finished run with the same settings returns it as it is; other settings are refused.
    same = dict(batch_size=BATCH, keep_codes=True, keep_tiled=True, progress=False)
    result = extract_features(model, processor, folder, output, resume=True, **same)
    assert result.num_rows == result.num_resumed == 197 and [item.id for item in result.skipped] == CORRUPT
    assert read_extraction_metadata(output)["settings"]["model"] == model_fingerprint(model)
    for other, setting in (({"layers": "coarse"}, "layers"), ({"keep_codes": False}, "keep_codes"),
                           ({"batch_size": 2 * BATCH}, "batch_size"), ({"dtype": "bf16"}, "dtype")):
        with pytest.raises(UsageError, match=f"finished run .* other settings \\({setting}: "):
            extract_features(model, processor, folder, output, resume=True, **{**same, **other})
    with pytest.raises(UsageError, match="source: "):
        extract_features(model, processor, folder / "set_1", output, resume=True, **same)


def test_killed_process_resumes(full_run, folder, model_dir, tmp_path):
    """SIGKILL a real `extract` process after two committed batches, then --resume."""
    output = tmp_path / "features.parquet"
    script = (
        "import sys, time\n"
        "from ghfeat_hf.extraction import extract_features\nfrom ghfeat_hf.runtime import load_model\n"
        "model, processor = load_model(sys.argv[1])\n"
        f"extract_features(model, processor, sys.argv[2], sys.argv[3], batch_size={BATCH}, keep_codes=True,\n"
        "                 keep_tiled=True, progress=False, on_batch=lambda progress: time.sleep(0.5))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(model_dir), str(folder), str(output)],
                               cwd=Path(__file__).resolve().parents[1], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            state = read_partial_progress(output)
            if state and state["rows"] >= 2 * BATCH - 3:
                break
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -9, "the process ended before it could be killed"
    assert not output.exists() and partial_path(output).exists()
    model, processor = load_model(model_dir)
    result = extract_features(model, processor, folder, output, batch_size=BATCH, keep_codes=True, keep_tiled=True,
                              resume=True, progress=False)
    assert result.num_resumed >= 2 * BATCH - 3 and result.num_rows == 197
    assert pq.read_table(output).equals(pq.read_table(full_run[0]))


def test_resume_refuses_other_settings(folder, model_dir, tmp_path):
    output = tmp_path / "features.parquet"
    model, processor = load_model(model_dir)

    def crash(progress):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        extract_features(model, processor, folder, output, batch_size=BATCH, progress=False, on_batch=crash)
    with pytest.raises(UsageError, match="layers"):
        extract_features(model, processor, folder, output, layers="coarse", resume=True, progress=False)
    # another batch size would change the last bits of the rows (kernels round per batch shape)
    with pytest.raises(UsageError, match=f"batch_size: {BATCH} then, 64 now"):
        extract_features(model, processor, folder, output, batch_size=64, resume=True, progress=False)
    with pytest.raises(UsageError, match=r"source: \{'description': 'folder "):
        extract_features(model, processor, folder / "set_0", output, batch_size=BATCH, resume=True, progress=False)
    assert extract_features(model, processor, folder, output, overwrite=True, batch_size=64,
                            progress=False).num_rows == 197


def test_list_source_layers_and_reconstructions(full_run, folder, model_dir, tmp_path):
    full = read_rows(full_run[0])
    chosen = [full["ids"][index] for index in (5, 17, 60, 120, 196)]
    list_file = tmp_path / "images.txt"
    list_file.write_text("# a comment\n" + "\n".join(os.path.relpath(folder / item, tmp_path) for item in chosen)
                         + "\nmissing/nowhere.png\n\n")
    output = tmp_path / "coarse.parquet"
    assert main(["extract", str(list_file), "-o", str(output), "--model", str(model_dir), "--layers", "coarse",
                 "--keep-codes", "--keep-tiled", "--reconstructions", str(tmp_path / "recon"), "--num-workers", "0",
                 "--no-progress"]) == 0
    table = pq.read_table(output)
    meta = read_extraction_metadata(output)
    assert meta["layers"] == [0, 1] and meta["style_dims"] == [64, 64]
    assert [record["id"] for record in meta["skipped"]] == ["missing/nowhere.png"]
    assert "FileNotFoundError" in meta["skipped"][0]["error"]
    assert table.column_names == ["id", "ghfeat", "style_code_00", "style_code_01", "tiled_codes", "reconstruction"]
    assert table.schema.field("ghfeat").type.list_size == 128
    assert table.schema.field("tiled_codes").type.list_size == 2
    ids = table.column("id").to_pylist()
    assert ids == [os.path.relpath(folder / item, tmp_path) for item in chosen]  # list order, ids as written
    vectors = np.stack(table.column("ghfeat").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(vectors, full["ghfeat"][[5, 17, 60, 120, 196], :128], atol=1e-5, rtol=0)

    # Reconstructions: one PNG per row, named after the id, equal to postprocess(decode(encode(x))).
    names = table.column("reconstruction").to_pylist()
    assert names == [reconstruction_names([item])[item] for item in ids]
    assert all(name.endswith(".png") and not name.startswith("..") for name in names)
    model = GHFeatModel.from_pretrained(model_dir).eval()
    processor = GHFeatImageProcessor.from_pretrained(model_dir)
    with PIL.Image.open(folder / chosen[2]) as image:
        pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        reference = np.asarray(processor.postprocess(model.reconstruct(pixel_values))[0], dtype=np.int16)
    with PIL.Image.open(tmp_path / "recon" / names[2]) as saved:
        assert saved.size == (32, 32) and saved.mode == "RGB"
        assert np.abs(np.asarray(saved, dtype=np.int16) - reference).max() <= 1


def test_npy_safetensors_and_arrow_outputs(full_run, folder, model_dir, tmp_path):
    full = read_rows(full_run[0])
    model, processor = load_model(model_dir)
    pattern = str(folder / "set_0" / "**" / "*.png")
    results = {}
    for suffix in ("npy", "safetensors", "arrow"):
        results[suffix] = extract_features(model, processor, pattern, tmp_path / f"out.{suffix}", batch_size=BATCH,
                                           keep_codes=suffix != "npy", progress=False)
    expected_ids = sorted(path.relative_to(folder).as_posix() for path in (folder / "set_0").rglob("*.png"))
    rows = [full["ids"].index(item) for item in expected_ids]
    assert results["npy"].num_rows == len(expected_ids) > 10

    matrix = np.load(tmp_path / "out.npy")
    sidecar = json.loads((tmp_path / "out.npy.json").read_text())
    assert [Path(item).relative_to(folder).as_posix() for item in sidecar["ids"]] == expected_ids
    assert sidecar["skipped"] == [] and sidecar["layers"] == list(range(8))
    np.testing.assert_allclose(matrix, full["ghfeat"][rows], atol=1e-5, rtol=0)

    tensors = safetensors.numpy.load_file(tmp_path / "out.safetensors")
    meta = read_extraction_metadata(tmp_path / "out.safetensors")
    assert meta["ids"] == sidecar["ids"] and meta["num_rows"] == len(expected_ids)
    np.testing.assert_array_equal(tensors["ghfeat"], matrix)
    assert tensors["style_code_07"].shape == (len(expected_ids), 16)
    np.testing.assert_array_equal(tensors["style_code_07"], matrix[:, -16:])

    arrow = datasets.load_dataset("arrow", data_files=str(tmp_path / "out.arrow"), split="train",
                                  cache_dir=str(tmp_path / "hf")).with_format("numpy")[:]
    np.testing.assert_array_equal(arrow["ghfeat"], matrix)
    assert read_extraction_metadata(tmp_path / "out.arrow")["num_rows"] == len(expected_ids)


def test_datasets_sources_map_style_and_streaming(model_dir, tmp_path):
    crops = photo_crops(10, seed=3)
    records = [{"bytes": _png_bytes(crop), "path": None} for crop in crops]
    records[4] = {"bytes": b"definitely not an image", "path": None}
    names = [f"row-{index}" for index in range(10)]
    dataset = datasets.Dataset.from_dict(
        {"picture": records, "name": names},
        features=datasets.Features({"picture": datasets.Image(), "name": datasets.Value("string")}),
    )
    dataset.save_to_disk(tmp_path / "ds")
    common = ["--model", str(model_dir), "--dataset", str(tmp_path / "ds"), "--image-column", "picture",
              "--batch-size", "3", "--no-progress"]
    assert main(["extract", "-o", str(tmp_path / "map.parquet"), "--id-column", "name", "--num-workers", "2",
                 *common]) == 0
    mapped = read_rows(tmp_path / "map.parquet")
    assert mapped["ids"] == [name for name in names if name != "row-4"]
    assert [record["id"] for record in mapped["metadata"]["skipped"]] == ["row-4"]
    model = GHFeatModel.from_pretrained(model_dir).eval()
    processor = GHFeatImageProcessor.from_pretrained(model_dir)
    with torch.inference_mode():
        reference = model(pixel_values=processor([crops[0], crops[9]], return_tensors="pt")["pixel_values"])
    np.testing.assert_allclose(mapped["ghfeat"][[0, -1]], reference.pooler_output.numpy(), atol=1e-5, rtol=0)

    # Streaming (decoded in threads), interrupted after two batches and resumed: same rows, ids = positions.
    model, processor = load_model(model_dir)
    source_kwargs = dict(batch_size=3, num_workers=2, progress=False)
    from ghfeat_hf.extraction import dataset_source

    def stream():
        return dataset_source(str(tmp_path / "ds"), image_column="picture", streaming=True)

    def crash(progress):
        if progress.batches == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(model, processor, stream(), tmp_path / "stream.parquet", on_batch=crash, **source_kwargs)
    assert read_partial_progress(tmp_path / "stream.parquet")["rows"] == 5
    result = extract_features(model, processor, stream(), tmp_path / "stream.parquet", resume=True, **source_kwargs)
    assert result.num_resumed == 5 and result.num_rows == 9
    streamed = read_rows(tmp_path / "stream.parquet")
    assert streamed["ids"] == [str(index) for index in range(10) if index != 4]
    assert [record["id"] for record in streamed["metadata"]["skipped"]] == ["4"]
    np.testing.assert_array_equal(streamed["ghfeat"], mapped["ghfeat"])


def _save_dataset(path: Path, crops: list[np.ndarray], names: list[str] | None = None) -> Path:
    """A `save_to_disk` dataset of PNG-encoded crops (column `image`), with a `name` column when given."""
    columns = {"image": [{"bytes": _png_bytes(crop), "path": None} for crop in crops]}
    features = {"image": datasets.Image()}
    if names is not None:
        columns["name"], features["name"] = names, datasets.Value("string")
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).save_to_disk(path)
    return path


def test_resume_refuses_another_dataset(model_dir, tmp_path):
    """Ids "0".."N" of a dataset without --id-column are the same for every dataset: a resume with another
    dataset (map-style or streaming), or with the same folder re-saved with other rows, is refused."""
    from ghfeat_hf.extraction import dataset_source

    crops = photo_crops(12, seed=7)
    first, second = _save_dataset(tmp_path / "a", crops[:6]), _save_dataset(tmp_path / "b", crops[6:])
    model, processor = load_model(model_dir)

    def crash(progress):
        raise KeyboardInterrupt

    for streaming in (False, True):
        output = tmp_path / f"streaming-{streaming}.parquet"
        with pytest.raises(KeyboardInterrupt):
            extract_features(model, processor, dataset_source(str(first), streaming=streaming), output,
                             batch_size=2, progress=False, on_batch=crash)
        with pytest.raises(UsageError, match=f"source: .*{second.name}"):
            extract_features(model, processor, dataset_source(str(second), streaming=streaming), output,
                             batch_size=2, resume=True, progress=False)
    _save_dataset(first, crops[6:])  # the same folder and description, other rows: another fingerprint
    for streaming in (False, True):
        with pytest.raises(UsageError, match="'fingerprint': "):
            extract_features(model, processor, dataset_source(str(first), streaming=streaming),
                             tmp_path / f"streaming-{streaming}.parquet", batch_size=2, resume=True, progress=False)
    output = tmp_path / "streaming-True.parquet"
    assert extract_features(model, processor, dataset_source(str(first), streaming=True), output, batch_size=2,
                            overwrite=True, progress=False).num_rows == 6
    assert read_rows(output)["metadata"]["settings"]["source"]["fingerprint"]


def test_streaming_reconstruction_names_are_unique(model_dir, tmp_path):
    """Streaming ids `x.jpg` and `x.png` in different batches (and sessions) get distinct PNGs, each its own
    image's reconstruction."""
    from ghfeat_hf.extraction import dataset_source

    crops = photo_crops(4, seed=9)
    names = ["x.jpg", "x.png", "y.png", "x.png.png"]
    path = _save_dataset(tmp_path / "ds", crops, names)
    model, processor = load_model(model_dir)
    output, recon = tmp_path / "stream.parquet", tmp_path / "recon"
    kwargs = dict(batch_size=1, reconstructions_dir=recon, progress=False)

    def stream():
        return dataset_source(str(path), id_column="name", streaming=True)

    def crash(progress):
        if progress.batches == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(model, processor, stream(), output, on_batch=crash, **kwargs)
    assert extract_features(model, processor, stream(), output, resume=True, **kwargs).num_resumed == 2
    table = pq.read_table(output)
    assert table.column("id").to_pylist() == names
    files = table.column("reconstruction").to_pylist()
    assert files == ["x.png", "x.png.png", "y.png", "x.png.png.png"]
    assert sorted(path.name for path in recon.iterdir()) == sorted(files)
    with torch.inference_mode():
        references = processor.postprocess(model.reconstruct(processor(crops, return_tensors="pt")["pixel_values"]))
    for name, reference in zip(files, references):
        with PIL.Image.open(recon / name) as saved:
            assert np.abs(np.asarray(saved, np.int16) - np.asarray(reference, np.int16)).max() <= 1, name


def test_npy_sidecar_follows_its_matrix(model_dir, tmp_path, monkeypatch):
    """The matrix is written before its sidecar: a failed --overwrite leaves the old pair intact, and a sidecar
    that does not describe its matrix is refused."""
    roots = []
    for name, crops in (("old", photo_crops(3, seed=1)), ("new", photo_crops(5, seed=2))):
        roots.append(tmp_path / name)
        roots[-1].mkdir()
        for index, crop in enumerate(crops):
            PIL.Image.fromarray(crop).save(roots[-1] / f"{index}.png")
    model, processor = load_model(model_dir)
    output = tmp_path / "features.npy"
    extract_features(model, processor, roots[0], output, progress=False)
    before = np.load(output)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(np.lib.format, "open_memmap", disk_full)
        with pytest.raises(OSError, match="No space left"):
            extract_features(model, processor, roots[1], output, overwrite=True, progress=False)
    np.testing.assert_array_equal(np.load(output), before)
    meta = read_extraction_metadata(output)
    assert meta["num_rows"] == 3 and meta["source"] == f"folder {roots[0]}"

    sidecar = Path(f"{output}.json")
    stale = json.loads(sidecar.read_text())
    extract_features(model, processor, roots[1], output, overwrite=True, progress=False)
    assert read_extraction_metadata(output)["num_rows"] == 5
    sidecar.write_text(json.dumps(stale))  # e.g. a matrix replaced by hand
    with pytest.raises(UsageError, match="describes 3 rows but .* holds 5"):
        read_extraction_metadata(output)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_parse_layers():
    config = tiny_ghfeat_config()  # 8 layers: coarse 0-1, middle 2-3, fine 4-7
    assert parse_layers(None, config) == list(range(8))
    assert parse_layers("0-2,7", config) == [0, 1, 2, 7]
    assert parse_layers("coarse", config) == [0, 1]
    assert parse_layers("middle", config) == [2, 3]
    assert parse_layers("coarse|fine", config) == [0, 1, 4, 5, 6, 7]
    assert parse_layers("fine,0", config) == [0, 4, 5, 6, 7]
    assert parse_layers([3, 1, 3], config) == [1, 3]
    for bad in ("0-3,8", "3-1", "top", "", "1-x"):
        with pytest.raises(UsageError):
            parse_layers(bad, config)


def test_reconstruction_names_and_errors(folder, model_dir, tmp_path):
    names = reconstruction_names(["a/x.jpg", "a/y.jpg", "a/y.png", "../up/z.webp", "/abs/w.png", "17"])
    assert names == {"a/x.jpg": "a/x.png", "a/y.jpg": "a/y.jpg.png", "a/y.png": "a/y.png.png",
                     "../up/z.webp": "__/up/z.png", "/abs/w.png": "abs/w.png", "17": "17.png"}
    model, processor = load_model(model_dir)
    with pytest.raises(UsageError, match="unknown output extension"):
        extract_features(model, processor, folder, tmp_path / "out.csv", progress=False)
    with pytest.raises(UsageError, match="compact matrix"):
        extract_features(model, processor, folder, tmp_path / "out.npy", keep_codes=True, progress=False)
    with pytest.raises(UsageError, match="no images found"):
        extract_features(model, processor, tmp_path, tmp_path / "out.parquet", progress=False)
    (tmp_path / "exists.parquet").write_bytes(b"")
    with pytest.raises(UsageError, match="--overwrite"):
        extract_features(model, processor, folder, tmp_path / "exists.parquet", progress=False)


def test_resume_after_the_source_changed(model_dir, tmp_path, monkeypatch):
    """Files added before resuming are extracted and the output stays in sorted order (written in 1-row chunks);
    files that disappeared make --resume refuse."""
    from ghfeat_hf import extraction

    root = tmp_path / "photos"
    root.mkdir()
    crops = photo_crops(7, seed=5)
    for index, crop in enumerate(crops[:6]):
        PIL.Image.fromarray(crop).save(root / f"m_{index}.png")
    model, processor = load_model(model_dir)
    output = tmp_path / "features.parquet"

    def crash(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(model, processor, root, output, batch_size=2, progress=False, on_batch=crash)
    PIL.Image.fromarray(crops[6]).save(root / "a_new.png")  # sorts before the rows already done
    monkeypatch.setattr(extraction.writers, "_TARGET_CHUNK_BYTES", 1)
    result = extract_features(model, processor, root, output, batch_size=2, resume=True, progress=False)
    assert result.num_resumed == 2 and result.num_rows == 7
    rows = read_rows(output)
    assert rows["ids"] == ["a_new.png"] + [f"m_{index}.png" for index in range(6)]
    assert pq.ParquetFile(output).metadata.num_row_groups == 7
    reference = expected_vectors(model_dir, [root / name for name in rows["ids"]])
    np.testing.assert_allclose(rows["ghfeat"], reference, atol=1e-5, rtol=0)

    output = tmp_path / "again.parquet"
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, processor, root, output, batch_size=2, progress=False, on_batch=crash)
    (root / "a_new.png").unlink()
    with pytest.raises(UsageError, match="no longer in the source"):
        extract_features(model, processor, root, output, batch_size=2, resume=True, progress=False)


def test_streaming_decode_helpers_keep_order_and_stop_early():
    """The streaming path: `_threaded_map` yields in input order with a bounded window and stops its threads when
    closed early; `decoded_chunks` without workers batches in the main thread."""
    import threading

    from ghfeat_hf.extraction.sources import ImageSource, SourceItem, _batched, _threaded_map, decoded_chunks

    assert list(_batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(_batched([], 3)) == []
    consumed = []

    def slow_square(value):
        time.sleep(0.002 * (value % 3))
        return value * value

    def numbers():
        for value in range(100):
            consumed.append(value)
            yield value

    assert list(_threaded_map(slow_square, range(20), num_workers=3, window=4)) == [v * v for v in range(20)]
    mapped = _threaded_map(slow_square, numbers(), num_workers=2, window=4)
    assert [next(mapped) for _ in range(3)] == [0, 1, 4]
    assert len(consumed) <= 3 + 4  # bounded read-ahead
    mapped.close()
    assert not any(thread.name.startswith("ghfeat-decode") for thread in threading.enumerate())

    class Stream(ImageSource):
        finite = False

        def items(self, start=0):
            for position in range(start, 5):
                yield SourceItem(position, str(position), b"not an image" if position == 1 else _png_bytes(
                    np.full((8, 8, 3), 10 * position, np.uint8)))

    processor = GHFeatImageProcessor(size={"height": 8, "width": 8})
    chunks = list(decoded_chunks(Stream(), Stream().items(), processor, batch_size=2, num_workers=0))
    assert [[item.id for item, _, _ in chunk] for chunk in chunks] == [["0", "1"], ["2", "3"], ["4"]]
    assert chunks[0][1][1] is None and chunks[0][1][2].startswith("UnidentifiedImageError")
    assert chunks[2][0][1].shape == (3, 8, 8)


def test_all_unreadable_gives_empty_outputs(model_dir, tmp_path):
    """Every item skipped: each format still writes a valid, empty file with the skip records in its metadata."""
    root = tmp_path / "bad"
    root.mkdir()
    for name in ("a.png", "b.jpg"):
        (root / name).write_bytes(b"garbage")
    model, processor = load_model(model_dir)
    for suffix in ("parquet", "arrow", "npy", "safetensors"):
        output = tmp_path / f"empty.{suffix}"
        result = extract_features(model, processor, root, output, batch_size=4, progress=False)
        assert result.num_rows == 0 and [item.id for item in result.skipped] == ["a.png", "b.jpg"]
        meta = read_extraction_metadata(output)
        assert meta["num_rows"] == 0 and [record["id"] for record in meta["skipped"]] == ["a.png", "b.jpg"]
        assert not partial_path(output).exists()
    assert np.load(tmp_path / "empty.npy").shape == (0, sum(model.config.style_dims))


def test_package_layout():
    """The public API is importable from the package, and every module keeps to the project's size rule."""
    from ghfeat_hf import extraction

    for name in extraction.__all__:
        assert getattr(extraction, name) is not None, name
    for module in Path(extraction.__file__).parent.glob("*.py"):
        assert len(module.read_text().splitlines()) < 600, module.name


def test_dataset_source_reads_fashion_mnist_locally():
    """`ghfeat extract --dataset fashion-mnist` uses the local package, like the trainers and `ghfeat evaluate`."""
    from ghfeat_hf.data import find_fashion_mnist
    from ghfeat_hf.errors import UsageError
    from ghfeat_hf.extraction import dataset_source

    try:
        find_fashion_mnist()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)")
    source = dataset_source("fashion-mnist", split="test")
    assert source.dataset.num_rows == 10000 and "fashion-mnist" in source.description
    with pytest.raises(UsageError, match="not 'validation'"):
        dataset_source("fashion-mnist", split="validation")

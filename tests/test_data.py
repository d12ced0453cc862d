"""ghfeat_hf.data: dataset loading, the robust collate path (processor parity, skipping, flips), Fashion-MNIST."""

import gzip
import io
import time
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from ghfeat_hf import GHFeatImageProcessor
from ghfeat_hf import data as gdata
from ghfeat_hf.image_io import open_image
from tests.helpers import photo_crops, write_saved_dataset

# ----------------------------------------------------------------------------------------------------------------
# Real images bundled with scikit-image


def write_imagefolder(root: Path, images, classes=("cats", "dogs")) -> Path:
    for index, image in enumerate(images):
        folder = root / "train" / classes[index % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def photos():
    return photo_crops()


# ----------------------------------------------------------------------------------------------------------------
# load_image_dataset


def test_load_imagefolder(tmp_path, photos):
    root = write_imagefolder(tmp_path / "folder", photos)
    dataset = gdata.load_image_dataset(root)
    assert isinstance(dataset, datasets.Dataset)
    assert len(dataset) == len(photos)
    assert dataset.features["label"].names == ["cats", "dogs"]
    assert sorted(dataset["label"][:]) == sorted(i % 2 for i in range(len(photos)))
    first = dataset[0]["image"]
    assert isinstance(first, PIL.Image.Image) and first.size[0] >= 40
    streamed = gdata.load_image_dataset(root, streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert sum(1 for _ in streamed) == len(photos)


def test_load_saved_dataset_and_dict(tmp_path, photos):
    path = write_saved_dataset(tmp_path / "saved", photos)
    dataset = gdata.load_image_dataset(path)
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == len(photos)
    assert np.array_equal(np.asarray(dataset[3]["image"]), np.asarray(photos[3]))
    streamed = gdata.load_image_dataset(path, streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [row["label"] for row in streamed] == list(range(len(photos)))

    both = datasets.DatasetDict({"validation": dataset.select(range(3)), "test": dataset.select(range(5))})
    both.save_to_disk(str(tmp_path / "dict"))
    assert len(gdata.load_image_dataset(tmp_path / "dict", split="test")) == 5
    with pytest.raises(ValueError, match="choose one with split"):
        gdata.load_image_dataset(tmp_path / "dict")
    with pytest.raises(ValueError, match="available splits"):
        gdata.load_image_dataset(tmp_path / "dict", split="train")
    with pytest.raises(ValueError, match="Column 'pixels' not found"):
        gdata.load_image_dataset(path, image_column="pixels")
    # a single saved split is the data whatever split is asked for, unless it is named as another split
    assert len(gdata.load_image_dataset(path, split="test")) == len(photos)
    datasets.Dataset.from_dict(dataset.select(range(5)).to_dict(), features=dataset.features,
                               split="test").save_to_disk(str(tmp_path / "named"))
    assert len(gdata.load_image_dataset(tmp_path / "named", split="test")) == 5
    with pytest.raises(ValueError, match="holds only the split 'test', not 'train'"):
        gdata.load_image_dataset(tmp_path / "named", split="train")
    assert len(gdata.load_training_images(path, max_samples=4)) == 4
    assert sum(1 for _ in gdata.load_training_images(path, streaming=True, max_samples=5)) == 5


def test_path_column_is_cast_to_images(tmp_path, photos):
    files = []
    for index, image in enumerate(photos[:3]):
        files.append(str(tmp_path / f"{index}.png"))
        image.save(files[-1])
    datasets.Dataset.from_dict({"file": files}).save_to_disk(str(tmp_path / "paths"))
    dataset = gdata.load_image_dataset(tmp_path / "paths", image_column="file")
    assert isinstance(dataset.features["file"], datasets.Image)
    assert dataset[1]["file"].size == photos[1].size


# ----------------------------------------------------------------------------------------------------------------
# Collate path


def test_collator_matches_processor(photos):
    processor = GHFeatImageProcessor(size={"height": 24, "width": 24})
    sixteen = PIL.Image.fromarray((np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 97).astype(np.uint16))
    images = [*photos[:5], sixteen]
    rows = [{"image": image, "__index__": i} for i, image in enumerate(images)]
    batch = gdata.ImageCollator(resolution=24)(rows)
    expected = processor(images, return_tensors="pt")["pixel_values"]
    assert batch["pixel_values"].shape == (6, 3, 24, 24)
    assert torch.equal(batch["pixel_values"], expected)
    assert int(batch["num_skipped"]) == 0 and batch["indices"].tolist() == list(range(6))

    gray = gdata.ImageCollator(resolution=24, num_channels=1)(rows)["pixel_values"]
    gray_processor = GHFeatImageProcessor(size={"height": 24, "width": 24}, num_channels=1)
    assert gray.shape == (6, 1, 24, 24)
    assert torch.equal(gray, gray_processor(images, return_tensors="pt")["pixel_values"])
    # the luminance of the RGB batch, up to PIL's 8-bit rounding of "L"
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close(gray, (expected * weights).sum(1, keepdim=True), rtol=0, atol=2 / 127.5)
    with pytest.raises(ValueError, match="1-channel"):
        gdata.ImageCollator(processor=gray_processor)
    # a grayscale photo (replicated channels) keeps its value exactly
    torch.testing.assert_close(gray[1, 0], expected[1, 0])


def test_collator_reads_arrays_and_tensors_like_the_processor(photos):
    """Arrays and tensors the processor accepts (float [0, 1] HWC, uint8 CHW, tensors) are decoded by it, never
    skipped."""
    rgb = np.asarray(photos[0].convert("RGB"))
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    inputs = [rgb.astype(np.float32) / 255, chw, torch.from_numpy(chw), torch.from_numpy(rgb / 255.0), rgb]
    assert all(open_image(value) is value for value in inputs)
    batch = gdata.ImageCollator(resolution=24)([{"image": value, "__index__": i} for i, value in enumerate(inputs)])
    assert int(batch["num_skipped"]) == 0 and batch["indices"].tolist() == list(range(5))
    processor = GHFeatImageProcessor(size={"height": 24, "width": 24})
    expected = torch.cat([processor(value, return_tensors="pt")["pixel_values"] for value in inputs])
    assert torch.equal(batch["pixel_values"], expected)
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][-1], atol=0.02, rtol=0)
    bad = gdata.ImageCollator(resolution=24, fill_skipped=False)([{"image": np.full((8, 8, 3), 2.0)}])
    assert int(bad["num_skipped"]) == 1  # out of [0, 1]: the processor refuses it, the collator skips it


def test_flip_is_deterministic_per_sample(photos):
    decisions = [gdata.flip_decision(0, 0, i) for i in range(2000)]
    assert 0.45 < np.mean(decisions) < 0.55
    assert decisions == [gdata.flip_decision(0, 0, i) for i in range(2000)]
    assert decisions != [gdata.flip_decision(0, 1, i) for i in range(2000)]  # a new epoch reshuffles flips
    rows = [{"image": image, "__index__": i, "__epoch__": 3} for i, image in enumerate(photos)]
    plain = gdata.ImageCollator(resolution=16)(rows)["pixel_values"]
    flipped = gdata.ImageCollator(resolution=16, random_flip=True, seed=7)(rows)["pixel_values"]
    for i in range(len(rows)):
        expected = plain[i].flip(-1) if gdata.flip_decision(7, 3, i) else plain[i]
        assert torch.equal(flipped[i], expected)
    assert any(gdata.flip_decision(7, 3, i) for i in range(len(rows)))


def test_unreadable_samples_are_skipped_and_counted(tmp_path, photos):
    root = write_imagefolder(tmp_path / "folder", photos[:10])
    (root / "train" / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # bad PNG
    good = io.BytesIO()
    photos[0].save(good, format="JPEG")
    (root / "train" / "dogs" / "truncated.jpg").write_bytes(good.getvalue()[:200])  # truncated JPEG
    (root / "train" / "dogs" / "empty.png").write_bytes(b"")
    dataset = gdata.load_image_dataset(root)
    assert len(dataset) == 13
    loader = gdata.make_image_dataloader(dataset, batch_size=4, resolution=16, num_workers=2, shuffle=True,
                                         drop_last=False, seed=1, extra_columns=("label",))
    batches = list(loader)
    skipped = sum(int(b["num_skipped"]) for b in batches)
    assert skipped == 3
    assert [b["pixel_values"].shape[0] for b in batches] == [4, 4, 4, 1]  # skipped ones are refilled
    readable = {i for i, path in enumerate(dataset.cast_column("image", datasets.Image(decode=False))["image"][:])
                if not Path(path["path"]).name.startswith(("broken", "truncated", "empty"))}
    assert len(readable) == 10
    assert all(int(i) in readable for b in batches for i in b["indices"])
    assert all(b["label"].shape[0] == b["pixel_values"].shape[0] for b in batches)

    # A batch with nothing readable, in a fresh worker: an empty batch, never an exception.
    collator = gdata.ImageCollator(resolution=16)
    empty = collator([{"image": {"bytes": b"xx", "path": None}}] * 2)
    assert empty["pixel_values"].shape == (0, 3, 16, 16) and int(empty["num_skipped"]) == 2
    # ... while a worker that has seen good images refills from them.
    collator([{"image": photos[0], "__index__": 5}])
    refilled = collator([{"image": {"bytes": b"xx", "path": None}}] * 2)
    assert refilled["pixel_values"].shape[0] == 2 and refilled["indices"].tolist() == [5, 5]


def test_saved_dataset_with_garbage_bytes_and_streaming(tmp_path, photos):
    path = write_saved_dataset(tmp_path / "saved", photos[:6], corrupt=2)
    loader = gdata.make_image_dataloader(gdata.load_image_dataset(path), batch_size=8, resolution=16, shuffle=False)
    (batch,) = list(loader)
    assert int(batch["num_skipped"]) == 2 and batch["pixel_values"].shape == (8, 3, 16, 16)
    streamed = gdata.load_image_dataset(path, streaming=True)
    stream_batches = list(gdata.make_image_dataloader(streamed, batch_size=4, resolution=16, drop_last=False))
    assert sum(int(b["num_skipped"]) for b in stream_batches) == 2
    assert sum(b["pixel_values"].shape[0] for b in stream_batches) == 8


# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST


def _direct_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist_root() -> Path:
    try:
        return gdata.find_fashion_mnist()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed: run `apt-get install -y dataset-fashion-mnist` to test it.")


def test_fashion_mnist(tmp_path):
    root = _fashion_mnist_root()
    start = time.perf_counter()
    dataset = gdata.load_fashion_mnist(pad_to=32, cache_dir=tmp_path)
    build = time.perf_counter() - start
    assert build < 60
    assert {k: len(v) for k, v in dataset.items()} == {"train": 60000, "test": 10000}
    assert dataset["train"].features["label"].names == gdata.FASHION_MNIST_CLASSES
    assert len(gdata.FASHION_MNIST_CLASSES) == 10 and gdata.FASHION_MNIST_CLASSES[9] == "Ankle boot"
    raw_images = _direct_idx(root / "train-images-idx3-ubyte.gz")
    raw_labels = _direct_idx(root / "train-labels-idx1-ubyte.gz")
    test_images = _direct_idx(root / "t10k-images-idx3-ubyte.gz")
    for split, images, indices in (("train", raw_images, [0, 1, 12345, 59999]), ("test", test_images, [0, 9999])):
        for index in indices:
            image = dataset[split][index]["image"]
            assert image.mode == "L" and image.size == (32, 32)
            pixels = np.asarray(image)
            assert np.array_equal(pixels[2:30, 2:30], images[index])  # centred
            assert not pixels[:2].any() and not pixels[30:].any() and not pixels[:, :2].any() and not pixels[:, 30:].any()
    assert dataset["train"][:100]["label"] == raw_labels[:100].tolist()
    assert np.bincount(np.asarray(dataset["test"]["label"][:])).tolist() == [1000] * 10

    start = time.perf_counter()
    again = gdata.load_fashion_mnist(pad_to=32, cache_dir=tmp_path)  # memory-mapped from the cache
    assert time.perf_counter() - start < 5
    assert np.array_equal(np.asarray(again["train"][777]["image"]), np.asarray(dataset["train"][777]["image"]))
    images, labels = gdata.fashion_mnist_arrays("test", pad_to=None)
    assert images.shape == (10000, 28, 28) and np.array_equal(images, test_images)


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("GHFEAT_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(gdata, "FASHION_MNIST_DIRS", [str(tmp_path / "nowhere")])
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        gdata.load_fashion_mnist(cache_dir=tmp_path)


def test_read_idx_checks_magic(tmp_path):
    good = tmp_path / "labels-idx1-ubyte"
    good.write_bytes(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([4, 5, 6]))
    assert gdata.read_idx(good, expected_ndim=1).tolist() == [4, 5, 6]
    with pytest.raises(ValueError, match="expected a 3-D IDX file"):
        gdata.read_idx(good, expected_ndim=3)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(bytes([1, 2, 8, 1]) + (3).to_bytes(4, "big") + bytes([4, 5, 6]))
    with pytest.raises(ValueError, match="not an IDX file"):
        gdata.read_idx(bad)
    short = tmp_path / "short-idx.gz"
    short.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes([4, 5, 6])))
    with pytest.raises(ValueError, match="do not match the shape"):
        gdata.read_idx(short)


def test_png_encoder_round_trips():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 7, 9), dtype=np.uint8)
    for png, image in zip(gdata.encode_gray_pngs(images), images):
        decoded = PIL.Image.open(io.BytesIO(png))
        assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), image)
    assert gdata.pad_images(images, 12).shape == (5, 12, 12)
    with pytest.raises(ValueError, match="must be >="):
        gdata.pad_images(images, 8)


def test_fashion_mnist_name_goes_to_the_local_package(monkeypatch, photos):
    calls = []
    fake = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"label": [1, 2, 3]}),
                                 "test": datasets.Dataset.from_dict({"label": [4, 5]})})
    monkeypatch.setattr(gdata, "load_fashion_mnist", lambda pad_to: calls.append(pad_to) or fake)
    assert gdata.load_training_images("fashion-mnist", split="test")["label"][:] == [4, 5]
    assert len(gdata.load_training_images("Fashion_MNIST", max_samples=2)) == 2
    assert calls == [32, 32]

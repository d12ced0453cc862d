"""Feature extractors, baselines, layer groups and the cached `datasets.map` extraction."""

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from ghfeat_hf import GHFeatModel
from ghfeat_hf.errors import UsageError
from ghfeat_hf.evaluation import (
    ExtractionOptions,
    GHFeatExtractor,
    PixelExtractor,
    TimmExtractor,
    build_baselines,
    cached_feature_table,
)
from ghfeat_hf.evaluation.features import feature_views, numpy_columns
from ghfeat_hf.runtime import parse_layer_groups
from tests.evaluation_data import MODEL_SEED, augmented_copies, lfw_faces, tiny_processor


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model(seed=MODEL_SEED), tiny_processor()


@pytest.fixture(scope="module")
def photos():
    return augmented_copies(num_photos=3, copies=4)


def test_ghfeat_extractor_is_the_compact_vector_and_selects_layers(tiny, photos):
    model, processor = tiny
    images = list(photos.select(range(5))["image"])
    extractor = GHFeatExtractor(model, processor)
    features = extractor(images)
    with torch.no_grad():
        output = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
    torch.testing.assert_close(torch.from_numpy(features), output.pooler_output, rtol=0, atol=0)
    coarse = parse_layer_groups(["coarse"], model.config)[0]
    assert coarse.layers == tuple(model.config.head_layers[0])
    expected = torch.cat([output.style_codes[layer] for layer in coarse.layers], dim=1)
    selected = features[:, extractor.columns(coarse.layers)]
    torch.testing.assert_close(torch.from_numpy(selected), expected, rtol=0, atol=0)

    fine_only = GHFeatExtractor(model, processor, layers="fine")
    assert fine_only(images).shape == (5, sum(model.config.style_dims[layer] for layer in model.config.head_layers[2]))
    with pytest.raises(UsageError, match="were not extracted"):
        feature_views([fine_only], ["coarse"])


def test_another_ghfeat_model_as_a_baseline(tiny, save_tiny_model, tmp_path):
    """`ghfeat:[LABEL=]MODEL`: a saved GH-Feat model (e.g. a previous version), with its own weights and processor."""
    model, processor = tiny
    other_dir = save_tiny_model(tmp_path / "ghfeat-v1")
    labelled, unlabelled = build_baselines([f"ghfeat:v1={other_dir}", f"ghfeat:{other_dir}"], model, processor)
    assert (labelled.name, unlabelled.name) == ("GH-Feat v1", "GH-Feat ghfeat-v1")
    assert str(other_dir) in labelled.description
    saved = GHFeatModel.from_pretrained(other_dir)
    for name, parameter in saved.state_dict().items():
        assert torch.equal(labelled.model.state_dict()[name], parameter), name
    assert labelled.fingerprint() == unlabelled.fingerprint() != GHFeatExtractor(model, processor).fingerprint()
    with pytest.raises(UsageError):
        build_baselines([f"ghfeat:{tmp_path / 'missing'}"], model, processor)


def test_layer_groups(tiny):
    config = tiny[0].config
    groups = parse_layer_groups(["all", "middle", "0-1,5", "all"], config)
    assert [(g.name, g.layers) for g in groups] == [("all", tuple(range(8))), ("middle", tuple(config.head_layers[1])),
                                                    ("0-1,5", (0, 1, 5))]
    assert [g.name for g in parse_layer_groups(None, config)] == ["all"]
    with pytest.raises(UsageError, match="invalid --layers item 'mid'"):
        parse_layer_groups(["mid"], config)
    with pytest.raises(UsageError, match="out of range"):
        parse_layer_groups(["9"], config)


def test_pixel_extractor_values():
    gray = PIL.Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    color = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 6, 3), dtype=np.uint8))
    features = PixelExtractor(4, "L")([gray, color])
    assert features.shape == (2, 16) and features.dtype == np.float32
    expected = np.asarray(color.convert("L").resize((4, 4), PIL.Image.Resampling.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(features[1], expected.ravel())
    assert PixelExtractor(4, "RGB")([gray]).shape == (1, 48)


def test_build_baselines(tiny):
    model, processor = tiny
    gray = PIL.Image.new("L", (25, 25))
    pixels, small, random_init = build_baselines(["pixels", "pixels:16", "random-init"], model, processor,
                                                 sample_image=gray)
    assert (pixels.size, pixels.mode, small.size) == (32, "L", 16)
    assert isinstance(random_init, GHFeatExtractor) and random_init.name == "GH-Feat random init"
    encoder = dict(random_init.model.encoder.named_parameters())
    assert any(not torch.equal(p, encoder[n]) for n, p in model.encoder.named_parameters())
    for name, parameter in model.synthesis.state_dict().items():  # decodes with the same generator
        assert torch.equal(random_init.model.synthesis.state_dict()[name], parameter)
    again = build_baselines(["random-init"], model, processor)[0]
    assert again.fingerprint() == random_init.fingerprint() != GHFeatExtractor(model, processor).fingerprint()
    assert build_baselines(["pixels"], model, processor, sample_image=PIL.Image.new("RGB", (4, 4)))[0].mode == "RGB"
    for spec, message in (("sift", "unknown baseline 'sift'"), ("timm:", "unknown baseline"),
                          ("pixels:big", "invalid pixel baseline"), ("random-init:3", "unknown baseline"),
                          ("timm:no_such_net@random", "unknown timm model"),
                          ("timm:test_resnet", r"timm:test_resnet@random"),  # offline: no pretrained weights
                          ("timm:test_resnet@/no/such/file.safetensors", "does not exist")):
        with pytest.raises(UsageError, match=message):
            build_baselines([spec], model, processor)


def test_timm_extractor_loads_a_weights_file(tmp_path, photos):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    reference = timm.create_model("test_resnet", num_classes=0).eval()
    path = tmp_path / "test_resnet.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in reference.state_dict().items()}, path)
    extractor = build_baselines([f"timm:test_resnet@{path}"], None, None)[0]
    assert isinstance(extractor, TimmExtractor) and extractor.name == "timm test_resnet (test_resnet.safetensors)"
    images = list(photos.select(range(3))["image"])
    batch = torch.stack([extractor.transform(image.convert("RGB")) for image in images])
    assert batch.shape[-1] == reference.pretrained_cfg["input_size"][-1]  # the model's own data configuration
    with torch.no_grad():
        expected = reference(batch).numpy()
    np.testing.assert_allclose(extractor(images), expected, rtol=1e-5, atol=1e-6)
    assert extractor.fingerprint() != TimmExtractor("test_resnet", "random").fingerprint()


def _disk_dataset(tmp_path, dataset):
    dataset.save_to_disk(tmp_path / "data")
    return datasets.load_from_disk(tmp_path / "data")


def test_extraction_is_cached_once_per_model_and_dataset(tiny, tmp_path, monkeypatch):
    model, processor = tiny
    faces = _disk_dataset(tmp_path, lfw_faces().select(range(40)))
    options = ExtractionOptions(batch_size=16, cache_dir=tmp_path / "cache", progress=False)
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda pixels: calls.append(len(pixels)) or encode(pixels))
    first = cached_feature_table(faces, GHFeatExtractor(model, processor), options=options)
    assert not first.cache_hit and sum(calls) == 40 and first.features.shape == (40, sum(model.config.style_dims))
    np.testing.assert_array_equal(first.image_sizes, np.full((40, 2), 25))

    # a second run, as in a new process: the model reloaded from disk, a fresh extractor and dataset object
    model.save_pretrained(tmp_path / "model")
    reloaded = GHFeatModel.from_pretrained(tmp_path / "model")
    monkeypatch.setattr(reloaded, "encode", lambda pixels: calls.append(len(pixels)) or encode(pixels))
    second = cached_feature_table(datasets.load_from_disk(tmp_path / "data"), GHFeatExtractor(reloaded, processor),
                              options=options)
    assert second.cache_hit and sum(calls) == 40
    np.testing.assert_array_equal(second.features, first.features)
    datasets.disable_caching()  # datasets' own switch does not turn the feature cache off
    try:
        third = cached_feature_table(faces, GHFeatExtractor(reloaded, processor), options=options)
    finally:
        datasets.enable_caching()
    assert third.cache_hit and sum(calls) == 40
    # a hit means nothing was recomputed: a map that ignores the existing file is reported as a miss
    map_ = datasets.Dataset.map
    with monkeypatch.context() as patch:
        patch.setattr(datasets.Dataset, "map", lambda self, *args, **kwargs: map_(
            self, *args, **{**kwargs, "load_from_cache_file": False}))
        recomputed = cached_feature_table(faces, GHFeatExtractor(reloaded, processor), options=options)
    assert not recomputed.cache_hit and sum(calls) == 80

    other_data = cached_feature_table(faces.select(range(20)), GHFeatExtractor(reloaded, processor), options=options)
    assert not other_data.cache_hit and sum(calls) == 100
    uncached = cached_feature_table(faces, PixelExtractor(8), options=ExtractionOptions(use_cache=False, progress=False))
    assert not uncached.cache_hit and uncached.features.shape == (40, 192)
    assert len(list((tmp_path / "cache").glob("features-*.arrow"))) == 2


class _Recording(PixelExtractor):
    """8x8 grayscale pixels that keeps every feature row it computes."""

    def __init__(self):
        super().__init__(8, "L")
        self.rows: list[np.ndarray] = []

    def __call__(self, images):
        features = super().__call__(images)
        self.rows += list(features)
        return features


class _RankState(SimpleNamespace):
    """accelerate's PartialState for one rank (a thread) of a simulated multi-process run: `wait_for_everyone`
    checks that the rank's `extractor` has computed exactly the rows `expected` (its shard, or none when cached),
    then waits for the other ranks at `barrier`."""

    def wait_for_everyone(self):
        if not np.array_equal(np.reshape(self.extractor.rows, (-1, 64)), self.expected):
            self.barrier.abort()  # so that the other ranks stop waiting
            raise AssertionError(f"rank {self.process_index} computed {len(self.extractor.rows)} rows before the "
                                 f"barrier, not its {len(self.expected)}")
        self.barrier.wait(timeout=60)


def test_multi_process_extraction_shares_shards(tmp_path):
    faces = lfw_faces().select(range(30))
    single = cached_feature_table(faces, PixelExtractor(8, "L"), options=ExtractionOptions(use_cache=False, progress=False))
    cache = tmp_path / "cache"

    def run_ranks(cached: bool):
        """Both ranks at once, each in a thread; returns their feature tables and extractors."""
        barrier = threading.Barrier(2)

        def rank(index: int):
            extractor = _Recording()
            expected = single.features[15 * index:15 * (index + 1)][:0 if cached else None]
            state = _RankState(num_processes=2, process_index=index, is_main_process=index == 0, barrier=barrier,
                               extractor=extractor, expected=expected)
            options = ExtractionOptions(batch_size=8, cache_dir=cache, progress=False, process_state=state)
            return cached_feature_table(faces, extractor, options=options), extractor

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(rank, (0, 1)))

    for cached in (False, True):
        for table, extractor in run_ranks(cached):
            np.testing.assert_array_equal(table.features, single.features)  # both shards, read back in order
            assert len(extractor.rows) == (0 if cached else 15)  # nothing computed after the barrier
            assert table.cache_hit == cached
    assert sorted(path.name.rsplit("-", 1)[1] for path in cache.glob("features-*.arrow")) == ["0of2.arrow",
                                                                                              "1of2.arrow"]
    assert ExtractionOptions(process_state=_RankState(num_processes=2, process_index=1,
                                                      is_main_process=False)).is_main_process is False


def test_numpy_columns_refuses_lists_of_different_lengths():
    rows = {"flat": [[1, 2, 3, 4], [5, 6]], "nested": [[[1, 2], [3, 4]], [[5, 6], [7]]],
            "missing": [[1.0, 2.0], None], "even": [[1, 2], [3, 4]]}
    data = datasets.Dataset.from_dict(rows)
    np.testing.assert_array_equal(numpy_columns(data, ["even"])["even"], [[1, 2], [3, 4]])
    for column, found in (("flat", "2 to 4"), ("nested", "1 to 2"), ("missing", "2 to 2 and 1 missing")):
        with pytest.raises(UsageError, match=f"column '{column}' must hold lists of one length in every row; found "
                                             f"lengths {found}"):
            numpy_columns(data, [column])


def test_unreadable_image_is_a_usage_error(tmp_path):
    good = augmented_copies(num_photos=1, copies=2).cast_column("image", datasets.Image(decode=False))
    rows = good.to_dict()
    rows["image"][1] = {"bytes": b"not an image", "path": None}
    broken = datasets.Dataset.from_dict(rows, features=good.features)
    with pytest.raises(UsageError, match="cannot read the image of row 1"):
        cached_feature_table(broken, PixelExtractor(8), options=ExtractionOptions(cache_dir=tmp_path, progress=False))
    with pytest.raises(UsageError, match="no image column 'picture'"):
        cached_feature_table(broken, PixelExtractor(8), image_column="picture", options=ExtractionOptions(progress=False))

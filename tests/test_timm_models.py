"""timm entry points: registration, every weight-loading route, features_only, heads, intermediates.

A tiny [`GHFeatModel`] is saved with ``save_pretrained`` and the timm keys are merged into its ``config.json``
(what the converter's ``save_ghfeat_directory`` does); every timm route must reproduce its outputs to 1e-6.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import timm.optim
import torch
from timm.models import get_pretrained_cfg, save_for_hf

from ghfeat_hf import GHFeatConfig, GHFeatImageProcessor, GHFeatModel
from ghfeat_hf.configuration_ghfeat import ghfeat_config_dict
from ghfeat_hf.timm_models import GHFeatTimm, checkpoint_filter_fn, pyramid_level_indices, weights_ghfeat_config
from tests.conftest import tiny_ghfeat_config
from tests.helpers import assert_checkpointing_recomputes_exactly

ATOL = 1e-6
OFFICIAL_ENCODER_PARAMS = {50: 151_766_976, 18: 124_871_872}
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A saved tiny GHFeatModel directory (transformers config.json), its inputs and its outputs."""
    torch.manual_seed(0)
    model = GHFeatModel(tiny_ghfeat_config()).eval()
    for module in model.modules():  # non-trivial BN statistics so eval mode is really tested
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    directory = tmp_path_factory.mktemp("ghfeat-tiny")
    model.save_pretrained(directory)
    GHFeatImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        output = model(pixel_values=pixels)
    return dict(directory=directory, file=str(directory / "model.safetensors"), pixels=pixels, output=output,
                config=model.config, config_dict=ghfeat_config_dict(model.config))


def fake_hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """Lay out ``source`` as a cached Hub snapshot: ``models--org--name/{refs/main, snapshots/<sha>/...}``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(source, repo / "snapshots" / COMMIT, dirs_exist_ok=True)
    return cache


def assert_matches_reference(model, reference):
    model.eval()
    with torch.no_grad():
        close(model.forward_features(reference["pixels"]), reference["output"].last_hidden_state)
        close(model(reference["pixels"]), reference["output"].pooler_output)


def test_registration_and_pretrained_cfgs():
    assert {"ghfeat_resnet50_256", "ghfeat_resnet18_256", "ghfeat_resnet18_32"} <= set(timm.list_models("ghfeat*"))
    assert timm.list_pretrained("ghfeat*") == [  # ghfeat_resnet18_256 has no released weights
        "ghfeat_resnet18_32.fmnist32", "ghfeat_resnet50_256.ffhq", "ghfeat_resnet50_256.lsun_bedroom", "ghfeat_resnet50_256.lsun_tower"]
    cfg = get_pretrained_cfg("ghfeat_resnet50_256.ffhq").to_dict()
    assert cfg["hf_hub_id"] == "ghfeat-hf/ghfeat-ffhq-256" and cfg["hf_hub_filename"] == "model.safetensors"
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert (cfg["input_size"], cfg["interpolation"], cfg["crop_pct"]) == ((3, 256, 256), "bilinear", 1.0)
    assert (cfg["first_conv"], cfg["classifier"], cfg["num_classes"], cfg["license"]) == (
        "encoder.stem.conv", "head", 0, "other")


@pytest.mark.parametrize("depth", [50, 18])
def test_official_architecture_on_meta(depth):
    with torch.device("meta"):
        model = timm.create_model(f"ghfeat_resnet{depth}_256")
        features = timm.create_model(f"ghfeat_resnet{depth}_256", features_only=True)
        pixels = torch.empty(2, 3, 256, 256)
        tiled, pooled, levels = model.forward_features(pixels), model(pixels), features(pixels)
    assert isinstance(model, GHFeatTimm)
    assert sum(p.numel() for p in model.encoder.parameters()) == OFFICIAL_ENCODER_PARAMS[depth]
    assert (model.num_features, model.head_hidden_size, model.num_classes) == (1024, 9984, 0)
    assert [info["num_chs"] for info in model.feature_info] == [512, 512, 512]
    assert [info["reduction"] for info in model.feature_info] == [16, 32, 64]
    assert features.feature_info.channels() == [512] * 3 and features.feature_info.reduction() == [16, 32, 64]
    assert tiled.shape == (2, 14, 1024) and pooled.shape == (2, 9984)
    assert [tuple(level.shape) for level in levels] == [(2, 512, 16, 16), (2, 512, 8, 8), (2, 512, 4, 4)]
    data_cfg = timm.data.resolve_model_data_config(model)
    assert data_cfg["input_size"] == (3, 256, 256) and data_cfg["mean"] == (0.5, 0.5, 0.5)
    # the official GHFeatModel checkpoint layout loads with no renaming: same names and shapes once filtered
    with torch.device("meta"):
        full = GHFeatModel(GHFeatConfig(depth=depth)).state_dict()
    ours = {key: value.shape for key, value in model.state_dict().items()}
    assert {key: value.shape for key, value in checkpoint_filter_fn(full, model).items()} == ours
    assert set(full) - set(ours) == {key for key in full if key.startswith("synthesis.")}
    with torch.device("meta"):  # a partial ghfeat_config updates the preset
        narrow = timm.create_model(f"ghfeat_resnet{depth}_256", ghfeat_config=dict(base_width=32, image_size=128))
    assert (narrow.config.depth, narrow.config.base_width, narrow.pretrained_cfg["input_size"]) == (
        depth, 32, (3, 128, 128))


def test_random_init_follows_ghfeat_model():
    config = tiny_ghfeat_config()
    model = timm.create_model("ghfeat_resnet18_256", ghfeat_config=config.to_dict())
    weight = model.encoder.heads[0].linear.weight
    assert abs(weight.std().item() - config.initializer_range) < 0.1 * config.initializer_range and model.encoder.heads[0].linear.bias.abs().max() == 0
    assert torch.equal(model.encoder.stem.norm.weight, torch.ones(8))


@pytest.mark.parametrize("route", ["pretrained_cfg_overlay", "checkpoint_path", "directory_config", "load_state_dict"])
def test_weight_routes_match_ghfeat_model(reference, route):
    config = reference["config_dict"]
    if route == "pretrained_cfg_overlay":
        model = timm.create_model("ghfeat_resnet18_256", pretrained=True, ghfeat_config=config,
                                  pretrained_cfg_overlay=dict(file=reference["file"]))
    elif route == "checkpoint_path":  # strict load of the full GHFeatModel file (synthesis.* dropped)
        model = timm.create_model("ghfeat_resnet18_256", ghfeat_config=config, checkpoint_path=reference["file"])
    elif route == "directory_config":  # no ghfeat_config: the architecture is the weights' config.json
        model = timm.create_model("ghfeat_resnet50_256", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=reference["file"]))
    else:
        model = GHFeatTimm(reference["config"])
        model.load_state_dict(safetensors.torch.load_file(reference["file"]))
    assert ghfeat_config_dict(model.config) == reference["config_dict"]
    assert_matches_reference(model, reference)


@pytest.mark.parametrize("name", ["ghfeat_resnet50_256", "ghfeat_resnet50_256.ffhq"])
def test_hub_routes_from_offline_cache(reference, tmp_path, monkeypatch, name):
    """An ``hf_hub_id`` overlay reads the repo's weights and its config.json (the architecture); a registered tag
    reads its own ``hf_hub_id`` repo."""
    repo_id = "ghfeat-hf/ghfeat-ffhq-256" if name.endswith(".ffhq") else "ghfeat-hf/ghfeat-tiny"
    cache = fake_hub_cache(tmp_path / "hub", repo_id, reference["directory"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    kwargs = (dict(ghfeat_config=reference["config_dict"]) if name.endswith(".ffhq")
              else dict(pretrained_cfg_overlay=dict(hf_hub_id=repo_id)))
    assert_matches_reference(timm.create_model(name, pretrained=True, **kwargs), reference)
    explicit = timm.create_model(name, pretrained=True, cache_dir=cache, features_only=True, **kwargs).eval()
    with torch.no_grad():
        for level, expected in zip(explicit(reference["pixels"]), reference["output"].pyramid_features):
            close(level, expected)


def test_hf_hub_in_a_fresh_offline_process(reference, tmp_path):
    """What a user does: HF_HOME holds the cache, HF_HUB_OFFLINE=1 before any HF import, ``import ghfeat_hf``."""
    fake_hub_cache(tmp_path / "hf" / "hub", "ghfeat-hf/ghfeat-tiny", reference["directory"])
    torch.save(reference["pixels"], tmp_path / "pixels.pt")
    script = textwrap.dedent(f"""
        import torch, timm, ghfeat_hf
        pixels = torch.load({str(tmp_path / 'pixels.pt')!r})
        model = timm.create_model("ghfeat_resnet50_256", pretrained=True,
                                  pretrained_cfg_overlay=dict(hf_hub_id="ghfeat-hf/ghfeat-tiny")).eval()
        with torch.no_grad():
            torch.save([model.forward_features(pixels), model(pixels)], {str(tmp_path / 'out.pt')!r})
    """)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT),
           "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, capture_output=True)
    tiled, pooled = torch.load(tmp_path / "out.pt")
    close(tiled, reference["output"].last_hidden_state)
    close(pooled, reference["output"].pooler_output)


@pytest.mark.parametrize("out_indices", [(0, 1, 2), (1,), (0, 2), (-1,)])
def test_features_only_returns_pyramid_levels(reference, out_indices):
    model = timm.create_model("ghfeat_resnet18_256", pretrained=True, features_only=True, out_indices=out_indices,
                              ghfeat_config=reference["config_dict"],
                              pretrained_cfg_overlay=dict(file=reference["file"])).eval()
    levels = [index % 3 for index in out_indices]
    assert model.feature_info.channels() == [16] * len(levels)
    assert model.feature_info.reduction() == [[4, 8, 16][level] for level in levels]
    assert not any(key.startswith(("model.encoder.heads", "model.encoder.alignment")) for key in model.state_dict())
    with torch.no_grad():
        features = model(reference["pixels"])
    assert len(features) == len(levels)
    for feature, level in zip(features, levels):
        close(feature, reference["output"].pyramid_features[level])


def test_features_only_from_a_directory_and_checkpoint_into_pruned_model(reference):
    model = timm.create_model("ghfeat_resnet18_256", pretrained=True, features_only=True,
                              pretrained_cfg_overlay=dict(file=reference["file"])).eval()
    assert model.feature_info.reduction() == [4, 8, 16]
    pruned = GHFeatTimm(reference["config"]).eval()
    pruned.prune_intermediate_layers((0, 1, 2))
    pruned.load_state_dict(safetensors.torch.load_file(reference["file"]))  # strict: heads tensors dropped
    with torch.no_grad():
        for ours, theirs, expected in zip(model(reference["pixels"]),
                                          pruned.forward_intermediates(reference["pixels"], intermediates_only=True),
                                          reference["output"].pyramid_features):
            close(ours, expected)
            close(theirs, expected)
    with pytest.raises(RuntimeError, match="pruned"):
        pruned.forward_features(reference["pixels"])


@pytest.fixture
def loaded(reference):
    return timm.create_model("ghfeat_resnet18_256", pretrained=True, ghfeat_config=reference["config_dict"],
                             pretrained_cfg_overlay=dict(file=reference["file"])).eval()


def test_forward_head_pools(loaded, reference):
    pixels, output = reference["pixels"], reference["output"]
    dims = reference["config"].style_dims
    assert (loaded.num_features, loaded.head_hidden_size) == (max(dims), sum(dims)) == (64, 352)
    with torch.no_grad():
        tiled = loaded.forward_features(pixels)
        close(loaded.forward_head(tiled), output.pooler_output)
        close(loaded.forward_head(tiled, pre_logits=True), output.pooler_output)
        loaded.reset_classifier(0, "avg")
        assert loaded.num_features == loaded.head_hidden_size == max(dims) == 64
        close(loaded(pixels), output.last_hidden_state.mean(dim=1))
        loaded.reset_classifier(0, "")
        close(loaded(pixels), output.last_hidden_state)
    with pytest.raises(ValueError, match="global_pool"):
        loaded.reset_classifier(0, "max")


def test_classifier_fine_tuning(loaded, reference):
    pixels = reference["pixels"]
    assert isinstance(loaded.get_classifier(), torch.nn.Identity) and loaded.get_classifier(name_only=True) == "head"
    loaded.reset_classifier(10)
    assert loaded.get_classifier().in_features == 352 and loaded(pixels).shape == (3, 10)
    close(loaded.forward_head(loaded.forward_features(pixels), pre_logits=True), reference["output"].pooler_output)
    loaded.train()
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.01)
    labels, losses = torch.tensor([1, 4, 7]), []
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(loaded(pixels), labels)
        loss.backward()
        assert loaded.head.weight.grad.abs().sum() > 0 and loaded.encoder.stem.conv.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]

    fresh = timm.create_model("ghfeat_resnet18_256", pretrained=True, num_classes=5,
                              ghfeat_config=reference["config_dict"],
                              pretrained_cfg_overlay=dict(file=reference["file"])).eval()
    with torch.no_grad():
        assert fresh(pixels).shape == (3, 5)
        close(fresh.forward_features(pixels), reference["output"].last_hidden_state)


def test_forward_intermediates(loaded, reference):
    pixels, pyramid = reference["pixels"], reference["output"].pyramid_features
    with torch.no_grad():
        final, levels = loaded.forward_intermediates(pixels)
        close(final, reference["output"].last_hidden_state)
        assert len(levels) == 3
        for level, expected in zip(levels, pyramid):
            close(level, expected)
        last_two = loaded.forward_intermediates(pixels, indices=2, intermediates_only=True)
        assert [tuple(level.shape[1:]) for level in last_two] == [(16, 4, 4), (16, 2, 2)]
        close(last_two[0], pyramid[1])
        close(last_two[1], pyramid[2])
        chosen = loaded.forward_intermediates(pixels, indices=[0, -1], intermediates_only=True, output_fmt="NHWC")
        close(chosen[0], pyramid[0].permute(0, 2, 3, 1))
        close(chosen[1], pyramid[2].permute(0, 2, 3, 1))
        with pytest.raises(ValueError, match="must name pyramid levels"):
            loaded.forward_intermediates(pixels, indices=[3])
    assert loaded.prune_intermediate_layers([1, -1], prune_head=False) == [1, 2]
    assert hasattr(loaded.encoder, "heads")


def test_grad_checkpointing_gives_identical_outputs_and_gradients(loaded, reference):
    """timm's set_grad_checkpointing turns on the encoder's transformers checkpointing (see test_modeling_ghfeat)."""
    assert_checkpointing_recomputes_exactly(loaded, lambda model: model.set_grad_checkpointing(), lambda model, x: model(x),
                                            reference["pixels"])
    loaded.set_grad_checkpointing()
    assert loaded.grad_checkpointing
    loaded.set_grad_checkpointing(False)
    assert not loaded.grad_checkpointing


def test_group_matcher_and_layer_decay(loaded):
    matcher = loaded.group_matcher()
    groups = timm.models.group_parameters(loaded, matcher)
    names = [name for group in groups.values() for name in group]
    assert sorted(names) == sorted(name for name, _ in loaded.named_parameters())
    first, last = groups[min(groups)], groups[max(groups)]
    assert all(name.startswith("encoder.stem") for name in first)
    assert all(name.startswith("encoder.heads") for name in last)
    # stem, 4 stages x 2 units, extra stage, FPN, SAM, heads
    assert len(groups) == 1 + 8 + 4 and len(timm.models.group_parameters(loaded, loaded.group_matcher(True))) == 9
    optimizer = timm.optim.create_optimizer_v2(loaded, "adamw", lr=1e-3, layer_decay=0.9)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(names)


def test_weights_ghfeat_config(reference, tmp_path):
    """The architecture beside the weights: a GH-Feat directory's config.json, none for a bare weights file."""
    config = weights_ghfeat_config(dict(file=reference["file"]))
    assert isinstance(config, GHFeatConfig) and ghfeat_config_dict(config) == reference["config_dict"]
    bare = tmp_path / "bare" / "model.safetensors"
    bare.parent.mkdir()
    shutil.copyfile(reference["file"], bare)
    assert weights_ghfeat_config(dict(file=str(bare))) is None
    (bare.parent / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert weights_ghfeat_config(dict(file=str(bare))) is None  # another library's directory
    assert weights_ghfeat_config({}) is None
    with pytest.raises(ValueError, match="depth"):  # an explicit config wins, and is checked
        timm.create_model("ghfeat_resnet18_256", pretrained=True, ghfeat_config=dict(depth=7),
                          pretrained_cfg_overlay=dict(file=reference["file"]))


def test_save_for_hf_round_trip_and_input_adaptation(loaded, reference, tmp_path):
    save_for_hf(loaded, tmp_path, safe_serialization=True)
    assert_matches_reference(timm.create_model(f"local-dir:{tmp_path}", pretrained=True), reference)
    gray = timm.create_model("ghfeat_resnet18_256", pretrained=True, in_chans=1, ghfeat_config=reference["config_dict"],
                             pretrained_cfg_overlay=dict(file=reference["file"]))
    source = safetensors.torch.load_file(reference["file"])["encoder.stem.conv.weight"]
    close(gray.encoder.stem.conv.weight, source.sum(dim=1, keepdim=True))
    assert gray.config.num_channels == 1 and gray.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 352)


def test_pretrained_weights_fix_the_image_size():
    with pytest.raises(ValueError, match=r"img_size=64 does not fit .* fix the input to 32 px"):
        timm.create_model("ghfeat_resnet18_32", pretrained=True, img_size=64)
    assert timm.create_model("ghfeat_resnet18_32", pretrained=True, img_size=(32, 32)).config.image_size == 32
    assert timm.create_model("ghfeat_resnet18_32", img_size=64).config.image_size == 64  # random init adapts


def test_filter_and_input_errors(reference):
    state_dict = safetensors.torch.load_file(reference["file"])
    model = GHFeatTimm(reference["config"])
    kept = checkpoint_filter_fn(state_dict, model)
    assert any(key.startswith("synthesis.") for key in state_dict)
    assert set(kept) == set(model.state_dict()) and all(torch.equal(kept[k], state_dict[k]) for k in kept)
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError, match="ghfeat_config"):
        GHFeatTimm(ghfeat_config=42)
    with pytest.raises(TypeError, match="dpeth"):
        timm.create_model("ghfeat_resnet50_256", ghfeat_config=dict(dpeth=18))


@pytest.mark.parametrize(("indices", "levels"), [(None, [0, 1, 2]), (1, [2]), (3, [0, 1, 2]), ((0, -1), [0, 2]),
                                                  ([-3], [0])])
def test_pyramid_level_indices(indices, levels):
    assert pyramid_level_indices(indices) == levels


@pytest.mark.parametrize("indices", [0, 4, (3,), (-4,), ()])
def test_pyramid_level_indices_out_of_range(indices):
    with pytest.raises(ValueError, match="pyramid levels"):
        pyramid_level_indices(indices)

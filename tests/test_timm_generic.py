"""timm's generic model tests (timm ``tests/test_models.py``), adapted to the registered GH-Feat models.

Every generic test of timm's suite has a counterpart here: a test that checks the same properties, or a
``pytest.skip`` with the reason it does not apply. Our adaptations:

* GH-Feat's ``forward_features`` returns tokens ``[N, L, D]`` (the tiled style codes), timm's "non-std" category
  (like ViTs), so the non-std default-cfg test applies. Its check "the ``num_classes=0`` output is
  ``num_features == head_hidden_size`` wide" holds for ``global_pool='avg'`` and runs verbatim with it; with the
  default ``'compact'`` pool (the compact GH-Feat vector, ``sum(style_dims)`` wide) the pooled width is checked
  against ``head_hidden_size`` and ``num_features`` against ``forward_features``' width.
* Real-tensor tests run on ``ghfeat_resnet18_32``; the 256 px presets (125M / 152M encoder parameters) run them
  under ``-m slow`` and the meta-device tests by default.
* fx feature extraction goes through timm's wrappers (``timm.models._features_fx``).
"""

import copy
import inspect

import pytest
import safetensors.torch
import timm
import torch
from timm.layers import Format, get_channel_dim
from timm.models import FeatureInfo, group_parameters
from timm.models._features import FeatureGetterNet
from timm.models._features_fx import create_feature_extractor, get_graph_node_names

from ghfeat_hf.embedded import PRETRAINED_DIR
from ghfeat_hf.timm_models import GHFeatTimm, checkpoint_filter_fn

SMALL = "ghfeat_resnet18_32"
LARGE = ("ghfeat_resnet18_256", "ghfeat_resnet50_256")
ALL_MODELS = [SMALL, *LARGE]
COMPUTE_MODELS = [SMALL, *(pytest.param(name, marks=pytest.mark.slow) for name in LARGE)]
HUB_TAGS = ["ghfeat_resnet50_256.ffhq", "ghfeat_resnet50_256.lsun_bedroom", "ghfeat_resnet50_256.lsun_tower"]
TORCHSCRIPT_SKIP = (
    "torch.jit.script is deprecated in torch 2.14 (FutureWarning: switch to torch.compile or torch.export) and "
    "cannot compile transformers' GradientCheckpointingLayer forward wrapper (*args/**kwargs) nor the "
    "variable-length style-code tuples; test_model_export covers torch.export instead"
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(model: torch.nn.Module, batch_size: int, **factory) -> torch.Tensor:
    return torch.randn(batch_size, *model.pretrained_cfg["input_size"], **factory)


def _set_grad_checkpointing(features: torch.nn.Module, enable: bool = True) -> None:
    """timm's FeatureGetterNet has no set_grad_checkpointing (FeatureHookNet's only checkpoints its own module list,
    here the one wrapped model): call the wrapped GH-Feat model's."""
    next(module for module in features.modules() if isinstance(module, GHFeatTimm)).set_grad_checkpointing(enable)


def _fx_model(model: torch.nn.Module) -> torch.fx.GraphModule:
    """The whole model as a traced graph returning its output node (timm's fx feature extraction)."""
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes  # no control flow depends on the mode
    return create_feature_extractor(model, [eval_nodes[-1]])


# ----------------------------------------------------------------------------------------------------------------
# forward / backward


def test_model_inference():
    pytest.skip("needs timm's reference tensors on the Hub (timm/<model>/test/*.safetensors); the parity tests "
                "compare our networks with the official TensorFlow outputs instead")


@pytest.mark.parametrize("model_name", COMPUTE_MODELS)
def test_model_forward(model_name):
    model = timm.create_model(model_name, pretrained=False).eval()
    inputs = _inputs(model, 1)
    outputs = model(inputs)
    assert outputs.shape[0] == 1 and not torch.isnan(outputs).any()
    model.set_grad_checkpointing()  # a no-op in eval mode (transformers' checkpointing is for training steps)
    torch.testing.assert_close(model(inputs), outputs, rtol=1e-4, atol=1e-5)
    model.train()  # in a training step it recomputes: same output (batch statistics either way)
    checkpointed = model(_inputs(model, 2, generator=torch.Generator().manual_seed(0)))
    model.set_grad_checkpointing(False)
    plain = model(_inputs(model, 2, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", COMPUTE_MODELS)
def test_model_backward(model_name):
    model = timm.create_model(model_name, pretrained=False, num_classes=42).train()
    num_params = sum(param.numel() for param in model.parameters())
    outputs = model(_inputs(model, 2))
    outputs.mean().backward()
    missing = [name for name, param in model.named_parameters() if param.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(param.grad.numel() for param in model.parameters()) == num_params
    assert outputs.shape == (2, 42) and not torch.isnan(outputs).any()


@pytest.mark.parametrize("model_name", COMPUTE_MODELS)
def test_model_export(model_name):
    """torch.export (torch's replacement of TorchScript) captures the model; the program gives its output."""
    model = timm.create_model(model_name, pretrained=False).eval()
    inputs = _inputs(model, 2)
    program = torch.export.export(model, (inputs,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(inputs), model(inputs), rtol=1e-5, atol=1e-6)


def test_model_forward_torchscript():
    pytest.skip(TORCHSCRIPT_SKIP)


# ----------------------------------------------------------------------------------------------------------------
# default cfgs and the model API contract (meta device: structure, shapes, device / dtype propagation)


def _assert_model_api_contract(model, model_name: str) -> None:
    """Unknown factory kwargs raise, reset_classifier keeps the pool by default, group_matcher makes groups."""
    with pytest.raises(TypeError):
        timm.create_model(model_name, device="meta", not_a_model_arg=1)
    pool_arg = inspect.signature(model.reset_classifier).parameters["global_pool"]
    assert pool_arg.default is None
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1


def _assert_reset_classifier_keeps_device_dtype_and_mode(model) -> None:
    model.to(device="meta", dtype=torch.float64)
    training = model.training
    model.reset_classifier(0)
    model.reset_classifier(2)
    params = list(model.get_classifier().parameters())
    assert params and all((p.device.type, p.dtype) == ("meta", torch.float64) for p in params)
    assert all(module.training == training for module in model.modules())


def _assert_factory_device_and_frozen_reset(model_name: str) -> None:
    """create_model(device=...) places every tensor there; reset_classifier(0) keeps a frozen model frozen."""
    model = timm.create_model(model_name, device="meta", dtype=torch.float32)
    misplaced = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type != "meta"]
    assert not misplaced
    model.requires_grad_(False)
    model.reset_classifier(0)
    assert not [name for name, param in model.named_parameters() if param.requires_grad]


def _assert_dtype_change_after_forward(model, inputs: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> None:
    model.to(dtype)
    assert model(inputs.to(dtype)).dtype == dtype
    model.to(torch.float32)


def test_model_default_cfgs():
    pytest.skip("GH-Feat's forward_features returns tokens [N, L, D] (timm's non-std category, like ViTs): "
                "test_model_default_cfgs_non_std applies")


@pytest.mark.parametrize("global_pool", ["avg", "compact"])
@pytest.mark.parametrize("model_name", ALL_MODELS)
def test_model_default_cfgs_non_std(model_name, global_pool):
    """timm's non-std cfg test; with 'compact' the pooled width is head_hidden_size (sum(style_dims)), not
    num_features (the token width max(style_dims)), see the module docstring."""
    factory = dict(pretrained=False, device="meta", dtype=torch.float32, global_pool=global_pool)
    with torch.device("meta"):
        model = timm.create_model(model_name, **factory).eval()
    _assert_model_api_contract(model, model_name)
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    cfg, state_dict = model.default_cfg, model.state_dict()
    assert model.in_chans == cfg["input_size"][0]
    inputs = _inputs(model, 1, device="meta")

    features = model.forward_features(inputs)
    pre_logits = model.forward_head(features, pre_logits=True)
    assert features.ndim == 3 and features.shape[-1] == model.num_features
    assert pre_logits.shape[1] == model.head_hidden_size
    _assert_dtype_change_after_forward(model, inputs)

    model.reset_classifier(0)
    assert model.num_classes == 0
    outputs = model(inputs)
    assert outputs.shape[-1] == model.head_hidden_size and outputs.shape == pre_logits.shape

    model = timm.create_model(model_name, num_classes=0, **factory).eval()
    outputs = model(inputs)
    assert outputs.shape[-1] == model.head_hidden_size
    if global_pool == "avg":  # timm's assertion, verbatim
        assert outputs.shape[-1] == model.num_features
    else:
        assert model.head_hidden_size == sum(model.style_dims) and model.num_features == max(model.style_dims)

    if cfg.get("num_classes"):
        assert f"{cfg['classifier']}.weight" in state_dict
    assert f"{cfg['first_conv']}.weight" in state_dict
    _assert_reset_classifier_keeps_device_dtype_and_mode(model)
    _assert_factory_device_and_frozen_reset(model_name)


@pytest.mark.parametrize("model_name", ALL_MODELS)
def test_model_init_weights_after_to_empty(model_name):
    """A model built on the meta device, moved with to_empty() and re-initialised, holds no stale storage."""
    model = timm.create_model(model_name, device="meta", dtype=torch.float64, num_classes=5)
    assert all((p.device.type, p.dtype) == ("meta", torch.float64) for p in model.parameters())
    if model_name != SMALL:
        pytest.skip("the 256 px presets' 125-152M parameters are checked on the meta device only (above)")
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    model.init_weights()
    assert all(torch.isfinite(tensor).all() for tensor in [*model.parameters(), *model.buffers()])
    assert torch.isfinite(model(_inputs(model, 1, dtype=torch.float64))).all()


def test_headless_checkpoint_reload():
    model = timm.create_model(SMALL, num_classes=0).eval()
    reloaded = timm.create_model(SMALL, num_classes=0).eval()
    reloaded.load_state_dict(checkpoint_filter_fn(dict(sorted(model.state_dict().items())), reloaded))
    inputs = _inputs(model, 1)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs), model(inputs), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# pretrained weights (the embedded Fashion-MNIST model ships inside the package)


@pytest.mark.parametrize("model_name", ["ghfeat_resnet18_32.fmnist32", *HUB_TAGS])
def test_model_load_pretrained(model_name):
    if model_name in HUB_TAGS:
        pytest.skip("weights on the Hub and the default suite is offline; test_timm_models loads this route from a "
                    "faked Hub cache")
    source = safetensors.torch.load_file(PRETRAINED_DIR / "ghfeat-fmnist32" / "model.safetensors")
    for num_classes in (5, 0):
        model = timm.create_model(model_name, pretrained=True, num_classes=num_classes)  # grayscale: in_chans 1
        assert model.pretrained_cfg["input_size"] == (1, 32, 32)
        torch.testing.assert_close(model.encoder.stem.conv.weight, source["encoder.stem.conv.weight"].float())
        assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, num_classes or model.head_hidden_size)


def test_model_features_pretrained():
    model = timm.create_model("ghfeat_resnet18_32.fmnist32", pretrained=True, features_only=True)
    assert len(model.feature_info.channels()) == 3


# ----------------------------------------------------------------------------------------------------------------
# heads and pooling


def test_reset_classifier_keeps_pool():
    model = timm.create_model(SMALL, global_pool="avg").eval()
    inputs = _inputs(model, 2)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(inputs), pre_logits=True)
        model.reset_classifier(5)
        torch.testing.assert_close(model.forward_head(model.forward_features(inputs), pre_logits=True), expected)
        assert model(inputs).shape == (2, 5)
        model.reset_classifier(5, "compact")
        assert model.forward_head(model.forward_features(inputs), pre_logits=True).shape != expected.shape


def test_head_hidden_size():
    """head_hidden_size is the pre-logits width without a classifier and after reset_classifier(7, pool)."""
    model = timm.create_model(SMALL, num_classes=0).eval()
    inputs = _inputs(model, 2)

    def check_width(num_classes: int) -> None:
        pre_logits = model.forward_head(model.forward_features(inputs), pre_logits=True)
        assert pre_logits.shape[1] == model.head_hidden_size
        assert model(inputs).shape[1] == (num_classes or model.head_hidden_size)

    with torch.no_grad():
        check_width(0)
        for pool in ("avg", "compact"):
            model.reset_classifier(7, pool)
            check_width(7)
    pytest.skip("pruning part: a pruned GH-Feat has no forward_features (its style heads are removed), so there is "
                "no pooled head width to fall back to")


def test_catavgmax_unsupported():
    """Unsupported pools are refused at creation and reset (ValueError here; timm's own models assert)."""
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model(SMALL, global_pool="catavgmax")
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model(SMALL).reset_classifier(7, "catavgmax")


def test_batch_consistency():
    """timm's gcvit batch test, generic: each image's output does not depend on the others (eval mode)."""
    model = timm.create_model(SMALL).eval()
    inputs = _inputs(model, 3)
    with torch.no_grad():
        single = torch.cat([model(inputs[index:index + 1]) for index in range(3)])
        torch.testing.assert_close(model(inputs), single, rtol=1e-4, atol=1e-4)


def test_dtype_change_after_forward():
    """timm's convit test, generic: converting to bf16 after an fp32 forward leaves no fp32 state behind."""
    model = timm.create_model(SMALL).eval()
    inputs = _inputs(model, 1)
    with torch.no_grad():
        model(inputs)
        model.to(torch.bfloat16)
        assert model(inputs.to(torch.bfloat16)).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------------
# features_only, forward_intermediates, pruning


@pytest.mark.parametrize("feature_cls", ["getter", "hook", "fx", FeatureGetterNet])
@pytest.mark.parametrize("model_name", COMPUTE_MODELS)
def test_model_forward_features(model_name, feature_cls):
    """features_only for every feature_cls that applies (timm's forward_features / forward_intermediates_features
    and feature_cls-class tests): channels and reductions of feature_info, the same levels as
    forward_intermediates."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, features_only=True, feature_cls=feature_cls).eval()
    torch.manual_seed(0)
    reference = timm.create_model(model_name, pretrained=False).eval()  # the same weights
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    inputs = _inputs(model, 1)
    with torch.no_grad():
        outputs = model(inputs)
        expected = reference.forward_intermediates(inputs, intermediates_only=True)
    assert len(outputs) == len(channels)
    size = inputs.shape[-1]
    for level, (feature, chs, reduction) in enumerate(zip(outputs, channels, reductions)):
        assert feature.shape == (1, chs, size // reduction, size // reduction)
        assert not torch.isnan(feature).any()
        torch.testing.assert_close(feature, expected[level], rtol=1e-5, atol=1e-6)


def test_model_features_space2depth_reduction():
    pytest.skip("efficientnet_[hx] space-to-depth stems only")


def test_model_features_output_stride():
    pytest.skip("GH-Feat's strides are fixed by its config (no dilation / output_stride argument)")


@pytest.mark.parametrize("model_name", COMPUTE_MODELS)
def test_model_forward_intermediates(model_name):
    """Levels match feature_info; the final output equals forward_features (also under grad checkpointing) and
    forward_head of it equals forward (timm's mobilenetv5 final-features test, generic)."""
    model = timm.create_model(model_name, pretrained=False).eval()
    feature_info = FeatureInfo(model.feature_info, len(model.feature_info))
    inputs = _inputs(model, 1)
    output, intermediates = model.forward_intermediates(inputs, output_fmt="NCHW")
    channel_dim, size = get_channel_dim(Format.NCHW), inputs.shape[-1]
    assert len(intermediates) == len(feature_info.channels()) >= 3
    for feature, chs, reduction in zip(intermediates, feature_info.channels(), feature_info.reduction()):
        assert feature.shape[channel_dim] == chs and feature.shape[-2:] == (size // reduction, size // reduction)
        assert not torch.isnan(feature).any()
    torch.testing.assert_close(output, model.forward_features(inputs), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(model.forward_head(output), model(inputs))
    selected = model.forward_intermediates(inputs, intermediates_only=True)
    for actual, expected in zip(intermediates, selected):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    model.set_grad_checkpointing()
    torch.testing.assert_close(model.forward_intermediates(inputs)[0], output, rtol=1e-4, atol=1e-5)


def test_forward_intermediates_stop_early_and_norm():
    """stop_early and norm have no effect (no final norm; the top-down FPN needs the whole trunk)."""
    model = timm.create_model(SMALL).eval()
    inputs = _inputs(model, 1)
    with torch.no_grad():
        _, intermediates = model.forward_intermediates(inputs)
        for norm in (False, True):
            _, selected = model.forward_intermediates(inputs, indices=[0], norm=norm, stop_early=True)
            torch.testing.assert_close(selected[0], intermediates[0], rtol=0, atol=0)


def test_features_only_grad_checkpointing_backward():
    inputs = None
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(SMALL, features_only=True).train()
        inputs = _inputs(model, 2, generator=torch.Generator().manual_seed(1)) if inputs is None else inputs
        _set_grad_checkpointing(model, enable)
        sum(feature.pow(2).mean() for feature in model(inputs)).backward()
        grads.append([param.grad for param in model.parameters() if param.grad is not None])
    assert len(grads[0]) == len(grads[1]) == len(list(model.parameters()))
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain)


def test_feature_hook_net_grad_checkpointing_order():
    """Recomputation in the backward pass must not re-fire feature hooks into the next forward's outputs."""
    model = timm.create_model(SMALL, features_only=True, feature_cls="hook").train()
    inputs = _inputs(model, 2)
    with torch.no_grad():
        reference = model(inputs)
    _set_grad_checkpointing(model)
    for _ in range(2):
        outputs = model(inputs)
        assert len(outputs) == len(reference)
        for output, expected in zip(outputs, reference):
            torch.testing.assert_close(output, expected)
        sum(output.mean() for output in outputs).backward()


@pytest.mark.parametrize("indices", [[0], [2], [0, 1, 2]])
def test_prune_intermediate_layers_contract(indices):
    """timm's pruning tests (params used, last feature, contract), as far as they apply: pruning with
    prune_head=False keeps the output, pruned taps equal the unpruned ones, and a full-pyramid prune leaves no
    unused parameter (DDP) and stays deterministic in eval mode."""
    model = timm.create_model(SMALL, drop_rate=0.5).eval()
    inputs = _inputs(model, 2)
    with torch.no_grad():
        expected, taps = model(inputs), model.forward_intermediates(inputs, intermediates_only=True)
        kept = copy.deepcopy(model)
        kept.prune_intermediate_layers(indices, prune_head=False)
        torch.testing.assert_close(kept(inputs), expected, rtol=0, atol=0)
        pruned = copy.deepcopy(model)
        take_indices = pruned.prune_intermediate_layers(indices, prune_norm=True)
        selected = pruned.forward_intermediates(inputs, indices=take_indices, intermediates_only=True)
        for level, feature in zip(take_indices, selected):
            torch.testing.assert_close(feature, taps[level], rtol=0, atol=0)
    if len(indices) < 3:
        pytest.skip("pruning to a subset of levels: the FPN still builds every level, so the other levels' output "
                    "convs get no gradient (GH-Feat's pyramid is top-down, not a chain of stages)")
    pruned.train()
    sum(feature.sum() for feature in pruned.forward_intermediates(inputs, intermediates_only=True)).backward()
    assert not [name for name, param in pruned.named_parameters() if param.grad is None]


def test_resnet_pruned_grad_checkpointing():
    """A pruned model trains its taps under grad checkpointing (forward_features is gone with the style heads)."""
    model = timm.create_model(SMALL).train()
    take_indices = model.prune_intermediate_layers((0, 1, 2))
    model.set_grad_checkpointing()
    intermediates = model.forward_intermediates(_inputs(model, 2), indices=take_indices, intermediates_only=True)
    assert len(intermediates) == 3
    sum(feature.sum() for feature in intermediates).backward()


def test_samvit_feature_getter_channels():
    """timm's samvit getter test, generic: FeatureGetterNet (pruned or not) matches forward_intermediates and its
    feature_info channels match the outputs."""
    model = timm.create_model(SMALL).eval()
    inputs = _inputs(model, 1)
    with torch.no_grad():
        expected = model.forward_intermediates(inputs, indices=[0], intermediates_only=True)
        for prune in (False, True):
            getter = FeatureGetterNet(copy.deepcopy(model), out_indices=(0,), prune=prune)
            actual = getter(inputs)
            torch.testing.assert_close(actual, expected)
            assert getter.feature_info.channels() == [feature.shape[1] for feature in actual]


@pytest.mark.parametrize("name, reason", [
    ("test_pruned_efficientnet_in_chans", "efficientnet *_pruned variants only (in_chans=1 is tested in "
                                          "test_model_load_pretrained)"),
    ("test_pruned_features_torchscript", TORCHSCRIPT_SKIP),
    ("test_feature_getter_stage_ends_torchscript", TORCHSCRIPT_SKIP),
    ("test_inception_v3_aux_logits_reset_prune", "inception_v3's auxiliary classifier only"),
    ("test_prune_extra_blocks_stem_width", "efficientnet / mobilenetv3 extra_blocks pruning only"),
    ("test_prune_class_token_avg_pool", "class-token models only"),
    ("test_eva_reset_classifier_removes_attention_pool", "attention-pool heads only"),
    ("test_forward_after_prune_intermediate_layers", "by design a pruned GH-Feat has no forward_features (its style "
                                                     "heads are removed); test_timm_models checks the error"),
    ("test_prune_to_stem_feature", "GH-Feat's feature levels are the FPN levels, there is no stem tap"),
    ("test_resnetv2_stem_feature_odd_size", "fixed input size: odd sizes are refused"),
    ("test_nfnet_stem_feature_consistency", "nfnet stems / FeatureListNet flattening only"),
    ("test_model_forward_fx_torchscript", TORCHSCRIPT_SKIP),
    ("test_model_forward_torchscript_with_features_fx", TORCHSCRIPT_SKIP),
    ("model-family tests (naflexvit, gemma4, vit classifiers, swin, relpos, efficientvim, mobile fusion, "
     "attention bias caches)", "specific to those architectures"),
])
def test_not_applicable(name, reason):
    pytest.skip(f"{name}: {reason}")


# ----------------------------------------------------------------------------------------------------------------
# torch.fx


@pytest.mark.parametrize("model_name", COMPUTE_MODELS)
def test_model_forward_fx(model_name):
    model = timm.create_model(model_name, pretrained=False).eval()
    inputs = _inputs(model, 1)
    with torch.inference_mode():
        outputs = model(inputs)
        traced = _fx_model(model)
        fx_outputs = torch.cat(tuple(traced(inputs).values()))
    torch.testing.assert_close(fx_outputs, outputs, rtol=1e-4, atol=1e-5)
    assert not torch.isnan(outputs).any()
    with pytest.raises(ValueError, match=r"pixel_values must be"):  # the input check is a leaf of the graph
        traced(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("model_name", COMPUTE_MODELS)
def test_model_backward_fx(model_name):
    model = timm.create_model(model_name, pretrained=False, num_classes=42).train()
    num_params = sum(param.numel() for param in model.parameters())
    traced = _fx_model(model)
    outputs = torch.cat(tuple(traced(_inputs(model, 2)).values()))
    outputs.mean().backward()
    assert not [name for name, param in traced.named_parameters() if param.grad is None]
    assert sum(param.grad.numel() for param in traced.parameters()) == num_params
    assert outputs.shape[-1] == 42 and not torch.isnan(outputs).any()

"""transformers' generic model, backbone and config tests, adapted to the GH-Feat and StyleGAN models.

The counterparts of ``ModelTesterMixin`` (``tests/test_modeling_common.py``), ``BackboneTesterMixin``
(``tests/test_backbone_common.py``) and ``ConfigTester`` (``tests/test_configuration_common.py``) of transformers'
own suite, on tiny configs: each test checks the same properties as its upstream namesake, or skips with the
reason it does not apply (no attention, no embeddings, no tied weights, no generation, no loss head...).
Our models return no loss: the training tests back-propagate a loss made from the outputs instead.
"""

import copy
import inspect
import json
import logging
import unittest.mock
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.backbone_utils import BackboneType
from transformers.modeling_layers import GradientCheckpointingLayer

from ghfeat_hf import (
    GHFeatBackbone,
    GHFeatConfig,
    GHFeatModel,
    StyleGANDiscriminator,
    StyleGANGenerator,
    modeling_ghfeat,
    modeling_stylegan,
)
from ghfeat_hf.configuration_stylegan import StyleGANDiscriminatorConfig, StyleGANGeneratorConfig
from tests.conftest import tiny_discriminator_config, tiny_generator_config, tiny_ghfeat_config

NUM_HIDDEN_STATES = 9  # stem, res2..res6, p4..p6
BATCH = 2


@dataclass
class Case:
    """A model class, a tiny config and its inputs (what transformers' model testers provide)."""

    model_class: type[PreTrainedModel]
    make_config: callable
    make_inputs: callable
    hidden_states: bool = False  # returns hidden_states (GH-Feat encoder models)
    config_kwargs: dict = field(default_factory=dict)

    def config(self) -> PreTrainedConfig:
        return self.make_config()

    def inputs(self) -> dict[str, torch.Tensor]:
        return self.make_inputs(torch.Generator().manual_seed(0))

    def model(self, config: PreTrainedConfig | None = None) -> PreTrainedModel:
        torch.manual_seed(0)
        return self.model_class(config or self.config())

    def id(self) -> str:
        return self.model_class.__name__


def _pixels(resolution: int):
    return lambda generator: {"pixel_values": torch.rand(BATCH, 3, resolution, resolution, generator=generator) * 2 - 1}


CASES = [
    Case(GHFeatModel, tiny_ghfeat_config, _pixels(32), hidden_states=True),
    Case(GHFeatBackbone, lambda: tiny_ghfeat_config(out_features=["p4", "p6"]), _pixels(32), hidden_states=True),
    Case(StyleGANGenerator, tiny_generator_config, lambda g: {"z": torch.randn(BATCH, 16, generator=g)}),
    Case(StyleGANDiscriminator, tiny_discriminator_config,
         lambda g: {"images": torch.rand(BATCH, 3, 32, 32, generator=g) * 2 - 1}),
]
GHFEAT_CASES = [case for case in CASES if case.hidden_states]
STYLEGAN_CASES = [case for case in CASES if not case.hidden_states]


def cases(selection=CASES):
    return pytest.mark.parametrize("case", selection, ids=Case.id)


pytestmark = pytest.mark.usefixtures("one_thread")


def first_output(output) -> torch.Tensor:
    """``model(...)[0]`` as transformers' tests use it: a ModelOutput's first field or a tensor's first sample."""
    first = output[0]
    return first[0] if isinstance(first, tuple) else first


def tensors(output) -> list[torch.Tensor]:
    """Every tensor of a (nested) model output, in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    values = output.values() if isinstance(output, dict) else output
    return [tensor for value in values if value is not None for tensor in tensors(value)]


def training_loss(case: Case, model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """A loss that reaches every parameter (our models have no loss head; GHFeatModel's decoder is only used by
    decode, the backbone's unselected FPN levels only by hidden_states)."""
    output = model(**inputs, **({"output_hidden_states": True} if case.hidden_states else {}))
    loss = sum(tensor.float().square().mean() for tensor in tensors(output))
    if isinstance(model, GHFeatModel):
        loss = loss + model.decode(output.style_codes).square().mean()
    return loss


# ----------------------------------------------------------------------------------------------------------------
# ModelTesterMixin: saving and loading


@cases()
def test_save_load(case, tmp_path):
    model = case.model().eval()
    with torch.no_grad():
        first = first_output(model(**case.inputs()))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and not (tmp_path / "generation_config.json").exists()
    loaded, info = case.model_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not loaded.training  # from_pretrained gives eval mode
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        torch.testing.assert_close(first_output(loaded(**case.inputs())), first, rtol=0, atol=0)
    loaded.save_pretrained(tmp_path)  # from_pretrained adds config fields: they must load back
    case.model_class.from_pretrained(tmp_path)


@cases()
def test_save_load_sharded(case, tmp_path):
    """save_pretrained(max_shard_size=...) writes several safetensors shards and an index; they load back."""
    model = case.model().eval()
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    loaded = case.model_class.from_pretrained(tmp_path)
    reloaded_state = loaded.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded_state[key], value, rtol=0, atol=0, msg=key)


@cases()
def test_from_pretrained_no_checkpoint(case):
    model = case.model()
    state_dict = model.state_dict()
    new_model = case.model_class.from_pretrained(None, config=case.config(), state_dict=state_dict)
    new_state_dict = new_model.state_dict()
    assert state_dict.keys() == new_state_dict.keys()
    for key in state_dict:
        torch.testing.assert_close(new_state_dict[key], state_dict[key], msg=key)


@cases()
def test_load_contiguous_weights(case, tmp_path):
    model = case.model()
    assert all(param.is_contiguous() for param in model.parameters())
    model.save_pretrained(tmp_path)
    assert all(param.is_contiguous() for param in case.model_class.from_pretrained(tmp_path).parameters())


@cases()
def test_can_use_safetensors(case, tmp_path):
    model = case.model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = case.model_class.from_pretrained(tmp_path).state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded[key], value, rtol=0, atol=0, msg=key)


@cases()
def test_torch_save_load(case, tmp_path):
    state_dict = case.model().state_dict()
    for zipfile in (True, False):
        torch.save(state_dict, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zipfile)
        loaded = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
        for key, value in state_dict.items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_correct_missing_keys(tmp_path):
    """The adapted upstream check: a GHFeatModel checkpoint loads into GHFeatBackbone with no missing keys, the
    style part and the generator dropped quietly; a backbone checkpoint loaded as GHFeatModel reports them missing."""
    model = GHFeatModel(tiny_ghfeat_config())
    model.save_pretrained(tmp_path / "full")
    backbone, info = GHFeatBackbone.from_pretrained(tmp_path / "full", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    backbone.save_pretrained(tmp_path / "backbone")
    _, info = GHFeatModel.from_pretrained(tmp_path / "backbone", output_loading_info=True)
    assert info["missing_keys"] and all(key.startswith(("synthesis.", "encoder.alignment.", "encoder.heads."))
                                        for key in info["missing_keys"])


@cases()
def test_cannot_load_with_meta_device_context_manager(case, tmp_path):
    case.model().save_pretrained(tmp_path)
    with torch.device("meta"), pytest.raises(RuntimeError, match="meta device context manager"):
        case.model_class.from_pretrained(tmp_path)


@cases()
def test_bc_torch_dtype(case, tmp_path):
    """``torch_dtype=`` (old name) loads like ``dtype=``; ``model.to(dtype)`` and ``from_pretrained(dtype=bf16)``
    give a model of that dtype that runs."""
    model = case.model()
    model.save_pretrained(tmp_path)
    for dtype in ["float16", "bfloat16", "float32", "auto", torch.float16, torch.bfloat16, torch.float32]:
        old = case.model_class.from_pretrained(tmp_path, torch_dtype=dtype)
        new = case.model_class.from_pretrained(tmp_path, dtype=dtype)
        for (name, old_param), (new_name, new_param) in zip(old.named_parameters(), new.named_parameters()):
            assert name == new_name and old_param.dtype == new_param.dtype
            torch.testing.assert_close(old_param, new_param)
    bf16 = case.model_class.from_pretrained(tmp_path, dtype=torch.bfloat16)
    inputs = {key: value.to(torch.bfloat16) for key, value in case.inputs().items()}
    with torch.no_grad():
        assert all(tensor.dtype == torch.bfloat16 for tensor in tensors(bf16(**inputs)))
        assert first_output(model.eval().to(torch.bfloat16)(**inputs)).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------------
# ModelTesterMixin: initialisation


@cases()
def test_can_init_all_missing_weights(case):
    """from_pretrained with an empty state dict initialises every tensor (none left on meta) like __init__ does:
    deterministic tensors identical, random ones with the same statistics."""
    from_init = case.model().state_dict()
    from_pretrained = case.model_class.from_pretrained(None, config=case.config(), state_dict={})
    on_meta = [name for name, tensor in [*from_pretrained.named_parameters(), *from_pretrained.named_buffers()]
               if tensor.device.type == "meta"]
    assert not on_meta
    state = from_pretrained.state_dict()
    assert sorted(state) == sorted(from_init)
    for key, expected in from_init.items():
        actual = state[key]
        if not expected.is_floating_point() or expected.numel() == 1 or torch.all(expected == expected.flatten()[0]):
            torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=key)
        elif expected.numel() < 256:  # too few values for statistics
            assert torch.isfinite(actual).all(), key
        else:  # a random init: same distribution
            assert abs(actual.std() - expected.std()) < 0.35 * expected.std() + 1e-6, key
            assert abs(actual.mean() - expected.mean()) < 0.35 * expected.std() + 1e-6, key


@cases()
def test_init_weights_can_init_buffers(case):
    """A model built on meta, moved with to_empty() and re-initialised gets the buffers __init__ gives (the
    random synthesis noise: the same distribution)."""
    buffers = dict(case.model().named_buffers())
    with torch.device("meta"):
        model = case.model()
    model.to_empty(device="cpu")
    model.init_weights()
    from_meta = dict(model.named_buffers())
    assert sorted(from_meta) == sorted(buffers)
    for name, expected in buffers.items():
        if name.endswith(".noise"):
            assert torch.isfinite(from_meta[name]).all() and abs(from_meta[name].std() - 1) < 0.5
        else:
            torch.testing.assert_close(from_meta[name], expected, rtol=0, atol=0, msg=name)


@cases()
def test_all_tensors_are_parameter_or_buffer(case):
    with torch.device("meta"):
        model = case.model().eval()
    model.to_empty(device="cpu")
    model.init_weights()
    assert all(torch.isfinite(tensor).all() for tensor in tensors(model(**case.inputs())))


@cases()
def test_can_be_initialized_on_meta(case):
    with torch.device("meta"):
        case.model()


@cases()
def test_model_is_small(case):
    assert case.model().num_parameters() < 1_000_000


@cases()
def test_no_split_modules_name_existing_classes(case):
    """``_no_split_modules`` (device_map="auto") names existing module classes, some of them in this model (the
    lists are shared: GHFeatBackbone has no synthesis, a config uses one trunk unit class)."""
    names = set(case.model_class._no_split_modules)
    defined = {name for module in (modeling_ghfeat, modeling_stylegan) for name, value in vars(module).items()
               if isinstance(value, type) and issubclass(value, torch.nn.Module)}
    assert names <= defined
    assert names & {type(module).__name__ for module in case.model().modules()}


# ----------------------------------------------------------------------------------------------------------------
# ModelTesterMixin: forward


@cases()
def test_model_main_input_name(case):
    parameters = list(inspect.signature(case.model_class.forward).parameters)
    assert parameters[1] == case.model_class.main_input_name


@cases()
def test_determinism(case):
    model = case.model().eval()
    with torch.no_grad():
        first, second = model(**case.inputs()), model(**case.inputs())
    for a, b in zip(tensors(first), tensors(second)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@cases()
def test_batching_equivalence(case):
    """Every output row of a batch equals the output of that row alone (eval mode); rtol / atol 1e-4 instead of
    upstream's 1e-5, which transformers reaches with its "less flaky" config tweaks: our unnormalised feature maps
    reach |x| ~ 10 and batch-1 convolutions take other kernels."""
    if case.model_class is StyleGANDiscriminator:
        pytest.skip("D_basic's minibatch standard deviation mixes the samples of a batch by design")
    config = case.config()
    config.output_hidden_states = True
    model = case.model(config).eval()
    batched = case.inputs()
    single = {key: value[:1] for key, value in batched.items()}
    with torch.no_grad():
        for row, alone in zip(tensors(model(**batched)), tensors(model(**single))):
            assert torch.isfinite(row).all() and torch.isfinite(alone).all()
            torch.testing.assert_close(row[:1], alone, rtol=1e-4, atol=1e-4)


@cases()
def test_model_forward_default_config_values(case):
    """A config rebuilt from its diff dict (no token ids: they are not GH-Feat / StyleGAN fields) runs."""
    config = case.config()
    config = type(config)(**config.to_diff_dict())
    with torch.no_grad():
        case.model(config).eval()(**case.inputs())


@cases()
def test_model_outputs_equivalence(case):
    """``return_dict=False`` gives the ModelOutput's non-None fields as a tuple (the same tensors)."""
    if case not in GHFEAT_CASES:
        pytest.skip("the StyleGAN models return a plain tensor (no ModelOutput, no return_dict)")
    model = case.model().eval()
    with torch.no_grad():
        for extra in ({}, {"output_hidden_states": True}):
            as_tuple = model(**case.inputs(), return_dict=False, **extra)
            as_dict = model(**case.inputs(), return_dict=True, **extra)
            assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
            for a, b in zip(tensors(as_tuple), tensors(as_dict.to_tuple()), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@cases(GHFEAT_CASES)
def test_hidden_states_output(case):
    """9 feature maps (stem, res2..res6, p4..p6) with ``output_hidden_states=True`` or the config's flag; the
    channels follow the config, each level half the size of the one before (the FPN levels 2x apart)."""
    config = case.config()
    expected_channels = [config.base_width, *config.stage_channels, config.extra_stage_channels,
                         *[config.pyramid_channels] * 3]
    for use_config in (False, True):
        config.output_hidden_states = use_config
        model = case.model(config).eval()
        with torch.no_grad():
            output = model(**case.inputs(), **({} if use_config else {"output_hidden_states": True}))
        hidden_states = output.hidden_states
        assert len(hidden_states) == NUM_HIDDEN_STATES
        assert [state.shape[1] for state in hidden_states] == expected_channels
        assert [state.shape[-1] for state in hidden_states] == [32, 32, 16, 8, 4, 2, 8, 4, 2]  # tiny: no stem stride
        assert all(state.shape[0] == BATCH for state in hidden_states)
    config.output_hidden_states = False
    with torch.no_grad():
        assert case.model(config).eval()(**case.inputs()).hidden_states is None


@cases(GHFEAT_CASES)
def test_retain_grad_hidden_states(case):
    config = case.config()
    config.output_hidden_states = True
    model = case.model(config)
    output = model(**case.inputs())
    hidden_state = output.hidden_states[0]
    hidden_state.retain_grad()
    first_output(output).flatten()[0].backward(retain_graph=True)
    assert hidden_state.grad is not None


# ----------------------------------------------------------------------------------------------------------------
# ModelTesterMixin: training and gradient checkpointing


@cases()
def test_training(case):
    model = case.model().train()
    training_loss(case, model, case.inputs()).backward()
    assert not [name for name, param in model.named_parameters() if param.grad is None]


@cases()
def test_gradient_checkpointing_backward_compatibility(case):
    if not case.model_class.supports_gradient_checkpointing:
        pytest.skip(f"{case.id()} has no repeated blocks to checkpoint (supports_gradient_checkpointing=False)")
    config = case.config()
    config.gradient_checkpointing = True
    assert case.model(config).is_activation_checkpointing


@cases()
def test_gradient_checkpointing_enable_disable(case):
    model = case.model()
    if not case.model_class.supports_gradient_checkpointing:
        with pytest.raises(ValueError, match="does not support"):
            model.activation_checkpointing_enable()
        with pytest.raises(ValueError, match="does not support"), pytest.warns(FutureWarning):
            model.gradient_checkpointing_enable()
        return
    assert not model.is_activation_checkpointing
    assert [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    for peft in (False, True):
        model._hf_peft_config_loaded = peft
        with pytest.warns(FutureWarning, match="deprecated"):  # the transformers 4.x name still works
            model.gradient_checkpointing_enable()
        assert model.is_activation_checkpointing
        assert all(module.gradient_checkpointing for module in model.modules() if hasattr(module, "gradient_checkpointing"))
        model.activation_checkpointing_disable()
        assert not model.is_activation_checkpointing
        assert not any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


@pytest.mark.parametrize("checkpointing_kwargs", [None, {"use_reentrant": False}, {"use_reentrant": True}],
                         ids=["default", "use_reentrant_false", "use_reentrant_true"])
@cases()
def test_training_gradient_checkpointing(case, checkpointing_kwargs):
    """Checkpointed layers really run twice and every parameter gets the non-zero gradients of a plain step."""
    if not case.model_class.supports_gradient_checkpointing:
        pytest.skip(f"{case.id()} does not support gradient checkpointing")
    model = case.model().train()
    inputs = case.inputs()
    training_loss(case, model, inputs).backward()
    plain = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs)
    layer = next(module for module in model.modules() if isinstance(module, GradientCheckpointingLayer))
    checkpoint_func = layer._gradient_checkpointing_func
    forward_mock = unittest.mock.Mock()

    def checkpoint_with_forward_mock(forward, *args):
        forward_mock.side_effect = forward
        return checkpoint_func(forward_mock, *args)

    with unittest.mock.patch.object(layer, "_gradient_checkpointing_func", side_effect=checkpoint_with_forward_mock):
        training_loss(case, model, inputs).backward()
    assert forward_mock.call_count > 1  # forward + recomputation
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert (param.grad.abs().sum() > 0) == (plain[name].abs().sum() > 0), name


@pytest.mark.parametrize("name, reason", [
    ("test_num_layers_is_small", "no num_hidden_layers (test_model_is_small bounds the size instead)"),
    ("test_keep_in_fp32_modules_exist / test_keep_in_fp32_modules / "
     "test_keep_in_fp32_modules_strict_also_hardcode_fp32", "no _keep_in_fp32_modules (the norms compute in fp32)"),
    ("test_save_load_keys_to_ignore_on_save", "no _keys_to_ignore_on_save"),
    ("test_enable_input_require_grads(_with_gradient_checkpointing)", "no input embeddings"),
    ("test_encoder_decoder_loss_no_double_shift / test_causal_lm_loss_honors_shift_labels", "no language-model loss"),
    ("test_attention_outputs / test_multimodal_outputs_are_returned", "no attention (has_attentions=False)"),
    ("test_feed_forward_chunking", "no feed-forward chunking"),
    ("test_resize_position_vector_embeddings / test_resize_tokens_embeddings* / test_resize_embeddings_untied*",
     "no token or position embeddings"),
    ("test_model_get_set_embeddings / test_inputs_embeds / test_inputs_embeds_matches_input_ids",
     "no input embeddings (image / latent inputs)"),
    ("test_model_base_model_prefix / test_generation_tester_mixin_inheritance", "no generative model"),
    ("test_base_model_prefix_loads_base_weights", "no base model / head split (test_correct_missing_keys covers "
                                                  "GHFeatModel -> GHFeatBackbone)"),
    ("test_load_save_without_tied_weights / test_tied_weights_keys / "
     "test_model_weights_reload_no_missing_tied_weights / test_tied_weights_are_sharded_together", "no tied weights"),
    ("test_disk_offload_bin / test_disk_offload_safetensors / test_cpu_offload / test_model_parallelism / "
     "test_can_load_with_device_context_manager / test_can_load_with_global_device_set",
     "need an accelerator; the device_map split is tested in test_modeling_ghfeat / test_modeling_stylegan"),
    ("test_problem_types / test_load_with_mismatched_shapes / test_can_load_ignoring_mismatched_shapes",
     "no classification head (timm's num_classes covers fine-tuning)"),
    ("flash / sdpa / flex attention, test_eager_matches_*, test_config_attn_implementation_setter, "
     "test_can_set_attention_dynamically*, test_attn_implementation_composite_models, test_sliding_window_mask",
     "no attention"),
    ("test_torch_compile_for_training", "torch.compile is too slow for the default CPU suite; test_timm_generic "
                                        "checks torch.export"),
    ("test_internal_model_config_and_subconfig_are_same", "the synthesis network is a plain nn.Module, not a "
                                                          "PreTrainedModel with its own config"),
    ("test_tp_plan_matches_params / test_reverse_loading_mapping / test_can_load_from_already_mapped_keys",
     "no tensor-parallel plan and no checkpoint key conversion mapping"),
    ("test_get_{text,image,audio,video}_features_*", "no multimodal get_*_features API"),
    ("test_capture_outputs_decorator / test_can_capture_specific_layers_hidden_states / "
     "test_format_of_can_record_outputs", "hidden states are returned directly, without transformers' output recorder"),
    ("test_moe_models_record_router_logits / test_output_router_logits_from_config", "no mixture of experts"),
    ("test_kernels_can_*", "no hub kernels"),
    ("test_model_rope_* / test_vision_axial_rope", "no rotary embeddings"),
    ("test_bc_cache_name_forward", "no KV cache"),
])
def test_not_applicable(name, reason):
    pytest.skip(f"{name}: {reason}")


# ----------------------------------------------------------------------------------------------------------------
# BackboneTesterMixin


def backbone_inputs():
    return CASES[1].inputs()


def test_backbone_config():
    """Stage names are the FPN levels (not transformers' stem/stage1..); out_features / out_indices alignment."""
    config = GHFeatConfig()
    assert config.stage_names == ["p4", "p5", "p6"] and set(config.out_features) <= set(config.stage_names)
    config = GHFeatConfig(out_features=None, out_indices=None)
    assert (config.out_features, config.out_indices) == (["p6"], [2])
    config = GHFeatConfig(out_features=["p4", "p5"], out_indices=[0, 1])
    assert (config.out_features, config.out_indices) == (["p4", "p5"], [0, 1])
    config = GHFeatConfig(out_features=["p4", "p6"])
    assert config.out_indices == [0, 2]
    config = GHFeatConfig(out_indices=[0, 2])
    assert config.out_features == ["p4", "p6"]
    with pytest.raises(ValueError):
        GHFeatConfig(out_features=["p4", "p5"], out_indices=[0, 2])


def test_backbone_forward_signature():
    assert list(inspect.signature(GHFeatBackbone.forward).parameters)[1:2] == ["pixel_values"]


def test_backbone_config_save_pretrained(tmp_path):
    config = GHFeatConfig(out_indices=[0, 1, 2])  # three stages (upstream: [0, 1, 2, 3])
    config.save_pretrained(tmp_path)
    assert GHFeatConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_backbone_channels():
    config = CASES[1].config()
    model = GHFeatBackbone(config)
    assert model.channels == [model.num_features[config.stage_names.index(name)] for name in config.out_features]
    for reset in ("out_features", "out_indices"):
        modified = copy.deepcopy(config)
        setattr(modified, reset, None)
        assert GHFeatBackbone(modified).channels == [model.num_features[-1]]


def test_backbone_create_from_modified_config():
    config = CASES[1].config()
    with torch.no_grad():
        result = GHFeatBackbone(config).eval()(**backbone_inputs())
        assert len(result.feature_maps) == len(config.out_features) == len(config.out_indices)
        for reset in ("out_features", "out_indices"):
            modified = copy.deepcopy(config)
            setattr(modified, reset, None)
            model = GHFeatBackbone(modified).eval()
            assert len(model(**backbone_inputs()).feature_maps) == len(model.channels) == 1


def test_backbone_common_attributes():
    backbone = GHFeatBackbone(CASES[1].config())
    assert isinstance(backbone.backbone_type, BackboneType) and backbone.num_features is not None
    assert len(backbone.channels) == len(backbone.out_indices) <= len(backbone.num_features)
    assert len(backbone.stage_names) == len(backbone.num_features) == len(backbone.out_feature_channels)


def test_backbone_outputs():
    """feature_maps follow out_features; hidden_states (transformers' convention: all stages) are the encoder's 9
    feature maps; no attentions (has_attentions=False)."""
    backbone = GHFeatBackbone(CASES[1].config()).eval()
    with torch.no_grad():
        outputs = backbone(**backbone_inputs())
        assert isinstance(outputs.feature_maps, tuple) and len(outputs.feature_maps) == len(backbone.channels)
        for feature_map, channels in zip(outputs.feature_maps, backbone.channels):
            assert feature_map.shape[:2] == (BATCH, channels)
        assert outputs.hidden_states is None and outputs.attentions is None and not backbone.has_attentions
        outputs = backbone(**backbone_inputs(), output_hidden_states=True)
        assert len(outputs.hidden_states) == NUM_HIDDEN_STATES
        pyramid = outputs.hidden_states[-len(backbone.stage_names):]
        for feature_map, name in zip(outputs.feature_maps, backbone.out_features):
            torch.testing.assert_close(feature_map, pyramid[backbone.stage_names.index(name)], rtol=0, atol=0)
        assert len(backbone(**backbone_inputs(), return_dict=False)) == 1  # Nones dropped


def test_backbone_stage_selection():
    config = CASES[1].config()
    config.out_indices = [-2, -1]
    backbone = GHFeatBackbone(config).eval()
    with torch.no_grad():
        outputs = backbone(**backbone_inputs())
    assert isinstance(outputs.feature_maps, tuple) and len(outputs.feature_maps) == 2
    assert backbone.channels == [backbone.out_feature_channels[name] for name in backbone.stage_names
                                 if name in backbone.out_features]
    for feature_map, channels in zip(outputs.feature_maps, backbone.channels):
        assert feature_map.shape[:2] == (BATCH, channels)


# ----------------------------------------------------------------------------------------------------------------
# ConfigTester

CONFIG_CASES = [
    (GHFeatConfig, dict(depth=18, base_width=8, pyramid_channels=16, image_size=32, stem_stride=1, stem_pool=False),
     ["num_channels", "image_size"]),
    (StyleGANGeneratorConfig, dict(resolution=32, fmap_base=128, latent_size=16), ["num_channels", "resolution"]),
    (StyleGANDiscriminatorConfig, dict(resolution=32, fmap_max=32), ["num_channels", "resolution"]),
]
config_cases = pytest.mark.parametrize("config_class, kwargs, properties", CONFIG_CASES,
                                       ids=[case[0].__name__ for case in CONFIG_CASES])
# the generic PreTrainedConfig arguments every config must keep (transformers' config_common_kwargs, abridged)
COMMON_KWARGS = dict(return_dict=False, output_hidden_states=True, dtype="float16", chunk_size_feed_forward=5,
                     id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2},
                     problem_type="multi_label_classification", architectures=["SomeModel"])


@config_cases
def test_config_common_properties(config_class, kwargs, properties):
    config = config_class(**kwargs)
    assert all(hasattr(config, name) for name in properties)


@config_cases
def test_config_to_json(config_class, kwargs, properties, tmp_path):
    config = config_class(**kwargs)
    saved = json.loads(config.to_json_string())
    assert all(saved[key] == value for key, value in kwargs.items())
    config.to_json_file(tmp_path / "config.json")
    assert config_class.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()
    assert config_class.from_dict(config.to_dict()).to_dict() == config.to_dict()


@config_cases
def test_config_from_and_save_pretrained(config_class, kwargs, properties, tmp_path):
    config = config_class(**kwargs)
    config.save_pretrained(tmp_path / "test")
    assert config_class.from_pretrained(tmp_path / "test").to_dict() == config.to_dict()
    assert config_class.from_pretrained(tmp_path, subfolder="test").to_dict() == config.to_dict()
    with pytest.raises(OSError):
        config_class.from_pretrained(tmp_path / "missing")


def test_config_from_and_save_pretrained_composite(tmp_path):
    """The generator sub-config loads on its own from the composite GHFeatConfig's directory."""
    config = tiny_ghfeat_config()
    config.save_pretrained(tmp_path / "ghfeat")
    expected = config.to_dict()["generator_config"]
    loaded = StyleGANGeneratorConfig.from_pretrained(tmp_path / "ghfeat")
    loaded_dict = loaded.to_dict()
    for saved in (loaded_dict, expected):
        saved.pop("transformers_version", None)
    assert loaded_dict == expected
    assert isinstance(loaded, type(GHFeatConfig.from_pretrained(tmp_path / "ghfeat").generator_config))
    loaded.save_pretrained(tmp_path / "generator")
    assert StyleGANGeneratorConfig.from_pretrained(tmp_path / "generator").to_dict() == loaded.to_dict()


@config_cases
def test_config_with_num_labels(config_class, kwargs, properties):
    config = config_class(**kwargs, num_labels=5)
    assert len(config.id2label) == len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == len(config.label2id) == 3


@config_cases
def test_config_arguments_init(config_class, kwargs, properties):
    config = config_class(**kwargs, **COMMON_KWARGS)
    for key, value in COMMON_KWARGS.items():
        expected = torch.float16 if key == "dtype" else value
        assert getattr(config, key) == expected, key


@config_cases
def test_config_can_be_init_without_params(config_class, kwargs, properties, caplog):
    with caplog.at_level(logging.WARNING, logger="transformers.configuration_utils"):
        assert config_class() is not None and config_class(**kwargs) is not None
    assert not caplog.records


def test_config_from_pretrained_custom_kwargs():
    pytest.skip("upstream checks composite configs with a text sub-config (vocab_size); GH-Feat has none")


def test_safetensors_file_holds_every_tensor(tmp_path):
    """What save_pretrained writes is exactly the state dict (no tensor renamed or dropped)."""
    model = GHFeatModel(tiny_ghfeat_config())
    model.save_pretrained(tmp_path)
    saved = safetensors.torch.load_file(Path(tmp_path) / "model.safetensors")
    assert saved.keys() == model.state_dict().keys()

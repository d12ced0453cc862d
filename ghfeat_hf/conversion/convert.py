"""Conversion of an official GH-Feat / StyleGAN v1 TensorFlow pickle into transformers directories (``ghfeat convert``).

An encoder pickle ``(E, G, D, Gs)`` gives ``<output>/`` (a [`GHFeatModel`] with its image processor),
``<output>/stylegan-generator/`` (``Gs``: mapping + synthesis) and ``<output>/stylegan-discriminator/`` (``D``).
A generator pickle ``(G, D, Gs)`` gives the two StyleGAN directories directly under ``<output>/``.
The pickle is read by a budgeted parser ([`load_tf_pickle`]) that executes nothing; every architecture
hyper-parameter is read from the pickle's variables and checked against every variable's shape.

The output is all-or-nothing: every model is converted in memory first, then written to a temporary directory next
to ``<output>`` that is renamed into place. An existing ``<output>`` is only replaced with ``overwrite``, and a
failure leaves it as it was. A file that is not a convertible pickle raises a [`UsageError`] naming it
([`TFPickleError`], [`ConversionError`], [`OutputError`]); a failure to read or write raises an `OSError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from ..configuration_ghfeat import RESNET_UNITS, GHFeatConfig
from ..configuration_stylegan import StyleGANDiscriminatorConfig, StyleGANGeneratorConfig, feature_maps
from ..error_reporting import error_message
from ..errors import DestinationError, UsageError
from ..hub import save_ghfeat_directory, save_stylegan_directory
from ..model_card import escape_markdown, render_model_card
from ..model_names import OFFICIAL_PICKLES
from ..modeling_ghfeat import GHFeatModel
from ..modeling_stylegan import StyleGANDiscriminator, StyleGANGenerator
from .tf_pickle import TFNetwork, describe, format_static_kwargs, load_tf_pickle
from .weight_mapping import (
    ConversionError,
    build_state_dict,
    tf_name_for_discriminator,
    tf_name_for_encoder,
    tf_name_for_mapping,
    tf_name_for_synthesis,
)

logger = logging.getLogger("ghfeat.convert")
# TF variables the PyTorch models deliberately do not hold: the lod counter and the unused
# lower-resolution ToRGB/FromRGB layers of progressive growing (lod is 0 in released networks).
IGNORED_VARIABLES = re.compile(r"(^|/)(lod|ToRGB_lod[1-9]\d*/.*|FromRGB_lod[1-9]\d*/.*)$")
SUBDIRECTORIES = {"generator": "stylegan-generator", "discriminator": "stylegan-discriminator"}


class OutputError(UsageError):
    """The output path cannot be written as asked; the message names it."""


def _shape(variables: Mapping[str, np.ndarray], name: str, ndim: int, owner: str) -> tuple[int, ...]:
    """The shape of a variable the configuration is read from; ConversionError if it is missing or of another rank."""
    if name not in variables:
        raise ConversionError(f"{owner} variable '{name}' is missing: not an official GH-Feat/StyleGAN network.")
    shape = variables[name].shape
    if len(shape) != ndim:
        raise ConversionError(f"{owner} variable '{name}' has shape {list(shape)}, expected {ndim} dimensions.")
    return shape


def _check_widths(config: StyleGANGeneratorConfig | StyleGANDiscriminatorConfig, name: str) -> None:
    """Every block of the StyleGAN width schedule must have at least one feature map."""
    widths = [feature_maps(stage, config.fmap_base, config.fmap_decay, config.fmap_max)
              for stage in range(config.resolution_log2)]
    if min(widths) < 1:
        raise ConversionError(f"{name}: fmap_base/fmap_decay/fmap_max give blocks without feature maps ({widths}).")


def infer_encoder_config(encoder: TFNetwork, generator_config: StyleGANGeneratorConfig) -> GHFeatConfig:
    """Read depth and widths of the encoder from its variables (cross-checked with its static kwargs)."""
    variables = encoder.variables
    units = []
    for stage in range(1, 5):
        count = sum(1 for name in variables if re.fullmatch(rf"stage{stage}_unit\d+/Conva/weight", name))
        units.append(count)
    bottleneck = "stage1_unit1/Convc/weight" in variables
    depths = [depth for depth, layout in RESNET_UNITS.items() if layout == tuple(units) and (depth >= 50) == bottleneck]
    if not depths:
        raise ConversionError(f"Encoder units per stage {units} (bottleneck={bottleneck}) match no ResNet depth.")
    depth = depths[0]
    declared = encoder.static_kwargs.get("depth")
    if declared is not None and declared != depth:
        raise ConversionError(f"Encoder variables describe ResNet-{depth} but its static kwargs say depth={declared}.")
    stem = _shape(variables, "Conv0/weight", 4, "Encoder")
    return GHFeatConfig(
        depth=depth,
        base_width=stem[3],
        num_channels=stem[2],
        extra_stage_channels=_shape(variables, "stage5/Convc/weight", 4, "Encoder")[3],
        pyramid_channels=_shape(variables, "fpn/fconv_0/weight", 4, "Encoder")[3],
        image_size=encoder.static_kwargs.get("size", generator_config.resolution),
        generator_config=generator_config.to_dict(),
    )


def infer_generator_config(generator: TFNetwork) -> StyleGANGeneratorConfig:
    """Generator hyper-parameters from the synthesis/mapping static kwargs and the mapping variables."""
    if set(generator.components) != {"synthesis", "mapping"}:
        raise ConversionError(f"{generator.name} has components {sorted(generator.components)}, expected mapping+synthesis.")
    synthesis, mapping = generator.components["synthesis"], generator.components["mapping"]
    kwargs = {**generator.static_kwargs, **synthesis.static_kwargs}
    dense = sorted(int(m.group(1)) for name in mapping.variables if (m := re.fullmatch(r"Dense(\d+)/weight", name)))
    if not dense:
        raise ConversionError(f"{generator.name}: the mapping network has no Dense*/weight variables.")
    first = _shape(mapping.variables, "Dense0/weight", 2, "mapping")
    last = _shape(mapping.variables, f"Dense{dense[-1]}/weight", 2, "mapping")
    resolution = kwargs.get("resolution")
    if resolution is None:
        resolution = 2 ** (sum(1 for name in synthesis.variables if re.fullmatch(r"noise\d+", name)) // 2 + 1)
    config = StyleGANGeneratorConfig(
        resolution=resolution,
        num_channels=kwargs.get("num_channels", 3),
        fmap_base=kwargs.get("fmap_base", 8192),
        fmap_decay=float(kwargs.get("fmap_decay", 1.0)),
        fmap_max=kwargs.get("fmap_max", 512),
        fused_scale=kwargs.get("fused_scale", "auto"),
        latent_size=first[0],
        dlatent_size=last[1],
        mapping_layers=len(dense),
        mapping_fmaps=first[1],
        mapping_lr_multiplier=float(mapping.static_kwargs.get("mapping_lrmul", 0.01)),
    )
    _check_widths(config, generator.name)
    return config


def infer_discriminator_config(discriminator: TFNetwork) -> StyleGANDiscriminatorConfig:
    """Discriminator hyper-parameters from its static kwargs (validated against the official schema on loading)."""
    kwargs = discriminator.static_kwargs
    config = StyleGANDiscriminatorConfig(
        resolution=kwargs.get("resolution", 256),
        num_channels=kwargs.get("num_channels", 3),
        fmap_base=kwargs.get("fmap_base", 8192),
        fmap_decay=float(kwargs.get("fmap_decay", 1.0)),
        fmap_max=kwargs.get("fmap_max", 512),
        fused_scale=kwargs.get("fused_scale", "auto"),
        mbstd_group_size=kwargs.get("mbstd_group_size", 4),
        mbstd_num_features=kwargs.get("mbstd_num_features", 1),
    )
    _check_widths(config, discriminator.name)
    if config.channels_at(4) % config.mbstd_num_features:
        raise ConversionError(f"{discriminator.name}: mbstd_num_features={config.mbstd_num_features} does not divide "
                              f"the {config.channels_at(4)} feature maps of the 4x4 block.")
    return config


def _load_converted(model_cls, config, sources: list[tuple[str, Mapping[str, np.ndarray], Callable, str]]):
    """Build ``model_cls(config)`` on the meta device and fill it from TF variables.

    ``sources`` lists ``(key prefix, variables, tf_name(key), label)``; every model key must start with one
    prefix. Returns the model (fp32, eval mode) and, per label, the TF names that were not used.
    """
    with torch.device("meta"):
        model = model_cls(config)
    reference = model.state_dict()
    state, unused = {}, {}
    for prefix, variables, tf_name, label in sources:
        expected = {key: value for key, value in reference.items() if key.startswith(prefix)}
        part, used = build_state_dict(expected, variables, tf_name, label)
        state.update(part)
        unused[label] = [name for name in variables if name not in used and not IGNORED_VARIABLES.search(name)]
    missing = sorted(set(reference) - set(state))
    if missing:
        raise ConversionError(f"No TF source for {missing[:5]}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), unused


def _check_all_used(unused: Mapping[str, list[str]], allowed: re.Pattern | None = None) -> None:
    left = {label: [n for n in names if not (allowed and allowed.search(n))] for label, names in unused.items()}
    problems = [f"{label}: {names[:5]}" for label, names in left.items() if names]
    if problems:
        raise ConversionError("The pickle holds variables the official architecture does not have: " + "; ".join(problems))


def convert_generator(net: TFNetwork) -> StyleGANGenerator:
    config = infer_generator_config(net)
    synthesis = net.components["synthesis"].variables
    mapping = {**{f"mapping/{k}": v for k, v in net.components["mapping"].variables.items()}, **net.variables}
    model, unused = _load_converted(
        StyleGANGenerator,
        config,
        [("synthesis.", synthesis, tf_name_for_synthesis, "synthesis"), ("mapping.", mapping, tf_name_for_mapping, "mapping")],
    )
    _check_all_used(unused)
    return model


def convert_discriminator(net: TFNetwork) -> StyleGANDiscriminator:
    config = infer_discriminator_config(net)
    model, unused = _load_converted(
        StyleGANDiscriminator,
        config,
        [("network.", net.variables, lambda key: tf_name_for_discriminator(key, config.resolution), "D")],
    )
    _check_all_used(unused)
    return model


def convert_encoder(encoder: TFNetwork, generator: TFNetwork) -> GHFeatModel:
    """The GH-Feat model: encoder from ``E`` and StyleMod-free synthesis from ``Gs`` (as the official code does)."""
    config = infer_encoder_config(encoder, infer_generator_config(generator))
    model, unused = _load_converted(
        GHFeatModel,
        config,
        [
            ("encoder.", encoder.variables, tf_name_for_encoder, "E"),
            ("synthesis.", generator.components["synthesis"].variables, tf_name_for_synthesis, "synthesis"),
        ],
    )
    _check_all_used(unused, allowed=re.compile(r"/StyleMod/"))
    return model


def convert_networks(networks: tuple[TFNetwork, ...]) -> dict[str, tuple[torch.nn.Module, TFNetwork]]:
    """Every model of an ``(E, G, D, Gs)`` or ``(G, D, Gs)`` pickle, in memory: ``{"ghfeat"|"generator"|
    "discriminator": (model, source network)}``. Raises before anything is written if any network does not fit."""
    models = {}
    if len(networks) == 4:
        encoder, _, discriminator, generator = networks
        models["ghfeat"] = (convert_encoder(encoder, generator), encoder)
    else:
        _, discriminator, generator = networks
    models["generator"] = (convert_generator(generator), generator)
    models["discriminator"] = (convert_discriminator(discriminator), discriminator)
    return models


def _provenance(pickle_path: Path, digest: str, network: TFNetwork, domain: str) -> dict[str, str]:
    """Provenance fields for the model card, from validated network fields and escaped user/file strings only."""
    source = (
        f"Converted from the official TensorFlow pickle {escape_markdown(pickle_path.name)} (sha256 `{digest}`), "
        f"network `{network.name}` (`{network.build_func_name}`, static kwargs "
        f"`{format_static_kwargs(network.static_kwargs)}`), with `ghfeat convert` of ghfeat-hf. "
        "The pickle was read without TensorFlow and without executing any of its content."
    )
    return {"source": source, "domain": escape_markdown(domain), "source_file": pickle_path.name,
            "source_sha256": digest}


def _check_output(output: Path, pickle_path: Path, overwrite: bool) -> None:
    """An existing output is only replaced with ``overwrite``, and never when the input pickle lies inside it."""
    if not os.path.lexists(output):
        return
    if not overwrite:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    if pickle_path.resolve().is_relative_to(output.resolve()):
        raise OutputError(f"{output}: holds the input pickle {pickle_path}; choose another output")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _replace(staging: Path, output: Path) -> None:
    """Rename ``staging`` to ``output``; an existing ``output`` is moved aside first, put back if the rename fails
    and deleted once it succeeded (POSIX has no atomic exchange of directories: ``output`` is briefly absent)."""
    if not os.path.lexists(output):
        os.rename(staging, output)
        return
    previous = staging.with_suffix(".previous")
    os.rename(output, previous)
    try:
        os.rename(staging, output)
    except BaseException:
        os.rename(previous, output)
        raise
    _remove(previous)


@contextlib.contextmanager
def _staged(output: Path) -> Iterator[Path]:
    """A fresh directory next to ``output`` that replaces it when the block succeeds and is removed when it fails."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.{secrets.token_hex(6)}.tmp"
    staging.mkdir()
    try:
        yield staging
        _replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def convert(
    pickle_path: str | Path,
    output: str | Path,
    repo_id: str | None = None,
    domain: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Convert ``pickle_path`` into directories under ``output``; returns ``{"ghfeat"|"generator"|"discriminator": dir}``.

    All or nothing: ``output`` appears (or, with ``overwrite``, is replaced) only once every model is written.
    ``domain`` (the model cards' image domain) defaults to the released pickle's (``OFFICIAL_PICKLES``).
    """
    pickle_path, output = Path(pickle_path), Path(output)
    if domain is None:
        official = OFFICIAL_PICKLES.get(pickle_path.name)
        domain = official.domain if official else "the source dataset"
    _check_output(output, pickle_path, overwrite)
    digest = hashlib.sha256()
    networks = load_tf_pickle(pickle_path, digest)
    try:
        models = convert_networks(networks)
    except ValueError as error:  # ConversionError, and the configurations' own checks of the values read
        raise ConversionError(f"{pickle_path}: {error}") from error
    # the cards' usage snippets load the repo that `output` becomes (its sub-folders for the StyleGAN parts)
    card_repo = repo_id or "<org>/" + (re.sub(r"[^\w.-]", "-", output.name) or "model")
    try:
        with _staged(output) as staging:
            for kind, (model, network) in models.items():
                provenance = _provenance(pickle_path, digest.hexdigest(), network, domain)
                if kind == "ghfeat":
                    save_ghfeat_directory(model, staging, provenance=provenance, repo_id=card_repo)
                else:
                    directory = staging / SUBDIRECTORIES[kind]
                    save_stylegan_directory(model, directory, provenance=provenance)
                    render_model_card(directory, repo_id=card_repo, subfolder=directory.name)
            _check_output(output, pickle_path, overwrite)  # again: the output may have appeared in the meantime
    except OSError as error:
        raise DestinationError(f"{output}: could not be written ({error_message(error)}); an earlier {output.name} "
                               "is left as it was") from error
    for network in networks:
        logger.info("%s", describe(network))
    return {kind: output / SUBDIRECTORIES[kind] if kind in SUBDIRECTORIES else output for kind in models}

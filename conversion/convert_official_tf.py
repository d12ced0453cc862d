"""Convert an official GH-Feat / StyleGAN v1 TensorFlow pickle into transformers directories, without TensorFlow.

    python conversion/convert_official_tf.py --pickle ghfeat-encoder-ffhq-256.pkl --output ghfeat-ffhq

An encoder pickle ``(E, G, D, Gs)`` gives ``<output>/`` (a [`GHFeatModel`] with its image processor),
``<output>/stylegan-generator/`` (``Gs``: mapping + synthesis) and ``<output>/stylegan-discriminator/`` (``D``).
A generator pickle ``(G, D, Gs)`` gives the two StyleGAN directories directly under ``<output>/``.
The pickle is read by a restricted unpickler (``tf_pickle.py``) that executes nothing; every architecture
hyper-parameter is read from the pickle's variables and checked against every variable's shape.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from conversion.tf_pickle import TFNetwork, describe, load_tf_pickle  # noqa: E402
from conversion.weight_mapping import (  # noqa: E402
    ConversionError,
    build_state_dict,
    tf_name_for_discriminator,
    tf_name_for_encoder,
    tf_name_for_mapping,
    tf_name_for_synthesis,
)
from ghfeat_hf import (  # noqa: E402
    GHFeatConfig,
    GHFeatModel,
    StyleGANDiscriminator,
    StyleGANDiscriminatorConfig,
    StyleGANGenerator,
    StyleGANGeneratorConfig,
)
from ghfeat_hf.configuration_ghfeat import RESNET_UNITS  # noqa: E402
from ghfeat_hf.hub import push_to_hub, save_ghfeat_directory, save_stylegan_directory  # noqa: E402
from ghfeat_hf.model_card import render_model_card  # noqa: E402

logger = logging.getLogger("ghfeat.convert")
# TF variables the PyTorch models deliberately do not hold: the lod counter and the unused
# lower-resolution ToRGB/FromRGB layers of progressive growing (lod is 0 in released networks).
IGNORED_VARIABLES = re.compile(r"(^|/)(lod|ToRGB_lod[1-9]\d*/.*|FromRGB_lod[1-9]\d*/.*)$")


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
    try:
        stem = variables["Conv0/weight"]
        config = GHFeatConfig(
            depth=depth,
            base_width=int(stem.shape[-1]),
            num_channels=int(stem.shape[2]),
            extra_stage_channels=int(variables["stage5/Convc/weight"].shape[-1]),
            pyramid_channels=int(variables["fpn/fconv_0/weight"].shape[-1]),
            image_size=int(encoder.static_kwargs.get("size", generator_config.resolution)),
            generator_config=generator_config.to_dict(),
        )
    except KeyError as error:
        raise ConversionError(f"Encoder variable {error} is missing: not an official GH-Feat encoder.") from None
    return config


def infer_generator_config(generator: TFNetwork) -> StyleGANGeneratorConfig:
    """Generator hyper-parameters from the synthesis/mapping static kwargs and the mapping variables."""
    if set(generator.components) != {"synthesis", "mapping"}:
        raise ConversionError(f"{generator.name} has components {sorted(generator.components)}, expected mapping+synthesis.")
    synthesis, mapping = generator.components["synthesis"], generator.components["mapping"]
    kwargs = {**generator.static_kwargs, **synthesis.static_kwargs}
    dense = sorted(int(m.group(1)) for name in mapping.variables if (m := re.fullmatch(r"Dense(\d+)/weight", name)))
    if not dense:
        raise ConversionError(f"{generator.name}: the mapping network has no Dense*/weight variables.")
    first, last = mapping.variables["Dense0/weight"], mapping.variables[f"Dense{dense[-1]}/weight"]
    resolution = kwargs.get("resolution")
    if resolution is None:
        resolution = 2 ** (sum(1 for name in synthesis.variables if re.fullmatch(r"noise\d+", name)) // 2 + 1)
    return StyleGANGeneratorConfig(
        resolution=int(resolution),
        num_channels=int(kwargs.get("num_channels", 3)),
        fmap_base=int(kwargs.get("fmap_base", 8192)),
        fmap_decay=float(kwargs.get("fmap_decay", 1.0)),
        fmap_max=int(kwargs.get("fmap_max", 512)),
        latent_size=int(first.shape[0]),
        dlatent_size=int(last.shape[1]),
        mapping_layers=len(dense),
        mapping_fmaps=int(first.shape[1]),
        mapping_lr_multiplier=float(mapping.static_kwargs.get("mapping_lrmul", 0.01)),
    )


def infer_discriminator_config(discriminator: TFNetwork) -> StyleGANDiscriminatorConfig:
    kwargs = discriminator.static_kwargs
    return StyleGANDiscriminatorConfig(
        resolution=int(kwargs.get("resolution", 256)),
        num_channels=int(kwargs.get("num_channels", 3)),
        fmap_base=int(kwargs.get("fmap_base", 8192)),
        fmap_decay=float(kwargs.get("fmap_decay", 1.0)),
        fmap_max=int(kwargs.get("fmap_max", 512)),
        mbstd_group_size=int(kwargs.get("mbstd_group_size", 4)),
        mbstd_num_features=int(kwargs.get("mbstd_num_features", 1)),
    )


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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _provenance(pickle_path: Path, digest: str, network: TFNetwork, domain: str) -> dict[str, str]:
    source = (
        f"Converted from the official TensorFlow pickle `{pickle_path.name}` (sha256 `{digest}`), network "
        f"`{network.name}` (`{network.build_func_name}`, static kwargs `{network.static_kwargs}`), with "
        "`conversion/convert_official_tf.py` of ghfeat-hf. The pickle was read without TensorFlow and without "
        "executing any of its content."
    )
    return {"source": source, "domain": domain, "source_file": pickle_path.name, "source_sha256": digest}


def convert(pickle_path: str | Path, output: str | Path, repo_id: str | None = None, domain: str = "the source dataset") -> dict[str, Path]:
    """Convert ``pickle_path`` into directories under ``output``; returns ``{"ghfeat"|"generator"|"discriminator": dir}``."""
    pickle_path, output = Path(pickle_path), Path(output)
    networks = load_tf_pickle(pickle_path)
    for network in networks:
        logger.info("%s", describe(network))
    digest = sha256(pickle_path)
    written = {"generator": output / "stylegan-generator", "discriminator": output / "stylegan-discriminator"}
    if len(networks) == 4:
        encoder, _, discriminator, generator = networks
        model = convert_encoder(encoder, generator)
        save_ghfeat_directory(model, output, provenance=_provenance(pickle_path, digest, encoder, domain), repo_id=repo_id)
        written["ghfeat"] = output
    else:
        _, discriminator, generator = networks
    for kind, model, network in (
        ("generator", convert_generator(generator), generator),
        ("discriminator", convert_discriminator(discriminator), discriminator),
    ):
        save_stylegan_directory(model, written[kind], provenance=_provenance(pickle_path, digest, network, domain))
        # the card's usage snippet loads the sub-folder of the repo that `output` becomes
        render_model_card(written[kind], repo_id=repo_id or f"<org>/{output.name}", subfolder=written[kind].name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pickle", required=True, help="official ghfeat-encoder-*.pkl (4-tuple) or stylegan-*.pkl (3-tuple)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--repo-id", default=None, help="Hub repo id the model card's usage snippet refers to")
    parser.add_argument("--domain", default="the source dataset", help="image domain named in the model card, e.g. 'FFHQ faces'")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the result to this Hub repo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:  # ConversionError and the pickle errors are ValueErrors; OSError: unreadable pickle, unwritable output
        written = convert(args.pickle, args.output, args.push_to_hub or args.repo_id, args.domain)
        for kind, directory in written.items():
            logger.info("wrote %s -> %s", kind, directory)
        if args.push_to_hub:
            logger.info("uploaded -> %s", push_to_hub(args.output, args.push_to_hub))
    except (OSError, ValueError) as error:
        logger.error("error: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

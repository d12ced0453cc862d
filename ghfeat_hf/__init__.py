"""GH-Feat (Generative Hierarchical Features) for PyTorch, transformers and timm.

Importing the package registers the models with transformers' Auto classes, and makes their ``from_pretrained``
(and the models') explain a GH-Feat name that finds no model (``ghfeat-ffhq`` elsewhere: [`ghfeat_hf.model_names`]).
"""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel

from . import timm_models  # noqa: F401  (registers timm entry points)
from .configuration_ghfeat import GHFeatConfig
from .configuration_stylegan import StyleGANDiscriminatorConfig, StyleGANGeneratorConfig
from .embedded import DEFAULT_MODEL, embedded_model_path, embedded_models
from .image_processing_ghfeat import GHFeatImageProcessor
from .model_names import add_load_hints
from .modeling_ghfeat import GHFeatBackbone, GHFeatEncoder, GHFeatModel, GHFeatModelOutput
from .modeling_stylegan import (
    StyleGANDiscriminator,
    StyleGANGenerator,
    StyleGANSynthesis,
    compact_style_codes,
    tile_style_codes,
)
from .version import __version__

for _config, _model in (
    (GHFeatConfig, GHFeatModel),
    (StyleGANGeneratorConfig, StyleGANGenerator),
    (StyleGANDiscriminatorConfig, StyleGANDiscriminator),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
AutoBackbone.register(GHFeatConfig, GHFeatBackbone, exist_ok=True)
# One PIL-based processor answers both backends, so AutoImageProcessor picks it whatever backend it prefers.
AutoImageProcessor.register(
    GHFeatConfig,
    image_processor_classes={"pil": GHFeatImageProcessor, "torchvision": GHFeatImageProcessor},
    exist_ok=True,
)
add_load_hints(AutoConfig, AutoModel, AutoBackbone, AutoImageProcessor, GHFeatConfig, GHFeatModel, GHFeatBackbone,
               StyleGANGenerator, StyleGANDiscriminator)

__all__ = [
    "DEFAULT_MODEL",
    "GHFeatBackbone",
    "GHFeatConfig",
    "GHFeatEncoder",
    "GHFeatImageProcessor",
    "GHFeatModel",
    "GHFeatModelOutput",
    "StyleGANDiscriminator",
    "StyleGANDiscriminatorConfig",
    "StyleGANGenerator",
    "StyleGANGeneratorConfig",
    "StyleGANSynthesis",
    "__version__",
    "compact_style_codes",
    "embedded_model_path",
    "embedded_models",
    "tile_style_codes",
]

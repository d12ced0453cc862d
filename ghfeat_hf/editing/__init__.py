"""Image editing in GH-Feat space (the library behind ``ghfeat edit``).

GH-Feat codes are one AdaIN style code per generator layer (a tuple of ``[N, 2C_l]``), coarse layers holding
layout and shape, fine layers texture and colour. Editing them edits images:

* [`codes`]: layer selections, style mixing ([`style_mixing`]), interpolation ([`interpolate_keyframes`]), batched
  encoding and decoding;
* [`harmonization`]: paste a region of one image onto another and encode-decode the composite ([`harmonize`]);
* [`boundaries`]: attribute directions learned with a linear classifier on the codes of labelled images
  ([`learn_boundary`]), saved as safetensors, conditioned on other attributes and applied at chosen strengths
  ([`manipulate_codes`]);
* [`inversion`]: a few optimisation steps on the encoder's codes for higher fidelity ([`refine_style_codes`]);
* [`figures`]: labelled grids and GIFs of the results.

Operations take ``pixel_values`` ``[N, C, S, S]`` in [-1, 1] (what the image processor returns; C is the model's
channel count, 1 or 3) or codes, and return images ``[N, C, R, R]`` in about [-1, 1] (``processor.postprocess``
turns them into PIL images); they batch and run wherever the model is.
"""

from .boundaries import (
    BOUNDARY_METHODS,
    Boundary,
    binary_labels,
    check_boundary,
    condition_boundary,
    labelled_codes,
    learn_boundary,
    load_boundary,
    manipulate_codes,
    save_boundary,
)
from .codes import (
    concat_codes,
    decode_codes,
    describe_layers,
    encode_images,
    flatten_codes,
    interpolate_keyframes,
    interpolate_style_codes,
    mix_style_codes,
    resize_images,
    select_codes,
    shift_codes,
    style_mixing,
)
from .figures import (
    harmonization_figure,
    interpolation_figure,
    interpolation_gif_frames,
    manipulation_figure,
    mixing_figure,
    refinement_figure,
    save_gif,
)
from .harmonization import HarmonizationResult, box_mask, harmonize, image_mask, masks_at_resolution, paste_region
from .inversion import MAX_REFINEMENT_STEPS, RefinementResult, refine_style_codes

__all__ = [
    "BOUNDARY_METHODS",
    "MAX_REFINEMENT_STEPS",
    "Boundary",
    "HarmonizationResult",
    "RefinementResult",
    "binary_labels",
    "box_mask",
    "check_boundary",
    "concat_codes",
    "condition_boundary",
    "decode_codes",
    "describe_layers",
    "encode_images",
    "flatten_codes",
    "harmonization_figure",
    "harmonize",
    "image_mask",
    "interpolate_keyframes",
    "interpolate_style_codes",
    "interpolation_figure",
    "interpolation_gif_frames",
    "labelled_codes",
    "learn_boundary",
    "load_boundary",
    "manipulate_codes",
    "manipulation_figure",
    "masks_at_resolution",
    "mix_style_codes",
    "mixing_figure",
    "paste_region",
    "refine_style_codes",
    "refinement_figure",
    "resize_images",
    "save_boundary",
    "save_gif",
    "select_codes",
    "shift_codes",
    "style_mixing",
]

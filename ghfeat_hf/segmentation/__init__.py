"""Spatial GH-Feat: few-shot semantic segmentation from a handful of annotated images.

The journal version of GH-Feat reports that a spatial expansion of GH-Feat serves fine-grained segmentation from a
few annotations; its method details were not available to this project, so this package is the project's own
design. An image is encoded, the synthesis network runs on its own codes, and every chosen synthesis layer's
activation map (optionally with the encoder's FPN levels) is read as a per-pixel feature ([`features`]); a linear
or small-MLP head fitted on K annotated images labels every pixel ([`head`], [`segmenter`]); [`metrics`] gives
per-class IoU, mIoU and pixel accuracy.

```python
from ghfeat_hf.runtime import load_model
from ghfeat_hf.segmentation import (GHFeatSpatialFeatures, fit_segmenter, predict_masks, silhouette_data,
                                    silhouette_labels)

model, processor = load_model("ghfeat-fmnist32")
features = GHFeatSpatialFeatures(model, processor)
train = silhouette_data("train", max_images=50)
head = fit_segmenter(features, train.images, train.masks, silhouette_labels())
masks = next(predict_masks(features, head, train.images[:8]))   # [8, 32, 32] labels
```
"""

from .data import SegmentationData, dataset_data, folder_data, silhouette_data
from .features import (
    GHFeatSpatialFeatures,
    PixelPositionFeatures,
    SpatialFeatures,
    gather_pixels,
    random_init_spatial_model,
    upsample,
)
from .head import FitSettings, HeadConfig, SegmentationHead, fit_head, load_head, save_head
from .labels import (
    LabelSet,
    colorize,
    default_palette,
    fashion_mnist_silhouettes,
    load_label_set,
    overlay,
    read_mask,
    silhouette_labels,
)
from .metrics import confusion_matrix, mean_iou, per_class_iou, pixel_accuracy
from .segmenter import fit_segmenter, predict_masks

__all__ = [
    "FitSettings",
    "GHFeatSpatialFeatures",
    "HeadConfig",
    "LabelSet",
    "PixelPositionFeatures",
    "SegmentationData",
    "SegmentationHead",
    "SpatialFeatures",
    "colorize",
    "confusion_matrix",
    "dataset_data",
    "default_palette",
    "fashion_mnist_silhouettes",
    "fit_head",
    "fit_segmenter",
    "folder_data",
    "gather_pixels",
    "load_head",
    "load_label_set",
    "mean_iou",
    "overlay",
    "per_class_iou",
    "pixel_accuracy",
    "predict_masks",
    "random_init_spatial_model",
    "read_mask",
    "save_head",
    "silhouette_data",
    "silhouette_labels",
    "upsample",
]

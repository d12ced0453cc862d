"""Small labelled `datasets` built from real bundled photos (scikit-image) for the evaluation tests."""

import datasets
import numpy as np
import PIL.Image
from skimage import data as skdata

from ghfeat_hf import GHFeatImageProcessor

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "immunohistochemistry", "colorwheel",
          "brick", "grass", "gravel", "clock", "text", "page", "moon", "hubble_deep_field")
# three named points on the astronaut photo (512x512): her eyes and the flag's upper left corner
ASTRONAUT_POINTS = {"left_eye": (242.0, 100.0), "right_eye": (195.0, 100.0), "flag": (410.0, 50.0)}


# The evaluation tests' model is conftest's ``tiny_model(seed=MODEL_SEED)`` (32 px) with a 32 px processor. The seed
# is not 0, the random-init baseline's seed, so the two differ.
MODEL_SEED = 1


def tiny_processor() -> GHFeatImageProcessor:
    """The processor of the evaluation tests' tiny 32 px model."""
    return GHFeatImageProcessor(size={"height": 32, "width": 32})


def _photo(name: str) -> PIL.Image.Image:
    array = getattr(skdata, name)()
    return PIL.Image.fromarray(array).convert("RGB")


def lfw_faces() -> datasets.Dataset:
    """`lfw_subset`: 100 faces then 100 non-faces, 25x25 grayscale, label 1 = face; shuffled (seed 0)."""
    faces = skdata.lfw_subset()
    images = [PIL.Image.fromarray((face * 255).round().astype(np.uint8)) for face in faces]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["other", "face"])})
    faces = datasets.Dataset.from_dict({"image": images, "label": [1] * 100 + [0] * 100}, features=features)
    return faces.shuffle(seed=0)


def augment(photo: PIL.Image.Image, rng: np.random.Generator, size: int) -> tuple[PIL.Image.Image, tuple]:
    """A random square crop (70-95% of the short side), a random horizontal flip and a brightness change of up
    to 15%, resized to `size`. Returns the image and `(left, top, side, flipped)`."""
    short = min(photo.size)
    side = int(short * rng.uniform(0.7, 0.95))
    left = int(rng.integers(0, photo.width - side + 1))
    top = int(rng.integers(0, photo.height - side + 1))
    image = photo.crop((left, top, left + side, top + side)).resize((size, size), PIL.Image.Resampling.BILINEAR)
    flipped = bool(rng.random() < 0.5)
    if flipped:
        image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float64) * rng.uniform(0.85, 1.15)
    return PIL.Image.fromarray(array.clip(0, 255).astype(np.uint8)), (left, top, side, flipped)


def augmented_copies(num_photos: int = 8, copies: int = 6, size: int = 32, seed: int = 0) -> datasets.Dataset:
    """`copies` augmented versions of each of `num_photos` photos; `label` = the photo."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(PHOTOS[:num_photos]):
        photo = _photo(name)
        for _ in range(copies):
            images.append(augment(photo, rng, size)[0])
            labels.append(label)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(PHOTOS[:num_photos]))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def verification_pairs(
    num_photos: int = 10, pairs_per_kind: int = 40, size: int = 32, seed: int = 0
) -> datasets.Dataset:
    """Pairs of augmented photos: `same` pairs are two augmentations of one photo, the others of two photos."""
    rng = np.random.default_rng(seed)
    photos = [_photo(name) for name in PHOTOS[:num_photos]]
    rows = {"image_a": [], "image_b": [], "same": []}
    for same in [True] * pairs_per_kind + [False] * pairs_per_kind:
        first = int(rng.integers(num_photos))
        second = first if same else int((first + rng.integers(1, num_photos)) % num_photos)
        rows["image_a"].append(augment(photos[first], rng, size)[0])
        rows["image_b"].append(augment(photos[second], rng, size)[0])
        rows["same"].append(same)
    features = datasets.Features({"image_a": datasets.Image(), "image_b": datasets.Image(),
                                  "same": datasets.Value("bool")})
    return datasets.Dataset.from_dict(rows, features=features)


def astronaut_landmarks(count: int = 60, size: int | tuple[int, int] = 32, seed: int = 0) -> datasets.Dataset:
    """Square crops of the astronaut photo resized to `size` (`(width, height)` stretches them) with the named
    points moved along (`<name>_x`, `<name>_y` columns, pixels of the stored image). Crops keep every point inside
    and are not flipped."""
    rng = np.random.default_rng(seed)
    photo = _photo("astronaut")
    points = np.array(list(ASTRONAUT_POINTS.values()))
    width, height = (size, size) if isinstance(size, int) else size
    rows = {"image": [], **{f"{name}_{axis}": [] for name in ASTRONAUT_POINTS for axis in "xy"}}
    while len(rows["image"]) < count:
        side = int(rng.uniform(0.8, 1.0) * photo.width)
        left, top = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
        moved = (points - [left, top]) * [width / side, height / side]
        if not ((moved >= 0) & (moved < [width, height])).all():
            continue
        crop = photo.crop((left, top, left + side, top + side))
        rows["image"].append(crop.resize((width, height), PIL.Image.Resampling.BILINEAR))
        for (name, _), (x, y) in zip(ASTRONAUT_POINTS.items(), moved):
            rows[f"{name}_x"].append(float(x))
            rows[f"{name}_y"].append(float(y))
    return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())

"""Attribute boundaries (ghfeat_hf.editing.boundaries): learning, files, checks, conditioning, manipulation."""

import numpy as np
import pytest
import torch

from ghfeat_hf.editing import (
    Boundary,
    binary_labels,
    check_boundary,
    condition_boundary,
    decode_codes,
    encode_images,
    learn_boundary,
    load_boundary,
    manipulate_codes,
    save_boundary,
)
from ghfeat_hf.errors import UsageError
from ghfeat_hf.runtime import model_fingerprint
from tests.editing_helpers import brightness_dataset


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model()


def test_binary_labels():
    assert binary_labels([0, 1, 1, 0]).tolist() == [False, True, True, False]
    assert binary_labels([True, False]).tolist() == [True, False]
    assert binary_labels([5, 3, 9, 7], positive=["5", "7", 9]).tolist() == [True, False, True, True]
    names = ["shirt", "sandal", "boot"]
    assert binary_labels([0, 1, 2], positive=["sandal", "2"], names=names).tolist() == [False, True, True]
    assert binary_labels(["cat", "dog"], positive=["dog"]).tolist() == [False, True]
    with pytest.raises(UsageError, match="give the positive values"):
        binary_labels([0, 1, 2])
    with pytest.raises(UsageError, match="unknown positive values"):
        binary_labels([0, 1], positive=["sneaker"], names=names)


def test_boundary_on_encoded_images_separates_held_out_brightness(model, tmp_path):
    pixel_values, labels = brightness_dataset(400)
    codes = encode_images(model, pixel_values, batch_size=100)
    boundary = learn_boundary(codes, labels, attribute="bright", test_fraction=0.25, model=model)
    assert boundary.accuracy > 0.9 and boundary.balanced_accuracy > 0.9
    assert (boundary.num_train, boundary.num_test) == (300, 100)
    assert boundary.normal.shape == (sum(model.config.style_dims),)
    torch.testing.assert_close(boundary.normal.norm(), torch.tensor(1.0))
    distance = boundary.distance(codes)  # the normal points to the attribute
    assert distance[labels].mean() > 0 > distance[~labels].mean()
    assert boundary.model_fingerprint == model_fingerprint(model)

    path = tmp_path / "bright.safetensors"
    save_boundary(boundary, path)
    (tmp_path / "plain.txt").write_text("an ordinary new file")
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
    loaded = load_boundary(path)
    assert torch.equal(loaded.normal, boundary.normal)
    for name in ("layers", "style_dims", "attribute", "offset", "std", "accuracy", "balanced_accuracy", "method",
                 "num_train", "num_test", "model_fingerprint", "conditioned_on"):
        assert getattr(loaded, name) == getattr(boundary, name), name

    logistic = learn_boundary(codes, labels, [4, 5, 6, 7], method="logistic", test_fraction=0.25)
    assert logistic.layers == (4, 5, 6, 7) and logistic.style_dims == (32, 32, 16, 16)
    assert logistic.accuracy > 0.85


def test_moving_along_a_brightness_boundary_brightens_the_decoded_image(model):
    # InterFaceGAN's recipe on codes: sample codes, decode, label the images by brightness, fit the boundary.
    # The last layer is chosen because there the property is structural: its AdaIN input has zero mean per
    # channel (instance norm), so the image mean is exactly linear in that layer's bias codes; a correctly learned
    # and applied normal must therefore brighten every image, strictly monotonically.
    config = model.config
    last = config.num_layers - 1
    generator = torch.Generator().manual_seed(2)
    codes = tuple(torch.randn(400, width, generator=generator) for width in config.style_dims)
    brightness = decode_codes(model, codes, batch_size=200).mean(dim=(1, 2, 3))
    labels = brightness > brightness.median()
    boundary = learn_boundary(codes, labels, [last], attribute="brightness", test_fraction=0.25)
    assert boundary.accuracy > 0.9
    strengths = [-2.0, -1.0, 0.0, 1.0, 2.0]
    probes = tuple(code[:6] for code in codes)
    moved = manipulate_codes(probes, boundary, strengths)
    assert all(torch.equal(step[layer], probes[layer]) for step in moved for layer in range(last))
    assert all(torch.equal(a, b) for a, b in zip(moved[2], probes))  # strength 0 is the identity
    means = torch.stack([decode_codes(model, step).mean(dim=(1, 2, 3)) for step in moved], dim=1)  # [6, 5]
    assert (means.diff(dim=1) > 0).all()
    unit = decode_codes(model, manipulate_codes(probes, boundary, [1.0])[0]) - decode_codes(model, probes)
    torch.testing.assert_close(means[:, 4] - means[:, 2], 2 * unit.mean(dim=(1, 2, 3)), rtol=1e-3, atol=1e-5)


def test_layer_restricted_manipulation_and_errors():
    boundary = Boundary(normal=torch.tensor([0.6, 0.0, 0.0, 0.8]), layers=(1, 3), style_dims=(2, 2), std=2.0)
    codes = tuple(torch.zeros(1, 2) for _ in range(4))
    (full,) = manipulate_codes(codes, boundary, [1.0])
    assert torch.equal(full[1], torch.tensor([[1.2, 0.0]])) and torch.equal(full[3], torch.tensor([[0.0, 1.6]]))
    (only_3,) = manipulate_codes(codes, boundary, [1.0], layers=[3])
    assert torch.equal(only_3[1], codes[1]) and torch.equal(only_3[3], full[3])
    with pytest.raises(UsageError, match="not covered by the boundary"):
        manipulate_codes(codes, boundary, [1.0], layers=[0])
    labels = np.array([True] * 10 + [False])
    with pytest.raises(UsageError, match="at least 2 codes of each class"):
        learn_boundary(tuple(torch.randn(11, 2) for _ in range(4)), labels)
    with pytest.raises(UsageError, match="unknown boundary method"):
        learn_boundary(codes, [True], method="forest")


def test_conditioning_projects_out_the_other_directions():
    generator = torch.Generator().manual_seed(0)
    normals = [torch.nn.functional.normalize(torch.randn(6, generator=generator), dim=0) for _ in range(3)]
    primary, *others = (Boundary(normal=n, layers=(0, 1), style_dims=(4, 2), attribute=name, std=1.5)
                        for n, name in zip(normals, ("smile", "age", "glasses")))
    conditioned = condition_boundary(primary, others)
    assert conditioned.conditioned_on == ("age", "glasses") and conditioned.std == 1.5
    torch.testing.assert_close(conditioned.normal.norm(), torch.tensor(1.0))
    for other in others:
        assert abs(float(conditioned.normal @ other.normal)) < 1e-6
    assert float(conditioned.normal @ primary.normal) > 0
    assert condition_boundary(primary, []) is primary
    with pytest.raises(UsageError, match="within the conditioning directions"):
        condition_boundary(primary, [primary])
    with pytest.raises(UsageError, match="cover different layers"):
        condition_boundary(primary, [Boundary(normal=normals[1], layers=(2, 3), style_dims=(4, 2))])


def test_check_boundary_against_the_model(model, tmp_path):
    style_dims = model.config.style_dims
    mine = Boundary(normal=torch.ones(style_dims[7]), layers=(7,), style_dims=(style_dims[7],),
                    model_fingerprint=model_fingerprint(model))
    check_boundary(mine, model)
    other = Boundary(normal=mine.normal, layers=(7,), style_dims=mine.style_dims, model_fingerprint="0123456789abcdef")
    with pytest.raises(UsageError, match="learned with another model"):
        check_boundary(other, model)
    check_boundary(other, model, allow_other_model=True)
    for layers, dims in (((9,), (style_dims[7],)), ((7,), (64,))):
        with pytest.raises(UsageError, match="does not have"):
            check_boundary(Boundary(normal=torch.ones(dims[0]), layers=layers, style_dims=dims), model,
                           allow_other_model=True)
    not_a_boundary = tmp_path / "codes.safetensors"
    from safetensors.torch import save_file

    save_file({"normal": torch.ones(3)}, str(not_a_boundary))
    with pytest.raises(UsageError, match="not a GH-Feat boundary"):
        load_boundary(not_a_boundary)
    with pytest.raises(UsageError, match="cannot read a boundary"):
        load_boundary(tmp_path / "missing.safetensors")


def test_dependent_conditions_count_once_and_a_conditioned_boundary_has_no_offset(tmp_path):
    generator = torch.Generator().manual_seed(1)
    n, u, v = (torch.nn.functional.normalize(torch.randn(6, generator=generator), dim=0) for _ in range(3))
    primary = Boundary(normal=n, layers=(0, 1), style_dims=(4, 2), attribute="smile", offset=0.3, std=1.5)
    age, glasses = (Boundary(normal=d, layers=(0, 1), style_dims=(4, 2), attribute=a)
                    for d, a in ((u, "age"), (v, "glasses")))
    mixed = Boundary(normal=torch.nn.functional.normalize(u + v, dim=0), layers=(0, 1), style_dims=(4, 2))
    once = condition_boundary(primary, [age])
    torch.testing.assert_close(condition_boundary(primary, [age, age]).normal, once.normal)
    torch.testing.assert_close(condition_boundary(primary, [age, glasses, mixed]).normal,
                               condition_boundary(primary, [age, glasses]).normal)

    assert once.offset is None and once.std == primary.std
    codes = tuple(torch.randn(3, width, generator=generator) for width in (4, 2))
    with pytest.raises(UsageError, match="no decision offset"):
        once.distance(codes)
    (moved,) = manipulate_codes(codes, once, [2.0])  # strength 2 moves as far as unconditioned: 2 * std
    step = torch.cat([moved[0] - codes[0], moved[1] - codes[1]], dim=1)
    torch.testing.assert_close(step.norm(dim=1), torch.full((3,), 2 * 1.5))
    path = tmp_path / "conditioned.safetensors"
    save_boundary(once, path)
    loaded = load_boundary(path)
    assert loaded.offset is None and loaded.conditioned_on == ("age",)


def test_too_few_codes_for_a_held_out_split():
    for labels, needed in (([True, True, False, False], 4), ([True, True, False, False, False], 5)):
        codes = tuple(torch.randn(len(labels), 4) for _ in range(2))
        with pytest.raises(UsageError, match=f"too few to hold out 0.2 of them.*at least {needed} codes of each"):
            learn_boundary(codes, labels)
        balanced = np.arange(2 * needed) < needed  # what the message asks for is enough
        learn_boundary(tuple(torch.randn(2 * needed, 4) for _ in range(2)), balanced)
        learn_boundary(codes, labels, test_fraction=0)  # nothing held out: 2 of each class suffice
    labels = np.array([True] * 5 + [False] * 7)
    boundary = learn_boundary(tuple(torch.randn(12, 4) for _ in range(2)), labels)
    assert boundary.num_test == 3 and boundary.balanced_accuracy is not None


def test_load_boundary_refuses_incomplete_or_inconsistent_files(tmp_path):
    from safetensors.torch import load_file, safe_open, save_file

    path = tmp_path / "good.safetensors"
    save_boundary(Boundary(normal=torch.ones(6) / 6**0.5, layers=(0, 1), style_dims=(4, 2)), path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    normal = load_file(str(path))["normal"]
    broken = tmp_path / "broken.safetensors"
    save_file({"normal": normal}, str(broken), metadata={k: v for k, v in metadata.items() if k != "std"})
    with pytest.raises(UsageError, match="lacks the metadata 'std'"):
        load_boundary(broken)
    save_file({"normal": normal}, str(broken), metadata={**metadata, "layers": "[0, 1"})
    with pytest.raises(UsageError, match="malformed metadata"):
        load_boundary(broken)
    save_file({"normal": normal[:5].contiguous()}, str(broken), metadata=metadata)
    with pytest.raises(UsageError, match=r"inconsistent: a normal of shape \(5,\) for layers \[0, 1\]"):
        load_boundary(broken)

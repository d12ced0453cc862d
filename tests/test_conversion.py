"""The converter against the official TensorFlow computation (fixtures in ../shared/fixtures/official-tf).

The official-format pickle is regenerated in a temporary directory, converted with the real converter,
loaded through ``AutoModel.from_pretrained`` and compared with every reference array. The relative errors
are printed at the end of the run and written to ``parity_report.json`` in the temporary directory.
"""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel

from conversion.convert_official_tf import main
from ghfeat_hf import GHFeatImageProcessor, GHFeatModel, StyleGANDiscriminator, StyleGANGenerator, hub, tile_style_codes
from ghfeat_hf.conversion.convert import convert_encoder
from ghfeat_hf.conversion.tf_pickle import load_tf_pickle
from ghfeat_hf.conversion.weight_mapping import ConversionError
from tests.conftest import OFFICIAL_FIXTURES, PARITY_LINES
from tests.official_pickles import Payload, from_tf_network, write

TOLERANCE = 1e-4
REFERENCES = sorted(OFFICIAL_FIXTURES.glob("reference_depth*_seed*.npz"))
pytestmark = pytest.mark.skipif(not REFERENCES, reason=f"no official references under {OFFICIAL_FIXTURES}")


def relative_error(output, reference) -> float:
    output = np.asarray(output, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert output.shape == reference.shape
    return float(np.linalg.norm(output - reference) / np.linalg.norm(reference))


def make_pickle(directory, depth: int, seed: int):
    path = directory / f"fixture_depth{depth}_seed{seed}.pkl"
    subprocess.run(
        [sys.executable, str(OFFICIAL_FIXTURES / "make_fixture.py"), "--seed", str(seed), "--depth", str(depth),
         "--out", str(path)],
        check=True, capture_output=True, cwd=directory,
    )
    return path


def official_outputs(model: GHFeatModel, generator: StyleGANGenerator, discriminator, inputs, reference):
    """Every array the fixtures hold, computed by our converted models."""
    taps, encoder = {}, model.encoder

    def keep(name, index=None):
        return lambda module, args, out: taps.__setitem__(name, (out if index is None else out[index])[0])

    for name, module in [("conv0_out", encoder.stem.conv), ("res1", encoder.stem.pool), ("res6", encoder.extra_stage)]:
        module.register_forward_hook(keep(name))
    for index, stage in enumerate(encoder.stages):
        stage.register_forward_hook(keep(f"res{index + 2}"))
    for index, level in enumerate(("high", "mid", "low")):
        encoder.heads[index].linear.register_forward_hook(keep(f"head_{level}_prebn"))
    for index in range(3):
        encoder.fpn.register_forward_hook(keep(f"fpn_out{index}", index))
        encoder.alignment.register_forward_hook(keep(f"sam_out{index}", index))
    faces, recs = torch.from_numpy(inputs["faces"]), torch.from_numpy(reference["rec"])
    with torch.no_grad():
        codes = model(pixel_values=torch.from_numpy(inputs["images"])).last_hidden_state
        z = torch.from_numpy(inputs["z"])
        w = generator.mapping(z)
        y = tile_style_codes(generator.style_codes(w), codes.shape[-1])
        outputs = {
            "codes": codes,
            "rec": model.decode(codes),
            "w": w,
            "img_orig": generator(z),
            "y": y,
            "img_y": model.decode(y),
            "d_faces": discriminator(faces),
            "d_rec_faces": discriminator(recs[:4]),
            "d_rec_noise": discriminator(recs[4:]),
            "d_orig_G": discriminator(torch.from_numpy(reference["img_orig"])),
            "d_faces_then_rec_faces": discriminator(torch.cat([faces, recs[:4]])),
        }
    outputs.update({f"tap0_{name}": value for name, value in taps.items()})
    return outputs


@pytest.fixture(scope="module", params=REFERENCES, ids=lambda path: path.stem)
def converted(request, tmp_path_factory):
    depth, seed = map(int, re.search(r"depth(\d+)_seed(\d+)", request.param.name).groups())
    directory = tmp_path_factory.mktemp(f"official_depth{depth}_seed{seed}")
    pickle_path = make_pickle(directory, depth, seed)
    output = directory / "converted"
    assert main(["--pickle", str(pickle_path), "--output", str(output)]) == 0
    yield {"depth": depth, "pickle": pickle_path, "output": output, "reference": np.load(request.param)}
    pickle_path.unlink()


@pytest.fixture(scope="module")
def parity(converted):
    output = converted["output"]
    model = AutoModel.from_pretrained(output)
    generator = AutoModel.from_pretrained(output / "stylegan-generator")
    discriminator = AutoModel.from_pretrained(output / "stylegan-discriminator")
    assert (type(model), type(generator), type(discriminator)) == (GHFeatModel, StyleGANGenerator, StyleGANDiscriminator)
    inputs, reference = np.load(OFFICIAL_FIXTURES / "inputs.npz"), converted["reference"]
    outputs = official_outputs(model, generator, discriminator, inputs, reference)
    errors = {key: relative_error(outputs[key], reference[key]) for key in reference.files}
    report = output.parent / "parity_report.json"
    report.write_text(json.dumps(errors, indent=2))
    name = f"depth {converted['depth']}"
    PARITY_LINES.append(f"{name}: worst {max(errors.values()):.2e} over {len(errors)} arrays (report: {report})")
    PARITY_LINES.extend(f"  {key:<26} {value:.2e}" for key, value in errors.items())
    return errors, model


def test_every_reference_array_matches(parity):
    errors, _ = parity
    expected = {"codes", "rec", "w", "img_orig", "y", "img_y", "d_faces", "d_rec_faces", "d_rec_noise", "d_orig_G",
                "d_faces_then_rec_faces", "tap0_conv0_out", "tap0_res1", "tap0_res6", "tap0_fpn_out0", "tap0_sam_out2",
                "tap0_head_high_prebn", "tap0_head_mid_prebn", "tap0_head_low_prebn"}
    assert expected <= set(errors)
    failing = {key: value for key, value in errors.items() if not value < TOLERANCE}
    assert not failing, f"relative errors above {TOLERANCE}: {failing}"


def test_converted_model_shape_is_read_from_pickle(parity, converted):
    _, model = parity
    assert model.config.depth == converted["depth"]
    expected = 151_766_976 if converted["depth"] == 50 else 124_871_872
    assert sum(p.numel() for p in model.encoder.parameters()) == expected


def test_automodel_loads_offline_in_a_fresh_process(converted):
    code = ("import ghfeat_hf, transformers; "
            f"m = transformers.AutoModel.from_pretrained({str(converted['output'])!r}); print(type(m).__name__)")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip().splitlines()[-1] == "GHFeatModel"


def test_directory_has_processor_and_model_cards(converted):
    output = converted["output"]
    processor = AutoImageProcessor.from_pretrained(output)
    assert isinstance(processor, GHFeatImageProcessor)
    inputs = np.load(OFFICIAL_FIXTURES / "inputs.npz")
    images = list(inputs["faces_uint8"].transpose(0, 2, 3, 1))  # HWC uint8, already 256 px
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(pixel_values.numpy(), inputs["faces"], atol=1e-6)
    for directory in (output, output / "stylegan-generator", output / "stylegan-discriminator"):
        card = (directory / "README.md").read_text()
        assert card.startswith("---\n") and "library_name: transformers" in card and "gan-inversion" in card
        assert "sha256" in card and converted["pickle"].name in card
    card = (output / "stylegan-generator" / "README.md").read_text()  # a sub-folder of the repo <org>/converted
    assert 'StyleGANGenerator.from_pretrained("<org>/converted", subfolder="stylegan-generator")' in card
    assert "pipeline_tag: image-feature-extraction" in (output / "README.md").read_text()


@pytest.fixture(scope="module")
def networks(converted):
    return load_tf_pickle(converted["pickle"])


def test_generator_pickle_converts_to_stylegan_directories(networks, converted, tmp_path, monkeypatch, recording_api):
    _, G, D, Gs = networks
    path = write(tmp_path / "stylegan.pkl", tuple(from_tf_network(net) for net in (G, D, Gs)))
    api = recording_api
    monkeypatch.setattr(hub, "HfApi", lambda token=None: api)
    assert main(["--pickle", str(path), "--output", str(tmp_path / "out"), "--push-to-hub", "org/stylegan"]) == 0
    assert not (tmp_path / "out" / "config.json").exists()
    assert Path(api.calls[-1][2]["folder_path"]).name == "out"
    for part, class_name in (("generator", "StyleGANGenerator"), ("discriminator", "StyleGANDiscriminator")):
        card = (tmp_path / "out" / f"stylegan-{part}" / "README.md").read_text()
        assert f'{class_name}.from_pretrained("org/stylegan", subfolder="stylegan-{part}")' in card
    generator = AutoModel.from_pretrained(tmp_path / "out" / "stylegan-generator")
    discriminator = AutoModel.from_pretrained(tmp_path / "out" / "stylegan-discriminator")
    inputs, reference = np.load(OFFICIAL_FIXTURES / "inputs.npz"), converted["reference"]
    with torch.no_grad():
        assert relative_error(generator(torch.from_numpy(inputs["z"])), reference["img_orig"]) < TOLERANCE
        assert relative_error(discriminator(torch.from_numpy(inputs["faces"])), reference["d_faces"]) < TOLERANCE


def test_mismatched_pickle_is_refused_with_the_first_mismatches(networks):
    E, _, _, Gs = networks
    broken = from_tf_network(E).state  # a copy we can edit without touching the shared networks
    variables = dict(broken["variables"])
    variables["fpn/fconv_1/weight"] = np.zeros((3, 3, 512, 256), np.float32)
    del variables["fuse_conv_2/bias"]
    E_broken = type(E)(E.name, E.version, E.build_func_name, E.static_kwargs, {}, variables)
    with pytest.raises(ConversionError) as error:
        convert_encoder(E_broken, Gs)
    message = str(error.value)
    assert "fpn/fconv_1/weight" in message and "[3, 3, 512, 256]" in message and "fuse_conv_2/bias" in message


def test_unknown_variable_is_refused(networks):
    E, _, _, Gs = networks
    variables = {**E.variables, "stage9_unit1/Conva/weight": np.zeros((1, 1, 2, 2), np.float32)}
    E_extra = type(E)(E.name, E.version, E.build_func_name, E.static_kwargs, {}, variables)
    with pytest.raises(ConversionError, match="stage9_unit1"):
        convert_encoder(E_extra, Gs)


def test_converter_refuses_code_in_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "evil.pkl", (Payload(os.system, f"touch {marker}"),))
    code = main(["--pickle", str(path), "--output", str(tmp_path / "out")])
    assert code == 2 and not marker.exists() and not (tmp_path / "out").exists()
    result = subprocess.run(
        [sys.executable, "conversion/convert_official_tf.py", "--pickle", str(path), "--output", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode == 2 and "system" in result.stderr and not marker.exists()


def _torch_checkpoint(path):
    torch.save({"weight": torch.zeros(2)}, path)


@pytest.mark.parametrize("make_file, status, message", [
    (None, 1, "No such file or directory: {path}"),  # the system refused: an OSError's "<what>: <file>"
    (lambda path: path.write_bytes(b""), 2, "{path}: the file is empty"),
    (lambda path: path.write_bytes(pickle.dumps((1, 2, 3), protocol=4)[:-3]), 2,
     "{path}: not a readable TF network pickle"),
    (lambda path: path.write_text("hello world\n"), 2, "{path}: not a readable TF network pickle"),
    (_torch_checkpoint, 2, "{path}: a PyTorch/zip checkpoint, not a TF network pickle"),
], ids=["missing", "empty", "truncated", "text", "torch.save"])
def test_converter_reports_unreadable_files_in_one_line(tmp_path, capsys, make_file, status, message):
    path = tmp_path / "net.pkl"
    if make_file:
        make_file(path)
    assert main(["--pickle", str(path), "--output", str(tmp_path / "out")]) == status
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ghfeat convert: error: " + message.format(path=path))
    assert not (tmp_path / "out").exists()


GAN_KEYS = ("w", "img_orig", "y", "img_y", "d_faces", "d_rec_faces", "d_rec_noise", "d_orig_G", "d_faces_then_rec_faces")


def test_depth18_pickle_converts_with_basic_blocks(tmp_path):
    """No TF reference exists for the depth-18 encoder; the GAN weights depend only on the seed, so the
    depth-50 references still check G and D, and the encoder is checked for structure and sanity."""
    reference_path = OFFICIAL_FIXTURES / "reference_depth50_seed20261128.npz"
    pickle_path = make_pickle(tmp_path, 18, 20261128)
    assert main(["--pickle", str(pickle_path), "--output", str(tmp_path / "out")]) == 0
    pickle_path.unlink()
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert model.config.depth == 18 and not model.config.bottleneck
    assert sum(p.numel() for p in model.encoder.parameters()) == 124_871_872
    generator = AutoModel.from_pretrained(tmp_path / "out" / "stylegan-generator")
    discriminator = AutoModel.from_pretrained(tmp_path / "out" / "stylegan-discriminator")
    inputs, reference = np.load(OFFICIAL_FIXTURES / "inputs.npz"), np.load(reference_path)
    outputs = official_outputs(model, generator, discriminator, inputs, reference)
    for key in GAN_KEYS:
        assert relative_error(outputs[key], reference[key]) < TOLERANCE, key
    codes = outputs["codes"]
    assert codes.shape == (6, 14, 1024) and torch.isfinite(codes).all() and 0.05 < codes.std() < 50


def test_timm_features_only_on_the_converted_directory(parity, converted):
    """timm reads the converter's model.safetensors directly (no remapping) and returns the pyramid levels."""
    import timm

    _, model = parity
    name = f"ghfeat_resnet{converted['depth']}_256"
    features = timm.create_model(name, pretrained=True, features_only=True, out_indices=(0, 1, 2),
                                 pretrained_cfg_overlay=dict(file=str(converted["output"] / "model.safetensors")))
    pixels = torch.from_numpy(np.load(OFFICIAL_FIXTURES / "inputs.npz")["images"][:2])
    with torch.no_grad():
        levels = features.eval()(pixels)
        expected = model(pixel_values=pixels).pyramid_features
    assert [tuple(level.shape[1:]) for level in levels] == [(512, 16, 16), (512, 8, 8), (512, 4, 4)]
    for level, reference in zip(levels, expected):
        torch.testing.assert_close(level, reference, rtol=0, atol=1e-6)


def test_every_loader_matches_on_the_converted_directory(parity, converted, tmp_path, run_python):
    """Backbone, pipeline (pooled and not), timm from a populated Hub cache and trust_remote_code without the
    package all give GHFeatModel's outputs on the converter's own directory."""
    from transformers import pipeline

    from ghfeat_hf.hub import load_backbone

    _, model = parity
    output = converted["output"]
    pixels = torch.from_numpy(np.load(OFFICIAL_FIXTURES / "inputs.npz")["images"][:1])
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    with torch.no_grad():
        expected = model(pixel_values=pixels)
        maps = load_backbone(output, out_indices=[0, 1, 2])(pixels).feature_maps
    for level, reference in zip(maps, expected.pyramid_features):
        torch.testing.assert_close(level, reference, rtol=0, atol=1e-6)

    extractor = pipeline("image-feature-extraction", model=str(output))
    assert (extractor.image_processor.size.height, extractor.image_processor.size.width) == (256, 256)
    image = extractor.image_processor.postprocess(pixels)[0]
    pixel_values = extractor.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        reference = model(pixel_values=pixel_values)
    torch.testing.assert_close(extractor(image, return_tensors=True), reference.last_hidden_state, rtol=0, atol=1e-6)
    torch.testing.assert_close(extractor(image, pool=True, return_tensors=True), reference.pooler_output,
                               rtol=0, atol=1e-6)

    repo = "ghfeat-test/converted"
    snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in output.iterdir():  # links, not copies: the weights are 680 MB
        (snapshot / path.name).symlink_to(path)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    pixels_file = str(tmp_path / "pixels.npy")
    hub = run_python(f"""
        import json, numpy as np, torch, timm, ghfeat_hf
        from transformers import AutoModel
        pixels = torch.from_numpy(np.load({pixels_file!r}))
        with torch.no_grad():
            codes = AutoModel.from_pretrained({repo!r})(pixel_values=pixels).last_hidden_state
            timm_codes = timm.create_model("ghfeat_resnet50_256", pretrained=True,
                                           pretrained_cfg_overlay=dict(hf_hub_id={repo!r})).eval().forward_features(pixels)
        print(json.dumps({{"codes": codes.tolist(), "timm": timm_codes.tolist()}}))
    """, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    remote = run_python(f"""
        import json, sys
        sys.modules["ghfeat_hf"] = None
        import numpy as np, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(output)!r}, trust_remote_code=True)
        with torch.no_grad():
            codes = model(pixel_values=torch.from_numpy(np.load({pixels_file!r}))).last_hidden_state
        print(json.dumps({{"module": type(model).__module__, "codes": codes.tolist()}}))
    """)
    assert "transformers_modules" in remote["module"]
    for codes in (hub["codes"], hub["timm"], remote["codes"]):
        np.testing.assert_allclose(np.array(codes), expected.last_hidden_state.numpy(), rtol=0, atol=1e-6)


def test_the_python_line_loads_the_official_format_fixture_after_ghfeat_convert(converted, tmp_path,
                                                                                 run_acceptance_line):
    """The README's promise on the full-size official-format fixture pickle: in a folder without `ghfeat-ffhq`, the
    exact line explains how to get the model; after `ghfeat convert --pickle ...` there, it loads it."""
    from ghfeat_hf.cli import main as ghfeat

    before = run_acceptance_line(tmp_path)
    assert before.returncode == 1 and "ghfeat convert --pickle" in before.stderr.strip().splitlines()[-1]
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert ghfeat(["convert", "--pickle", str(converted["pickle"])]) == 0
    finally:
        os.chdir(cwd)
    after = run_acceptance_line(tmp_path)
    assert after.returncode == 0, after.stderr[-3000:]

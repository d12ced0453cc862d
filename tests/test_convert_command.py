"""``ghfeat convert`` and the one local name of the official model (``ghfeat-ffhq``).

The pickle is the tiny official-layout ``(E, G, D, Gs)`` of tests/official_pickles.py (64 px, random weights):
what a converter reads from ``ghfeat-encoder-ffhq-256.pkl``, at a size a test can convert in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from timm.models import get_pretrained_cfg
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from conversion.convert_official_tf import main as script_main
from ghfeat_hf import GHFeatModel, StyleGANGenerator, embedded_models, hub
from ghfeat_hf.cli import main
from ghfeat_hf.conversion.command import default_output
from ghfeat_hf.hub import load_backbone
from ghfeat_hf.model_names import (
    OFFICIAL_HUB_REPO,
    OFFICIAL_LOCAL_NAME,
    OFFICIAL_PICKLE,
    OFFICIAL_REPOSITORY,
    ModelNotFoundError,
    add_load_hints,
    local_model_folders,
)
from ghfeat_hf.modeling_ghfeat import GHFeatBackbone
from ghfeat_hf.runtime import load_model
from tests.official_pickles import dumps, official, tiny_official_parts

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
needs_embedded = pytest.mark.skipif(not embedded_models(), reason="no embedded model in this installation")


@pytest.fixture(scope="module")
def official_pickle(tmp_path_factory) -> Path:
    """A tiny official-layout encoder pickle, under a name of the user's (not one of the released ones)."""
    path = tmp_path_factory.mktemp("downloads") / "encoder.pkl"
    path.write_bytes(dumps(tuple(official(tiny_official_parts()))))
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty current directory, as a user's."""
    directory = tmp_path / "work"
    directory.mkdir()
    monkeypatch.chdir(directory)
    monkeypatch.delenv("GHFEAT_DEBUG", raising=False)
    return directory


def assert_explains_how_to_get_models(message: str) -> None:
    for part in (f"ghfeat convert --pickle {OFFICIAL_PICKLE}", OFFICIAL_REPOSITORY, repr(OFFICIAL_HUB_REPO),
                 repr(OFFICIAL_LOCAL_NAME), "Embedded models: ", "GH-Feat model folders in "):
        assert part in message, (part, message)
    assert "couldn't connect" not in message


def test_the_python_line_explains_then_loads_after_ghfeat_convert(workdir, official_pickle, capsys,
                                                                   run_acceptance_line):
    before = run_acceptance_line(workdir)
    assert before.returncode == 1
    last = before.stderr.strip().splitlines()[-1]
    assert last.startswith("ghfeat_hf.model_names.ModelNotFoundError: no model named 'ghfeat-ffhq'"), last
    assert_explains_how_to_get_models(last)
    assert "couldn't connect" not in before.stderr  # the misleading cause is not printed at all

    assert main(["convert", "--pickle", str(official_pickle)]) == 0
    assert (workdir / OFFICIAL_LOCAL_NAME / "config.json").is_file()
    after = run_acceptance_line(workdir)
    assert after.returncode == 0, after.stderr[-3000:]


def test_convert_writes_ghfeat_ffhq_and_replaces_it_only_with_overwrite(workdir, official_pickle, capsys, monkeypatch,
                                                                       recording_api):
    assert main(["convert", "--pickle", str(official_pickle)]) == 0
    output = workdir / OFFICIAL_LOCAL_NAME
    assert sorted(path.name for path in workdir.iterdir()) == [OFFICIAL_LOCAL_NAME]  # nothing else left behind
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "stylegan-generator",
            "stylegan-discriminator"} <= {path.name for path in output.iterdir()}
    assert isinstance(AutoModel.from_pretrained(OFFICIAL_LOCAL_NAME), GHFeatModel)  # the relative name, as typed
    assert local_model_folders() == [OFFICIAL_LOCAL_NAME]
    config = (output / "config.json").read_bytes()
    capsys.readouterr()

    assert main(["convert", "--pickle", str(official_pickle)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"ghfeat convert: error: {OFFICIAL_LOCAL_NAME}: already exists; pass --overwrite to replace it"
    assert (output / "config.json").read_bytes() == config

    api = recording_api
    monkeypatch.setattr(hub, "HfApi", lambda token=None: api)
    assert main(["convert", "--pickle", str(official_pickle), "--overwrite", "--push-to-hub", OFFICIAL_HUB_REPO]) == 0
    (_, repo, _), (_, _, upload) = api.calls
    assert repo == OFFICIAL_HUB_REPO and Path(upload["folder_path"]).name == OFFICIAL_LOCAL_NAME
    assert f'AutoModel.from_pretrained("{OFFICIAL_HUB_REPO}")' in (output / "README.md").read_text()
    assert sorted(path.name for path in workdir.iterdir()) == [OFFICIAL_LOCAL_NAME]


def test_default_output_and_domain_of_the_released_pickles(tmp_path):
    assert default_output(f"downloads/{OFFICIAL_PICKLE}") == OFFICIAL_LOCAL_NAME
    assert default_output("ghfeat-encoder-tower-256.pkl") == "ghfeat-tower"
    assert default_output("stylegan-bedrooms-256.pkl") == "stylegan-bedrooms"
    assert default_output(tmp_path / "network-final.pkl") == OFFICIAL_LOCAL_NAME


def test_help_documents_the_names_and_exit_statuses(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for part in (OFFICIAL_PICKLE, OFFICIAL_REPOSITORY, OFFICIAL_HUB_REPO, f"-> {OFFICIAL_LOCAL_NAME}", "exit status:",
                 "  2    refused", "  1    the system refused", "ghfeat convert: error: <file>: <what>"):
        assert part in text, part


def test_the_script_is_ghfeat_convert(workdir, official_pickle, capsys):
    """``python conversion/convert_official_tf.py``, from another directory, as documented."""
    script = ROOT / "conversion" / "convert_official_tf.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), "--pickle", str(official_pickle), "--output", "converted"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "converted" / "stylegan-generator" / "config.json").is_file()
    assert script_main(["--pickle", str(official_pickle), "--output", "converted"]) == 2
    assert capsys.readouterr().err == "ghfeat convert: error: converted: already exists; pass --overwrite to replace it\n"


def test_an_unknown_name_fails_at_once_offline_with_what_exists(workdir, monkeypatch, capsys):
    (workdir / "my-encoder").mkdir()
    (workdir / "my-encoder" / "config.json").write_text(json.dumps({"model_type": "ghfeat"}))
    (workdir / "other").mkdir()
    (workdir / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (workdir / "broken").mkdir()
    (workdir / "broken" / "config.json").write_text("{not json")

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr("ghfeat_hf.runtime.cached_file", no_network)
    started = time.monotonic()
    for loader in (load_model, load_backbone):
        with pytest.raises(ModelNotFoundError) as error:
            loader("ghfeat-fmnist")
        message = str(error.value)
        assert message.startswith("no model named 'ghfeat-fmnist': it is not a folder in ")
        assert_explains_how_to_get_models(message)
        assert f"GH-Feat model folders in {workdir}: my-encoder." in message
        for name in embedded_models():
            assert name in message
    with pytest.raises(ModelNotFoundError, match=r"^model directory '\./ghfeat-ffhq' does not exist\. Embedded"):
        load_model(f"./{OFFICIAL_LOCAL_NAME}")
    assert time.monotonic() - started < 5

    Image.new("RGB", (8, 8)).save(workdir / "a.png")
    assert main(["extract", "a.png", "-o", "f.parquet", "--model", "ghfeat-fmnist"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ghfeat extract: error: no model named 'ghfeat-fmnist'")
    assert_explains_how_to_get_models(line)
    assert not (workdir / "f.parquet").exists()


def test_a_hub_id_that_cannot_be_loaded_says_why_and_how_to_get_models(workdir):
    with pytest.raises(ModelNotFoundError) as error:
        load_model("org/ghfeat-ffhq")  # offline, not cached
    message = str(error.value)
    # offline, the Hub's reason is the connection: it is kept, after what the name is not
    assert message.startswith("'org/ghfeat-ffhq' is not a local folder, and the Hub id could not be loaded: ")
    assert f"ghfeat convert --pickle {OFFICIAL_PICKLE}" in message


@needs_embedded
def test_embedded_short_names_work_in_the_python_loaders(workdir):
    name = embedded_models()[0]
    model, processor = load_model(name)
    assert isinstance(model, GHFeatModel) and processor.size["height"] == model.config.image_size
    backbone = load_backbone(name, out_indices=[0])
    assert isinstance(backbone, GHFeatBackbone) and backbone.out_features == ["p4"]
    with pytest.raises(ModelNotFoundError, match=rf"'{name}' is an embedded model, which transformers loads by "
                                                 rf"path: from_pretrained\(ghfeat_hf.embedded_model_path\('{name}'\)\)"):
        AutoModel.from_pretrained(name)


def test_auto_classes_and_models_explain_ghfeat_names_only(workdir):
    for cls in (AutoConfig, AutoModel, AutoImageProcessor, GHFeatModel):
        with pytest.raises(ModelNotFoundError) as error:
            cls.from_pretrained(OFFICIAL_LOCAL_NAME)
        assert isinstance(error.value, OSError)  # what transformers' callers catch
        assert str(error.value).startswith("no model named 'ghfeat-ffhq': it is not a folder in ")
        assert_explains_how_to_get_models(str(error.value))
        assert error.value.__suppress_context__ and isinstance(error.value.__context__, OSError)
    with pytest.raises(ModelNotFoundError, match=f"^'{OFFICIAL_LOCAL_NAME}/stylegan-generator' is not a local folder"):
        StyleGANGenerator.from_pretrained(f"{OFFICIAL_LOCAL_NAME}/stylegan-generator")
    with pytest.raises(OSError) as error:
        AutoModel.from_pretrained("some-other-model")
    assert type(error.value) is OSError  # not a GH-Feat name: the error is transformers' own
    wrapped = AutoModel.from_pretrained
    add_load_hints(AutoModel)  # again, as a second import would
    assert AutoModel.from_pretrained.__func__ is wrapped.__func__


def test_the_one_hub_repo_is_the_timm_tag_repo():
    assert get_pretrained_cfg("ghfeat_resnet50_256.ffhq").to_dict()["hf_hub_id"] == OFFICIAL_HUB_REPO


def test_the_library_does_not_import_the_checkouts_scripts():
    """``conversion/`` is not in the wheel: ``ghfeat convert`` must run from ``ghfeat_hf`` alone."""
    for path in (ROOT / "ghfeat_hf").rglob("*.py"):
        imports = [line for line in path.read_text().splitlines()
                   if line.lstrip().startswith(("from conversion", "import conversion"))]
        assert not imports, (path, imports)

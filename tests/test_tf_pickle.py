"""Tests for ghfeat_hf/conversion/tf_pickle.py: official-format pickles are built here, in the official opcode layout."""

from __future__ import annotations

import builtins
import copyreg
import io
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from ghfeat_hf.conversion.tf_pickle import TFNetwork, TFPickleError, UnsafePickleError, describe, load_tf_pickle
from tests.official_pickles import (
    SHARED,
    FakeNetwork,
    Payload,
    Renamed,
    net,
    write,
)


def generator(name, rng):
    synthesis = net("G_synthesis", "G_synthesis", [
        ("lod", np.float32(0)), ("4x4/Const/const", rng.standard_normal((1, 8, 4, 4)).astype(np.float32)),
        ("4x4/Const/Noise/weight", rng.standard_normal(8).astype(np.float32)),
    ], static_kwargs={"resolution": 256})
    mapping = net("G_mapping", "G_mapping", [
        ("Dense0/weight", rng.standard_normal((8, 8)).astype(np.float32)),
        ("Dense0/bias", rng.standard_normal(8).astype(np.float32)),
    ], static_kwargs={"dlatent_broadcast": 14})
    own = [("lod", np.float32(0)), ("dlatent_avg", rng.standard_normal(8).astype(np.float32))]
    return net(name, "G_style", own, {"synthesis": synthesis, "mapping": mapping}, {"resolution": 256})


def official_tuple(encoder: bool = True):
    rng = np.random.default_rng(0)
    E = net("E_gpu0", "Encoder", [
        ("Conv0/weight", rng.standard_normal((7, 7, 3, 4)).astype(np.float32)),
        ("Conv0/batch_norm/gamma", np.ones(4, np.float32)),
    ], static_kwargs={"size": 256, "num_layers": 14, "is_training": True, "depth": 50})
    D = net("D", "D_basic", [("4x4/Dense1/weight", rng.standard_normal((8, 1)).astype(np.float32))])
    nets = (generator("G", rng), D, generator("Gs", rng))
    return (E, *nets) if encoder else nets


def assert_same(loaded: TFNetwork, fake: FakeNetwork) -> None:
    state = fake.state
    assert (loaded.name, loaded.version, loaded.build_func_name) == (state["name"], 3, state["build_func_name"])
    assert loaded.static_kwargs == state["static_kwargs"]
    assert list(loaded.variables) == [k for k, _ in state["variables"]]
    for key, value in state["variables"]:
        got = loaded.variables[key]
        assert type(got) is np.ndarray and got.dtype == value.dtype and got.shape == np.shape(value)
        np.testing.assert_array_equal(got, value)
    assert list(loaded.components) == list(state["components"])
    for key, component in state["components"].items():
        assert_same(loaded.components[key], component)


@pytest.mark.parametrize("encoder", [True, False], ids=["E_G_D_Gs", "G_D_Gs"])
def test_loads_official_tuples(tmp_path, encoder):
    fakes = official_tuple(encoder)
    nets = load_tf_pickle(write(tmp_path / "net.pkl", fakes))
    assert len(nets) == len(fakes) == (4 if encoder else 3)
    for loaded, fake in zip(nets, fakes):
        assert_same(loaded, fake)
    Gs = nets[-1]
    assert Gs.variables["lod"].shape == () and Gs.variables["lod"].dtype == np.float32
    flat = Gs.all_variables()
    assert list(flat) == ["lod", "dlatent_avg", "synthesis/lod", "synthesis/4x4/Const/const",
                          "synthesis/4x4/Const/Noise/weight", "mapping/Dense0/weight", "mapping/Dense0/bias"]
    assert flat["mapping/Dense0/weight"] is Gs.components["mapping"].variables["Dense0/weight"]
    assert list(Gs.all_variables("Gs/"))[2] == "Gs/synthesis/lod"


@pytest.mark.parametrize("protocol", [3, 4], ids=["GLOBAL", "STACK_GLOBAL"])
@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_numpy_1x_and_2x_global_names(tmp_path, protocol, numpy_module):
    path = write(tmp_path / "net.pkl", official_tuple(), protocol, numpy_module)
    raw = path.read_bytes()
    other = "numpy._core.multiarray" if numpy_module == "numpy.core.multiarray" else "numpy.core.multiarray"
    assert numpy_module.encode() in raw and other.encode() not in raw
    for loaded, fake in zip(load_tf_pickle(path), official_tuple()):
        assert_same(loaded, fake)


def test_describe(tmp_path):
    G = load_tf_pickle(write(tmp_path / "net.pkl", official_tuple()))[1]
    text = describe(G)
    assert text.splitlines()[0].startswith("G [G_style] (resolution=256): 2 variables, 9 scalars own; 7 variables")
    assert "  synthesis: G_synthesis [G_synthesis]" in text and "  mapping: G_mapping [G_mapping]" in text


@pytest.mark.parametrize("make_payload, qualname", [
    (lambda marker: Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
    (lambda marker: Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"), "builtins.eval"),
    (lambda marker: Payload(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
], ids=["os.system", "builtins.eval", "subprocess.Popen"])
def test_refuses_code_execution_globals(tmp_path, make_payload, qualname):
    marker = tmp_path / "pwned"
    E, G, D, Gs = official_tuple()
    D.state["variables"].append(("evil", make_payload(marker)))
    path = write(tmp_path / "evil.pkl", (E, G, D, Gs))
    with pytest.raises(UnsafePickleError, match=rf"'{qualname}'.*not an official"):
        load_tf_pickle(path)
    assert not marker.exists()


def test_refuses_handwritten_protocol0_global(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(UnsafePickleError, match=r"'os\.system'"):
        load_tf_pickle(path)
    assert not marker.exists()


def test_refuses_other_dnnlib_classes(tmp_path):
    E, G, D, Gs = official_tuple()
    E.state["static_kwargs"]["extra"] = Renamed()
    with pytest.raises(UnsafePickleError, match=r"'dnnlib\.util\.EasyDict'"):
        load_tf_pickle(write(tmp_path / "net.pkl", (E, G, D, Gs)))


def test_refuses_persistent_id(tmp_path):
    class PersistentPickler(pickle.Pickler):
        def persistent_id(self, obj):
            return "external-blob" if isinstance(obj, np.ndarray) else None

    buffer = io.BytesIO()
    PersistentPickler(buffer, protocol=4).dump((np.zeros(3), 1, 2))
    path = tmp_path / "pid.pkl"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UnsafePickleError, match="persistent id"):
        load_tf_pickle(path)


def test_refuses_extension_codes_even_with_a_warm_copyreg_cache(tmp_path, monkeypatch):
    """The reader never consults copyreg: an EXT opcode is refused whatever its registry holds."""
    marker = tmp_path / "pwned"
    monkeypatch.setitem(copyreg._extension_cache, 240, os.system)
    command = f"touch {marker}".encode()
    path = tmp_path / "ext.pkl"  # EXT1 240, the command string, TUPLE1, REDUCE
    path.write_bytes(b"\x80\x02\x82\xf0X" + len(command).to_bytes(4, "little") + command + b"\x85R.")
    with pytest.raises(UnsafePickleError, match="refusing an extension code"):
        load_tf_pickle(path)
    assert not marker.exists()


def test_build_module_src_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    E, G, D, Gs = official_tuple()
    E.state["build_module_src"] = f"open({str(marker)!r}, 'w').close()\ndef Encoder(): pass\n"
    nets = load_tf_pickle(write(tmp_path / "net.pkl", (E, G, D, Gs)))
    assert nets[0].name == "E_gpu0" and not marker.exists()
    assert not hasattr(nets[0], "build_module_src")


def test_refuses_stylegan2_version(tmp_path):
    E, G, D, Gs = official_tuple()
    G.state["components"]["mapping"].state["version"] = 4
    with pytest.raises(ValueError, match=r"version 4 is a StyleGAN2 pickle"):
        load_tf_pickle(write(tmp_path / "net.pkl", (E, G, D, Gs)))


@pytest.mark.parametrize("obj, message", [
    (lambda nets: nets[:2], "got a tuple of 2"),
    (lambda nets: list(nets), "got list"),
    (lambda nets: nets[0], "got a single dnnlib.tflib.network.Network"),
    (lambda nets: (*nets[:3], {"not": "a network"}), "item 3: expected a dnnlib.tflib.network.Network"),
])
def test_refuses_wrong_top_level(tmp_path, obj, message):
    with pytest.raises(ValueError, match=message):
        load_tf_pickle(write(tmp_path / "net.pkl", obj(official_tuple())))


def _drop_key(state):
    del state["build_func_name"]


def _object_array(state):
    state["variables"].append(("bad", np.array([1, "x"], dtype=object)))


def _duplicate(state):
    state["variables"].append(state["variables"][0])


@pytest.mark.parametrize("mutate, message", [
    (_drop_key, r"missing \['build_func_name'\]"),
    (_object_array, "variable 'bad' has dtype 'O8': weights must be float"),
    (_duplicate, "duplicate variable 'lod'"),
    (lambda state: state.update(static_kwargs=[1]), "'static_kwargs' must be a dict"),
    (lambda state: state.update(variables={"lod": np.float32(0)}), "'variables' must be a list"),
])
def test_refuses_malformed_state(tmp_path, mutate, message):
    E, G, D, Gs = official_tuple()
    mutate(Gs.state)
    with pytest.raises(ValueError, match=message):
        load_tf_pickle(write(tmp_path / "net.pkl", (E, G, D, Gs)))


def test_refuses_component_cycle(tmp_path):
    E, G, D, Gs = official_tuple()
    G.state["components"]["synthesis"].state["components"]["loop"] = G
    with pytest.raises(ValueError, match="cycle"):
        load_tf_pickle(write(tmp_path / "net.pkl", (E, G, D, Gs)))


def _torch_checkpoint(path):
    import torch

    torch.save({"weight": torch.zeros(2)}, path)


def _truncated_official_tuple(path):
    write(path, official_tuple())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("make_file, message", [
    (lambda path: path.write_bytes(b""), "the file is empty"),
    (_torch_checkpoint, r"a PyTorch/zip checkpoint, not a TF network pickle"),
    (_truncated_official_tuple, r"not a readable TF network pickle \((UnpicklingError|EOFError)"),
    (lambda path: path.write_bytes(bytes(range(0x9F, 0xFF))), r"not a readable TF network pickle \(UnpicklingError"),
    (lambda path: path.write_text("hello world\n"), "not a readable TF network pickle"),
], ids=["empty", "torch.save", "truncated", "random", "text"])
def test_files_that_are_not_network_pickles_raise_a_clear_error(tmp_path, make_file, message):
    path = tmp_path / "net.pkl"
    make_file(path)
    with pytest.raises(TFPickleError, match=rf"^{re.escape(str(path))}: {message}"):
        load_tf_pickle(path)


@pytest.mark.slow
def test_official_fixture_depth18(tmp_path):
    fixtures = SHARED / "fixtures" / "official-tf"
    if not (fixtures / "make_fixture.py").exists():
        pytest.skip(f"shared fixtures not found at {fixtures}")
    out = tmp_path / "f.pkl"
    subprocess.run([sys.executable, str(fixtures / "make_fixture.py"), "--seed", "20261128", "--depth", "18",
                    "--out", str(out)], check=True, timeout=600, capture_output=True)
    manifest = json.loads((fixtures / "manifest.json").read_text())["networks"]
    E, G, D, Gs = load_tf_pickle(out)
    out.unlink()
    expected = manifest["E_gpu0@depth18"]
    assert E.static_kwargs["depth"] == 18 and E.static_kwargs == expected["static_kwargs"]
    assert len(E.variables) == expected["num_vars"] == len(expected["variables"])
    assert list(E.variables) == [name for name, _, _ in expected["variables"]]
    assert all(list(v.shape) == shape for v, (_, shape, _) in zip(E.variables.values(), expected["variables"]))
    assert sum(v.size for v in E.variables.values()) == expected["num_scalars"]
    assert sum(len(n.all_variables()) for n in (E, G, D, Gs)) == 459
    assert Gs.variables["lod"].shape == () and "synthesis/4x4/Const/const" in Gs.all_variables()
    assert "mapping/Dense0/weight" in G.all_variables()

"""Writers of official-layout TF network pickles for the tests (GLOBAL dnnlib.tflib.network.Network + NEWOBJ + BUILD),
and a tiny valid official (E, G, D, Gs) built from random 64 px PyTorch models."""

from __future__ import annotations

import copyreg
import io
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ghfeat_hf import GHFeatModel, StyleGANDiscriminator, StyleGANGenerator
from ghfeat_hf.conversion.tf_pickle import TFNetwork
from ghfeat_hf.conversion.weight_mapping import (
    tf_name_for_discriminator,
    tf_name_for_encoder,
    tf_name_for_mapping,
    tf_name_for_synthesis,
)
from tests.conftest import tiny_discriminator_config, tiny_generator_config, tiny_ghfeat_config

SHARED = Path(__file__).resolve().parents[2] / "shared"
RECONSTRUCT = np.zeros(1).__reduce_ex__(4)[0]  # numpy's array reconstructor, whatever module it lives in
SCALAR = np.float32(0).__reduce__()[0]  # numpy's scalar reconstructor


class FakeNetwork:
    """Pickles like dnnlib.tflib.network.Network: the class global, NEWOBJ, then BUILD with the state dict."""

    def __init__(self, state: dict):
        self.state = state

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (type(self),), self.state


class Renamed:
    """Any object pickled under a global name of our choice (used for dnnlib.util.EasyDict)."""

    def __reduce_ex__(self, protocol):
        return type(self), ()


class Payload:
    """Object whose unpickling would call ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class OfficialLayoutPickler(pickle._Pickler):
    """Pure-Python pickler writing selected objects under given (module, name) globals, as the TF-era files do."""

    def __init__(self, file, protocol: int, numpy_module: str):
        super().__init__(file, protocol=protocol)
        self.names = {
            id(FakeNetwork): ("dnnlib.tflib.network", "Network"),
            id(Renamed): ("dnnlib.util", "EasyDict"),
            id(RECONSTRUCT): (numpy_module, "_reconstruct"),
            id(SCALAR): (numpy_module, "scalar"),
        }

    def save_global(self, obj, name=None):
        if id(obj) not in self.names:
            return super().save_global(obj, name)
        module, qualname = self.names[id(obj)]
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


def net(name, build_func, variables, components=None, static_kwargs=None, version=3, src="# omitted\n"):
    return FakeNetwork({
        "version": version, "name": name, "static_kwargs": dict(static_kwargs or {}),
        "components": dict(components or {}), "build_module_src": src, "build_func_name": build_func,
        "variables": list(variables),
    })


def write(path: Path, obj, protocol: int = 4, numpy_module: str = "numpy.core.multiarray") -> Path:
    with open(path, "wb") as f:
        OfficialLayoutPickler(f, protocol, numpy_module).dump(obj)
    return path



def from_tf_network(network: TFNetwork) -> FakeNetwork:
    """An official-layout stand-in holding the same state as a loaded [`TFNetwork`] (0-d arrays become np.float32)."""
    variables = [(name, np.float32(value) if value.ndim == 0 else value) for name, value in network.variables.items()]
    components = {key: from_tf_network(component) for key, component in network.components.items()}
    return net(network.name, network.build_func_name, variables, components, network.static_kwargs, network.version)


# -- a tiny, valid official (E, G, D, Gs) ---------------------------------------------------------------------

RESOLUTION = 64
KWARGS = {"num_channels": 3, "resolution": RESOLUTION, "label_size": 0}
WIDTHS = {"fmap_base": 128, "fmap_max": 32}  # the tiny configs of tests/conftest.py


def _tf_layout(name: str, tensor: torch.Tensor) -> np.ndarray:
    """PyTorch -> TF layout, the inverse of weight_mapping.to_torch_layout."""
    array = tensor.detach().numpy()
    if name.endswith("/weight") and array.ndim == 2:
        array = array.T
    elif name.endswith("/weight") and array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    return np.ascontiguousarray(array, dtype=np.float32)


def _tf_variables(model: torch.nn.Module, prefix: str, tf_name: Callable[[str], str | None]) -> list:
    return [(name, _tf_layout(name, value)) for key, value in model.state_dict().items()
            if key.startswith(prefix) and (name := tf_name(key)) is not None]


def tiny_official_parts() -> dict[str, list]:
    """Variables of a tiny official (E, G, D, Gs) at 64 px, from randomly initialised PyTorch models."""
    torch.manual_seed(0)
    generator = StyleGANGenerator(tiny_generator_config(RESOLUTION))
    mapping = _tf_variables(generator, "mapping.", tf_name_for_mapping)
    discriminator = StyleGANDiscriminator(tiny_discriminator_config(RESOLUTION))
    encoder = GHFeatModel(tiny_ghfeat_config(RESOLUTION, stem_stride=2, stem_pool=True))  # the official stem
    return {
        "E": _tf_variables(encoder, "encoder.", tf_name_for_encoder),
        "synthesis": [("lod", np.float32(0)), *_tf_variables(generator, "synthesis.", tf_name_for_synthesis)],
        "mapping": [(name.removeprefix("mapping/"), value) for name, value in mapping if name.startswith("mapping/")],
        "G": [("lod", np.float32(0)), *[(name, value) for name, value in mapping if not name.startswith("mapping/")]],
        "D": [("lod", np.float32(0)),
              *_tf_variables(discriminator, "network.", lambda key: tf_name_for_discriminator(key, RESOLUTION))],
    }


def official(parts: dict[str, list]) -> list[FakeNetwork]:
    """A fresh, valid [E, G, D, Gs] whose states a test may mutate (the arrays are shared: replace, never edit)."""
    def generator(name: str) -> FakeNetwork:
        synthesis = net("G_synthesis", "G_synthesis", parts["synthesis"], static_kwargs={**KWARGS, **WIDTHS})
        mapping = net("G_mapping", "G_mapping", parts["mapping"], static_kwargs={"dlatent_broadcast": 10, **KWARGS})
        return net(name, "G_style", parts["G"], {"synthesis": synthesis, "mapping": mapping}, KWARGS)

    encoder = net("E_gpu0", "Encoder", parts["E"], static_kwargs={"size": RESOLUTION, "filter": 64, "filter_max": 512,
                                                                  "num_layers": 10, "is_training": True, "depth": 18})
    discriminator = net("D", "D_basic", parts["D"], static_kwargs={**KWARGS, **WIDTHS, "mbstd_group_size": 4})
    return [encoder, generator("G"), discriminator, generator("Gs")]


def dumps(obj, protocol: int = 4) -> bytes:
    """``obj`` in the official layout; recursion is allowed deep enough for thousands of nested networks."""
    buffer = io.BytesIO()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 100_000))
    try:
        OfficialLayoutPickler(buffer, protocol, "numpy.core.multiarray").dump(obj)
    finally:
        sys.setrecursionlimit(limit)
    return buffer.getvalue()

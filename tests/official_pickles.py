"""Writers of official-layout TF network pickles for the tests (GLOBAL dnnlib.tflib.network.Network + NEWOBJ + BUILD)."""

from __future__ import annotations

import copyreg
import pickle
from pathlib import Path

import numpy as np

from conversion.tf_pickle import TFNetwork

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

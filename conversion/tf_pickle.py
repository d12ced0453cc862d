"""Safe reader for the official GH-Feat / StyleGAN v1 TensorFlow network pickles.

``ghfeat-encoder-*.pkl`` holds a 4-tuple ``(E, G, D, Gs)`` and ``stylegan-*.pkl`` a 3-tuple ``(G, D, Gs)`` of
``dnnlib.tflib.network.Network`` objects.  Each one pickles as GLOBAL + NEWOBJ + BUILD(state), where ``state`` is the
dict of the official ``Network.__getstate__`` (version, name, static_kwargs, components, build_module_src,
build_func_name, variables).  The variables are numpy arrays, and 0-d variables such as ``lod`` are numpy scalars.

Safety model (TensorFlow is never imported, and nothing from the file is executed):

* ``find_class`` is an allow-list. ``dnnlib.tflib.network.Network`` maps to a local ``__slots__`` class whose
  ``__setstate__`` only stores the BUILD state. The only other names admitted are numpy's array/scalar
  reconstructors ``_reconstruct`` and ``scalar`` (under the numpy 1.x ``numpy.core.multiarray`` and numpy 2.x
  ``numpy._core.multiarray`` names), ``numpy.ndarray`` and ``numpy.dtype``.  Any other global (``os.system``,
  ``builtins.eval``, even ``dnnlib.util.EasyDict``) raises :class:`UnsafePickleError` before it can be called.
  So REDUCE/NEWOBJ/BUILD can only reach those numpy constructors, our stub and builtin containers.
* Persistent ids are refused.  Extension codes (EXT1/2/4) go through ``find_class`` too, except when copyreg's
  extension cache is warm, so loading is refused in a process that has one.
* ``build_module_src`` (the network code that TF-era dnnlib would ``exec``) is validated as a string and dropped.
* The result is checked (tuple of 3 or 4 networks, exact state keys, version 3, numeric arrays, no component cycles)
  and converted to plain :class:`TFNetwork` dataclasses.

Files that are not such pickles (empty, ``torch.save`` zip archives, truncated or corrupt data) raise
:class:`TFPickleError` naming the file. This guards against code execution, not against resource exhaustion from a
hostile file.
"""

from __future__ import annotations

import copyreg
import os
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    from numpy._core import multiarray as _multiarray  # numpy >= 2 (1.26 ships an alias)
except ImportError:  # pragma: no cover - older numpy 1.x
    from numpy.core import multiarray as _multiarray

__all__ = ["TFPickleError", "UnsafePickleError", "TFNetwork", "load_tf_pickle", "describe"]

_STATE_KEYS = ("version", "name", "static_kwargs", "components", "build_module_src", "build_func_name", "variables")
_SUPPORTED_VERSION = 3
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save files (and other zip archives) start with it


class TFPickleError(ValueError):
    """The file is not a readable official GH-Feat / StyleGAN v1 network pickle; the message names the file."""


class UnsafePickleError(TFPickleError, pickle.UnpicklingError):
    """The pickle references something other than TF networks and numpy arrays."""


class _NetworkStub:
    """Loaded in place of ``dnnlib.tflib.network.Network``: stores the BUILD state, executes nothing."""

    __slots__ = ("state",)

    def __setstate__(self, state: Any) -> None:
        self.state = state


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("dnnlib.tflib.network", "Network"): _NetworkStub,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{
        (module, name): getattr(_multiarray, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS`` and refuses persistent ids."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing global '{module}.{name}': not an official GH-Feat/StyleGAN network pickle "
                "(only dnnlib.tflib.network.Network and numpy array/scalar globals are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self._source}: refusing persistent id {pid!r}: not an official GH-Feat/StyleGAN network pickle"
        )


@dataclass
class TFNetwork:
    """Plain-data view of one official ``Network`` (its ``build_module_src`` is deliberately not kept)."""

    name: str
    version: int
    build_func_name: str
    static_kwargs: dict[str, Any]
    components: dict[str, TFNetwork] = field(default_factory=dict)
    variables: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def all_variables(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Own variables, then each component's as ``'<component key>/<name>'``, e.g. ``synthesis/4x4/Const/const``."""
        out = {prefix + name: value for name, value in self.variables.items()}
        for key, component in self.components.items():
            out.update(component.all_variables(f"{prefix}{key}/"))
        return out


def _convert(obj: Any, where: str, active: frozenset[int]) -> TFNetwork:
    """Validate one unpickled network (recursively) and turn it into a :class:`TFNetwork`."""
    if type(obj) is not _NetworkStub:
        raise TFPickleError(f"{where}: expected a dnnlib.tflib.network.Network, got {type(obj).__name__}")
    if id(obj) in active:
        raise TFPickleError(f"{where}: network components form a cycle")
    state = getattr(obj, "state", None)
    if type(state) is not dict:
        raise TFPickleError(f"{where}: Network state must be a dict, got {type(state).__name__}")
    if set(state) != set(_STATE_KEYS):
        missing, extra = set(_STATE_KEYS) - set(state), set(state) - set(_STATE_KEYS)
        raise TFPickleError(f"{where}: unexpected Network state keys (missing {sorted(missing)}, extra {sorted(extra)})")
    version = state["version"]
    if type(version) is not int or version != _SUPPORTED_VERSION:
        stylegan2 = type(version) is int and version == 4
        hint = "; version 4 is a StyleGAN2 pickle, which is not supported" if stylegan2 else ""
        raise TFPickleError(f"{where}: unsupported Network version {version!r}: only version 3 "
                            f"(StyleGAN v1 / GH-Feat) is supported{hint}")
    for key in ("name", "build_func_name", "build_module_src"):
        if type(state[key]) is not str:
            raise TFPickleError(f"{where}: '{key}' must be a str, got {type(state[key]).__name__}")
    where = f"{where} ({state['name']})"
    for key in ("static_kwargs", "components"):
        if type(state[key]) is not dict or not all(type(k) is str for k in state[key]):
            raise TFPickleError(f"{where}: '{key}' must be a dict with str keys")
    if type(state["variables"]) not in (list, tuple):
        raise TFPickleError(f"{where}: 'variables' must be a list of (name, value) pairs")
    variables: dict[str, np.ndarray] = {}
    for item in state["variables"]:
        if type(item) not in (list, tuple) or len(item) != 2 or type(item[0]) is not str:
            raise TFPickleError(f"{where}: 'variables' must be a list of (name, value) pairs")
        name, value = item
        if name in variables:
            raise TFPickleError(f"{where}: duplicate variable {name!r}")
        if not isinstance(value, (np.ndarray, np.generic)) or value.dtype.kind not in "biufc":
            raise TFPickleError(f"{where}: variable {name!r} is not a numeric numpy array or scalar")
        variables[name] = np.asarray(value)
    active = active | {id(obj)}
    components = {k: _convert(c, f"{where}.components[{k!r}]", active) for k, c in state["components"].items()}
    return TFNetwork(state["name"], version, state["build_func_name"], dict(state["static_kwargs"]), components,
                     variables)


def load_tf_pickle(path: str | os.PathLike[str]) -> tuple[TFNetwork, ...]:
    """Read an official ``(E, G, D, Gs)`` or ``(G, D, Gs)`` pickle without TensorFlow and without executing code.

    Raises :class:`UnsafePickleError` for a disallowed global, :class:`TFPickleError` for any other file that is not
    such a pickle (empty, zip/``torch.save``, truncated, corrupt, wrong content) and ``OSError`` if it cannot be opened.
    """
    source = os.fspath(path)
    if copyreg._extension_cache:  # warm cache entries bypass find_class in the C unpickler
        raise UnsafePickleError(f"{source}: refusing to unpickle while copyreg's extension cache is populated")
    with open(source, "rb") as f:  # the unpickler streams from the file object; OSError (no such file) propagates
        magic = f.read(len(_ZIP_MAGIC))
        if not magic:
            raise TFPickleError(f"{source}: the file is empty, not a TF network pickle")
        if magic == _ZIP_MAGIC:
            raise TFPickleError(f"{source}: a PyTorch/zip checkpoint, not a TF network pickle")
        f.seek(0)
        try:
            data = _RestrictedUnpickler(f, source).load()
        except UnsafePickleError:
            raise
        except Exception as error:  # truncated or corrupt data, text, another format: only decoding ran
            raise TFPickleError(f"{source}: not a readable TF network pickle ({type(error).__name__}: {error})") from error
    if type(data) is not tuple or len(data) not in (3, 4):
        got = (f"a tuple of {len(data)}" if type(data) is tuple
               else "a single dnnlib.tflib.network.Network" if type(data) is _NetworkStub
               else type(data).__name__)
        raise TFPickleError(f"{source}: expected a tuple (E, G, D, Gs) or (G, D, Gs) of networks, got {got}")
    return tuple(_convert(net, f"{source}: item {i}", frozenset()) for i, net in enumerate(data))


def describe(net: TFNetwork) -> str:
    """Short summary for logs: name, build func, static kwargs, variable/scalar counts; one line per component."""
    return "\n".join(_describe_lines(net, net.name, ""))


def _describe_lines(net: TFNetwork, label: str, indent: str) -> list[str]:
    own = sum(v.size for v in net.variables.values())
    kwargs = ", ".join(f"{k}={v!r}" for k, v in net.static_kwargs.items())
    line = f"{indent}{label} [{net.build_func_name}] ({kwargs}): {len(net.variables)} variables, {own:,} scalars"
    if net.components:
        everything = net.all_variables()
        total = sum(v.size for v in everything.values())
        line += f" own; {len(everything)} variables, {total:,} scalars with components"
    lines = [line]
    for key, component in net.components.items():
        lines += _describe_lines(component, f"{key}: {component.name}", indent + "  ")
    return lines

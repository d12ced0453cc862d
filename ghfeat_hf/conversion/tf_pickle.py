"""The official GH-Feat / StyleGAN v1 TensorFlow network pickles, read without TensorFlow and without executing code.

``ghfeat-encoder-*.pkl`` holds a 4-tuple ``(E, G, D, Gs)`` and ``stylegan-*.pkl`` a 3-tuple ``(G, D, Gs)`` of
``dnnlib.tflib.network.Network`` objects.  Each one pickles as GLOBAL + NEWOBJ + BUILD(state), where ``state`` is the
dict of the official ``Network.__getstate__`` (version, name, static_kwargs, components, build_module_src,
build_func_name, variables).  The variables are numpy arrays, and 0-d variables such as ``lod`` are numpy scalars.

The file is hostile data, read by :mod:`.pickle_reader` (an opcode interpreter that executes nothing, under byte,
opcode and string budgets). This module is the official layer on top of it:

* the five admitted globals: ``dnnlib.tflib.network.Network`` (NEWOBJ + BUILD: the state is recorded, nothing runs),
  and numpy's ``_reconstruct``, ``scalar`` (under the numpy 1.x ``numpy.core.multiarray`` and 2.x
  ``numpy._core.multiarray`` names), ``numpy.ndarray`` and ``numpy.dtype`` (REDUCE: the arguments are recorded);
* the walk of the parsed graph, under budgets checked before the memory is spent: the networks + variables visited,
  a shared sub-network or array counting once per use without being expanded (``MAX_NODES``), the array bytes
  (``MAX_TOTAL_BYTES``) and the nesting of component networks (``MAX_DEPTH``; every other container is only read at
  its fixed official shape, never walked);
* the Network state: arrays are rebuilt here from their recorded bytes (an array without data, a dtype other than
  float16/32/64, strides that alias memory or NaN/inf values are refused with a message naming the variable), names
  must be plain identifiers (``_NAME``, ``_VARIABLE``), every ``static_kwargs`` value must fit the official
  signatures (``_KWARG_RULES``), and ``build_module_src`` (the code TF-era dnnlib would ``exec``) is dropped.

Every problem of the file raises :class:`TFPickleError` (one line, naming the file); ``OSError`` means it could not
be opened.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .pickle_reader import (
    MAX_NODES,
    MAX_STRING_BYTES,
    MAX_TOTAL_BYTES,
    Global,
    PickleFormat,
    PickleRefusedError,
    Record,
    UnsafePickleError,
    describe_value,
    quote,
    read_pickle,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_STRING_BYTES",
    "MAX_TOTAL_BYTES",
    "TFNetwork",
    "TFPickleError",
    "UnsafePickleError",
    "describe",
    "format_static_kwargs",
    "load_tf_pickle",
]

MAX_DEPTH = 8
"""Nesting of component networks (official: 2, ``G`` -> ``synthesis``)."""

TFPickleError = PickleRefusedError
"""The file is not a readable official GH-Feat / StyleGAN v1 network pickle; the message names the file (the reader's
own error: its budget and safety refusals are this module's)."""

_STATE_KEYS = ("version", "name", "static_kwargs", "components", "build_module_src", "build_func_name", "variables")
_SUPPORTED_VERSION = 3
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # network, build function and component names
_VARIABLE = re.compile(r"[A-Za-z0-9_./-]{1,256}")  # variable names, e.g. 4x4/Const/const
_FLOAT_CODES = ("f2", "f4", "f8")  # numpy.dtype pickle codes of float16/32/64
_MAX_NDIM = 8  # official variables have at most 4 dimensions

_ARRAY = "a numpy array"
_NDARRAY = Global("ndarray", "reduce", _ARRAY)
_FORMAT = PickleFormat(
    globals={
        ("dnnlib.tflib.network", "Network"): Global("network", "newobj", "a dnnlib.tflib.network.Network"),
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): Global("dtype", "reduce", "a numpy.dtype"),
        **{(module, name): Global(name, "reduce", _ARRAY)
           for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
    },
    expected="an official GH-Feat/StyleGAN network pickle",
    noun="TF network pickle",
    allowed="dnnlib.tflib.network.Network and numpy array/scalar globals",
    reducible="numpy array, scalar and dtype constructors",
    creatable="dnnlib.tflib.network.Network()",
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


@dataclass(frozen=True)
class _Rule:
    """What a ``static_kwargs`` value must be (``description``) and the test of it."""

    description: str
    accepts: Callable[[Any], bool]


def _integers(low: int, high: int, power_of_two: bool = False) -> _Rule:
    kind = "a power of two" if power_of_two else "an int"
    return _Rule(f"{kind} in [{low}, {high}]", lambda v: type(v) is int and low <= v <= high
                 and (not power_of_two or v & (v - 1) == 0))


def _numbers(low: float, high: float) -> _Rule:
    return _Rule(f"a number in [{low}, {high}]", lambda v: type(v) in (int, float) and low <= v <= high)


def _exactly(*values: Any) -> _Rule:
    return _Rule(" or ".join(map(repr, values)), lambda v: any(type(v) is type(x) and v == x for x in values))


def _optional(rule: _Rule) -> _Rule:
    return _Rule(f"None or {rule.description}", lambda v: v is None or rule.accepts(v))


_BOOL = _exactly(True, False)
_FRACTION = _optional(_numbers(0, 1))
# Every argument the official build functions take: G_style / G_synthesis / G_mapping / D_basic of NVlabs'
# networks_stylegan.py (also forwarded to components), and Encoder of GH-Feat's networks_ghfeat.py with the
# training-loop arguments (filter, filter_max, num_gpus). Architecture switches the port does not implement only
# admit the official value; ranges are far above the released 256 px models.
_KWARG_RULES: dict[str, _Rule] = {
    "resolution": _integers(4, 1024, power_of_two=True),
    "size": _integers(4, 1024, power_of_two=True),
    "num_channels": _exactly(1, 3),
    "label_size": _exactly(0),
    "fmap_base": _integers(1, 2**16),
    "fmap_decay": _numbers(0, 4),
    "fmap_max": _integers(1, 2**14),
    "latent_size": _integers(1, 2**12),
    "dlatent_size": _integers(1, 2**12),
    "dlatent_broadcast": _optional(_integers(1, 32)),
    "mapping_layers": _integers(1, 32),
    "mapping_fmaps": _integers(1, 2**12),
    "mapping_lrmul": _numbers(1e-4, 1),
    # D_basic groups min(G, N) samples, so the batch N must divide by it; G <= 1 would drop the layer, which the
    # converted discriminator always has. A power of two works for every power-of-two batch.
    "mbstd_group_size": _integers(2, 64, power_of_two=True),
    "mbstd_num_features": _integers(1, 64),
    "fused_scale": _exactly("auto", True, False),
    "structure": _exactly("auto", "fixed", "linear", "recursive"),
    "blur_filter": _exactly([1, 2, 1]),
    "nonlinearity": _exactly("lrelu"),
    "mapping_nonlinearity": _exactly("lrelu"),
    "dtype": _exactly("float32"),
    **dict.fromkeys(("use_styles", "const_input_layer", "use_noise", "use_wscale", "use_instance_norm",
                     "normalize_latents"), _exactly(True)),
    "use_pixel_norm": _exactly(False),
    **dict.fromkeys(("randomize_noise", "is_training", "is_validation", "is_template_graph", "force_clean_graph"),
                    _BOOL),
    **dict.fromkeys(("truncation_psi", "truncation_psi_val", "dlatent_avg_beta", "style_mixing_prob"), _FRACTION),
    **dict.fromkeys(("truncation_cutoff", "truncation_cutoff_val"), _optional(_integers(0, 32))),
    "depth": _exactly(18, 34, 50, 101),
    "num_layers": _integers(2, 18),
    "filter": _integers(1, 2**12),
    "filter_max": _integers(1, 2**12),
    "num_gpus": _integers(1, 1024),
}


def _static_kwargs(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Validated copy of a network's ``static_kwargs``; an unknown key or a value off the schema is refused."""
    for key, value in kwargs.items():
        rule = _KWARG_RULES.get(key)
        if rule is None:
            raise TFPickleError(f"{where}: static_kwargs key {quote(key)} is not an argument of the official networks")
        if not rule.accepts(value):
            raise TFPickleError(f"{where}: static_kwargs[{key!r}] must be {rule.description}, got {describe_value(value)}")
    return {key: list(value) if type(value) is list else value for key, value in kwargs.items()}


def format_static_kwargs(kwargs: dict[str, Any]) -> str:
    """``key=value, ...`` of validated static kwargs (plain numbers, bools, None and fixed strings only)."""
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items())


class _Layout(NamedTuple):
    """How to view an array's bytes: what ``numpy.ndarray(shape, dtype, buffer, offset, strides, order)`` gets."""

    shape: Any
    dtype: Any
    buffer: Any
    offset: Any = 0
    strides: Any = None
    order: Any = "C"


def _layout(record: Record, label: str) -> tuple[_Layout, bool]:
    """The layout a numpy array record describes, and whether its buffer must hold exactly the array."""
    if record.state is not None:  # ndarray.__setstate__((version, shape, dtype, is_fortran, data))
        state = record.state
        if record.kind == "scalar" or type(state) is not tuple or len(state) != 5 or state[0] != 1 \
                or type(state[3]) is not bool:
            raise TFPickleError(f"{label}: not a numpy array state (version, shape, dtype, is_fortran, data)")
        return _Layout(state[1], state[2], state[4], order="F" if state[3] else "C"), True
    args = record.args
    if record.kind == "scalar":  # scalar(dtype, data)
        if len(args) != 2:
            raise TFPickleError(f"{label}: numpy scalar needs (dtype, data)")
        return _Layout((), args[0], args[1]), True
    if record.kind == "ndarray" and 3 <= len(args) <= 6 and args[2] is not None:  # ndarray(shape, dtype, buffer, ...)
        return _Layout(*args), False
    raise TFPickleError(f"{label} has no data (numpy.ndarray(shape, dtype) without a buffer or _reconstruct without "
                        "its BUILD state would be uninitialised memory)")


def _float_dtype(record: Any, label: str) -> np.dtype:
    """The float dtype of a ``numpy.dtype`` record; other dtypes and unexpected dtype states are refused."""
    if type(record) is not Record or record.kind != "dtype":
        raise TFPickleError(f"{label}: dtype is {describe_value(record)}, not a numpy.dtype")
    code = record.args[0] if record.args else None
    if type(code) is not str or code not in _FLOAT_CODES:
        raise TFPickleError(f"{label} has dtype {describe_value(code)}: weights must be float16, float32 or float64")
    state = record.state
    if state is None:
        return np.dtype(code)
    if type(state) is not tuple or len(state) != 8 or state[0] != 3 or state[1] not in ("<", ">", "=") \
            or state[2:] != (None, None, None, -1, -1, 0):
        raise TFPickleError(f"{label}: not a plain {np.dtype(code).name} dtype state")
    return np.dtype(code).newbyteorder(state[1])


def _aliases(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> bool:
    """Whether two elements would share memory: every stride, smallest first, must clear the span of the smaller."""
    span = itemsize
    for stride, extent in sorted((s, n) for s, n in zip(strides, shape) if n > 1):
        if stride < span:
            return True
        span = stride * extent
    return False


def _check_layout(layout: _Layout, exact: bool, label: str) -> np.dtype:
    """Validate a layout (dtype, shape, buffer size, strides); returns the dtype."""
    dtype = _float_dtype(layout.dtype, label)
    shape, buffer, offset, strides = layout.shape, layout.buffer, layout.offset, layout.strides
    if type(shape) is not tuple or len(shape) > _MAX_NDIM or not all(type(n) is int and n >= 0 for n in shape):
        raise TFPickleError(f"{label}: shape must be a tuple of at most {_MAX_NDIM} sizes >= 0")
    if type(buffer) is not bytes or type(offset) is not int or offset < 0 or layout.order not in ("C", "F", None):
        raise TFPickleError(f"{label}: data must be bytes with an offset >= 0")
    nbytes = math.prod(shape) * dtype.itemsize
    if strides is None:
        span = nbytes
    elif type(strides) is not tuple or len(strides) != len(shape) or not all(type(s) is int for s in strides):
        raise TFPickleError(f"{label}: strides must be a tuple of ints, one per dimension")
    elif any(s < 0 for s in strides) or _aliases(shape, strides, dtype.itemsize):
        raise TFPickleError(f"{label} has zero, negative or overlapping strides: its elements would alias memory")
    else:
        span = sum((n - 1) * s for n, s in zip(shape, strides)) + dtype.itemsize if nbytes else 0
    if (len(buffer) != nbytes) if exact else (offset + span > len(buffer)):
        raise TFPickleError(f"{label}: {len(buffer):,} bytes of data for an array of {nbytes:,} bytes")
    return dtype


class _Network(NamedTuple):
    """A converted network and the nodes and array bytes of its expansion (shared parts counted once per use)."""

    network: TFNetwork
    nodes: int
    nbytes: int


class _Walker:
    """Validates the parsed graph and converts it to :class:`TFNetwork`; shared networks and arrays are converted
    once and charged to the budgets once per use, so an exponentially shared graph is refused, not expanded."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = self.nbytes = 0
        self.active: set[int] = set()
        self.networks: dict[int, _Network] = {}
        self.arrays: dict[int, np.ndarray] = {}

    def charge(self, nodes: int, nbytes: int, where: str) -> None:
        self.nodes, self.nbytes = self.nodes + nodes, self.nbytes + nbytes
        if self.nodes > MAX_NODES:
            raise TFPickleError(f"{where}: the networks expand to more than {MAX_NODES:,} networks and variables "
                                "(budget MAX_NODES; shared sub-networks count once per use)")
        if self.nbytes > MAX_TOTAL_BYTES:
            raise TFPickleError(f"{where}: the variables expand to more than {MAX_TOTAL_BYTES:,} bytes "
                                "(budget MAX_TOTAL_BYTES; shared arrays count once per use)")

    def network(self, obj: Any, where: str, depth: int) -> TFNetwork:
        if type(obj) is not Record or obj.kind != "network":
            raise TFPickleError(f"{where}: expected a dnnlib.tflib.network.Network, got {describe_value(obj)}")
        if id(obj) in self.active:
            raise TFPickleError(f"{where}: network components form a cycle")
        if id(obj) in self.networks:
            done = self.networks[id(obj)]
            self.charge(done.nodes, done.nbytes, where)
            return done.network
        if depth > MAX_DEPTH:
            raise TFPickleError(f"{where}: components nested more than {MAX_DEPTH} deep (budget MAX_DEPTH)")
        start = (self.nodes, self.nbytes)
        self.charge(1, 0, where)
        state, where = self.state(obj.state, where)
        kwargs = _static_kwargs(state["static_kwargs"], where)
        variables = self.variables(state["variables"], where)
        self.active.add(id(obj))
        components = {}
        for key, component in state["components"].items():
            if not _NAME.fullmatch(key):
                raise TFPickleError(f"{where}: component name {quote(key)} is not [A-Za-z0-9_.-]{{1,64}}")
            components[key] = self.network(component, f"{where}.components[{key!r}]", depth + 1)
        self.active.discard(id(obj))
        network = TFNetwork(state["name"], state["version"], state["build_func_name"], kwargs, components, variables)
        self.networks[id(obj)] = _Network(network, self.nodes - start[0], self.nbytes - start[1])
        return network

    @staticmethod
    def state(state: Any, where: str) -> tuple[dict[str, Any], str]:
        """The checked BUILD state of a network, and ``where`` with the network's name."""
        if type(state) is not dict:
            raise TFPickleError(f"{where}: Network state must be a dict, got {describe_value(state)}")
        if set(state) != set(_STATE_KEYS):
            missing, extra = sorted(set(_STATE_KEYS) - set(state)), sorted(set(state) - set(_STATE_KEYS))
            raise TFPickleError(f"{where}: unexpected Network state keys (missing {missing}, "
                                f"extra [{', '.join(map(quote, extra[:5]))}{', ...' if len(extra) > 5 else ''}])")
        version = state["version"]
        if type(version) is not int or version != _SUPPORTED_VERSION:
            hint = "; version 4 is a StyleGAN2 pickle, which is not supported" if version == 4 else ""
            raise TFPickleError(f"{where}: unsupported Network version {describe_value(version)}: only version 3 "
                                f"(StyleGAN v1 / GH-Feat) is supported{hint}")
        for key in ("name", "build_func_name", "build_module_src"):
            if type(state[key]) is not str:
                raise TFPickleError(f"{where}: '{key}' must be a str, got {describe_value(state[key])}")
        for key in ("name", "build_func_name"):
            if not _NAME.fullmatch(state[key]):
                raise TFPickleError(f"{where}: '{key}' {quote(state[key])} is not [A-Za-z0-9_.-]{{1,64}}")
        for key in ("static_kwargs", "components"):
            if type(state[key]) is not dict:
                raise TFPickleError(f"{where}: '{key}' must be a dict with str keys")
        return state, f"{where} ({state['name']})"

    def variables(self, items: Any, where: str) -> dict[str, np.ndarray]:
        if type(items) not in (list, tuple):
            raise TFPickleError(f"{where}: 'variables' must be a list of (name, value) pairs")
        variables: dict[str, np.ndarray] = {}
        for item in items:
            if type(item) not in (list, tuple) or len(item) != 2 or type(item[0]) is not str:
                raise TFPickleError(f"{where}: 'variables' must be a list of (name, value) pairs")
            name, value = item
            if not _VARIABLE.fullmatch(name):
                raise TFPickleError(f"{where}: variable name {quote(name)} is not [A-Za-z0-9_./-]{{1,256}}")
            if name in variables:
                raise TFPickleError(f"{where}: duplicate variable {name!r}")
            variables[name] = self.array(value, f"{where}: variable {name!r}")
        return variables

    def array(self, record: Any, label: str) -> np.ndarray:
        """A new native-endian array from a numpy array record, charged to the budgets before it is allocated."""
        if type(record) is not Record or record.kind not in ("ndarray", "_reconstruct", "scalar"):
            raise TFPickleError(f"{label} is {describe_value(record)}, not a numpy array")
        if id(record) in self.arrays:
            array = self.arrays[id(record)]
            self.charge(1, array.nbytes, label)
            return array
        if record.kind == "_reconstruct" and (len(record.args) != 3 or record.args[0] is not _NDARRAY):
            raise TFPickleError(f"{label}: not a plain numpy.ndarray")
        layout, exact = _layout(record, label)
        dtype = _check_layout(layout, exact, label)
        self.charge(1, math.prod(layout.shape) * dtype.itemsize, label)
        view = np.ndarray(layout.shape, dtype, layout.buffer, layout.offset, layout.strides, layout.order or "C")
        array = view.astype(dtype.newbyteorder("="), order="C")
        if not np.isfinite(array).all():
            raise TFPickleError(f"{label} holds NaN or infinite values")
        record.args = record.state = None  # the raw bytes can go
        self.arrays[id(record)] = array
        return array


def load_tf_pickle(path: str | os.PathLike[str], digest: Any = None) -> tuple[TFNetwork, ...]:
    """Read an official ``(E, G, D, Gs)`` or ``(G, D, Gs)`` pickle without TensorFlow and without executing code.

    ``digest`` (a ``hashlib`` object) is fed every byte of the file. Raises :class:`UnsafePickleError` for a
    disallowed global, :class:`TFPickleError` for any other file that is not such a pickle (not a regular file, empty,
    zip/``torch.save``, truncated, corrupt, over budget, wrong content) and ``OSError`` if it cannot be opened.
    """
    source = os.fspath(path)
    data = read_pickle(source, _FORMAT, digest)
    if type(data) is not tuple or len(data) not in (3, 4):
        got = (f"a tuple of {len(data)}" if type(data) is tuple
               else "a single dnnlib.tflib.network.Network" if type(data) is Record and data.kind == "network"
               else type(data).__name__)
        raise TFPickleError(f"{source}: expected a tuple (E, G, D, Gs) or (G, D, Gs) of networks, got {got}")
    walker = _Walker(source)
    return tuple(walker.network(net, f"{source}: item {i}", 1) for i, net in enumerate(data))


def describe(net: TFNetwork) -> str:
    """Short summary for logs: name, build func, static kwargs, variable/scalar counts; one line per component."""
    return "\n".join(_describe_lines(net, net.name, ""))


def _describe_lines(net: TFNetwork, label: str, indent: str) -> list[str]:
    own = sum(v.size for v in net.variables.values())
    line = (f"{indent}{label} [{net.build_func_name}] ({format_static_kwargs(net.static_kwargs)}): "
            f"{len(net.variables)} variables, {own:,} scalars")
    if net.components:
        everything = net.all_variables()
        total = sum(v.size for v in everything.values())
        line += f" own; {len(everything)} variables, {total:,} scalars with components"
    lines = [line]
    for key, component in net.components.items():
        lines += _describe_lines(component, f"{key}: {component.name}", indent + "  ")
    return lines

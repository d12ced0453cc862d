"""Safe, budgeted reader for the official GH-Feat / StyleGAN v1 TensorFlow network pickles.

``ghfeat-encoder-*.pkl`` holds a 4-tuple ``(E, G, D, Gs)`` and ``stylegan-*.pkl`` a 3-tuple ``(G, D, Gs)`` of
``dnnlib.tflib.network.Network`` objects.  Each one pickles as GLOBAL + NEWOBJ + BUILD(state), where ``state`` is the
dict of the official ``Network.__getstate__`` (version, name, static_kwargs, components, build_module_src,
build_func_name, variables).  The variables are numpy arrays, and 0-d variables such as ``lod`` are numpy scalars.

Trust model: the file is hostile data. It is never handed to :mod:`pickle` (nor to copyreg or numpy's unpickling):
:class:`_Parser` runs the opcodes of protocols 2-4 itself and builds only str/bytes/int/float/bool/None, tuples,
lists, dicts with str keys and inert records of the five admitted globals:

* ``dnnlib.tflib.network.Network`` (NEWOBJ + BUILD: the state is recorded, nothing runs), and numpy's
  ``_reconstruct``, ``scalar`` (under the numpy 1.x ``numpy.core.multiarray`` and 2.x ``numpy._core.multiarray``
  names), ``numpy.ndarray`` and ``numpy.dtype`` (REDUCE: the arguments are recorded, nothing is called).  Any other
  global, a persistent id or an extension code raises :class:`UnsafePickleError`; other opcodes are unsupported.
* Budgets, checked before the memory or time is spent (see the constants): the file size and the array bytes
  (``MAX_TOTAL_BYTES``), the opcodes run and the networks + variables visited, a shared sub-network or array counting
  once per use without being expanded (``MAX_NODES``), the nesting of component networks (``MAX_DEPTH``; every other
  container is only read at its fixed official shape, never walked) and the bytes of all strings (``MAX_STRING_BYTES``).
* Arrays are rebuilt here from their recorded bytes: an array without data (``ndarray(shape, dtype)`` without a
  buffer, ``_reconstruct`` without BUILD), a dtype other than float16/32/64, strides that alias memory (zero or
  overlapping) or NaN/inf values are refused with a message naming the variable.
* Names must be plain identifiers (``_NAME``, ``_VARIABLE``), every ``static_kwargs`` value must fit the official
  signatures (``_KWARG_RULES``), and ``build_module_src`` (the code TF-era dnnlib would ``exec``) is dropped.

Only regular files are opened (a FIFO, device or directory is refused, and the open never blocks). Every problem of
the file raises :class:`TFPickleError` (one line, naming the file); ``OSError`` means it could not be opened.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

import numpy as np

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

MAX_TOTAL_BYTES = 2 * 2**30
"""File size, and array bytes with shared arrays counted once per use (official encoder pickles: ~0.9 GB)."""
MAX_NODES = 1_000_000
"""Opcodes run, and networks + variables visited with shared ones counted once per use (official: ~18k, ~650)."""
MAX_DEPTH = 8
"""Nesting of component networks (official: 2, ``G`` -> ``synthesis``)."""
MAX_STRING_BYTES = 16 * 2**20
"""UTF-8 bytes of all strings together (official: ~0.3 MiB, mostly ``build_module_src``)."""

_STATE_KEYS = ("version", "name", "static_kwargs", "components", "build_module_src", "build_func_name", "variables")
_SUPPORTED_VERSION = 3
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save files (and other zip archives) start with it
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # network, build function and component names
_VARIABLE = re.compile(r"[A-Za-z0-9_./-]{1,256}")  # variable names, e.g. 4x4/Const/const
_FLOAT_CODES = ("f2", "f4", "f8")  # numpy.dtype pickle codes of float16/32/64
_MAX_NDIM = 8  # official variables have at most 4 dimensions
_MAX_GLOBAL_NAME = 256  # bytes of a protocol 0-3 GLOBAL line
_MAX_PROTOCOL = 4  # the released pickles: pickle.HIGHEST_PROTOCOL of Python 3.6


class TFPickleError(ValueError):
    """The file is not a readable official GH-Feat / StyleGAN v1 network pickle; the message names the file."""


class UnsafePickleError(TFPickleError, pickle.UnpicklingError):
    """The pickle references something other than TF networks and numpy arrays."""


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


class _Global:
    """An admitted global: a token the parser can NEWOBJ (the network) or REDUCE (numpy), never a Python callable."""

    __slots__ = ("kind",)
    label = "a global"

    def __init__(self, kind: str) -> None:
        self.kind = kind


class _Record:
    """Arguments (REDUCE/NEWOBJ) and state (BUILD) of an admitted global; validated when the networks are read."""

    __slots__ = ("kind", "args", "state")

    def __init__(self, kind: str, args: tuple) -> None:
        self.kind, self.args, self.state = kind, args, None

    @property
    def label(self) -> str:
        return {"network": "a dnnlib.tflib.network.Network", "dtype": "a numpy.dtype"}.get(self.kind, "a numpy array")


_NDARRAY = _Global("ndarray")
_GLOBALS: dict[tuple[str, str], _Global] = {
    ("dnnlib.tflib.network", "Network"): _Global("network"),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global("dtype"),
    **{(module, name): _Global(name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name in ("_reconstruct", "scalar")},
}


def _quote(text: str, limit: int = 80) -> str:
    """A file-controlled string for a message: ASCII-escaped (one line), cut at ``limit`` characters."""
    return ascii(text[:limit]) + ("..." if len(text) > limit else "")


def _describe(value: Any) -> str:
    """A file-controlled value for a message, never through the repr of an arbitrary object."""
    if value is None or type(value) in (bool, float) or (type(value) is int and abs(value) < 10**15):
        return repr(value)
    if type(value) is int:
        return "a large int"
    if type(value) is str:
        return _quote(value)
    return getattr(value, "label", None) or f"a {type(value).__name__}"


class _Reader:
    """Reads a regular file of known size, never asking for more bytes than are left; feeds ``digest``."""

    def __init__(self, file: BinaryIO, size: int, digest: Any) -> None:
        self.file, self.size, self.left, self.digest = file, size, size, digest

    def take(self, count: int) -> bytes:
        if count > self.left:
            raise pickle.UnpicklingError(f"data truncated: {count:,} bytes needed at offset {self.size - self.left:,}, "
                                         f"{self.left:,} left")
        data = self.file.read(count)
        if len(data) != count:
            raise pickle.UnpicklingError("the file shrank while it was read")
        self.left -= count
        if self.digest is not None:
            self.digest.update(data)
        return data

    def line(self) -> bytes:
        """A newline-terminated line of at most ``_MAX_GLOBAL_NAME`` bytes (GLOBAL operands)."""
        data = b""
        while not data.endswith(b"\n"):
            if len(data) > _MAX_GLOBAL_NAME:
                raise pickle.UnpicklingError("GLOBAL name too long")
            data += self.take(1)
        return data[:-1]

    def drain(self) -> None:
        """Read (and digest) whatever follows the pickle's STOP."""
        while self.left:
            self.take(min(self.left, 2**24))


class _Parser:
    """Stack machine for the pickle opcodes of official network pickles (protocols 2-4); executes nothing."""

    def __init__(self, reader: _Reader, source: str) -> None:
        self.reader, self.source = reader, source
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.string_bytes = 0

    def run(self) -> Any:
        for _ in range(MAX_NODES):
            code = self.reader.take(1)
            if code == pickle.STOP:
                if len(self.stack) != 1 or self.marks:
                    raise pickle.UnpicklingError(f"STOP with {len(self.stack)} objects on the stack")
                return self.stack[0]
            operation = _OPCODES.get(code)
            if operation is None:
                raise pickle.UnpicklingError(f"unsupported opcode {code!r} at offset {self.reader.size - self.reader.left - 1:,}")
            operation(self)
        raise TFPickleError(f"{self.source}: more than {MAX_NODES:,} pickle opcodes (budget MAX_NODES): "
                            "not an official network pickle")

    def integer(self, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.reader.take(size), "little", signed=signed)

    def text(self, size: int) -> str:
        self.string_bytes += size
        if self.string_bytes > MAX_STRING_BYTES:
            raise TFPickleError(f"{self.source}: more than {MAX_STRING_BYTES:,} bytes of strings "
                                "(budget MAX_STRING_BYTES): not an official network pickle")
        try:
            return self.reader.take(size).decode("utf-8")
        except UnicodeDecodeError as error:
            raise pickle.UnpicklingError(f"a string is not UTF-8 ({error.reason})") from None

    def push(self, value: Any) -> None:
        self.stack.append(value)

    def pop(self, count: int) -> list[Any]:
        """The top ``count`` objects, in stack order; never below the last MARK."""
        if len(self.stack) - count < (self.marks[-1] if self.marks else 0):
            raise pickle.UnpicklingError("stack underflow")
        items = self.stack[len(self.stack) - count:]
        del self.stack[len(self.stack) - count:]
        return items

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise pickle.UnpicklingError("no MARK on the stack")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def top(self) -> Any:
        (value,) = self.pop(1)
        self.stack.append(value)
        return value

    def protocol(self, version: int) -> None:
        if version > _MAX_PROTOCOL:
            raise pickle.UnpicklingError(f"pickle protocol {version}: official network pickles use protocol 4 or lower")

    def put(self, key: int) -> None:
        self.memo[key] = self.top()

    def recall(self, key: int) -> None:
        if key not in self.memo:
            raise pickle.UnpicklingError(f"memo key {key} is missing")
        self.push(self.memo[key])

    def extend(self, items: list[Any]) -> None:
        target = self.top()
        if type(target) is not list:
            raise pickle.UnpicklingError(f"APPEND to {_describe(target)}")
        target.extend(items)

    def new_dict(self, items: list[Any]) -> None:
        self.push({})
        self.set_items(items)

    def set_items(self, items: list[Any]) -> None:
        target = self.top()
        if type(target) is not dict or len(items) % 2:
            raise pickle.UnpicklingError(f"SETITEM on {_describe(target)}")
        for key, value in zip(items[::2], items[1::2]):
            if type(key) is not str:
                raise pickle.UnpicklingError(f"dict key {_describe(key)} is not a string")
            target[key] = value

    def find(self, module: Any, name: Any) -> _Global:
        if type(module) is not str or type(name) is not str:
            raise pickle.UnpicklingError("a global name is not a string")
        if (module, name) not in _GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refusing global {_quote(f'{module}.{name}')}: not an official GH-Feat/StyleGAN network "
                "pickle (only dnnlib.tflib.network.Network and numpy array/scalar globals are allowed)")
        return _GLOBALS[(module, name)]

    def global_line(self) -> str:
        line = self.reader.line()
        self.string_bytes += len(line)
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            raise pickle.UnpicklingError("a GLOBAL name is not UTF-8") from None

    def call(self, function: Any, args: Any) -> None:
        """REDUCE: only numpy's array, scalar and dtype globals, whose arguments are recorded."""
        if type(function) is not _Global or function.kind == "network" or type(args) is not tuple:
            raise pickle.UnpicklingError(f"REDUCE calls {_describe(function)}: only numpy array, scalar and dtype "
                                         "constructors may be called")
        self.push(_Record(function.kind, args))

    def new(self, cls: Any, args: Any) -> None:
        """NEWOBJ: only ``dnnlib.tflib.network.Network()``."""
        if type(cls) is not _Global or cls.kind != "network" or type(args) is not tuple or args:
            raise pickle.UnpicklingError(f"NEWOBJ of {_describe(cls)}: only dnnlib.tflib.network.Network() is created")
        self.push(_Record("network", ()))

    def build(self, state: Any) -> None:
        target = self.top()
        if type(target) is not _Record or target.state is not None or state is None:
            raise pickle.UnpicklingError(f"BUILD on {_describe(target)}")
        target.state = state

    def refuse(self, what: str) -> None:
        raise UnsafePickleError(f"{self.source}: refusing {what}: not an official GH-Feat/StyleGAN network pickle")


_OPCODES: dict[bytes, Callable[[_Parser], Any]] = {
    pickle.PROTO: lambda p: p.protocol(p.integer(1)),
    pickle.FRAME: lambda p: p.integer(8),  # framing only groups the reads
    pickle.MARK: lambda p: p.marks.append(len(p.stack)),
    pickle.POP: lambda p: p.pop(1),
    pickle.POP_MARK: lambda p: p.pop_mark(),
    pickle.DUP: lambda p: p.push(p.top()),
    pickle.NONE: lambda p: p.push(None),
    pickle.NEWTRUE: lambda p: p.push(True),
    pickle.NEWFALSE: lambda p: p.push(False),
    pickle.BININT: lambda p: p.push(p.integer(4, signed=True)),
    pickle.BININT1: lambda p: p.push(p.integer(1)),
    pickle.BININT2: lambda p: p.push(p.integer(2)),
    pickle.LONG1: lambda p: p.push(p.integer(p.integer(1), signed=True)),
    pickle.BINFLOAT: lambda p: p.push(struct.unpack(">d", p.reader.take(8))[0]),
    pickle.SHORT_BINUNICODE: lambda p: p.push(p.text(p.integer(1))),
    pickle.BINUNICODE: lambda p: p.push(p.text(p.integer(4))),
    pickle.BINUNICODE8: lambda p: p.push(p.text(p.integer(8))),
    pickle.SHORT_BINBYTES: lambda p: p.push(p.reader.take(p.integer(1))),
    pickle.BINBYTES: lambda p: p.push(p.reader.take(p.integer(4))),
    pickle.BINBYTES8: lambda p: p.push(p.reader.take(p.integer(8))),
    pickle.EMPTY_TUPLE: lambda p: p.push(()),
    pickle.TUPLE1: lambda p: p.push(tuple(p.pop(1))),
    pickle.TUPLE2: lambda p: p.push(tuple(p.pop(2))),
    pickle.TUPLE3: lambda p: p.push(tuple(p.pop(3))),
    pickle.TUPLE: lambda p: p.push(tuple(p.pop_mark())),
    pickle.EMPTY_LIST: lambda p: p.push([]),
    pickle.LIST: lambda p: p.push(p.pop_mark()),
    pickle.APPEND: lambda p: p.extend(p.pop(1)),
    pickle.APPENDS: lambda p: p.extend(p.pop_mark()),
    pickle.EMPTY_DICT: lambda p: p.push({}),
    pickle.DICT: lambda p: p.new_dict(p.pop_mark()),
    pickle.SETITEM: lambda p: p.set_items(p.pop(2)),
    pickle.SETITEMS: lambda p: p.set_items(p.pop_mark()),
    pickle.BINPUT: lambda p: p.put(p.integer(1)),
    pickle.LONG_BINPUT: lambda p: p.put(p.integer(4)),
    pickle.MEMOIZE: lambda p: p.put(len(p.memo)),
    pickle.BINGET: lambda p: p.recall(p.integer(1)),
    pickle.LONG_BINGET: lambda p: p.recall(p.integer(4)),
    pickle.GLOBAL: lambda p: p.push(p.find(p.global_line(), p.global_line())),
    pickle.STACK_GLOBAL: lambda p: p.push(p.find(*p.pop(2))),
    pickle.REDUCE: lambda p: p.call(*p.pop(2)),
    pickle.NEWOBJ: lambda p: p.new(*p.pop(2)),
    pickle.BUILD: lambda p: p.build(*p.pop(1)),
    **dict.fromkeys((pickle.PERSID, pickle.BINPERSID), lambda p: p.refuse("a persistent id")),
    **dict.fromkeys((pickle.EXT1, pickle.EXT2, pickle.EXT4), lambda p: p.refuse("an extension code")),
}


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
            raise TFPickleError(f"{where}: static_kwargs key {_quote(key)} is not an argument of the official networks")
        if not rule.accepts(value):
            raise TFPickleError(f"{where}: static_kwargs[{key!r}] must be {rule.description}, got {_describe(value)}")
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


def _layout(record: _Record, label: str) -> tuple[_Layout, bool]:
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
    if type(record) is not _Record or record.kind != "dtype":
        raise TFPickleError(f"{label}: dtype is {_describe(record)}, not a numpy.dtype")
    code = record.args[0] if record.args else None
    if type(code) is not str or code not in _FLOAT_CODES:
        raise TFPickleError(f"{label} has dtype {_describe(code)}: weights must be float16, float32 or float64")
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
        if type(obj) is not _Record or obj.kind != "network":
            raise TFPickleError(f"{where}: expected a dnnlib.tflib.network.Network, got {_describe(obj)}")
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
                raise TFPickleError(f"{where}: component name {_quote(key)} is not [A-Za-z0-9_.-]{{1,64}}")
            components[key] = self.network(component, f"{where}.components[{key!r}]", depth + 1)
        self.active.discard(id(obj))
        network = TFNetwork(state["name"], state["version"], state["build_func_name"], kwargs, components, variables)
        self.networks[id(obj)] = _Network(network, self.nodes - start[0], self.nbytes - start[1])
        return network

    @staticmethod
    def state(state: Any, where: str) -> tuple[dict[str, Any], str]:
        """The checked BUILD state of a network, and ``where`` with the network's name."""
        if type(state) is not dict:
            raise TFPickleError(f"{where}: Network state must be a dict, got {_describe(state)}")
        if set(state) != set(_STATE_KEYS):
            missing, extra = sorted(set(_STATE_KEYS) - set(state)), sorted(set(state) - set(_STATE_KEYS))
            raise TFPickleError(f"{where}: unexpected Network state keys (missing {missing}, "
                                f"extra [{', '.join(map(_quote, extra[:5]))}{', ...' if len(extra) > 5 else ''}])")
        version = state["version"]
        if type(version) is not int or version != _SUPPORTED_VERSION:
            hint = "; version 4 is a StyleGAN2 pickle, which is not supported" if version == 4 else ""
            raise TFPickleError(f"{where}: unsupported Network version {_describe(version)}: only version 3 "
                                f"(StyleGAN v1 / GH-Feat) is supported{hint}")
        for key in ("name", "build_func_name", "build_module_src"):
            if type(state[key]) is not str:
                raise TFPickleError(f"{where}: '{key}' must be a str, got {_describe(state[key])}")
        for key in ("name", "build_func_name"):
            if not _NAME.fullmatch(state[key]):
                raise TFPickleError(f"{where}: '{key}' {_quote(state[key])} is not [A-Za-z0-9_.-]{{1,64}}")
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
                raise TFPickleError(f"{where}: variable name {_quote(name)} is not [A-Za-z0-9_./-]{{1,256}}")
            if name in variables:
                raise TFPickleError(f"{where}: duplicate variable {name!r}")
            variables[name] = self.array(value, f"{where}: variable {name!r}")
        return variables

    def array(self, record: Any, label: str) -> np.ndarray:
        """A new native-endian array from a numpy array record, charged to the budgets before it is allocated."""
        if type(record) is not _Record or record.kind not in ("ndarray", "_reconstruct", "scalar"):
            raise TFPickleError(f"{label} is {_describe(record)}, not a numpy array")
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


def _open_regular(source: str) -> tuple[BinaryIO, int]:
    """Open a regular file for reading; anything else (FIFO, device, directory, socket) is refused, never waited on."""
    info = os.stat(source)
    if not stat.S_ISREG(info.st_mode):
        kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
        kind = next((name for test, name in kinds if test(info.st_mode)), "not a file")
        raise TFPickleError(f"{source}: {kind}, not a regular file")
    if info.st_size > MAX_TOTAL_BYTES:
        raise TFPickleError(f"{source}: {info.st_size:,} bytes, more than MAX_TOTAL_BYTES ({MAX_TOTAL_BYTES:,})")
    # O_NONBLOCK: should the path be swapped for a FIFO after the stat, the open still returns at once
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino, opened.st_size) != (info.st_dev, info.st_ino, info.st_size):
        os.close(fd)
        raise TFPickleError(f"{source}: the file changed while it was opened")
    return os.fdopen(fd, "rb"), info.st_size


def load_tf_pickle(path: str | os.PathLike[str], digest: Any = None) -> tuple[TFNetwork, ...]:
    """Read an official ``(E, G, D, Gs)`` or ``(G, D, Gs)`` pickle without TensorFlow and without executing code.

    ``digest`` (a ``hashlib`` object) is fed every byte of the file. Raises :class:`UnsafePickleError` for a
    disallowed global, :class:`TFPickleError` for any other file that is not such a pickle (not a regular file, empty,
    zip/``torch.save``, truncated, corrupt, over budget, wrong content) and ``OSError`` if it cannot be opened.
    """
    source = os.fspath(path)
    file, size = _open_regular(source)
    with file:
        if size == 0:
            raise TFPickleError(f"{source}: the file is empty, not a TF network pickle")
        if file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
            raise TFPickleError(f"{source}: a PyTorch/zip checkpoint, not a TF network pickle")
        file.seek(0)
        reader = _Reader(file, size, digest)
        try:
            data = _Parser(reader, source).run()
        except UnsafePickleError:
            raise
        except pickle.UnpicklingError as error:  # truncated or corrupt data, text, another format
            raise TFPickleError(f"{source}: not a readable TF network pickle (UnpicklingError: {error})") from None
        if digest is not None:
            reader.drain()
    if type(data) is not tuple or len(data) not in (3, 4):
        got = (f"a tuple of {len(data)}" if type(data) is tuple
               else "a single dnnlib.tflib.network.Network" if type(data) is _Record and data.kind == "network"
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

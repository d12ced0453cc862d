"""A budgeted pickle reader that executes nothing: the opcode interpreter under :mod:`.tf_pickle`.

The file is hostile data. It is never handed to :mod:`pickle` (nor to copyreg or numpy's unpickling): :class:`Parser`
runs the opcodes of protocols 2-4 itself and builds only str/bytes/int/float/bool/None, tuples, lists, dicts with str
keys and inert :class:`Record` s of the globals a :class:`PickleFormat` admits (NEWOBJ + BUILD or REDUCE: the
arguments and state are recorded, nothing is called). Any other global, a persistent id or an extension code raises
:class:`UnsafePickleError`; other opcodes are unsupported. The file size (``MAX_TOTAL_BYTES``), the opcodes run
(``MAX_NODES``) and the bytes of all strings (``MAX_STRING_BYTES``) are checked before the memory or time is spent.

Only regular files are opened (a FIFO, device or directory is refused, and the open never blocks). Every problem of
the file raises :class:`PickleRefusedError` (one line, naming the file); ``OSError`` means it could not be opened.
"""

from __future__ import annotations

import os
import pickle
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..errors import UsageError

MAX_TOTAL_BYTES = 2 * 2**30
"""File size, and array bytes with shared arrays counted once per use (official encoder pickles: ~0.9 GB)."""
MAX_NODES = 1_000_000
"""Opcodes run, and networks + variables visited with shared ones counted once per use (official: ~18k, ~650)."""
MAX_STRING_BYTES = 16 * 2**20
"""UTF-8 bytes of all strings together (official: ~0.3 MiB, mostly ``build_module_src``)."""

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save files (and other zip archives) start with it
_MAX_GLOBAL_NAME = 256  # bytes of a protocol 0-3 GLOBAL line
_MAX_PROTOCOL = 4  # the released network pickles: pickle.HIGHEST_PROTOCOL of Python 3.6


class PickleRefusedError(UsageError):
    """The file is not a pickle of the expected format (unreadable, unsafe or over budget); the message names it."""


class UnsafePickleError(PickleRefusedError, pickle.UnpicklingError):
    """The pickle references a global the format does not admit, a persistent id or an extension code."""


class Global:
    """An admitted global: a token the parser can NEWOBJ (``call="newobj"``) or REDUCE (``call="reduce"``), never a
    Python callable. ``record_label`` names what it builds in messages."""

    __slots__ = ("kind", "call", "record_label")
    label = "a global"

    def __init__(self, kind: str, call: str, record_label: str) -> None:
        self.kind, self.call, self.record_label = kind, call, record_label


class Record:
    """Arguments (REDUCE/NEWOBJ) and state (BUILD) of an admitted global, for the caller to validate."""

    __slots__ = ("kind", "args", "state", "label")

    def __init__(self, cls: Global, args: tuple) -> None:
        self.kind, self.args, self.state, self.label = cls.kind, args, None, cls.record_label


@dataclass(frozen=True)
class PickleFormat:
    """What a pickle may hold, and how refusals name the format."""

    globals: Mapping[tuple[str, str], Global]
    expected: str  # "an official GH-Feat/StyleGAN network pickle": refusals say "not <expected>"
    noun: str  # "TF network pickle": unreadable files are "not a readable <noun>"
    allowed: str  # the admitted globals, in words
    reducible: str  # the REDUCE-able globals, in words
    creatable: str  # the NEWOBJ-able globals, in words


def quote(text: str, limit: int = 80) -> str:
    """A file-controlled string for a message: ASCII-escaped (one line), cut at ``limit`` characters."""
    return ascii(text[:limit]) + ("..." if len(text) > limit else "")


def describe_value(value: Any) -> str:
    """A file-controlled value for a message, never through the repr of an arbitrary object."""
    if value is None or type(value) in (bool, float) or (type(value) is int and abs(value) < 10**15):
        return repr(value)
    if type(value) is int:
        return "a large int"
    if type(value) is str:
        return quote(value)
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
    """Stack machine for the pickle opcodes of protocols 2-4; executes nothing."""

    def __init__(self, reader: _Reader, source: str, spec: PickleFormat) -> None:
        self.reader, self.source, self.spec = reader, source, spec
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
        raise PickleRefusedError(f"{self.source}: more than {MAX_NODES:,} pickle opcodes (budget MAX_NODES): "
                                 f"not {self.spec.expected}")

    def integer(self, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.reader.take(size), "little", signed=signed)

    def count_string(self, size: int) -> None:
        self.string_bytes += size
        if self.string_bytes > MAX_STRING_BYTES:
            raise PickleRefusedError(f"{self.source}: more than {MAX_STRING_BYTES:,} bytes of strings "
                                     f"(budget MAX_STRING_BYTES): not {self.spec.expected}")

    def text(self, size: int) -> str:
        self.count_string(size)
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
            raise pickle.UnpicklingError(f"pickle protocol {version}: only protocols up to {_MAX_PROTOCOL} are read")

    def put(self, key: int) -> None:
        self.memo[key] = self.top()

    def recall(self, key: int) -> None:
        if key not in self.memo:
            raise pickle.UnpicklingError(f"memo key {key} is missing")
        self.push(self.memo[key])

    def extend(self, items: list[Any]) -> None:
        target = self.top()
        if type(target) is not list:
            raise pickle.UnpicklingError(f"APPEND to {describe_value(target)}")
        target.extend(items)

    def new_dict(self, items: list[Any]) -> None:
        self.push({})
        self.set_items(items)

    def set_items(self, items: list[Any]) -> None:
        target = self.top()
        if type(target) is not dict or len(items) % 2:
            raise pickle.UnpicklingError(f"SETITEM on {describe_value(target)}")
        for key, value in zip(items[::2], items[1::2]):
            if type(key) is not str:
                raise pickle.UnpicklingError(f"dict key {describe_value(key)} is not a string")
            target[key] = value

    def find(self, module: Any, name: Any) -> Global:
        if type(module) is not str or type(name) is not str:
            raise pickle.UnpicklingError("a global name is not a string")
        if (module, name) not in self.spec.globals:
            raise UnsafePickleError(f"{self.source}: refusing global {quote(f'{module}.{name}')}: not "
                                    f"{self.spec.expected} (only {self.spec.allowed} are allowed)")
        return self.spec.globals[(module, name)]

    def global_line(self) -> str:
        line = self.reader.line()
        self.count_string(len(line))
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            raise pickle.UnpicklingError("a GLOBAL name is not UTF-8") from None

    def call(self, function: Any, args: Any) -> None:
        """REDUCE: only globals admitted with ``call="reduce"``, whose arguments are recorded."""
        if type(function) is not Global or function.call != "reduce" or type(args) is not tuple:
            raise pickle.UnpicklingError(f"REDUCE calls {describe_value(function)}: only {self.spec.reducible} may "
                                         "be called")
        self.push(Record(function, args))

    def new(self, cls: Any, args: Any) -> None:
        """NEWOBJ without arguments: only globals admitted with ``call="newobj"``."""
        if type(cls) is not Global or cls.call != "newobj" or type(args) is not tuple or args:
            raise pickle.UnpicklingError(f"NEWOBJ of {describe_value(cls)}: only {self.spec.creatable} is created")
        self.push(Record(cls, ()))

    def build(self, state: Any) -> None:
        target = self.top()
        if type(target) is not Record or target.state is not None or state is None:
            raise pickle.UnpicklingError(f"BUILD on {describe_value(target)}")
        target.state = state

    def refuse(self, what: str) -> None:
        raise UnsafePickleError(f"{self.source}: refusing {what}: not {self.spec.expected}")


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


def _open_regular(source: str) -> tuple[BinaryIO, int]:
    """Open a regular file for reading; anything else (FIFO, device, directory, socket) is refused, never waited on."""
    info = os.stat(source)
    if not stat.S_ISREG(info.st_mode):
        kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
        kind = next((name for test, name in kinds if test(info.st_mode)), "not a file")
        raise PickleRefusedError(f"{source}: {kind}, not a regular file")
    if info.st_size > MAX_TOTAL_BYTES:
        raise PickleRefusedError(f"{source}: {info.st_size:,} bytes, more than MAX_TOTAL_BYTES ({MAX_TOTAL_BYTES:,})")
    # O_NONBLOCK: should the path be swapped for a FIFO after the stat, the open still returns at once
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino, opened.st_size) != (info.st_dev, info.st_ino, info.st_size):
        os.close(fd)
        raise PickleRefusedError(f"{source}: the file changed while it was opened")
    return os.fdopen(fd, "rb"), info.st_size


def read_pickle(path: str | os.PathLike[str], spec: PickleFormat, digest: Any = None) -> Any:
    """The object a pickle file describes, built from plain data and :class:`Record` s of ``spec``'s globals.

    ``digest`` (a ``hashlib`` object) is fed every byte of the file. Raises :class:`UnsafePickleError` for a global
    ``spec`` does not admit, :class:`PickleRefusedError` for any other file that is not such a pickle (not a regular
    file, empty, zip/``torch.save``, truncated, corrupt, over budget) and ``OSError`` if it cannot be opened.
    """
    source = os.fspath(path)
    file, size = _open_regular(source)
    with file:
        if size == 0:
            raise PickleRefusedError(f"{source}: the file is empty, not a {spec.noun}")
        if file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
            raise PickleRefusedError(f"{source}: a PyTorch/zip checkpoint, not a {spec.noun}")
        file.seek(0)
        reader = _Reader(file, size, digest)
        try:
            data = _Parser(reader, source, spec).run()
        except UnsafePickleError:
            raise
        except pickle.UnpicklingError as error:  # truncated or corrupt data, text, another format
            raise PickleRefusedError(f"{source}: not a readable {spec.noun} (UnpicklingError: {error})") from None
        if digest is not None:
            reader.drain()
    return data


__all__ = [
    "MAX_NODES",
    "MAX_STRING_BYTES",
    "MAX_TOTAL_BYTES",
    "Global",
    "PickleFormat",
    "PickleRefusedError",
    "Record",
    "UnsafePickleError",
    "describe_value",
    "quote",
    "read_pickle",
]

"""Hostile pickles against the converter (ghfeat_hf/conversion/, run as conversion/convert_official_tf.py).

Every input is small: the tiny official-layout (E, G, D, Gs) of tests/official_pickles.py (random 64 px PyTorch
models), mutated here, or hand-written opcodes. A refused file must give exactly one stderr line
``ghfeat convert: error: <file>: <what>`` and exit status 2 (1 when the system refused), run nothing from the file,
write nothing (the whole test directory, including an existing output given with --overwrite, stays byte-identical)
and finish within 10 s. The memory bombs are loaded in a child process limited to 1 GiB of address space
(``RLIMIT_AS``).
"""

from __future__ import annotations

import contextlib
import copyreg
import errno
import hashlib
import json
import os
import pickle
import re
import resource
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from conversion.convert_official_tf import main
from ghfeat_hf import StyleGANDiscriminator
from ghfeat_hf.conversion import convert as converter
from ghfeat_hf.conversion.tf_pickle import MAX_NODES, TFPickleError
from ghfeat_hf.errors import one_line
from ghfeat_hf.model_card import render_model_card
from tests.official_pickles import (
    RECONSTRUCT,
    RESOLUTION,
    FakeNetwork,
    Payload,
    dumps,
    net,
    official,
    tiny_official_parts,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 10
GIB = 2**30
PREFIX = "ghfeat convert: error: "


# -- building pickles ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parts() -> dict[str, list]:
    return tiny_official_parts()


def _text(value: str) -> bytes:
    data = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _global(module: str, name: str) -> bytes:
    return _text(module) + _text(name) + pickle.STACK_GLOBAL


PROTO = pickle.PROTO + b"\x04"
HERE = "spliced-here"  # a str value that _splice replaces with hand-written opcodes


def _splice(obj, ops: bytes) -> bytes:
    """``obj`` pickled (protocol 3: no frames to fix up), with the opcode pushing ``HERE`` replaced by ``ops``."""
    raw = dumps(obj, protocol=3)
    assert raw.count(_text(HERE)) == 1
    return raw.replace(_text(HERE), ops)


# A mutation gets [E, G, D, Gs] (fresh, see `official`) and the test directory; it edits the networks in place, or
# returns the bytes of a hand-written file.
Mutation = Callable[[list, Path], "bytes | None"]


def _state(index: int, key: str, value) -> Mutation:
    """``state[key] = value`` of network ``index``."""
    return lambda nets, tmp_path: nets[index].state.__setitem__(key, value)


def _kwarg(index: int, key: str, value) -> Mutation:
    """``static_kwargs[key] = value`` of network ``index``."""
    return lambda nets, tmp_path: nets[index].state["static_kwargs"].__setitem__(key, value)


def _variable(index: int, name: str, value) -> Mutation:
    """Variable ``name`` of network ``index`` (of its component for ``synthesis/...``, ``mapping/...``) set to
    ``value``, or removed for None."""
    def mutate(nets, tmp_path):
        network, local = nets[index], name
        if name.split("/")[0] in ("synthesis", "mapping"):
            component, local = name.split("/", 1)
            network = network.state["components"][component]
        variables = [item for item in network.state["variables"] if item[0] != local]
        network.state["variables"] = variables if value is None else [*variables, (local, value)]
    return mutate


def _discriminator(build: Callable[[], FakeNetwork]) -> Mutation:
    """D replaced by ``build()``."""
    return lambda nets, tmp_path: nets.__setitem__(2, build())


def _shared_tree(levels: int, width: int) -> FakeNetwork:
    """``levels`` nested networks, each holding the same child ``width`` times: ``width**levels`` when expanded."""
    child = net("leaf", "G_mapping", [])
    for level in range(levels):
        child = net(f"n{level}", "G_style", [], {f"c{i}": child for i in range(width)})
    return child


def _component_chain(nets, tmp_path) -> bytes:
    """D replaced by 3,000 networks each the only component of the previous one (a RecursionError for a recursive
    walk); written with a raised recursion limit."""
    chain = net("leaf", "G_mapping", [])
    for level in range(3000):
        chain = net(f"n{level}", "G_style", [], {"synthesis": chain})
    nets[2] = chain
    return dumps(tuple(nets))


def _shared_array(nets, tmp_path) -> None:
    """3,000 variables of D sharing one 1 MiB array: 3 GiB once expanded, from a 1 MiB file."""
    shared = np.ones(2**18, np.float32)
    nets[2].state["variables"] = [(f"v{i}", shared) for i in range(3000)]


def _billion_laughs() -> list:
    """A list of 10 references to a list of 10 references ... 9 levels down: 10**9 leaves, 90 objects."""
    laughs: list = ["lol"]
    for _ in range(9):
        laughs = [laughs] * 10
    return laughs


def _deep_kwargs(nets, tmp_path) -> bytes:
    """A static kwarg holding a list nested 100,000 deep (hand-written: pickle.dumps itself would recurse)."""
    nets[2].state["static_kwargs"]["blur_filter"] = HERE
    return _splice(tuple(nets), pickle.EMPTY_LIST * 100_000 + pickle.APPEND * 99_999)


def _ndarray(*args) -> Payload:
    """``numpy.ndarray(*args)`` as a pickle REDUCE, instead of numpy's own array pickling."""
    return Payload(np.ndarray, *args)


def _component_key(nets, tmp_path) -> None:
    components = nets[1].state["components"]
    components["x](javascript:y)"] = components.pop("mapping")


def _without_dense0(nets, tmp_path) -> None:
    for name in ("mapping/Dense0/weight", "mapping/Dense0/bias"):
        _variable(3, name, None)(nets, tmp_path)


# -- running the converter ----------------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so the converter's one-line error handler does not swallow it."""


@contextlib.contextmanager
def deadline(seconds: int = SECONDS):
    def expire(signum, frame):
        raise Hang(f"more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: kind, size, modification time and, for regular files up to 64 MiB, a content hash."""
    entries = {}
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = Path(directory, name)
            info = path.lstat()
            small = stat.S_ISREG(info.st_mode) and info.st_size <= 2**26
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if small else None
            entries[str(path.relative_to(root))] = (stat.filemode(info.st_mode), info.st_size, info.st_mtime_ns, digest)
    return entries


def previous_output(output: Path) -> None:
    """A model directory from an earlier conversion."""
    (output / "stylegan-generator").mkdir(parents=True)
    (output / "config.json").write_text('{"model_type": "ghfeat", "previous": true}')
    (output / "stylegan-generator" / "model.safetensors").write_bytes(b"earlier weights")


def convert_cli(capsys, pickle_path: Path, output: Path, *extra: str) -> tuple[int, list[str]]:
    started = time.monotonic()
    with deadline():
        code = main(["--pickle", str(pickle_path), "--output", str(output), *extra])
    assert time.monotonic() - started < SECONDS
    return code, capsys.readouterr().err.splitlines()


def refuse(capsys, tmp_path: Path, pickle_path: Path, pattern: str, overwrite: bool = True,
           named: Path | None = None, status: int = 2, start: str | None = None) -> str:
    """Convert into an existing output; check the exit status, the single error line (it starts with ``start``,
    by default the prefix and the file ``named``, else the pickle) and that nothing changed anywhere."""
    output = tmp_path / "out"
    previous_output(output)
    before = snapshot(tmp_path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, lines = convert_cli(capsys, pickle_path, output, *(["--overwrite"] if overwrite else []))
    assert code == status and len(lines) == 1, (code, lines)
    assert lines[0].startswith(start or f"{PREFIX}{named or pickle_path}: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert snapshot(tmp_path) == before  # nothing executed or written; the previous output is byte-identical
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < GIB // 1024  # KiB
    return lines[0]


# The reader alone (numpy and ghfeat_hf/errors.py): the package's __init__ imports transformers and torch, whose
# mappings alone exceed the limit, so a bare package module stands in for it.
LIMITED_LOAD = """
import resource, sys, types
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
sys.modules["ghfeat_hf"] = types.ModuleType("ghfeat_hf")
sys.modules["ghfeat_hf"].__path__ = ["ghfeat_hf"]
from ghfeat_hf.conversion.tf_pickle import TFPickleError, load_tf_pickle
try:
    load_tf_pickle(sys.argv[1])
except TFPickleError as error:
    print(error)
# this process's own peak RSS (kB): ru_maxrss would carry the parent's peak over fork + exec
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def load_limited(path: Path) -> str:
    """``load_tf_pickle(path)`` in a child limited to 1 GiB of address space; its error message."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", LIMITED_LOAD, str(path)], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=SECONDS)
    assert time.monotonic() - started < SECONDS
    assert result.returncode == 0, result.stderr[-2000:]
    message, peak_kib = result.stdout.splitlines()
    assert int(peak_kib) < GIB // 1024
    return message


# -- the cases ----------------------------------------------------------------------------------------------------

MARKER = "pwned"  # the file the payloads would create, in the test directory


def _os_system(nets, tmp_path) -> None:
    nets[2].state["variables"].append(("evil", Payload(os.system, f"touch {tmp_path / MARKER}")))


def _eval(nets, tmp_path) -> None:
    nets[0].state["static_kwargs"]["depth"] = Payload(eval, f"open({str(tmp_path / MARKER)!r}, 'w')")


def _inst(nets, tmp_path) -> bytes:
    return PROTO + pickle.MARK + _text(f"touch {tmp_path / MARKER}") + pickle.INST + b"os\nsystem\n" + pickle.STOP


def _ext_with_warm_copyreg(nets, tmp_path) -> bytes:
    copyreg._extension_cache[240] = os.system  # a copy of the cache: see the test
    return PROTO + pickle.EXT1 + b"\xf0" + _text(f"touch {tmp_path / MARKER}") + pickle.TUPLE1 + pickle.REDUCE + b"."


def _call_network(nets, tmp_path) -> bytes:
    return PROTO + _global("dnnlib.tflib.network", "Network") + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP


def _build_on_dict(nets, tmp_path) -> bytes:
    return PROTO + pickle.EMPTY_DICT + pickle.EMPTY_DICT + pickle.BUILD + pickle.STOP


F4 = np.dtype("f4")
DEPTH_BOMB = ("tree-2^40", _discriminator(lambda: _shared_tree(40, 2)),
              r"item 2 \(n39\)\.components\['c0'\] .*: components nested more than 8 deep \(budget MAX_DEPTH\)")
WIDTH_BOMB = ("tree-12^6", _discriminator(lambda: _shared_tree(6, 12)),
              r"expand to more than 1,000,000 networks and variables \(budget MAX_NODES")
SHARED_ARRAY = ("shared-array-3GiB", _shared_array,
                r"variable 'v\d+': the variables expand to more than 2,147,483,648 bytes \(budget MAX_TOTAL_BYTES")
ZERO_STRIDE = ("zero-stride-1GiB", _variable(2, "4x4/Dense1/weight", _ndarray((2**28,), F4, b"\0" * 4, 0, (0,))),
               r"variable '4x4/Dense1/weight' has zero, negative or overlapping strides")
LAUGHS = ("billion-laughs", _kwarg(0, "blur_filter", _billion_laughs()),
          r"item 0 \(E_gpu0\): static_kwargs\['blur_filter'\] must be \[1, 2, 1\], got a list")
DEEP_KWARGS = ("deep-kwargs", _deep_kwargs, r"static_kwargs\['blur_filter'\] must be \[1, 2, 1\], got a list")

# (id, mutation, expected message): each class of the issue
CASES = [
    # code execution: never
    ("os.system", _os_system, r"refusing global '(posix|os)\.system'"),
    ("eval", _eval, r"refusing global 'builtins\.eval'"),
    ("INST", _inst, r"unsupported opcode b'i'"),
    ("EXT+copyreg", _ext_with_warm_copyreg, r"refusing an extension code"),
    ("REDUCE-network", _call_network, r"REDUCE calls a global: only numpy"),
    ("BUILD-dict", _build_on_dict, r"BUILD on a dict"),
    # uninitialised memory, dtypes and values of the weights
    ("ndarray-no-buffer", _variable(2, "4x4/Dense1/weight", _ndarray((32, 1), F4)),
     r"item 2 \(D\): variable '4x4/Dense1/weight' has no data"),
    ("reconstruct-no-BUILD", _variable(2, "4x4/Dense1/weight", Payload(RECONSTRUCT, np.ndarray, (0,), b"b")),
     r"variable '4x4/Dense1/weight' has no data"),
    ZERO_STRIDE,
    ("overlapping-strides", _variable(0, "Conv0/weight", _ndarray((7, 7, 3, 8), F4, b"\0" * 4704, 0, (4, 4, 4, 4))),
     r"variable 'Conv0/weight' has zero, negative or overlapping strides"),
    ("complex64", _variable(0, "Conv0/weight", np.zeros((7, 7, 3, 8), np.complex64)),
     r"variable 'Conv0/weight' has dtype 'c8': weights must be float16, float32 or float64"),
    ("int32", _variable(3, "mapping/Dense0/bias", np.zeros(16, np.int32)),
     r"item 3 \(Gs\)\.components\['mapping'\] \(G_mapping\): variable 'Dense0/bias' has dtype 'i4'"),
    ("NaN", _variable(0, "Conv0/batch_norm/gamma", np.full(8, np.nan, np.float32)),
     r"variable 'Conv0/batch_norm/gamma' holds NaN or infinite values"),
    ("inf", _variable(1, "synthesis/4x4/Const/const", np.full((1, 32, 4, 4), np.inf, np.float32)),
     r"\(G_synthesis\): variable '4x4/Const/const' holds NaN or infinite values"),
    ("beyond-float32", _variable(0, "Conv0/batch_norm/beta", np.full(8, 1e300)),
     r"E variable 'Conv0/batch_norm/beta' has values beyond the float32 range"),
    ("negative-variance", _variable(0, "Conv0/batch_norm/moving_variance", np.full(8, -1, np.float32)),
     r"'Conv0/batch_norm/moving_variance' \(a BatchNorm variance\) has negative values"),
    # budgets: shared sub-objects, nesting, memo bombs
    DEPTH_BOMB,
    WIDTH_BOMB,
    SHARED_ARRAY,
    ("chain-3000", _component_chain, r"components nested more than 8 deep"),
    LAUGHS,
    DEEP_KWARGS,
    # untrusted strings
    ("name-html", _state(1, "name", "<script>alert(1)</script>"), r"'name' '<script>alert\(1\)</script>' is not \["),
    ("name-newline", _state(3, "name", "Gs\n# injected"), r"'name' 'Gs\\n# injected' is not \["),
    ("build-func-markdown", _state(2, "build_func_name", "D_basic`](javascript:x)"), r"'build_func_name' .* is not \["),
    ("component-key", _component_key, r"component name 'x\]\(javascript:y\)' is not \["),
    ("variable-newline", _variable(2, "4x4/Dense1/bias\n<b>", np.zeros(1, np.float32)),
     r"variable name '4x4/Dense1/bias\\n<b>' is not \["),
    ("kwargs-unknown-key", _kwarg(2, "payload", "x"), r"static_kwargs key 'payload' is not an argument of the official"),
    ("kwargs-object", _kwarg(2, "resolution", {"nested": ["object"]}),
     r"static_kwargs\['resolution'\] must be a power of two in \[4, 1024\], got a dict"),
    # values that parse but are nonsense
    *[(f"mbstd_group_size={value!r}", _kwarg(2, "mbstd_group_size", value),
       r"static_kwargs\['mbstd_group_size'\] must be a power of two in \[2, 64\]") for value in (0, -1, 1, 3, True, 4.0)],
    ("mbstd_num_features=3", _kwarg(2, "mbstd_num_features", 3),
     r"D: mbstd_num_features=3 does not divide the 32 feature maps of the 4x4 block"),
    ("fmap_decay=inf", _kwarg(1, "fmap_decay", float("inf")), r"static_kwargs\['fmap_decay'\] must be a number in"),
    ("no-feature-maps", _kwarg(2, "fmap_base", 1), r"D: fmap_base/fmap_decay/fmap_max give blocks without feature maps"),
    ("resolution=2^2000", _kwarg(2, "resolution", 2**2000), r"static_kwargs\['resolution'\] .* got a large int"),
    ("label_size", _kwarg(3, "label_size", 10), r"static_kwargs\['label_size'\] must be 0, got 10"),
    ("depth", _kwarg(0, "depth", 19), r"static_kwargs\['depth'\] must be 18 or 34 or 50 or 101, got 19"),
    # wrong layouts that used to end in tracebacks
    ("IndexError", _variable(0, "Conv0/weight", np.zeros(8, np.float32)),
     r"Encoder variable 'Conv0/weight' has shape \[8\], expected 4 dimensions"),
    ("KeyError", _without_dense0, r"mapping variable 'Dense0/weight' is missing"),
    ("broken-D-after-valid-E", _variable(2, "4x4/Dense1/weight", np.zeros((33, 1), np.float32)),
     r"D variable '4x4/Dense1/weight' has shape \[33, 1\], expected \[1, 32\]"),
]


def hostile_file(parts: dict[str, list], tmp_path: Path, mutate: Mutation) -> Path:
    nets = official(parts)
    data = mutate(nets, tmp_path)
    path = tmp_path / "hostile.pkl"
    path.write_bytes(data if data is not None else dumps(tuple(nets)))
    return path


@pytest.mark.parametrize("mutate, pattern", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_pickle_is_refused_in_one_line_without_side_effects(parts, tmp_path, capsys, monkeypatch, mutate,
                                                                    pattern):
    monkeypatch.setattr(copyreg, "_extension_cache", dict(copyreg._extension_cache))
    path = hostile_file(parts, tmp_path, mutate)
    refuse(capsys, tmp_path, path, pattern)
    assert not (tmp_path / MARKER).exists()


def _length_claim(opcode: bytes) -> Mutation:
    """A 20-byte file announcing a 1 TiB bytes/str operand."""
    return lambda nets, tmp_path: PROTO + opcode + struct.pack("<Q", 2**40) + b"x" + pickle.STOP


BOMBS = [
    ("zero-stride-512GiB", _variable(2, "4x4/Dense1/weight", _ndarray((2**37,), F4, b"\0" * 4, 0, (0,))),
     ZERO_STRIDE[2]),
    ("overlapping-4GiB", _variable(2, "4x4/Dense1/weight", _ndarray((2**15, 2**15), F4, b"\0" * 8, 0, (4, 4))),
     ZERO_STRIDE[2]),
    ("no-buffer-1TiB", _variable(2, "4x4/Dense1/weight", _ndarray((2**38,), F4)), r"has no data"),
    ("bytes8-1TiB", _length_claim(pickle.BINBYTES8), r"data truncated: 1,099,511,627,776 bytes needed"),
    ("unicode8-1TiB", _length_claim(pickle.BINUNICODE8), r"more than 16,777,216 bytes of strings"),
    ("opcode-flood", lambda nets, tmp_path: PROTO + pickle.MARK + pickle.NONE * MAX_NODES + pickle.STOP,
     r"more than 1,000,000 pickle opcodes \(budget MAX_NODES\)"),
    DEPTH_BOMB, WIDTH_BOMB, SHARED_ARRAY, LAUGHS, DEEP_KWARGS,
]


@pytest.mark.parametrize("mutate, pattern", [case[1:] for case in BOMBS], ids=[case[0] for case in BOMBS])
def test_resource_bombs_are_refused_under_1_gib_and_10_s(parts, tmp_path, mutate, pattern):
    path = hostile_file(parts, tmp_path, mutate)
    assert path.stat().st_size < 4 * 2**20  # the tiny networks (1.5 MB) + at most 1 MiB
    message = load_limited(path)
    assert message.startswith(f"{path}: ") and re.search(pattern, message), message


def _special(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / "special.pkl"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "3GiB-sparse":
        with open(path, "wb") as handle:
            handle.truncate(3 * GIB)
    elif kind == "character-device":
        path = Path("/dev/zero")
    return path


@pytest.mark.parametrize("kind, pattern", [
    ("fifo", r"a FIFO, not a regular file"),
    ("character-device", r"a character device, not a regular file"),
    ("directory", r"a directory, not a regular file"),
    ("missing", r"No such file or directory"),
    ("3GiB-sparse", r"3,221,225,472 bytes, more than MAX_TOTAL_BYTES \(2,147,483,648\)"),
])
def test_only_regular_files_within_budget_are_read(tmp_path, capsys, kind, pattern):
    path = _special(kind, tmp_path)
    if kind == "character-device" and not path.exists():
        pytest.skip("no /dev/zero")
    if kind == "missing":  # the system refused: status 1, the shared "<what>: <file>" of an OSError
        refuse(capsys, tmp_path, path, pattern, status=1, start=f"{PREFIX}No such file or directory: {path}")
    else:
        refuse(capsys, tmp_path, path, pattern)


# -- all-or-nothing output ----------------------------------------------------------------------------------------


@pytest.fixture
def valid_pickle(parts, tmp_path) -> Path:
    path = tmp_path / "valid.pkl"
    path.write_bytes(dumps(tuple(official(parts))))
    return path


def test_an_existing_output_is_kept_without_overwrite(valid_pickle, tmp_path, capsys):
    refuse(capsys, tmp_path, valid_pickle, r"already exists; pass --overwrite to replace it", overwrite=False,
           named=tmp_path / "out")


def test_an_output_holding_the_pickle_is_never_replaced(parts, tmp_path, capsys):
    inside = tmp_path / "out" / "net.pkl"
    inside.parent.mkdir()
    inside.write_bytes(dumps(tuple(official(parts))))
    refuse(capsys, tmp_path, inside, r"holds the input pickle .*net\.pkl; choose another output", named=tmp_path / "out")


def test_a_failure_while_writing_leaves_the_output_and_no_temporary_directory(valid_pickle, tmp_path, capsys,
                                                                             monkeypatch):
    def disk_full(model, directory, **kwargs):
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"half written")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(converter, "save_stylegan_directory", disk_full)
    refuse(capsys, tmp_path, valid_pickle, r"could not be written \(No space left on device\)", status=1,
           named=tmp_path / "out")


def test_overwrite_replaces_the_output_and_leaves_nothing_else(valid_pickle, tmp_path, capsys):
    output = tmp_path / "out"
    previous_output(output)
    code, _ = convert_cli(capsys, valid_pickle, output, "--overwrite")
    assert code == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "valid.pkl"]  # no staging or old copy left
    assert "previous" not in json.loads((output / "config.json").read_text())
    assert (output / "stylegan-generator" / "model.safetensors").read_bytes() != b"earlier weights"
    assert (output / "stylegan-discriminator" / "config.json").exists()
    discriminator = StyleGANDiscriminator.from_pretrained(output / "stylegan-discriminator").eval()
    with torch.no_grad():  # mbstd_group_size 4 from the pickle, on the batches it must serve
        for batch in (4, 8, 2):
            scores = discriminator(torch.rand(batch, 3, RESOLUTION, RESOLUTION) * 2 - 1)
            assert scores.shape == (batch, 1) and torch.isfinite(scores).all()


# -- model cards and provenance -----------------------------------------------------------------------------------

HOSTILE_NAME = "evil<img src=x onerror=alert(1)>[x](javascript:alert(1))`code`*b*|c|\n# heading\u202e.pkl"
HOSTILE_DOMAIN = "<b>faces</b>\n\n## Injected\n---\n| a |"


def test_cards_and_provenance_hold_only_escaped_untrusted_strings(valid_pickle, tmp_path, capsys):
    path = valid_pickle.rename(tmp_path / HOSTILE_NAME)
    output = tmp_path / "out"
    code, _ = convert_cli(capsys, path, output, "--domain", HOSTILE_DOMAIN)
    assert code == 0
    render_model_card(output, metrics={"<script>x</script> | y": "1\n## z", "PSNR [dB]": 12.5})
    for directory in (output, output / "stylegan-generator", output / "stylegan-discriminator"):
        card = (directory / "README.md").read_text()
        body = card.split("---\n", 2)[2]
        assert not re.search(r"<(img|b|script)|(?<!\\)\]\(javascript|\u202e", body)  # no tag, link or bidi override
        assert not re.search(r"^(# heading|## Injected|## z|---)", body, re.MULTILINE)
        assert "evil&lt;img src=x onerror=alert(1)&gt;\\[x\\](javascript:alert(1))\\`code\\`\\*b\\*\\|c\\| \\# heading" in card
        assert "object at 0x" not in card
        provenance = json.loads((directory / "provenance.json").read_text())
        assert provenance["source_file"] == HOSTILE_NAME and "<img" not in provenance["source"]
    card = (output / "README.md").read_text()  # the GH-Feat card also shows the domain and the metrics
    assert "(&lt;b&gt;faces&lt;/b&gt; \\#\\# Injected --- \\| a \\|)" in card
    assert "| &lt;script&gt;x&lt;/script&gt; \\| y | 1 \\#\\# z |" in card and "| PSNR \\[dB\\] | 12.5 |" in card
    assert "static kwargs `size=64, filter=64, filter_max=512, num_layers=10, is_training=True, depth=18`" in card


# -- one line, or the traceback on demand ---------------------------------------------------------------------------


def test_one_line_collapses_whitespace_and_escapes_what_could_forge_terminal_output():
    text = "a\n\n b\t\r\x0bc  \x1b[31mred\x00 \x7f\x9b2J \u202a\u202b\u202c\u202d\u202e \u2066\u2067\u2068\u2069 é 中"
    assert one_line(text) == ("a b c \\x1b[31mred\\x00 \\x7f\\x9b2J \\u202a\\u202b\\u202c\\u202d\\u202e "
                              "\\u2066\\u2067\\u2068\\u2069 é 中")
    assert one_line(OSError("x\ny")) == "x y"


def test_debug_raises_with_the_traceback(parts, tmp_path):
    path = hostile_file(parts, tmp_path, _kwarg(2, "mbstd_group_size", 3))
    with pytest.raises(TFPickleError, match="mbstd_group_size"):
        main(["--pickle", str(path), "--output", str(tmp_path / "out"), "--debug"])


def test_an_unexpected_error_is_still_one_line(valid_pickle, tmp_path, capsys, monkeypatch):
    def boom(networks):
        raise RuntimeError("first line\nsecond \x1b[2Jline\u202e")

    monkeypatch.delenv("GHFEAT_DEBUG", raising=False)
    monkeypatch.setattr(converter, "convert_networks", boom)
    refuse(capsys, tmp_path, valid_pickle, r"first line second \\x1b\[2Jline\\u202e \(run again with GHFEAT_DEBUG=1",
           status=1, start=f"{PREFIX}RuntimeError: ")


@pytest.mark.parametrize("argument", ["--repo-id", "--push-to-hub"])
def test_repo_ids_that_would_break_the_card_snippet_are_refused(valid_pickle, tmp_path, capsys, argument):
    with pytest.raises(SystemExit) as exit_info:
        main(["--pickle", str(valid_pickle), "--output", str(tmp_path / "out"), argument, 'org/x")\n```\n<b>'])
    assert exit_info.value.code == 2 and "convert: error: argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_push_to_hub_script_refuses_bad_repo_ids_and_metrics_in_one_line(tmp_path, capsys):
    from conversion import push_to_hub

    with pytest.raises(SystemExit) as exit_info:
        push_to_hub.main([str(tmp_path), "--repo-id", "org/<script>"])
    assert exit_info.value.code == 2 and "push_to_hub: error: argument --repo-id" in capsys.readouterr().err
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"PSNR": {"nested": ["object"]}}))
    assert push_to_hub.main([str(tmp_path), "--repo-id", "org/model", "--metrics", str(metrics)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"push_to_hub: error: {metrics}: metrics must be a JSON object of name -> number, string or bool"

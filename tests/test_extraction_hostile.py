"""`ghfeat extract` against hostile inputs and states: tampered progress records, inputs changed between a kill and
the resume, concurrent runs, leftovers of killed runs, FIFOs and devices named like images, unwritable destinations,
binary list files and damaged finished outputs."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ghfeat_hf import GHFeatModel
from ghfeat_hf.cli import main
from ghfeat_hf.errors import UsageError
from ghfeat_hf.extraction import (
    extract_features,
    file_sources,
    fingerprint_file,
    partial_path,
    read_extraction_metadata,
    writers,
)
from ghfeat_hf.extraction.storage import record_checksum
from ghfeat_hf.hub import save_ghfeat_directory
from ghfeat_hf.image_io import open_image
from ghfeat_hf.runtime import load_model

from .conftest import tiny_ghfeat_config

pytestmark = pytest.mark.usefixtures("one_thread", "hostile_budget")
COUNT = 8
REPO = Path(__file__).resolve().parents[1]


def write_images(root: Path, count: int = COUNT, suffix: str = "png", seed: int = 0) -> Path:
    """`count` random 16 px RGB images `img_<i>.<suffix>` (BMP files of one size all have the same byte size)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"img_{index}.{suffix}")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_ghfeat_directory(GHFeatModel(tiny_ghfeat_config()).eval(), tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module", autouse=True)
def quiet_model_loading():
    """No "Loading weights" bar from transformers on stderr, where the CLI's one error line is checked."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture
def run(loaded):
    """`extract_features` with the tiny model, batches of 2, no bar."""

    def extract(source, output, **kwargs):
        return extract_features(*loaded, source, output, **{"batch_size": 2, "progress": False, **kwargs})

    return extract


@pytest.fixture
def interrupted(run):
    """Run until `batches` batches are committed, then stop as Ctrl-C would."""

    def stop_after(source, output, batches: int = 2, **kwargs):
        def stop(progress):
            if progress.batches == batches:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run(source, output, on_batch=stop, **kwargs)
        assert partial_path(output).is_dir() and not output.exists()

    return stop_after


class Blocked(BaseException):
    """Raised by the `deadline` alarm; a `BaseException`, so that no per-image `except Exception` swallows it."""


@pytest.fixture
def deadline():
    """Fail (instead of hanging) when a test blocks, e.g. on a FIFO opened for reading: the alarm interrupts the
    blocking call, and again every second after that until the test ends."""

    def expire(signum, frame):
        signal.alarm(1)
        raise Blocked("the test blocked past its deadline")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def cli_error(capsys, model_dir: Path, *argv: str, status: int = 2) -> str:
    """Run `ghfeat extract ARGV`; it must fail with `status` (2: a usage error, 1: the system refused a write) and
    exactly one line on stderr, no traceback."""
    assert main(["extract", *argv, "--model", str(model_dir), "--batch-size", "2", "--num-workers", "0",
                 "--no-progress"]) == status
    err = capsys.readouterr().err
    assert err.startswith("ghfeat extract: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def rows_of(output: Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(output)
    return table.column("id").to_pylist(), np.stack(table.column("ghfeat").to_numpy(zero_copy_only=False))


def committed_vectors(output: Path) -> dict[str, np.ndarray]:
    """The rows an interrupted run committed, read straight from its first part."""
    table = pa.ipc.open_stream(pa.memory_map(os.fspath(partial_path(output) / "part-00000.arrows"))).read_all()
    return dict(zip(table.column("id").to_pylist(), np.stack(table.column("ghfeat").to_numpy(zero_copy_only=False))))


# ----------------------------------------------------------------------------------------------------------------
# Tampered progress records


def _bad_checksum(state, directory):
    state["parts"][0]["rows"] += 1  # and the checksum is left as it was


def _duplicate_part(state, directory):
    state["parts"].append(dict(state["parts"][0]))


def _overlapping_part(state, directory):
    shutil.copyfile(directory / "part-00000.arrows", directory / "part-00001.arrows")
    state["parts"].append({**state["parts"][0], "file": "part-00001.arrows"})


def _traversal(state, directory):
    state["parts"][0]["file"] = "../../../../../../etc/passwd"


def _absolute(state, directory):
    state["parts"][0]["file"] = "/etc/passwd"


def _symlinked_part(state, directory):
    outside = directory.parent / "elsewhere.arrows"
    shutil.copyfile(directory / "part-00000.arrows", outside)
    (directory / "part-00000.arrows").unlink()
    (directory / "part-00000.arrows").symlink_to(outside)


def _malformed(state, directory):
    state["parts"][0]["rows"] = "many"


def _dropped_out_of_range(state, directory):
    state["parts"][0]["dropped"] = [10**6]


def _old_version(state, directory):
    state["version"] = 1


def _modified_part(state, directory):
    with open(directory / "part-00000.arrows", "r+b") as handle:
        handle.seek(state["parts"][0]["bytes"] - 20)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


TAMPERING = {
    _bad_checksum: "fails its checksum",
    _duplicate_part: "lists the part 'part-00000.arrows' twice",
    _overlapping_part: "commits the item 'img_0.png' more than once",
    _traversal: "names a part outside its own directory: '../../",
    _absolute: "names a part outside its own directory: '/etc/passwd'",
    _symlinked_part: "names a part outside its own directory: 'part-00000.arrows'",
    _malformed: "malformed part",
    _dropped_out_of_range: "malformed part",
    _old_version: "has version 1",
    _modified_part: "is not the part its progress record committed",
}


@pytest.fixture(scope="module")
def interrupted_template(loaded, images, tmp_path_factory) -> Path:
    """The partial directory of a run over `images` stopped after two batches (4 rows)."""
    output = tmp_path_factory.mktemp("template") / "out.parquet"

    def stop(progress):
        if progress.batches == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(*loaded, images, output, batch_size=2, progress=False, on_batch=stop)
    return partial_path(output)


@pytest.mark.parametrize("tamper", list(TAMPERING), ids=[function.__name__[1:] for function in TAMPERING])
def test_tampered_progress_record_is_refused(tamper, interrupted_template, images, run, tmp_path, monkeypatch):
    output = tmp_path / "out.parquet"
    directory = partial_path(output)
    shutil.copytree(interrupted_template, directory, symlinks=True)
    state = json.loads((directory / "progress.json").read_text())
    tamper(state, directory)
    if tamper is not _bad_checksum:
        state["checksum"] = record_checksum(state)  # a consistent-looking record: its content must be checked
    (directory / "progress.json").write_text(json.dumps(state))
    opened = []
    real_memory_map = pa.memory_map
    monkeypatch.setattr(pa, "memory_map", lambda path, *args: opened.append(path) or real_memory_map(path, *args))

    with pytest.raises(UsageError, match="cannot resume: ") as refused:
        run(images, output, resume=True)
    assert TAMPERING[tamper] in str(refused.value) and "--overwrite" in str(refused.value)
    assert all(Path(path).parent == directory for path in opened)  # nothing read outside the partial directory
    assert not output.exists()


def test_duplicated_part_fails_the_cli(interrupted_template, images, model_dir, tmp_path, capsys):
    """The reported case: a record listing its part twice used to give duplicate rows and exit 0."""
    output = tmp_path / "out.parquet"
    shutil.copytree(interrupted_template, partial_path(output))
    _duplicate_part(state := json.loads((partial_path(output) / "progress.json").read_text()), None)
    state["checksum"] = record_checksum(state)
    (partial_path(output) / "progress.json").write_text(json.dumps(state))
    assert "twice" in cli_error(capsys, model_dir, str(images), "-o", str(output), "--resume")
    assert main(["extract", str(images), "-o", str(output), "--model", str(model_dir), "--batch-size", "2",
                 "--num-workers", "0", "--no-progress", "--overwrite"]) == 0
    ids, _ = rows_of(output)
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == COUNT


# ----------------------------------------------------------------------------------------------------------------
# Inputs changed between the kill and the resume


def test_changed_inputs_are_extracted_again(run, interrupted, tmp_path):
    root = write_images(tmp_path / "images")
    (root / "img_1.png").write_bytes(b"not an image yet")  # a skip record in the first session
    output = tmp_path / "out.parquet"
    interrupted(root, output)  # img_0 .. img_3 done
    stale = committed_vectors(output)["img_0.png"]
    write_images(tmp_path / "other", 2, seed=1)
    for name in ("img_0.png", "img_1.png"):
        shutil.copyfile(tmp_path / "other" / name, root / name)

    with pytest.raises(UsageError, match="fingerprint: 'stat' then, 'content' now"):
        run(root, output, resume=True, fingerprint="content")
    with pytest.raises(UsageError, match=r"2 input\(s\) changed .* \(e.g. 'img_0.png'\)"):
        run(root, output, resume=True, on_changed_input="error")
    with pytest.warns(UserWarning, match=r"2 input\(s\) changed"):
        result = run(root, output, resume=True)
    assert (result.num_rows, result.num_resumed, result.num_changed, result.skipped) == (COUNT, 2, 2, [])

    ids, vectors = rows_of(output)
    assert ids == [f"img_{index}.png" for index in range(COUNT)]  # each input once, in source order
    clean = run(root, tmp_path / "clean.parquet")
    assert clean.num_rows == COUNT
    np.testing.assert_allclose(vectors, rows_of(tmp_path / "clean.parquet")[1], atol=1e-5, rtol=0)
    assert np.abs(vectors[0] - stale).max() > 1e-3  # the stale row is gone


def test_content_fingerprint_sees_same_size_same_mtime_edits(run, interrupted, tmp_path):
    """Size and mtime cannot tell a same-size rewrite whose mtime was restored; `fingerprint="content"` can."""
    root = write_images(tmp_path / "images", 6, suffix="bmp")
    output = tmp_path / "out.parquet"
    interrupted(root, output, batches=1, fingerprint="content")
    target, before = root / "img_0.bmp", os.stat(root / "img_0.bmp")
    stat_before = fingerprint_file(target, "stat")
    shutil.copyfile(write_images(tmp_path / "other", 1, suffix="bmp", seed=2) / "img_0.bmp", target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert fingerprint_file(target, "stat") == stat_before  # invisible to the default fingerprint

    with warnings.catch_warnings(record=True):
        result = run(root, output, resume=True, fingerprint="content")
    assert (result.num_rows, result.num_changed) == (6, 1)
    reference = run(root, tmp_path / "clean.parquet", fingerprint="content")
    assert reference.num_rows == 6
    np.testing.assert_allclose(rows_of(output)[1], rows_of(tmp_path / "clean.parquet")[1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Concurrent runs and leftovers of killed runs


def test_second_run_on_the_same_output_is_refused(run, images, model_dir, tmp_path, capsys):
    output = tmp_path / "out.parquet"
    errors = []

    def start_another(progress):
        if progress.batches == 1:
            with pytest.raises(UsageError, match=rf"another run \(PID {os.getpid()}\) is writing"):
                run(images, output, resume=True)
            errors.append(cli_error(capsys, model_dir, str(images), "-o", str(output), "--resume"))

    assert run(images, output, on_batch=start_another).num_rows == COUNT
    assert "another run" in errors[0]
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # the lock file is gone


def test_temporaries_of_dead_writers_are_removed(run, interrupted, images, tmp_path):
    output, recon = tmp_path / "out.npy", tmp_path / "recon"
    interrupted(images, output, reconstructions_dir=recon)
    dead, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f".out.npy.tmp-{dead}", tmp_path / f".out.npy.json.tmp-{dead}",
             partial_path(output) / f".progress.json.tmp-{dead}", recon / "deep" / f".img_0.png.tmp-{dead}"]
    kept = [tmp_path / f".out.npy.tmp-{alive}", tmp_path / f".other.npy.tmp-{dead}"]
    for path in stale + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half written")
    assert run(images, output, resume=True, reconstructions_dir=recon).num_rows == COUNT
    assert [path for path in stale if path.exists()] == []
    assert all(path.exists() for path in kept)


def test_run_killed_while_writing_the_output_resumes(images, model_dir, tmp_path):
    """SIGKILL in the middle of the final write leaves a temporary file and the lock file: the resume removes
    the first, takes the second over and writes every row once."""
    output = tmp_path / "out.parquet"
    script = (
        "import os, signal, sys\n"
        "import pyarrow.parquet as pq\n"
        "from ghfeat_hf.extraction import extract_features\nfrom ghfeat_hf.runtime import load_model\n"
        "write = pq.ParquetWriter.write_table\n"
        "def write_then_die(self, *args, **kwargs):\n"
        "    write(self, *args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "pq.ParquetWriter.write_table = write_then_die\n"
        "model, processor = load_model(sys.argv[1])\n"
        "extract_features(model, processor, sys.argv[2], sys.argv[3], batch_size=2, progress=False)\n"
    )
    process = subprocess.run([sys.executable, "-c", script, str(model_dir), str(images), str(output)], cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    leftovers = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("."))
    assert leftovers == [".out.parquet.lock", f".out.parquet.tmp-{leftovers[1].rsplit('-', 1)[1]}"]

    result = extract_features(*load_model(model_dir), images, output, batch_size=2, resume=True, progress=False)
    assert result.num_rows == result.num_resumed == COUNT
    ids, _ = rows_of(output)
    assert ids == [f"img_{index}.png" for index in range(COUNT)]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.parquet"]


# ----------------------------------------------------------------------------------------------------------------
# FIFOs, sockets and devices named like images


@pytest.mark.usefixtures("deadline")
@pytest.mark.parametrize("num_workers", [0, 1])
def test_special_files_are_skipped_unopened(run, num_workers, tmp_path):
    root = write_images(tmp_path / "images", 3)
    os.mkfifo(root / "trap.png")
    (root / "zeros.png").symlink_to("/dev/zero")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.fspath(root / "sock.png"))
    try:
        result = run(root, tmp_path / "out.parquet", num_workers=num_workers)
    finally:
        listener.close()
    assert result.num_rows == 3
    reasons = {item.id: item.error for item in result.skipped}
    assert reasons == {"sock.png": "ValueError: a socket, not a regular file (not opened)",
                       "trap.png": "ValueError: a FIFO, not a regular file (not opened)",
                       "zeros.png": "ValueError: a character device, not a regular file (not opened)"}
    assert read_extraction_metadata(tmp_path / "out.parquet")["skipped"][1]["id"] == "trap.png"


@pytest.mark.usefixtures("deadline")
def test_fifo_inputs_lists_and_globs_never_block(run, model_dir, tmp_path, capsys):
    root = write_images(tmp_path / "images", 2)
    os.mkfifo(root / "trap.png")
    with pytest.raises(ValueError, match="a FIFO, not a regular file"):
        open_image(root / "trap.png")
    listing = tmp_path / "list.txt"
    listing.write_text("images/img_0.png\nimages/trap.png\n")
    globbed = run(str(root / "*.png"), tmp_path / "glob.parquet")
    listed = run(listing, tmp_path / "list.parquet")
    for result, trap in ((globbed, (root / "trap.png").as_posix()), (listed, "images/trap.png")):
        assert [item.id for item in result.skipped] == [trap]
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(UsageError, match="cannot read the list file .*a FIFO, not a regular file"):
        file_sources([tmp_path / "pipe.txt"])
    assert "a FIFO" in cli_error(capsys, model_dir, str(tmp_path / "pipe.txt"), "-o", str(tmp_path / "f.parquet"))


# ----------------------------------------------------------------------------------------------------------------
# Destinations and list files that cannot work: one line, exit 2


def test_unusable_destinations_and_list_files(images, model_dir, tmp_path, capsys):
    (tmp_path / "taken.parquet").mkdir()
    (tmp_path / "file.txt").write_text("a regular file")
    os.mkfifo(tmp_path / "pipe.parquet")
    binary, latin = tmp_path / "binary.txt", tmp_path / "latin.lst"
    shutil.copyfile(images / "img_0.png", binary)
    latin.write_bytes("caf\xe9.png\n".encode("latin-1"))
    for argv, message in (
        ([str(images), "-o", str(tmp_path / "taken.parquet")], "is a folder: name a file ending in .parquet"),
        ([str(images), "-o", str(tmp_path / "taken.parquet"), "--overwrite"], "is a folder"),
        ([str(images), "-o", str(tmp_path / "file.txt" / "out.parquet")], "file.txt' is a file, not a folder"),
        ([str(images), "-o", str(tmp_path / "pipe.parquet"), "--overwrite"], "is not a regular file"),
        ([str(binary), "-o", str(tmp_path / "f.parquet")], "is binary, not a text list"),
        ([str(latin), "-o", str(tmp_path / "f.parquet")], "is not UTF-8 text (byte 3"),
    ):
        assert message in cli_error(capsys, model_dir, *argv), argv


def test_read_only_and_full_destinations(images, model_dir, tmp_path, capsys, monkeypatch):
    """EROFS on the first write and ENOSPC on the last one (simulated): one line each; the rows committed before
    the full disk stay and --resume finishes the run."""
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_open = os.open

    def refuse_in_read_only(path, *args, **kwargs):
        if Path(path).parent == read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", refuse_in_read_only)
        err = cli_error(capsys, model_dir, str(images), "-o", str(read_only / "f.parquet"), status=1)
    assert "Read-only file system" in err and not list(read_only.iterdir())

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    output = tmp_path / "full.parquet"
    with monkeypatch.context() as patch:
        patch.setattr(pq.ParquetWriter, "write_table", disk_full)
        err = cli_error(capsys, model_dir, str(images), "-o", str(output), status=1)
    assert "No space left on device" in err and "--resume" in err
    assert not output.exists() and not [path for path in tmp_path.iterdir() if ".tmp-" in path.name]
    assert main(["extract", str(images), "-o", str(output), "--model", str(model_dir), "--batch-size", "2",
                 "--no-progress", "--resume"]) == 0
    assert f"wrote {COUNT} rows to {output} ({COUNT} from the interrupted run)" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# Damaged finished outputs on --resume


@pytest.mark.parametrize("suffix", ["parquet", "arrow", "npy", "safetensors"])
def test_truncated_finished_output_is_refused(suffix, run, images, model_dir, tmp_path, capsys):
    output = tmp_path / f"out.{suffix}"
    run(images, output)
    data = output.read_bytes()
    output.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match=r"cannot resume: cannot read .* damaged or truncated .* --overwrite"):
        run(images, output, resume=True)
    assert "damaged or truncated" in cli_error(capsys, model_dir, str(images), "-o", str(output), "--resume")
    assert run(images, output, overwrite=True).num_rows == COUNT
    assert run(images, output, resume=True).num_resumed == COUNT


def test_short_or_flipped_finished_outputs_are_refused(run, images, tmp_path, monkeypatch):
    """An Arrow stream cut at a batch boundary still parses: its row count gives it away. A flipped byte in a
    Parquet data page fails the page checksum."""
    monkeypatch.setattr(writers, "_TARGET_CHUNK_BYTES", 1)  # one row per record batch / row group
    arrow = tmp_path / "out.arrow"
    run(images, arrow)
    with pa.memory_map(os.fspath(arrow)) as source:
        reader = pa.ipc.open_stream(source)
        batches = list(reader)
        with pa.OSFile(os.fspath(tmp_path / "short.arrow"), "wb") as sink, pa.ipc.new_stream(sink, reader.schema) as writer:
            for batch in batches[:5]:
                writer.write_batch(batch)
    shutil.move(tmp_path / "short.arrow", arrow)
    with pytest.raises(UsageError, match=f"metadata describes {COUNT} rows, it holds 5"):
        run(images, arrow, resume=True)

    parquet = tmp_path / "out.parquet"
    run(images, parquet)
    data = bytearray(parquet.read_bytes())
    data[len(data) // 3] ^= 0xFF
    parquet.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="damaged or truncated"):
        run(images, parquet, resume=True)

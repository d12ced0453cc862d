"""The benchmarks run end to end (smallest settings, tiny models); no timing assertions."""

import io
import json
import math

import pytest
from accelerate.state import AcceleratorState

from benchmarks.extract import Settings, build_parser, plan_cells, render_markdown, run_benchmark

from .conftest import tiny_ghfeat_config


def test_extract_benchmark_smallest_run():
    settings = Settings(device="cpu", batch_sizes=(2,), dtypes=("fp32",), modes=("eager", "compile"),
                        channels_last=(False, True), quick=True, num_workers=0)
    messages = []
    report = run_benchmark(settings, ghfeat_config=tiny_ghfeat_config(), reference="resnet18", log=messages.append)
    assert [result.cell.key for result in report.results] == [(2, "fp32", False, False)]
    result = report.results[0]
    for value in (result.encoder_ips, result.reference_ips, result.e2e_ips):
        assert value is not None and math.isfinite(value) and value > 0
    assert report.flops_per_image["ghfeat"] > 0 and report.flops_per_image["resnet18"] > 0
    assert {cell.key for cell, _ in report.skipped} == {(2, "fp32", c, cl) for c in (False, True)
                                                      for cl in (False, True)} - {(2, "fp32", False, False)}
    markdown = render_markdown(report)
    assert "| 2 | fp32 | eager | off |" in markdown and "Skipped cells" in markdown and "FLOP/s vs resnet18" in markdown
    assert len(messages) == 2  # the FLOPs line and one line per cell


def test_cpu_grid_plan():
    import torch

    args = build_parser().parse_args(["--batch-sizes", "1", "8", "64"])
    settings = Settings(batch_sizes=tuple(args.batch_sizes))
    cells, skipped = plan_cells(settings, torch.device("cpu"))
    assert len(cells) + len(skipped) == 3 * 2 * 2 * 2
    compiled = [cell.key for cell in cells if cell.compiled]
    assert compiled == [(8, "bf16", True, False)]
    assert {cell.key for cell in cells if cell.batch == 64} == {(64, "fp32", False, False), (64, "bf16", False, True)}
    assert [cell.key for cell in cells if not cell.e2e] == [(64, "fp32", False, False)]
    full, none = plan_cells(Settings(grid="full"), torch.device("cpu"))
    assert len(full) == 24 and not none


def test_extract_benchmark_interleaved_group_with_naive_companion():
    """A channels_last cell timed together with the naive (contiguous) cell, which is not reported itself."""
    settings = Settings(device="cpu", batch_sizes=(2,), dtypes=("fp32",), modes=("eager",), channels_last=(True,),
                        grid="full", warmup=0, repeats=2, min_time=0.0, e2e_images=2, num_workers=0)
    report = run_benchmark(settings, ghfeat_config=tiny_ghfeat_config(), reference="resnet18")
    assert [result.cell.key for result in report.results] == [(2, "fp32", False, True)]
    result = report.results[0]
    assert len(result.encoder_repeats) == 2 and result.naive_ips > 0 and result.e2e_ips > 0
    assert result.timing == "0+2x1" and result.e2e_images == 2
    assert "| resnet18 img/s |" in render_markdown(report)


def test_train_step_benchmark_interleaves_with_naive(tmp_path, capsys):
    """Smallest run of `benchmarks/train_step.py`: the ratio comes from rounds timed back to back with naive."""
    from benchmarks import train_step

    results_file = tmp_path / "results.json"
    argv = ["--device", "cpu", "--resolution", "64", "--depth", "18", "--batch_size", "2", "--iters", "1",
            "--warmup", "0", "--skip_compile", "--configs", "naive,bf16", "--threads", "1", "--json", str(results_file)]
    assert train_step.main(argv) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert "| vs naive |" in table[0]
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in table[1:]}
    assert set(rows) == {"naive", "bf16"} and rows["naive"][1] == "1" and rows["naive"][7] == "1.00x"
    results = {r["config"]: r for r in json.loads(results_file.read_text())["results"]}
    bf16 = results["bf16"]
    assert len(bf16["naive_seconds"]) == len(bf16["iteration_seconds"]) == 1  # one round, naive timed in it
    assert bf16["vs_naive"] == bf16["naive_seconds"][0] / bf16["iteration_seconds"][0]
    assert rows["bf16"][7] == f"{bf16['vs_naive']:.2f}x"


@pytest.mark.parametrize("step", ["encoder", "stylegan"])
def test_train_step_worker_fmnist32(step, monkeypatch, capsys, one_thread):
    """The per-configuration entry (`--single`) of `benchmarks/train_step.py` on the fmnist32 preset: one timed
    iteration at batch 2, reported as JSON; a StyleGAN iteration is the 4 steps of one lazy-R1 interval."""
    from benchmarks import train_step

    monkeypatch.setattr("sys.stdin", io.StringIO("1\n"))  # the driver asks for one timed iteration
    argv = ["--single", "naive", "--preset", "fmnist32", "--step", step, "--device", "cpu", "--batch_size", "2",
            "--warmup", "0"]
    try:
        assert train_step.main(argv) == 0
    finally:
        AcceleratorState._reset_state(True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "READY" and lines[1].startswith("TIMES ")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert {"config", "preset", "step", "batch_size", "images_per_iteration", "steps_per_iteration", "resolution",
            "num_channels", "params", "iteration_seconds", "median_seconds", "images_per_second", "peak_memory_mb",
            "threads", "torch"} <= set(result)
    assert (result["preset"], result["step"], result["resolution"], result["num_channels"]) == ("fmnist32", step, 32, 1)
    assert result["iteration_seconds"] == json.loads(lines[1].removeprefix("TIMES "))
    steps = {"encoder": 1, "stylegan": 4}[step]
    assert result["steps_per_iteration"] == steps and result["images_per_iteration"] == 2 * steps
    assert math.isfinite(result["images_per_second"]) and result["images_per_second"] > 0
    assert result["images_per_second"] == result["images_per_iteration"] / result["median_seconds"]
    if step == "encoder":
        assert result["depth"] == 18 and result["perceptual_size"] == 256 and set(result["params"]) == {"E", "G", "D", "VGG"}
    else:
        assert result["r1_interval"] == 4 and set(result["params"]) == {"G", "D"}


def test_extract_scaling_table_from_the_measured_numbers(tmp_path, monkeypatch, capsys):
    """`benchmarks/extract_scaling.py` on 4 tiny images with `ghfeat extract` replaced by recorded timings: the
    small runs hold one batch per process, and throughput, speedup, ideal and efficiency follow from the seconds."""
    from benchmarks import extract_scaling

    timings = {(1, 2): 2.0, (1, 8): 8.0, (2, 4): 3.0, (2, 8): 6.0, (4, 8): 9.0}  # (processes, images) -> s

    def run_cell(folder, output, processes, args):
        rows = len(list(folder.iterdir()))
        lines = [f"process {index}: {rows // processes} rows encoded in 1.0 s (2.0 images/s), peak RSS "
                 f"{100 + index} MiB" for index in range(processes if processes > 1 else 0)]
        return {"processes": processes, "seconds": timings[processes, rows], "rows": rows, "process_lines": lines}

    monkeypatch.setattr(extract_scaling, "run_cell", run_cell)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    out = tmp_path / "scaling.md"
    assert extract_scaling.main(["--processes", "2", "4", "--images", "8", "--size", "16", "--batch-size", "2",
                                 "--out", str(out), "--json", str(tmp_path / "raw.json")]) == 0
    table = [line for line in out.read_text().splitlines() if line[:4] in ("| 1 ", "| 2 ", "| 4 ")]
    # steady = (8 - small) / (seconds - small seconds): N=1 (8 - 2) / (8 - 2) = 1, N=2 (8 - 4) / (6 - 3) = 1.33;
    # N=4's small run is the whole folder (one batch per process): no steady number. ideal = min(N, 2 cores).
    assert table == ["| 1 | 8.0 | 1.0 | 1.0 | 1.00 | 1 | 1.00 | - |",
                     "| 2 | 6.0 | 1.3 | 1.3 | 1.33 | 2 | 0.67 | 100, 101 |",
                     "| 4 | 9.0 | 0.9 | - | - | 2 | - | 100, 101, 102, 103 |"]
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert [cell["small_seconds"] for cell in raw["cells"]] == [2.0, 3.0, 9.0]
    assert "python benchmarks/extract_scaling.py --processes 2 4" in out.read_text()
    assert "accelerate launch --multi_gpu --num_processes 8" in capsys.readouterr().out


def test_segment_benchmark_phases_in_process():
    """The phases of `benchmarks/segment.py` on the embedded model, run here rather than spawned, and their table."""
    from benchmarks import segment

    args = segment.build_parser().parse_args(["--shots", "1", "--classes", "2", "--predict-images", "3",
                                              "--batch-size", "2", "--steps", "2"])
    results = [segment.run_phase(phase, args) for phase in segment.PHASES]
    assert all(row["seconds"] > 0 and row["peak_mib"] >= row["rss_before_mib"] > 0 for row in results)
    assert {row["size"] for row in results} == {32} and results[0]["channels"] == 448
    markdown = segment.render_markdown(results, args, "python benchmarks/segment.py")
    assert "| predict, explicit hypercolumn |" in markdown and "| 1.00x |" in markdown


@pytest.mark.slow  # spawns three processes that each import torch and load the model (20 s idle, minutes loaded)
def test_segment_benchmark_smallest_run(capsys):
    """`benchmarks/segment.py` end to end on the embedded model: every phase in its own process, the factorised
    predictions against the explicit hypercolumn of the same run."""
    from benchmarks import segment

    argv = ["--shots", "1", "--classes", "2", "--predict-images", "3", "--batch-size", "2", "--steps", "2"]
    assert segment.main(argv) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in table[1:]}
    assert set(rows) == set(segment.PHASES)
    assert rows["predict, explicit hypercolumn"][6] == "1.00x" and rows["fit"][6] == "-"
    assert all(float(cells[4]) >= float(cells[3]) > 0 for cells in rows.values())  # peak >= RSS before

"""`benchmarks/extract.py` runs end to end (smallest settings, tiny model); no timing assertions."""

import math

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

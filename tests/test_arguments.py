"""Bad benchmark flags stop the command in the parser, naming the flag, before any work (before: a crash minutes
in, or a value that silently meant something else)."""

from __future__ import annotations

import pytest

from dualhrq.cli import build_parser

ENGINE = ["bench", "engine", "--bundle", "b"]
LATENCY = ["bench", "latency", "--connect", "tcp://127.0.0.1:1"]
GPU = ["gpu-check", "--bundle", "b", "--out", "r.json"]


@pytest.mark.parametrize("argv, message", [
    (ENGINE + ["--batch", "0"], "argument --batch: must be >= 1, got '0'"),
    (ENGINE + ["--windows", "0"], "argument --windows: must be >= 1, got '0'"),
    (ENGINE + ["--engines", ","], "argument --engines: expected a comma-separated list"),
    (ENGINE + ["--threads", "-2"], "argument --threads: must be >= 0, got '-2'"),
    (GPU + ["--batches", "1,x"], "argument --batches: expected an integer, got 'x'"),
    (GPU + ["--backends", " , "], "argument --backends: expected a comma-separated list"),
    (LATENCY + ["--concurrency", "0"], "argument --concurrency: must be >= 1, got '0'"),
    (LATENCY + ["--rate", "0"], "argument --rate: must be > 0, got '0'"),
    (LATENCY + ["--rate", "nan"], "argument --rate: expected a finite number, got 'nan'"),
    (LATENCY + ["--requests", "0"], "argument --requests: must be >= 1, got '0'"),
])
def test_a_bad_flag_is_refused_by_the_parser_naming_it(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_good_lists_and_numbers_parse_to_their_values():
    parser = build_parser()
    engine = parser.parse_args(ENGINE + ["--engines", "torch-eager, onnx-fp32", "--batch", "4"])
    gpu = parser.parse_args(GPU)
    latency = parser.parse_args(LATENCY + ["--rate", "12.5"])
    assert engine.engines == ["torch-eager", "onnx-fp32"] and engine.batch == 4
    assert gpu.batches == [1, 2, 4, 8]  # the default string goes through the same type
    assert latency.rate == 12.5 and latency.concurrency is None


def test_batch_sizes_all_beyond_max_batch_are_refused_before_any_work(tmp_path):
    from dualhrq.bench.gpu_check import run_gpu_check
    from dualhrq.errors import ConfigurationError

    args = build_parser().parse_args(["gpu-check", "--bundle", "b", "--out", str(tmp_path / "r.json"),
                                      "--batches", "16", "--max-batch", "8"])
    with pytest.raises(ConfigurationError, match="--batches: none of 16 is within --max-batch 8"):
        run_gpu_check(args, cli=lambda argv: 0)
    assert not (tmp_path / "r_work").exists()

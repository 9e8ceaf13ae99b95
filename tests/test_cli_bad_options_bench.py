"""Bad options of the bench, replay and data commands stop before any work with exit status 2 and a message
naming the option, never a traceback minutes into a run."""

from __future__ import annotations

import pytest

from dualhrq.bench.report import plot_file
from dualhrq.cli import main as cli


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """stderr of a command that argparse refuses (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        cli(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", [["bench", "engine", "--bundle", "B"], ["bench", "latency", "--bundle", "B"]])
def test_a_plot_in_a_format_matplotlib_cannot_write_is_refused_before_the_run(command, capsys):
    err = refused([*command, "--plot", "x.txt"], capsys)
    assert "argument --plot: x.txt: matplotlib writes no .txt files" in err and ".png" in err and ".svg" in err


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_an_output_under_a_file_or_naming_a_directory_is_refused_before_the_run(flag, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = refused(["bench", "engine", "--bundle", "B", flag, str(tmp_path / "file" / "out.png")], capsys)
    assert f"argument {flag}:" in err and "is a file, so no directory can be made under it" in err
    err = refused(["bench", "latency", "--bundle", "B", flag, str(tmp_path)], capsys)
    assert f"argument {flag}: {tmp_path} is a directory; give a file path" in err


def test_a_plot_without_an_extension_is_the_png_matplotlib_writes():
    assert plot_file("runs/latency").name == "latency.png"
    assert plot_file("runs/latency.PDF").name == "latency.PDF"


@pytest.mark.parametrize("command", [["bench", "latency"], ["replay", "--data", "D"]])
@pytest.mark.parametrize("address", ["notanaddress", "tcp://127.0.0.1", "tcp://:5555", "ipc://"])
def test_connect_takes_only_a_tcp_or_ipc_address(command, address, capsys):
    err = refused([*command, "--connect", address], capsys)
    assert f"argument --connect: expected tcp://HOST:PORT or ipc://PATH, got {address!r}" in err
    err = refused([*command, "--connect", "tcp://h:99999"], capsys)
    assert "argument --connect: port 99999 of 'tcp://h:99999' is out of range 0-65535" in err


def test_latency_prints_one_bare_percentile_at_most(capsys):
    err = refused(["bench", "latency", "--connect", "tcp://127.0.0.1:5555", "--p95", "--p99"], capsys)
    assert "argument --p99: not allowed with argument --p95" in err


def test_replay_refuses_a_negative_seed(capsys):
    err = refused(["replay", "--data", "D", "--policy", "random", "--seed", "-1"], capsys)
    assert "argument --seed: must be >= 0, got '-1'" in err


def test_replay_refuses_a_prior_close_that_is_no_price(capsys):
    assert "argument --prior-close: must be > 0" in refused(
        ["replay", "--data", "D", "--policy", "momentum", "--prior-close", "-3"], capsys)


def test_data_show_refuses_negative_rows(capsys):
    assert "argument --rows: must be >= 0, got '-1'" in refused(["data", "show", "goog_1d", "--rows", "-1"], capsys)


def test_data_show_rows_zero_prints_the_summary_alone(capsys):
    assert cli(["data", "show", "goog_1d", "--rows", "0"]) == 0
    out = capsys.readouterr().out
    assert "bars, closes" in out and "close time (UTC)" not in out


@pytest.mark.parametrize("flag, value, message", [
    ("--runs", "0", "must be >= 1, got '0'"), ("--batch", "-1", "must be >= 1, got '-1'"),
    ("--batch", "0", "must be >= 1, got '0'"), ("--threads", "-2", "must be >= 1, got '-2'"),
    ("--warmup", "-1", "must be >= 0, got '-1'"),
])
def test_bench_forward_refuses_counts_out_of_range(flag, value, message, capsys):
    assert f"argument {flag}: {message}" in refused(["bench", "forward", "--config", "hrm_tiny", flag, value], capsys)


@pytest.mark.parametrize("flag, value, message", [
    ("--k", "-1", "must be >= 1, got '-1'"), ("--queries", "0", "must be >= 1, got '0'"),
    ("--queries", "-5", "must be >= 1, got '-5'"), ("--ef", "0", "must be >= 1, got '0'"),
    ("--windows", "0", "must be >= 1, got '0'"), ("--seed", "-1", "must be >= 0, got '-1'"),
])
def test_bench_index_refuses_counts_out_of_range(flag, value, message, capsys):
    assert f"argument {flag}: {message}" in refused(["bench", "index", flag, value], capsys)

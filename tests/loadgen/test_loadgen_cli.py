"""The load generator's parsing and command line: strict flags, CI exit codes, reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen import Distribution, FailCondition, ShapeStep, Spike, parse_mix, parse_shape

ROOT = Path(__file__).resolve().parents[2]


def test_spikes_parse_strictly():
    assert Spike.parse("30:10:5") == Spike(30.0, 10.0, 5.0)
    for bad in ("30:10", "a:b:c", "-1:10:5", "30:0:5", "30:10:0"):
        with pytest.raises(ValueError, match="AT_S"):
            Spike.parse(bad)


# -- parsing -------------------------------------------------------------------------------------
def test_distributions_mixes_and_shapes_parse_strictly(tmp_path):
    assert Distribution.parse("exp:2") == Distribution("exp", 2.0)
    assert str(Distribution.parse("uniform:1:3")) == "uniform:1:3"
    for bad in ("exp", "normal:1", "uniform:3:1", "const:-1", "exp:x"):
        with pytest.raises(ValueError, match=r"exp:MEAN|LOW <= HIGH|>= 0"):
            Distribution.parse(bad)
    assert parse_mix("free=6, pro=3") == (("free", 6.0), ("pro", 3.0))
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        parse_mix("free=0")
    shape_file = tmp_path / "shape.txt"
    shape_file.write_text("# at users rate\n30:50:5\n0:10\n")
    assert parse_shape(str(shape_file)) == (ShapeStep(0, 10), ShapeStep(30, 50, 5.0))
    assert parse_shape("0:1,5:2") == (ShapeStep(0, 1), ShapeStep(5, 2))
    with pytest.raises(ValueError, match="AT_S:USERS"):
        parse_shape("0:ten")


def test_fail_conditions_parse_strictly():
    condition = FailCondition.parse("send:p99_ms >= 500")
    assert (condition.operation, condition.metric, condition.comparison) == (
        "send", "p99_ms", ">="
    )
    assert str(FailCondition.parse("failure_ratio>0.05")) == "failure_ratio>0.05"
    for bad in ("bogus", "latency>5", "nosuchop:p99_ms>1", "p99_ms=>5"):
        with pytest.raises(ValueError, match=re.escape("e.g. failure_ratio>0.05")):
            FailCondition.parse(bad)


# -- command line --------------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "demo_load.py"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )


def test_cli_exits_1_when_a_fail_on_condition_is_met_and_writes_the_report(tmp_path):
    report = tmp_path / "run.json"
    result = cli(
        "--headless", "--users", "5", "--spawn-rate", "50", "--duration", "2",
        "--scenario", "steady", "--latency-median", "0", "--latency-p99", "0",
        "--stats-interval", "0", "--data-dir", str(tmp_path / "data"),
        "--fail-on", "failure_ratio>-1", "--fail-on", "p99_ms>100000", "--report", str(report),
    )
    assert result.returncode == 1, result.stderr
    data = json.loads(report.read_text())
    assert data["exit_code"] == 1
    assert [(c["condition"], c["met"]) for c in data["fail_on"]] == [
        ("failure_ratio>-1", True), ("p99_ms>100000", False),
    ]
    assert data["summary"]["total"]["requests"] > 0
    assert "fail-on failure_ratio>-1" in result.stdout


def test_cli_rejects_a_malformed_condition_with_exit_2():
    result = cli("--headless", "--fail-on", "bogus")
    assert result.returncode == 2
    assert "failure_ratio>0.05" in result.stderr  # the error shows an example


def test_cli_help_lists_flags_with_defaults():
    result = cli("--help")
    assert result.returncode == 0
    for flag in ("--users", "--spawn-rate", "--duration", "--shape", "--seed", "--fail-on",
                 "--report", "--csv", "--scenario", "--llm", "--headless"):
        assert flag in result.stdout
    assert "default: 50" in result.stdout


def test_the_load_generator_imports_neither_the_console_nor_textual():
    """Imports run one way: demo_load.py -> console -> loadgen -> engine."""
    probe = ("import sys, loadgen, loadgen.cli; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'console', 'textual', "
             "'widgets', 'demo_load'}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

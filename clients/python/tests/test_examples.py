"""The examples in ``clients/python/examples`` run against the real daemon."""

import json
import subprocess
import sys

import pytest
from conftest import PACKAGE_ROOT

EXAMPLES = PACKAGE_ROOT / "examples"


def run_example(daemon, cwd, *args):
    """Runs example ``args[0]`` with ``args[1:]`` in ``cwd`` against the daemon."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / args[0])] + [str(a) for a in args[1:]],
        env=daemon.env,
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_batch_script_fans_out_ten_thousand_inputs(daemon, tmp_path):
    out = tmp_path / "results.jsonl"
    done = run_example(daemon, tmp_path, "batch_map.py", "echo", "--count", 10_000, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "10000 inputs, 0 failed" in done.stderr
    lines = out.read_text().splitlines()
    assert [json.loads(line)["output"] for line in lines] == [{"i": i} for i in range(10_000)]


def test_batch_script_reports_failed_inputs(daemon, tmp_path):
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('0\n"soon"\n0.01\n')
    out = tmp_path / "results.jsonl"
    done = run_example(daemon, tmp_path, "batch_map.py", "sleep", "--inputs", inputs, "--out", out)
    assert done.returncode == 1, done.stderr
    assert "3 inputs, 1 failed" in done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"output": None} and rows[2] == {"output": None}
    assert "sleep: input must be a number of seconds" in rows[1]["error"]


def test_parsl_workflow(daemon, tmp_path):
    pytest.importorskip("parsl", reason="the Parsl example needs Parsl (pip install parsl)")
    done = run_example(daemon, tmp_path, "parsl_workflow.py", "echo")
    assert done.returncode == 0, done.stderr
    assert "'answers': 20" in done.stdout
    assert "flotilla answered {'sample': 'direct'}" in done.stdout

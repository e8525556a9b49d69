"""Faults found by running hostile-probe11's unrun kill / concurrency / read-only probes (probe5).

* Ctrl-C in the first seconds of ``flatfl`` (torch still loading): the console script imported ``flatfl.cli`` outside
  any handler, so a ``KeyboardInterrupt`` traceback and exit -2 (``python -m flatfl`` alone had a handler), and at
  times ``terminate called ... KeyboardInterrupt`` with an abort (-6) when it went through torch's C++ code.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.test_layering import ROOT

# a real SIGINT, sent when the import of torch begins: deterministic, unlike a timed kill
SIGINT_AT_TORCH = """
import os, signal, sys
class SigintAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, SigintAtTorch())
sys.argv = ["flatfl", "--version"]
"""


def _console_script() -> str:
    """What pip writes as ``bin/flatfl`` for pyproject's entry point."""
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1]  # tomllib: Python 3.11+
    module, func = re.search(r'^flatfl\s*=\s*"([\w.]+):(\w+)"', scripts, re.M).groups()
    return f"from {module} import {func}\nsys.exit({func}())\n"


@pytest.mark.parametrize("how", ["console script", "python -m flatfl"])
def test_ctrl_c_while_flatfl_loads_is_one_line_and_130(how):
    by_m = "import runpy; runpy.run_module('flatfl', run_name='__main__')"
    run = _console_script() if how == "console script" else by_m
    proc = subprocess.run(
        [sys.executable, "-c", SIGINT_AT_TORCH + run],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-1500:])
    assert proc.stderr == "flatfl: interrupted\n" and proc.stdout == "", proc.stderr[-1500:]


def test_an_ignored_sigint_stays_ignored_while_flatfl_loads():
    # nohup / a background job: flatfl must not start to answer a Ctrl-C meant for another process
    proc = subprocess.run(
        [sys.executable, "-c", SIGINT_AT_TORCH + _console_script()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.returncode == 0 and proc.stdout.startswith("flatfl "), (proc.returncode, proc.stderr[-1500:])


def test_a_refused_writer_names_what_the_lock_holder_is_doing(cli, tmp_path):
    """conc2's report + train into one folder: the train was told another process "is training this run"
    while a report held the folder (it named its own activity). The holder's own words now, and the PID."""
    from flatfl.rundir import LOCK_FILE, locked_folder

    out = tmp_path / "rep"
    with locked_folder(out, "writing a report here"):
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\nwriting a report here\n"
        code, _, err = cli("train", "--dataset", "digits", "--clients", "2", "--rounds", "1", "--out", out)
    assert code == 2 and err.count("\n") == 1, err
    assert f"another flatfl process (PID {os.getpid()}) is writing a report here;" in err, err
    assert not (out / "run.json").exists()

"""Real ``python -m flatfl`` processes without paying the interpreter's start-up for each one.

A server process imports ``flatfl.cli`` (torch, numpy, scipy: most of a command's start-up) once, then
forks one child per command. Each child is a real process of its own: it sets its environment,
sends its stdout/stderr to files, runs ``flatfl`` as ``python -m flatfl`` does (``runpy``, ``sys.argv``),
and ends with the exit code a fresh process would give -- ``os._exit`` at a fault point
(``flatfl.faults``) ends it at once, with no cleanup, as a SIGKILL would. The server never runs a
command itself, so nothing computed (no caches, no fault counters, no thread pools) is inherited;
it is single-threaded under ``OMP_NUM_THREADS=1``, which makes the fork safe.

What a child does not repeat is the import of ``flatfl.cli``; tests of that (a Ctrl-C while the modules
load) and of signals sent from outside keep a fresh interpreter (``subprocess``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

SERVER = r"""
import json, os, runpy, signal, sys, traceback
import flatfl.cli  # noqa: F401 -- the start-up, paid once
reply = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the command's own process
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.environ.clear()
            os.environ.update(req["env"])
            os.chdir(req["cwd"])
            for fd, name in ((1, "out"), (2, "err")):
                f = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(f, fd)
                os.close(f)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            sys.stdin = open(0)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            if req["code"] is None:  # python -m flatfl ARGS
                sys.argv = ["flatfl", *req["args"]]
                runpy.run_module("flatfl", run_name="__main__", alter_sys=True)
            else:  # python -c CODE ARGS
                sys.argv = ["-c", *req["args"]]
                exec(compile(req["code"], "<string>", "exec"), {"__name__": "__main__"})
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    reply.write(json.dumps({"pid": pid}) + "\n")
    reply.flush()
    _, status = os.waitpid(pid, 0)
    reply.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
    reply.flush()
"""


class ForkServer:
    """``run(args)`` is ``subprocess.run([sys.executable, "-m", "flatfl", *args])`` in a forked child."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="flatfl-fork-")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._n = 0
        self._buf = b""

    def run(
        self, *args: str | Path, env: dict[str, str] | None = None, code: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        """The command's exit code (negative: the signal), stdout and stderr; ``code`` runs ``python -c code args``."""
        self._n += 1
        out, err = (Path(self._tmp.name) / f"{self._n}.{s}" for s in ("out", "err"))
        req = {"args": [str(a) for a in args], "env": {**os.environ, **(env or {})}, "cwd": os.getcwd()}
        req |= {"code": code, "out": str(out), "err": str(err)}
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        pid = json.loads(self._line(timeout))["pid"]
        line = self._line(timeout)
        if line is None:  # as subprocess.run's timeout: the command is killed, then the error
            os.kill(pid, signal.SIGKILL)
            self._line(None)
            raise subprocess.TimeoutExpired(list(map(str, args)), timeout)
        rc = json.loads(line)["rc"]
        return subprocess.CompletedProcess(list(map(str, args)), rc, out.read_text(), err.read_text())

    def _line(self, timeout: float | None) -> str | None:
        """The server's next reply line; None if none came within ``timeout`` seconds."""
        fd = self._proc.stdout.fileno()  # read unbuffered: select() must not miss a line already read ahead
        while b"\n" not in self._buf:
            if not select.select([fd], [], [], timeout)[0]:
                return None
            chunk = os.read(fd, 4096)
            assert chunk, "the fork server died"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=60)
        self._tmp.cleanup()

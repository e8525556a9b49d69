"""Flower's deployment engine on one machine, loopback only: a SuperLink, 2 SuperNodes and
``flwr run`` of examples/flower_app (FedMut, 2 clients, 2 rounds) write a flatfl run directory
that equals ``flatfl train``'s. Bounded in time; every process it starts is stopped at the end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flatfl import checkpoint as ckpt  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "examples" / "flower_app"
LIMIT_S = 420  # the whole deployment, process start-ups included (each ClientApp run is a new process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.deployment
def test_local_deployment_two_supernodes_two_rounds(tmp_path):

    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr"), OMP_NUM_THREADS="1")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"  # the SuperLink starts flower-superexec by name
    link = free_port()
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    procs: list[subprocess.Popen] = []

    def start(*cmd: str, log: str) -> None:
        out = open(tmp_path / log, "wb")
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True))

    deadline = time.monotonic() + LIMIT_S
    try:
        start(str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link),
              "--database", str(tmp_path / "state.db"), "--disable-runtime-dependency-installation",
              log="superlink.log")  # fmt: skip
        for i in range(2):
            start(str(bin_dir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                  "--port", str(free_port()), "--node-config", f"partition-id={i} num-partitions=2",
                  log=f"supernode{i}.log")  # fmt: skip
        out = tmp_path / "run"
        cmd = [str(bin_dir / "flwr"), "run", str(APP), "local", "--stream", "--run-config", f"out='{out}'"]
        while time.monotonic() < deadline:  # the SuperLink takes a few seconds to listen
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=deadline - time.monotonic())
            if "unavailable" not in run.stdout + run.stderr:
                break
            time.sleep(1)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        while time.monotonic() < deadline and not (out / "round_0002.safetensors").is_file():
            time.sleep(1)  # flwr run --stream returns when the ServerApp is done; its last writes may trail
        state_written = lambda: ckpt.load_state(out, ckpt.read_run_json(out)["identity"])[0] == 2  # noqa: E731
        while time.monotonic() < deadline and not ((out / ckpt.STATE_FILE).is_file() and state_written()):
            time.sleep(1)
        assert state_written(), "the deployment did not commit round 2 in time"
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    ref = tmp_path / "ref"
    # the reference with the SuperNodes' thread count: float reductions differ across thread counts
    train = subprocess.run(
        [sys.executable, "-m", "flatfl", "train", "--algo", "fedmut", "--clients", "2", "--frac", "1.0", "--rounds",
         "2", "--local-epochs", "1", "--seed", "0", "--out", str(ref), "--no-progress", "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    for name in ("partition.json", "round_0000.safetensors", "round_0001.safetensors", "round_0002.safetensors"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert shutil.which("flwr", path=env["PATH"])


def _stop_local_superlink(flwr_home: Path) -> None:
    """``flwr run`` against ``address = ":local:"`` starts a SuperLink of its own in the background (and it
    a SuperExec): stop every process whose command line names this FLWR_HOME, then their children."""
    mine = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(flwr_home) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                mine.append(int(proc.name))
        except OSError:
            continue
    for pid in mine:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _alive(p) for p in mine):
        time.sleep(0.5)
    for pid in mine:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


@pytest.mark.deployment
def test_flwr_run_on_the_local_simulation_runtime(tmp_path):
    """``flwr run examples/flower_app`` on Flower's simulation runtime (a local SuperLink in simulation
    mode, Ray actors with 1 CPU each): the run directory equals ``flatfl train --threads 1``'s."""
    bin_dir = Path(sys.executable).parent
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    env = dict(os.environ, FLWR_HOME=str(home), OMP_NUM_THREADS="1", RAY_DISABLE_USAGE_STATS="1")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    out = tmp_path / "run"
    cmd = [str(bin_dir / "flwr"), "run", str(APP), "--stream", "--federation-config",
           "num-supernodes=2 client-resources-num-cpus=1", "--run-config", f"out='{out}'"]  # fmt: skip
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LIMIT_S)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        deadline = time.monotonic() + 60
        state_written = lambda: ckpt.load_state(out, ckpt.read_run_json(out)["identity"])[0] == 2  # noqa: E731
        while time.monotonic() < deadline and not ((out / ckpt.STATE_FILE).is_file() and state_written()):
            time.sleep(1)
        assert state_written(), "the simulation did not commit round 2 in time"
    finally:
        _stop_local_superlink(home)
    ref = tmp_path / "ref"
    train = subprocess.run(
        [sys.executable, "-m", "flatfl", "train", "--algo", "fedmut", "--clients", "2", "--frac", "1.0", "--rounds",
         "2", "--local-epochs", "1", "--seed", "0", "--threads", "1", "--out", str(ref), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    for name in ("partition.json", "state.safetensors", *(f"round_{t:04d}.safetensors" for t in range(3))):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name

"""Launching training runs in subprocesses for the tests: a free loopback port, a clean environment (one
thread, no inherited torchrun variables) and the torchrun command line for N CPU ranks on gloo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(*args: str, nproc: int = 2) -> subprocess.Popen:
    """``python -m torch.distributed.run`` with ``nproc`` ranks on this machine; ``args`` = the script (or
    ``-m module``) and its arguments. Output (stdout + stderr) is captured as text."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for ``proc``; its output, after asserting it succeeded."""
    log, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, log[-4000:]
    return log

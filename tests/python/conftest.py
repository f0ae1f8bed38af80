"""Fixtures of the `bora` package's tests: the repository's model fixtures, one engine per
model for the session (loading is the slow part), and `bora serve` for comparisons.

BORA_BIN names the `bora` binary for the server comparison (default: target/release/bora).
"""

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import bora

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "models" / "fixtures" / "tiny-mixtral"
GGUF = ROOT / "models" / "fixtures" / "gguf" / "tiny-Q4_K_M.gguf"


@pytest.fixture(scope="session")
def tiny():
    return bora.Engine(str(TINY), kv_cache_mib=64)


@pytest.fixture(scope="session")
def demo():
    # Batch-invariant numerics: a seeded request gives the same answer alone and batched.
    return bora.Engine("bora-demo", kv_cache_mib=64, deterministic=True)


@pytest.fixture(scope="session")
def demo_v3():
    return bora.Engine("bora-demo-v3", kv_cache_mib=64)


@pytest.fixture(scope="session")
def server():
    """`bora serve` on the tiny fixture, on a free loopback port."""
    binary = os.environ.get("BORA_BIN", str(ROOT / "target" / "release" / "bora"))
    proc = subprocess.Popen(
        [binary, "serve", "--model", str(TINY), "--port", "0", "--kv-cache-mib", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = None
    deadline = time.time() + 120
    while url is None:
        line = proc.stdout.readline()
        if not line or time.time() > deadline:
            proc.kill()
            raise RuntimeError("bora serve did not start")
        m = re.search(r"listening on (http://[0-9.:]+)", line)
        url = m.group(1) if m else None
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("bora serve never became healthy")
        time.sleep(0.05)
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)

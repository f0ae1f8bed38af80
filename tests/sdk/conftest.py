"""Starts `bora serve` on the tiny fixture model for the SDK tests.

BORA_BIN names the binary (default: target/debug/bora). Each server listens on a free loopback
port that it prints at start, and is stopped with SIGTERM at the end (a graceful shutdown that
must exit 0).
"""

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "models" / "fixtures" / "tiny-mixtral"
MODEL = "tiny-mixtral"


class Server:
    def __init__(self, *extra: str, model: str = str(FIXTURE), binary: str = ""):
        binary = binary or os.environ.get("BORA_BIN", str(ROOT / "target" / "debug" / "bora"))
        self.proc = subprocess.Popen(
            [binary, "serve", "--model", model, "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self.url = None
        deadline = time.time() + 120
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("bora serve exited:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"listening on (http://[0-9.:]+)", line)
            if m:
                self.url = m.group(1)
            if time.time() > deadline:
                raise RuntimeError("bora serve did not start")
        # Wait until the model is loaded.
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("bora serve never became healthy")
            time.sleep(0.05)

    def healthy(self) -> bool:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
            return r.status == 200

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.lines.append(out)
        return self.proc.returncode


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    assert s.healthy(), "the server is not healthy after the tests"
    assert s.stop() == 0, "".join(s.lines)


@pytest.fixture(scope="session")
def auth_server():
    s = Server("--api-key", "s3cret")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="session")
def full_server():
    """A server whose queue holds nothing: every request is refused with 429."""
    s = Server("--max-queue", "0")
    yield s
    assert s.stop() == 0

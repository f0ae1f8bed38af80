"""`bora serve` started for a test: on a free loopback port, healthy before it is used, stopped
after."""

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request

from reference import ROOT


@contextlib.contextmanager
def serve(*args, binary=None, timeout=120):
    """Runs `bora serve ARGS --port 0` and yields its URL."""
    binary = binary or os.environ.get("BORA_BIN", str(ROOT / "target" / "release" / "bora"))
    proc = subprocess.Popen([binary, "serve", *args, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.time() + timeout
        while url is None:
            line = proc.stdout.readline()
            if not line or time.time() > deadline:
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
                raise RuntimeError("bora serve never became healthy")
            time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)

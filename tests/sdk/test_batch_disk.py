"""A full disk under the data directory: the job ends FAILED with the reason, the database
stays whole (SQLite's integrity check), nothing finished is lost, and `bora batch` run again
once there is room goes on where it stopped, each line answered exactly once.

The data directory is a small tmpfs mounted in a user and mount namespace of its own
(`unshare`), so the disk really fills (ENOSPC, SQLITE_FULL), and is grown with a remount."""

import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request

import pytest

from conftest import FIXTURE, MODEL, ROOT

BORA = os.environ.get("BORA_BIN", str(ROOT / "target" / "debug" / "bora"))
CHECK = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
         "print('integrity', c.execute('pragma integrity_check').fetchone()[0]); "
         "print('lines', *c.execute('select count(*), sum(done) from lines').fetchone())")


def namespaces_work():
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                       capture_output=True)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not namespaces_work(),
                                reason="unshare cannot make a user and mount namespace here")


def write_input(path, n):
    with open(path, "w") as f:
        for i in range(n):
            body = {"messages": [{"role": "user", "content": f"Request number {i}."}],
                    "max_tokens": 32, "temperature": 0}
            f.write(json.dumps({"custom_id": f"r{i}", "body": body}) + "\n")


def in_namespace(script, **kw):
    return subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_bora_batch_fails_clearly_on_a_full_disk_and_goes_on_once_there_is_room(tmp_path):
    write_input(tmp_path / "in.jsonl", 60)
    d, q = tmp_path / "data", shlex.quote
    run = f"{q(BORA)} batch --model {q(str(FIXTURE))} --data-dir {q(str(d))} " \
          f"{q(str(tmp_path / 'in.jsonl'))} {q(str(tmp_path / 'out.jsonl'))}"
    script = f"""set -u
mkdir -p {q(str(d))} && mount -t tmpfs -o size=192k tmpfs {q(str(d))} || exit 9
{run}; echo "first: $?"
python3 -c {q(CHECK)} {q(str(d / 'bora.sqlite3'))}
mount -o remount,size=16m {q(str(d))}
{run}; echo "second: $?"
python3 -c {q(CHECK)} {q(str(d / 'bora.sqlite3'))}
"""
    p = in_namespace(script)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert "first: 1" in out, out
    m = re.search(r"error: the job failed: the disk holding the data directory is full: (.*) "
                  r"\((\d+) of 60 requests were answered", out)
    assert m, out
    checks = re.findall(r"integrity (\w+)\nlines (\d+) (\d+)", out)
    assert checks[0][0] == "ok" and checks[1][0] == "ok", out
    finished_first = int(checks[0][2])
    assert 0 < finished_first < 60 and finished_first == int(m.group(2)), out
    assert f"going on with the job of" in out and f"stopped at {finished_first} of 60" in out, out
    assert "second: 0" in out and checks[1][1:] == ("60", "60"), out
    lines = [json.loads(l) for l in open(tmp_path / "out.jsonl")]
    assert sorted(l["custom_id"] for l in lines) == sorted(f"r{i}" for i in range(60))


def http(url, method="GET", body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_server_fails_the_job_clearly_and_keeps_its_database_whole(tmp_path):
    from mistralai.client import Mistral

    d, q = tmp_path / "data", shlex.quote
    script = f"""set -u
mkdir -p {q(str(d))} && mount -t tmpfs -o size=320k tmpfs {q(str(d))} || exit 9
{q(BORA)} serve --model {q(str(FIXTURE))} --port 0 --data-dir {q(str(d))} &
echo "pid $!"
wait $!; echo "server: $?"
python3 -c {q(CHECK)} {q(str(d / 'bora.sqlite3'))}
"""
    p = in_namespace(script)
    pid, url = None, None
    seen = []
    deadline = time.time() + 120
    while url is None:
        line = p.stdout.readline()
        assert line and time.time() < deadline, "".join(seen)
        seen.append(line)
        if line.startswith("pid "):
            pid = int(line.split()[1])
        m = re.search(r"listening on (http://[0-9.:]+)", line)
        if m:
            url = m.group(1)
    while http(url + "/health")[0] != 200:
        assert time.time() < deadline
        time.sleep(0.05)
    try:
        c = Mistral(api_key="k", server_url=url)
        lines = [{"custom_id": f"r{i}", "body": {
            "messages": [{"role": "user", "content": f"Request number {i}."}],
            "max_tokens": 32, "temperature": 0}} for i in range(400)]
        data = "\n".join(json.dumps(l) for l in lines).encode()
        f = c.files.upload(file={"file_name": "in.jsonl", "content": data}, purpose="batch")
        job = c.batch.jobs.create(input_files=[f.id], model=MODEL, endpoint="/v1/chat/completions")
        while (j := c.batch.jobs.get(job_id=job.id)).status in ("QUEUED", "RUNNING"):
            assert time.time() < deadline + 300
            time.sleep(0.1)
        assert j.status == "FAILED", j
        assert "the disk holding the data directory is full" in j.errors[0].message, j
        # 400 lines' answers do not fit in the 320 KiB: the disk fills while lines are still
        # being answered, whatever the pace (80 lines could all finish first, on a faster
        # build, the disk then filling as the output file was written).
        assert 0 < j.completed_requests < 400 and j.output_file is None
        # The server goes on answering; an upload that does not fit is a 507 saying why.
        status, body = http(url + "/v1/files", "POST", *multipart(os.urandom(400_000)))
        assert status == 507, body
        assert b"disk holding the data directory is full" in body
        assert c.chat.complete(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                               max_tokens=2).choices
    finally:
        os.kill(pid, signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
    assert "server: 0" in out, out
    m = re.search(r"integrity (\w+)\nlines (\d+) (\d+)", out)
    assert m and m.group(1) == "ok" and m.group(2) == "400", out
    assert int(m.group(3)) == j.completed_requests, out


def multipart(content):
    boundary = "bora-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + \
           f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}

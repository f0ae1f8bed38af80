"""Files and batch jobs through the unchanged mistralai SDK: a JSONL of 50 requests uploaded,
a job created and polled to SUCCESS, its output downloaded, each line equal to the same request
sent to /v1/chat/completions at temperature 0; a running job cancelled; a server killed
(SIGKILL) mid-job and restarted on the same data directory finishes the job with each line
exactly once."""

import json
import os
import signal
import time
import urllib.request

from mistralai.client import Mistral

from conftest import MODEL, ROOT, Server

IN_FLIGHT = ("QUEUED", "RUNNING", "CANCELLATION_REQUESTED")


def client(s):
    return Mistral(api_key="k", server_url=s.url)


def request(i, max_tokens=12):
    r = {"messages": [{"role": "user", "content": f"Request number {i}: answer it."}],
         "max_tokens": max_tokens, "temperature": 0}
    if max_tokens > 100:
        r["min_tokens"] = max_tokens  # long answers: the job runs long enough to stop it
    return r


def upload(c, lines):
    data = "\n".join(json.dumps(l) for l in lines).encode()
    return c.files.upload(file={"file_name": "batch.jsonl", "content": data}, purpose="batch")


def wait(c, job_id, timeout=300):
    deadline = time.time() + timeout
    while True:
        j = c.batch.jobs.get(job_id=job_id)
        if j.status not in IN_FLIGHT:
            return j
        assert time.time() < deadline, f"job still {j.status}"
        time.sleep(0.2)


def lines_of(c, file_id):
    text = c.files.download(file_id=file_id).read().decode()
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def test_a_job_of_50_requests_equals_the_requests_sent_alone(tmp_path):
    s = Server("--data-dir", str(tmp_path / "data"))
    try:
        c = client(s)
        f = upload(c, [{"custom_id": f"r{i}", "body": request(i)} for i in range(50)])
        job = c.batch.jobs.create(input_files=[f.id], model=MODEL, endpoint="/v1/chat/completions")
        assert job.status in IN_FLIGHT and job.total_requests == 50
        done = wait(c, job.id)
        assert done.status == "SUCCESS"
        assert (done.succeeded_requests, done.failed_requests) == (50, 0)
        assert done.error_file is None
        out = lines_of(c, done.output_file)
        assert [l["custom_id"] for l in out] == [f"r{i}" for i in range(50)]
        for i, line in enumerate(out):
            alone = c.chat.complete(model=MODEL, **request(i))
            body = line["response"]["body"]
            assert line["response"]["status_code"] == 200
            assert body["choices"][0]["message"]["content"] == alone.choices[0].message.content
            assert body["usage"]["completion_tokens"] == alone.usage.completion_tokens
    finally:
        assert s.stop() == 0


DEMO = "bora-demo"  # long answers need more context than the tiny fixture's 128 tokens
RELEASE = os.environ.get("BORA_RELEASE_BIN", str(ROOT / "target" / "release" / "bora"))


def demo_server(data, *extra):
    """The demo model on the optimized binary (tests/run builds it), four sequences at once,
    so that a job's lines finish in waves."""
    return Server("--data-dir", data, "--max-seqs", "4", *extra, model=DEMO, binary=RELEASE)


def test_a_running_job_is_cancelled(tmp_path):
    s = demo_server(str(tmp_path / "data"))
    try:
        c = client(s)
        f = upload(c, [{"custom_id": f"r{i}", "body": request(i, 300)} for i in range(64)])
        job = c.batch.jobs.create(input_files=[f.id], model=DEMO, endpoint="/v1/chat/completions")
        while c.batch.jobs.get(job_id=job.id).status == "QUEUED":
            time.sleep(0.05)
        cancelling = c.batch.jobs.cancel(job_id=job.id)
        assert cancelling.status in ("CANCELLATION_REQUESTED", "CANCELLED")
        done = wait(c, job.id)
        assert done.status == "CANCELLED"
        assert done.completed_requests < 64
        # The lines in flight stopped: within 10 s nothing runs or holds a KV block and no step
        # is made for 0.5 s (the metrics are the engine's as of its last step: a step under way
        # when the job was cancelled may end after it, as CI saw), and it stays so.
        deadline = time.time() + 10
        while True:
            steps = s_metric(s, "bora_engine_steps_total")
            time.sleep(0.5)
            idle = (s_metric(s, "bora_running_sequences"), s_metric(s, "bora_kv_blocks_used")) == (0, 0)
            if idle and s_metric(s, "bora_engine_steps_total") == steps:
                break
            assert time.time() < deadline, "the cancelled job's lines still run"
        time.sleep(0.5)
        assert s_metric(s, "bora_engine_steps_total") == steps, "the engine still steps"
        # The output holds the lines that finished, whole, and only those.
        out = lines_of(c, done.output_file) if done.output_file else []
        assert len(out) == done.succeeded_requests <= done.completed_requests
        for line in out:
            assert line["custom_id"] in {f"r{i}" for i in range(64)}
            assert line["response"]["status_code"] == 200
            assert line["response"]["body"]["usage"]["completion_tokens"] == 300
        assert len({line["custom_id"] for line in out}) == len(out)
    finally:
        assert s.stop() == 0


def s_metric(s, name):
    import urllib.request

    with urllib.request.urlopen(s.url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_killed_server_finishes_the_job_after_a_restart(tmp_path):
    data = str(tmp_path / "data")
    s = demo_server(data)
    c = client(s)
    f = upload(c, [{"custom_id": f"r{i}", "body": request(i, 200)} for i in range(40)])
    job = c.batch.jobs.create(input_files=[f.id], model=DEMO, endpoint="/v1/chat/completions")
    deadline = time.time() + 120
    while c.batch.jobs.get(job_id=job.id).completed_requests < 3:
        assert time.time() < deadline
        time.sleep(0.05)
    # What had finished before the kill, with each answer's own id.
    before = {o["custom_id"]: o["response"]["body"]["id"]
              for o in c.batch.jobs.get(job_id=job.id, inline=True).outputs}
    assert len(before) >= 3
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    s = demo_server(data)
    try:
        c = client(s)
        done = wait(c, job.id)
        assert done.status == "SUCCESS"
        assert (done.total_requests, done.succeeded_requests) == (40, 40)
        out = lines_of(c, done.output_file)
        assert sorted(l["custom_id"] for l in out) == sorted(f"r{i}" for i in range(40))
        # Lines finished before the kill were not run again: the same answers, by their ids,
        # and the restarted engine computed no more tokens than the other lines have (a line's
        # prompt and its answer but the last token; the prompts are shorter than a KV block, so
        # none is found cached). Its layer 0 routes each computed token to its experts.
        by_id = {l["custom_id"]: l for l in out}
        for cid, answer_id in before.items():
            assert by_id[cid]["response"]["body"]["id"] == answer_id, cid
        usage = lambda cid: by_id[cid]["response"]["body"]["usage"]  # noqa: E731
        rest = sum(usage(cid)["prompt_tokens"] + usage(cid)["completion_tokens"] - 1
                   for cid in by_id if cid not in before)
        with urllib.request.urlopen(s.url + "/metrics", timeout=10) as r:
            routed = sum(float(line.split()[-1]) for line in r.read().decode().splitlines()
                         if line.startswith("bora_expert_tokens") and 'layer="0"' in line)
        assert 0 < routed <= 2 * rest, (routed, rest)
        # Every body is the request's answer alone (greedy), those run before the kill and after.
        for i in sorted(set(range(0, 40, 4)) | {int(cid[1:]) for cid in before}):
            alone = c.chat.complete(model=DEMO, **request(i, 200))
            body = by_id[f"r{i}"]["response"]["body"]
            assert body["choices"][0]["message"]["content"] == alone.choices[0].message.content, i
            assert body["usage"]["completion_tokens"] == alone.usage.completion_tokens == 200
    finally:
        assert s.stop() == 0


def test_list_filters_inline_outputs_delete_and_refusals(tmp_path):
    import datetime

    from mistralai.client.errors import SDKError

    s = Server("--data-dir", str(tmp_path / "data"))
    try:
        c = client(s)
        reqs = [{"custom_id": f"q{i}", "body": request(i, 4)} for i in range(3)]
        a = c.batch.jobs.create(requests=reqs, model=MODEL, endpoint="/v1/chat/completions",
                                metadata={"team": "x"})
        b = c.batch.jobs.create(requests=reqs[:1], endpoint="/v1/chat/completions",
                                metadata={"team": "y", "night": "1"}, timeout_hours=2)
        a, b = wait(c, a.id), wait(c, b.id)
        assert (a.status, b.status) == ("SUCCESS", "SUCCESS")
        ids = lambda page: [j.id for j in page.data]
        # Newest first unless asked; metadata goes out exploded into the query, unnamed.
        assert ids(c.batch.jobs.list()) == [b.id, a.id]
        assert ids(c.batch.jobs.list(order_by="created")) == [a.id, b.id]
        assert ids(c.batch.jobs.list(metadata={"team": "y", "night": "1"})) == [b.id]
        assert ids(c.batch.jobs.list(model=MODEL)) == [a.id]
        assert ids(c.batch.jobs.list(status=["SUCCESS", "FAILED"])) == [b.id, a.id]
        assert ids(c.batch.jobs.list(status=["RUNNING"])) == []
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        assert c.batch.jobs.list(created_after=later).total == 0
        assert c.batch.jobs.list(page=1, page_size=1).data[0].id == a.id
        # inline=true: the finished lines in the output envelope, in order.
        full = c.batch.jobs.get(job_id=a.id, inline=True)
        assert [o["custom_id"] for o in full.outputs] == ["q0", "q1", "q2"]
        assert full.outputs[0]["response"]["body"]["choices"]
        # Refused with the field named: another model, an agent, no hours, both inputs.
        for bad in ({"model": "gpt-4o"}, {"agent_id": "ag"}, {"timeout_hours": 0}):
            try:
                c.batch.jobs.create(requests=reqs, endpoint="/v1/chat/completions", **bad)
                raise AssertionError(f"{bad} was accepted")
            except SDKError as e:
                assert e.status_code == 400 and list(bad)[0] in e.body, e.body
        # Deleted: gone from get and list; its output file stays until deleted itself.
        assert c.batch.jobs.delete(job_id=a.id).deleted
        try:
            c.batch.jobs.get(job_id=a.id)
            raise AssertionError("a deleted job is still there")
        except SDKError as e:
            assert e.status_code == 404
        assert ids(c.batch.jobs.list()) == [b.id]
        assert lines_of(c, a.output_file)
        # Files: filtered by purpose, sample type and name, with their total.
        f = upload(c, reqs)
        page = c.files.list(sample_type=["batch_request"])
        assert [x.id for x in page.data] == [f.id] and page.total == 1
        assert len(c.files.list(purpose="batch").data) == 3  # the upload and two outputs
        assert c.files.list(search="no-such-name").data == []
    finally:
        assert s.stop() == 0


def test_files_and_jobs_sit_behind_the_key_and_uploads_are_bounded(tmp_path):
    from mistralai.client.errors import SDKError

    s = Server("--data-dir", str(tmp_path / "data"), "--api-key", "sesame", "--max-upload-mib", "1")
    try:
        for key in ("wrong", None):
            c = Mistral(api_key=key, server_url=s.url) if key else Mistral(server_url=s.url)
            for call in (lambda: c.files.list(), lambda: c.batch.jobs.list(),
                         lambda: upload(c, [{"body": request(0)}])):
                try:
                    call()
                    raise AssertionError("answered without the key")
                except SDKError as e:
                    assert e.status_code == 401, e
        c = Mistral(api_key="sesame", server_url=s.url)
        assert c.batch.jobs.list().total == 0
        small = upload(c, [{"body": request(0)}])
        assert c.files.retrieve(file_id=small.id).size_bytes == small.size_bytes
        big = [{"custom_id": "x" * 1000, "body": request(i)} for i in range(1200)]  # > 1 MiB
        try:
            upload(c, big)
            raise AssertionError("an upload over --max-upload-mib was taken")
        except SDKError as e:
            assert e.status_code == 413, e
            assert "--max-upload-mib" in e.body, e.body
        # Far over it: refused while it is read, the same way.
        try:
            upload(c, big * 3)
            raise AssertionError("an upload far over --max-upload-mib was taken")
        except SDKError as e:
            assert e.status_code == 413 and "--max-upload-mib" in e.body, e.body
        assert [f.id for f in c.files.list().data] == [small.id]
    finally:
        assert s.stop() == 0


def test_hostile_uploads_and_jobs_are_refused_with_the_field_named(tmp_path):
    """Issue 36, 4.4: an upload's purpose is one of the cloud's values, its file name and part
    headers are bounded; a job's inline outputs are bounded (the output file has them all); a
    batch line's integer custom_id is kept."""
    import urllib.error
    import urllib.request

    from mistralai.client.errors import SDKError

    s = Server("--data-dir", str(tmp_path / "data"))

    def form(purpose, filename="b.jsonl", extra_header=""):
        parts = []
        if purpose is not None:
            parts.append(
                f'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            )
        parts.append(
            f'--x\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"{extra_header}Content-Type: application/jsonl\r\n\r\n"
            + json.dumps({"body": request(0, 2)})
            + "\r\n--x--\r\n"
        )
        req = urllib.request.Request(
            s.url + "/v1/files",
            data="".join(parts).encode(),
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    try:
        for purpose in ("batch", "fine-tune", "ocr", None):
            code, body = form(purpose)
            assert code == 200, body
        for purpose in ("", "batches", "p" * 100_000):
            code, body = form(purpose)
            assert code == 400 and body["param"] == "purpose", (purpose[:20], body)
            assert len(body["message"]) < 300
        code, body = form("batch", filename="n" * 5000)
        assert code == 400 and "name" in body["message"], body
        code, body = form("batch", extra_header="X-Pad: " + "p" * 1_500_000 + "\r\n")
        assert code == 400 and "headers" in body["message"], body
        c = client(s)
        # An integer custom_id is kept (as its digits); a list is a failed line that says so.
        f = upload(c, [{"custom_id": 7, "body": request(0, 2)},
                       {"custom_id": [1], "body": request(1, 2)}])
        job = c.batch.jobs.create(input_files=[f.id], endpoint="/v1/chat/completions")
        job = wait(c, job.id)
        out = c.batch.jobs.get(job_id=job.id, inline=True).outputs
        assert [o["custom_id"] for o in out][0] == "7", out
        assert job.failed_requests == 1
        assert "custom_id" in json.dumps(lines_of(c, job.error_file)), lines_of(c, job.error_file)
        # A job of more lines than inline answers take: refused, its outputs in its file.
        big = upload(c, [{"custom_id": f"l{i}", "body": request(i, 1)} for i in range(1001)])
        job = c.batch.jobs.create(input_files=[big.id], endpoint="/v1/chat/completions")
        try:
            c.batch.jobs.get(job_id=job.id, inline=True)
            raise AssertionError("1,001 lines inline")
        except SDKError as e:
            assert e.status_code == 400 and "output_file" in e.body, e.body
        c.batch.jobs.cancel(job_id=job.id)
    finally:
        assert s.stop() == 0

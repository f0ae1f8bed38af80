"""The `bora` package in process: the mistralai SDK's chat calls and shapes, batching from
threads and asyncio, structured output validated by pydantic, tool calls, errors as exceptions,
cancellation (a dropped stream, a cancelled task, Ctrl-C) freeing the KV blocks, and the same
tokens as `bora serve` for the same request."""

import asyncio
import json
import os
import signal
import threading
import time
import urllib.request
from typing import Literal

import pytest
from pydantic import BaseModel, Field

import bora
from conftest import GGUF, TINY

USER = [{"role": "user", "content": "Tell me about mixtures of experts."}]


def idle(engine, timeout=30.0):
    """Waits until the engine holds no sequence and no KV block; returns its stats."""
    deadline = time.time() + timeout
    while True:
        s = engine.stats()
        if s["running"] == 0 and s["waiting"] == 0 and s["blocks_used"] == 0:
            return s
        assert time.time() < deadline, f"still busy: {s}"
        time.sleep(0.02)


@pytest.mark.parametrize("model", [str(TINY), str(GGUF), "bora-demo"])
def test_complete_loads_every_kind_of_model(model):
    engine = bora.Engine(model, kv_cache_mib=32)
    res = engine.chat.complete(model="ignored", messages=USER, max_tokens=8, temperature=0)
    assert res.object == "chat.completion"
    assert res.model == engine.name
    choice = res.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert res.usage.completion_tokens == 8
    assert res.usage.total_tokens == res.usage.prompt_tokens + 8
    assert res.model_dump()["choices"][0]["message"]["content"] == choice.message.content


def test_stream_gives_the_same_text_as_complete(tiny):
    whole = tiny.chat.complete(messages=USER, max_tokens=16, temperature=0)
    events = list(tiny.chat.stream(messages=USER, max_tokens=16, temperature=0))
    assert events[0].data.choices[0].delta.role == "assistant"
    text = "".join(e.data.choices[0].delta.content or "" for e in events)
    assert text == whole.choices[0].message.content
    last = events[-1].data
    assert last.choices[0].finish_reason == "length"
    assert last.usage.model_dump() == whole.usage.model_dump()


def test_the_same_tokens_as_the_server(tiny, server):
    body = {"model": "tiny-mixtral", "messages": USER, "max_tokens": 24, "temperature": 0}
    req = urllib.request.Request(
        server + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        served = json.load(r)
    local = tiny.chat.complete(**body)
    assert local.choices[0].message.content == served["choices"][0]["message"]["content"]
    assert local.usage.model_dump() == served["usage"]
    # And the prompt is the one the server tokenizes.
    assert len(tiny.tokenize(messages=USER)) == served["usage"]["prompt_tokens"]


def test_async_gather_batches_and_each_equals_the_request_alone(demo):
    def req(i):
        return dict(
            messages=[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
            max_tokens=12,
            temperature=0.8,
            random_seed=i,
        )

    alone = [demo.chat.complete(**req(i)) for i in range(8)]
    idle(demo)
    steps = demo.stats()["steps"]

    async def main():
        return await asyncio.gather(*(demo.chat.complete_async(**req(i)) for i in range(8)))

    together = asyncio.run(main())
    for a, t in zip(alone, together):
        assert t.choices[0].message.content == a.choices[0].message.content
    # Batched: far fewer steps than eight requests one after the other (8 x 13).
    assert demo.stats()["steps"] - steps < 8 * 13 // 2


def test_threads_batch_and_the_gil_is_released(demo):
    results = {}
    start = threading.Barrier(4)

    def work(i):
        start.wait()
        results[i] = demo.chat.complete(messages=USER, max_tokens=16, random_seed=i, temperature=1,
                                        min_tokens=16)

    idle(demo)
    steps = demo.stats()["steps"]
    ticks = 0
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        ticks += 1  # pure Python: runs only while the engine's callers let go of the GIL
        time.sleep(0.001)
    assert len(results) == 4
    assert all(r.usage.completion_tokens == 16 for r in results.values())
    assert ticks > 10
    # Batched: far fewer steps than four requests one after the other (4 x 17).
    assert demo.stats()["steps"] - steps < 4 * 17 // 2


class City(BaseModel):
    name: Literal["Paris", "Lyon", "Nice"]
    code: str = Field(max_length=6)
    size: Literal[1, 2, 3]


def test_json_schema_output_validates_with_pydantic(demo):
    for seed in range(4):
        res = demo.chat.complete(
            messages=[{"role": "user", "content": "A city, as JSON."}],
            response_format=City,
            temperature=1,
            random_seed=seed,
            max_tokens=128,
        )
        City.model_validate_json(res.choices[0].message.content)
    parsed = demo.chat.parse(
        response_format=City, messages=USER, temperature=1, random_seed=9, max_tokens=128
    )
    assert isinstance(parsed.choices[0].message.parsed, City)


TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two small numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"enum": [1, 2, 3]}, "b": {"enum": [1, 2, 3]}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize("fixture", ["demo", "demo_v3"])
def test_tool_calls(fixture, request):
    engine = request.getfixturevalue(fixture)
    res = engine.chat.complete(
        messages=[{"role": "user", "content": "Add 1 and 2."}],
        tools=[TOOL],
        tool_choice="any",
        temperature=1,
        random_seed=3,
        max_tokens=128,
    )
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "add"
    args = json.loads(call.function.arguments)
    assert args["a"] in (1, 2, 3) and args["b"] in (1, 2, 3)
    # tool_choice none: the same prompt (the tools rendered), a text answer.
    none = engine.chat.complete(
        messages=[{"role": "user", "content": "Add 1 and 2."}],
        tools=[TOOL],
        tool_choice="none",
        max_tokens=8,
    )
    assert none.choices[0].message.tool_calls is None
    assert none.usage.prompt_tokens == res.usage.prompt_tokens


def test_errors_are_exceptions_with_the_api_fields(tiny):
    with pytest.raises(bora.BoraError) as e:
        tiny.chat.complete(messages=USER, temperature="hot")
    assert e.value.status_code == 422
    assert e.value.type == "invalid_request_error"
    assert e.value.param == "temperature"
    assert json.loads(e.value.body)["object"] == "error"
    with pytest.raises(bora.BoraError) as e:
        tiny.chat.complete(messages=[{"role": "assistant", "content": "no user turn"}])
    assert e.value.status_code == 400
    with pytest.raises(bora.BoraError) as e:
        tiny.chat.complete(messages=USER, max_tokens=100000)
    assert "context" in e.value.message
    with pytest.raises(bora.BoraError) as e:
        bora.Engine("/no/such/model")
    assert e.value.type == "load_error"
    assert "/no/such/model" in e.value.message
    with pytest.raises(bora.BoraError) as e:
        bora.Engine(str(TINY), quantize="q9_9")
    assert e.value.param == "quantize"
    with pytest.raises(bora.BoraError) as e:
        bora.Engine(str(TINY), color="blue")
    assert "color" in e.value.message
    for bad in [{"expert_cache": "fifo"}, {"kv_cache_dtype": "q4_0"}, {"max_seqs": 0},
                {"max_seqs": 2**62}]:
        with pytest.raises(bora.BoraError) as e:
            bora.Engine(str(GGUF), **bad)
        assert e.value.param == next(iter(bad)), bad


def test_memory_options():
    # A q8_0 KV cache (heads of whole blocks: the GGUF fixture's), two running sequences at
    # most, the context capped; placement options load on the CPU, where they change nothing
    # but the rounding: the same answer as the engine without them, and its logprobs to 1e-5
    # (CI saw 5e-7 apart).
    engine = bora.Engine(str(GGUF), kv_cache_dtype="q8_0", max_seqs=2, max_model_len=64,
                         cpu_moe=True, expert_cache="auto", kv_cache_mib=8)
    res = engine.chat.complete(messages=USER, max_tokens=4, temperature=0)
    assert res.usage.completion_tokens == 4
    plain = bora.Engine(str(GGUF), kv_cache_dtype="q8_0", max_seqs=2, max_model_len=64,
                        kv_cache_mib=8)
    same = plain.chat.complete(messages=USER, max_tokens=4, temperature=0, logprobs=True)
    again = engine.chat.complete(messages=USER, max_tokens=4, temperature=0, logprobs=True)
    assert again.choices[0].message.content == same.choices[0].message.content
    assert [t.logprob for t in again.choices[0].logprobs.content] == pytest.approx(
        [t.logprob for t in same.choices[0].logprobs.content], abs=1e-5)
    with pytest.raises(bora.BoraError) as e:
        engine.chat.complete(messages=USER, max_tokens=100)
    assert "context" in e.value.message


def test_a_dropped_stream_frees_its_blocks(tiny):
    idle(tiny)
    steps = tiny.stats()["steps"]
    for i, _ in enumerate(tiny.chat.stream(messages=USER, max_tokens=100)):
        if i == 2:
            break
    idle(tiny)
    # Cancelled, not run to the end.
    assert tiny.stats()["steps"] - steps < 60


def test_a_cancelled_task_frees_its_blocks(demo):
    idle(demo)

    async def main():
        # min_tokens: sampled at temperature 1, the demo model can draw its end early (CI
        # once found the request already done after 0.5 s).
        task = asyncio.ensure_future(
            demo.chat.complete_async(messages=USER, max_tokens=3000, min_tokens=3000,
                                     temperature=1)
        )
        deadline = time.time() + 10
        while demo.stats()["running"] != 1:
            assert time.time() < deadline, "the request never ran"
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    idle(demo)


def test_ctrl_c_cancels_a_blocking_call(demo):
    idle(demo)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.time()
    with pytest.raises(KeyboardInterrupt):
        demo.chat.complete(messages=USER, max_tokens=3000, min_tokens=3000, temperature=1)
    assert time.time() - started < 10
    idle(demo)


def test_tokenize(tiny):
    ids = tiny.tokenize("Hello world")
    assert ids and all(isinstance(i, int) for i in ids)
    assert tiny.detokenize(ids) == "Hello world"
    res = tiny.chat.complete(messages=USER, max_tokens=1)
    assert len(tiny.tokenize(messages=USER)) == res.usage.prompt_tokens


def test_logprobs_and_predicted_outputs(tiny, server):
    """The engine's logprobs and predicted outputs reach the package as they reach the server:
    the same tokens, alternatives and log-probabilities as `bora serve` answers."""
    args = dict(messages=USER, max_tokens=24, temperature=0)
    plain = tiny.chat.complete(**args, logprobs=True, top_logprobs=2, prompt_logprobs=True)
    content = plain.choices[0].logprobs.content
    assert len(content) == 24
    assert all(t.top_logprobs[0].token_id == t.token_id for t in content)
    prompt = plain.choices[0].prompt_logprobs.content
    assert len(prompt) == plain.usage.prompt_tokens - 1
    body = dict(args, model="tiny-mixtral", logprobs=True, top_logprobs=2, prompt_logprobs=True)
    req = urllib.request.Request(server + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        served = json.load(r)["choices"][0]
    for local, remote in ((content, served["logprobs"]["content"]),
                          (prompt, served["prompt_logprobs"]["content"])):
        assert [t.token_id for t in local] == [t["token_id"] for t in remote]
        assert [t.logprob for t in local] == pytest.approx([t["logprob"] for t in remote], abs=1e-6)
        assert [[a.token_id for a in t.top_logprobs] for t in local] == \
            [[a["token_id"] for a in t["top_logprobs"]] for t in remote]
    answer = plain.choices[0].message.content
    res = tiny.chat.complete(**args, prediction={"type": "content", "content": answer})
    assert res.choices[0].message.content == answer
    assert res.usage.completion_tokens_details.accepted_prediction_tokens > 0


def test_batch_runs_a_jsonl_file_as_bora_batch_does(tiny, tmp_path):
    reqs = [{"custom_id": f"r{i}", "body": {"messages": [{"role": "user", "content": f"Line {i}"}],
                                            "max_tokens": 6, "temperature": 0}}
            for i in range(12)]
    lines = [json.dumps(r) for r in reqs] + ['{"custom_id": "bad", "no body": 1}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines))
    seen = []
    job = tiny.batch(tmp_path / "in.jsonl", tmp_path / "out.jsonl",
                     progress=lambda done, total: seen.append((done, total)))
    assert job.status == "SUCCESS"
    assert (job.total_requests, job.succeeded_requests, job.failed_requests) == (13, 12, 1)
    assert seen and seen[-1] == (13, 13)
    out = [json.loads(l) for l in open(tmp_path / "out.jsonl")]
    assert [l["custom_id"] for l in out] == [f"r{i}" for i in range(12)]
    for line in out[:3]:
        alone = tiny.chat.complete(model="x", **reqs[int(line["custom_id"][1:])]["body"])
        assert line["response"]["body"]["choices"][0]["message"]["content"] == \
            alone.choices[0].message.content
    errors = [json.loads(l) for l in open(job.errors)]
    assert errors[0]["custom_id"] == "bad" and errors[0]["error"]
    # The default job directory is gone once the job is done.
    assert not (tmp_path / "out.bora-batch").exists()
    with pytest.raises(bora.BoraError, match="cannot read"):
        tiny.batch(tmp_path / "missing.jsonl", tmp_path / "x.jsonl")

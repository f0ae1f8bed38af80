"""Logprobs, the SDK's newer fields and tool_choice prompts, through the unchanged SDKs.

* `prompt_logprobs` of a text equal the per-token NLL that `bora perplexity` gives for the same
  prompt (within 1e-4); greedy logprobs are the top-1 of `top_logprobs`; streamed and whole
  answers carry the same logprobs.
* Under `--strict-api` every field the pinned mistralai SDK can send is honoured or refused
  with a 422 naming it (the table below must list each field of the SDK's request model).
* The server's prompt for `tool_choice` none, auto, any and a named function equals `bora
  tokenize` and mistral-common's (models/chat/vectors.json) for the same request.
"""

import json
import os
import subprocess

import openai
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError
from mistralai.client.models import ChatCompletionRequest

from conftest import FIXTURE, MODEL, ROOT, Server

HELLO = [{"role": "user", "content": "Hello, who are you?"}]
BIN = os.environ.get("BORA_BIN", str(ROOT / "target" / "debug" / "bora"))


def mistral(server):
    return Mistral(api_key="k", server_url=server.url)


def ids_and_logprobs(content):
    return [(t.token_id, t.logprob) for t in content]


def test_greedy_logprobs_are_the_top_one(server):
    res = mistral(server).chat.complete(
        model=MODEL, messages=HELLO, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    content = res.choices[0].logprobs.content  # populated: the SDK drops a malformed object
    assert len(content) == res.usage.completion_tokens == 8
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token_id == t.token_id
        assert t.top_logprobs[0].logprob == t.logprob
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert isinstance(t.bytes_, list) and all(0 <= b < 256 for b in t.bytes_)
        assert t.token == bytes(t.bytes_).decode("utf-8", errors="replace")
    text = b"".join(bytes(t.bytes_) for t in content).decode("utf-8", errors="replace")
    assert text.strip() == res.choices[0].message.content.strip()
    assert not res.choices[0].prompt_logprobs  # not asked: left out


def test_streamed_logprobs_equal_whole(server):
    client = mistral(server)
    args = dict(model=MODEL, messages=HELLO, max_tokens=12, temperature=0, logprobs=True,
                top_logprobs=2, prompt_logprobs=True, top_prompt_logprobs=1)
    whole = client.chat.complete(**args).choices[0]
    streamed, prompt, text = [], [], ""
    with client.chat.stream(**args) as events:
        for ev in events:
            for c in ev.data.choices:
                text += c.delta.content or ""
                if c.logprobs:
                    streamed += c.logprobs.content
                if c.prompt_logprobs:
                    assert not prompt, "the prompt's logprobs come once"
                    prompt = c.prompt_logprobs.content
    assert text == whole.message.content
    assert ids_and_logprobs(streamed) == ids_and_logprobs(whole.logprobs.content)
    assert [t.top_logprobs[1].token_id for t in streamed] == [
        t.top_logprobs[1].token_id for t in whole.logprobs.content]
    assert prompt and ids_and_logprobs(prompt) == ids_and_logprobs(whole.prompt_logprobs.content)


def test_prompt_logprobs_are_the_perplexity(server, tmp_path):
    text = "Mixtral routes each token to two of its eight experts.\nThen it adds them up."
    f = tmp_path / "text.txt"
    f.write_text(text)
    out = subprocess.run(
        [BIN, "perplexity", "--model", str(FIXTURE), "--file", str(f), "--chat", "--json",
         "--per-token"], check=True, capture_output=True, text=True).stdout
    ppl = json.loads(out)
    res = mistral(server).chat.complete(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=1,
        prompt_logprobs=True)
    content = res.choices[0].prompt_logprobs.content
    # The first token (BOS) has no context: it is left out.
    assert [t.token_id for t in content] == ppl["token_ids"][1:]
    assert len(content) == ppl["tokens"] == res.usage.prompt_tokens - 1
    for t, nll in zip(content, ppl["token_nll"]):
        assert abs(t.logprob + nll) < 1e-4, (t, nll)
        assert t.top_logprobs == []


def test_openai_logprobs(server):
    client = openai.OpenAI(api_key="k", base_url=server.url + "/v1", max_retries=0)
    res = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = res.choices[0].logprobs.content
    assert len(content) == 4
    assert all(t.top_logprobs[0].token == t.token and t.logprob <= 0 for t in content)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model=MODEL, messages=HELLO, logprobs=True,
                                       top_logprobs=21)
    assert "top_logprobs" in str(e.value)


# Every field of the SDK's request: a value a caller would send, and whether bora takes it
# under --strict-api (None: taken) or refuses it with a 422 naming it.
STRICT = {
    "model": (MODEL, None),
    "messages": (HELLO, None),
    "temperature": (0.5, None),
    "top_p": (0.9, None),
    "max_tokens": (2, None),
    "stream": (False, None),
    "stop": (["\n\n"], None),
    "random_seed": (3, None),
    "metadata": ({"run": "a"}, None),
    "response_format": ({"type": "text"}, None),
    "tools": ([{"type": "function", "function": {"name": "f", "parameters": {}}}], None),
    "tool_choice": ("none", None),
    "presence_penalty": (0.1, None),
    "frequency_penalty": (0.1, None),
    "min_tokens": (1, None),
    "repetition_penalty": (1.1, None),
    "top_k": (5, None),
    "logprobs": (True, None),
    "top_logprobs": (2, None),
    "prompt_logprobs": (True, None),
    "top_prompt_logprobs": (1, None),
    "n": (2, None),
    "prediction": ({"type": "content", "content": "Hello"}, None),
    "parallel_tool_calls": (False, None),
    "reasoning_effort": ("high", "reasoning_effort"),
    "prompt_mode": ("reasoning", "prompt_mode"),
    "guardrails": ([{"moderation_llm_v1": {"action": "none"}}], "guardrails"),
    "prompt_cache_key": ("conversation-1", None),
    "service_tier": ("standard_only", None),
    "safe_prompt": (True, None),
}


def test_strict_api_honours_or_refuses_every_sdk_field():
    fields = set(ChatCompletionRequest.model_fields)
    assert fields == set(STRICT), f"the SDK's fields changed: {fields ^ set(STRICT)}"
    s = Server("--strict-api")
    try:
        client = mistral(s)
        for field, (value, refused) in STRICT.items():
            if field in ("model", "messages", "stream"):
                continue
            args = {"model": MODEL, "messages": HELLO, "max_tokens": 2, field: value}
            if field == "top_logprobs":
                args["logprobs"] = True
            if field == "top_prompt_logprobs":
                args["prompt_logprobs"] = True
            if refused is None:
                res = client.chat.complete(**args)
                assert res.choices[0].finish_reason in ("stop", "length"), field
            else:
                with pytest.raises(HTTPValidationError) as e:
                    client.chat.complete(**args)
                assert refused in str(e.value.data.detail[0].loc), (field, e.value)
    finally:
        assert s.stop() == 0


VECTORS = json.loads((ROOT / "models" / "chat" / "vectors.json").read_text())
CHOICES = [v for v in VECTORS if v["name"].startswith("tool_choice_")]


@pytest.fixture(scope="module", params=["bora-demo", "bora-demo-v3"])
def demo(request):
    s = Server(model=request.param)
    yield request.param, s
    assert s.stop() == 0


def server_prompt(server, model, body):
    """The prompt the server ran: BOS, then the ids its prompt_logprobs score."""
    res = mistral(server).chat.complete(
        model=model, max_tokens=1, prompt_logprobs=True,
        **{k: v for k, v in body.items() if k != "model"})
    assert res.usage.prompt_tokens == len(res.choices[0].prompt_logprobs.content) + 1
    return [1] + [t.token_id for t in res.choices[0].prompt_logprobs.content]


def test_tool_choice_never_changes_the_prompt(demo, tmp_path):
    model, server = demo
    assert len(CHOICES) >= 5
    prompts = {}
    for v in CHOICES:
        f = tmp_path / "req.json"
        f.write_text(json.dumps(v["request"]))
        tokenized = json.loads(subprocess.run(
            [BIN, "tokenize", "--model", model, "--chat-json", str(f)],
            check=True, capture_output=True, text=True).stdout)
        got = server_prompt(server, model, v["request"])
        assert got == tokenized, v["name"]
        if model == "bora-demo-v3":
            # mistral-common's tokens (v3: it renders the tools whatever tool_choice says).
            assert got == v["expect"]["tokens"], v["name"]
        prompts[v["name"]] = got
    # The same tools and messages render one prompt under none, auto and any.
    same = {tuple(prompts[f"tool_choice_{c}/v3"]) for c in ("none", "auto", "any")}
    assert len(same) == 1


def test_predicted_outputs_through_the_sdk(server):
    """A prediction leaves a greedy answer as it is, streamed or whole; the drafts kept and
    rejected are counted in OpenAI's completion_tokens_details (not in completion_tokens)."""
    client = mistral(server)
    args = dict(model=MODEL, messages=HELLO, max_tokens=48, temperature=0)
    plain = client.chat.complete(**args)
    answer = plain.choices[0].message.content
    for prediction in (answer, answer[: len(answer) // 2] + " and now for something else",
                       "nothing like it at all " * 5):
        res = client.chat.complete(**args, prediction={"type": "content", "content": prediction})
        assert res.choices[0].message.content == answer
        assert res.usage.completion_tokens == plain.usage.completion_tokens
        text = ""
        with client.chat.stream(**args, prediction={"type": "content", "content": prediction}) as ev:
            for e in ev:
                for c in e.data.choices:
                    text += c.delta.content or ""
        assert text == answer
    raw = openai.OpenAI(api_key="k", base_url=server.url + "/v1", max_retries=0)
    res = raw.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=48, temperature=0,
                                      prediction={"type": "content", "content": answer})
    assert res.choices[0].message.content == answer
    details = res.usage.completion_tokens_details
    assert 0 < details.accepted_prediction_tokens <= res.usage.completion_tokens
    assert isinstance(details.rejected_prediction_tokens, int)
    # Half right: its head is kept, the drafts where the answer departs from it are rejected
    # (and not counted in completion_tokens); the answer is the same.
    half = raw.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=48, temperature=0,
        prediction={"type": "content",
                    "content": answer[: len(answer) // 2] + " and now for something else"})
    assert half.choices[0].message.content == answer
    assert half.usage.completion_tokens == res.usage.completion_tokens
    details = half.usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0 and details.rejected_prediction_tokens > 0


def test_strict_api_fields_change_what_they_say():
    """Issue 36, 2.13: accepted is honoured. Under --strict-api, top_k, n, stop, max_tokens,
    min_tokens, random_seed and the logprob fields each change the answer as they say (each
    against the same request without it)."""
    s = Server("--strict-api")
    try:
        c = mistral(s)
        base = dict(model=MODEL, messages=HELLO, max_tokens=12)
        greedy = c.chat.complete(**base, temperature=0).choices[0].message.content
        hot = dict(base, temperature=1.5)
        # top_k 1 at a high temperature is greedy; without it, seeds draw other answers.
        drawn = {c.chat.complete(**hot, random_seed=seed).choices[0].message.content
                 for seed in range(4)}
        assert drawn != {greedy}, "temperature 1.5 never left the greedy answer"
        for seed in range(4):
            assert c.chat.complete(**hot, random_seed=seed, top_k=1).choices[0].message.content \
                == greedy
        # The same seed, the same draw; n choices, each its own.
        a = c.chat.complete(**hot, random_seed=11).choices[0].message.content
        assert c.chat.complete(**hot, random_seed=11).choices[0].message.content == a
        two = c.chat.complete(**hot, random_seed=11, n=2)
        assert [x.index for x in two.choices] == [0, 1]
        # A stop string from inside the greedy answer ends it there.
        words = greedy.split()
        stop = " ".join(words[len(words) // 2:len(words) // 2 + 1])
        assert stop and stop in greedy
        cut = c.chat.complete(**base, temperature=0, stop=[stop]).choices[0]
        assert cut.finish_reason == "stop" and cut.message.content == greedy[:greedy.index(stop)]
        # max_tokens and min_tokens count.
        res = c.chat.complete(**dict(base, max_tokens=3), temperature=0)
        assert res.usage.completion_tokens == 3
        res = c.chat.complete(**dict(base, max_tokens=5), min_tokens=5, temperature=0)
        assert res.usage.completion_tokens == 5
        # Logprobs as asked: two alternatives for each token, the chosen one's logprob first.
        res = c.chat.complete(**base, temperature=0, logprobs=True, top_logprobs=2)
        content = res.choices[0].logprobs.content
        assert len(content) == res.usage.completion_tokens
        assert all(len(t.top_logprobs) == 2 for t in content)
        res = c.chat.complete(**base, temperature=0, prompt_logprobs=True)
        assert len(res.choices[0].prompt_logprobs.content) == res.usage.prompt_tokens - 1
    finally:
        assert s.stop() == 0


def test_deterministic_serving_gives_a_seeded_answer_whatever_runs_beside_it():
    """Issue 36, 2.13: `bora serve --deterministic`: a seeded request at temperature 0.8 gets the
    same answer alone and among eight others sent at once (and a different seed another)."""
    import concurrent.futures

    s = Server("--deterministic")
    try:
        c = mistral(s)
        args = dict(model=MODEL, messages=HELLO, max_tokens=24, temperature=0.8, random_seed=5)
        alone = c.chat.complete(**args).choices[0].message.content
        others = [dict(args, messages=[{"role": "user", "content": f"Other {i} " * (i + 1)}],
                       random_seed=i) for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            futures = [pool.submit(c.chat.complete, **o) for o in others]
            mine = pool.submit(c.chat.complete, **args)
            together = mine.result().choices[0].message.content
            for f in futures:
                f.result()
        assert together == alone
        other_seed = c.chat.complete(**dict(args, random_seed=6)).choices[0].message.content
        assert other_seed != alone
    finally:
        assert s.stop() == 0

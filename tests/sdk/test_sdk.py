"""The official Python SDKs, unchanged, against `bora serve` on the tiny fixture model."""

import asyncio

import openai
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError, SDKError

from conftest import MODEL

HELLO = [{"role": "user", "content": "Hello, who are you?"}]


def mistral(server, key="anything"):
    return Mistral(api_key=key, server_url=server.url)


def oai(server, key="anything"):
    return openai.OpenAI(api_key=key, base_url=server.url + "/v1", max_retries=0)


# --- mistralai -------------------------------------------------------------------------------


def test_complete(server):
    res = mistral(server).chat.complete(
        model=MODEL, messages=HELLO, max_tokens=8, temperature=0, random_seed=1
    )
    choice = res.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert res.usage.completion_tokens == 8
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    assert res.model == MODEL and isinstance(res.created, int)


def test_stream_equals_complete(server):
    client = mistral(server)
    args = dict(model=MODEL, messages=HELLO, max_tokens=16, temperature=0, random_seed=7)
    whole = client.chat.complete(**args)
    text, reasons, usage = "", [], None
    with client.chat.stream(**args) as events:
        for ev in events:
            choice = ev.data.choices[0] if ev.data.choices else None
            if choice is not None:
                text += choice.delta.content or ""
                reasons.append(choice.finish_reason)
            usage = ev.data.usage or usage
    assert text == whole.choices[0].message.content
    assert reasons[-1] == whole.choices[0].finish_reason
    assert all(r is None for r in reasons[:-1])
    assert usage.total_tokens == whole.usage.total_tokens


def test_seeded_sampling_is_reproducible(server):
    client = mistral(server)
    args = dict(model=MODEL, messages=HELLO, max_tokens=10, temperature=1.0, random_seed=42)
    a = client.chat.complete(**args).choices[0].message.content
    b = client.chat.complete(**args).choices[0].message.content
    assert a == b


def test_multi_turn_history(server):
    client = mistral(server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    for turn in ["And then?", "Thanks."]:
        res = client.chat.complete(model=MODEL, messages=messages, max_tokens=4, temperature=0)
        # The SDK's own message object goes back into the history, as the guide does.
        messages.append(res.choices[0].message)
        messages.append({"role": "user", "content": turn})
    res = client.chat.complete(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    assert res.choices[0].message.content


def test_tool_call_history_is_accepted(server):
    client = mistral(server)
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "abcABC123",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "name": "get_weather", "content": '{"c": 18}', "tool_call_id": "abcABC123"},
    ]
    # The SDK echoes the call with `index` and dict arguments. (The fixture's context, 128
    # tokens, has no room for a tool list as well.)
    res = client.chat.complete(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    assert res.choices[0].finish_reason in ("length", "stop", "tool_calls")


def test_eight_concurrent_async_calls(server):
    client = mistral(server)

    async def run():
        calls = [
            client.chat.complete_async(
                model=MODEL,
                messages=[{"role": "user", "content": f"Count to {i}"}],
                max_tokens=6,
                temperature=0,
            )
            for i in range(8)
        ]
        return await asyncio.gather(*calls)

    results = asyncio.run(run())
    assert len(results) == 8
    for i, res in enumerate(results):
        alone = client.chat.complete(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count to {i}"}],
            max_tokens=6,
            temperature=0,
        )
        # Greedy answers do not depend on what else ran in the batch.
        assert res.choices[0].message.content == alone.choices[0].message.content


def test_models(server):
    client = mistral(server)
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    card = client.models.retrieve(model_id=MODEL)
    assert card.capabilities.completion_chat
    assert card.max_context_length == 128


def test_gguf_file_serves_the_same_api():
    """A GGUF file made by llama.cpp's tools is served like a directory, named by its file."""
    from conftest import ROOT, Server

    s = Server(model=str(ROOT / "models" / "fixtures" / "gguf" / "tiny-Q4_K_M.gguf"))
    try:
        client = mistral(s)
        [card] = client.models.list().data
        assert card.id == "tiny-Q4_K_M.gguf"
        res = client.chat.complete(
            model=card.id, messages=HELLO, max_tokens=6, temperature=0, random_seed=1
        )
        assert res.choices[0].finish_reason == "length"
        assert res.usage.completion_tokens == 6
    finally:
        assert s.stop() == 0, "".join(s.lines)


def test_mistral_errors(server, auth_server, full_server):
    client = mistral(server)
    with pytest.raises(SDKError) as e:
        client.chat.complete(model="open-mixtral-8x7b-nope", messages=HELLO)
    assert e.value.status_code == 400 and "Invalid model" in e.value.body
    with pytest.raises(SDKError) as e:
        client.chat.complete(model=MODEL, messages=[{"role": "assistant", "content": "x"}])
    assert e.value.status_code == 400
    with pytest.raises(HTTPValidationError) as e:
        client.chat.complete(model=MODEL, messages=HELLO, temperature=-1)
    assert e.value.data.detail[0].loc == ["body", "temperature"]
    with pytest.raises(HTTPValidationError):
        client.chat.complete(model=MODEL, messages=HELLO, top_p=3)
    with pytest.raises(SDKError) as e:
        client.models.retrieve(model_id="nope")
    assert e.value.status_code == 404
    with pytest.raises(SDKError) as e:
        client.chat.complete(
            model=MODEL, messages=[{"role": "user", "content": "word " * 400}]
        )
    assert e.value.status_code == 400 and "context" in e.value.body
    with pytest.raises(SDKError) as e:
        client.chat.complete(
            model=MODEL, messages=[{"role": "user", "content": "x" * (17 << 20)}]
        )
    assert e.value.status_code == 413
    with pytest.raises(SDKError) as e:
        mistral(auth_server, key="wrong").chat.complete(model=MODEL, messages=HELLO)
    assert e.value.status_code == 401
    ok = mistral(auth_server, key="s3cret").chat.complete(
        model=MODEL, messages=HELLO, max_tokens=2
    )
    assert ok.usage.completion_tokens == 2
    with pytest.raises(SDKError) as e:
        mistral(full_server).chat.complete(model=MODEL, messages=HELLO, max_tokens=2)
    assert e.value.status_code == 429 and "retry-after" in e.value.headers


# --- openai ----------------------------------------------------------------------------------


def test_openai_complete_and_stream(server):
    client = oai(server)
    whole = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, temperature=0, seed=3
    )
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12
    text = ""
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_completion_tokens=12,
        temperature=0,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
        usage = chunk.usage or usage
    assert text == whole.choices[0].message.content
    assert usage.total_tokens == whole.usage.total_tokens
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_openai_errors(server, auth_server, full_server):
    client = oai(server)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert e.value.code == "1500" and e.value.type == "invalid_model"
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=-2)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x" * (17 << 20)}]
        )
    assert e.value.status_code == 413
    with pytest.raises(openai.AuthenticationError):
        oai(auth_server, key="wrong").chat.completions.create(model=MODEL, messages=HELLO)
    with pytest.raises(openai.RateLimitError):
        oai(full_server).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)


def test_still_healthy_after_all(server):
    assert server.healthy()
    res = mistral(server).chat.complete(model=MODEL, messages=HELLO, max_tokens=3)
    assert res.usage.completion_tokens == 3


def test_json_mode_and_schema_through_the_sdks(server):
    import json

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "pages": {"type": "integer", "minimum": 1}},
        "required": ["name", "pages"],
        "additionalProperties": False,
    }
    client = mistral(server)
    for seed in range(5):
        res = client.chat.complete(
            model=MODEL, messages=[{"role": "user", "content": "JSON"}], max_tokens=80,
            temperature=1, random_seed=seed, response_format={"type": "json_object"},
        )
        assert isinstance(json.loads(res.choices[0].message.content), dict)
        res = oai(server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "A book"}], max_tokens=80,
            temperature=1, seed=seed,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "Book", "schema": schema, "strict": True}},
        )
        book = json.loads(res.choices[0].message.content)
        assert set(book) == {"name", "pages"} and book["pages"] >= 1
    with pytest.raises(SDKError) as e:
        client.chat.complete(
            model=MODEL, messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {
                "name": "X", "schema": {"type": "object", "properties": {
                    "a": {"type": "string", "format": "no-such-format"}}}}},
        )
    assert e.value.status_code == 400


def test_web_pages_cannot_reach_the_local_server(server):
    """Issue 36, 4.2: `bora serve` on loopback serves loopback Host names only (DNS rebinding)
    and refuses cross-origin browser requests (CSRF) unless --allowed-origins lists them."""
    import json
    import urllib.error
    import urllib.request

    def status(path, headers, data=None):
        req = urllib.request.Request(server.url + path, headers=headers, data=data)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    code, body = status("/v1/models", {"Host": "evil.example"})
    assert code == 403 and body["object"] == "error", body
    port = server.url.rsplit(":", 1)[1]
    assert status("/v1/models", {"Host": f"localhost:{port}"})[0] == 200
    form = b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--x--\r\n'
    code, body = status(
        "/v1/files",
        {"Origin": "http://evil.example", "Content-Type": "multipart/form-data; boundary=x"},
        data=form,
    )
    assert code == 403 and "--allowed-origins" in body["message"], body

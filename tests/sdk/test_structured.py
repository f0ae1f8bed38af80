"""Structured outputs through the real SDKs on the demo models (random weights): for every case,
200 seeded sampled requests whose outputs must all parse and validate (jsonschema). Runs on
the release binary (BORA_RELEASE_BIN, built by tests/run) for speed."""

import asyncio
import json
import os

import jsonschema
import pytest
from mistralai.client import Mistral

from conftest import ROOT, Server

REQUESTS = int(os.environ.get("BORA_STRUCTURED_REQUESTS", "200"))


def release_server(model):
    binary = os.environ.get("BORA_RELEASE_BIN", str(ROOT / "target" / "release" / "bora"))
    if not os.path.exists(binary):
        pytest.skip(f"{binary} is not built (tests/run builds it)")
    return Server(model=model, binary=binary)


@pytest.fixture(scope="module", params=["bora-demo", "bora-demo-v3"])
def demo(request):
    s = release_server(request.param)
    yield request.param, s
    assert s.stop() == 0


BOOK = {  # the seed guide's pydantic model, as pydantic emits it
    "properties": {
        "name": {"title": "Name", "type": "string"},
        "authors": {"items": {"type": "string"}, "title": "Authors", "type": "array"},
    },
    "required": ["name", "authors"],
    "title": "Book",
    "type": "object",
    "additionalProperties": False,
}
NESTED = {
    "$defs": {
        "Address": {
            "properties": {"city": {"type": "string"}, "zip": {"pattern": "^[0-9]{5}$", "type": "string"}},
            "required": ["city", "zip"],
            "type": "object",
            "additionalProperties": False,
        }
    },
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "day": {"type": "string", "format": "date"},
        "address": {"$ref": "#/$defs/Address"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["name", "age", "address", "tags"],
    "type": "object",
    "additionalProperties": False,
}
SCHEMAS = [BOOK, NESTED]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                    "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "add", "description": "Add two numbers",
     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"], "additionalProperties": False}}},
]


def many(client, model, **kw):
    async def run():
        sem = asyncio.Semaphore(16)

        async def one(seed):
            async with sem:
                return await client.chat.complete_async(
                    model=model, messages=[{"role": "user", "content": "Answer, please."}],
                    temperature=1, random_seed=seed, max_tokens=160, **kw)

        return await asyncio.gather(*(one(s) for s in range(REQUESTS)))

    return asyncio.run(run())


def test_json_mode(demo):
    model, server = demo
    for res in many(Mistral(api_key="x", server_url=server.url), model,
                    response_format={"type": "json_object"}):
        c = res.choices[0]
        assert c.finish_reason == "stop", c.message.content
        assert isinstance(json.loads(c.message.content), dict)


@pytest.mark.parametrize("schema", SCHEMAS, ids=["book", "nested"])
def test_json_schemas(demo, schema):
    model, server = demo
    fmt = {"type": "json_schema", "json_schema": {"name": "S", "schema": schema, "strict": True}}
    for res in many(Mistral(api_key="x", server_url=server.url), model, response_format=fmt):
        c = res.choices[0]
        assert c.finish_reason == "stop", c.message.content
        jsonschema.validate(json.loads(c.message.content), schema)


@pytest.mark.parametrize("choice", ["any", {"type": "function", "function": {"name": "add"}}],
                         ids=["any", "named"])
def test_forced_tool_calls(demo, choice):
    model, server = demo
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for res in many(Mistral(api_key="x", server_url=server.url), model, tools=TOOLS,
                    tool_choice=choice, parallel_tool_calls=False):
        c = res.choices[0]
        assert c.finish_reason == "tool_calls", c.message.content
        assert len(c.message.tool_calls) == 1
        call = c.message.tool_calls[0]
        if isinstance(choice, dict):
            assert call.function.name == "add"
        jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name])


def test_auto_tool_calls_are_valid_when_made(demo):
    model, server = demo
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for res in many(Mistral(api_key="x", server_url=server.url), model, tools=TOOLS,
                    tool_choice="auto"):
        for call in res.choices[0].message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name])

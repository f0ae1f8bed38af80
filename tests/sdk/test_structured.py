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
    # Never skipped: a missing binary is a failure (tests/run builds it).
    assert os.path.exists(binary), f"{binary} is not built (tests/run builds it)"
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
EXTRA = [
    # A list of records with bounded counts.
    {"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 4,
        "items": {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                                                   "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                  "required": ["sku", "qty"], "additionalProperties": False}}},
     "required": ["items"], "additionalProperties": False},
    # Optional properties only.
    {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}, "c": {"type": "number"}},
     "additionalProperties": False},
    # A top-level enum and const mix.
    {"type": "object", "properties": {"kind": {"const": "event"}, "level": {"enum": ["low", "mid", "high"]},
                                      "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 1000}},
     "required": ["kind", "level", "count"], "additionalProperties": False},
    # Nested arrays of numbers.
    {"type": "object", "properties": {"matrix": {"type": "array", "maxItems": 3,
        "items": {"type": "array", "maxItems": 3, "items": {"type": "number", "minimum": -1, "maximum": 1}}}},
     "required": ["matrix"], "additionalProperties": False},
    # Recursive $ref, as pydantic emits a tree.
    {"$defs": {"Node": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
        "children": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/Node"}}},
        "required": ["name"], "additionalProperties": False}},
     "$ref": "#/$defs/Node"},
    # A discriminated union (pydantic's oneOf of tagged models).
    {"$defs": {"Cat": {"type": "object", "properties": {"pet": {"const": "cat"}, "lives": {"type": "integer", "minimum": 1, "maximum": 9}},
                       "required": ["pet", "lives"], "additionalProperties": False},
               "Dog": {"type": "object", "properties": {"pet": {"const": "dog"}, "good": {"type": "boolean"}},
                       "required": ["pet", "good"], "additionalProperties": False}},
     "type": "object", "properties": {"animal": {"anyOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}]}},
     "required": ["animal"], "additionalProperties": False},
    # Strings with length bounds and a uuid format.
    {"type": "object", "properties": {"code": {"type": "string", "minLength": 2, "maxLength": 4},
                                      "id": {"type": "string", "format": "uuid"}},
     "required": ["code", "id"], "additionalProperties": False},
    # A map with typed values.
    {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 99}, "maxProperties": 3},
]
SCHEMAS = [BOOK, NESTED, *EXTRA]
MORE_TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object",
     "properties": {"query": {"type": "string", "maxLength": 30}, "limit": {"type": "integer", "minimum": 1, "maximum": 10}},
     "required": ["query"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "book_flight", "parameters": {"type": "object",
     "properties": {"from": {"type": "string", "pattern": "^[A-Z]{3}$"}, "to": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "class": {"enum": ["economy", "business"]}},
     "required": ["from", "to"], "additionalProperties": False}}},
]
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


@pytest.mark.parametrize("schema", SCHEMAS, ids=["book", "nested", "records", "optional", "enum", "matrix", "tree", "union", "strings", "map"])
def test_json_schemas(demo, schema):
    model, server = demo
    fmt = {"type": "json_schema", "json_schema": {"name": "S", "schema": schema, "strict": True}}
    for res in many(Mistral(api_key="x", server_url=server.url), model, response_format=fmt):
        c = res.choices[0]
        assert c.finish_reason == "stop", c.message.content
        jsonschema.validate(json.loads(c.message.content), schema)


@pytest.mark.parametrize("choice,count", [("any", 1), ("any", 4), ({"type": "function", "function": {"name": "add"}}, 2), ({"type": "function", "function": {"name": "book_flight"}}, 4)],
                         ids=["any-1", "any-4", "named-2", "named-4"])
def test_forced_tool_calls(demo, choice, count):
    model, server = demo
    tools = (TOOLS + MORE_TOOLS)[:count] if count > 1 else TOOLS[:1]
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for res in many(Mistral(api_key="x", server_url=server.url), model, tools=tools,
                    tool_choice=choice, parallel_tool_calls=False):
        c = res.choices[0]
        assert c.finish_reason == "tool_calls", c.message.content
        assert len(c.message.tool_calls) == 1
        call = c.message.tool_calls[0]
        if isinstance(choice, dict):
            assert call.function.name == choice["function"]["name"]
        jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name])


def test_auto_tool_calls_are_valid_when_made(demo):
    model, server = demo
    tools = TOOLS + MORE_TOOLS
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    calls = texts = 0
    for res in many(Mistral(api_key="x", server_url=server.url), model, tools=tools,
                    tool_choice="auto"):
        choice = res.choices[0]
        if choice.message.tool_calls:
            # A call: finished as one, its arguments valid for its tool.
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                jsonschema.validate(json.loads(call.function.arguments),
                                    by_name[call.function.name])
            calls += 1
        else:
            # Text: never a call that failed to parse.
            text = choice.message.content or ""
            assert choice.finish_reason in ("stop", "length"), choice
            assert not text.lstrip().startswith("[TOOL_CALLS]"), text
            texts += 1
    assert calls + texts == REQUESTS

"""Generate chat-format and tokenizer test vectors with mistral-common (pinned in
requirements-fixtures.txt), the reference bora must match token for token.

    .cache/fixvenv/bin/python models/gen_chat_vectors.py

Writes:
* models/chat/vectors.json: chat completion requests in the wire form the SDKs send, each
  rendered by mistral-common in serving mode for v1 (Mixtral 8x7B) and/or v3 (Mixtral 8x22B):
  the token ids, or the exception class and message it raises.
* models/chat/spm_strings.json: random strings and their sentencepiece ids under both tokenizers.

Requests with tools or tool messages are rendered for v3 only: mistral-common has no tools for
v1 (it ignores `tools` and rejects tool messages), while bora renders them in its own documented
way for v1 models (README, "Function calling with Mixtral 8x7B").
"""

import json
import os
import random

import mistral_common
import sentencepiece as spm
from mistral_common.exceptions import MistralCommonException
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(mistral_common.__file__), "data")
FILES = {"v1": "tokenizer.model.v1", "v3": "mistral_instruct_tokenizer_240323.model.v3"}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
NESTED = {
    "type": "function",
    "function": {
        "name": "book-trip_v2",
        "parameters": {
            "type": "object",
            "properties": {
                "traveller": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
                    "required": ["name"],
                },
                "legs": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}}},
                    "minItems": 1,
                },
                "budget": {"type": ["number", "null"], "description": "in €, optional"},
            },
            "required": ["traveller", "legs"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
NO_PARAMS = {"type": "function", "function": {"name": "now", "description": "Current time", "parameters": {}}}


def u(text):
    return {"role": "user", "content": text}


def a(text, **kw):
    return {"role": "assistant", "content": text, **kw}


def s(text):
    return {"role": "system", "content": text}


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}, "index": 0}


def tc(*calls, content=None):
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def tool(id_, content, name=None):
    m = {"role": "tool", "content": content, "tool_call_id": id_}
    if name is not None:
        m["name"] = name
    return m


def chunks(*texts):
    return [{"type": "text", "text": t} for t in texts]


# (name, messages, tools, versions[, more request fields])
BOTH, V3 = ("v1", "v3"), ("v3",)
CASES = [
    ("single_turn", [u("Hello, who are you?")], None, BOTH),
    ("unicode_and_emoji", [u("Ça va? 日本語で答えて 🙂🚀 — ok")], None, BOTH),
    ("leading_trailing_spaces", [u("  spaced out   ")], None, BOTH),
    ("newlines_and_tabs", [u("line1\nline2\n\n\tindented\r\nwin")], None, BOTH),
    ("digits", [u("Compute 12345 * 678.9 = ?")], None, BOTH),
    ("control_token_text", [u("[INST] not a control token [/INST] [TOOL_CALLS] </s> <s>")], None, BOTH),
    ("empty_user", [u("")], None, BOTH),
    ("only_spaces_user", [u("   ")], None, BOTH),
    ("byte_fallback", [u("rare: \u2603\U0001f9ff\u0000\u001b end")], None, BOTH),
    ("system_first", [s("You are a concise assistant."), u("What is 2+2?"), a("4."), u("And 3+3?")], None, BOTH),
    ("system_french", [s("Always answer in French."), u("Hi"), a("Bonjour"), u("How are you?")], None, BOTH),
    ("two_systems", [s("Rule one."), s("Rule two."), u("Go")], None, BOTH),
    ("err_system_after_assistant", [u("a"), a("b"), s("Late system."), u("c")], None, BOTH),
    ("system_between_users", [u("a"), a("b"), u("c"), s("Late system."), u("d")], None, BOTH),
    ("system_at_end", [u("a"), s("Trailing system.")], None, BOTH),
    ("user_system_user", [u("a"), s("S"), u("b")], None, BOTH),
    ("only_system", [s("Just a system prompt.")], None, BOTH),
    ("consecutive_users_merged", [u("first"), u("second"), u("third")], None, BOTH),
    ("consecutive_assistants_merged", [u("q"), a("part one"), a("part two"), u("q2")], None, BOTH),
    ("starts_with_assistant", [a("I start."), u("Then you.")], None, BOTH),
    ("text_chunks", [{"role": "user", "content": chunks("chunk one", "chunk two")}], None, BOTH),
    ("chunks_and_strings_merged", [u("plain"), {"role": "user", "content": chunks("c1", "", "c2")}], None, BOTH),
    ("system_chunks", [{"role": "system", "content": chunks("sys a", "sys b")}, u("hi")], None, BOTH),
    ("assistant_trailing_spaces", [u("q"), a("answer with spaces   "), u("next")], None, BOTH),
    ("long_multi_turn", [u(f"question {i}") if i % 2 == 0 else a(f"answer {i}") for i in range(11)], None, BOTH),
    ("prefix_continuation", [u("Say hi"), a("Hi", prefix=True)], None, BOTH),
    ("prefix_with_system", [s("Be terse."), u("Name a color"), a("The color is", prefix=True)], None, BOTH),
    ("prefix_json", [u("Give JSON"), a('{"answer": ', prefix=True)], None, BOTH),
    ("assistant_null_content_prefix_false", [u("x"), a("y", prefix=False), u("z")], None, BOTH),
    ("markdown_and_code", [u("```python\ndef f(x):\n    return x  # ok\n```\nExplain.")], None, BOTH),
    ("many_spaces_between", [u("a     b  c      d")], None, BOTH),
    ("emoji_only", [u("🙂🙂🙂")], None, BOTH),
    ("rtl_and_combining", [u("שלום עולם, e\u0301te\u0301")], None, BOTH),
    ("tools_simple", [u("What's the weather in Paris?")], [WEATHER], V3),
    ("tools_nested_schema", [u("Book me Paris to Rome")], [NESTED], V3),
    ("tools_no_params", [u("What time is it?")], [NO_PARAMS], V3),
    ("tools_several", [u("Weather and time?")], [WEATHER, NESTED, NO_PARAMS], V3),
    ("tools_with_system", [s("Be brief."), u("Weather in Paris?")], [WEATHER], V3),
    ("tools_multi_turn", [s("Be brief."), u("Hi"), a("Hello!"), u("What's the weather in Paris?")], [WEATHER], V3),
    (
        "tool_call_and_result",
        [u("What's the weather in Paris?"), tc(call("abc123def", "get_weather", '{"city":"Paris"}')),
         tool("abc123def", '{"temperature_c": 18, "sky": "clear"}', "get_weather")],
        [WEATHER], V3,
    ),
    (
        "tool_call_arguments_object",
        [u("Weather?"), tc(call("A1b2C3d4E", "get_weather", {"city": "Zürich", "unit": "c"})),
         tool("A1b2C3d4E", "sunny")],
        [WEATHER], V3,
    ),
    (
        "parallel_tool_calls",
        [u("Weather in Paris and Rome?"),
         tc(call("aaaaaaaa1", "get_weather", '{"city": "Paris"}'), call("bbbbbbbb2", "get_weather", '{"city": "Rome"}')),
         tool("aaaaaaaa1", '{"t": 18}'), tool("bbbbbbbb2", '{"t": 24.5}')],
        [WEATHER], V3,
    ),
    (
        "tool_result_then_answer_then_user",
        [u("Weather?"), tc(call("abc123def", "get_weather", '{"city":"Oslo"}')), tool("abc123def", "-3 and snow"),
         a("It is -3°C and snowing in Oslo."), u("Thanks! And tomorrow?")],
        [WEATHER], V3,
    ),
    (
        "tool_content_chunks_and_numbers",
        [u("n?"), tc(call("xyzXYZ123", "now", "")), {"role": "tool", "tool_call_id": "xyzXYZ123", "content": chunks("1.50")}],
        [NO_PARAMS], V3,
    ),
    (
        "tool_content_empty",
        [u("n?"), tc(call("xyzXYZ123", "now", "{}")), tool("xyzXYZ123", "")],
        [NO_PARAMS], V3,
    ),
    (
        "tool_arguments_not_json",
        [u("n?"), tc(call("xyzXYZ123", "now", "not json")), tool("xyzXYZ123", "[1, 2, {\"k\": null}]")],
        [NO_PARAMS], V3,
    ),
    (
        "tool_arguments_nested_unicode",
        [u("book"), tc(call("Trip00001", "book-trip_v2",
                            '{"traveller":{"name":"Zoë","age":31},"legs":[{"from":"Köln","to":"東京"}],"budget":1e3}')),
         tool("Trip00001", '{"ok":true,"ref":"✈️-42","price":999.99,"tags":[]}')],
        [NESTED], V3,
    ),
    (
        "tool_call_prefix_answer",
        [u("Weather?"), tc(call("abc123def", "get_weather", '{"city":"Rome"}')), tool("abc123def", "hot"),
         a("In Rome it is", prefix=True)],
        [WEATHER], V3,
    ),
    ("tools_empty_list", [u("no tools")], [], V3),
    # tool_choice does not change the prompt: the tools are rendered whatever it says.
    ("tool_choice_none", [u("What's the weather in Paris?")], [WEATHER], V3, {"tool_choice": "none"}),
    ("tool_choice_auto", [u("What's the weather in Paris?")], [WEATHER], V3, {"tool_choice": "auto"}),
    ("tool_choice_any", [u("What's the weather in Paris?")], [WEATHER], V3, {"tool_choice": "any"}),
    (
        "tool_choice_named",
        [u("What's the weather in Paris?")],
        [WEATHER, NO_PARAMS],
        V3,
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    ),
    ("tool_choice_none_multi_turn", [s("Be brief."), u("Hi"), a("Hello!"), u("Weather?")], [WEATHER], V3,
     {"tool_choice": "none", "parallel_tool_calls": False}),
    # Invalid requests: mistral-common's exception class and message.
    ("err_empty", [], None, BOTH),
    ("err_last_assistant", [u("hi"), a("hello")], None, BOTH),
    ("err_only_assistant", [a("hello")], None, BOTH),
    ("err_prefix_not_last", [u("hi"), a("he", prefix=True), u("again")], None, BOTH),
    ("err_user_then_tool", [u("hi"), tool("abc123def", "x")], [WEATHER], V3),
    ("err_system_then_tool", [s("sys"), tool("abc123def", "x")], [WEATHER], V3),
    (
        "err_call_without_result",
        [u("w?"), tc(call("abc123def", "get_weather", '{"city":"Paris"}')), u("never mind")],
        [WEATHER], V3,
    ),
    (
        "err_call_without_result_at_end",
        [u("w?"), tc(call("abc123def", "get_weather", '{"city":"Paris"}')), tool("abc123def", "x"),
         tc(call("abc123de2", "get_weather", '{"city":"Rome"}'))],
        [WEATHER], V3,
    ),
    (
        "err_two_calls_one_result",
        [u("w?"), tc(call("aaaaaaaa1", "get_weather", "{}"), call("bbbbbbbb2", "get_weather", "{}")),
         tool("aaaaaaaa1", "x"), u("and?")],
        [WEATHER], V3,
    ),
    ("err_call_id_short", [u("w?"), tc(call("call_1", "get_weather", "{}")), tool("call_1", "x")], [WEATHER], V3),
    ("err_call_id_symbols", [u("w?"), tc(call("abc-23def", "get_weather", "{}")), tool("abc-23def", "x")], [WEATHER], V3),
    ("err_tool_message_bad_id", [u("w?"), tc(call("abc123def", "get_weather", "{}")), tool("abc123de", "x")], [WEATHER], V3),
    (
        "err_tool_message_no_id",
        [u("w?"), tc(call("abc123def", "get_weather", "{}")), {"role": "tool", "content": "x", "name": "get_weather"}],
        [WEATHER], V3,
    ),
    (
        "err_content_and_tool_calls",
        [u("w?"), tc(call("abc123def", "get_weather", "{}"), content="Let me check."), tool("abc123def", "x")],
        [WEATHER], V3,
    ),
    ("err_assistant_neither", [u("w?"), a(""), u("again")], None, BOTH),
    ("err_assistant_null", [u("w?"), a(None), u("again")], None, BOTH),
    ("err_bad_tool_name", [u("w?")], [{"type": "function", "function": {"name": "get weather", "parameters": {}}}], V3),
    ("err_long_tool_name", [u("w?")], [{"type": "function", "function": {"name": "x" * 65, "parameters": {}}}], V3),
    (
        "err_bad_schema_type",
        [u("w?")],
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}],
        V3,
    ),
    (
        "err_bad_schema_required",
        [u("w?")],
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "city"}}}],
        V3,
    ),
    (
        "err_bad_function_call_name",
        [u("w?"), tc(call("abc123def", "get weather", "{}")), tool("abc123def", "x")],
        [WEATHER], V3,
    ),
    ("err_bad_tool_message_name", [u("w?"), tc(call("abc123def", "get_weather", "{}")), tool("abc123def", "x", "bad name")], [WEATHER], V3),
]


def render(tok, messages, tools, extra=None):
    body = {"model": "mixtral", "messages": messages, **(extra or {})}
    if tools is not None:
        body["tools"] = tools
    req = ChatCompletionRequest.model_validate(wire_to_mistral_common(body))
    try:
        t = tok.encode_chat_completion(req)
    except MistralCommonException as e:
        return {"error": {"class": type(e).__name__, "message": str(e)}}
    return {"tokens": t.tokens, "text": tok.decode(t.tokens, special_token_policy=SpecialTokenPolicy.KEEP)}


def wire_to_mistral_common(body):
    """The SDKs' wire form carries keys mistral-common's strict models forbid (`index` on tool
    calls, `type` on tool calls is accepted); drop them as a server would."""
    body = json.loads(json.dumps(body))
    for m in body["messages"]:
        for c in m.get("tool_calls") or []:
            c.pop("index", None)
    return body


def random_strings(n, seed):
    rng = random.Random(seed)
    alphabet = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        + list("0123456789") * 2
        + [" "] * 12
        + ["\n", "\t", "  ", "\r\n", ".", ",", "!", "?", "'", '"', "-", "_", "(", ")", "{", "}", "[", "]", ":", ";", "/", "\\"]
        + list("éèàüößçñøåæœ") + list("日本語中文한국어") + list("Привет") + ["🙂", "🚀", "👍🏽", "\u2603", "\U0001f9ff", "\u0301", "\u200b"]
        + ["[INST]", "[/INST]", "<s>", "</s>", "[TOOL_CALLS]", "▁", "\u0000", "\u001b", "\u00a0"]
    )
    out = []
    for _ in range(n):
        k = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 40])
        out.append("".join(rng.choice(alphabet) for _ in range(k)))
    return out


def main():
    out_dir = os.path.join(HERE, "chat")
    os.makedirs(out_dir, exist_ok=True)
    toks = {v: MistralTokenizer.from_file(os.path.join(DATA, f), mode=ValidationMode.serving) for v, f in FILES.items()}
    vectors = []
    for name, messages, tools, versions, *extra in CASES:
        extra = extra[0] if extra else {}
        for v in versions:
            vec = {"name": f"{name}/{v}", "format": v, "request": {"model": "mixtral", "messages": messages, **extra}}
            if tools is not None:
                vec["request"]["tools"] = tools
            vec["expect"] = render(toks[v], messages, tools, extra)
            vectors.append(vec)
    with open(os.path.join(out_dir, "vectors.json"), "w") as f:
        json.dump(vectors, f, ensure_ascii=False, indent=1)
    n_err = sum("error" in v["expect"] for v in vectors)
    print(f"{len(vectors)} vectors ({n_err} errors)")

    sps = {v: spm.SentencePieceProcessor(model_file=os.path.join(DATA, f)) for v, f in FILES.items()}
    strings = random_strings(2000, seed=1)
    rows = [{"text": t, **{v: sps[v].encode(t) for v in FILES}} for t in strings]
    with open(os.path.join(out_dir, "spm_strings.json"), "w") as f:
        json.dump(rows, f, ensure_ascii=False)
    print(f"{len(rows)} random strings")


if __name__ == "__main__":
    main()

"""bora in process: Mixtral on this machine, with the ``mistralai`` SDK's chat calls and shapes.

    >>> from bora import Engine
    >>> engine = Engine(model="models/fixtures/gguf/tiny-Q4_K_M.gguf")
    >>> res = engine.chat.complete(messages=[{"role": "user", "content": "Hi!"}], max_tokens=8)
    >>> res.choices[0].message.content
    >>> for event in engine.chat.stream(messages=[...]):
    ...     print(event.data.choices[0].delta.content, end="")

Requests take the keyword arguments of ``mistralai``'s ``chat.complete`` (``messages``,
``tools``, ``tool_choice``, ``response_format``, ``temperature``, ``top_p``, ``max_tokens``,
``random_seed``, ``stop``, ``n``, ``presence_penalty``, ``frequency_penalty``,
``parallel_tool_calls``, ``safe_prompt``, ...) and are checked exactly as ``bora serve`` checks
them; ``model`` is accepted and ignored (an engine serves one model). Answers have the SDK's
attributes (``res.choices[0].message.tool_calls[0].function.arguments``, ``res.usage``) and
``model_dump()``. Many calls from many threads or asyncio tasks run batched together in the
engine; the GIL is released while it works; no socket is opened. Errors raise ``BoraError``
with the API's ``type``, ``message``, ``status_code`` and ``param``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from typing import Any, AsyncIterator, Iterator, Optional

from ._bora import BoraError
from ._bora import Engine as _Engine

__all__ = ["Engine", "BoraError", "Response"]

# Threads that wait on the engine for asyncio callers (each wait lasts at most a fraction of a
# second, so that a cancelled task lets its thread go).
_WAITERS = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="bora-wait")
_TICK = 0.1


class Response:
    """A JSON object with attribute access, as the SDK's response models read:
    ``res.choices[0].message.content``; ``model_dump()`` gives the dict back."""

    __slots__ = ("_data",)

    def __init__(self, data: dict):
        object.__setattr__(self, "_data", data)

    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self._data[name])
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data[key])

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Response):
            return self._data == other._data
        return NotImplemented

    def __repr__(self) -> str:
        return f"Response({self._data!r})"

    def model_dump(self) -> dict:
        return json.loads(self.model_dump_json())

    def model_dump_json(self) -> str:
        return json.dumps(self._data, default=_jsonable)


def _jsonable(v: Any) -> Any:
    """What JSON cannot hold as is: a parsed pydantic object."""
    if hasattr(v, "model_dump"):
        return v.model_dump(mode="json")
    raise TypeError(f"{type(v).__name__} is not JSON")


def _wrap(v: Any) -> Any:
    if isinstance(v, dict):
        return Response(v)
    if isinstance(v, list):
        return [_wrap(x) for x in v]
    return v


class Event:
    """One item of ``chat.stream``: the chunk is ``event.data``, as the SDK's
    ``CompletionEvent``."""

    __slots__ = ("data",)

    def __init__(self, data: Response):
        self.data = data

    def __repr__(self) -> str:
        return f"Event(data={self.data!r})"


def _plain(v: Any) -> Any:
    """SDK model objects (pydantic) as the JSON they stand for."""
    if hasattr(v, "model_dump") and not isinstance(v, type):
        return _plain(v.model_dump(by_alias=True, exclude_none=True))
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _response_format(fmt: Any) -> Any:
    """A pydantic model class becomes a JSON-schema response format."""
    if isinstance(fmt, type) and hasattr(fmt, "model_json_schema"):
        return {
            "type": "json_schema",
            "json_schema": {"name": fmt.__name__, "schema": fmt.model_json_schema(), "strict": True},
        }
    return _plain(fmt)


def _body(kwargs: dict) -> str:
    body = {k: v for k, v in kwargs.items() if v is not None and k not in ("model", "stream")}
    if "response_format" in body:
        body["response_format"] = _response_format(body["response_format"])
    return json.dumps(_plain(body))


class Chat:
    """``engine.chat``: the SDK's ``client.chat`` calls."""

    def __init__(self, engine: _Engine):
        self._engine = engine

    def complete(self, **kwargs: Any) -> Response:
        """The whole answer (blocks; Ctrl-C cancels it)."""
        return Response(json.loads(self._engine.submit(_body(kwargs)).wait()))

    def stream(self, **kwargs: Any) -> Iterator[Event]:
        """The answer's chunks as they come; leaving the loop early cancels the rest."""
        stream = self._engine.stream(_body(kwargs))
        try:
            for chunk in stream:
                yield Event(Response(json.loads(chunk)))
        finally:
            stream.cancel()

    def parse(self, response_format: type, **kwargs: Any) -> Response:
        """``complete`` with a pydantic model as the response format; each choice's
        ``message.parsed`` is the content validated into that model."""
        res = self.complete(response_format=response_format, **kwargs)
        data = res.model_dump()
        parsed = [
            response_format.model_validate_json(c["message"]["content"]) for c in data["choices"]
        ]
        res = Response(data)
        for choice, p in zip(res.choices, parsed):
            choice.message._data["parsed"] = p
        return res

    async def complete_async(self, **kwargs: Any) -> Response:
        """``complete`` for asyncio; cancelling the task cancels the generation."""
        answer = self._engine.submit(_body(kwargs))
        loop = asyncio.get_running_loop()
        try:
            while True:
                text = await loop.run_in_executor(_WAITERS, answer.wait, _TICK)
                if text is not None:
                    return Response(json.loads(text))
        finally:
            answer.cancel()

    async def stream_async(self, **kwargs: Any) -> AsyncIterator[Event]:
        """``stream`` for asyncio (``async for``); leaving the loop early or cancelling the
        task cancels the rest."""
        stream = self._engine.stream(_body(kwargs))
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk = await loop.run_in_executor(_WAITERS, stream.next_chunk, _TICK)
                if chunk is None:
                    return
                if chunk:
                    yield Event(Response(json.loads(chunk)))
        finally:
            stream.cancel()


class Engine:
    """A model loaded in this process and the engine that serves it.

    ``model``: anything ``bora --model`` takes (a checkpoint directory, a GGUF file, a repo
    id in the local Hugging Face cache, ``"bora-demo"``, ``"random:mixtral-8x7b"``); the
    demo model when omitted. Keywords: ``device`` ("cpu", "cuda", "cuda:N", "metal"),
    ``dtype``, ``quantize`` ("q4_k", "q8_0", ...), ``tokenizer``, ``threads``, ``repack``,
    ``kv_cache_dtype`` ("f32", "f16", "bf16", "q8_0"), ``kv_cache_mib``, ``chat_format`` ("v1",
    "v3"), ``deterministic``, ``name`` (what answers carry as ``model``), and on a GPU smaller
    than the model ``cpu_moe``, ``n_cpu_moe``, ``device_memory_mib``, ``expert_cache`` ("auto",
    "lru", "off"), ``max_model_len``, ``max_seqs``.
    """

    def __init__(self, model: Optional[str] = None, **options: Any):
        self._engine = _Engine(json.dumps({"model": model, **options}))
        self.chat = Chat(self._engine)

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def context(self) -> int:
        return self._engine.context

    def tokenize(self, text: Optional[str] = None, **request: Any) -> list:
        """Token ids of ``text``, or of the prompt a chat request (``messages=``,
        ``tools=``) renders to, as the engine runs it."""
        if text is not None:
            return self._engine.tokenize_text(text)
        return self._engine.tokenize_chat(_body(request))

    def detokenize(self, ids: list) -> str:
        return self._engine.detokenize(list(ids))

    def batch(self, input: str, output: str, *, data_dir: Optional[str] = None,
              window: int = 64, progress: Any = None) -> Response:
        """Runs a JSONL file of requests (``{"custom_id": ..., "body": {chat request}}`` a
        line, Mistral's batch input) as a batch job, as ``bora batch`` does: answers to
        ``output`` in Mistral's batch output lines, failed lines to ``output`` with the
        extension ``errors.jsonl``. The job is kept in ``data_dir`` (by default ``output`` with
        the extension ``bora-batch``, removed at the end) so that a run stopped midway goes on
        where it was when called again with the same input. ``progress(completed, total)`` is
        called as lines finish. Returns the job: ``id``, ``status``, ``total_requests``,
        ``succeeded_requests``, ``failed_requests``, ``resumed_at``, ``output``, ``errors``."""
        return Response(json.loads(self._engine.batch(
            str(input), str(output), None if data_dir is None else str(data_dir), window,
            progress)))

    def stats(self) -> dict:
        """Running and waiting sequences, KV blocks used and free, prefix-cache hits, steps."""
        return self._engine.stats()

"""Embedding bora from Python: load a model in process, stream an answer, then ask again
asynchronously. No server, no socket.

    pip install .                       # from the repository: builds the `bora` wheel
    python examples/python/chat.py [MODEL] [QUESTION]

MODEL is anything `bora --model` takes (a directory, a GGUF file, a repo id in the local
Hugging Face cache, bora-demo); the demo model by default (random weights: noise).
"""

import asyncio
import sys

import bora

model = sys.argv[1] if len(sys.argv) > 1 else "bora-demo"
question = sys.argv[2] if len(sys.argv) > 2 else "What is a mixture of experts?"
engine = bora.Engine(model, kv_cache_mib=64)
messages = [{"role": "user", "content": question}]

print(f"{engine.name}: ", end="", flush=True)
text = ""
for event in engine.chat.stream(messages=messages, max_tokens=32, temperature=0):
    piece = event.data.choices[0].delta.content or ""
    text += piece
    print(piece, end="", flush=True)
print()


async def again():
    res = await engine.chat.complete_async(messages=messages, max_tokens=32, temperature=0)
    return res.choices[0].message.content


assert asyncio.run(again()) == text, "the same answer at temperature 0"

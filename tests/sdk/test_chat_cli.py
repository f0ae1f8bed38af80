"""`bora chat` driven through a pseudo-terminal, as a person would use it, on the demo model."""

import json
import os
import signal
import urllib.request

import pexpect
import pytest

from conftest import ROOT, Server


def spawn(*args):
    binary = os.environ.get("BORA_BIN", str(ROOT / "target" / "debug" / "bora"))
    child = pexpect.spawn(
        binary, ["chat", *args], encoding="utf-8", timeout=120, dimensions=(40, 200)
    )
    child.expect("Ctrl-C stops an answer")
    return child


def ask(child, line):
    """Sends a line and returns the streamed answer (up to the next prompt)."""
    child.expect_exact("> ")
    child.sendline(line)
    child.expect_exact(line)  # the terminal's echo
    child.expect_exact("\r\n> ")
    # Put the prompt back for the next ask().
    child.buffer = "> " + child.buffer
    return child.before.strip()


@pytest.fixture(scope="module")
def demo_server():
    """The chat command's default model, served: the reference for what it should answer."""
    s = Server(model="bora-demo")
    yield s
    assert s.stop() == 0


def answer(server, messages):
    body = {"model": "bora-demo", "messages": messages, "temperature": 0, "max_tokens": 6}
    req = urllib.request.Request(
        server.url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["choices"][0]["message"]["content"].strip()


def test_chat_streams_keeps_history_resets_and_saves(tmp_path, demo_server):
    child = spawn("--temperature", "0", "--max-tokens", "6", "--system", "Be brief.")
    first = ask(child, "Hello there")
    assert first, "no answer was written"
    again = ask(child, "Hello there")
    # The same words after a turn of history give a different prompt, hence (here) a
    # different greedy answer; after /reset the first answer comes back exactly.
    ask(child, "/reset")
    assert ask(child, "Hello there") == first
    saved = tmp_path / "conv.json"
    assert "saved 2 messages" in ask(child, f"/save {saved}")
    body = json.loads(saved.read_text())
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant"]
    assert body["messages"][2]["content"] == first
    # The second answer is the model's answer to the whole conversation, history included (the
    # API's greedy answer to it), and not its answer to the question alone.
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Hello there"}
    assert answer(demo_server, [system, user]) == first
    with_history = answer(
        demo_server, [system, user, {"role": "assistant", "content": first}, user]
    )
    assert again == with_history
    assert again != first, "the demo answers the same with and without history: no check"
    child.expect_exact("> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_not_the_program():
    child = spawn("--temperature", "0")
    child.expect_exact("> ")
    child.sendline("Tell me a very long story")
    child.expect_exact("Tell me a very long story")
    # Wait for the answer to start streaming, then interrupt it.
    child.expect(r"\S")
    child.kill(signal.SIGINT)
    child.expect_exact("[stopped]")
    # The program is still there and answers again.
    child.expect_exact("> ")
    child.sendline("/reset")
    child.expect_exact("(conversation cleared)")
    child.expect_exact("> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

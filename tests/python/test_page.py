"""The page `bora serve` gives at `/`, in headless Chromium (Debian's package): it loads with
no console errors and no request outside the server, a message typed gets a streamed answer,
and the expert-load heatmap changes after requests."""

import json
import time
import urllib.request

import pytest

import browser


def stats(url):
    with urllib.request.urlopen(url + "/stats") as r:
        return json.load(r)


@pytest.mark.skipif(browser.chromium() is None, reason="no chromium (Debian's package) here")
def test_the_page_chats_and_shows_the_expert_load(server):
    b = browser.Browser()
    try:
        b.open(server + "/")

        def wait(js, timeout=60):
            deadline = time.time() + timeout
            while time.time() < deadline:
                v = b.eval(js)
                if v:
                    return v
                time.sleep(0.1)
            raise AssertionError(f"never true: {js}")

        # The heatmap is drawn from /stats: one row per layer, one cell per expert.
        s = stats(server)
        layers, experts = len(s["expert_tokens"]), len(s["expert_tokens"][0])
        wait(f"document.querySelectorAll('#heat tr').length === {layers + 1}")
        assert b.eval("document.getElementById('model').textContent") == s["model"]
        cells = "[...document.querySelectorAll('#heat td')].map(c => Number(c.dataset.tokens))"
        before = b.eval(cells)
        assert len(before) == layers * experts and sum(before) == 0
        # A message typed and sent: the answer streams in, chunk by chunk.
        b.eval("""(() => {
            document.getElementById('prompt').value = 'Tell me about the sea.';
            document.getElementById('send').click();
        })()""")
        wait("document.querySelector('.msg.assistant')?.dataset.state === 'done'")
        chunks = b.eval("Number(document.querySelector('.msg.assistant').dataset.chunks)")
        text = b.eval("document.querySelector('.msg.assistant').textContent")
        assert chunks >= 2 and text, (chunks, text)
        # The heatmap counts the request's tokens at the next poll.
        wait(f"{cells}.reduce((a, b) => a + b, 0) > 0", timeout=10)
        after = b.eval(cells)
        assert after != before
        assert b.errors() == []
        # Nothing was fetched from outside the server.
        urls = b.eval("performance.getEntriesByType('resource').map(e => e.name)")
        assert all(u.startswith(server) for u in urls), urls
    finally:
        b.close()

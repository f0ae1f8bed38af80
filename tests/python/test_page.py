"""The page `bora serve` gives at `/`, in headless Chromium (Debian's package): it loads with
no console errors and no request outside the server, a message typed gets a streamed answer,
and the expert-load heatmap shows, cell by cell, what /stats counts."""

import json
import math
import time
import urllib.request
from decimal import ROUND_HALF_UP, Decimal

import pytest

import browser


def shade(v):
    """page.html's colour for a cell at `v` (JavaScript's Math.round: half up)."""
    v = min(1.0, max(0.0, v))
    mix = lambda a, b: math.floor(a + (b - a) * v + 0.5)  # noqa: E731
    return f"rgb({mix(255, 8)}, {mix(255, 48)}, {mix(255, 107)})"


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
        # At the next poll, each cell shows its expert's tokens since the page opened, as
        # /stats counts them: the count, the share of its layer in the title, and the colour.
        now = stats(server)["expert_tokens"]
        want = [n - o for rn, ro in zip(now, s["expert_tokens"]) for n, o in zip(rn, ro)]
        assert sum(want) > 0
        target = json.dumps(json.dumps(want, separators=(",", ":")))
        wait(f"JSON.stringify({cells}) === {target}", timeout=10)
        shown = b.eval("""[...document.querySelectorAll('#heat td')].map(c =>
            [c.title, getComputedStyle(c).backgroundColor])""")
        for i, (title, colour) in enumerate(shown):
            l, e = divmod(i, experts)
            row = want[l * experts:(l + 1) * experts]
            share = want[i] / sum(row)
            pct = Decimal(100 * share).quantize(Decimal("0.1"), ROUND_HALF_UP)
            assert title == f"layer {l}, expert {e}: {pct}% ({want[i]} tokens)", title
            assert colour == shade(share * experts / 2), (l, e, colour, share)
        assert b.errors() == []
        # Nothing was fetched from outside the server.
        urls = b.eval("performance.getEntriesByType('resource').map(e => e.name)")
        assert all(u.startswith(server) for u in urls), urls
    finally:
        b.close()

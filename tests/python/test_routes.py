"""`bora routes` against the router computed directly: a numpy Mixtral forward over the tiny
fixture's checkpoint (itself checked against transformers' logits in reference.safetensors)
gives each layer's routing of every token of the trace; the Parquet file, read by pyarrow,
must have the same experts and weights for every token and layer."""

import json
import math
import os
import re
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

import browser
import report_page

from reference import CFG, ROOT, TINY, forward, safetensors

BORA = os.environ.get("BORA_BIN", str(ROOT / "target" / "release" / "bora"))


def test_the_numpy_forward_matches_transformers():
    ref = safetensors(TINY / "reference.safetensors")
    logits, _ = forward(ref["p0.ids"].tolist())
    np.testing.assert_allclose(logits, ref["p0.logits"], rtol=1e-3, atol=1e-3)


def test_a_trace_matches_the_router_computed_directly(tmp_path):
    text = ("Routing in a mixture of experts sends each token to two of eight experts; "
            "this text is long enough to meet all of them, and short enough to fit the tiny "
            "model's one window of context: a hundred tokens or so, give or take a few.")
    (tmp_path / "t.txt").write_text(text)
    out = tmp_path / "trace.parquet"
    # In float32 with an f32 KV cache (routes keeps f16 by default), as the numpy forward (in
    # float64) runs: the two agree to 1e-6.
    subprocess.run([BORA, "routes", "--model", str(TINY), "--dtype", "f32",
                    "--kv-cache-dtype", "f32", "--file",
                    str(tmp_path / "t.txt"), "--out", str(out), "--probs"],
                   check=True, capture_output=True)
    t = pq.read_table(out).to_pandas()
    a, layers = CFG["num_experts_per_tok"], CFG["num_hidden_layers"]
    ids = t[(t.layer == 0) & (t["rank"] == 0)].sort_values("position").token_id.tolist()
    assert 20 < len(ids) < CFG["max_position_embeddings"]
    assert len(t) == len(ids) * layers * a
    _, probs = forward(ids)
    checked = 0
    for (pos, layer), g in t.groupby(["position", "layer"]):
        g = g.sort_values("rank")
        pr = probs[layer][pos]
        order = np.argsort(-pr, kind="stable")
        # A near-tie among the experts taken and the next may fall either way.
        if np.diff(-pr[order[:a + 1]]).min() > 1e-5:
            assert g.expert.tolist() == order[:a].tolist(), (pos, layer)
            checked += 1
        top = pr[g.expert.to_numpy()] / pr[g.expert.to_numpy()].sum()
        np.testing.assert_allclose(g.weight.to_numpy(), top, atol=1e-5)
        np.testing.assert_allclose(np.stack(g.probs.to_numpy())[0], pr, atol=1e-5)
        assert abs(g.weight.sum() - 1) < 1e-5
    assert checked >= len(ids) * layers * 0.95


def test_the_report_numbers_equal_pandas_on_the_trace(tmp_path):
    out, rep = tmp_path / "trace.parquet", tmp_path / "report"
    subprocess.run([BORA, "routes", "--model", str(TINY), "--file", str(ROOT / "README.md"),
                    "--out", str(out), "--probs", "--report", str(rep)],
                   check=True, capture_output=True)
    s = json.loads((rep / "summary.json").read_text())
    check_summary(s, pq.read_table(out).to_pandas())
    check_page(rep)


def check_summary(s, t):
    """A report's summary.json `s` against pandas on its trace `t` (router entropy where the
    trace has the router's softmax)."""
    e = CFG["num_local_experts"]
    assert s["tokens"] == t[["sequence", "position"]].drop_duplicates().shape[0]
    for layer, g in t.groupby("layer"):
        shares = g.expert.value_counts(normalize=True).reindex(range(e), fill_value=0)
        np.testing.assert_allclose(s["shares"][layer], shares.to_numpy(), atol=1e-12)
        assert abs(s["imbalance"][layer] - shares.max() * e) < 1e-9
        p = shares[shares > 0]
        assert abs(s["load_entropy_bits"][layer] + (p * np.log2(p)).sum()) < 1e-9
        if "probs" in t.columns:
            probs = np.stack(g[g["rank"] == 0].probs.to_numpy()).astype(np.float64)
            h = -(probs * np.log2(np.where(probs > 0, probs, 1))).sum(1).mean()
            assert abs(s["router_entropy_bits"][layer] - h) < 1e-5
        # Co-activation: tokens that chose both i and j.
        sets = g.groupby(["sequence", "position"]).expert.apply(lambda x: tuple(sorted(x)))
        co = np.zeros((e, e))
        for st in sets:
            for i in st:
                for j in st:
                    if i != j:
                        co[i, j] += 1
        np.testing.assert_allclose(s["coactivation"][layer], co / len(sets), atol=1e-12)
        # Change rate: consecutive tokens of a sequence with other experts.
        ordered = sets.sort_index()
        prev = ordered.groupby(level=0).shift(1)
        pos = ordered.index.get_level_values(1).to_numpy()
        has_prev = prev.notna().to_numpy() & (np.diff(pos, prepend=-2) == 1)
        changed = (ordered.to_numpy() != prev.to_numpy()) & has_prev
        assert abs(s["change_rate"][layer] - changed.sum() / has_prev.sum()) < 1e-12


def shade(v):
    """report.rs's colour for a cell at `v` of the darkest (Rust's round: half away from 0)."""
    v = min(1.0, max(0.0, v))
    mix = lambda a, b: math.floor(a + (b - a) * v + 0.5)  # noqa: E731
    return "#%02X%02X%02X" % (mix(255, 8), mix(255, 48), mix(255, 107))


def check_heatmap(svg, rows, what):
    """The cells of a heatmap figure: column c from the left, row r from the bottom, each
    coloured for rows[r][c] over the darkest value, which its caption states."""
    cells = [(int(x), int(y), fill) for x, y, fill in re.findall(
        r'<rect x="(\d+)" y="(\d+)" width="\d+" height="\d+" opacity="1" fill="(#[0-9A-F]{6})"',
        svg)][1:]  # the first is the background
    xs = sorted({x for x, _, _ in cells})
    ys = sorted({y for _, y, _ in cells}, reverse=True)
    assert (len(ys), len(xs)) == (len(rows), len(rows[0])) and len(cells) == len(xs) * len(ys), what
    top = max(max(r) for r in rows)
    assert f"(darkest: {top:.3f})" in svg, what
    for x, y, fill in cells:
        r, c = ys.index(y), xs.index(x)
        assert fill == shade(rows[r][c] / top), (what, r, c, fill, rows[r][c])


def check_page(rep):
    """The page: self-contained (no URL outside it), every figure inline, and what it shows
    is summary.json: the per-layer table, the token count, and every heatmap cell's colour."""
    page = (rep / "report.html").read_text()
    s = json.loads((rep / "summary.json").read_text())
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    for stem in ("shares", "coactivation", "per_layer", "load_series"):
        assert f'<figure id="{stem}">' in page and (rep / f"{stem}.png").stat().st_size > 1000
        assert (rep / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert f"<p>{s['tokens']} tokens, {s['layers']} layers of {s['experts']} experts.</p>" in page
    table = re.findall(r"<tr><td>(\d+)</td>((?:<td>[^<]*</td>)+)</tr>", page)
    assert [int(l) for l, _ in table] == list(range(s["layers"]))
    for l, cols in table:
        l = int(l)
        want = [s["imbalance"][l], s["load_entropy_bits"][l], s["change_rate"][l]]
        if s["router_entropy_bits"] is not None:
            want.append(s["router_entropy_bits"][l])
        assert re.findall(r"<td>([^<]*)</td>", cols) == [f"{v:.3f}" for v in want], l
    figure = lambda stem: page.split(f'<figure id="{stem}">')[1].split("</figure>")[0]  # noqa: E731
    check_heatmap(figure("shares"), s["shares"], "shares")
    mean = np.mean(np.array(s["coactivation"]), 0)
    check_heatmap(figure("coactivation"), mean.tolist(), "coactivation")


def test_the_serving_trace_of_bora_bench_matches_the_router_computed_directly(tmp_path):
    """`bora bench --report` traces what the serving engine ran, batched and chunked as it
    serves: every request's prompt and generated tokens (fed back one by one) route as the
    numpy forward over the same tokens says; its report's numbers are pandas' on that trace."""
    rep = tmp_path / "report"
    prompt_len, gen_len = 24, 6
    subprocess.run([BORA, "bench", "--model", str(TINY), "--dtype", "f32", "--kv-cache-dtype",
                    "f32", "--prompt-len", str(prompt_len), "--gen-len", str(gen_len),
                    "--batch", "1,3", "--report", str(rep)], check=True, capture_output=True)
    t = pq.read_table(rep / "trace.parquet").to_pandas()
    a, layers = CFG["num_experts_per_tok"], CFG["num_hidden_layers"]
    # A warm-up request of 8 tokens, then 1 and 3: the last generated token is never fed back.
    lengths = t.groupby("sequence").position.agg(["min", "max", "count"])
    assert lengths["min"].eq(0).all()
    assert sorted(lengths["max"] + 1) == [8 + gen_len - 1] + [prompt_len + gen_len - 1] * 4
    assert (lengths["count"] == (lengths["max"] + 1) * layers * a).all()
    checked = generated = 0
    for seq, g in t.groupby("sequence"):
        first = g[(g.layer == 0) & (g["rank"] == 0)].sort_values("position")
        ids = first.token_id.tolist()
        _, probs = forward(ids)
        for (pos, layer), r in g.groupby(["position", "layer"]):
            r = r.sort_values("rank")
            pr = probs[layer][pos]
            order = np.argsort(-pr, kind="stable")
            if np.diff(-pr[order[:a + 1]]).min() > 1e-5:
                assert r.expert.tolist() == order[:a].tolist(), (seq, pos, layer)
                checked += 1
                generated += pos >= len(ids) - gen_len + 1
            top = pr[r.expert.to_numpy()] / pr[r.expert.to_numpy()].sum()
            np.testing.assert_allclose(r.weight.to_numpy(), top, atol=1e-5)
    rows = len(t) // a
    assert checked >= rows * 0.95 and generated >= 4 * (gen_len - 1) * layers * 0.9
    check_summary(json.loads((rep / "summary.json").read_text()), t)
    check_page(rep)


@pytest.mark.skipif(browser.chromium() is None, reason="no chromium (Debian's package) here")
def test_the_report_page_loads_in_headless_chromium_with_every_figure(tmp_path):
    rep = tmp_path / "report"
    subprocess.run([BORA, "routes", "--model", str(TINY), "--file", str(ROOT / "README.md"),
                    "--out", str(tmp_path / "t.parquet"), "--report", str(rep)],
                   check=True, capture_output=True)
    report_page.check(rep)

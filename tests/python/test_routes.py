"""`bora routes` against the router computed directly: a numpy Mixtral forward over the tiny
fixture's checkpoint (itself checked against transformers' logits in reference.safetensors)
gives each layer's routing of every token of the trace; the Parquet file, read by pyarrow,
must have the same experts and weights for every token and layer."""

import json
import os
import struct
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

import browser
import report_page

from conftest import ROOT, TINY

BORA = os.environ.get("BORA_BIN", str(ROOT / "target" / "release" / "bora"))
CFG = json.loads((TINY / "config.json").read_text())


def safetensors(path):
    """The tensors of a safetensors file as float32 numpy arrays (bf16 widened)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = raw[8 + n + a:8 + n + b]
        if t["dtype"] == "BF16":
            v = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] == "F32":
            v = np.frombuffer(buf, "<f4")
        elif t["dtype"] == "I64":
            v = np.frombuffer(buf, "<i8")
        else:
            raise ValueError(t["dtype"])
        out[name] = v.reshape(t["shape"])
    return out


def weights():
    w = {}
    for f in sorted(TINY.glob("model-*.safetensors")):
        w.update(safetensors(f))
    return w


def rms(x, g):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + CFG["rms_norm_eps"]) * g


def rope(x, theta):
    t, heads, d = x.shape
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def forward(w, ids):
    """Logits [T, V] and, per layer, the router's softmax [T, E]."""
    h_, heads, kv = CFG["hidden_size"], CFG["num_attention_heads"], CFG["num_key_value_heads"]
    d = h_ // heads
    theta = CFG["rope_parameters"]["rope_theta"]
    x = w["model.embed_tokens.weight"][ids].astype(np.float64)
    t = len(ids)
    probs = []
    for l in range(CFG["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope((h @ w[p + "self_attn.q_proj.weight"].T).reshape(t, heads, d), theta)
        k = rope((h @ w[p + "self_attn.k_proj.weight"].T).reshape(t, kv, d), theta)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(t, kv, d)
        k, v = np.repeat(k, heads // kv, 1), np.repeat(v, heads // kv, 1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", s, v).reshape(t, h_)
        x = x + a @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        logits = h @ w[p + "block_sparse_moe.gate.weight"].T
        pr = np.exp(logits - logits.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        probs.append(pr)
        top = np.argsort(-pr, -1, kind="stable")[:, :CFG["num_experts_per_tok"]]
        tw = np.take_along_axis(pr, top, -1)
        tw /= tw.sum(-1, keepdims=True)
        moe = np.zeros_like(x)
        for i in range(t):
            for e, wt in zip(top[i], tw[i]):
                q_ = f"{p}block_sparse_moe.experts.{e}."
                g = h[i] @ w[q_ + "w1.weight"].T
                u = h[i] @ w[q_ + "w3.weight"].T
                moe[i] += wt * ((g / (1 + np.exp(-g)) * u) @ w[q_ + "w2.weight"].T)
        x = x + moe
    x = rms(x, w["model.norm.weight"])
    return x @ w["lm_head.weight"].T, probs


def test_the_numpy_forward_matches_transformers():
    ref = safetensors(TINY / "reference.safetensors")
    logits, _ = forward(weights(), ref["p0.ids"].tolist())
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
    _, probs = forward(weights(), ids)
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
    t = pq.read_table(out).to_pandas()
    e = CFG["num_local_experts"]
    assert s["tokens"] == t[["sequence", "position"]].drop_duplicates().shape[0]
    for layer, g in t.groupby("layer"):
        shares = g.expert.value_counts(normalize=True).reindex(range(e), fill_value=0)
        np.testing.assert_allclose(s["shares"][layer], shares.to_numpy(), atol=1e-12)
        assert abs(s["imbalance"][layer] - shares.max() * e) < 1e-9
        p = shares[shares > 0]
        assert abs(s["load_entropy_bits"][layer] + (p * np.log2(p)).sum()) < 1e-9
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
    # The page: self-contained (no URL outside it) and every figure inline.
    page = (rep / "report.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    for stem in ("shares", "coactivation", "per_layer", "load_series"):
        assert f'<figure id="{stem}">' in page and (rep / f"{stem}.png").stat().st_size > 1000
        assert (rep / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(browser.chromium() is None, reason="no chromium (Debian's package) here")
def test_the_report_page_loads_in_headless_chromium_with_every_figure(tmp_path):
    rep = tmp_path / "report"
    subprocess.run([BORA, "routes", "--model", str(TINY), "--file", str(ROOT / "README.md"),
                    "--out", str(tmp_path / "t.parquet"), "--report", str(rep)],
                   check=True, capture_output=True)
    report_page.check(rep)

"""An independent reference for the tiny fixture (models/fixtures/tiny-mixtral): its checkpoint
read with numpy and a Mixtral forward pass written out in float64, checked against transformers'
float32 logits (reference.safetensors) by test_routes.py. It gives logits, log-probabilities and
each layer's router softmax for any token sequence, so that what bora reports (logprobs, routing
traces) is compared with arithmetic bora did not do."""

import functools
import json
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "models" / "fixtures" / "tiny-mixtral"
CFG = json.loads((TINY / "config.json").read_text())


def safetensors(path):
    """The tensors of a safetensors file as float32 numpy arrays (bf16 widened)."""
    raw = Path(path).read_bytes()
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


@functools.cache
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


def forward(ids, w=None):
    """Logits [T, V] of every position of `ids` and, per layer, the router's softmax [T, E]."""
    w = weights() if w is None else w
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


def log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

"""Generate bora's tiny random-weight Mixtral fixtures and transformers' reference outputs.

Run from the repository root with the pinned packages of models/requirements-fixtures.txt:

    python3 -m venv .cache/fixvenv && .cache/fixvenv/bin/pip install -r models/requirements-fixtures.txt
    .cache/fixvenv/bin/python models/gen_fixtures.py

Two models, both real `MixtralForCausalLM`s with random weights (a larger init than transformers'
default, and random norm weights, so that attention, routing and logits are far from uniform):

* `models/fixtures/tiny-mixtral`: the layout of Mistral's real checkpoints (per-expert
  `block_sparse_moe.experts.E.w1/w2/w3`), bf16, in two shards with `model.safetensors.index.json`,
  vocabulary of 32000 with Mixtral 8x7B's tokenizer (`tokenizer.model.v1` from mistral-common,
  converted by spm_to_tokenizer_json.py and checked against sentencepiece).
* `models/fixtures/tiny-mixtral-fused`: the fused layout transformers 5 holds in memory
  (`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I], `mlp.gate`), f32, with
  6 experts, top-3, an explicit head_dim, a sliding window of 5, tied embeddings and a small vocab.

For each, `reference.safetensors` holds transformers' float32 outputs: per prompt `pK.ids` (the
prompt with BOS), `pK.logits` [len, vocab] (every position), `pK.greedy` (11 greedy tokens) and
`pK.decode_logits` [10, vocab] (the logits of 10 decode steps made with the KV cache, step i
fed greedy token i and produced greedy token i+1), the last two for the first prompt only.
"""

import json
import os
import shutil
import sys

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import MixtralConfig, MixtralForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from spm_to_tokenizer_json import convert  # noqa: E402

import mistral_common  # noqa: E402

SPM_V1 = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
DECODE_STEPS = 10


def randomize(model: MixtralForCausalLM, std: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@torch.no_grad()
def reference(model: MixtralForCausalLM, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    """Logits of every position of every prompt; greedy decoding after the first prompt only
    (the fixtures stay small: a row of logits over 32000 tokens is 128 KB)."""
    out = {}
    for k, ids in enumerate(prompts):
        x = torch.tensor([ids])
        res = model(input_ids=x, use_cache=True)
        out[f"p{k}.ids"] = x[0].to(torch.int64)
        out[f"p{k}.logits"] = res.logits[0].float().contiguous()
        if k > 0:
            continue
        cache = res.past_key_values
        tok = int(res.logits[0, -1].argmax())
        greedy, steps = [tok], []
        for _ in range(DECODE_STEPS):
            res = model(input_ids=torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
            cache = res.past_key_values
            steps.append(res.logits[0, -1].float())
            tok = int(res.logits[0, -1].argmax())
            greedy.append(tok)
        out[f"p{k}.greedy"] = torch.tensor(greedy, dtype=torch.int64)
        out[f"p{k}.decode_logits"] = torch.stack(steps).contiguous()
        # Decode with the cache must equal a fresh forward over the whole sequence.
        full = model(input_ids=torch.tensor([ids + greedy[:-1]])).logits[0, len(ids) - 1 :]
        torch.testing.assert_close(full[1:], out[f"p{k}.decode_logits"], rtol=1e-4, atol=1e-4)
    return out


def tiny_mixtral(out_dir: str) -> None:
    cfg = MixtralConfig(
        vocab_size=32000,
        hidden_size=16,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=128,
        rope_theta=1e6,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = MixtralForCausalLM(cfg).eval()
    randomize(model, std=0.35, seed=2)
    # Weights are stored in bf16, like Mistral's checkpoints; the reference runs in float32 on
    # exactly those values.
    model.to(torch.bfloat16).save_pretrained(out_dir, max_shard_size="1500KB")
    # The reference is the checkpoint as transformers loads it in float32 (a fresh load: a
    # model cast to bf16 and back would keep bf16-rounded rotary frequencies).
    model = MixtralForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    sp = spm.SentencePieceProcessor(model_file=SPM_V1)
    texts = ["The quick brown fox", "Mixtral routes  tokens, 42"]
    prompts = [[1] + sp.encode(t) for t in texts]
    convert(SPM_V1, os.path.join(out_dir, "tokenizer.json"))
    save_file(reference(model, prompts), os.path.join(out_dir, "reference.safetensors"))


def tiny_mixtral_fused(out_dir: str) -> None:
    cfg = MixtralConfig(
        vocab_size=300,
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=10,
        num_local_experts=6,
        num_experts_per_tok=3,
        max_position_embeddings=64,
        rope_theta=10000.0,
        sliding_window=5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = MixtralForCausalLM(cfg).eval()
    randomize(model, std=0.3, seed=3)
    os.makedirs(out_dir, exist_ok=True)
    cfg.save_pretrained(out_dir)
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert any("mlp.experts.gate_up_proj" in k for k in sd), "expected the fused expert layout"
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    g = torch.Generator().manual_seed(4)
    prompts = [[1] + torch.randint(3, 300, (9,), generator=g).tolist(), [1, 17, 42, 42, 5, 6, 7]]
    save_file(reference(model, prompts), os.path.join(out_dir, "reference.safetensors"))


def main() -> None:
    root = os.path.join(HERE, "fixtures")
    for name, make in [("tiny-mixtral", tiny_mixtral), ("tiny-mixtral-fused", tiny_mixtral_fused)]:
        d = os.path.join(root, name)
        shutil.rmtree(d, ignore_errors=True)
        make(d)
        print(name, sorted(os.listdir(d)))


if __name__ == "__main__":
    main()

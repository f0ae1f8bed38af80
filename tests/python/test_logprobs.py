"""Log-probabilities as `bora serve` sends them, against the independent reference
(reference.py: a numpy forward pass over the tiny fixture's checkpoint, itself checked against
transformers' logits): every chosen and every alternative logprob, of the prompt and of the
generated tokens, greedy and sampled, equals log-softmax of the reference's logits over the
same tokens to 1e-4. The server runs in f32 with an f32 KV cache (the reference's arithmetic up to
rounding; bf16 products on a CPU with AVX512_BF16 round their activations)."""

import numpy as np
import pytest

from reference import TINY, forward, log_softmax
from serving import post, serve

TOL = 1e-4
TOP = 5
PROMPT = "The quick brown fox jumps over the lazy dog, twice, and then once more."


@pytest.fixture(scope="module")
def f32_server():
    with serve("--model", str(TINY), "--dtype", "f32", "--kv-cache-dtype", "f32",
               "--kv-cache-mib", "64") as url:
        yield url


def ask(url, **fields):
    body = {"model": "tiny-mixtral", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 12, "logprobs": True, "top_logprobs": TOP, "prompt_logprobs": TOP}
    body.update(fields)
    return post(url + "/v1/chat/completions", body)["choices"][0]


def check_position(got, row, what):
    """One position's reported logprobs against the reference's log-softmax `row`."""
    chosen = got["token_id"]
    assert abs(got["logprob"] - row[chosen]) <= TOL, (what, got["logprob"], row[chosen])
    top = got["top_logprobs"]
    assert len(top) == TOP, what
    want = np.argsort(-row, kind="stable")[:TOP]
    for rank, (alt, w) in enumerate(zip(top, want)):
        # Each alternative's own value, and the value the reference has at that rank.
        assert abs(alt["logprob"] - row[alt["token_id"]]) <= TOL, (what, rank, alt)
        assert abs(alt["logprob"] - row[w]) <= TOL, (what, rank, alt, w, row[w])
        # The same token at that rank, unless its neighbours are within the tolerance.
        near = [row[want[j]] for j in (rank - 1, rank + 1) if 0 <= j < TOP]
        if all(abs(row[w] - n) > 2 * TOL for n in near) and rank < TOP - 1:
            assert alt["token_id"] == int(w), (what, rank, alt, int(w))


def check_answer(choice):
    """Every prompt and generated position of `choice` against the reference; returns the
    prompt's ids, the generated ids, and the reference's log-softmax rows for them."""
    prompt = choice["prompt_logprobs"]["content"]
    ids = [1] + [t["token_id"] for t in prompt]
    gen = [t["token_id"] for t in choice["logprobs"]["content"]]
    assert len(gen) == 12
    lp = log_softmax(forward(ids + gen[:-1])[0])
    # Row j predicts token j + 1.
    for j, got in enumerate(prompt):
        assert got["token_id"] == ids[j + 1]
        check_position(got, lp[j], f"prompt position {j + 1}")
    for i, got in enumerate(choice["logprobs"]["content"]):
        check_position(got, lp[len(ids) - 1 + i], f"generated token {i}")
    return ids, gen, lp[len(ids) - 1:]


def test_greedy_logprobs_equal_the_reference(f32_server):
    choice = ask(f32_server, temperature=0)
    ids, gen, rows = check_answer(choice)
    assert len(ids) > 15
    # Greedy decoding took the reference's most likely token wherever it leads by more than
    # the tolerance.
    for i, (t, row) in enumerate(zip(gen, rows)):
        first, second = np.sort(row)[::-1][:2]
        if first - second > 2 * TOL:
            assert t == int(np.argmax(row)), i


def test_sampled_logprobs_are_the_models_and_equal_the_reference(f32_server):
    """At temperature > 0 (and with top_p, top_k), the logprobs are the model's own
    distribution, as at temperature 0: those of the tokens drawn, over the sequence drawn."""
    for fields in ({"temperature": 1.5, "random_seed": 11},
                   {"temperature": 0.7, "top_p": 0.9, "random_seed": 5},
                   {"temperature": 1.0, "top_k": 3, "random_seed": 3}):
        choice = ask(f32_server, **fields)
        _, gen, rows = check_answer(choice)
        greedy = [int(np.argmax(r)) for r in rows]
        assert gen != greedy, f"{fields}: sampling drew the greedy answer"
        if "top_k" in fields:
            # Each token drawn is among the model's top 3 there.
            for t, row in zip(gen, rows):
                assert t in np.argsort(-row)[:3]

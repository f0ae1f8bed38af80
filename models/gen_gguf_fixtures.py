"""Generate bora's GGUF fixtures with llama.cpp's own tools, and llama.cpp's logits on each.

llama.cpp comes from the `llama-cpp-python` source distribution on PyPI (its `vendor/llama.cpp`
tree holds the converter, gguf-py and the quantizer; its `llama_cpp` package is the Python
binding used here to compute reference logits). Build it once and run, from the repository root:

    python3 models/gen_gguf_fixtures.py --llama-cpp-python DIR

where DIR is the unpacked sdist (`llama_cpp_python-0.3.36`) whose `vendor/llama.cpp` was built
with `cmake -B build -DBUILD_SHARED_LIBS=ON && cmake --build build --target llama llama-quantize
llama-bench` (`LLAMA_CPP=python models/build_llama_cpp.sh` fetches and builds it). The Python needs the packages of
models/requirements-fixtures.txt (torch, transformers, sentencepiece, numpy).

Writes `models/fixtures/gguf/`:

* `source/`: a random-weight `MixtralForCausalLM` (hidden 256, intermediate 256, 2 layers,
  4 experts, top 2, 4 heads of 64, 2 KV heads) in f16 safetensors, with a small sentencepiece
  BPE tokenizer (1000 pieces with byte fallback, trained here on fixed text) so that the files
  stay small; every dimension is a multiple of 256, as k-quants need.
* `tiny-F16.gguf` (convert_hf_to_gguf.py --outtype f16), then `tiny-Q8_0.gguf`,
  `tiny-Q4_0.gguf`, `tiny-Q4_K_M.gguf`, `tiny-Q6_K.gguf` (llama-quantize from the F16 file),
  all in the merged expert layout (`blk.N.ffn_gate_exps`).
* `tiny-Q4_K-pure.gguf`, `tiny-Q5_K-pure.gguf`: `llama-quantize --pure` (every tensor Q4_K, or
  Q5_K), to compare bora's own Q4_K and Q5_K quantization with.
* `tiny-Q4_K_M-per-expert.gguf`: the Q4_K_M file rewritten by gguf-py's writer in the older
  per-expert layout (`blk.N.ffn_gate.E`), the same blocks byte for byte (current llama.cpp does
  not load that layout, so its reference is the merged file's).
* `vocab-v1.gguf`, `vocab-v3.gguf`: tokenizer-only files (`--vocab-only`) of Mixtral 8x7B's and
  8x22B's sentencepiece models from mistral-common.
* `reference.safetensors`: per file stem and prompt, `STEM.pK.ids` and `STEM.pK.logits`
  (llama.cpp's logits at every position, f32).
"""

import argparse
import os
import shutil
import subprocess
import sys

import numpy as np
import sentencepiece as spm
import torch
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file
from transformers import MixtralConfig, MixtralForCausalLM

import mistral_common

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "gguf")
SPM_DIR = os.path.join(os.path.dirname(mistral_common.__file__), "data")
QUANTS = ["Q8_0", "Q4_0", "Q4_K_M", "Q6_K"]
PROMPTS = [
    "The quick brown fox jumps over the lazy dog, and then the dog sleeps again.",
    "In 1492, Columbus sailed the ocean blue; 42 + 17 = 59.",
    "[INST] What is a mixture of experts? [/INST]",
]


def train_tokenizer(dest: str) -> None:
    corpus = os.path.join(dest, "corpus.txt")
    with open(corpus, "w") as f:
        for path in ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"]:
            with open(path) as src:
                f.write(src.read())
        f.write("\n".join(PROMPTS) + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=os.path.join(dest, "tokenizer"),
        model_type="bpe",
        vocab_size=1000,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        character_coverage=1.0,
    )
    os.remove(corpus)
    os.remove(os.path.join(dest, "tokenizer.vocab"))


def make_source(dest: str) -> list[list[int]]:
    os.makedirs(dest, exist_ok=True)
    train_tokenizer(dest)
    cfg = MixtralConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        rope_theta=1e6,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        architectures=["MixtralForCausalLM"],
    )
    torch.manual_seed(0)
    model = MixtralForCausalLM(cfg)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
    model = model.to(torch.float16)
    cfg.save_pretrained(dest)
    # Mistral's own layout (per-expert w1/w2/w3), which llama.cpp's converter merges.
    state = {}
    for name, t in model.state_dict().items():
        if ".mlp.experts.gate_up_proj" in name:
            layer = name.split(".")[2]
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                base = f"model.layers.{layer}.block_sparse_moe.experts.{e}"
                state[f"{base}.w1.weight"] = t[e, :inter].contiguous()
                state[f"{base}.w3.weight"] = t[e, inter:].contiguous()
        elif ".mlp.experts.down_proj" in name:
            layer = name.split(".")[2]
            for e in range(t.shape[0]):
                state[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w2.weight"] = t[
                    e
                ].contiguous()
        elif ".mlp.gate." in name:
            state[name.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = t.contiguous()
        else:
            state[name] = t.contiguous()
    save_file(state, os.path.join(dest, "model.safetensors"), metadata={"format": "pt"})
    sp = spm.SentencePieceProcessor(model_file=os.path.join(dest, "tokenizer.model"))
    return [[1] + sp.encode(p) for p in PROMPTS]


def per_expert_copy(gguf, src: str, dst: str) -> None:
    """The merged expert tensors of `src` split per expert, in gguf-py's writer."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), vtype)
    for t in reader.tensors:
        data = np.array(t.data)
        if "_exps." in t.name:
            stem = t.name.replace("_exps.weight", "")
            for e in range(data.shape[0]):
                writer.add_tensor(
                    f"{stem}.{e}.weight", data[e], raw_dtype=t.tensor_type
                )
        else:
            writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def logits_of(llama_cpp, path: str, prompts: list[list[int]]) -> dict[str, np.ndarray]:
    # An f32 KV cache and no flash attention (whose CPU path keeps K/V in f16): the logits
    # then differ from bora's only by the weights' own format and the order of sums.
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=512,
        n_batch=512,
        n_threads=2,
        logits_all=True,
        verbose=False,
        type_k=0,
        type_v=0,
        flash_attn=False,
    )
    out = {}
    for k, ids in enumerate(prompts):
        llm.reset()
        llm.eval(ids)
        out[f"p{k}.ids"] = np.array(ids, dtype=np.int64)
        out[f"p{k}.logits"] = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp-python", required=True)
    args = ap.parse_args()
    root = os.path.abspath(args.llama_cpp_python)
    tree = os.path.join(root, "vendor", "llama.cpp")
    bindir = os.path.join(tree, "build", "bin")
    sys.path.insert(0, os.path.join(tree, "gguf-py"))
    sys.path.insert(0, root)
    os.environ["LLAMA_CPP_LIB_PATH"] = bindir
    import gguf  # noqa: E402
    import llama_cpp  # noqa: E402

    shutil.rmtree(OUT, ignore_errors=True)
    src = os.path.join(OUT, "source")
    prompts = make_source(src)
    convert = [sys.executable, os.path.join(tree, "convert_hf_to_gguf.py")]
    f16 = os.path.join(OUT, "tiny-F16.gguf")
    subprocess.run(convert + [src, "--outtype", "f16", "--outfile", f16], check=True)
    files = {"tiny-F16": f16}
    for q in QUANTS:
        path = os.path.join(OUT, f"tiny-{q}.gguf")
        subprocess.run([os.path.join(bindir, "llama-quantize"), f16, path, q], check=True)
        files[f"tiny-{q}"] = path
    # Every tensor in Q4_K (token embedding and output included), the type bora's own
    # quantizer is compared with.
    pure = os.path.join(OUT, "tiny-Q4_K-pure.gguf")
    subprocess.run(
        [os.path.join(bindir, "llama-quantize"), "--pure", f16, pure, "Q4_K_M"], check=True
    )
    files["tiny-Q4_K-pure"] = pure
    # Every tensor in Q5_K: bora's own Q5_K quantizer is compared with it byte for byte (no
    # reference logits: the KL test covers bora's Q5_K models).
    subprocess.run(
        [os.path.join(bindir, "llama-quantize"), "--pure", f16,
         os.path.join(OUT, "tiny-Q5_K-pure.gguf"), "Q5_K_M"],
        check=True,
    )
    per_expert_copy(gguf, files["tiny-Q4_K_M"], os.path.join(OUT, "tiny-Q4_K_M-per-expert.gguf"))

    for name, model_file, vocab in [
        ("v1", "tokenizer.model.v1", 32000),
        ("v3", "mistral_instruct_tokenizer_240323.model.v3", 32768),
    ]:
        d = os.path.join(OUT, f"vocab-{name}-src")
        os.makedirs(d)
        shutil.copy(os.path.join(SPM_DIR, model_file), os.path.join(d, "tokenizer.model"))
        MixtralConfig(
            vocab_size=vocab,
            hidden_size=256,
            intermediate_size=256,
            architectures=["MixtralForCausalLM"],
        ).save_pretrained(d)
        out = os.path.join(OUT, f"vocab-{name}.gguf")
        subprocess.run(convert + [d, "--vocab-only", "--outfile", out], check=True)
        shutil.rmtree(d)

    ref = {}
    for stem, path in files.items():
        for k, v in logits_of(llama_cpp, path, prompts).items():
            ref[f"{stem}.{k}"] = v
    save_np(ref, os.path.join(OUT, "reference.safetensors"))
    for f in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, f)
        if os.path.isfile(p):
            print(f"{f}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()

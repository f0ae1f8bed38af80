"""Convert a sentencepiece BPE model (Mistral's tokenizer.model.v1/v3) to a Hugging Face
tokenizer.json that encodes exactly as sentencepiece does, and check it on a test corpus.

transformers' converter orders BPE merges by vocabulary id; sentencepiece applies them by piece
score. Mistral's models hold whitespace pieces (`▁▁`, `▁▁▁▁`, ...) with a score of -1e9 at low ids,
so the converted tokenizer merges runs of spaces too eagerly. Here merges are ranked by score.
"""

import json
import sys

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

CORPUS = [
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "a  b   c    d     e",
    "line one\nline two\n\nline four",
    "tabs\tand\t\ttabs",
    "digits 1234567890 and 3.14159",
    "naïve café, Zürich, São Paulo",
    "日本語のテキストと中文文本",
    "emoji 🙂🚀 and symbols ∑∫√",
    "Привет, как дела?",
    "[INST] not a control token [/INST]",
    "<s> literal tags </s>",
    "",
    " ",
    "\n",
    "x" * 50,
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x * 2\n",
    '{"key": [1, 2, {"nested": null}]}',
]


def build(model_path: str) -> Tokenizer:
    proto = pb.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    if proto.trainer_spec.model_type != 2:
        raise SystemExit(f"{model_path}: not a BPE sentencepiece model")
    ns = proto.normalizer_spec
    if ns.remove_extra_whitespaces or not ns.add_dummy_prefix or ns.precompiled_charsmap:
        raise SystemExit(f"{model_path}: normalizer {ns.name} is not the identity this script handles")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    scores = [p.score for p in proto.pieces]
    merges = []
    for i, p in enumerate(proto.pieces):
        if p.type != NORMAL or len(p.piece) < 2:
            continue
        for cut in range(1, len(p.piece)):
            left, right = p.piece[:cut], p.piece[cut:]
            if left in vocab and right in vocab:
                merges.append(((-scores[i], i, vocab[left]), (left, right)))
    merges.sort()
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[m for _, m in merges],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=proto.trainer_spec.byte_fallback,
        )
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = [
        AddedToken(p.piece, special=True, normalized=False)
        for p in proto.pieces
        if p.type in (UNKNOWN, CONTROL)
    ]
    tok.add_special_tokens(specials)
    return tok


def check(tok: Tokenizer, model_path: str) -> None:
    """Text is plain text: control pieces typed by a user are not control tokens (bora sets the
    same `encode_special_tokens` switch when it loads a tokenizer)."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    tok.encode_special_tokens = True
    for text in CORPUS:
        want = sp.encode(text)
        got = tok.encode(text, add_special_tokens=False).ids
        if want != got:
            raise SystemExit(f"tokenizer.json differs from sentencepiece on {text!r}: {got} != {want}")
        if tok.decode(got, skip_special_tokens=False) != sp.decode(want):
            raise SystemExit(f"decoding differs from sentencepiece on {text!r}")


def convert(model_path: str, out_path: str) -> None:
    tok = build(model_path)
    check(tok, model_path)
    tok.save(out_path, pretty=False)
    # Round-trip through the saved file, which is what bora reads.
    check(Tokenizer.from_file(out_path), model_path)


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2])
    print(json.dumps({"written": sys.argv[2], "checked_strings": len(CORPUS)}))

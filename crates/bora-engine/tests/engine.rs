//! Tokenizer, streaming detokenizer, generation and perplexity on the tiny-mixtral fixture.

use bora_engine::*;
use bora_tests::{fixture, load, prefill_all, Reference};
use bora_weights::{Backend, WeightDType};

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixture("tiny-mixtral").join("tokenizer.json")).unwrap()
}

#[test]
fn tokenizer_encodes_like_sentencepiece() {
    // The reference prompts were tokenized by sentencepiece itself (gen_fixtures.py).
    let r = Reference::load("tiny-mixtral");
    let tok = tokenizer();
    assert_eq!(tok.encode("The quick brown fox").unwrap(), r.ids(0)[1..]);
    assert_eq!(
        tok.encode("Mixtral routes  tokens, 42").unwrap(),
        r.ids(1)[1..]
    );
    // Control tokens typed as text stay text.
    let ids = tok.encode("</s> [INST]").unwrap();
    assert!(!ids.contains(&2), "{ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), "</s> [INST]");
}

#[test]
fn incremental_decoding_equals_whole_decoding() {
    let tok = tokenizer();
    for text in [
        "Hello  world\n\tfoo",
        "naïve café 日本語 🙂🚀 done",
        " lead and trail  ",
    ] {
        let ids = tok.encode(text).unwrap();
        let mut dec = IncrementalDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(p) = dec.push(&tok, id).unwrap() {
                assert!(
                    !p.contains('\u{FFFD}'),
                    "half a character released for {text:?}"
                );
                streamed.push_str(&p);
            }
        }
        if let Some(p) = dec.flush(&tok).unwrap() {
            streamed.push_str(&p);
        }
        assert_eq!(streamed, tok.decode(&ids).unwrap(), "{text:?}");
        // Continuing after a prompt keeps the first piece's leading space.
        let (prompt, rest) = ids.split_at(ids.len() / 2);
        let mut dec = IncrementalDecoder::after(prompt);
        let mut streamed = tok.decode(prompt).unwrap();
        for &id in rest {
            if let Some(p) = dec.push(&tok, id).unwrap() {
                streamed.push_str(&p);
            }
        }
        if let Some(p) = dec.flush(&tok).unwrap() {
            streamed.push_str(&p);
        }
        assert_eq!(streamed, tok.decode(&ids).unwrap(), "{text:?} continued");
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    // In float32, as transformers ran (kept in bf16 on a CPU with AVX512_BF16, activations are
    // rounded to bf16 and the random model's near-ties go either way; golden.rs bounds that).
    let model = load("tiny-mixtral", WeightDType::F32, Backend::Host);
    let r = Reference::load("tiny-mixtral");
    let want = r.greedy(0);
    let opts = GenerateOptions {
        max_tokens: want.len(),
        sampling: SamplingParams::default(),
        stop_tokens: vec![],
        context: 128,
    };
    let mut streamed = Vec::new();
    let g = generate(&model, &r.ids(0), &opts, |t| {
        streamed.push(t);
        Ok(())
    })
    .unwrap();
    assert_eq!(g.tokens, want);
    assert_eq!(streamed, want);
    assert_eq!(g.finish, FinishReason::Length);

    // The context bounds generation.
    let short = GenerateOptions {
        context: r.ids(0).len() + 3,
        ..opts.clone()
    };
    let g = generate(&model, &r.ids(0), &short, |_| Ok(())).unwrap();
    assert_eq!((g.tokens.len(), g.finish), (3, FinishReason::ModelLength));
    let e = generate(
        &model,
        &r.ids(1),
        &GenerateOptions { context: 4, ..opts },
        |_| Ok(()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("context holds 4"), "{e}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let model = load("tiny-mixtral", WeightDType::BF16, Backend::Host);
    let ids = Reference::load("tiny-mixtral").ids(0);
    let run = |seed| {
        let opts = GenerateOptions {
            max_tokens: 12,
            sampling: SamplingParams {
                temperature: 1.0,
                seed,
                ..Default::default()
            },
            stop_tokens: vec![],
            context: 128,
        };
        generate(&model, &ids, &opts, |_| Ok(())).unwrap().tokens
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

fn nll_from(logits: &[Vec<f32>], ids: &[u32]) -> f64 {
    (1..ids.len())
        .map(|i| {
            let row = &logits[i - 1];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            lse - row[ids[i] as usize] as f64
        })
        .sum()
}

#[test]
fn perplexity_matches_transformers_logits() {
    // In float32, as transformers ran (see above).
    let model = load("tiny-mixtral", WeightDType::F32, Backend::Host);
    let r = Reference::load("tiny-mixtral");
    for k in 0..r.prompts() {
        let ids = r.ids(k);
        let want = nll_from(&r.logits(k), &ids);
        let got = perplexity(&model, &ids, 128).unwrap();
        assert_eq!(got.tokens, ids.len() - 1);
        assert!(
            (got.nll - want).abs() < 1e-3,
            "prompt {k}: nll {} vs transformers {want}",
            got.nll
        );
    }
}

#[test]
fn long_texts_are_scored_in_strided_windows() {
    let model = load("tiny-mixtral", WeightDType::BF16, Backend::Host);
    let tok = tokenizer();
    let mut ids = vec![1];
    ids.extend(
        tok.encode("one two three four five six seven eight nine ten eleven twelve thirteen")
            .unwrap(),
    );
    ids.extend(
        tok.encode(" fourteen fifteen sixteen seventeen eighteen nineteen twenty")
            .unwrap(),
    );
    let ctx = 8;
    assert!(ids.len() > 2 * ctx);
    // By hand: windows start every ctx/2 tokens; each token is scored in the first window that
    // covers it with at least ctx/2 tokens before it (or from the text's start).
    let mut want = 0.0;
    let mut scored = 1;
    let mut begin = 0;
    while scored < ids.len() {
        let end = (begin + ctx).min(ids.len());
        let logits = prefill_all(&model, &ids[begin..end]);
        for t in scored..end {
            want += nll_from(&logits[t - begin - 1..t - begin], &ids[t - 1..t + 1]);
        }
        scored = end;
        begin += ctx / 2;
    }
    let got = perplexity(&model, &ids, ctx).unwrap();
    assert_eq!(got.tokens, ids.len() - 1);
    assert!((got.nll - want).abs() < 1e-6, "{} vs {want}", got.nll);
    // A window as long as the text gives a different (longer-context) score.
    let full = perplexity(&model, &ids, 128).unwrap();
    assert!((full.nll - got.nll).abs() > 1e-3);
}

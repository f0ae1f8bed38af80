//! `bora bench --prediction`: predicted outputs against plain decoding at batch 1. A prompt's
//! answer is generated once; then, interleaved (plain, right, wrong, wrong, right, plain), the
//! same request decodes with no prediction, with the answer itself as the prediction (an edit
//! whose result is known) and with another prompt's answer (a wrong prediction). Best run of
//! each counts.

use std::time::Instant;

use anyhow::{bail, ensure, Result};
use bora_engine::{Completion, Engine, Event, Usage};
use serde_json::{json, Value};

/// One decode of the bench's request.
struct Decode {
    text: String,
    usage: Usage,
    tokens_per_s: f64,
}

fn decode(engine: &Engine, prompt: &[u32], request: &Completion) -> Result<Decode> {
    let mut s = engine.submit(prompt.to_vec(), request)?;
    let (mut text, mut first, mut usage) = (String::new(), None, None);
    while let Some(e) = s.next_blocking() {
        match e {
            Event::Delta { text: t, .. } => {
                first.get_or_insert_with(Instant::now);
                text.push_str(&t);
            }
            Event::Done { usage: u } => usage = Some(u),
            Event::Error { message } => bail!("generation failed: {message}"),
            _ => {}
        }
    }
    let end = Instant::now();
    let (Some(first), Some(usage)) = (first, usage) else {
        bail!("the bench request produced nothing");
    };
    let secs = end.duration_since(first).as_secs_f64().max(1e-9);
    Ok(Decode {
        text,
        tokens_per_s: usage.completion_tokens.saturating_sub(1) as f64 / secs,
        usage,
    })
}

/// The best decode speed of each case, what the predictions' drafts came to, and whether the
/// answers stayed the same.
pub struct PredictionBench {
    plain: f64,
    right: (f64, Usage),
    wrong: (f64, Usage),
    same_output: bool,
    /// The engine's measured decode-step seconds by tokens computed.
    step_seconds: Vec<(usize, f64)>,
}

impl PredictionBench {
    /// Runs it: `prompt` is answered, `other`'s answer is the wrong prediction.
    pub fn run(
        engine: &Engine,
        prompt: &[u32],
        other: &[u32],
        request: &Completion,
    ) -> Result<Self> {
        // Generated twice: the first run fills the prefix cache, and a prompt whose blocks come
        // from the cache runs its last token alone, with numbers that may differ in the last
        // bits from the same token prefilled with the others (see `--deterministic`).
        decode(engine, prompt, request)?;
        let answer = decode(engine, prompt, request)?.text;
        let wrong_text = decode(engine, other, request)?.text;
        ensure!(!answer.is_empty(), "the bench's answer is empty");
        let with = |p: &str| Completion {
            prediction: Some(p.to_string()),
            ..request.clone()
        };
        let (right_req, wrong_req) = (with(&answer), with(&wrong_text));
        let mut best = Self {
            plain: 0.0,
            right: (0.0, Usage::default()),
            wrong: (0.0, Usage::default()),
            same_output: true,
            step_seconds: Vec::new(),
        };
        for case in ["plain", "right", "wrong", "wrong", "right", "plain"] {
            let req = match case {
                "plain" => request,
                "right" => &right_req,
                _ => &wrong_req,
            };
            let d = decode(engine, prompt, req)?;
            best.same_output &= d.text == answer;
            let slot = match case {
                "plain" => {
                    best.plain = best.plain.max(d.tokens_per_s);
                    continue;
                }
                "right" => &mut best.right,
                _ => &mut best.wrong,
            };
            if d.tokens_per_s > slot.0 {
                *slot = (d.tokens_per_s, d.usage);
            }
        }
        best.step_seconds = engine.stats().step_seconds;
        Ok(best)
    }

    pub fn json(&self) -> Value {
        let case = |(tps, u): &(f64, Usage)| {
            json!({
                "decode_tokens_per_s": tps,
                "vs_plain": tps / self.plain,
                "accepted_prediction_tokens": u.accepted_prediction_tokens,
                "rejected_prediction_tokens": u.rejected_prediction_tokens,
            })
        };
        json!({
            "plain_decode_tokens_per_s": self.plain,
            "right": case(&self.right),
            "wrong": case(&self.wrong),
            "same_output": self.same_output,
            "step_ms_by_tokens": self.step_seconds.iter()
                .map(|&(n, s)| json!({"tokens": n, "ms": s * 1e3}))
                .collect::<Vec<Value>>(),
        })
    }

    pub fn print(&self) {
        println!("predicted outputs at batch 1 (best of 2 interleaved runs each)");
        println!("  plain  decode tok/s {:8.1}", self.plain);
        for (name, (tps, u)) in [("right", &self.right), ("wrong", &self.wrong)] {
            println!(
                "  {name}  decode tok/s {tps:8.1}  {:5.2}x plain  drafts kept {} rejected {}",
                tps / self.plain,
                u.accepted_prediction_tokens,
                u.rejected_prediction_tokens
            );
        }
        println!(
            "  outputs identical to plain decoding: {}",
            self.same_output
        );
        let costs: Vec<String> = self
            .step_seconds
            .iter()
            .map(|&(n, s)| format!("{n}: {:.1}", s * 1e3))
            .collect();
        println!("  decode step ms by tokens computed: {}", costs.join(", "));
    }
}

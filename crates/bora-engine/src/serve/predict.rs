//! Predicted outputs: draft tokens taken from a text the answer is expected to repeat (an edit
//! of a document), kept aligned with what is generated, and the number of drafts a step
//! verifies chosen from what steps measurably cost.
//!
//! Verification is exact: each verified position's token is sampled as plain decoding would
//! sample it (same processors, same sampler state), and a draft is kept only while it equals
//! that token. A draft drawn from a fixed text is a one-point proposal, for which this is
//! standard speculative acceptance: greedy output is unchanged and sampling keeps its
//! distribution.

use std::time::Duration;

use crate::tokenizer::Tokenizer;

/// Bytes of prediction used per token of context.
pub const PREDICTION_BYTES_PER_TOKEN: usize = 16;

/// Drafts verified in one step at most.
pub const MAX_DRAFT: usize = 32;

/// The output's last tokens that must be found earlier in it to draft what followed them
/// (prompt-lookup decoding's n-gram).
const REJOIN_NGRAM: usize = 3;

/// The acceptance rate a prediction starts with (the caller expects the answer to follow it).
const PRIOR_RATE: f64 = 0.8;

/// Weight of the newest draft position in the acceptance rate.
const RATE_STEP: f64 = 0.2;

/// The acceptance rate at and above which a step verifies at least one draft, whatever the
/// step costs measured (see `Prediction::choose`).
const FOLLOW_RATE: f64 = 0.5;

/// Step sizes whose cost is tracked: 1..=COST_SLOTS tokens.
const COST_SLOTS: usize = 64;

/// Weight of the newest measurement in a step size's cost.
const COST_STEP: f64 = 0.25;

/// What forward passes cost by the number of tokens they compute (moving averages of measured
/// wall time), for choosing how many drafts to verify.
#[derive(Debug, Clone)]
pub(crate) struct StepCosts {
    secs: Vec<Option<f64>>,
}

impl StepCosts {
    pub fn new() -> Self {
        Self {
            secs: vec![None; COST_SLOTS + 1],
        }
    }

    /// A forward pass of `tokens` tokens took `took`.
    pub fn record(&mut self, tokens: usize, took: Duration) {
        let Some(slot) = self.secs.get_mut(tokens) else {
            return;
        };
        let t = took.as_secs_f64();
        *slot = Some(match *slot {
            Some(old) => old + COST_STEP * (t - old),
            None => t,
        });
    }

    /// The sizes measured and their costs.
    pub fn measured(&self) -> Vec<(usize, f64)> {
        self.secs
            .iter()
            .enumerate()
            .filter_map(|(n, c)| c.map(|c| (n, c)))
            .collect()
    }

    /// The cost of a step of `tokens` tokens: measured, or interpolated between measured sizes;
    /// beyond the largest one measured, that one's (so an untried size is tried once, and then
    /// its measured cost decides).
    pub fn cost(&self, tokens: usize) -> Option<f64> {
        let tokens = tokens.min(COST_SLOTS);
        if let Some(c) = self.secs[tokens] {
            return Some(c);
        }
        let below = (1..tokens).rev().find_map(|n| self.secs[n].map(|c| (n, c)));
        let above = (tokens + 1..=COST_SLOTS).find_map(|n| self.secs[n].map(|c| (n, c)));
        match (below, above) {
            (Some((a, ca)), Some((b, cb))) => {
                Some(ca + (cb - ca) * (tokens - a) as f64 / (b - a) as f64)
            }
            (Some((_, c)), None) | (None, Some((_, c))) => Some(c),
            (None, None) => None,
        }
    }
}

/// One choice's prediction: its text, where the output is in it, and how often drafts were
/// right.
///
/// The output is followed in the prediction's text, not its tokens: a model may split a word
/// into other tokens than the tokenizer would (`▁numero` `creen` for `▁numer` `oc` `reen`),
/// and the text stays aligned where the tokens do not. Drafts are the tokenizer's tokens of
/// the text from the start of the current word, from the point the output reached.
#[derive(Debug, Clone)]
pub(crate) struct Prediction {
    /// The predicted text's bytes, after a space (sentencepiece's dummy prefix: a first token
    /// of `▁Hello` writes " Hello").
    text: Vec<u8>,
    /// Where in `text` the output is (`None`: it departed from the prediction and has not
    /// rejoined it).
    cursor: Option<usize>,
    /// Where the cursor last was.
    place: usize,
    /// The output's bytes so far.
    out: Vec<u8>,
    /// The output's tokens so far.
    out_ids: Vec<u32>,
    /// Moving average of whether a verified draft was accepted.
    rate: f64,
    /// Positions ahead whose tokens are being verified as drafts (their outcome reaches the
    /// rate through `record`); the others are trials of the one-token draft in `advance`.
    verifying: usize,
    /// Drafts accepted and rejected so far.
    pub accepted: usize,
    pub rejected: usize,
}

/// Bytes of output that must be found in the prediction to rejoin it.
const REJOIN_BYTES: usize = 12;

/// Bytes of the prediction tokenized for a draft, per draft token asked for.
const BYTES_PER_DRAFT: usize = 8;

impl Prediction {
    /// The prediction `text`, of which at most `max_bytes` are used (an answer of the
    /// context's tokens is at most some bytes a token; a longer prediction would only make
    /// each look-up longer).
    pub fn new(text: &str, max_bytes: usize) -> Self {
        let mut end = text.len().min(max_bytes);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = Vec::with_capacity(end + 1);
        bytes.push(b' ');
        bytes.extend_from_slice(&text.as_bytes()[..end]);
        Self {
            text: bytes,
            cursor: Some(0),
            place: 0,
            out: Vec::new(),
            out_ids: Vec::new(),
            rate: PRIOR_RATE,
            verifying: 0,
            accepted: 0,
            rejected: 0,
        }
    }

    /// Follows the output after it grew by token `t`: the cursor moves over the token's bytes
    /// where the prediction has them; otherwise the output's last bytes are looked up in the
    /// prediction, nearest after the old place first.
    ///
    /// A token no draft was verified for still tells whether a draft would have been right:
    /// the rate learns from it, so a prediction whose drafts stopped paying off is tried again
    /// once the output follows it (a rate learnt only from verified drafts would stay where
    /// the last rejections left it).
    pub fn advance(&mut self, t: u32, tok: &Tokenizer) {
        if self.verifying > 0 {
            self.verifying -= 1;
        } else if let Some(&d) = self.draft(1, tok).first() {
            self.learn(d == t);
        }
        let bytes = tok.token_bytes(t);
        self.out.extend_from_slice(&bytes);
        self.out_ids.push(t);
        if let Some(c) = self.cursor {
            if self.text[c..].starts_with(&bytes) {
                self.cursor = Some(c + bytes.len());
                self.place = c + bytes.len();
                return;
            }
        }
        let n = REJOIN_BYTES.min(self.out.len());
        let tail = &self.out[self.out.len() - n..];
        let ends = self
            .text
            .windows(n)
            .enumerate()
            .filter(|(_, w)| *w == tail)
            .map(|(i, _)| i + n);
        let (after, before): (Vec<usize>, Vec<usize>) = ends.partition(|&e| e >= self.place);
        let lost = self.cursor.is_none();
        self.cursor = after.first().or(before.last()).copied();
        if let Some(c) = self.cursor {
            self.place = c;
            // Rejoined: the drafts that failed before were from where the output departed.
            if lost {
                self.rate = self.rate.max(PRIOR_RATE);
            }
        }
    }

    /// The next `k` tokens at most: the prediction's from the cursor; where the output is not
    /// in the prediction, what followed the last place the output's own last tokens were
    /// written before (a loop the output is in: prompt-lookup decoding over the output).
    pub fn draft(&self, k: usize, tok: &Tokenizer) -> Vec<u32> {
        if k == 0 {
            return Vec::new();
        }
        let Some(c) = self.cursor else {
            return self.looped(k);
        };
        // Where the output repeats itself and the prediction says the same, its own tokens
        // first (a model may split the text otherwise than the tokenizer, and does so again),
        // then the tokenizer's.
        let mut draft = Vec::with_capacity(k);
        let mut at = c;
        for t in self.looped(k) {
            let bytes = tok.token_bytes(t);
            if !self.text[at..].starts_with(&bytes) {
                break;
            }
            draft.push(t);
            at += bytes.len();
        }
        let rest = k - draft.len();
        draft.extend(self.predicted(at, rest, tok));
        draft
    }

    /// The tokenizer's tokens of the prediction from byte `at`: the text from the start of
    /// the word holding `at` is tokenized, and the tokens after `at` are the draft where a
    /// token ends there (where the model split the word otherwise, none until the next word).
    fn predicted(&self, at: usize, k: usize, tok: &Tokenizer) -> Vec<u32> {
        let text = &self.text;
        if at >= text.len() {
            return Vec::new();
        }
        // The word's leading space stands for the tokenizer's dummy prefix.
        let word = text[..=at].iter().rposition(|&b| b == b' ').unwrap_or(0);
        let mut end = (at + k * BYTES_PER_DRAFT).min(text.len());
        if end < text.len() {
            // Whole words only: a word cut short would be tokenized otherwise.
            match text[at..end].iter().rposition(|&b| b == b' ') {
                Some(i) if at + i > word => end = at + i,
                _ => return Vec::new(),
            }
        }
        let Ok(piece) = std::str::from_utf8(&text[word + 1..end]) else {
            return Vec::new();
        };
        let Ok(ids) = tok.encode(piece) else {
            return Vec::new();
        };
        let mut pos = word;
        let mut draft = Vec::with_capacity(k);
        for id in ids {
            if pos >= at {
                if draft.len() == k {
                    break;
                }
                draft.push(id);
            }
            pos += tok.token_bytes(id).len();
            if pos > at && draft.is_empty() && pos - tok.token_bytes(id).len() < at {
                // A token spans the cursor: the model split the word otherwise.
                return Vec::new();
            }
        }
        draft
    }

    /// What followed the output's last tokens where it wrote them before, copied on through
    /// its own end as a loop repeats.
    fn looped(&self, k: usize) -> Vec<u32> {
        let out = &self.out_ids;
        let n = REJOIN_NGRAM;
        if out.len() <= n {
            return Vec::new();
        }
        let tail = &out[out.len() - n..];
        let Some(start) = (0..out.len() - n)
            .rev()
            .find(|&j| &out[j..j + n] == tail)
            .map(|j| j + n)
        else {
            return Vec::new();
        };
        let period = out.len() - start;
        (0..k).map(|i| out[start + i % period]).collect()
    }

    /// The next `proposed` tokens are verified against drafts (`record` says how it went).
    pub fn verifying(&mut self, proposed: usize) {
        self.verifying = proposed;
    }

    /// A verification of `proposed` drafts kept the first `kept`.
    pub fn record(&mut self, proposed: usize, kept: usize) {
        self.verifying = 0;
        self.accepted += kept;
        self.rejected += proposed - kept;
        // Positions verified: the kept ones and the first rejected one.
        for i in 0..(kept + 1).min(proposed) {
            self.learn(i < kept);
        }
    }

    /// One position's draft was right or wrong.
    fn learn(&mut self, hit: bool) {
        let hit = if hit { 1.0 } else { 0.0 };
        self.rate += RATE_STEP * (hit - self.rate);
    }

    /// How many drafts to verify in a step that computes `base` other tokens: the number that
    /// maximizes the tokens the step yields per second, from the acceptance rate and the
    /// measured step costs (`max`: drafts there is room for). Zero where no draft pays off.
    pub fn choose(&self, base: usize, costs: &StepCosts, max: usize, tok: &Tokenizer) -> usize {
        let available = self.draft(max, tok).len();
        if available == 0 {
            return 0;
        }
        let a = self.rate;
        // Tokens a step yields: the others', one of this choice's, and each draft accepted
        // with all those before it.
        let mut best = (0, None::<f64>);
        let mut expected = base as f64 + 1.0;
        let mut p = 1.0;
        for k in 0..=available {
            if k > 0 {
                p *= a;
                expected += p;
            }
            let Some(c) = costs.cost(base + 1 + k) else {
                // Nothing measured yet: the first step tries them all.
                return available;
            };
            let rate = expected / c;
            if best.1.is_none_or(|b| rate > b) {
                best = (k, Some(rate));
            }
        }
        // While the output follows the prediction, at least one draft: measured costs are
        // moving averages that one noisy step (a loaded machine, a batch beside) can leave
        // saying drafts never pay, and a size that is never chosen is never measured again.
        // One draft keeps them measured, and costs a decode step next to nothing.
        if a >= FOLLOW_RATE {
            best.0.max(1)
        } else {
            best.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/tokenizers/tokenizer.model.v1"
        );
        Tokenizer::from_file(std::path::Path::new(path)).unwrap()
    }

    fn feed(p: &mut Prediction, tok: &Tokenizer, text: &str) {
        for t in tok.encode(text).unwrap() {
            p.advance(t, tok);
        }
    }

    fn text(tok: &Tokenizer, ids: &[u32]) -> String {
        tok.decode(ids).unwrap()
    }

    #[test]
    fn the_cursor_follows_the_text_and_rejoins_it() {
        let tok = tok();
        let mut p = Prediction::new("The cat sat on the mat, and the dog lay by the door.", 1000);
        assert_eq!(text(&tok, &p.draft(3, &tok)), "The cat sat");
        feed(&mut p, &tok, "The cat");
        assert_eq!(text(&tok, &p.draft(3, &tok)), "sat on the");
        // The output departs, then writes what the prediction has further on: it rejoins.
        feed(&mut p, &tok, "a hat");
        assert_eq!(p.draft(3, &tok), Vec::<u32>::new());
        // " and the dog" (12 bytes) is in the prediction.
        feed(&mut p, &tok, "x and the dog");
        assert_eq!(text(&tok, &p.draft(2, &tok)), "lay by");
    }

    #[test]
    fn a_word_split_otherwise_stays_aligned() {
        let tok = tok();
        let mut p = Prediction::new("numerocreen terms apply", 1000);
        // The model writes the first word in single letters; the cursor follows the bytes.
        let word: Vec<u32> = "numerocreen"
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let s = if i == 0 {
                    format!("\u{2581}{c}")
                } else {
                    c.to_string()
                };
                tok_id(&tok, &s)
            })
            .collect();
        for t in word {
            p.advance(t, &tok);
        }
        assert_eq!(text(&tok, &p.draft(2, &tok)), "terms apply");
        // Mid-word, where a token of the tokenizer's split ends: the rest of the word.
        let mut q = Prediction::new("foo(bar) baz", 1000);
        q.advance(tok_id(&tok, "\u{2581}foo"), &tok);
        assert_eq!(text(&tok, &q.draft(3, &tok)), "(bar)");
    }

    fn tok_id(tok: &Tokenizer, piece: &str) -> u32 {
        (0..tok.vocab_size() as u32)
            .find(|&i| tok.piece(i).as_deref() == Some(piece))
            .unwrap_or_else(|| panic!("{piece} is not a token"))
    }

    #[test]
    fn an_output_in_a_loop_drafts_the_loop() {
        let tok = tok();
        let mut p = Prediction::new("zzz", 1000);
        for t in [5000, 6000, 8000, 9000, 8000, 9000, 8000, 9000] {
            p.advance(t, &tok);
        }
        assert_eq!(p.draft(5, &tok), [8000, 9000, 8000, 9000, 8000]);
    }

    #[test]
    fn drafts_are_chosen_from_costs_and_the_acceptance_rate() {
        let tok = tok();
        let mut costs = StepCosts::new();
        let p = Prediction::new(&"word ".repeat(60), 1000);
        // Nothing measured: all it may.
        assert_eq!(p.choose(0, &costs, 8, &tok), 8);
        // Cheap extra tokens: many drafts pay off.
        for n in 1..=40 {
            costs.record(n, Duration::from_secs_f64(1.0 + 0.05 * n as f64));
        }
        assert!(p.choose(0, &costs, 32, &tok) >= 8);
        // Costly extra tokens (or one noisy measurement saying so): no more than the one
        // draft that keeps the sizes measured while the output follows the prediction (issue
        // 36: measured costs carried over from earlier requests turned a right prediction off).
        let mut linear = StepCosts::new();
        for n in 1..=40 {
            linear.record(n, Duration::from_secs_f64(n as f64));
        }
        assert_eq!(p.choose(0, &linear, 32, &tok), 1);
        // Drafts that were always wrong: none, however cheap.
        let mut wrong = p.clone();
        for _ in 0..20 {
            wrong.record(4, 0);
        }
        assert_eq!(wrong.choose(0, &costs, 32, &tok), 0);
        assert_eq!(wrong.choose(0, &linear, 32, &tok), 0);
        assert_eq!((wrong.accepted, wrong.rejected), (0, 80));
        // No draft is verified now, but the output follows the prediction: the rate learns
        // that from each token, and drafts are tried again.
        for _ in 0..10 {
            let next = wrong.draft(1, &tok)[0];
            wrong.advance(next, &tok);
        }
        assert!(wrong.choose(0, &costs, 32, &tok) >= 8);
        // Tokens that were verified as drafts teach the rate once, through `record`.
        let mut once = wrong.clone();
        let before = once.rate;
        let d = once.draft(2, &tok);
        once.verifying(2);
        once.advance(d[0], &tok);
        once.advance(d[1], &tok);
        assert_eq!(once.rate, before);
        once.record(2, 2);
        assert!(once.rate > before);
        // An output that departs from it lowers it again.
        for t in tok.encode("quite unlike the text").unwrap() {
            wrong.advance(t, &tok);
        }
        assert!(wrong.rate < PRIOR_RATE);
    }

    #[test]
    fn any_output_against_any_text_never_panics() {
        use rand::{RngExt, SeedableRng};
        let tok = tok();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let vocab = tok.vocab_size() as u32;
        for case in 0..50 {
            let text: String = (0..rng.random_range(0..200))
                .map(|_| ['a', ' ', 'é', '日', '\n', '🙂', 'x'][rng.random_range(0..7)])
                .collect();
            let mut p = Prediction::new(&text, 64 + case * 8);
            for _ in 0..60 {
                // Sometimes the text's own next tokens, sometimes anything (byte pieces too).
                let t = match p.draft(4, &tok).first() {
                    Some(&d) if rng.random_range(0..3) > 0 => d,
                    _ => rng.random_range(0..vocab),
                };
                p.advance(t, &tok);
                let d = p.draft(rng.random_range(0..40), &tok);
                assert!(d.len() <= 40);
            }
        }
    }

    #[test]
    fn costs_interpolate() {
        let mut c = StepCosts::new();
        assert_eq!(c.cost(3), None);
        c.record(1, Duration::from_secs(1));
        c.record(5, Duration::from_secs(3));
        assert_eq!(c.cost(3), Some(2.0));
        assert_eq!(c.cost(9), Some(3.0));
        assert_eq!(c.cost(1), Some(1.0));
    }
}

//! Incremental detokenization for streaming: pieces released as soon as they are whole
//! characters, whose concatenation is the decoding of the whole stream. Each token costs the
//! decoding of the few tokens since the last release (O(1) amortized), not of the whole output.

use super::Tokenizer;
use crate::Result;

/// Prompt tokens kept as decoding context by [`IncrementalDecoder::after`].
const CONTEXT_TOKENS: usize = 4;

/// Turns a stream of token ids into text pieces whose concatenation is the decoding of the
/// whole stream: a piece is released once its bytes form whole characters, and the leading
/// space of sentencepiece's `▁` survives (each piece is decoded after a few tokens of context).
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the context window decoded with each new token (ids before the window are
    /// dropped, so this is 0 except between a drop and the next release).
    prefix: usize,
    /// End of the part of `ids` whose text was released.
    read: usize,
}

impl Default for IncrementalDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl IncrementalDecoder {
    /// A decoder at the start of a text.
    pub fn new() -> Self {
        Self {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// A decoder that continues after `context` (the prompt's last tokens), so that the first
    /// generated piece keeps the space it starts with.
    pub fn after(context: &[u32]) -> Self {
        let ctx = &context[context.len().saturating_sub(CONTEXT_TOKENS)..];
        Self {
            ids: ctx.to_vec(),
            prefix: 0,
            read: ctx.len(),
        }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let after = tok.decode(&self.ids[self.prefix..])?;
        if after.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        match after.get(before.len()..) {
            Some(piece) if !piece.is_empty() && after.starts_with(&before) => {
                let piece = piece.to_string();
                // Keep only the new context window: memory and work stay O(1) per token.
                self.ids.drain(..self.read);
                self.prefix = 0;
                self.read = self.ids.len();
                Ok(Some(piece))
            }
            _ => Ok(None),
        }
    }

    /// The text still held back (an incomplete character at the end of the stream).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<Option<String>> {
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let after = tok.decode(&self.ids[self.prefix..])?;
        self.ids.clear();
        self.prefix = 0;
        self.read = 0;
        Ok(after
            .get(before.len()..)
            .filter(|p| !p.is_empty())
            .map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_stays_small_over_a_long_stream() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/tokenizers/tokenizer.model.v1");
        let tok = Tokenizer::from_file(&path).unwrap();
        let text = "Streaming text, with accents (é, ü) and emoji 🙂, goes on and on. ".repeat(200);
        let ids = tok.encode(&text).unwrap();
        let mut dec = IncrementalDecoder::new();
        let mut out = String::new();
        let mut widest = 0;
        for &id in &ids {
            out.push_str(&dec.push(&tok, id).unwrap().unwrap_or_default());
            widest = widest.max(dec.ids.len());
        }
        out.push_str(&dec.flush(&tok).unwrap().unwrap_or_default());
        assert_eq!(out, tok.decode(&ids).unwrap());
        assert!(
            ids.len() > 4000 && widest <= 8,
            "{} tokens streamed with a window of up to {widest}",
            ids.len()
        );
    }
}

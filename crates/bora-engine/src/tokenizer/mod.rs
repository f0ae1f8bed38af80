//! Tokenizers: a Hugging Face `tokenizer.json`, or a sentencepiece model file rebuilt with the
//! `tokenizers` crate (`spm`). Input is always plain text: a user who types `[INST]` or `</s>`
//! gets those characters, never the control tokens, which only the chat renderer emits.

mod spm;
mod stream;

use std::path::Path;

pub use spm::{PieceKind, SpmPiece, SpmVocab};
pub use stream::IncrementalDecoder;

use crate::{EngineError, Result};

/// Ids of the special tokens the chat formats use; `None` where the vocabulary lacks one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<s>`.
    pub bos: Option<u32>,
    /// `</s>`.
    pub eos: Option<u32>,
    /// `[INST]` (v3).
    pub inst: Option<u32>,
    /// `[/INST]` (v3).
    pub inst_end: Option<u32>,
    /// `[TOOL_CALLS]` (v3).
    pub tool_calls: Option<u32>,
    /// `[AVAILABLE_TOOLS]` (v3).
    pub available_tools: Option<u32>,
    /// `[/AVAILABLE_TOOLS]` (v3).
    pub available_tools_end: Option<u32>,
    /// `[TOOL_RESULTS]` (v3).
    pub tool_results: Option<u32>,
    /// `[/TOOL_RESULTS]` (v3).
    pub tool_results_end: Option<u32>,
}

/// Words (pieces of text between pre-tokenizer splits) whose tokens a tokenizer remembers.
pub const TOKENIZER_CACHE_WORDS: usize = 256;

/// Bytes of text [`Tokenizer::encode_long`] encodes at once (about 15,000 tokens of English).
pub const LONG_TEXT_PIECE: usize = 1 << 16;

/// The first byte at or after `from` of a space with another character, not a space, on either
/// side; `None` if there is none.
fn cut_at_space(text: &str, from: usize) -> Option<usize> {
    let b = text.as_bytes();
    (from.max(1)..b.len().saturating_sub(1))
        .find(|&i| b[i] == b' ' && b[i - 1] != b' ' && b[i + 1] != b' ')
}

/// A tokenizer that encodes all input as plain text.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    specials: SpecialTokens,
    /// [`Tokenizer::cuts_at_spaces`], found on first use (it reads the whole vocabulary).
    cuts_at_spaces: std::sync::OnceLock<bool>,
}

impl Tokenizer {
    /// Loads `tokenizer.json`, a sentencepiece model (`tokenizer.model`, `tokenizer.model.v1`,
    /// `tokenizer.model.v3`, ...) or a GGUF file's vocabulary, told apart by their contents.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |reason: String| EngineError::TokenizerLoad {
            path: path.to_path_buf(),
            reason,
        };
        // A GGUF file is mapped, not read whole: it may hold the model's weights too.
        let mut magic = [0u8; 4];
        let is_gguf = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && &magic == b"GGUF";
        if is_gguf {
            return Self::from_gguf_file(path);
        }
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        // A `.json` file, or one that starts like JSON, is read as a tokenizer.json, and its
        // errors say so; anything else is a sentencepiece model.
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            || bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if json {
            let inner = tokenizers::Tokenizer::from_bytes(&bytes)
                .map_err(|e| bad(format!("not a valid tokenizer.json: {e}")))?;
            Ok(Self::new(inner))
        } else {
            Self::from_spm(&SpmVocab::from_model_file(path)?)
        }
    }

    /// The tokenizer of a model directory: `tokenizer.json`, else Mistral's sentencepiece files
    /// (`tokenizer.model.v3`, `tokenizer.model.v1`, `tokenizer.model`).
    pub fn find_in_dir(dir: &Path) -> Result<std::path::PathBuf> {
        const NAMES: [&str; 4] = [
            "tokenizer.json",
            "tokenizer.model.v3",
            "tokenizer.model.v1",
            "tokenizer.model",
        ];
        NAMES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| EngineError::TokenizerLoad {
                path: dir.to_path_buf(),
                reason: format!("no tokenizer: looked for {}", NAMES.join(", ")),
            })
    }

    /// Builds the tokenizer of a sentencepiece vocabulary.
    pub fn from_spm(vocab: &SpmVocab) -> Result<Self> {
        Ok(Self::new(vocab.build()?))
    }

    /// Builds the tokenizer a GGUF file's `tokenizer.ggml.*` metadata describes.
    pub fn from_gguf(store: &bora_weights::GgufStore) -> Result<Self> {
        Self::from_spm(&SpmVocab::from_gguf(store)?)
    }

    /// Builds the tokenizer of a GGUF file's metadata.
    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        Self::from_spm(&SpmVocab::from_gguf_file(path)?)
    }

    fn new(mut inner: tokenizers::Tokenizer) -> Self {
        inner.set_encode_special_tokens(true);
        // The model's cache of words it has split: sentencepiece tokenizers take a whole text
        // for one word, so every new prompt was an entry, up to 10,000 of some KB each (tens
        // of MB that the soak test saw grow request by request). A few hundred keep repeated
        // texts (system prompts, tool lists) fast.
        let mut model = inner.get_model().clone();
        model.resize_cache(TOKENIZER_CACHE_WORDS);
        inner.with_model(model);
        let id = |s: &str| inner.token_to_id(s);
        let specials = SpecialTokens {
            bos: id("<s>"),
            eos: id("</s>"),
            inst: id("[INST]"),
            inst_end: id("[/INST]"),
            tool_calls: id("[TOOL_CALLS]"),
            available_tools: id("[AVAILABLE_TOOLS]"),
            available_tools_end: id("[/AVAILABLE_TOOLS]"),
            tool_results: id("[TOOL_RESULTS]"),
            tool_results_end: id("[/TOOL_RESULTS]"),
        };
        Self {
            inner,
            specials,
            cuts_at_spaces: std::sync::OnceLock::new(),
        }
    }

    /// Ids of the special tokens the chat formats use.
    pub fn specials(&self) -> &SpecialTokens {
        &self.specials
    }

    /// Token ids of `text`, as sentencepiece's `encode` gives them: no BOS or EOS, the dummy
    /// prefix space, control-token spellings as plain text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a long `text` (a book for `perplexity` or `routes`), equal to
    /// [`Tokenizer::encode`]'s, in memory proportional to the ids rather than to the tokenizer's
    /// working state over the whole text (hundreds of MB for a million tokens): the text is
    /// encoded in pieces of about 64 KiB ([`Tokenizer::encode_in_pieces`]).
    pub fn encode_long(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_in_pieces(text, LONG_TEXT_PIECE)
    }

    /// [`Tokenizer::encode`] in pieces of at least `piece_bytes`, each cut at a single space
    /// between two other characters; the space is left out and the next piece's dummy prefix
    /// stands for it. Equal to encoding the whole text wherever no token can span such a space:
    /// where the tokenizer writes a space as the `▁` that begins a word (sentencepiece) and no
    /// piece of its vocabulary holds a `▁` after another character. Any other tokenizer (or a
    /// text with no such space) is encoded whole.
    pub fn encode_in_pieces(&self, text: &str, piece_bytes: usize) -> Result<Vec<u32>> {
        let piece_bytes = piece_bytes.max(1);
        if text.len() <= piece_bytes || !self.cuts_at_spaces()? {
            return self.encode(text);
        }
        let mut ids = Vec::new();
        let mut rest = text;
        while let Some(at) = cut_at_space(rest, piece_bytes) {
            ids.extend(self.encode(&rest[..at])?);
            rest = &rest[at + 1..];
        }
        ids.extend(self.encode(rest)?);
        Ok(ids)
    }

    /// Whether a text may be encoded in pieces cut at single spaces
    /// ([`Tokenizer::encode_in_pieces`]); where not, it is encoded whole. Found once per
    /// tokenizer.
    pub fn cuts_at_spaces(&self) -> Result<bool> {
        if let Some(&cuts) = self.cuts_at_spaces.get() {
            return Ok(cuts);
        }
        let cuts = self.find_cuts_at_spaces()?;
        Ok(*self.cuts_at_spaces.get_or_init(|| cuts))
    }

    fn find_cuts_at_spaces(&self) -> Result<bool> {
        // A space inside a piece: `a▁b`, or a `▁` that follows other text.
        let spans = self.inner.get_vocab(false).keys().any(|piece| {
            piece
                .trim_start_matches('\u{2581}')
                .contains(['\u{2581}', ' '])
        });
        if spans {
            return Ok(false);
        }
        // The space is the dummy prefix of the word after it.
        for (left, right) in [("a", "b"), ("Hello,", "world"), ("x\n", "y")] {
            let mut parts = self.encode(left)?;
            parts.extend(self.encode(right)?);
            if parts != self.encode(&format!("{left} {right}"))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// The piece of a token id (`▁Hello`, `<0x0A>`, `[INST]`).
    pub fn piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The UTF-8 bytes a token stands for: a byte-fallback piece (`<0x0A>`) its byte,
    /// sentencepiece's `▁` a space, a control token (`</s>`, `[INST]`) its spelling; empty for
    /// an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.piece(id) else {
            return Vec::new();
        };
        let byte = piece
            .strip_prefix("<0x")
            .and_then(|h| h.strip_suffix('>'))
            .filter(|h| h.len() == 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match byte {
            Some(b) => vec![b],
            None => piece.replace('\u{2581}', " ").into_bytes(),
        }
    }

    /// Ids of the special (control) tokens: `<s>`, `</s>`, `[INST]`, ...
    pub fn special_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Tokens in the vocabulary, special ones included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

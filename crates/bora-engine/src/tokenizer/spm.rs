//! Sentencepiece BPE models (`tokenizer.model`, Mistral's `tokenizer.model.v1`/`.v3`) rebuilt
//! as Hugging Face tokenizers.
//!
//! The model file is a `ModelProto` (sentencepiece's `sentencepiece_model.proto`); only the
//! fields read here are declared. [`SpmVocab`] (pieces, scores, types) is what both this file
//! and GGUF's `tokenizer.ggml.*` metadata provide, and [`SpmVocab::build`] turns it into a
//! `tokenizers::Tokenizer` that encodes as sentencepiece does: `▁` prepended and spaces replaced
//! by `▁` (add_dummy_prefix, identity normalization), BPE whose merges are ranked by the merged
//! piece's score (sentencepiece merges the highest-scoring pair first; ranking by id instead is
//! the conversion bug that breaks runs of spaces), byte fallback for the rest, and control
//! pieces as special tokens.

use std::path::Path;

use prost::Message;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

use crate::{EngineError, Result};

#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<PieceProto>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PieceProto {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TrainerSpec {
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
    #[prost(bool, optional, tag = "35")]
    byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40")]
    unk_id: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    remove_extra_whitespaces: Option<bool>,
}

/// A merge's rank: (negated score of the merged piece, its id, the left piece's id).
type MergeRank = (f32, u32, u32);

/// The type of a sentencepiece piece (`SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// A piece found by BPE merges.
    Normal,
    /// The unknown-token piece.
    Unknown,
    /// A control token (`<s>`, `[INST]`), never matched in text.
    Control,
    /// A piece matched as a whole in text.
    UserDefined,
    /// A piece never produced.
    Unused,
    /// A byte (`<0xAB>`) for byte fallback.
    Byte,
}

impl PieceKind {
    /// Sentencepiece's (and GGUF's) number of this type.
    pub fn code(self) -> i32 {
        match self {
            PieceKind::Normal => 1,
            PieceKind::Unknown => 2,
            PieceKind::Control => 3,
            PieceKind::UserDefined => 4,
            PieceKind::Unused => 5,
            PieceKind::Byte => 6,
        }
    }

    /// From sentencepiece's (and GGUF's `tokenizer.ggml.token_type`) numbering.
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => PieceKind::Normal,
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
/// One piece of a sentencepiece vocabulary.
pub struct SpmPiece {
    /// Its text (`▁` for spaces).
    pub text: String,
    /// Its score: higher merges first.
    pub score: f32,
    /// Its type.
    pub kind: PieceKind,
}

/// A sentencepiece BPE vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmVocab {
    /// The pieces, in id order.
    pub pieces: Vec<SpmPiece>,
    /// Id of the unknown piece.
    pub unk_id: u32,
    /// Whether unknown characters become byte pieces.
    pub byte_fallback: bool,
}

impl SpmVocab {
    /// Reads a sentencepiece model file.
    pub fn from_model_file(path: &Path) -> Result<Self> {
        let bad = |reason: String| EngineError::TokenizerLoad {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let proto = ModelProto::decode(bytes.as_slice())
            .map_err(|e| bad(format!("not a sentencepiece model: {e}")))?;
        let trainer = proto.trainer_spec.unwrap_or_default();
        // Sentencepiece's defaults for absent fields: UNIGRAM, no byte fallback, unk 0.
        match trainer.model_type.unwrap_or(1) {
            2 => {}
            t => {
                return Err(bad(format!(
                    "sentencepiece model type {t} is not BPE (2); only BPE models are supported"
                )))
            }
        }
        let norm = proto.normalizer_spec.unwrap_or_default();
        let identity = norm.name.as_deref().is_none_or(|n| n == "identity")
            && norm
                .precompiled_charsmap
                .as_deref()
                .is_none_or(|c| c.is_empty());
        if !identity
            || norm.remove_extra_whitespaces.unwrap_or(true)
            || !norm.add_dummy_prefix.unwrap_or(true)
        {
            return Err(bad(
                "only the identity normalizer with a dummy prefix and kept whitespace is supported"
                    .into(),
            ));
        }
        let pieces = proto
            .pieces
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let code = p.kind.unwrap_or(1);
                let kind = PieceKind::from_code(code)
                    .ok_or_else(|| bad(format!("piece {i} has unknown type {code}")))?;
                Ok(SpmPiece {
                    text: p.piece.unwrap_or_default(),
                    score: p.score.unwrap_or(0.0),
                    kind,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let unk_id = trainer.unk_id.unwrap_or(0);
        if unk_id < 0 || unk_id as usize >= pieces.len() {
            return Err(bad(format!("unk_id {unk_id} is outside the vocabulary")));
        }
        Ok(Self {
            pieces,
            unk_id: unk_id as u32,
            byte_fallback: trainer.byte_fallback.unwrap_or(false),
        })
    }

    /// The vocabulary a GGUF file's `tokenizer.ggml.*` metadata holds (llama.cpp's converter
    /// copies a sentencepiece model's pieces, scores and types there, as `tokenizer.ggml.model`
    /// `llama`).
    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        let store =
            bora_weights::GgufStore::open(path).map_err(|e| EngineError::TokenizerLoad {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Self::from_gguf(&store)
    }

    /// The vocabulary of an opened GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(store: &bora_weights::GgufStore) -> Result<Self> {
        use bora_weights::MetaValue;
        let path = store.main().path.clone();
        let bad = |reason: String| EngineError::TokenizerLoad {
            path: path.clone(),
            reason,
        };
        let model = store
            .meta("tokenizer.ggml.model")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| bad("no tokenizer.ggml.model in the metadata".into()))?;
        if model != "llama" {
            return Err(bad(format!(
                "tokenizer.ggml.model `{model}` is not supported: bora reads sentencepiece vocabularies (`llama`), as Mixtral's are"
            )));
        }
        if store
            .meta("tokenizer.ggml.add_space_prefix")
            .and_then(MetaValue::as_bool)
            == Some(false)
        {
            return Err(bad(
                "tokenizer.ggml.add_space_prefix is false: only sentencepiece's dummy-prefix behaviour is supported".into(),
            ));
        }
        let array = |key: &str| -> Result<&[MetaValue]> {
            store
                .meta(key)
                .and_then(MetaValue::as_array)
                .ok_or_else(|| bad(format!("{key} is missing or not an array")))
        };
        let tokens = array("tokenizer.ggml.tokens")?;
        let scores = array("tokenizer.ggml.scores")?;
        let types = array("tokenizer.ggml.token_type")?;
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(bad(format!(
                "{} tokens but {} scores and {} token types",
                tokens.len(),
                scores.len(),
                types.len()
            )));
        }
        let pieces = tokens
            .iter()
            .zip(scores)
            .zip(types)
            .enumerate()
            .map(|(i, ((t, s), k))| {
                let text = t
                    .as_str()
                    .ok_or_else(|| bad(format!("token {i} is not a string")))?;
                let score = s
                    .as_f64()
                    .ok_or_else(|| bad(format!("score {i} is not a number")))?;
                let code = k.as_i64().unwrap_or(-1);
                let kind = i32::try_from(code)
                    .ok()
                    .and_then(PieceKind::from_code)
                    .ok_or_else(|| bad(format!("token {i} has unknown type {code}")))?;
                Ok(SpmPiece {
                    text: text.to_string(),
                    score: score as f32,
                    kind,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let unk_id = match store.meta("tokenizer.ggml.unknown_token_id") {
            Some(v) => v
                .as_u64()
                .filter(|&u| (u as usize) < pieces.len())
                .ok_or_else(|| {
                    bad(format!(
                        "unknown_token_id {} is outside the vocabulary",
                        v.summary()
                    ))
                })? as u32,
            None => pieces
                .iter()
                .position(|p| p.kind == PieceKind::Unknown)
                .unwrap_or(0) as u32,
        };
        let byte_fallback = pieces.iter().any(|p| p.kind == PieceKind::Byte);
        Ok(Self {
            pieces,
            unk_id,
            byte_fallback,
        })
    }

    /// The `tokenizer.ggml.*` metadata of this vocabulary, as llama.cpp's converter writes it.
    pub fn gguf_metadata(&self) -> Vec<(String, bora_weights::MetaValue)> {
        use bora_weights::MetaValue;
        let id = |text: &str| {
            self.pieces
                .iter()
                .position(|p| p.text == text && p.kind == PieceKind::Control)
        };
        let mut meta = vec![
            (
                "tokenizer.ggml.model".to_string(),
                MetaValue::String("llama".into()),
            ),
            (
                "tokenizer.ggml.tokens".into(),
                MetaValue::Array(
                    self.pieces
                        .iter()
                        .map(|p| MetaValue::String(p.text.clone()))
                        .collect(),
                ),
            ),
            (
                "tokenizer.ggml.scores".into(),
                MetaValue::Array(
                    self.pieces
                        .iter()
                        .map(|p| MetaValue::F32(p.score))
                        .collect(),
                ),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                MetaValue::Array(
                    self.pieces
                        .iter()
                        .map(|p| MetaValue::I32(p.kind.code()))
                        .collect(),
                ),
            ),
            (
                "tokenizer.ggml.unknown_token_id".into(),
                MetaValue::U32(self.unk_id),
            ),
            ("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(true)),
            (
                "tokenizer.ggml.add_eos_token".into(),
                MetaValue::Bool(false),
            ),
        ];
        for (key, text) in [("bos", "<s>"), ("eos", "</s>")] {
            if let Some(i) = id(text) {
                meta.push((
                    format!("tokenizer.ggml.{key}_token_id"),
                    MetaValue::U32(i as u32),
                ));
            }
        }
        meta
    }

    /// The equivalent Hugging Face tokenizer.
    pub fn build(&self) -> Result<tokenizers::Tokenizer> {
        let err = |e: tokenizers::Error| EngineError::Tokenizer(e.to_string());
        let vocab: tokenizers::models::bpe::Vocab = self
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.text.clone(), i as u32))
            .collect();
        // Every split of a normal piece into two pieces is a merge, ranked by the merged piece's
        // score (higher first), then by its id.
        let mut merges: Vec<(MergeRank, (String, String))> = Vec::new();
        for (id, p) in self.pieces.iter().enumerate() {
            if p.kind != PieceKind::Normal || p.text.chars().nth(1).is_none() {
                continue;
            }
            for (cut, _) in p.text.char_indices().skip(1) {
                let (l, r) = p.text.split_at(cut);
                if let (Some(&li), Some(_)) = (vocab.get(l), vocab.get(r)) {
                    merges.push(((-p.score, id as u32, li), (l.to_string(), r.to_string())));
                }
            }
        }
        merges.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        let unk = self.pieces[self.unk_id as usize].text.clone();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges.into_iter().map(|(_, m)| m).collect())
            .unk_token(unk)
            .fuse_unk(true)
            .byte_fallback(self.byte_fallback)
            .build()
            .map_err(err)?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        let normalizer = NormalizerSequence::new(vec![
            NormalizerWrapper::Prepend(Prepend::new("▁".into())),
            NormalizerWrapper::Replace(Replace::new(" ", "▁").map_err(err)?),
        ]);
        tok.with_normalizer(Some(NormalizerWrapper::Sequence(normalizer)))
            .map_err(err)?;
        tok.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
            DecoderWrapper::Replace(Replace::new("▁", " ").map_err(err)?),
            DecoderWrapper::ByteFallback(ByteFallback::new()),
            DecoderWrapper::Fuse(Fuse::new()),
            DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
        ]))));
        let special: Vec<AddedToken> = self
            .pieces
            .iter()
            .filter(|p| matches!(p.kind, PieceKind::Control | PieceKind::Unknown))
            .map(|p| AddedToken::from(p.text.clone(), true))
            .collect();
        tok.add_special_tokens(special).map_err(err)?;
        let user: Vec<AddedToken> = self
            .pieces
            .iter()
            .filter(|p| p.kind == PieceKind::UserDefined)
            .map(|p| AddedToken::from(p.text.clone(), false).normalized(false))
            .collect();
        tok.add_tokens(user).map_err(err)?;
        Ok(tok)
    }
}

//! The typed Mixtral configuration, read from a Hugging Face `config.json`.
//!
//! Follows `transformers`' `MixtralConfig`: every dimension is read, none is assumed (expert
//! count, experts per token, head count and head size all come from the file). transformers 5
//! writes `rope_theta` inside `rope_parameters`; older files have it at the top level: both are
//! read.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{CoreError, Result};

/// The model architectures bora runs. Strings from files become this enum at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `MixtralForCausalLM`.
    Mixtral,
}

impl Architecture {
    /// The Hugging Face class name.
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Mixtral => "MixtralForCausalLM",
        }
    }
}

/// The most positions bora runs any model at (a rotary table of 128 dimensions takes 64 MiB
/// at this length). A config may claim more (`max_position_embeddings` up to 2^24); it is
/// served at this.
pub const MAX_POSITIONS: usize = 1 << 17;

/// The shape and hyper-parameters of a Mixtral model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    /// Keys older than this many positions are not attended to; `None` attends to all.
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| CoreError::ConfigIo {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| CoreError::ConfigJson {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&value)
    }

    /// Parses a `config.json` value.
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value.as_object().ok_or(CoreError::InvalidKey {
            key: "(root)",
            reason: "expected a JSON object".into(),
        })?;
        let architecture = architecture(obj)?;
        let hidden_size = req_usize(obj, "hidden_size")?;
        let num_attention_heads = req_usize(obj, "num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(invalid("num_attention_heads", "must be positive"));
        }
        let num_key_value_heads =
            opt_usize(obj, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match opt_usize(obj, "head_dim")? {
            Some(d) => d,
            None => {
                if !hidden_size.is_multiple_of(num_attention_heads) {
                    return Err(invalid(
                        "head_dim",
                        format!(
                            "absent, and hidden_size {hidden_size} is not a multiple of \
                             num_attention_heads {num_attention_heads}"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        let rope_theta = match obj.get("rope_theta").filter(|v| !v.is_null()) {
            Some(v) => as_f64(v, "rope_theta")?,
            None => match obj.get("rope_parameters").and_then(|p| p.get("rope_theta")) {
                Some(v) => as_f64(v, "rope_parameters.rope_theta")?,
                None => 1e6,
            },
        };
        let cfg = ModelConfig {
            architecture,
            vocab_size: req_usize(obj, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(obj, "intermediate_size")?,
            num_hidden_layers: req_usize(obj, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            num_local_experts: req_usize(obj, "num_local_experts")?,
            num_experts_per_tok: req_usize(obj, "num_experts_per_tok")?,
            rope_theta,
            rms_norm_eps: match obj.get("rms_norm_eps").filter(|v| !v.is_null()) {
                Some(v) => as_f64(v, "rms_norm_eps")?,
                None => 1e-5,
            },
            max_position_embeddings: req_usize(obj, "max_position_embeddings")?,
            sliding_window: opt_usize(obj, "sliding_window")?,
            tie_word_embeddings: match obj.get("tie_word_embeddings") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(invalid("tie_word_embeddings", "expected a boolean")),
            },
            bos_token_id: opt_usize(obj, "bos_token_id")?.map(|v| v as u32),
            eos_token_ids: eos_ids(obj)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the dimensions are consistent with each other.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("num_local_experts", self.num_local_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        // A config or GGUF header is read before any weight: nothing it claims may make bora
        // allocate without bound. These are far above any Mixtral (or any published model).
        for (key, v, max) in [
            ("vocab_size", self.vocab_size, 1 << 21),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            ("num_key_value_heads", self.num_key_value_heads, 1 << 10),
            ("head_dim", self.head_dim, 1 << 10),
            ("num_local_experts", self.num_local_experts, 1 << 10),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 24,
            ),
            ("sliding_window", self.sliding_window.unwrap_or(0), 1 << 24),
        ] {
            if v > max {
                return Err(invalid(key, format!("{v} is over bora's limit of {max}")));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(invalid(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(invalid("head_dim", format!("{} is odd", self.head_dim)));
        }
        if self.num_experts_per_tok > self.num_local_experts {
            return Err(invalid(
                "num_experts_per_tok",
                format!(
                    "{} is more than num_local_experts {}",
                    self.num_experts_per_tok, self.num_local_experts
                ),
            ));
        }
        if self.sliding_window == Some(0) {
            return Err(invalid("sliding_window", "must be null or positive"));
        }
        if !self.rope_theta.is_finite() || self.rope_theta <= 0.0 {
            return Err(invalid("rope_theta", "must be positive"));
        }
        if !self.rms_norm_eps.is_finite() || self.rms_norm_eps < 0.0 {
            return Err(invalid("rms_norm_eps", "must not be negative"));
        }
        Ok(())
    }

    /// The positions bora runs this model at: `max_position_embeddings`, at most
    /// [`MAX_POSITIONS`] (the rotary tables and every context are sized from it).
    pub fn context(&self) -> usize {
        self.max_position_embeddings.min(MAX_POSITIONS)
    }

    /// Parameters in the whole model.
    pub fn param_count(&self) -> u64 {
        let attn = self.attention_params();
        let experts = self.expert_params() * self.num_local_experts as u64;
        let router = (self.hidden_size * self.num_local_experts) as u64;
        let norms = 2 * self.hidden_size as u64;
        let per_layer = attn + experts + router + norms;
        let emb = (self.vocab_size * self.hidden_size) as u64;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        per_layer * self.num_hidden_layers as u64 + emb + head + self.hidden_size as u64
    }

    /// Parameters read for one token: the attention, the router, `num_experts_per_tok` experts
    /// per layer, one embedding row and the LM head.
    pub fn active_param_count(&self) -> u64 {
        let attn = self.attention_params();
        let experts = self.expert_params() * self.num_experts_per_tok as u64;
        let router = (self.hidden_size * self.num_local_experts) as u64;
        let norms = 2 * self.hidden_size as u64;
        let per_layer = attn + experts + router + norms;
        let head = (self.vocab_size * self.hidden_size) as u64;
        per_layer * self.num_hidden_layers as u64 + head + 2 * self.hidden_size as u64
    }

    fn attention_params(&self) -> u64 {
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        (self.hidden_size * (q + 2 * kv) + q * self.hidden_size) as u64
    }

    fn expert_params(&self) -> u64 {
        3 * (self.hidden_size * self.intermediate_size) as u64
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidKey {
        key,
        reason: reason.into(),
    }
}

fn architecture(obj: &Map<String, Value>) -> Result<Architecture> {
    let archs = match obj.get("architectures") {
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err(invalid("architectures", "expected a list of strings")),
    };
    if archs.contains(&"MixtralForCausalLM") {
        return Ok(Architecture::Mixtral);
    }
    if archs.is_empty() && obj.get("model_type").and_then(|v| v.as_str()) == Some("mixtral") {
        return Ok(Architecture::Mixtral);
    }
    if archs.is_empty() {
        return Err(CoreError::MissingKey {
            key: "architectures",
        });
    }
    Err(CoreError::UnsupportedArchitecture {
        found: archs.join(", "),
    })
}

fn as_f64(v: &Value, key: &'static str) -> Result<f64> {
    v.as_f64()
        .ok_or_else(|| invalid(key, format!("expected a number, got {v}")))
}

fn opt_usize(obj: &Map<String, Value>, key: &'static str) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| invalid(key, format!("expected a non-negative integer, got {v}"))),
    }
}

fn req_usize(obj: &Map<String, Value>, key: &'static str) -> Result<usize> {
    opt_usize(obj, key)?.ok_or(CoreError::MissingKey { key })
}

fn eos_ids(obj: &Map<String, Value>) -> Result<Vec<u32>> {
    let bad = |v: &Value| {
        invalid(
            "eos_token_id",
            format!("expected an id or a list of ids, got {v}"),
        )
    };
    match obj.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_u64().map(|n| n as u32).ok_or_else(|| bad(v)))
            .collect(),
        Some(v) => v.as_u64().map(|n| vec![n as u32]).ok_or_else(|| bad(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "architectures": ["MixtralForCausalLM"],
            "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "num_local_experts": 8, "num_experts_per_tok": 2, "rope_theta": 1e6,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 32768, "sliding_window": null,
            "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2
        })
    }

    #[test]
    fn mixtral_8x7b_counts() {
        let cfg = ModelConfig::from_json(&base()).unwrap();
        assert_eq!(cfg.head_dim, 128);
        // Mistral's published figures: 46.7B total, 12.9B active; the latter counts the whole
        // embedding matrix, of which a token reads one row.
        assert_eq!(cfg.param_count() / 100_000_000, 467);
        let embedding = (cfg.vocab_size * cfg.hidden_size) as u64;
        assert_eq!(
            (cfg.active_param_count() + embedding + 50_000_000) / 100_000_000,
            129
        );
    }

    #[test]
    fn rope_parameters_and_explicit_head_dim() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_theta": 5e5, "rope_type": "default"});
        v["head_dim"] = json!(64);
        v["eos_token_id"] = json!([2, 7]);
        let cfg = ModelConfig::from_json(&v).unwrap();
        assert_eq!(cfg.rope_theta, 5e5);
        assert_eq!(cfg.head_dim, 64);
        assert_eq!(cfg.eos_token_ids, vec![2, 7]);
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("num_local_experts");
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("num_local_experts"), "{e}");

        let mut v = base();
        v["num_experts_per_tok"] = json!(9);
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("num_experts_per_tok"), "{e}");

        let mut v = base();
        v["num_key_value_heads"] = json!(5);
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");

        let mut v = base();
        v["hidden_size"] = json!("big");
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");

        // Issue 16, item 4: a dimension that would make bora allocate without bound.
        for (key, value) in [
            ("max_position_embeddings", json!(1_000_000_000u64)),
            ("vocab_size", json!(1u64 << 40)),
            ("num_hidden_layers", json!(100_000)),
            ("sliding_window", json!(1u64 << 30)),
        ] {
            let mut v = base();
            v[key] = value;
            let e = ModelConfig::from_json(&v).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("over bora's limit"), "{e}");
        }
        // A long context within the limit is served at MAX_POSITIONS.
        let mut v = base();
        v["max_position_embeddings"] = json!(1 << 20);
        let cfg = ModelConfig::from_json(&v).unwrap();
        assert_eq!(cfg.context(), MAX_POSITIONS);
        assert_eq!(ModelConfig::from_json(&base()).unwrap().context(), 32768);

        let mut v = base();
        v["architectures"] = json!(["LlamaForCausalLM"]);
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("LlamaForCausalLM"), "{e}");
    }
}

//! The demo model: a small random-weight Mixtral made from a fixed seed on first use (no weight
//! files in the repository), with Mixtral 8x7B's real tokenizer built into the binary. Its
//! text is noise; every API feature works on it.

use std::path::PathBuf;

use crate::{EngineError, Result};

/// The name the demo model is served under.
pub const DEMO_MODEL_NAME: &str = "bora-demo";

/// The seed of the demo's weights.
pub const DEMO_SEED: u64 = 0x0b0a_de30;

/// Mixtral 8x7B's sentencepiece tokenizer (mistral-common's `tokenizer.model.v1`).
static TOKENIZER_V1: &[u8] = include_bytes!("../../../models/tokenizers/tokenizer.model.v1");

/// Bumped whenever the demo's architecture or weight generation changes.
const DEMO_VERSION: u32 = 1;

/// Where the demo is kept: bora's folder in the user's cache (`$XDG_CACHE_HOME/bora` or
/// `~/.cache/bora`), else the system's temporary directory.
fn demo_root() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .map(|c| c.join("bora"))
        .unwrap_or_else(std::env::temp_dir)
}

/// The demo model's directory, written on first use (15 MB; the same bytes every time) and
/// reused afterwards.
pub fn demo_model_dir() -> Result<PathBuf> {
    let root = demo_root();
    let dir = root.join(format!("demo-v{DEMO_VERSION}-{DEMO_SEED:x}"));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir);
    }
    let err = |what: &str, e: &dyn std::fmt::Display| {
        EngineError::Load(format!("cannot write the demo model ({what}): {e}"))
    };
    // Written beside the final place, then renamed: a concurrent start never reads half a model.
    let tmp = root.join(format!(
        "demo-v{DEMO_VERSION}-{DEMO_SEED:x}.{}.tmp",
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp).map_err(|e| err(&tmp.display().to_string(), &e))?;
    bora_weights::write_demo_checkpoint(&tmp, DEMO_SEED).map_err(|e| err("weights", &e))?;
    std::fs::write(tmp.join("tokenizer.model.v1"), TOKENIZER_V1)
        .map_err(|e| err("tokenizer", &e))?;
    std::fs::write(tmp.join(".complete"), b"").map_err(|e| err("marker", &e))?;
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process got there first (or a stale incomplete copy is in the way).
        let _ = std::fs::remove_dir_all(&tmp);
        if !done.exists() {
            let _ = std::fs::remove_dir_all(&dir);
            return demo_model_dir_retry(&dir);
        }
    }
    Ok(dir)
}

fn demo_model_dir_retry(dir: &std::path::Path) -> Result<PathBuf> {
    if dir.exists() {
        return Err(EngineError::Load(format!(
            "cannot write the demo model: {} is in the way",
            dir.display()
        )));
    }
    demo_model_dir()
}

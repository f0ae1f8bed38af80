//! The demo model: a small random-weight Mixtral made from a fixed seed on first use (no weight
//! files in the repository), with Mixtral 8x7B's real tokenizer built into the binary. Its
//! text is noise; every API feature works on it.

use std::path::PathBuf;

use crate::load::LoadError;

type Result<T> = std::result::Result<T, LoadError>;

/// The name the demo model is served under.
pub const DEMO_MODEL_NAME: &str = "bora-demo";

/// The seed of the demo's weights.
pub const DEMO_SEED: u64 = 0x0b0a_de30;

/// Mixtral 8x7B's sentencepiece tokenizer (mistral-common's `tokenizer.model.v1`).
static TOKENIZER_V1: &[u8] = include_bytes!("../../../models/tokenizers/tokenizer.model.v1");

/// Mixtral 8x22B's, with tool tokens (`mistral_instruct_tokenizer_240323.model.v3`).
static TOKENIZER_V3: &[u8] = include_bytes!("../../../models/tokenizers/tokenizer.model.v3");

/// The name of the demo with Mixtral 8x22B's v3 tokenizer (control tokens, tool calls in the
/// model's own format).
pub const DEMO_V3_MODEL_NAME: &str = "bora-demo-v3";

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
    demo_dir(false)
}

/// [`demo_model_dir`] for the demo with the v3 tokenizer (vocabulary 32768).
pub fn demo_v3_model_dir() -> Result<PathBuf> {
    demo_dir(true)
}

fn demo_dir(v3: bool) -> Result<PathBuf> {
    let root = demo_root();
    let flavour = if v3 { "-v3tok" } else { "" };
    let dir = root.join(format!("demo-v{DEMO_VERSION}-{DEMO_SEED:x}{flavour}"));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir);
    }
    // Written beside the final place, then renamed: a concurrent start never reads half a model.
    // The name is the writer's own, process and call: two engines loading the demo at once in
    // one process (parallel tests) wrote into one folder, and one renamed it from under the
    // other.
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let tmp = root.join(format!(
        "demo-v{DEMO_VERSION}-{DEMO_SEED:x}{flavour}.{}-{}.tmp",
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let err = |what: &str, e: &dyn std::fmt::Display| LoadError::Demo {
        path: tmp.clone(),
        reason: format!("{what}: {e}"),
    };
    std::fs::create_dir_all(&tmp).map_err(|e| err("creating it", &e))?;
    let (vocab, name, bytes) = if v3 {
        (32768, "tokenizer.model.v3", TOKENIZER_V3)
    } else {
        (32000, "tokenizer.model.v1", TOKENIZER_V1)
    };
    bora_weights::write_demo_checkpoint(&tmp, DEMO_SEED, vocab).map_err(|e| err("weights", &e))?;
    std::fs::write(tmp.join(name), bytes).map_err(|e| err("tokenizer", &e))?;
    std::fs::write(tmp.join(".complete"), b"").map_err(|e| err("marker", &e))?;
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process got there first (or a stale incomplete copy is in the way).
        let _ = std::fs::remove_dir_all(&tmp);
        if !done.exists() {
            let _ = std::fs::remove_dir_all(&dir);
            return demo_dir_retry(&dir, v3);
        }
    }
    Ok(dir)
}

fn demo_dir_retry(dir: &std::path::Path, v3: bool) -> Result<PathBuf> {
    if dir.exists() {
        return Err(LoadError::Demo {
            path: dir.to_path_buf(),
            reason: "something is in the way".into(),
        });
    }
    demo_dir(v3)
}

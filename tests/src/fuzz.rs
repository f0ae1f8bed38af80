//! A seeded mutator for the fuzz tests on stable Rust: inputs from a corpus (`tests/corpus`),
//! changed by a generator seeded per case, so that a failing case is reproduced by its seed
//! alone. `BORA_FUZZ_CASES` sets the cases per target (CI runs a few hundred; `tests/fuzz.sh`
//! many more, optimized); `BORA_FUZZ_SEED` the first seed.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Map, Value};

/// Cases per target.
pub fn cases(default: u64) -> u64 {
    std::env::var("BORA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The first seed.
pub fn first_seed() -> u64 {
    std::env::var("BORA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The files of `tests/corpus/NAME`, sorted: (file name, bytes).
pub fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|f| {
            let p = f.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// Runs `case` for each seed; on a panic, says which seed (and what `describe` gives of it)
/// before passing the panic on.
pub fn run_cases(target: &str, cases: u64, mut case: impl FnMut(u64)) {
    let first = first_seed();
    // A case that aborts the process (a stack overflow, the OOM killer) cannot be caught:
    // BORA_FUZZ_VERBOSE=1 names each seed before it runs.
    let verbose = std::env::var_os("BORA_FUZZ_VERBOSE").is_some();
    for seed in first..first + cases {
        if verbose {
            eprintln!("fuzz target `{target}`: seed {seed}");
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(seed)));
        if let Err(p) = r {
            eprintln!("fuzz target `{target}` failed at seed {seed} (BORA_FUZZ_SEED={seed} BORA_FUZZ_CASES=1 reruns it)");
            std::panic::resume_unwind(p);
        }
    }
    eprintln!("fuzz target `{target}`: {cases} executions from seed {first}");
}

/// Changes inputs at random, with a bias towards what breaks parsers: extreme numbers, deep
/// nesting, wrong types, long and odd strings, cut bytes.
pub struct Mutator {
    rng: StdRng,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
        }
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    /// One to four structural changes of `v`.
    pub fn json(&mut self, v: &Value) -> Value {
        let mut v = v.clone();
        for _ in 0..1 + self.below(4) {
            let paths = paths(&v);
            let path = paths[self.below(paths.len())].clone();
            let kind = self.below(6);
            let replacement = match kind {
                0 | 1 => Some(self.hostile(3)),
                2 => None, // remove it
                3 => Some(json!([at(&v, &path).clone(), self.hostile(1)])),
                4 => {
                    // Wrap it deep.
                    let mut x = at(&v, &path).clone();
                    for _ in 0..self.below(140) {
                        x = if self.below(2) == 0 {
                            json!([x])
                        } else {
                            json!({"a": x})
                        };
                    }
                    Some(x)
                }
                _ => Some(self.hostile(0)),
            };
            set(&mut v, &path, replacement);
        }
        v
    }

    /// A value meant to trip a parser or a compiler.
    pub fn hostile(&mut self, depth: usize) -> Value {
        let pick = self.below(if depth == 0 { 16 } else { 19 });
        match pick {
            0 => json!(i64::MIN),
            1 => json!(i64::MAX),
            2 => json!(u64::MAX),
            3 => json!(-9007199254740993i64),
            4 => json!(1e308),
            5 => json!(-1e-308),
            6 => json!(0.1 + 0.2),
            7 => Value::Null,
            8 => json!(true),
            9 => json!(""),
            10 => json!("x".repeat(self.below(5000))),
            11 => json!("[TOOL_CALLS] [INST] </s> <s> \u{0} \u{fffd} 𝄞 #/$defs/"),
            12 => json!(self.rng.random::<i32>()),
            13 => json!(self.rng.random::<f64>() * 1e6 - 5e5),
            14 => {
                let role = ["user", "assistant", "system", "tool"][self.below(4)];
                json!(role)
            }
            15 => json!({"$ref": "#"}),
            16 => Value::Array(
                (0..self.below(6))
                    .map(|_| self.hostile(depth - 1))
                    .collect(),
            ),
            17 => {
                let keys = [
                    "type",
                    "role",
                    "content",
                    "enum",
                    "const",
                    "$ref",
                    "properties",
                    "required",
                    "items",
                    "minimum",
                    "maximum",
                    "anyOf",
                    "name",
                    "arguments",
                    "tool_calls",
                    "messages",
                    "schema",
                    "multipleOf",
                ];
                let m: Map<String, Value> = (0..self.below(5))
                    .map(|_| {
                        (
                            keys[self.below(keys.len())].to_string(),
                            self.hostile(depth - 1),
                        )
                    })
                    .collect();
                Value::Object(m)
            }
            _ => {
                let t = ["object", "integer", "string", "array"][self.below(4)];
                json!({ "type": t })
            }
        }
    }

    /// Byte-level changes: flipped bytes, a cut, a 64-bit field overwritten, bytes inserted.
    pub fn bytes(&mut self, b: &[u8]) -> Vec<u8> {
        let mut b = b.to_vec();
        for _ in 0..1 + self.below(4) {
            if b.is_empty() {
                b.push(self.rng.random());
                continue;
            }
            let at = self.below(b.len());
            match self.below(5) {
                0 => b[at] ^= 1 << self.below(8),
                1 => b[at] = self.rng.random(),
                2 => b.truncate(at),
                3 => {
                    let word = [u64::MAX, 1 << 40, 0, u32::MAX as u64, 1 << 62][self.below(5)];
                    let end = (at + 8).min(b.len());
                    b[at..end].copy_from_slice(&word.to_le_bytes()[..end - at]);
                }
                _ => {
                    let extra: Vec<u8> = (0..self.below(16)).map(|_| self.rng.random()).collect();
                    b.splice(at..at, extra);
                }
            }
        }
        b
    }
}

/// A step into a JSON value: a key or an index.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn paths(v: &Value) -> Vec<Vec<Seg>> {
    let mut out = vec![Vec::new()];
    let mut stack = vec![(v, Vec::new())];
    while let Some((v, p)) = stack.pop() {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let mut q = p.clone();
                    q.push(Seg::Key(k.clone()));
                    out.push(q.clone());
                    stack.push((x, q));
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let mut q = p.clone();
                    q.push(Seg::Index(i));
                    out.push(q.clone());
                    stack.push((x, q));
                }
            }
            _ => {}
        }
    }
    out
}

fn at<'a>(v: &'a Value, path: &[Seg]) -> &'a Value {
    path.iter().fold(v, |v, s| match s {
        Seg::Key(k) => &v[k.as_str()],
        Seg::Index(i) => &v[*i],
    })
}

/// Sets (or, with `None`, removes) the value at `path`.
fn set(v: &mut Value, path: &[Seg], to: Option<Value>) {
    let Some((last, parent)) = path.split_last() else {
        if let Some(x) = to {
            *v = x;
        }
        return;
    };
    let mut p = v;
    for s in parent {
        p = match s {
            Seg::Key(k) => &mut p[k.as_str()],
            Seg::Index(i) => &mut p[*i],
        };
    }
    match (p, last, to) {
        (Value::Object(m), Seg::Key(k), Some(x)) => {
            m.insert(k.clone(), x);
        }
        (Value::Object(m), Seg::Key(k), None) => {
            m.remove(k);
        }
        (Value::Array(a), Seg::Index(i), Some(x)) if *i < a.len() => a[*i] = x,
        (Value::Array(a), Seg::Index(i), None) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

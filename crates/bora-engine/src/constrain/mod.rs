//! Constrained decoding with `llguidance`: JSON mode, JSON schemas and tool calls that are valid
//! by construction. A [`Constraint`] becomes a grammar; each choice gets its own matcher, run
//! as a [`LogitsProcessor`] that masks every token the grammar does not allow. Every schema is
//! checked first ([`schema::check`]): the compiler sees only schemas it can compile safely and
//! that some finite value satisfies.

pub mod schema;

use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::chat::{ChatFormat, Tool};
use crate::serve::{LogitsProcessor, ProcessorFactory};
use crate::{EngineError, Result, Tokenizer};

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// One JSON value valid against this schema (`{"type": "object"}` for JSON mode).
    Json(Value),
    /// Tool calls in the model's format (or, under `Auto`, text or calls).
    Tools {
        /// The tools that may be called.
        tools: Vec<Tool>,
        /// Which calls are required.
        choice: ToolChoice,
        /// Several calls in one answer (else exactly one).
        parallel: bool,
        /// Under `Auto`, a text answer must be this JSON (a `response_format`).
        text_json: Option<Value>,
    },
}

/// `tool_choice`: which tools the model may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Text or tool calls, as the model chooses; tool calls are valid either way.
    Auto,
    /// No tool call: the answer is text (the engine masks the call token instead of
    /// constraining the output; a [`Constraint::Tools`] never carries it).
    None,
    /// At least one tool call (`any`, `required`).
    Required,
    /// A call of this function, and only this.
    Named(String),
}

/// JSON as the model writes it: Python's separators, no free whitespace (a random model would
/// otherwise fill its answer with spaces).
fn json_options() -> Value {
    json!({"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": false})
}

fn with_options(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(obj) = s.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(json_options);
    }
    s
}

/// The stack of the thread that compiles a grammar.
const COMPILE_STACK: usize = 64 << 20;

/// Every schema of `c` against [`schema::check`]; the error names the schema.
fn check_schemas(c: &Constraint) -> Result<()> {
    let bad = |what: String| move |e: String| EngineError::Constraint(format!("{what}: {e}"));
    match c {
        Constraint::Json(s) => schema::check(s).map_err(bad("response_format schema".into())),
        Constraint::Tools {
            tools, text_json, ..
        } => {
            for t in tools {
                schema::check(&t.parameters)
                    .map_err(bad(format!("the parameters of tool `{}`", t.name)))?;
            }
            match text_json {
                Some(s) => schema::check(s).map_err(bad("response_format schema".into())),
                None => Ok(()),
            }
        }
    }
}

/// The grammars of one tokenizer: built once per engine.
pub struct Grammars {
    factory: Arc<ParserFactory>,
    format: ChatFormat,
    tool_calls: Option<u32>,
    /// Tokens that close a JSON string, object or array (they end in `"`, `}` or `]`).
    closing: Arc<Vec<bool>>,
}

/// In the last this many tokens of an answer's budget, a constrained answer is steered to an
/// end: where the grammar allows the end, it ends; else among the tokens the grammar allows,
/// only those that end in a closing quote or bracket are kept. A random-weight model otherwise never closes a string (1 token in a few hundred
/// does), and a real model that runs long would be cut; this keeps the JSON whole where it can.
pub const CLOSING_WINDOW: usize = 48;

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammars")
    }
}

impl Grammars {
    /// The grammar machinery for `tok` (`eos` ends an answer).
    pub fn new(tok: &Tokenizer, eos: u32, format: ChatFormat) -> Result<Self> {
        let env: TokEnv = Arc::new(BoraTokEnv::new(tok, eos));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| {
            EngineError::Constraint(format!("cannot start the grammar engine: {e}"))
        })?;
        factory.quiet();
        let trie = env.tok_trie();
        let closing = (0..trie.vocab_size() as u32)
            .map(|t| {
                !trie.is_special_token(t)
                    && matches!(
                        trie.token(t)
                            .iter()
                            .rev()
                            .find(|b| !b.is_ascii_whitespace()),
                        Some(b'"' | b'}' | b']')
                    )
            })
            .collect();
        Ok(Self {
            factory: Arc::new(factory),
            format,
            tool_calls: tok.specials().tool_calls,
            closing: Arc::new(closing),
        })
    }

    /// A processor factory enforcing `c` on answers of at most `budget` tokens. Errors (an
    /// unsupported schema keyword, say) come now, before the request is accepted.
    pub fn processor(&self, c: &Constraint, budget: usize) -> Result<ProcessorFactory> {
        check_schemas(c)?;
        // The compiler recurses over the grammar: on a thread of its own with a stack far
        // above what the checked limits need, whatever thread the request came from.
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("bora-grammar".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(s, || self.compile(c, budget))
                .map_err(|e| {
                    EngineError::Constraint(format!("cannot start the grammar compiler: {e}"))
                })?
                .join()
                .unwrap_or_else(|_| {
                    Err(EngineError::Constraint(
                        "the grammar compiler failed on this schema".into(),
                    ))
                })
        })
    }

    fn compile(&self, c: &Constraint, budget: usize) -> Result<ProcessorFactory> {
        let grammar = match c {
            Constraint::Json(schema) => TopLevelGrammar::from_json_schema(with_options(schema)),
            Constraint::Tools {
                tools,
                choice,
                parallel,
                text_json,
            } => TopLevelGrammar::from_lark(self.tools_lark(tools, choice, *parallel, text_json)?),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| EngineError::Constraint(e.to_string()))?;
        let template = Matcher::new(Ok(parser));
        if let Some(e) = template.get_error() {
            return Err(EngineError::Constraint(e));
        }
        let template = Arc::new(Mutex::new(template));
        let closing = self.closing.clone();
        Ok(ProcessorFactory::new(move || {
            let m = template
                .lock()
                .map(|m| m.deep_clone())
                .unwrap_or_else(|p| p.into_inner().deep_clone());
            Box::new(GrammarProcessor {
                matcher: m,
                seen: 0,
                mask: None,
                budget,
                closing: closing.clone(),
            })
        }))
    }

    /// The Lark grammar of tool calls: `[TOOL_CALLS]` (the control token in v3, its spelling
    /// in bora's v1 format) then a JSON list of `{"name", "arguments"}` objects whose
    /// arguments follow the function's schema.
    fn tools_lark(
        &self,
        tools: &[Tool],
        choice: &ToolChoice,
        parallel: bool,
        text_json: &Option<Value>,
    ) -> Result<String> {
        let chosen: Vec<&Tool> = match choice {
            ToolChoice::None => {
                return Err(EngineError::Constraint(
                    "tool_choice none allows no tool call to constrain".into(),
                ))
            }
            ToolChoice::Named(name) => {
                let t: Vec<&Tool> = tools.iter().filter(|t| &t.name == name).collect();
                if t.is_empty() {
                    return Err(EngineError::Constraint(format!(
                        "tool_choice names `{name}`, which is not among the tools"
                    )));
                }
                t
            }
            _ => tools.iter().collect(),
        };
        if chosen.is_empty() {
            return Err(EngineError::Constraint(
                "tool_choice requires a tool call, but no tools were given".into(),
            ));
        }
        let calls: Vec<Value> = chosen
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": t.name},
                        "arguments": t.parameters,
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let call_schema = with_options(&if calls.len() == 1 {
            calls[0].clone()
        } else {
            json!({"anyOf": calls})
        });
        let marker = match (self.format, self.tool_calls) {
            (ChatFormat::V3, Some(id)) => format!("<[{id}]>"),
            _ => "\"[TOOL_CALLS]\"".to_string(),
        };
        let list = if parallel {
            "\"[\" call (\", \" call)* \"]\""
        } else {
            "\"[\" call \"]\""
        };
        let mut lark = format!(
            "tool_calls: {marker} \" \" {list}\ncall: %json {}\n",
            serde_json::to_string(&call_schema).unwrap_or_default()
        );
        match choice {
            ToolChoice::Auto => {
                let text = match text_json {
                    Some(schema) => format!(
                        "%json {}",
                        serde_json::to_string(&with_options(schema)).unwrap_or_default()
                    ),
                    // Any text that does not begin like a tool call (v1 spells the marker out,
                    // so a text answer may not start with `[` there).
                    None if self.format == ChatFormat::V3 && self.tool_calls.is_some() => {
                        "TEXT".into()
                    }
                    None => "V1TEXT".into(),
                };
                lark.push_str(&format!("start: {text} | tool_calls\n"));
                lark.push_str("TEXT: /(.|\\n)*/\nV1TEXT: /( ?[^\\[ ](.|\\n)*)?/\n");
            }
            _ => lark.push_str("start: tool_calls\n"),
        }
        Ok(lark)
    }
}

/// One choice's matcher: consumes the tokens generated since the last step, then masks.
struct GrammarProcessor {
    matcher: Matcher,
    seen: usize,
    /// The mask for `seen` tokens, when `prepare` computed it.
    mask: Option<llguidance::toktrie::SimpleVob>,
    budget: usize,
    closing: Arc<Vec<bool>>,
}

impl LogitsProcessor for GrammarProcessor {
    fn needs_prepare(&self) -> bool {
        true
    }

    fn prepare(&mut self, generated: &[u32]) {
        self.consume(generated);
        self.mask = self.matcher.compute_mask_or_eos().ok();
    }

    fn process(&mut self, generated: &[u32], logits: &mut [f32]) {
        let prepared = self.seen == generated.len() && self.mask.is_some();
        self.consume(generated);
        let mask = match self.mask.take().filter(|_| prepared) {
            Some(m) => Ok(m),
            None => self.matcher.compute_mask_or_eos(),
        };
        match mask {
            Ok(mask) => {
                let eos = self.eos();
                let closing_time = self.budget.saturating_sub(generated.len()) <= CLOSING_WINDOW;
                let end_now = closing_time && mask.is_allowed(eos);
                let close_only = closing_time
                    && !end_now
                    && (0..logits.len()).any(|i| {
                        mask.is_allowed(i as TokenId) && self.closing.get(i) == Some(&true)
                    });
                if !end_now && !close_only {
                    // The common case, a word of the mask at a time: 32 tokens allowed or
                    // forbidden together need no per-token test.
                    for (w, &word) in mask.as_slice().iter().enumerate() {
                        let chunk = logits.iter_mut().skip(w * 32).take(32);
                        match word {
                            u32::MAX => {}
                            0 => chunk.for_each(|l| *l = f32::NEG_INFINITY),
                            _ => chunk.enumerate().for_each(|(b, l)| {
                                if word & (1 << b) == 0 {
                                    *l = f32::NEG_INFINITY;
                                }
                            }),
                        }
                    }
                    // Tokens past the mask's end (none when the vocabularies agree).
                    logits
                        .iter_mut()
                        .skip(mask.as_slice().len() * 32)
                        .for_each(|l| *l = f32::NEG_INFINITY);
                } else {
                    for (i, l) in logits.iter_mut().enumerate() {
                        let t = i as TokenId;
                        let keep = mask.is_allowed(t)
                            && (!end_now || t == eos)
                            && (!close_only || self.closing.get(i) == Some(&true));
                        if !keep {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            Err(_) => {
                // The matcher failed (it cannot after a token it allowed): end the answer.
                let eos = self.eos() as usize;
                for (i, l) in logits.iter_mut().enumerate() {
                    if i != eos {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
        }
    }
}

impl GrammarProcessor {
    /// Feeds the matcher the tokens generated since it last saw them.
    fn consume(&mut self, generated: &[u32]) {
        if self.seen == generated.len() {
            return;
        }
        for &t in &generated[self.seen.min(generated.len())..] {
            let _ = self.matcher.consume_token(t);
        }
        self.seen = generated.len();
        self.mask = None;
    }

    fn eos(&self) -> TokenId {
        self.matcher
            .tok_env()
            .map(|e| e.tok_trie().eos_token())
            .unwrap_or(2)
    }
}

/// The tokenizer as llguidance sees it: each token's bytes (`▁` is a space, `<0x0A>` the byte
/// it names, control tokens marked special) in a trie.
struct BoraTokEnv {
    trie: TokTrie,
}

impl BoraTokEnv {
    fn new(tok: &Tokenizer, eos: u32) -> Self {
        let n = tok.vocab_size();
        let special = tok.special_ids();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| token_bytes(tok, id, special.binary_search(&id).is_ok()))
            .collect();
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_bos = tok.specials().bos;
        let trie = TokTrie::from(&info, &words);
        Self { trie }
    }
}

/// The bytes a token stands for.
fn token_bytes(tok: &Tokenizer, id: u32, special: bool) -> Vec<u8> {
    let Some(piece) = tok.piece(id) else {
        return Vec::new();
    };
    if special {
        let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        b.extend_from_slice(piece.as_bytes());
        return b;
    }
    if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
        if let Ok(byte) = u8::from_str_radix(&piece[3..5], 16) {
            return vec![byte];
        }
    }
    piece.replace('\u{2581}', " ").into_bytes()
}

impl TokenizerEnv for BoraTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tok(v: &str) -> Tokenizer {
        Tokenizer::from_file(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/tokenizers")
                .join(format!("tokenizer.model.{v}")),
        )
        .unwrap()
    }

    /// Walks a grammar by always taking the allowed token that a seeded generator prefers,
    /// until EOS: the text it makes, for checking what the grammar admits.
    fn walk(g: &Grammars, tok: &Tokenizer, c: &Constraint, seed: u64) -> String {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut p = g.processor(c, 400).unwrap().make();
        let mut out = Vec::new();
        for _ in 0..400 {
            let mut logits: Vec<f32> = (0..tok.vocab_size()).map(|_| rng.random::<f32>()).collect();
            // Favour short tokens with quotes and brackets so that the walk ends.
            for (i, l) in logits.iter_mut().enumerate() {
                if let Some(pc) = tok.piece(i as u32) {
                    if pc.contains(['"', '}', ']']) {
                        *l += 2.0;
                    }
                }
            }
            p.process(&out, &mut logits);
            let best = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap() as u32;
            if best == 2 {
                break;
            }
            out.push(best);
        }
        let special = tok.special_ids();
        out.iter()
            .map(|&id| {
                let b = token_bytes(tok, id, special.binary_search(&id).is_ok());
                if b.first() == Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
                    tok.piece(id).unwrap()
                } else {
                    String::from_utf8_lossy(&b).into_owned()
                }
            })
            .collect()
    }

    #[test]
    fn json_schema_walks_give_valid_json() {
        let t = tok("v1");
        let g = Grammars::new(&t, 2, ChatFormat::V1).unwrap();
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 8},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
            },
            "required": ["name", "age"],
            "additionalProperties": false,
        });
        for seed in 0..5 {
            let text = walk(&g, &t, &Constraint::Json(schema.clone()), seed);
            let v: Value =
                serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let age = v["age"].as_i64().unwrap();
            assert!((0..=120).contains(&age), "{v}");
            assert!(v["name"].as_str().unwrap().chars().count() <= 8, "{v}");
        }
    }

    #[test]
    fn unsupported_schemas_are_errors_naming_the_keyword() {
        let t = tok("v1");
        let g = Grammars::new(&t, 2, ChatFormat::V1).unwrap();
        let e = g
            .processor(
                &Constraint::Json(json!({"type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}})),
                100,
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no-such-format") || e.contains("format"), "{e}");
    }

    #[test]
    fn tool_calls_use_the_v3_control_token() {
        let t = tok("v3");
        let g = Grammars::new(&t, 2, ChatFormat::V3).unwrap();
        let tools = vec![Tool {
            name: "get_weather".into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"], "additionalProperties": false}),
        }];
        let c = Constraint::Tools {
            tools,
            choice: ToolChoice::Required,
            parallel: false,
            text_json: None,
        };
        let text = walk(&g, &t, &c, 1);
        let rest = text
            .strip_prefix("[TOOL_CALLS]")
            .unwrap_or_else(|| panic!("{text:?}"));
        let v: Value =
            serde_json::from_str(rest.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(v[0]["name"], "get_weather");
        assert!(["Paris", "Rome"].contains(&v[0]["arguments"]["city"].as_str().unwrap()));
        assert_eq!(v.as_array().unwrap().len(), 1);
    }
}

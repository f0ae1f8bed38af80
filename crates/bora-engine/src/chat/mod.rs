//! Mistral's chat formats, rendered token for token as `mistral-common` 1.13 renders a chat
//! completion request in serving mode: validation (`validate`), normalization (`normalize`)
//! and the instruct tokenizers v1 and v3 (`render`). Also the parsing of what the model
//! generates into text or tool calls (`parse`).
//!
//! v1 (Mixtral 8x7B Instruct) has no tool tokens; bora renders tools for it in a documented
//! way of its own (see `render::v1_tools_prompt` and the README), where mistral-common ignores
//! them or raises.

mod error;
mod normalize;
mod parse;
pub mod pyjson;
mod render;
mod types;
mod validate;

pub use error::ChatError;
pub use parse::{new_tool_call_id, parse_output, ParsedOutput};
pub use render::{render, v1_tools_prompt, V1_TOOL_INSTRUCTIONS};
pub use types::{ChatFormat, ChatRequest, Content, Message, Tool, ToolCall};

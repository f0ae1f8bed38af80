//! bora-server: Mistral's chat API. The only crate that knows the JSON wire format.
//!
//! Today: the request wire types ([`wire`]) as the `mistralai` and `openai` SDKs send them, and
//! their conversion into the engine's [`bora_engine::chat::ChatRequest`] ([`convert`]), with
//! errors that name the offending field. The HTTP server itself is the next issue's.

pub mod convert;
pub mod wire;

pub use convert::{parse_chat_request, WireError};

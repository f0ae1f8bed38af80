//! Mistral's chat API in process, without HTTP: the request bodies the server takes and the
//! bodies it answers with, for the Python package and the C API. Requests are parsed and
//! checked exactly as `/v1/chat/completions` parses them (the same errors), and answers are
//! built from the engine's events as the server builds them, so that the same request gives
//! the same tokens either way.

use std::time::Duration;

use bora_engine::{CompletionStream, Engine, Timeout};
use serde_json::Value;

use crate::answer::{AnswerMeta, Chunks, Whole};
use crate::convert::parse_request;
use crate::error::ApiError;

/// An engine answering chat requests given as JSON bodies.
#[derive(Clone)]
pub struct LocalApi {
    engine: Engine,
    model: String,
    strict: bool,
}

impl LocalApi {
    /// The API over `engine`, whose model answers to `model` (a request may name it or leave
    /// `model` out; another name is refused as the server refuses it).
    pub fn new(engine: Engine, model: &str) -> Self {
        Self {
            engine,
            model: model.to_string(),
            strict: false,
        }
    }

    /// Refuses fields bora parses but does not honour (the server's `--strict-api`).
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Parses `body` and submits it: the request's events and what its bodies share.
    fn submit(&self, body: &str) -> Result<(CompletionStream, AnswerMeta, bool), ApiError> {
        let mut v: Value = serde_json::from_str(body)
            .map_err(|e| ApiError::bad_request(format!("the request is not JSON: {e}")))?;
        if let Some(obj) = v.as_object_mut() {
            obj.entry("model")
                .or_insert_with(|| Value::String(self.model.clone()));
        }
        let bytes = serde_json::to_vec(&v).unwrap_or_default();
        let parsed = parse_request(&bytes, self.strict)?;
        if parsed.model != self.model {
            return Err(ApiError::invalid_model(&parsed.model));
        }
        let n = parsed.completion.n;
        let events = self.engine.chat(&parsed.completion)?;
        Ok((events, AnswerMeta::new(&parsed.model, n), parsed.stream))
    }

    /// Submits a request for a whole answer (`stream` is ignored).
    pub fn complete(&self, body: &str) -> Result<Pending, ApiError> {
        let (events, meta, _) = self.submit(body)?;
        Ok(Pending {
            events,
            whole: Whole::new(meta),
        })
    }

    /// Submits a request whose answer comes as stream chunks (`stream` is ignored).
    pub fn stream(&self, body: &str) -> Result<ChunkStream, ApiError> {
        let (events, meta, _) = self.submit(body)?;
        let chunks = Chunks::new(meta);
        let queue = chunks.start().into();
        Ok(ChunkStream {
            events,
            chunks,
            queue,
        })
    }
}

/// A whole answer on its way. Dropping it cancels the generation.
pub struct Pending {
    events: CompletionStream,
    whole: Whole,
}

impl Pending {
    /// The completion body once the answer is complete; `Err(Timeout)` while it is not after
    /// waiting `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<Value, Timeout> {
        loop {
            let e = self.events.next_timeout(timeout)?;
            if self.whole.on(e) {
                return Ok(self.whole.json());
            }
        }
    }
}

/// What [`ChunkStream::next`] gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The next chunk.
    Chunk(Value),
    /// No chunk came in time; ask again.
    Waiting,
    /// The answer is complete.
    End,
}

/// A streamed answer's chunks. Dropping it cancels the generation.
pub struct ChunkStream {
    events: CompletionStream,
    chunks: Chunks,
    queue: std::collections::VecDeque<Value>,
}

impl ChunkStream {
    /// The next chunk, waiting at most `timeout` for one.
    pub fn next(&mut self, timeout: Duration) -> Next {
        loop {
            if let Some(c) = self.queue.pop_front() {
                return Next::Chunk(c);
            }
            if self.chunks.ended() {
                return Next::End;
            }
            match self.events.next_timeout(timeout) {
                Err(Timeout) => return Next::Waiting,
                Ok(e) => self.queue.extend(self.chunks.on(e.as_ref())),
            }
        }
    }
}

//! Errors of chat rendering, one variant per exception class of mistral-common, with its
//! messages; the server turns each into a 400.

/// A request mistral-common would refuse, with the same message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    /// Bad order or count of messages.
    InvalidMessageStructure(String),
    #[error("{0}")]
    /// A bad assistant message.
    InvalidAssistantMessage(String),
    #[error("{0}")]
    /// A bad tool message.
    InvalidToolMessage(String),
    #[error("{0}")]
    /// A bad system message.
    InvalidSystemPrompt(String),
    #[error("{0}")]
    /// A bad user message.
    InvalidUserMessage(String),
    #[error("{0}")]
    /// A tool with a bad name.
    InvalidTool(String),
    #[error("{0}")]
    /// A tool whose parameters are not a JSON Schema (draft 7).
    InvalidToolSchema(String),
    #[error("{0}")]
    /// A bad tool call in an assistant message.
    InvalidFunctionCall(String),
    #[error("{0}")]
    /// A request missing something required.
    InvalidRequest(String),
    #[error("{0}")]
    /// The tokenizer cannot render the request.
    Tokenizer(String),
}

impl ChatError {
    /// mistral-common's exception class for this error.
    pub fn class(&self) -> &'static str {
        match self {
            ChatError::InvalidMessageStructure(_) => "InvalidMessageStructureException",
            ChatError::InvalidAssistantMessage(_) => "InvalidAssistantMessageException",
            ChatError::InvalidToolMessage(_) => "InvalidToolMessageException",
            ChatError::InvalidSystemPrompt(_) => "InvalidSystemPromptException",
            ChatError::InvalidUserMessage(_) => "InvalidUserMessageException",
            ChatError::InvalidTool(_) => "InvalidToolException",
            ChatError::InvalidToolSchema(_) => "InvalidToolSchemaException",
            ChatError::InvalidFunctionCall(_) => "InvalidFunctionCallException",
            ChatError::InvalidRequest(_) => "InvalidRequestException",
            ChatError::Tokenizer(_) => "TokenizerException",
        }
    }
}

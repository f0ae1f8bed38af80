//! Errors of chat rendering, one variant per exception class of mistral-common, with its
//! messages; the server turns each into a 400.

/// A request mistral-common would refuse, with the same message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    InvalidMessageStructure(String),
    #[error("{0}")]
    InvalidAssistantMessage(String),
    #[error("{0}")]
    InvalidToolMessage(String),
    #[error("{0}")]
    InvalidSystemPrompt(String),
    #[error("{0}")]
    InvalidUserMessage(String),
    #[error("{0}")]
    InvalidTool(String),
    #[error("{0}")]
    InvalidToolSchema(String),
    #[error("{0}")]
    InvalidFunctionCall(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
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

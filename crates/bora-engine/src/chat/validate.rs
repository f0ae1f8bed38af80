//! mistral-common's `MistralRequestValidator` (v1) and `MistralRequestValidatorV3` in serving
//! mode, check for check and message for message (`protocol/instruct/validator.py`).

use super::types::{ChatFormat, ChatRequest, Message, Tool, ToolCall};
use super::ChatError;

/// Validates a request as mistral-common does before rendering it.
pub(crate) fn validate(format: ChatFormat, req: &ChatRequest) -> Result<(), ChatError> {
    structure(&req.messages)?;
    let last = req.messages.len().saturating_sub(1);
    for (i, m) in req.messages.iter().enumerate() {
        content(format, m, i == last)?;
    }
    req.tools.iter().try_for_each(tool)
}

fn structure(messages: &[Message]) -> Result<(), ChatError> {
    let err = |m: String| ChatError::InvalidMessageStructure(m);
    match messages {
        [] => return Err(err("Conversation must have at least one message".into())),
        [only] if !matches!(only, Message::User { .. } | Message::System { .. }) => {
            return Err(err(
                "Conversation must start with a user message or system message".into(),
            ))
        }
        [_] => {}
        [.., last] => {
            let bad_assistant = matches!(last, Message::Assistant { prefix: false, .. });
            if bad_assistant {
                return Err(err(format!(
                    "Expected last role User or Tool (or Assistant with prefix) for serving but got {}",
                    last.role()
                )));
            }
        }
    }
    for pair in messages.windows(2) {
        let (prev, cur) = (pair[0].role(), pair[1].role());
        let allowed: &[&str] = match prev {
            "system" => &["user", "assistant", "system"],
            "user" => &["assistant", "system", "user"],
            "assistant" => &["assistant", "user", "tool"],
            _ => &["assistant", "tool", "user"],
        };
        if !allowed.contains(&cur) {
            return Err(err(format!("Unexpected role '{cur}' after role '{prev}'")));
        }
    }
    // Every tool call is answered by one tool message before the next assistant message (the
    // first message is not counted, as in mistral-common).
    let mut expected: i64 = 0;
    for m in messages.iter().skip(1) {
        match m {
            Message::Tool { .. } => expected -= 1,
            Message::Assistant { tool_calls, .. } => {
                if expected != 0 {
                    return Err(err(
                        "Not the same number of function calls and responses".into()
                    ));
                }
                if let Some(calls) = tool_calls {
                    expected = calls.len() as i64;
                }
            }
            _ => {}
        }
    }
    if expected != 0 {
        return Err(err(
            "Not the same number of function calls and responses".into()
        ));
    }
    Ok(())
}

fn content(format: ChatFormat, m: &Message, is_last: bool) -> Result<(), ChatError> {
    match m {
        Message::User { .. } => Ok(()),
        Message::System { content } => match content {
            None => Err(ChatError::InvalidSystemPrompt(
                "System prompt must have content".into(),
            )),
            Some(_) => Ok(()),
        },
        Message::Assistant {
            content,
            tool_calls,
            prefix,
        } => {
            let has_content = content.as_ref().is_some_and(|c| c.is_truthy());
            let has_calls = tool_calls.as_ref().is_some_and(|c| !c.is_empty());
            if has_content == has_calls {
                return Err(ChatError::InvalidAssistantMessage(
                    "Assistant message must have either content or tool_calls, but not both."
                        .into(),
                ));
            }
            for call in tool_calls.iter().flatten() {
                tool_call(format, call)?;
            }
            if *prefix && !is_last {
                return Err(ChatError::InvalidAssistantMessage(
                    "Assistant message with prefix True must be last message".into(),
                ));
            }
            Ok(())
        }
        Message::Tool {
            tool_call_id, name, ..
        } => {
            if let Some(name) = name {
                if !is_function_name(name) {
                    return Err(ChatError::InvalidToolMessage(bad_name(name)));
                }
            }
            if format == ChatFormat::V3 {
                let Some(id) = tool_call_id else {
                    return Err(ChatError::InvalidRequest(
                        "Tool call id has to be defined.".into(),
                    ));
                };
                if !is_call_id(id) {
                    return Err(ChatError::InvalidToolMessage(bad_id(id)));
                }
            }
            Ok(())
        }
    }
}

fn tool_call(format: ChatFormat, call: &ToolCall) -> Result<(), ChatError> {
    if format == ChatFormat::V3 {
        match call.id.as_deref() {
            None | Some("null") => {
                return Err(ChatError::InvalidFunctionCall(
                    "Tool call id has to be defined in serving mode.".into(),
                ))
            }
            Some(id) if !is_call_id(id) => return Err(ChatError::InvalidFunctionCall(bad_id(id))),
            Some(_) => {}
        }
    }
    if !is_function_name(&call.name) {
        return Err(ChatError::InvalidFunctionCall(bad_name(&call.name)));
    }
    Ok(())
}

fn tool(t: &Tool) -> Result<(), ChatError> {
    if let Err(e) = jsonschema::draft7::meta::validator().validate(&t.parameters) {
        return Err(ChatError::InvalidToolSchema(format!(
            "Invalid tool schema: {e}"
        )));
    }
    if !is_function_name(&t.name) {
        return Err(ChatError::InvalidTool(bad_name(&t.name)));
    }
    Ok(())
}

fn bad_name(name: &str) -> String {
    format!(
        "Function name was {name} but must be a-z, A-Z, 0-9, or contain underscores and dashes, \
         with a maximum length of 64."
    )
}

fn bad_id(id: &str) -> String {
    format!("Tool call id was {id} but must be a-z, A-Z, 0-9, with a length of 9.")
}

/// Python's `re.match(pattern + "$", s)`: `$` also matches before one final newline.
fn python_full_match(s: &str, ok: impl Fn(&str) -> bool) -> bool {
    ok(s.strip_suffix('\n').unwrap_or(s))
}

/// `^[a-zA-Z0-9_-]{1,64}$`
pub(crate) fn is_function_name(s: &str) -> bool {
    python_full_match(s, |s| {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// `^[a-zA-Z0-9]{9}$`
pub(crate) fn is_call_id(s: &str) -> bool {
    python_full_match(s, |s| {
        s.len() == 9 && s.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

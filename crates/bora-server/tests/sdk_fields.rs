//! The newer fields of Mistral's chat request as the wire parser takes them: the logprobs
//! fields become the engine's alternatives per token, a wrong one is a 422 naming it; fields
//! asking for what bora has not (a reasoning mode, a moderation model) are ignored, or refused
//! by name under `--strict-api`; a guardrail that would block is refused in any mode.

use axum::http::StatusCode;
use bora_server::{parse_request, ApiError, ParsedRequest};
use serde_json::{json, Value};

fn parse(extra: Value, strict: bool) -> Result<ParsedRequest, ApiError> {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    parse_request(body.to_string().as_bytes(), strict)
}

fn refused(extra: Value, strict: bool) -> ApiError {
    let e = parse(extra.clone(), strict).expect_err(&extra.to_string());
    assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{extra}");
    e
}

#[test]
fn logprobs_fields_become_alternatives_per_token() {
    let c = |extra| parse(extra, true).unwrap().completion;
    let r = c(json!({"logprobs": true, "top_logprobs": 3}));
    assert_eq!((r.logprobs, r.prompt_logprobs), (Some(3), None));
    let r = c(json!({"logprobs": true, "top_logprobs": null}));
    assert_eq!(r.logprobs, Some(0));
    let r = c(json!({"logprobs": false, "prompt_logprobs": true, "top_prompt_logprobs": 2}));
    assert_eq!((r.logprobs, r.prompt_logprobs), (None, Some(2)));
    // vLLM's form: prompt_logprobs is the number of alternatives.
    let r = c(json!({"prompt_logprobs": 4}));
    assert_eq!(r.prompt_logprobs, Some(4));
    let r = c(json!({"logprobs": null, "prompt_logprobs": null, "top_logprobs": 0}));
    assert_eq!((r.logprobs, r.prompt_logprobs), (None, None));
}

#[test]
fn wrong_logprobs_fields_are_422s_naming_them() {
    for (extra, field) in [
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            json!({"logprobs": true, "top_logprobs": -1}),
            "top_logprobs",
        ),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (json!({"top_prompt_logprobs": 2}), "top_prompt_logprobs"),
        (json!({"prompt_logprobs": -1}), "prompt_logprobs"),
        (json!({"logprobs": "yes"}), "logprobs"),
    ] {
        let e = refused(extra.clone(), false);
        assert_eq!(e.detail[0]["loc"][1], field, "{extra}: {:?}", e.detail);
    }
}

#[test]
fn what_bora_has_not_is_ignored_or_refused_in_strict_mode() {
    for (extra, field) in [
        (json!({"reasoning_effort": "high"}), "reasoning_effort"),
        (json!({"prompt_mode": "reasoning"}), "prompt_mode"),
        (
            json!({"guardrails": [{"block_on_error": false,
                   "moderation_llm_v1": {"model_name": "mistral-moderation-2411",
                                         "ignore_other_categories": false, "action": "none"}}]}),
            "guardrails[0]",
        ),
    ] {
        assert!(parse(extra.clone(), false).is_ok(), "{extra}");
        let e = refused(extra.clone(), true);
        assert_eq!(e.detail[0]["loc"][1], field, "{extra}");
    }
    // What is honoured, or means nothing here, is taken in strict mode too.
    for extra in [
        json!({"reasoning_effort": "none"}),
        json!({"reasoning_effort": null, "prompt_mode": null, "guardrails": null}),
        json!({"guardrails": [{"block_on_error": false}]}),
        json!({"prompt_cache_key": "user-42", "service_tier": "standard_only"}),
        json!({"service_tier": "auto", "metadata": {"a": 1}}),
        json!({"prediction": {"type": "content", "content": ""}, "parallel_tool_calls": true}),
    ] {
        assert!(parse(extra.clone(), true).is_ok(), "{extra}");
    }
    // A closed enum.
    let e = refused(json!({"service_tier": "priority"}), false);
    assert_eq!(e.detail[0]["loc"][1], "service_tier");
    // A guardrail that would block cannot be honoured: refused whatever the mode.
    let block = json!({"guardrails": [{"moderation_llm_v2": {"action": "block"}}]});
    let e = refused(block, false);
    assert_eq!(e.detail[0]["loc"][1], "guardrails[0]");
}

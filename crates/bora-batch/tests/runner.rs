//! A job on the demo model: every line's answer equals the same request sent alone at
//! temperature 0; bad lines are error lines, not a failed job; a job resumed after a stop
//! runs only the lines it had not finished.

use std::sync::Arc;

use bora_batch::{JobStatus, LineOutcome, NewJob, Runner, Store};
use bora_engine::{Engine, EngineConfig, ModelOptions, ModelSource};
use bora_server::local::LocalApi;
use serde_json::{json, Value};

fn setup(name: &str) -> (Arc<Store>, Runner, LocalApi, std::path::PathBuf) {
    let engine = Engine::load(
        &ModelSource::Demo,
        &ModelOptions::default(),
        EngineConfig::default(),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("bora-batch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(Store::open(&dir).unwrap());
    let runner = Runner::new(store.clone(), LocalApi::new(engine.clone(), "bora-demo"), 4);
    (store, runner, LocalApi::new(engine, "bora-demo"), dir)
}

fn body(i: usize) -> Value {
    json!({"messages": [{"role": "user", "content": format!("Line {i}, please.")}],
           "max_tokens": 8, "temperature": 0})
}

/// A job of `n` plain lines with no model named.
fn plain_job(n: usize, timeout_hours: i64) -> NewJob {
    NewJob {
        endpoint: "/v1/chat/completions".into(),
        model: None,
        input_files: vec![],
        metadata: None,
        timeout_hours,
        lines: (0..n).map(|i| (None, Ok(body(i)))).collect(),
    }
}

/// The parts of a completion that do not change between runs.
fn stable(v: &Value) -> Value {
    json!({"choices": v["choices"], "usage": v["usage"]})
}

#[test]
fn every_line_is_answered_as_alone_and_bad_lines_are_error_lines() {
    let (store, runner, api, dir) = setup("lines");
    let mut lines: Vec<(Option<String>, Result<Value, Value>)> = (0..6)
        .map(|i| (Some(format!("req-{i}")), Ok(body(i))))
        .collect();
    lines.push((
        Some("other-model".into()),
        Ok(json!({"model": "gpt-4", "messages": []})),
    ));
    lines.push((Some("not-json".into()), Err(json!("line 8 is not JSON"))));
    let job = store
        .create_job(NewJob {
            endpoint: "/v1/chat/completions".into(),
            model: Some("bora-demo".into()),
            input_files: vec![],
            metadata: None,
            timeout_hours: 24,
            lines,
        })
        .unwrap();
    let mut seen = 0;
    let done = runner.run(&job.id, &mut |_| seen += 1).unwrap();
    assert_eq!(done.status, JobStatus::Success);
    assert_eq!((done.total, done.succeeded, done.failed), (8, 6, 2));
    assert!(seen > 0);
    let out =
        std::fs::read_to_string(store.content_path(done.output_file.as_ref().unwrap())).unwrap();
    let out: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out.len(), 6);
    for (i, line) in out.iter().enumerate() {
        assert_eq!(line["custom_id"], format!("req-{i}"));
        assert_eq!(line["response"]["status_code"], 200);
        let mut alone = api.complete(&body(i).to_string()).unwrap();
        let alone = alone.wait(std::time::Duration::from_secs(60)).unwrap();
        assert_eq!(
            stable(&line["response"]["body"]),
            stable(&alone),
            "line {i}"
        );
    }
    let err =
        std::fs::read_to_string(store.content_path(done.error_file.as_ref().unwrap())).unwrap();
    let err: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(err.len(), 2);
    assert_eq!(err[0]["custom_id"], "other-model");
    assert!(err[0]["response"]["status_code"].as_u64().unwrap() >= 400);
    assert!(err[0]["error"].is_object());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_resumed_job_runs_only_what_it_had_not_finished() {
    let (store, runner, _api, dir) = setup("resume");
    let job = store.create_job(plain_job(4, 24)).unwrap();
    // As if a server had finished two lines before it was killed.
    store.set_status(&job.id, JobStatus::Running).unwrap();
    for i in [0, 2] {
        store
            .finish_line(&job.id, i, &LineOutcome::Ok(json!({"before": i})))
            .unwrap();
    }
    let done = runner.run(&job.id, &mut |_| {}).unwrap();
    assert_eq!(
        (done.status, done.succeeded, done.failed),
        (JobStatus::Success, 4, 0)
    );
    let out =
        std::fs::read_to_string(store.content_path(done.output_file.as_ref().unwrap())).unwrap();
    let out: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out[0]["response"]["body"], json!({"before": 0}));
    assert_eq!(out[2]["response"]["body"], json!({"before": 2}));
    assert!(out[1]["response"]["body"]["choices"].is_array());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_job_past_its_time_ends_timeout_exceeded_with_what_it_finished() {
    let (store, runner, _api, dir) = setup("timeout");
    // No hours at all (the API takes 1 or more): its time is up before the first line.
    let job = store.create_job(plain_job(3, 0)).unwrap();
    store
        .finish_line(&job.id, 1, &LineOutcome::Ok(json!({"before": 1})))
        .unwrap();
    let done = runner.run(&job.id, &mut |_| {}).unwrap();
    assert_eq!(
        (done.status, done.total, done.completed()),
        (JobStatus::TimeoutExceeded, 3, 1)
    );
    assert!(done.completed_at.is_some());
    let out =
        std::fs::read_to_string(store.content_path(done.output_file.as_ref().unwrap())).unwrap();
    assert_eq!(out.lines().count(), 1);
    assert!(store.unfinished_jobs().unwrap().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

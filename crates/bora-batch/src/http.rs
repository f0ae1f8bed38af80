//! Mistral's files and batch-job routes (../shared/design/mistral-api-more.md §2-3), for
//! `bora_server::router_with`: the store behind them, and a worker thread that runs queued
//! jobs one after another (and, at start, those a stopped server left unfinished).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bora_server::local::LocalApi;
use bora_server::ApiError;
use serde_json::{json, Value};

use crate::runner::Runner;
use crate::store::{FileRecord, JobRecord, JobStatus, NewFile, NewJob, Store, StoreError};

/// The one endpoint a job may run.
const CHAT: &str = "/v1/chat/completions";

/// The batch service: its store, its limits, and the worker's wake-up.
pub struct BatchService {
    store: Arc<Store>,
    max_upload: usize,
    wake: (Mutex<bool>, Condvar),
}

impl BatchService {
    /// A service over `store`, taking uploads of at most `max_upload` bytes.
    pub fn new(store: Arc<Store>, max_upload: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            max_upload,
            wake: (Mutex::new(false), Condvar::new()),
        })
    }

    fn poke(&self) {
        let (lock, cv) = &self.wake;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    /// Starts the worker: once `api` gives the chat API (the model loaded), it runs every
    /// unfinished job, oldest first, then waits for the next.
    pub fn start_worker(
        self: &Arc<Self>,
        api: impl Fn() -> Option<LocalApi> + Send + 'static,
        window: usize,
    ) {
        let svc = self.clone();
        std::thread::Builder::new()
            .name("bora-batch".into())
            .spawn(move || loop {
                if let Some(api) = api() {
                    let runner = Runner::new(svc.store.clone(), api, window);
                    loop {
                        match svc.store.unfinished_jobs() {
                            Ok(jobs) => {
                                for j in jobs {
                                    if let Err(e) = runner.run(&j.id, &mut |_| {}) {
                                        let _ = svc.store.add_job_error(&j.id, &e.to_string());
                                        let _ = svc.store.set_status(&j.id, JobStatus::Failed);
                                    }
                                }
                            }
                            Err(e) => eprintln!("bora batch: {e}"),
                        }
                        svc.wait(Duration::from_secs(5));
                    }
                }
                svc.wait(Duration::from_millis(200));
            })
            .expect("the batch worker thread starts");
    }

    fn wait(&self, d: Duration) {
        let (lock, cv) = &self.wake;
        let mut woken = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !*woken {
            woken = cv
                .wait_timeout(woken, d)
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *woken = false;
    }
}

/// The routes, with their state applied.
pub fn routes(svc: Arc<BatchService>) -> Router {
    // Uploads are read whole, up to the limit and some room for the form around the file.
    let body_limit = svc.max_upload.saturating_add(1 << 20);
    Router::new()
        .route("/v1/files", post(upload).get(list_files))
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batch/jobs", post(create_job).get(list_jobs))
        .route("/v1/batch/jobs/{id}", get(get_job))
        .route("/v1/batch/jobs/{id}/cancel", post(cancel_job))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(svc)
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::internal(e.to_string())
}

fn file_json(f: &FileRecord) -> Value {
    json!({
        "id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at,
        "filename": f.filename, "purpose": f.purpose, "sample_type": f.sample_type,
        "source": f.source, "num_lines": f.num_lines, "mimetype": null, "signature": null,
        "expires_at": null, "visibility": "workspace",
    })
}

fn job_json(j: &JobRecord) -> Value {
    json!({
        "id": j.id, "object": "batch", "input_files": j.input_files, "endpoint": j.endpoint,
        "model": j.model, "agent_id": null, "metadata": j.metadata,
        "errors": j.errors.iter().map(|m| json!({"message": m, "count": 1})).collect::<Vec<_>>(),
        "status": j.status.as_str(), "created_at": j.created_at, "started_at": j.started_at,
        "completed_at": j.completed_at, "total_requests": j.total,
        "completed_requests": j.completed(), "succeeded_requests": j.succeeded,
        "failed_requests": j.failed, "output_file": j.output_file, "error_file": j.error_file,
    })
}

async fn upload(
    State(svc): State<Arc<BatchService>>,
    mut form: Multipart,
) -> Result<Json<Value>, ApiError> {
    let (mut purpose, mut file): (Option<String>, Option<(String, Bytes)>) = (None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("the upload is not a valid form: {e}")))?
    {
        match field.name() {
            Some("purpose") => purpose = field.text().await.ok(),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                let bytes = field.bytes().await.map_err(|e| {
                    ApiError::bad_request(format!("the file part could not be read: {e}"))
                })?;
                if bytes.len() > svc.max_upload {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "invalid_request_error",
                        format!(
                            "the file has {} bytes, over the limit of {} (--max-upload-mib)",
                            bytes.len(),
                            svc.max_upload
                        ),
                    ));
                }
                file = Some((name, bytes));
            }
            _ => {}
        }
    }
    let Some((name, bytes)) = file else {
        return Err(ApiError::bad_request("the upload has no `file` part").with_param("file"));
    };
    let purpose = purpose.unwrap_or_else(|| "batch".into());
    let sample_type = if purpose == "batch" {
        "batch_request"
    } else {
        "instruct"
    };
    let store = svc.store.clone();
    let rec = tokio::task::spawn_blocking(move || {
        store.add_file(NewFile {
            filename: &name,
            purpose: &purpose,
            sample_type,
            source: "upload",
            content: &bytes,
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(store_error)?;
    Ok(Json(file_json(&rec)))
}

fn number(q: &HashMap<String, String>, key: &str, default: u64) -> Result<u64, ApiError> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            ApiError::bad_request(format!("{key} must be a whole number, not {v:?}"))
                .with_param(key)
        }),
    }
}

async fn list_files(
    State(svc): State<Arc<BatchService>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (page, size) = (number(&q, "page", 0)?, number(&q, "page_size", 100)?);
    let (files, total) = svc
        .store
        .files(page, size, q.get("purpose").map(String::as_str))
        .map_err(store_error)?;
    Ok(Json(json!({
        "data": files.iter().map(file_json).collect::<Vec<_>>(),
        "object": "list",
        "total": total,
    })))
}

fn found<T>(v: Option<T>, what: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::not_found(what))
}

async fn get_file(
    State(svc): State<Arc<BatchService>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let f = found(svc.store.file(&id).map_err(store_error)?, "no such file")?;
    let mut v = file_json(&f);
    v["deleted"] = json!(false);
    Ok(Json(v))
}

async fn delete_file(
    State(svc): State<Arc<BatchService>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !svc.store.delete_file(&id).map_err(store_error)? {
        return Err(ApiError::not_found("no such file"));
    }
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}

async fn file_content(
    State(svc): State<Arc<BatchService>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    found(svc.store.file(&id).map_err(store_error)?, "no such file")?;
    let bytes = tokio::fs::read(svc.store.content_path(&id))
        .await
        .map_err(|e| ApiError::internal(format!("the file's content cannot be read: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// A JSONL file's lines as a job's: `(custom_id, body)`, a line that is not a request an error.
pub fn jsonl_lines(text: &str) -> Vec<(Option<String>, Result<Value, Value>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| match serde_json::from_str::<Value>(l) {
            Ok(v) => line_of(&v, n + 1),
            Err(e) => (
                None,
                Err(json!({"message": format!("line {}: not JSON: {e}", n + 1), "code": 400})),
            ),
        })
        .collect()
}

fn line_of(v: &Value, n: usize) -> (Option<String>, Result<Value, Value>) {
    let custom_id = v["custom_id"].as_str().map(str::to_string);
    match v.get("body") {
        Some(b) if b.is_object() => (custom_id, Ok(b.clone())),
        _ => (
            custom_id,
            Err(json!({"message": format!("line {n}: no `body` object"), "code": 400})),
        ),
    }
}

async fn create_job(
    State(svc): State<Arc<BatchService>>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let endpoint = body["endpoint"].as_str().unwrap_or_default().to_string();
    if endpoint != CHAT {
        return Err(ApiError::bad_request(format!(
            "endpoint {endpoint:?}: bora runs batch jobs on {CHAT} only"
        ))
        .with_param("endpoint"));
    }
    let files: Vec<String> = body["input_files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let inline = body["requests"].as_array();
    let lines = match (files.is_empty(), inline) {
        (false, None) => {
            let mut lines = Vec::new();
            for f in &files {
                found(
                    svc.store.file(f).map_err(store_error)?,
                    "no such input file",
                )?;
                let text = std::fs::read_to_string(svc.store.content_path(f)).map_err(|e| {
                    ApiError::bad_request(format!("input file {f} is not UTF-8 text: {e}"))
                })?;
                lines.extend(jsonl_lines(&text));
            }
            lines
        }
        (true, Some(reqs)) => reqs
            .iter()
            .enumerate()
            .map(|(n, r)| line_of(r, n + 1))
            .collect(),
        _ => {
            return Err(ApiError::bad_request(
                "a job takes either input_files or requests, one of them",
            ))
        }
    };
    let job = svc
        .store
        .create_job(NewJob {
            endpoint,
            model: body["model"].as_str().map(str::to_string),
            input_files: files,
            metadata: body.get("metadata").filter(|m| !m.is_null()).cloned(),
            timeout_hours: body["timeout_hours"].as_i64().unwrap_or(24),
            lines,
        })
        .map_err(store_error)?;
    svc.poke();
    Ok(Json(job_json(&job)))
}

async fn list_jobs(
    State(svc): State<Arc<BatchService>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let map: HashMap<String, String> = q.iter().cloned().collect();
    let (page, size) = (number(&map, "page", 0)?, number(&map, "page_size", 100)?);
    let statuses: Vec<JobStatus> = q
        .iter()
        .filter(|(k, _)| k == "status")
        .filter_map(|(_, v)| JobStatus::parse(v))
        .collect();
    let (jobs, total) = svc.store.jobs(page, size, &statuses).map_err(store_error)?;
    Ok(Json(json!({
        "data": jobs.iter().map(job_json).collect::<Vec<_>>(),
        "object": "list",
        "total": total,
    })))
}

async fn get_job(
    State(svc): State<Arc<BatchService>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let j = found(
        svc.store.job(&id).map_err(store_error)?,
        "no such batch job",
    )?;
    Ok(Json(job_json(&j)))
}

async fn cancel_job(
    State(svc): State<Arc<BatchService>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let j = found(
        svc.store.job(&id).map_err(store_error)?,
        "no such batch job",
    )?;
    if j.status.in_flight() {
        let next = if j.status == JobStatus::Queued {
            JobStatus::Cancelled
        } else {
            JobStatus::CancellationRequested
        };
        svc.store.set_status(&id, next).map_err(store_error)?;
    }
    let j = found(
        svc.store.job(&id).map_err(store_error)?,
        "no such batch job",
    )?;
    Ok(Json(job_json(&j)))
}

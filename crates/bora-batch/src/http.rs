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

use crate::records::{
    FileFilter, FileRecord, JobFilter, JobRecord, JobStatus, NewFile, NewJob, StoreError,
};
use crate::runner::Runner;
use crate::store::Store;

/// The one endpoint a job may run.
const CHAT: &str = "/v1/chat/completions";

/// The batch service: its store, its limits, the model its jobs run on, and the worker's
/// wake-up.
pub struct BatchService {
    store: Arc<Store>,
    max_upload: usize,
    model: String,
    wake: (Mutex<bool>, Condvar),
    /// Jobs that failed where the failure could not be written down (the database's disk
    /// full): the reason, shown on the job and kept from the worker until a restart.
    unrecorded: Mutex<HashMap<String, String>>,
}

impl BatchService {
    /// A service over `store` for jobs on the model named `model`, taking uploads of at most
    /// `max_upload` bytes.
    pub fn new(store: Arc<Store>, max_upload: usize, model: &str) -> Arc<Self> {
        Arc::new(Self {
            store,
            max_upload,
            model: model.to_string(),
            wake: (Mutex::new(false), Condvar::new()),
            unrecorded: Mutex::new(HashMap::new()),
        })
    }

    fn unrecorded(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.unrecorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs every unfinished job once, oldest first, and deletes expired files.
    fn run_unfinished(&self, runner: &Runner) {
        if let Err(e) = self.store.delete_expired() {
            eprintln!("bora batch: deleting expired files: {e}");
        }
        let jobs = match self.store.unfinished_jobs() {
            Ok(jobs) => jobs,
            Err(e) => return eprintln!("bora batch: {e}"),
        };
        for j in jobs {
            if self.unrecorded().contains_key(&j.id) {
                continue;
            }
            if let Err(e) = runner.run(&j.id, &mut |_| {}) {
                eprintln!("bora batch: job {} failed: {e}", j.id);
                self.unrecorded().insert(j.id.clone(), e.explain());
            }
        }
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
                        svc.run_unfinished(&runner);
                        svc.wait(Duration::from_secs(5));
                    }
                }
                svc.wait(Duration::from_millis(200));
            })
            .expect("the batch worker thread starts");
    }

    /// A job as the API shows it (with a failure the store could not record).
    fn job_json(&self, j: &JobRecord) -> Value {
        let mut v = json!({
            "id": j.id, "object": "batch", "input_files": j.input_files, "endpoint": j.endpoint,
            "model": j.model, "agent_id": null, "metadata": j.metadata,
            "errors": j.errors.iter().map(|m| json!({"message": m, "count": 1})).collect::<Vec<_>>(),
            "status": j.status.as_str(), "created_at": j.created_at, "started_at": j.started_at,
            "completed_at": j.completed_at, "total_requests": j.total,
            "completed_requests": j.completed(), "succeeded_requests": j.succeeded,
            "failed_requests": j.failed, "output_file": j.output_file, "error_file": j.error_file,
        });
        if let Some(e) = self.unrecorded().get(&j.id) {
            v["status"] = json!("FAILED");
            v["errors"] = json!([{"message": e, "count": 1}]);
        }
        v
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

/// A file's `purpose`, as the cloud's API takes it.
const PURPOSES: [&str; 4] = ["batch", "fine-tune", "ocr", "agentic_safety"];

/// The longest file name an upload may give, in bytes (what most file systems take).
const MAX_FILENAME: usize = 255;

/// The most bytes a multipart part's headers may take.
const MAX_PART_HEAD: usize = 8 << 10;

/// The most lines `GET /v1/batch/jobs/{id}?inline=true` returns in its answer (the SDK sends a
/// job's requests inline up to this many); a larger job's results are read from its output file.
const MAX_INLINE_LINES: u64 = 1000;

/// The routes, with their state applied.
pub fn routes(svc: Arc<BatchService>) -> Router {
    // Uploads are read whole, up to the limit and some room for the form around the file.
    let body_limit = svc.max_upload.saturating_add(1 << 20);
    Router::new()
        .route("/v1/files", post(upload).get(list_files))
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batch/jobs", post(create_job).get(list_jobs))
        .route("/v1/batch/jobs/{id}", get(get_job).delete(delete_job))
        .route("/v1/batch/jobs/{id}/cancel", post(cancel_job))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(svc)
}

fn store_error(e: StoreError) -> ApiError {
    if e.disk_full() {
        return ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            e.explain(),
        );
    }
    ApiError::internal(e.to_string())
}

fn file_json(f: &FileRecord) -> Value {
    json!({
        "id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at,
        "filename": f.filename, "purpose": f.purpose, "sample_type": f.sample_type,
        "source": f.source, "num_lines": f.num_lines, "mimetype": f.mimetype, "signature": null,
        "expires_at": f.expires_at, "visibility": f.visibility,
    })
}

async fn upload(
    State(svc): State<Arc<BatchService>>,
    mut form: Multipart,
) -> Result<Json<Value>, ApiError> {
    let (mut purpose, mut visibility, mut expiry) = (None, None, None);
    let mut file: Option<(String, Option<String>, Bytes)> = None;
    while let Some(field) = form.next_field().await.map_err(|e| form_error(&svc, e))? {
        let head: usize = field
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if head > MAX_PART_HEAD {
            return Err(ApiError::bad_request(format!(
                "a part's headers take {head} bytes, over the limit of {MAX_PART_HEAD}"
            )));
        }
        match field.name() {
            Some("purpose") => purpose = field.text().await.ok(),
            Some("visibility") => visibility = field.text().await.ok(),
            Some("expiry") => {
                let text = field.text().await.unwrap_or_default();
                let hours = text.trim().parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "expiry must be a whole number of hours, not {text:?}"
                    ))
                    .with_param("expiry")
                })?;
                expiry = Some(hours);
            }
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                if name.len() > MAX_FILENAME {
                    return Err(ApiError::bad_request(format!(
                        "the file's name has {} bytes, over the limit of {MAX_FILENAME}",
                        name.len()
                    ))
                    .with_param("file"));
                }
                let mimetype = field.content_type().map(str::to_string);
                let bytes = field.bytes().await.map_err(|e| form_error(&svc, e))?;
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
                file = Some((name, mimetype, bytes));
            }
            _ => {}
        }
    }
    let Some((name, mimetype, bytes)) = file else {
        return Err(ApiError::bad_request("the upload has no `file` part").with_param("file"));
    };
    let purpose = purpose.unwrap_or_else(|| "batch".into());
    if !PURPOSES.contains(&purpose.as_str()) {
        let shown: String = purpose.chars().take(64).collect();
        return Err(ApiError::bad_request(format!(
            "purpose {shown:?} is not one of {}",
            PURPOSES.join(", ")
        ))
        .with_param("purpose"));
    }
    let sample_type = if purpose == "batch" {
        "batch_request"
    } else {
        "instruct"
    };
    let visibility = visibility.unwrap_or_else(|| "workspace".into());
    let store = svc.store.clone();
    let rec = tokio::task::spawn_blocking(move || {
        store.add_file(NewFile {
            filename: &name,
            purpose: &purpose,
            sample_type,
            source: "upload",
            content: &bytes,
            mimetype: mimetype.as_deref(),
            expiry_hours: expiry,
            visibility: &visibility,
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(store_error)?;
    Ok(Json(file_json(&rec)))
}

/// A form that could not be read: over the body limit (413, naming the upload limit) or
/// malformed (400).
fn form_error(svc: &BatchService, e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "the upload is over the limit of {} bytes (--max-upload-mib)",
                svc.max_upload
            ),
        );
    }
    ApiError::bad_request(format!("the upload is not a valid form: {e}"))
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

/// Every value of a repeated query key.
fn all_of(q: &[(String, String)], key: &str) -> Vec<String> {
    q.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

async fn list_files(
    State(svc): State<Arc<BatchService>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let map: HashMap<String, String> = q.iter().cloned().collect();
    let (page, size) = (number(&map, "page", 0)?, number(&map, "page_size", 100)?);
    let filter = FileFilter {
        purpose: map.get("purpose").cloned(),
        sample_types: all_of(&q, "sample_type"),
        sources: all_of(&q, "source"),
        mimetypes: all_of(&q, "mimetypes"),
        search: map.get("search").cloned(),
    };
    let (files, total) = svc.store.files(page, size, &filter).map_err(store_error)?;
    let mut body = json!({
        "data": files.iter().map(file_json).collect::<Vec<_>>(),
        "object": "list",
    });
    if map.get("include_total").map(String::as_str) != Some("false") {
        body["total"] = json!(total);
    }
    Ok(Json(body))
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
    // A string, or an integer kept as its digits (the cloud takes both).
    let custom_id = match &v["custom_id"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(x) if x.is_i64() || x.is_u64() => Some(x.to_string()),
        other => {
            let kind = match other {
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a fraction",
                Value::Array(_) => "a list",
                _ => "an object",
            };
            return (
                None,
                Err(json!({
                    "message": format!("line {n}: custom_id must be a string or an integer, not {kind}"),
                    "code": 400
                })),
            );
        }
    };
    match v.get("body") {
        Some(b) if b.is_object() => (custom_id, Ok(b.clone())),
        _ => (
            custom_id,
            Err(json!({"message": format!("line {n}: no `body` object"), "code": 400})),
        ),
    }
}

/// A create body's field checked: `timeout_hours` a positive whole number (24 when left out),
/// `metadata` an object or null, no `agent_id`, and `model` the one served (or left out).
fn job_settings(svc: &BatchService, body: &Value) -> Result<(i64, Option<Value>), ApiError> {
    if !body["agent_id"].is_null() {
        return Err(ApiError::bad_request(
            "bora runs batch jobs on its model, not on agents: leave agent_id out",
        )
        .with_param("agent_id"));
    }
    match &body["model"] {
        Value::Null => {}
        Value::String(m) if *m == svc.model => {}
        Value::String(m) => return Err(ApiError::invalid_model(m)),
        _ => return Err(ApiError::bad_request("model must be a string").with_param("model")),
    }
    let timeout_hours = match &body["timeout_hours"] {
        Value::Null => 24,
        v => v.as_i64().filter(|&h| h > 0).ok_or_else(|| {
            ApiError::bad_request(format!(
                "timeout_hours must be a whole number of hours above 0, not {v}"
            ))
            .with_param("timeout_hours")
        })?,
    };
    let metadata = match &body["metadata"] {
        Value::Null => None,
        m @ Value::Object(_) => Some(m.clone()),
        _ => return Err(ApiError::bad_request("metadata must be an object").with_param("metadata")),
    };
    Ok((timeout_hours, metadata))
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
    let (timeout_hours, metadata) = job_settings(&svc, &body)?;
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
            metadata,
            timeout_hours,
            lines,
        })
        .map_err(store_error)?;
    svc.poke();
    Ok(Json(svc.job_json(&job)))
}

/// The list query's own keys; any other key is a metadata filter (the SDK sends `metadata`
/// exploded into the query without its name).
const JOB_QUERY_KEYS: [&str; 9] = [
    "page",
    "page_size",
    "created_by_me",
    "order_by",
    "model",
    "agent_id",
    "created_after",
    "status",
    "include_total",
];

/// An ISO-8601 time as Unix seconds: with an offset or `Z`, or without one (UTC).
fn unix_seconds(text: &str) -> Option<i64> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Some(t.as_second());
    }
    let civil = text.parse::<jiff::civil::DateTime>().ok()?;
    Some(
        civil
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_second(),
    )
}

fn job_filter(q: &[(String, String)]) -> Result<JobFilter, ApiError> {
    let map: HashMap<&str, &str> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let created_after = match map.get("created_after") {
        None => None,
        Some(t) => Some(unix_seconds(t).ok_or_else(|| {
            ApiError::bad_request(format!("created_after is not an ISO-8601 time: {t:?}"))
                .with_param("created_after")
        })?),
    };
    let oldest_first = match map.get("order_by").copied() {
        None | Some("-created") => false,
        Some("created") => true,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "order_by is created or -created, not {o:?}"
            ))
            .with_param("order_by"))
        }
    };
    let mut statuses = Vec::new();
    for s in all_of(q, "status") {
        statuses.push(JobStatus::parse(&s).ok_or_else(|| {
            ApiError::bad_request(format!("no batch job status is called {s:?}"))
                .with_param("status")
        })?);
    }
    Ok(JobFilter {
        statuses,
        model: map.get("model").map(|m| m.to_string()),
        // No job of bora's runs on an agent.
        created_after: created_after.or(map.get("agent_id").map(|_| i64::MAX)),
        metadata: q
            .iter()
            .filter(|(k, _)| !JOB_QUERY_KEYS.contains(&k.as_str()))
            .cloned()
            .collect(),
        oldest_first,
    })
}

async fn list_jobs(
    State(svc): State<Arc<BatchService>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let map: HashMap<String, String> = q.iter().cloned().collect();
    let (page, size) = (number(&map, "page", 0)?, number(&map, "page_size", 100)?);
    let filter = job_filter(&q)?;
    let (jobs, total) = svc.store.jobs(page, size, &filter).map_err(store_error)?;
    Ok(Json(json!({
        "data": jobs.iter().map(|j| svc.job_json(j)).collect::<Vec<_>>(),
        "object": "list",
        "total": total,
    })))
}

async fn get_job(
    State(svc): State<Arc<BatchService>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let j = found(
        svc.store.job(&id).map_err(store_error)?,
        "no such batch job",
    )?;
    let mut body = svc.job_json(&j);
    if q.get("inline").map(String::as_str) == Some("true") {
        if j.total > MAX_INLINE_LINES {
            return Err(ApiError::bad_request(format!(
                "the job has {} lines: inline outputs are given for jobs of at most \
                 {MAX_INLINE_LINES}; read its output_file instead",
                j.total
            ))
            .with_param("inline"));
        }
        // The lines finished so far, in the output files' envelope, in the job's order.
        let (ok, bad) = svc.store.results(&id).map_err(store_error)?;
        let mut all: Vec<Value> = ok.into_iter().chain(bad).collect();
        all.sort_by_key(line_index);
        body["outputs"] = Value::Array(all);
    }
    Ok(Json(body))
}

/// A result line's place in its job (the number ending its `id`).
fn line_index(line: &Value) -> u64 {
    line["id"]
        .as_str()
        .and_then(|id| id.rsplit('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

async fn delete_job(
    State(svc): State<Arc<BatchService>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match svc.store.delete_job(&id).map_err(store_error)? {
        None => Err(ApiError::not_found("no such batch job")),
        Some(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "the job is still in flight: cancel it, then delete it once it is CANCELLED",
        )),
        Some(true) => {
            svc.unrecorded().remove(&id);
            Ok(Json(json!({"id": id, "object": "batch", "deleted": true})))
        }
    }
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
    Ok(Json(svc.job_json(&j)))
}

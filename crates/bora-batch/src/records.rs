//! What the store keeps and gives back: files, jobs, their lines and statuses, the filters of
//! the list routes, and what can go wrong.

use serde_json::Value;

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (a full disk among others).
    #[error("the batch database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A file could not be read or written (a full disk among others).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A stored value does not parse (a database written by something else).
    #[error("the batch database holds a bad value: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The error as a job shows it: a full disk said first.
    pub fn explain(&self) -> String {
        if self.disk_full() {
            format!("the disk holding the data directory is full: {self}")
        } else {
            self.to_string()
        }
    }

    /// Whether the disk (or the file system holding the data directory) is full.
    pub fn disk_full(&self) -> bool {
        match self {
            StoreError::Db(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            StoreError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.kind() == std::io::ErrorKind::QuotaExceeded
                    || source.kind() == std::io::ErrorKind::FileTooLarge
            }
            _ => false,
        }
    }
}

/// A job's status, as Mistral's API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting to run.
    Queued,
    /// Running.
    Running,
    /// Every line has its outcome (each succeeded or failed on its own).
    Success,
    /// The job itself could not run (its output could not be written, say).
    Failed,
    /// `timeout_hours` passed first.
    TimeoutExceeded,
    /// Cancel was asked; lines in flight finish.
    CancellationRequested,
    /// Cancelled.
    Cancelled,
}

impl JobStatus {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "QUEUED",
            JobStatus::Running => "RUNNING",
            JobStatus::Success => "SUCCESS",
            JobStatus::Failed => "FAILED",
            JobStatus::TimeoutExceeded => "TIMEOUT_EXCEEDED",
            JobStatus::CancellationRequested => "CANCELLATION_REQUESTED",
            JobStatus::Cancelled => "CANCELLED",
        }
    }

    /// From the API's name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "QUEUED" => JobStatus::Queued,
            "RUNNING" => JobStatus::Running,
            "SUCCESS" => JobStatus::Success,
            "FAILED" => JobStatus::Failed,
            "TIMEOUT_EXCEEDED" => JobStatus::TimeoutExceeded,
            "CANCELLATION_REQUESTED" => JobStatus::CancellationRequested,
            "CANCELLED" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job is still to run or running (the SDK's "in flight").
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            JobStatus::Queued | JobStatus::Running | JobStatus::CancellationRequested
        )
    }
}

/// A stored file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRecord {
    /// A UUID.
    pub id: String,
    /// The name it was uploaded (or made) with.
    pub filename: String,
    /// `batch`, `fine-tune`, ...
    pub purpose: String,
    /// `batch_request`, `batch_result`, `batch_error`, ...
    pub sample_type: String,
    /// `upload` or `mistral` (made by a job).
    pub source: String,
    /// Its size.
    pub bytes: u64,
    /// Its lines (for JSONL).
    pub num_lines: Option<u64>,
    /// Unix seconds.
    pub created_at: i64,
    /// The media type it was uploaded with.
    pub mimetype: Option<String>,
    /// When it is deleted (Unix seconds), if it expires.
    pub expires_at: Option<i64>,
    /// `workspace` or `user`.
    pub visibility: String,
}

/// A file to store.
#[derive(Debug, Clone)]
pub struct NewFile<'a> {
    /// Its name.
    pub filename: &'a str,
    /// Its purpose.
    pub purpose: &'a str,
    /// Its sample type.
    pub sample_type: &'a str,
    /// Its source.
    pub source: &'a str,
    /// Its bytes.
    pub content: &'a [u8],
    /// Its media type, if known.
    pub mimetype: Option<&'a str>,
    /// Hours until it is deleted, if it expires.
    pub expiry_hours: Option<u64>,
    /// `workspace` or `user`.
    pub visibility: &'a str,
}

impl<'a> NewFile<'a> {
    /// A file made by a job (an output or error file): JSONL, kept until deleted.
    pub fn made(filename: &'a str, sample_type: &'a str, content: &'a [u8]) -> Self {
        Self {
            filename,
            purpose: "batch",
            sample_type,
            source: "mistral",
            content,
            mimetype: Some("application/jsonl"),
            expiry_hours: None,
            visibility: "workspace",
        }
    }
}

/// Which files a list shows (an empty list or `None` matches all).
#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    /// One purpose.
    pub purpose: Option<String>,
    /// Any of these sample types.
    pub sample_types: Vec<String>,
    /// Any of these sources.
    pub sources: Vec<String>,
    /// Any of these media types.
    pub mimetypes: Vec<String>,
    /// A part of the file name.
    pub search: Option<String>,
}

impl FileFilter {
    /// Whether `f` passes.
    pub fn matches(&self, f: &FileRecord) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        self.purpose.as_deref().is_none_or(|p| p == f.purpose)
            && any(&self.sample_types, &f.sample_type)
            && any(&self.sources, &f.source)
            && (self.mimetypes.is_empty()
                || f.mimetype
                    .as_deref()
                    .is_some_and(|m| any(&self.mimetypes, m)))
            && self
                .search
                .as_deref()
                .is_none_or(|s| f.filename.contains(s))
    }
}

/// Which jobs a list shows, in which order.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Any of these statuses (all when empty).
    pub statuses: Vec<JobStatus>,
    /// Jobs of this model.
    pub model: Option<String>,
    /// Jobs created at or after this (Unix seconds).
    pub created_after: Option<i64>,
    /// Metadata entries each job must have (key, value).
    pub metadata: Vec<(String, String)>,
    /// Oldest first (`order_by=created`) instead of newest first.
    pub oldest_first: bool,
}

impl JobFilter {
    /// Whether `j` passes.
    pub fn matches(&self, j: &JobRecord) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&j.status))
            && self
                .model
                .as_deref()
                .is_none_or(|m| j.model.as_deref() == Some(m))
            && self.created_after.is_none_or(|t| j.created_at >= t)
            && self.metadata.iter().all(|(k, v)| {
                j.metadata
                    .as_ref()
                    .and_then(|m| m.get(k))
                    .is_some_and(|x| x.as_str() == Some(v.as_str()))
            })
    }
}

/// A job's record.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// A UUID.
    pub id: String,
    /// `/v1/chat/completions`.
    pub endpoint: String,
    /// The model every line runs on.
    pub model: Option<String>,
    /// The input files (empty for inline requests).
    pub input_files: Vec<String>,
    /// The caller's metadata.
    pub metadata: Option<Value>,
    /// Its status.
    pub status: JobStatus,
    /// Unix seconds.
    pub created_at: i64,
    /// When it started running.
    pub started_at: Option<i64>,
    /// When it ended.
    pub completed_at: Option<i64>,
    /// Hours it may take.
    pub timeout_hours: i64,
    /// Lines in the job.
    pub total: u64,
    /// Lines that succeeded.
    pub succeeded: u64,
    /// Lines that failed.
    pub failed: u64,
    /// The output file, once written.
    pub output_file: Option<String>,
    /// The error file, once written (only where a line failed).
    pub error_file: Option<String>,
    /// Errors of the job itself (not of its lines).
    pub errors: Vec<String>,
}

impl JobRecord {
    /// Lines with an outcome.
    pub fn completed(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// A job to create: its lines are `(custom_id, body)`, the body already checked or an error
/// (a bad input line becomes an error line, never a failed job).
#[derive(Debug, Clone)]
pub struct NewJob {
    /// `/v1/chat/completions`.
    pub endpoint: String,
    /// The model.
    pub model: Option<String>,
    /// The input files.
    pub input_files: Vec<String>,
    /// The caller's metadata.
    pub metadata: Option<Value>,
    /// Hours it may take.
    pub timeout_hours: i64,
    /// `(custom_id, body or the error that the line is)`.
    pub lines: Vec<(Option<String>, std::result::Result<Value, Value>)>,
}

/// A line still to run.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingLine {
    /// Its place in the job.
    pub index: u64,
    /// The caller's id.
    pub custom_id: Option<String>,
    /// The request.
    pub body: Value,
}

/// A line's outcome: the response body, or an error with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub enum LineOutcome {
    /// The response body.
    Ok(Value),
    /// `(status_code, error)`.
    Err(u16, Value),
}

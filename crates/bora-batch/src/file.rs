//! A JSONL file of requests run with no server (`bora batch`, the Python package's
//! `Engine.batch`): the job is kept in a data directory as a server keeps its jobs, so that a
//! run stopped midway (or failed on a full disk) and started again with the same input goes on
//! where it was; at the end the answers are copied next to the caller's output path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bora_server::local::LocalApi;

use crate::records::{JobRecord, JobStatus, StoreError};
use crate::runner::{job_for_input, Runner};
use crate::store::Store;

/// What to run.
#[derive(Debug, Clone)]
pub struct FileJob {
    /// Requests, one JSON object a line: `{"custom_id": "...", "body": {chat request}}`.
    pub input: PathBuf,
    /// Where the answers go (Mistral's batch output lines); failed lines go beside it, to the
    /// same name with the extension `errors.jsonl`.
    pub output: PathBuf,
    /// Where the job is kept while it runs; by default the output path with the extension
    /// `bora-batch`, removed once the job is done.
    pub data_dir: Option<PathBuf>,
    /// Requests in flight at once.
    pub window: usize,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct FileRun {
    /// The job's final record.
    pub job: JobRecord,
    /// Lines already answered when this run began (a run that went on with a stopped job).
    pub resumed_at: u64,
    /// The error file, where a line failed.
    pub errors: Option<PathBuf>,
}

/// Why a run did not end with every line answered or failed on its own.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The input could not be read.
    #[error("cannot read {path} as UTF-8 text: {source}")]
    Input {
        /// The input.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An answer file could not be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The job's store failed before the job ran.
    #[error("the job directory {dir}: {source}")]
    Store {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The job failed midway: what it had finished is kept, and the same run goes on with it.
    #[error(
        "the job failed: {why} ({completed} of {total} requests were answered; run it again \
         to go on)"
    )]
    Failed {
        /// The reason.
        why: String,
        /// Lines with an outcome.
        completed: u64,
        /// Lines in all.
        total: u64,
    },
}

impl FileJob {
    /// The data directory used.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| self.output.with_extension("bora-batch"))
    }

    /// The error file's path.
    pub fn errors_path(&self) -> PathBuf {
        self.output.with_extension("errors.jsonl")
    }

    /// Runs the file on `api`'s model; `started` is told the job as it begins (with the lines
    /// a stopped run finished), `progress` after each batch of committed lines.
    pub fn run(
        &self,
        api: LocalApi,
        started: &mut dyn FnMut(&JobRecord),
        progress: &mut dyn FnMut(&JobRecord),
    ) -> Result<FileRun, FileError> {
        let text = std::fs::read_to_string(&self.input).map_err(|source| FileError::Input {
            path: self.input.clone(),
            source,
        })?;
        let dir = self.data_dir();
        let in_store = |source| FileError::Store {
            dir: dir.clone(),
            source,
        };
        let store = Arc::new(Store::open(&dir).map_err(in_store)?);
        let job = job_for_input(&store, &text).map_err(in_store)?;
        started(&job);
        let resumed_at = job.completed();
        let ran = Runner::new(store.clone(), api, self.window).run(&job.id, progress);
        // A failure the store could not even record (its disk full) is said all the same.
        let why = match &ran {
            Ok(done) if done.status == JobStatus::Failed => Some(done.errors.join("; ")),
            Ok(_) => None,
            Err(e) => Some(e.explain()),
        };
        let job = match (ran, why) {
            (Ok(done), None) => done,
            (_, why) => {
                let now = store.job(&job.id).ok().flatten().unwrap_or(job);
                return Err(FileError::Failed {
                    why: why.unwrap_or_default(),
                    completed: now.completed(),
                    total: now.total,
                });
            }
        };
        let copy = |id: &Option<String>, to: &Path| -> Result<bool, FileError> {
            let Some(id) = id else { return Ok(false) };
            std::fs::copy(store.content_path(id), to).map_err(|source| FileError::Output {
                path: to.to_path_buf(),
                source,
            })?;
            Ok(true)
        };
        copy(&job.output_file, &self.output)?;
        let errors = copy(&job.error_file, &self.errors_path())?.then(|| self.errors_path());
        if self.data_dir.is_none() {
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(FileRun {
            job,
            resumed_at,
            errors,
        })
    }
}

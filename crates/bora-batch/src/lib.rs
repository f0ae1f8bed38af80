#![warn(missing_docs)]
//! bora-batch: Mistral's files and batch jobs (../shared/design/mistral-api-more.md §2-3) on
//! one machine. [`Store`] keeps files and job state in a data directory: file contents as files
//! written atomically, everything else in an embedded SQLite database, each finished request
//! line committed on its own, so that a server stopped or killed mid-job resumes it without
//! redoing or losing a line.

mod file;
pub mod http;
mod records;
mod runner;
mod store;

pub use file::{FileError, FileJob, FileRun};
pub use records::{
    FileFilter, FileRecord, JobFilter, JobRecord, JobStatus, LineOutcome, NewFile, NewJob,
    PendingLine, StoreError,
};
pub use runner::{job_for_input, Runner};
pub use store::Store;

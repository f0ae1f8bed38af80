//! Runs a stored job on an engine, through the chat API in process (`bora_server::local`): each
//! line still to run is a request of batch priority, a window of them in flight at once, and
//! each outcome is committed as soon as it is known, so that a job stopped at any point goes on
//! where it was. At the end the output file (successes) and the error file (failures, where
//! there are any) are written whole, in the lines' order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bora_server::local::{LocalApi, Pending};
use serde_json::{json, Value};

use crate::records::{
    JobFilter, JobRecord, JobStatus, LineOutcome, NewFile, NewJob, PendingLine, StoreError,
};
use crate::store::Store;

/// How often a running job looks for a cancellation and for finished lines.
const POLL: Duration = Duration::from_millis(5);

/// The job of a JSONL input run with no server (`bora batch`, the Python package): the
/// unfinished job that `store` holds for the same bytes (a run that was stopped), or else a new
/// one; its lines run on whatever model runs it. A job of the same bytes that failed (a full
/// disk) is queued again, its finished lines kept. The job's metadata records the input's
/// SHA-256 as `input_sha256`.
pub fn job_for_input(store: &Store, text: &str) -> Result<JobRecord, StoreError> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let same = JobFilter {
        statuses: vec![JobStatus::Queued, JobStatus::Running, JobStatus::Failed],
        metadata: vec![("input_sha256".into(), hex.clone())],
        ..JobFilter::default()
    };
    if let Some(job) = store.jobs(0, 1, &same)?.0.pop() {
        if job.status == JobStatus::Failed {
            store.set_status(&job.id, JobStatus::Queued)?;
        }
        return Ok(job);
    }
    store.create_job(NewJob {
        endpoint: "/v1/chat/completions".into(),
        model: None,
        input_files: Vec::new(),
        metadata: Some(json!({ "input_sha256": hex })),
        timeout_hours: 24 * 365,
        lines: crate::http::jsonl_lines(text),
    })
}

/// Runs jobs of one store on one model.
pub struct Runner {
    store: Arc<Store>,
    api: LocalApi,
    window: usize,
}

impl Runner {
    /// Jobs of `store` on `api`'s model, `window` lines in flight at once.
    pub fn new(store: Arc<Store>, api: LocalApi, window: usize) -> Self {
        Self {
            store,
            api,
            window: window.max(1),
        }
    }

    /// A line's request as the engine takes it: the job's model unless the line names the
    /// same one, never streamed. A line naming another model is an error line.
    fn request(&self, job: &JobRecord, line: &PendingLine) -> Result<String, LineOutcome> {
        let mut body = line.body.clone();
        let Some(obj) = body.as_object_mut() else {
            return Err(LineOutcome::Err(
                400,
                json!({"message": "the line's body is not a JSON object", "code": 400}),
            ));
        };
        // A job without a model runs every line on this one, whatever the line names.
        let model = job.model.clone();
        match (obj.get("model").and_then(Value::as_str), model) {
            (Some(m), Some(model)) if m != model => {
                return Err(LineOutcome::Err(
                    400,
                    json!({"message": format!("the line asks for model {m:?}, the job runs {model:?}"),
                           "code": 400}),
                ))
            }
            _ => {}
        }
        obj.insert("model".into(), Value::String(self.api.model().to_string()));
        obj.remove("stream");
        Ok(body.to_string())
    }

    /// Runs job `id` until every line has its outcome, it is cancelled or its time is up;
    /// `progress` is told the job's record after each committed line. Returns the final
    /// record. Where the store fails (a full disk), the job ends `FAILED` with the reason
    /// among its errors and the lines finished so far kept; the error comes back only when
    /// even that could not be recorded.
    pub fn run(
        &self,
        id: &str,
        progress: &mut dyn FnMut(&JobRecord),
    ) -> Result<JobRecord, StoreError> {
        // Writing the output files fails the job the same way as committing a line does.
        match self
            .run_lines(id, progress)
            .and_then(|end| self.finish(id, end))
        {
            Ok(done) => Ok(done),
            Err(e) => {
                self.store
                    .add_job_error(id, &e.explain())
                    .and_then(|_| self.store.set_status(id, JobStatus::Failed))
                    .map_err(|_| e)?;
                self.record(id)
            }
        }
    }

    fn record(&self, id: &str) -> Result<JobRecord, StoreError> {
        self.store
            .job(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("no job {id}")))
    }

    /// Writes the files of a job whose lines ended in `end` and sets its final status.
    fn finish(&self, id: &str, end: JobStatus) -> Result<JobRecord, StoreError> {
        if !self.record(id)?.status.in_flight() {
            return self.record(id);
        }
        self.write_outputs(id)?;
        self.store.set_status(id, end)?;
        self.record(id)
    }

    /// Runs the job's lines; returns how they ended (`Success`, `Cancelled` or
    /// `TimeoutExceeded`).
    fn run_lines(
        &self,
        id: &str,
        progress: &mut dyn FnMut(&JobRecord),
    ) -> Result<JobStatus, StoreError> {
        let job = self.record(id)?;
        if !job.status.in_flight() {
            return Ok(job.status);
        }
        let deadline = job
            .created_at
            .saturating_add(job.timeout_hours.max(0).saturating_mul(3600));
        let timed_out = || unix_now() >= deadline;
        if job.status == JobStatus::Queued {
            self.store.set_status(id, JobStatus::Running)?;
        }
        let mut todo: VecDeque<PendingLine> = self.store.pending_lines(id)?.into();
        let mut flight: Vec<(u64, Pending)> = Vec::new();
        let mut end = JobStatus::Success;
        loop {
            if timed_out() {
                end = JobStatus::TimeoutExceeded;
                break;
            }
            // New lines go in before anything is committed, so that the engine never waits on
            // the disk.
            let mut outcomes = Vec::new();
            while flight.len() < self.window {
                let Some(line) = todo.pop_front() else { break };
                let outcome = match self.request(&job, &line) {
                    Ok(body) => match self.api.complete_batch(&body) {
                        Ok(p) => {
                            flight.push((line.index, p));
                            continue;
                        }
                        Err(e) => LineOutcome::Err(e.status.as_u16(), e.body()),
                    },
                    Err(o) => o,
                };
                outcomes.push((line.index, outcome));
            }
            let mut k = 0;
            while k < flight.len() {
                match flight[k].1.wait(Duration::ZERO) {
                    Ok(body) => outcomes.push((flight.swap_remove(k).0, outcome_of(body))),
                    Err(_) => k += 1,
                }
            }
            if outcomes.is_empty() {
                if flight.is_empty() {
                    break;
                }
                std::thread::sleep(POLL);
            } else {
                // The lines that finished together are committed together (one disk sync).
                self.store.finish_lines(id, &outcomes)?;
                progress(&self.record(id)?);
            }
            if self.record(id)?.status == JobStatus::CancellationRequested {
                break;
            }
        }
        // Dropping the answers in flight cancels their generation. A cancellation that came
        // after the last line is one still.
        drop(flight);
        if self.record(id)?.status == JobStatus::CancellationRequested {
            end = JobStatus::Cancelled;
        }
        Ok(end)
    }

    /// Writes the output file (and the error file where a line failed) and records them.
    fn write_outputs(&self, id: &str) -> Result<(), StoreError> {
        let (ok, bad) = self.store.results(id)?;
        let jsonl = |lines: &[Value]| {
            let mut s = String::new();
            for l in lines {
                s.push_str(&l.to_string());
                s.push('\n');
            }
            s
        };
        let out = self.store.add_file(NewFile::made(
            &format!("batch-{id}-output.jsonl"),
            "batch_result",
            jsonl(&ok).as_bytes(),
        ))?;
        let err = if bad.is_empty() {
            None
        } else {
            Some(self.store.add_file(NewFile::made(
                &format!("batch-{id}-error.jsonl"),
                "batch_error",
                jsonl(&bad).as_bytes(),
            ))?)
        };
        self.store
            .set_outputs(id, &out.id, err.as_ref().map(|f| f.id.as_str()))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A finished answer's outcome: a completion, or the error its choices ended with.
fn outcome_of(body: Value) -> LineOutcome {
    let failed = body["choices"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["finish_reason"] == "error"));
    if failed {
        LineOutcome::Err(500, json!({"message": "generation failed", "code": 500}))
    } else {
        LineOutcome::Ok(body)
    }
}

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

use crate::store::{JobRecord, JobStatus, LineOutcome, NewFile, PendingLine, Store, StoreError};

/// How often a running job looks for a cancellation and for finished lines.
const POLL: Duration = Duration::from_millis(5);

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

    /// Runs job `id` until every line has its outcome or it is cancelled; `progress` is told
    /// the job's record after each committed line. Returns the final record.
    pub fn run(
        &self,
        id: &str,
        progress: &mut dyn FnMut(&JobRecord),
    ) -> Result<JobRecord, StoreError> {
        let Some(job) = self.store.job(id)? else {
            return Err(StoreError::Corrupt(format!("no job {id}")));
        };
        if !job.status.in_flight() {
            return Ok(job);
        }
        self.store.set_status(id, JobStatus::Running)?;
        let mut todo: VecDeque<PendingLine> = self.store.pending_lines(id)?.into();
        let mut flight: Vec<(u64, Pending)> = Vec::new();
        let mut cancelled = false;
        loop {
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
                self.store.finish_line(id, line.index, &outcome)?;
            }
            if flight.is_empty() {
                break;
            }
            let mut finished = Vec::new();
            for (k, (_, p)) in flight.iter_mut().enumerate() {
                if let Ok(body) = p.wait(Duration::ZERO) {
                    finished.push((k, body));
                }
            }
            let progressed = !finished.is_empty();
            for (k, body) in finished.into_iter().rev() {
                let (index, _) = flight.swap_remove(k);
                self.store.finish_line(id, index, &outcome_of(body))?;
            }
            if progressed {
                if let Some(j) = self.store.job(id)? {
                    progress(&j);
                }
            } else {
                std::thread::sleep(POLL);
            }
            if self.store.job(id)?.map(|j| j.status) == Some(JobStatus::CancellationRequested) {
                // Dropping the answers in flight cancels their generation.
                flight.clear();
                cancelled = true;
                break;
            }
        }
        // A cancellation that came after the last line is one still.
        cancelled |=
            self.store.job(id)?.map(|j| j.status) == Some(JobStatus::CancellationRequested);
        if let Err(e) = self.write_outputs(id) {
            self.store.add_job_error(id, &e.to_string())?;
            self.store.set_status(id, JobStatus::Failed)?;
        } else {
            let end = if cancelled {
                JobStatus::Cancelled
            } else {
                JobStatus::Success
            };
            self.store.set_status(id, end)?;
        }
        self.store
            .job(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("no job {id}")))
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
        let out = self.store.add_file(NewFile {
            filename: &format!("batch-{id}-output.jsonl"),
            purpose: "batch",
            sample_type: "batch_result",
            source: "mistral",
            content: jsonl(&ok).as_bytes(),
        })?;
        let err = if bad.is_empty() {
            None
        } else {
            Some(self.store.add_file(NewFile {
                filename: &format!("batch-{id}-error.jsonl"),
                purpose: "batch",
                sample_type: "batch_error",
                source: "mistral",
                content: jsonl(&bad).as_bytes(),
            })?)
        };
        self.store
            .set_outputs(id, &out.id, err.as_ref().map(|f| f.id.as_str()))
    }
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

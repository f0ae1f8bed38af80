//! `bora._bora`: the engine in a Python process. Requests and answers cross as JSON in the
//! shapes of Mistral's chat API, parsed and built by `bora_server::local` exactly as the
//! server parses and builds them; `python/bora/` turns them into the `mistralai` SDK's calls
//! and objects. Every wait releases the GIL and wakes every 50 ms to let Python handle
//! signals (Ctrl-C cancels the request); dropping a stream or an unfinished answer cancels its
//! generation.

use std::sync::Mutex;
use std::time::Duration;

use bora_server::local::{ChunkStream, LocalApi, Next, Pending};
use bora_server::ApiError;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pyo3::create_exception!(
    _bora,
    BoraError,
    PyException,
    "An error of the API: `type`, `message`, `status_code`, `param`, `code`, `body` (loading a model: `type` \"load_error\")."
);

/// How long a wait lasts before Python gets to handle its signals.
const TICK: Duration = Duration::from_millis(50);

/// A `BoraError` carrying the API error's fields.
fn api_error(e: &ApiError) -> PyErr {
    Python::attach(|py| {
        let err = BoraError::new_err(e.message.clone());
        let v = err.value(py);
        let _ = v.setattr("message", &e.message);
        let _ = v.setattr("type", e.kind);
        let _ = v.setattr("status_code", e.status.as_u16());
        let _ = v.setattr("param", e.param.clone());
        let _ = v.setattr("code", e.code);
        let _ = v.setattr("body", e.body().to_string());
        err
    })
}

/// A loaded model and its serving engine.
#[pyclass(module = "bora._bora", frozen)]
struct Engine {
    api: LocalApi,
}

#[pymethods]
impl Engine {
    /// Loads the model that `options` (JSON: `bora_server::local::EngineOptions`, the CLI's
    /// model flags by name) names and starts an engine on it.
    #[new]
    fn new(py: Python<'_>, options: &str) -> PyResult<Self> {
        let api = py
            .detach(|| LocalApi::load(options))
            .map_err(|e| api_error(&e))?;
        Ok(Self { api })
    }

    /// The name answers carry as `model`.
    #[getter]
    fn name(&self) -> &str {
        self.api.model()
    }

    /// Positions of the model's context.
    #[getter]
    fn context(&self) -> usize {
        self.api.engine().context()
    }

    /// Token ids of plain text (no BOS).
    fn tokenize_text(&self, text: &str) -> PyResult<Vec<u32>> {
        self.api
            .engine()
            .tokenizer()
            .encode(text)
            .map_err(|e| api_error(&ApiError::from(e)))
    }

    /// Token ids of the prompt a chat request (JSON) renders to.
    fn tokenize_chat(&self, py: Python<'_>, body: &str) -> PyResult<Vec<u32>> {
        py.detach(|| self.api.tokenize_chat(body))
            .map_err(|e| api_error(&e))
    }

    /// The text of token ids.
    fn detokenize(&self, ids: Vec<u32>) -> PyResult<String> {
        self.api
            .engine()
            .tokenizer()
            .decode(&ids)
            .map_err(|e| api_error(&ApiError::from(e)))
    }

    /// Submits a chat request (JSON) for a whole answer.
    fn submit(&self, py: Python<'_>, body: &str) -> PyResult<Answer> {
        let pending = py
            .detach(|| self.api.complete(body))
            .map_err(|e| api_error(&e))?;
        Ok(Answer {
            pending: Mutex::new(Some(pending)),
        })
    }

    /// Submits a chat request (JSON) whose answer comes as chunks.
    fn stream(&self, py: Python<'_>, body: &str) -> PyResult<Stream> {
        let stream = py
            .detach(|| self.api.stream(body))
            .map_err(|e| api_error(&e))?;
        Ok(Stream {
            inner: Mutex::new(Some(stream)),
        })
    }

    /// Runs a JSONL file of requests as a batch job (`bora_batch::FileJob`, as `bora batch`
    /// does) at batch priority; `progress(completed, total)` is called as lines finish. Returns
    /// the job (JSON: `id`, `status`, the request counts, `resumed_at`, `output`, `errors`).
    #[pyo3(signature = (input, output, data_dir=None, window=64, progress=None))]
    fn batch(
        &self,
        py: Python<'_>,
        input: std::path::PathBuf,
        output: std::path::PathBuf,
        data_dir: Option<std::path::PathBuf>,
        window: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let job = bora_batch::FileJob {
            input,
            output,
            data_dir,
            window,
        };
        let api = self.api.clone();
        let tell = |j: &bora_batch::JobRecord| {
            if let Some(f) = &progress {
                Python::attach(|py| {
                    if let Err(e) = f.call1(py, (j.completed(), j.total)) {
                        e.print(py);
                    }
                });
            }
        };
        let ran = py.detach(|| job.run(api, &mut |j| tell(j), &mut |j| tell(j)));
        let done = ran.map_err(|e| api_error(&ApiError::internal(e.to_string())))?;
        Ok(serde_json::json!({
            "id": done.job.id,
            "status": done.job.status.as_str(),
            "total_requests": done.job.total,
            "completed_requests": done.job.completed(),
            "succeeded_requests": done.job.succeeded,
            "failed_requests": done.job.failed,
            "resumed_at": done.resumed_at,
            "output": job.output,
            "errors": done.errors,
        })
        .to_string())
    }

    /// The engine's state as of its last step: running and waiting sequences, KV blocks,
    /// prefix-cache lookups and hits, steps.
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = self.api.engine().stats();
        let d = pyo3::types::PyDict::new(py);
        d.set_item("running", s.running)?;
        d.set_item("waiting", s.waiting)?;
        d.set_item("blocks_used", s.blocks_used)?;
        d.set_item("blocks_free", s.blocks_free)?;
        d.set_item("blocks_total", s.blocks_total)?;
        d.set_item("prefix_lookups", s.prefix_lookups)?;
        d.set_item("prefix_hits", s.prefix_hits)?;
        d.set_item("steps", s.steps)?;
        Ok(d.into_any().unbind())
    }
}

/// A whole answer on its way; dropping it (or `cancel`) cancels the generation.
#[pyclass(module = "bora._bora", frozen)]
struct Answer {
    pending: Mutex<Option<Pending>>,
}

#[pymethods]
impl Answer {
    /// The completion (JSON) once complete, or None after waiting `timeout` seconds; with no
    /// timeout, waits until it is complete (Ctrl-C cancels it).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<String>> {
        let deadline = timeout.map(|t| std::time::Instant::now() + secs(t));
        loop {
            let got = py.detach(|| {
                let mut guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                match guard.as_mut() {
                    Some(p) => p.wait(TICK).ok().map(|v| Some(v.to_string())),
                    None => Some(None),
                }
            });
            match got {
                Some(Some(text)) => return Ok(Some(text)),
                Some(None) => return Err(cancelled()),
                None => {}
            }
            if let Err(e) = py.check_signals() {
                self.cancel();
                return Err(e);
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Cancels the generation (what is generated is dropped).
    fn cancel(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// A streamed answer's chunks (JSON), an iterator; dropping it (or `cancel`) cancels the
/// generation.
#[pyclass(module = "bora._bora", frozen)]
struct Stream {
    inner: Mutex<Option<ChunkStream>>,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            match self.next_chunk(py, Some(TICK.as_secs_f64()))? {
                Some(c) if c.is_empty() => {}
                other => return Ok(other),
            }
        }
    }

    /// The next chunk (JSON); `""` when none came within `timeout` seconds; None at the end.
    #[pyo3(signature = (timeout=None))]
    fn next_chunk(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<String>> {
        let deadline = timeout.map(|t| std::time::Instant::now() + secs(t));
        loop {
            let next = py.detach(|| {
                let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                guard.as_mut().map(|s| s.next(TICK))
            });
            match next {
                Some(Next::Chunk(v)) => return Ok(Some(v.to_string())),
                Some(Next::End) => {
                    self.cancel();
                    return Ok(None);
                }
                None => return Ok(None),
                Some(Next::Waiting) => {}
            }
            if let Err(e) = py.check_signals() {
                self.cancel();
                return Err(e);
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(Some(String::new()));
            }
        }
    }

    /// Cancels the generation; the iterator then ends.
    fn cancel(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn secs(t: f64) -> Duration {
    Duration::from_secs_f64(t.clamp(0.0, 1e6))
}

fn cancelled() -> PyErr {
    api_error(&ApiError::bad_request("the request was cancelled"))
}

#[pymodule]
fn _bora(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<Answer>()?;
    m.add_class::<Stream>()?;
    m.add("BoraError", m.py().get_type::<BoraError>())?;
    Ok(())
}

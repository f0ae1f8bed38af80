//! libbora: the engine in a C process (and any language that links C: Go, Swift, C#, C++).
//! Requests and answers are JSON in the shapes of Mistral's chat API, parsed and built by
//! `bora_server::local` exactly as `bora serve` parses and builds them; no socket is opened.
//!
//! Every string bora returns is the caller's to free with `bora_string_free`. A call that fails
//! returns NULL (or -1) and leaves the error, as the API's JSON error body
//! (`{"object": "error", "message", "type", "param", "code"}`), for `bora_last_error` on the
//! same thread. Handles may be used from any thread; a stream from one thread at a time.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

use bora_server::local::{ChunkStream, LocalApi, Next};
use bora_server::ApiError;

/// A loaded model and its engine.
pub struct BoraEngine {
    api: LocalApi,
}

/// A streamed answer.
pub struct BoraStream {
    inner: Mutex<Option<ChunkStream>>,
}

/// `bora_stream_next`: the next chunk was written.
pub const BORA_CHUNK: i32 = 1;
/// `bora_stream_next`: no chunk came within the timeout; call again.
pub const BORA_WAITING: i32 = 0;
/// `bora_stream_next`: the answer is complete (or was cancelled).
pub const BORA_END: i32 = -1;
/// `bora_stream_next`: the call failed (see `bora_last_error`).
pub const BORA_ERROR: i32 = -2;

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_error(e: &ApiError) {
    let body = CString::new(e.body().to_string()).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = Some(body));
}

fn clear_error() {
    LAST_ERROR.with(|l| *l.borrow_mut() = None);
}

/// Runs `f`, turning an error or a panic into the thread's last error and `failed`.
fn guarded<T>(failed: T, f: impl FnOnce() -> Result<T, ApiError>) -> T {
    clear_error();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(&e);
            failed
        }
        Err(_) => {
            set_error(&ApiError::internal("bora panicked; the call did nothing"));
            failed
        }
    }
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string that outlives the call.
unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<&'a str, ApiError> {
    if s.is_null() {
        return Err(ApiError::bad_request(format!("{what} is NULL")));
    }
    // SAFETY: non-null and NUL-terminated, by the caller's contract.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| ApiError::bad_request(format!("{what} is not UTF-8")))
}

/// A string for the caller to free with `bora_string_free`.
fn owned(s: String) -> *mut c_char {
    CString::new(s).map_or(std::ptr::null_mut(), CString::into_raw)
}

/// Loads a model and starts an engine. `options_json`: `{"model": ..., "device": "cpu",
/// "dtype", "quantize", "tokenizer", "threads", "repack", "kv_cache_dtype", "kv_cache_mib",
/// "chat_format", "deterministic", "name", "cpu_moe", "n_cpu_moe", "device_memory_mib",
/// "expert_cache", "max_model_len", "max_seqs"}`, all optional (the demo model by default);
/// `model` is anything `bora --model` takes. NULL on failure.
///
/// # Safety
/// `options_json` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bora_engine_load(options_json: *const c_char) -> *mut BoraEngine {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        let options = unsafe { text(options_json, "options_json") }?;
        let api = LocalApi::load(options)?;
        Ok(Box::into_raw(Box::new(BoraEngine { api })))
    })
}

/// Stops an engine and frees it (its streams must be freed first). NULL is ignored.
///
/// # Safety
/// `engine` is NULL or a pointer from `bora_engine_load` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn bora_engine_free(engine: *mut BoraEngine) {
    if !engine.is_null() {
        // SAFETY: from Box::into_raw in bora_engine_load, freed once, by the caller's contract.
        drop(unsafe { Box::from_raw(engine) });
    }
}

/// The engine behind a handle.
///
/// # Safety
/// `engine` is NULL or a live pointer from `bora_engine_load`.
unsafe fn engine_ref<'a>(engine: *const BoraEngine) -> Result<&'a BoraEngine, ApiError> {
    // SAFETY: the caller's contract.
    unsafe { engine.as_ref() }.ok_or_else(|| ApiError::bad_request("engine is NULL"))
}

/// The name answers carry as `model` (free with `bora_string_free`); NULL on failure.
///
/// # Safety
/// `engine` is a live pointer from `bora_engine_load`.
#[no_mangle]
pub unsafe extern "C" fn bora_engine_name(engine: *const BoraEngine) -> *mut c_char {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        let e = unsafe { engine_ref(engine) }?;
        Ok(owned(e.api.model().to_string()))
    })
}

/// Answers a chat request (`/v1/chat/completions`'s body; `model` may be left out) whole,
/// blocking until it is complete: the completion JSON, or NULL on failure.
///
/// # Safety
/// `engine` is a live pointer from `bora_engine_load`; `request_json` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bora_chat(
    engine: *const BoraEngine,
    request_json: *const c_char,
) -> *mut c_char {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        let (e, body) = unsafe { (engine_ref(engine)?, text(request_json, "request_json")?) };
        let mut pending = e.api.complete(body)?;
        loop {
            if let Ok(v) = pending.wait(Duration::from_secs(3600)) {
                return Ok(owned(v.to_string()));
            }
        }
    })
}

/// Submits a chat request whose answer comes as chunks (`bora_stream_next`); NULL on failure.
///
/// # Safety
/// `engine` is a live pointer from `bora_engine_load`; `request_json` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bora_chat_stream(
    engine: *const BoraEngine,
    request_json: *const c_char,
) -> *mut BoraStream {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        let (e, body) = unsafe { (engine_ref(engine)?, text(request_json, "request_json")?) };
        let stream = e.api.stream(body)?;
        Ok(Box::into_raw(Box::new(BoraStream {
            inner: Mutex::new(Some(stream)),
        })))
    })
}

/// Waits up to `timeout_ms` for the stream's next chunk. `BORA_CHUNK`: `*chunk` holds it (a
/// chunk of `/v1/chat/completions`'s stream; free it with `bora_string_free`); `BORA_WAITING`:
/// none yet; `BORA_END`: the answer is complete; `BORA_ERROR`: see `bora_last_error`.
///
/// # Safety
/// `stream` is a live pointer from `bora_chat_stream`, used by one thread at a time; `chunk`
/// points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn bora_stream_next(
    stream: *mut BoraStream,
    timeout_ms: u32,
    chunk: *mut *mut c_char,
) -> i32 {
    guarded(BORA_ERROR, || {
        // SAFETY: the caller's contract.
        let s =
            unsafe { stream.as_ref() }.ok_or_else(|| ApiError::bad_request("stream is NULL"))?;
        if chunk.is_null() {
            return Err(ApiError::bad_request("chunk is NULL"));
        }
        let mut guard = s.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(inner) = guard.as_mut() else {
            return Ok(BORA_END);
        };
        match inner.next(Duration::from_millis(u64::from(timeout_ms))) {
            Next::Chunk(v) => {
                // SAFETY: `chunk` is non-null and writable, by the caller's contract.
                unsafe { *chunk = owned(v.to_string()) };
                Ok(BORA_CHUNK)
            }
            Next::Waiting => Ok(BORA_WAITING),
            Next::End => {
                guard.take();
                Ok(BORA_END)
            }
        }
    })
}

/// Cancels a stream's generation (what was generated is dropped); `bora_stream_next` then
/// gives `BORA_END`.
///
/// # Safety
/// `stream` is NULL or a live pointer from `bora_chat_stream`.
#[no_mangle]
pub unsafe extern "C" fn bora_stream_cancel(stream: *mut BoraStream) {
    // SAFETY: the caller's contract.
    if let Some(s) = unsafe { stream.as_ref() } {
        s.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Frees a stream, cancelling its generation if it has not ended. NULL is ignored.
///
/// # Safety
/// `stream` is NULL or a pointer from `bora_chat_stream` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn bora_stream_free(stream: *mut BoraStream) {
    if !stream.is_null() {
        // SAFETY: from Box::into_raw in bora_chat_stream, freed once, by the caller's contract.
        drop(unsafe { Box::from_raw(stream) });
    }
}

/// The token ids of the prompt a chat request renders to, as a JSON array; NULL on failure.
///
/// # Safety
/// `engine` is a live pointer from `bora_engine_load`; `request_json` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bora_tokenize(
    engine: *const BoraEngine,
    request_json: *const c_char,
) -> *mut c_char {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        let (e, body) = unsafe { (engine_ref(engine)?, text(request_json, "request_json")?) };
        let ids = e.api.tokenize_chat(body)?;
        Ok(owned(serde_json::to_string(&ids).unwrap_or_default()))
    })
}

/// The engine's state as JSON: running and waiting sequences, KV blocks used, free and in
/// all, prefix-cache lookups and hits, steps; NULL on failure.
///
/// # Safety
/// `engine` is a live pointer from `bora_engine_load`.
#[no_mangle]
pub unsafe extern "C" fn bora_engine_stats(engine: *const BoraEngine) -> *mut c_char {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        let s = unsafe { engine_ref(engine) }?.api.engine().stats();
        Ok(owned(
            serde_json::json!({
                "running": s.running, "waiting": s.waiting, "blocks_used": s.blocks_used,
                "blocks_free": s.blocks_free, "blocks_total": s.blocks_total,
                "prefix_lookups": s.prefix_lookups, "prefix_hits": s.prefix_hits,
                "steps": s.steps,
            })
            .to_string(),
        ))
    })
}

/// Frees a string bora returned. NULL is ignored.
///
/// # Safety
/// `s` is NULL or a string from bora not yet freed.
#[no_mangle]
pub unsafe extern "C" fn bora_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: from CString::into_raw in `owned`, freed once, by the caller's contract.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// The JSON error body of the last call on this thread that failed, or NULL when it
/// succeeded; valid until the thread's next call into bora.
#[no_mangle]
pub extern "C" fn bora_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
}

/// bora's version.
#[no_mangle]
pub extern "C" fn bora_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

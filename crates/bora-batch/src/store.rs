//! The data directory: `files/<id>` holds each file's bytes (written to a temporary name,
//! synced, then renamed, so a file is whole or absent), `bora.sqlite3` the records (WAL
//! journal, synchronous writes: a commit survives a kill). A job's request lines are rows of
//! their own; finishing one updates its row and the job's counters in one transaction.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::records::{
    FileFilter, FileRecord, JobFilter, JobRecord, JobStatus, LineOutcome, NewFile, NewJob,
    PendingLine, StoreError,
};

type Result<T> = std::result::Result<T, StoreError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}
/// The data directory's store.
pub struct Store {
    dir: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    sample_type TEXT NOT NULL, source TEXT NOT NULL, bytes INTEGER NOT NULL,
    num_lines INTEGER, created_at INTEGER NOT NULL, mimetype TEXT, expires_at INTEGER,
    visibility TEXT NOT NULL DEFAULT 'workspace');
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, model TEXT, input_files TEXT NOT NULL,
    metadata TEXT, status TEXT NOT NULL, created_at INTEGER NOT NULL, started_at INTEGER,
    completed_at INTEGER, timeout_hours INTEGER NOT NULL, total INTEGER NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    output_file TEXT, error_file TEXT, errors TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS lines (
    job TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT, body TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, status_code INTEGER, result TEXT,
    PRIMARY KEY (job, idx));
";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("files"))
            .map_err(io(format!("cannot create {}", dir.display())))?;
        let conn = Connection::open(dir.join("bora.sqlite3"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every change is a
        // transaction): the connection is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a file's bytes are.
    pub fn content_path(&self, id: &str) -> PathBuf {
        self.dir.join("files").join(id)
    }

    /// Stores a file: its bytes first (whole or not at all), then its record.
    pub fn add_file(&self, f: NewFile<'_>) -> Result<FileRecord> {
        let id = uuid::Uuid::new_v4().to_string();
        let path = self.content_path(&id);
        write_atomically(&path, f.content)?;
        let rec = FileRecord {
            id,
            filename: f.filename.to_string(),
            purpose: f.purpose.to_string(),
            sample_type: f.sample_type.to_string(),
            source: f.source.to_string(),
            bytes: f.content.len() as u64,
            num_lines: Some(
                f.content
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count() as u64,
            ),
            created_at: now(),
            mimetype: f.mimetype.map(str::to_string),
            expires_at: f
                .expiry_hours
                .map(|h| now().saturating_add(h.saturating_mul(3600).min(i64::MAX as u64) as i64)),
            visibility: f.visibility.to_string(),
        };
        let res = self.db().execute(
            "INSERT INTO files VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                rec.id,
                rec.filename,
                rec.purpose,
                rec.sample_type,
                rec.source,
                rec.bytes as i64,
                rec.num_lines.map(|n| n as i64),
                rec.created_at,
                rec.mimetype,
                rec.expires_at,
                rec.visibility
            ],
        );
        if let Err(e) = res {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        Ok(rec)
    }

    /// A file's record.
    pub fn file(&self, id: &str) -> Result<Option<FileRecord>> {
        Ok(self
            .db()
            .query_row(&format!("{FILE_SELECT} WHERE id = ?1"), [id], file_row)
            .optional()?)
    }

    /// Files newest first that pass `filter`, `page_size` from `page · page_size`; and how
    /// many pass in all.
    pub fn files(
        &self,
        page: u64,
        page_size: u64,
        filter: &FileFilter,
    ) -> Result<(Vec<FileRecord>, u64)> {
        let all = {
            let db = self.db();
            let mut st = db.prepare(&format!(
                "{FILE_SELECT} ORDER BY created_at DESC, rowid DESC"
            ))?;
            let rows = st.query_map([], file_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        Ok(paged(
            all.into_iter().filter(|f| filter.matches(f)),
            page,
            page_size,
        ))
    }

    /// Deletes the files whose expiry has passed; how many.
    pub fn delete_expired(&self) -> Result<usize> {
        let ids: Vec<String> = {
            let db = self.db();
            let mut st = db.prepare("SELECT id FROM files WHERE expires_at <= ?1")?;
            let rows = st.query_map([now()], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        for id in &ids {
            self.delete_file(id)?;
        }
        Ok(ids.len())
    }

    /// Deletes a file (record and bytes); false if there was none.
    pub fn delete_file(&self, id: &str) -> Result<bool> {
        let n = self.db().execute("DELETE FROM files WHERE id = ?1", [id])?;
        if n > 0 {
            let _ = std::fs::remove_file(self.content_path(id));
        }
        Ok(n > 0)
    }

    /// Creates a job in `QUEUED` with its lines; lines that are errors already are finished.
    pub fn create_job(&self, job: NewJob) -> Result<JobRecord> {
        let id = uuid::Uuid::new_v4().to_string();
        let created = now();
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO jobs (id, endpoint, model, input_files, metadata, status, created_at,
                               timeout_hours, total)
             VALUES (?1, ?2, ?3, ?4, ?5, 'QUEUED', ?6, ?7, ?8)",
            params![
                id,
                job.endpoint,
                job.model,
                serde_json::to_string(&job.input_files).unwrap_or_default(),
                job.metadata.as_ref().map(Value::to_string),
                created,
                job.timeout_hours,
                job.lines.len() as i64
            ],
        )?;
        {
            let mut ins = tx.prepare(
                "INSERT INTO lines (job, idx, custom_id, body, done, status_code, result)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut failed = 0i64;
            for (i, (custom_id, line)) in job.lines.iter().enumerate() {
                match line {
                    Ok(body) => ins.execute(params![
                        id,
                        i as i64,
                        custom_id,
                        body.to_string(),
                        0,
                        None::<i64>,
                        None::<String>
                    ])?,
                    Err(e) => {
                        failed += 1;
                        ins.execute(params![
                            id,
                            i as i64,
                            custom_id,
                            "null",
                            1,
                            400,
                            e.to_string()
                        ])?
                    }
                };
            }
            tx.execute(
                "UPDATE jobs SET failed = ?2 WHERE id = ?1",
                params![id, failed],
            )?;
        }
        tx.commit()?;
        drop(db);
        self.job(&id)?
            .ok_or_else(|| StoreError::Corrupt("a job just created is missing".into()))
    }

    /// A job's record.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        self.db()
            .query_row(&format!("{JOB_SELECT} WHERE id = ?1"), [id], job_row)
            .optional()?
            .transpose()
    }

    /// Jobs that pass `filter` in its order (newest first by default), `page_size` from
    /// `page · page_size`, and how many pass in all.
    pub fn jobs(
        &self,
        page: u64,
        page_size: u64,
        filter: &JobFilter,
    ) -> Result<(Vec<JobRecord>, u64)> {
        let mut all: Vec<JobRecord> = {
            let db = self.db();
            let mut st = db.prepare(&format!(
                "{JOB_SELECT} ORDER BY created_at DESC, rowid DESC"
            ))?;
            let rows = st.query_map([], job_row)?;
            let mut v = Vec::new();
            for r in rows {
                v.push(r??);
            }
            v
        };
        if filter.oldest_first {
            all.reverse();
        }
        Ok(paged(
            all.into_iter().filter(|j| filter.matches(j)),
            page,
            page_size,
        ))
    }

    /// Deletes a job that is no longer in flight, with its lines (its files stay); `None` if
    /// there is no such job, `Some(false)` if it is still in flight.
    pub fn delete_job(&self, id: &str) -> Result<Option<bool>> {
        let Some(job) = self.job(id)? else {
            return Ok(None);
        };
        if job.status.in_flight() {
            return Ok(Some(false));
        }
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM lines WHERE job = ?1", [id])?;
        tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(Some(true))
    }

    /// Jobs to resume: queued, running or cancelling, oldest first.
    pub fn unfinished_jobs(&self) -> Result<Vec<JobRecord>> {
        let oldest = JobFilter {
            oldest_first: true,
            ..JobFilter::default()
        };
        let (mut jobs, _) = self.jobs(0, u64::MAX, &oldest)?;
        jobs.retain(|j| j.status.in_flight());
        Ok(jobs)
    }

    /// Sets a job's status (and its start or end time where it starts or ends).
    pub fn set_status(&self, id: &str, status: JobStatus) -> Result<()> {
        let t = now();
        let db = self.db();
        match status {
            JobStatus::Running => db.execute(
                "UPDATE jobs SET status = ?2, started_at = COALESCE(started_at, ?3) WHERE id = ?1",
                params![id, status.as_str(), t],
            )?,
            s if !s.in_flight() => db.execute(
                "UPDATE jobs SET status = ?2, completed_at = ?3 WHERE id = ?1",
                params![id, status.as_str(), t],
            )?,
            _ => db.execute(
                "UPDATE jobs SET status = ?2 WHERE id = ?1",
                params![id, status.as_str()],
            )?,
        };
        Ok(())
    }

    /// Adds an error of the job itself.
    pub fn add_job_error(&self, id: &str, message: &str) -> Result<()> {
        let db = self.db();
        let errors: String =
            db.query_row("SELECT errors FROM jobs WHERE id = ?1", [id], |r| r.get(0))?;
        let mut list: Vec<String> = serde_json::from_str(&errors).unwrap_or_default();
        list.push(message.to_string());
        db.execute(
            "UPDATE jobs SET errors = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(&list).unwrap_or_default()],
        )?;
        Ok(())
    }

    /// A job's lines still to run, in order.
    pub fn pending_lines(&self, job: &str) -> Result<Vec<PendingLine>> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT idx, custom_id, body FROM lines WHERE job = ?1 AND done = 0 ORDER BY idx",
        )?;
        let rows = st.query_map([job], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (idx, custom_id, body) = r?;
            let body = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("line {idx} of job {job}: {e}")))?;
            out.push(PendingLine {
                index: idx as u64,
                custom_id,
                body,
            });
        }
        Ok(out)
    }

    /// Records a line's outcome and counts it, in one transaction; a line already finished
    /// (a second outcome after a restart) is left as it was.
    pub fn finish_line(&self, job: &str, index: u64, outcome: &LineOutcome) -> Result<()> {
        self.finish_lines(job, &[(index, outcome.clone())])
    }

    /// Records the outcomes of several lines in one transaction (one sync of the disk): all of
    /// them or, where it fails, none.
    pub fn finish_lines(&self, job: &str, lines: &[(u64, LineOutcome)]) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        for (index, outcome) in lines {
            let (code, result, column) = match outcome {
                LineOutcome::Ok(v) => (200i64, v.to_string(), "succeeded"),
                LineOutcome::Err(code, e) => (*code as i64, e.to_string(), "failed"),
            };
            let n = tx.execute(
                "UPDATE lines SET done = 1, status_code = ?3, result = ?4
                 WHERE job = ?1 AND idx = ?2 AND done = 0",
                params![job, *index as i64, code, result],
            )?;
            if n > 0 {
                tx.execute(
                    &format!("UPDATE jobs SET {column} = {column} + 1 WHERE id = ?1"),
                    [job],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every line of a job as the output envelope `{id, custom_id, response: {status_code,
    /// body}, error}`, in order: `(succeeded lines, failed lines)`.
    pub fn results(&self, job: &str) -> Result<(Vec<Value>, Vec<Value>)> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT idx, custom_id, status_code, result FROM lines
             WHERE job = ?1 AND done = 1 ORDER BY idx",
        )?;
        let rows = st.query_map([job], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        for r in rows {
            let (idx, custom_id, code, result) = r?;
            let value: Value = result
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("line {idx} of job {job}: {e}")))?
                .unwrap_or(Value::Null);
            let code = code.unwrap_or(500);
            let custom_id = custom_id.unwrap_or_else(|| idx.to_string());
            let id = format!("batch-{job}-{idx}");
            if code < 400 {
                ok.push(serde_json::json!({"id": id, "custom_id": custom_id,
                    "response": {"status_code": code, "body": value}, "error": null}));
            } else {
                bad.push(serde_json::json!({"id": id, "custom_id": custom_id,
                    "response": {"status_code": code, "body": null}, "error": value}));
            }
        }
        Ok((ok, bad))
    }

    /// Sets a finished job's output and error files.
    pub fn set_outputs(&self, id: &str, output: &str, error: Option<&str>) -> Result<()> {
        self.db().execute(
            "UPDATE jobs SET output_file = ?2, error_file = ?3 WHERE id = ?1",
            params![id, output, error],
        )?;
        Ok(())
    }
}

/// One page of `items` and how many there are in all.
fn paged<T>(items: impl Iterator<Item = T>, page: u64, page_size: u64) -> (Vec<T>, u64) {
    let all: Vec<T> = items.collect();
    let total = all.len() as u64;
    let from = page.saturating_mul(page_size).min(total) as usize;
    let size = page_size.min(usize::MAX as u64) as usize;
    (all.into_iter().skip(from).take(size).collect(), total)
}

const FILE_SELECT: &str = "SELECT id, filename, purpose, sample_type, source, bytes, num_lines,
    created_at, mimetype, expires_at, visibility FROM files";

const JOB_SELECT: &str = "SELECT id, endpoint, model, input_files, metadata, status, created_at,
    started_at, completed_at, timeout_hours, total, succeeded, failed, output_file, error_file,
    errors FROM jobs";

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRecord> {
    Ok(FileRecord {
        id: r.get(0)?,
        filename: r.get(1)?,
        purpose: r.get(2)?,
        sample_type: r.get(3)?,
        source: r.get(4)?,
        bytes: r.get::<_, i64>(5)? as u64,
        num_lines: r.get::<_, Option<i64>>(6)?.map(|n| n as u64),
        created_at: r.get(7)?,
        mimetype: r.get(8)?,
        expires_at: r.get(9)?,
        visibility: r.get(10)?,
    })
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<JobRecord>> {
    let status: String = r.get(5)?;
    let input_files: String = r.get(3)?;
    let metadata: Option<String> = r.get(4)?;
    let errors: String = r.get(15)?;
    let parse = || -> Result<JobRecord> {
        Ok(JobRecord {
            id: r.get(0)?,
            endpoint: r.get(1)?,
            model: r.get(2)?,
            input_files: serde_json::from_str(&input_files)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            metadata: metadata
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            status: JobStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("job status {status}")))?,
            created_at: r.get(6)?,
            started_at: r.get(7)?,
            completed_at: r.get(8)?,
            timeout_hours: r.get(9)?,
            total: r.get::<_, i64>(10)? as u64,
            succeeded: r.get::<_, i64>(11)? as u64,
            failed: r.get::<_, i64>(12)? as u64,
            output_file: r.get(13)?,
            error_file: r.get(14)?,
            errors: serde_json::from_str(&errors)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        })
    };
    Ok(parse())
}

/// Writes `bytes` to `path` whole or not at all: a temporary name in the same directory,
/// synced, renamed over `path`, the directory synced.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let what = |verb: &str| format!("cannot {verb} {}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(io(what("create")))?;
    let res = f
        .write_all(bytes)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(what("write"))(e));
    }
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

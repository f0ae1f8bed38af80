//! The store on its own: files kept, listed, filtered and deleted; a job resumed after a
//! restart with each line counted once; list filters and order; deleting jobs.

use std::path::PathBuf;

use bora_batch::{FileFilter, JobFilter, JobStatus, LineOutcome, NewFile, NewJob, Store};
use serde_json::json;

fn purpose(p: &str) -> FileFilter {
    FileFilter {
        purpose: Some(p.into()),
        ..FileFilter::default()
    }
}

fn store() -> (Store, PathBuf) {
    let dir = std::env::temp_dir().join(format!("bora-batch-{}", uuid::Uuid::new_v4()));
    (Store::open(&dir).unwrap(), dir)
}

#[test]
fn files_are_stored_listed_and_deleted() {
    let (s, dir) = store();
    let f = s
        .add_file(NewFile {
            filename: "in.jsonl",
            purpose: "batch",
            sample_type: "batch_request",
            source: "upload",
            content: b"{\"a\": 1}\n{\"b\": 2}\n",
            mimetype: None,
            expiry_hours: None,
            visibility: "workspace",
        })
        .unwrap();
    assert_eq!((f.bytes, f.num_lines), (18, Some(2)));
    assert_eq!(s.file(&f.id).unwrap(), Some(f.clone()));
    assert_eq!(std::fs::read(s.content_path(&f.id)).unwrap().len(), 18);
    let (list, total) = s.files(0, 10, &purpose("batch")).unwrap();
    assert_eq!((list.len(), total), (1, 1));
    assert_eq!(s.files(0, 10, &purpose("fine-tune")).unwrap().1, 0);
    assert!(s.delete_file(&f.id).unwrap());
    assert!(!s.delete_file(&f.id).unwrap());
    assert!(!s.content_path(&f.id).exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_job_resumes_where_it_stopped_and_counts_each_line_once() {
    let (s, dir) = store();
    let job = s
        .create_job(NewJob {
            endpoint: "/v1/chat/completions".into(),
            model: Some("m".into()),
            input_files: vec![],
            metadata: Some(json!({"k": "v"})),
            timeout_hours: 24,
            lines: vec![
                (Some("a".into()), Ok(json!({"messages": []}))),
                (Some("b".into()), Err(json!("line 2 is not JSON"))),
                (None, Ok(json!({"messages": [1]}))),
            ],
        })
        .unwrap();
    assert_eq!(
        (job.total, job.failed, job.status),
        (3, 1, JobStatus::Queued)
    );
    let pending = s.pending_lines(&job.id).unwrap();
    assert_eq!(pending.iter().map(|l| l.index).collect::<Vec<_>>(), [0, 2]);
    s.set_status(&job.id, JobStatus::Running).unwrap();
    s.finish_line(&job.id, 0, &LineOutcome::Ok(json!({"x": 1})))
        .unwrap();
    // Reopened (a restart): the finished line stays finished, a second outcome is ignored.
    drop(s);
    let s = Store::open(&dir).unwrap();
    assert_eq!(s.unfinished_jobs().unwrap().len(), 1);
    assert_eq!(s.pending_lines(&job.id).unwrap().len(), 1);
    s.finish_line(&job.id, 0, &LineOutcome::Ok(json!({"x": 2})))
        .unwrap();
    s.finish_line(&job.id, 2, &LineOutcome::Err(500, json!("boom")))
        .unwrap();
    let j = s.job(&job.id).unwrap().unwrap();
    assert_eq!((j.succeeded, j.failed, j.completed()), (1, 2, 3));
    let (ok, bad) = s.results(&job.id).unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["response"]["body"]["x"], 1);
    assert_eq!(ok[0]["custom_id"], "a");
    assert_eq!(bad.len(), 2);
    assert_eq!(bad[1]["custom_id"], "2");
    s.set_status(&job.id, JobStatus::Success).unwrap();
    let j = s.job(&job.id).unwrap().unwrap();
    assert!(j.completed_at.is_some() && j.started_at.is_some());
    assert!(s.unfinished_jobs().unwrap().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

fn job(s: &Store, model: &str, metadata: serde_json::Value) -> bora_batch::JobRecord {
    s.create_job(NewJob {
        endpoint: "/v1/chat/completions".into(),
        model: Some(model.into()),
        input_files: vec![],
        metadata: Some(metadata),
        timeout_hours: 24,
        lines: vec![(None, Ok(json!({"messages": []})))],
    })
    .unwrap()
}

#[test]
fn lists_filter_by_every_key_the_sdk_sends_and_order_both_ways() {
    let (s, dir) = store();
    let a = job(&s, "m", json!({"team": "x"}));
    let b = job(&s, "m", json!({"team": "y", "k": "v"}));
    let c = job(&s, "other", json!({}));
    let ids = |f: &JobFilter| {
        s.jobs(0, 100, f)
            .unwrap()
            .0
            .into_iter()
            .map(|j| j.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&JobFilter::default()),
        [c.id.clone(), b.id.clone(), a.id.clone()]
    );
    let oldest = JobFilter {
        oldest_first: true,
        ..JobFilter::default()
    };
    assert_eq!(ids(&oldest), [a.id.clone(), b.id.clone(), c.id.clone()]);
    let by_model = JobFilter {
        model: Some("m".into()),
        ..JobFilter::default()
    };
    assert_eq!(ids(&by_model), [b.id.clone(), a.id.clone()]);
    let by_meta = JobFilter {
        metadata: vec![("team".into(), "y".into()), ("k".into(), "v".into())],
        ..JobFilter::default()
    };
    assert_eq!(ids(&by_meta), std::slice::from_ref(&b.id));
    let later = JobFilter {
        created_after: Some(a.created_at + 3600),
        ..JobFilter::default()
    };
    assert!(ids(&later).is_empty());
    let (page, total) = s.jobs(1, 2, &JobFilter::default()).unwrap();
    assert_eq!((page.len(), total), (1, 3));
    assert_eq!(page[0].id, a.id);

    // A job in flight is not deleted; a finished one is, with its lines.
    assert_eq!(s.delete_job(&a.id).unwrap(), Some(false));
    s.set_status(&a.id, JobStatus::Cancelled).unwrap();
    assert_eq!(s.delete_job(&a.id).unwrap(), Some(true));
    assert_eq!(s.delete_job(&a.id).unwrap(), None);
    assert!(s.pending_lines(&a.id).unwrap().is_empty());

    // Files: filters by sample type, source, media type and name; expired files go.
    let add = |name: &str, sample_type: &str, expiry: Option<u64>| {
        s.add_file(NewFile {
            filename: name,
            purpose: "batch",
            sample_type,
            source: "upload",
            content: b"{}\n",
            mimetype: Some("application/octet-stream"),
            expiry_hours: expiry,
            visibility: "workspace",
        })
        .unwrap()
    };
    let f1 = add("nightly.jsonl", "batch_request", None);
    add("other.jsonl", "instruct", Some(0));
    let files = |f: &FileFilter| s.files(0, 100, f).unwrap().0;
    let by_type = FileFilter {
        sample_types: vec!["batch_request".into(), "pretrain".into()],
        ..FileFilter::default()
    };
    assert_eq!(files(&by_type), std::slice::from_ref(&f1));
    let by_name = FileFilter {
        search: Some("night".into()),
        mimetypes: vec!["application/octet-stream".into()],
        ..FileFilter::default()
    };
    assert_eq!(files(&by_name), std::slice::from_ref(&f1));
    let by_mime = FileFilter {
        mimetypes: vec!["text/plain".into()],
        ..FileFilter::default()
    };
    assert!(files(&by_mime).is_empty());
    assert_eq!(s.delete_expired().unwrap(), 1);
    assert_eq!(files(&FileFilter::default()), [f1]);
    std::fs::remove_dir_all(dir).unwrap();
}

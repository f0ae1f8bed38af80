//! `bora routes` through the CLI: a JSONL of chat requests traced into Parquet (read back with
//! the parquet crate: one row per chosen expert, weights summing to 1), bad input named; and
//! `bora bench-moe --skew` under imposed routing.

use std::path::PathBuf;
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt16Type, UInt32Type, UInt8Type};
use serde_json::Value;

fn tiny() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures/tiny-mixtral")
        .display()
        .to_string()
}

fn bora(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .output()
        .expect("bora runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn requests_are_traced_into_parquet_one_row_per_choice() {
    let dir = tempfile::tempdir().unwrap();
    let reqs = dir.path().join("r.jsonl");
    let lines: Vec<String> = (0..5)
        .map(|i| {
            serde_json::json!({"custom_id": format!("r{i}"), "body": {"messages": [
                {"role": "user", "content": format!("Question number {i} about experts.")}]}})
            .to_string()
        })
        .chain(std::iter::once(
            r#"{"messages": [{"role": "user", "content": "A bare body."}]}"#.to_string(),
        ))
        .collect();
    std::fs::write(&reqs, lines.join("\n")).unwrap();
    let out = dir.path().join("t.parquet");
    let (ok, stdout, stderr) = bora(&[
        "routes",
        "--model",
        &tiny(),
        "--requests",
        reqs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--parallel",
        "3",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("of 6 sequence(s)"), "{stdout}");
    let file = std::fs::File::open(&out).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut sums: std::collections::HashMap<(u32, u32, u16), f32> = Default::default();
    let mut sequences = std::collections::BTreeSet::new();
    let mut rows = 0;
    for b in reader {
        let b = b.unwrap();
        assert_eq!(b.num_columns(), 7, "no probs column without --probs");
        let seq = b.column(0).as_primitive::<UInt32Type>();
        let pos = b.column(1).as_primitive::<UInt32Type>();
        let layer = b.column(3).as_primitive::<UInt16Type>();
        let rank = b.column(4).as_primitive::<UInt8Type>();
        let expert = b.column(5).as_primitive::<UInt16Type>();
        let weight = b.column(6).as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            assert!(rank.value(i) < 2 && expert.value(i) < 8 && layer.value(i) < 2);
            *sums
                .entry((seq.value(i), pos.value(i), layer.value(i)))
                .or_default() += weight.value(i);
            sequences.insert(seq.value(i));
            rows += 1;
        }
    }
    assert_eq!(
        sequences.into_iter().collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(rows, sums.len() * 2);
    assert!(sums.values().all(|s| (s - 1.0).abs() < 1e-5));

    // A line that is not a chat request is named.
    std::fs::write(&reqs, "{\"messages\": 3}\n").unwrap();
    let (ok, _, stderr) = bora(&[
        "routes",
        "--model",
        &tiny(),
        "--requests",
        reqs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("line 1"), "{stderr}");
}

#[test]
fn bench_moe_times_the_block_under_imposed_routing() {
    let (ok, stdout, stderr) = bora(&[
        "bench-moe",
        "--shape",
        "demo",
        "--skew",
        "uniform,hot",
        "--tokens",
        "1,32",
        "--iters",
        "1",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    // One hot expert: every token's choice has expert 0.
    let hot = runs
        .iter()
        .find(|r| r["skew"] == "one hot expert" && r["tokens"] == 32)
        .unwrap();
    assert_eq!(hot["hottest_expert_tokens"], 32);
    assert!(hot["vs_uniform"].as_f64().unwrap() > 0.0);
    let (ok, _, stderr) = bora(&["bench-moe", "--shape", "demo", "--skew", "zipf"]);
    assert!(
        !ok && stderr.contains("use uniform, hot or trace:"),
        "{stderr}"
    );
}

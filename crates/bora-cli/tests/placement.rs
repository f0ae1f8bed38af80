//! The placement flags through the CLI: `bora inspect` plans a load onto a GPU of a given size
//! without loading, and `bora bench` reports where routed tokens were computed and the expert
//! cache's hit rate (candle's CPU device standing in for the GPU).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures")
        .join(name)
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
fn inspect_plans_a_gpu_of_a_given_size() {
    let model = fixture("gguf/tiny-Q8_0.gguf");
    // Large enough for everything: no expert on the host.
    let (ok, out, err) = bora(&["inspect", &model, "--device-memory-mib", "64", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let plan = &v["plan"];
    assert_eq!(plan["host_expert_layers"], serde_json::json!([]));
    assert_eq!(plan["device"], "a GPU of 64 MiB");
    assert!(plan["left_bytes"].as_u64().unwrap() > 0);
    // --cpu-moe: both layers' experts on the host, and the text names them.
    let (ok, out, err) = bora(&["inspect", &model, "--device-memory-mib", "64", "--cpu-moe"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("host memory: experts of layers 0-1 (2 of 2)"),
        "{out}"
    );
    assert!(out.contains("tokens/s at batch 1"), "{out}");
    // Without a device or a size, no plan.
    let (ok, out, _) = bora(&["inspect", &model, "--json"]);
    assert!(ok);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["plan"].is_null());
    // Too small: the error shows the plan.
    let (ok, _, err) = bora(&["inspect", &model, "--device-memory-mib", "1"]);
    assert!(!ok);
    assert!(
        err.contains("does not fit") && err.contains("plan for"),
        "{err}"
    );
}

#[test]
fn bench_reports_the_split_and_the_cache() {
    let common = [
        "bench",
        "--model",
        "random:demo",
        "--quantize",
        "q8_0",
        "--dtype",
        "f32",
        "--stand-in",
        "--prompt-len",
        "16",
        "--gen-len",
        "8",
        "--batch",
        "1,2",
        "--json",
    ];
    let run = |extra: &[&str]| -> Value {
        let args: Vec<&str> = common.iter().chain(extra).copied().collect();
        let (ok, out, err) = bora(&args);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let v = run(&["--n-cpu-moe", "2"]);
    let p = &v["placement"];
    assert_eq!(p["host_expert_layers"], serde_json::json!([0, 1]));
    // Two of the demo's four layers on the "GPU": half of the routed tokens.
    assert!((p["routed_on_device_share"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert!(p["expert_cache"].is_null());
    let v = run(&[
        "--cpu-moe",
        "--expert-cache",
        "lru",
        "--expert-cache-mib",
        "1",
    ]);
    let c = &v["placement"]["expert_cache"];
    let (hits, lookups) = (c["hits"].as_u64().unwrap(), c["lookups"].as_u64().unwrap());
    assert!(hits > 0 && hits < lookups, "{c}");
    assert!(c["moves"].as_u64().unwrap() > 0 && c["resident"].as_u64().unwrap() > 0);
    let share = v["placement"]["routed_on_device_share"].as_f64().unwrap();
    assert!((share - hits as f64 / lookups as f64).abs() < 1e-9);
    // On the CPU path the flags change nothing.
    let (ok, out, err) = bora(&[
        "bench",
        "--model",
        "random:demo",
        "--cpu-moe",
        "--prompt-len",
        "8",
        "--gen-len",
        "2",
        "--batch",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["placement"]["host_expert_layers"], serde_json::json!([]));
}

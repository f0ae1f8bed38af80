//! The `bora` binary, run as a user runs it, on the committed fixtures.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures")
        .join(name)
}

fn bora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .output()
        .expect("bora runs")
}

fn ok(args: &[&str]) -> String {
    let out = bora(args);
    assert!(
        out.status.success(),
        "bora {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(args: &[&str]) -> String {
    let out = bora(args);
    assert!(!out.status.success(), "bora {args:?} succeeded");
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn inspect_reports_shapes_counts_and_size() {
    let m = fixture("tiny-mixtral");
    let out = ok(&["inspect", m.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["architecture"], "MixtralForCausalLM");
    assert_eq!(v["expert_layout"], "per-expert");
    assert_eq!(v["files"], 2);
    // 2 layers of (attention 16·(16+8+8) + 16·16, 8 experts of 3·16·48, router 8·16, norms 2·16),
    // embedding and LM head 32000·16 each, final norm 16.
    let layer = 16 * 32 + 256 + 8 * 3 * 16 * 48 + 8 * 16 + 32;
    assert_eq!(v["parameters"], 2 * layer + 2 * 32000 * 16 + 16);
    let active = 16 * 32 + 256 + 2 * 3 * 16 * 48 + 8 * 16 + 32;
    assert_eq!(v["active_parameters"], 2 * active + 32000 * 16 + 32);
    let size: u64 = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    .iter()
    .map(|f| std::fs::metadata(m.join(f)).unwrap().len())
    .sum();
    assert_eq!(v["size_bytes"], size);
    assert!(v["tensors"].as_array().unwrap().iter().any(|t| t["name"]
        == "model.layers.0.block_sparse_moe.gate.weight"
        && t["dtype"] == "bf16"
        && t["shape"] == serde_json::json!([8, 16])));
    let text = ok(&["inspect", fixture("tiny-mixtral-fused").to_str().unwrap()]);
    assert!(
        text.contains("fused experts") && text.contains("6 per layer, 3 per token"),
        "{text}"
    );
}

#[test]
fn run_prints_the_greedy_completion() {
    let m = fixture("tiny-mixtral");
    let out = ok(&[
        "run",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "The quick brown fox",
        "--raw",
        "--max-tokens",
        "11",
        "--dtype",
        "f32",
    ]);
    // transformers' 11 greedy tokens (reference.safetensors, computed in float32) after the
    // prompt, as sentencepiece decodes them. In float32 as transformers ran: in the checkpoint's
    // bf16, a CPU with AVX512_BF16 rounds activations to bf16 (as llama.cpp does), and the
    // random model's near-ties then go either way.
    assert_eq!(
        out,
        "The quick brown foxacker厂!board Naucket Power habíaSPE Sin teams\n"
    );
    let seeded = |s: &str| {
        ok(&[
            "run",
            "--model",
            m.to_str().unwrap(),
            "--prompt",
            "Hi",
            "--raw",
            "--max-tokens",
            "8",
            "--temperature",
            "1",
            "--seed",
            s,
        ])
    };
    assert_eq!(seeded("5"), seeded("5"));
}

#[test]
fn run_in_chat_mode_answers_the_rendered_prompt() {
    let m = fixture("tiny-mixtral");
    let out = bora(&[
        "run",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "Hi",
        "--system",
        "Be brief",
        "--max-tokens",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    // BOS + "[INST] Be brief\n\nHi [/INST]" in the v1 format of this tokenizer: 13 tokens.
    assert!(err.contains("[13 prompt tokens, 5 generated"), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.starts_with(' ') && text.len() > 1, "{text:?}");
}

#[test]
fn tokenize_prints_ids_of_text_and_chat_requests() {
    let v3 = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/tokenizers/tokenizer.model.v3");
    let v3 = v3.to_str().unwrap();
    let out = ok(&[
        "tokenize",
        "--model",
        v3,
        "--text",
        "Hello [INST]",
        "--pieces",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ids"], serde_json::json!([23325, 1501, 17057, 29561]));
    assert_eq!(v["pieces"][1], "▁[");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("req.json");
    std::fs::write(&f, r#"{"model": "m", "messages": [{"role": "user", "content": "Hello, who are you?"}], "stream": false}"#).unwrap();
    // mistral-common's ids for this request (v3 from its tokenizer file, v1 from the fixture's
    // tokenizer.json found in the model directory).
    let out = ok(&[
        "tokenize",
        "--model",
        v3,
        "--chat-json",
        f.to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), "[1,3,23325,29493,1461,1228,1136,29572,4]");
    let m = fixture("tiny-mixtral");
    let out = ok(&[
        "tokenize",
        "--model",
        m.to_str().unwrap(),
        "--chat-json",
        f.to_str().unwrap(),
    ]);
    assert_eq!(
        out.trim(),
        "[1,733,16289,28793,22557,28725,693,460,368,28804,733,28748,16289,28793]"
    );
    std::fs::write(&f, r#"{"model": "m", "messages": []}"#).unwrap();
    let e = err(&[
        "tokenize",
        "--model",
        v3,
        "--chat-json",
        f.to_str().unwrap(),
    ]);
    assert!(
        e.contains("InvalidMessageStructureException: Conversation must have at least one message"),
        "{e}"
    );
    std::fs::write(
        &f,
        r#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#,
    )
    .unwrap();
    let e = err(&[
        "tokenize",
        "--model",
        v3,
        "--chat-json",
        f.to_str().unwrap(),
    ]);
    assert!(e.contains("robot"), "{e}");
}

#[test]
fn perplexity_prints_json() {
    let m = fixture("tiny-mixtral");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.txt");
    std::fs::write(&f, "The quick brown fox jumps over the lazy dog.").unwrap();
    let out = ok(&[
        "perplexity",
        "--model",
        m.to_str().unwrap(),
        "--file",
        f.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (n, nll, ppl) = (
        v["tokens"].as_u64().unwrap(),
        v["nll"].as_f64().unwrap(),
        v["ppl"].as_f64().unwrap(),
    );
    assert_eq!(
        n, 12,
        "BOS + 12 tokens (sentencepiece's count), all but BOS predicted"
    );
    assert!(((nll / n as f64).exp() - ppl).abs() < 1e-6 * ppl);
    // A random model is about as good as chance over 32000 tokens, give or take a lot.
    assert!(ppl > 100.0, "{ppl}");
}

/// `bora perplexity` on the text of a reference prompt gives the perplexity of transformers'
/// logits for it (the fixture's reference outputs), to float rounding.
#[test]
fn perplexity_matches_transformers_logits() {
    let m = fixture("tiny-mixtral");
    let r = bora_tests::Reference::load("tiny-mixtral");
    let tok = bora_engine::Tokenizer::from_file(&m.join("tokenizer.json")).unwrap();
    let (ids, logits) = (r.ids(0), r.logits(0));
    assert_eq!(ids[0], 1, "the reference prompt starts with BOS");
    let text = tok.decode(&ids[1..]).unwrap();
    assert_eq!(
        tok.encode(&text).unwrap(),
        ids[1..],
        "{text:?} does not round-trip"
    );
    // The mean negative log-likelihood of each next token under transformers' logits.
    let nll: f64 = (1..ids.len())
        .map(|i| {
            let row = &logits[i - 1];
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let z = row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            z - row[ids[i] as usize] as f64
        })
        .sum();
    let want = (nll / (ids.len() - 1) as f64).exp();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p0.txt");
    std::fs::write(&f, &text).unwrap();
    // In float32 as transformers ran, within 0.1%; in the checkpoint's bf16 (activations
    // rounded to bf16 where the CPU has AVX512_BF16), within 2%.
    for (dtype, tolerance) in [("f32", 1e-3), ("bf16", 2e-2)] {
        let out = ok(&[
            "perplexity",
            "--model",
            m.to_str().unwrap(),
            "--file",
            f.to_str().unwrap(),
            "--json",
            "--dtype",
            dtype,
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["tokens"].as_u64().unwrap() as usize, ids.len() - 1);
        let got = v["ppl"].as_f64().unwrap();
        assert!(
            (got - want).abs() < tolerance * want,
            "{dtype}: bora {got}, transformers {want}"
        );
    }
}

#[test]
fn errors_are_one_clear_line() {
    let m = fixture("tiny-mixtral");
    let m = m.to_str().unwrap();
    let e = err(&["run", "--model", "/no/such/dir", "--prompt", "x", "--raw"]);
    assert!(e.contains("/no/such/dir"), "{e}");
    let e = err(&[
        "run", "--model", m, "--prompt", "x", "--raw", "--device", "cuda",
    ]);
    assert!(e.contains("without the `cuda` feature"), "{e}");
    let e = err(&[
        "run", "--model", m, "--prompt", "x", "--raw", "--dtype", "int3",
    ]);
    assert!(e.contains("int3"), "{e}");
    let e = err(&[
        "run",
        "--model",
        m,
        "--prompt",
        "x",
        "--raw",
        "--temperature=-2",
    ]);
    assert!(e.contains("temperature"), "{e}");
    let e = err(&["perplexity", "--model", m, "--file", "/no/file.txt"]);
    assert!(e.contains("/no/file.txt"), "{e}");
    let e = err(&["inspect", "/no/such/dir"]);
    assert!(e.contains("/no/such/dir"), "{e}");
}

fn bora_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env_remove("HF_HUB_OFFLINE");
    cmd.output().expect("bora runs")
}

#[test]
fn bench_reports_throughput_ttft_memory_and_routing() {
    let m = fixture("tiny-mixtral");
    let out = ok(&[
        "bench",
        "--model",
        m.to_str().unwrap(),
        "--prompt-len",
        "16",
        "--gen-len",
        "6",
        "--batch",
        "1,3",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bench --json prints JSON");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (r, batch) in runs.iter().zip([1, 3]) {
        assert_eq!(r["batch"], batch);
        assert!(r["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["ttft_ms"]["max"].as_f64().unwrap() >= r["ttft_ms"]["median"].as_f64().unwrap());
    }
    assert!(v["peak_memory_bytes"].as_u64().unwrap() > 1 << 20);
    let experts = v["experts"].as_array().unwrap();
    assert_eq!(experts.len(), 2, "one entry per layer");
    for layer in experts {
        let share: Vec<f64> = layer["share"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap())
            .collect();
        assert_eq!(share.len(), 8);
        assert!((share.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{share:?}");
        assert!(layer["imbalance"].as_f64().unwrap() >= 1.0);
    }
    let table = ok(&[
        "bench",
        "--model",
        m.to_str().unwrap(),
        "--prompt-len",
        "8",
        "--gen-len",
        "4",
        "--batch",
        "2",
    ]);
    assert!(
        table.contains("imbalance") && table.contains("peak memory"),
        "{table}"
    );
}

#[test]
fn repo_ids_resolve_in_a_hugging_face_cache_tree() {
    let root = tempfile::tempdir().unwrap();
    let hub = root.path().join("hub");
    let repo = hub.join("models--someone--tiny");
    let hash = "4f1d8a8c3b2e1f0a9d8c7b6a5f4e3d2c1b0a9f8e";
    let snap = repo.join("snapshots").join(hash);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), hash).unwrap();
    // Snapshot entries are symlinks, as huggingface_hub makes them (here to the fixture).
    for entry in std::fs::read_dir(fixture("tiny-mixtral")).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), snap.join(entry.file_name())).unwrap();
    }
    let run = |model: &str, extra: &[&str], env: &[(&str, &std::path::Path)]| {
        let mut args = vec![
            "run",
            "--model",
            model,
            "--prompt",
            "x",
            "--raw",
            "--max-tokens",
            "2",
        ];
        args.extend_from_slice(extra);
        bora_env(&args, env)
    };
    let via_home = [("HF_HOME", root.path()), ("HOME", root.path())];
    let out = run("someone/tiny", &[], &via_home);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &format!("someone/tiny@{hash}"),
        &[],
        &[("HF_HUB_CACHE", &hub)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Not there: every place is listed, with the way to fetch it.
    let out = run("someone/absent", &[], &via_home);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("someone/absent: no such file or directory"),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "{} (HF_HOME): not in this cache",
            hub.join("models--someone--absent").display()
        )),
        "{e}"
    );
    assert!(e.contains("--allow-download"), "{e}");
    // HF_HUB_OFFLINE forbids the download.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args([
        "run",
        "--model",
        "someone/absent",
        "--prompt",
        "x",
        "--allow-download",
    ])
    .env("HF_HOME", root.path())
    .env("HF_HUB_OFFLINE", "1");
    let out = cmd.output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("HF_HUB_OFFLINE"), "{e}");
}

#[test]
fn the_demo_model_runs_without_weight_files() {
    let cache = tempfile::tempdir().unwrap();
    let out = bora_env(
        &["run", "--prompt", "Hello", "--max-tokens", "3"],
        &[("XDG_CACHE_HOME", cache.path())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("demo model `bora-demo`"), "{e}");
    assert!(e.contains("7.4M parameters"), "{e}");
    // The same seed gives the same weights: a second cache gives the same greedy answer.
    let other = tempfile::tempdir().unwrap();
    let again = bora_env(
        &["run", "--prompt", "Hello", "--max-tokens", "3"],
        &[("XDG_CACHE_HOME", other.path())],
    );
    assert_eq!(out.stdout, again.stdout);
    let a = std::fs::read(cache.path().join("bora/demo-v1-b0ade30/model.safetensors")).unwrap();
    let b = std::fs::read(other.path().join("bora/demo-v1-b0ade30/model.safetensors")).unwrap();
    assert!(a == b, "the demo weights differ between two writes");
}

#[test]
fn model_sources_that_cannot_load_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    let e = err(&["run", "--model", gguf.to_str().unwrap(), "--prompt", "x"]);
    assert!(
        e.contains("not a valid GGUF file") && e.contains("truncated"),
        "{e}"
    );
    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, b"x").unwrap();
    let e = err(&["run", "--model", txt.to_str().unwrap(), "--prompt", "x"]);
    assert!(e.contains("not a .gguf file"), "{e}");
}

#[test]
fn gguf_files_run_and_quantize_writes_them() {
    let q4 = fixture("gguf/tiny-Q4_K_M.gguf");
    let args = [
        "run",
        "--model",
        q4.to_str().unwrap(),
        "--prompt",
        "The quick",
        "--raw",
        "--max-tokens",
        "5",
    ];
    let out = bora(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Q4_K") && log.contains("Q6_K"), "{log}");
    // The same weights in llama.cpp's older per-expert layout write the same text.
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.trim().is_empty());
    let per_expert = fixture("gguf/tiny-Q4_K_M-per-expert.gguf");
    let mut again = args;
    again[2] = per_expert.to_str().unwrap();
    assert_eq!(ok(&again), text);
    // Written by bora, read back by bora; and --quantize at load gives the same text.
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("tiny-q8.gguf");
    let src = fixture("gguf/source");
    ok(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    let gen = |extra: &[&str], model: &str| {
        let mut a = vec![
            "run",
            "--model",
            model,
            "--prompt",
            "The quick",
            "--raw",
            "--max-tokens",
            "8",
        ];
        a.extend_from_slice(extra);
        ok(&a)
    };
    assert_eq!(
        gen(&[], out_file.to_str().unwrap()),
        gen(&["--quantize", "q8_0"], src.to_str().unwrap())
    );
    let e = err(&[
        "run",
        "--model",
        src.to_str().unwrap(),
        "--prompt",
        "x",
        "--quantize",
        "q9",
    ]);
    assert!(e.contains("--quantize q9") && e.contains("q4_k"), "{e}");
    // Rows that are not whole blocks of the type are named (tiny-mixtral's hidden size is 16).
    let tiny = fixture("tiny-mixtral");
    let e = err(&[
        "run",
        "--model",
        tiny.to_str().unwrap(),
        "--prompt",
        "x",
        "--raw",
        "--quantize",
        "q4_k",
    ]);
    assert!(
        e.contains("cannot quantize `model.embed_tokens.weight` to Q4_K"),
        "{e}"
    );
    let e = err(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--out",
        "/no/such/dir/x.gguf",
        "--type",
        "q8_0",
    ]);
    assert!(e.contains("/no/such/dir/x.gguf"), "{e}");
}

/// On the CPU, `check-device` checks candle's path (what CUDA runs, on candle's CPU kernels)
/// against bora's kernels: dense weights to float rounding, quantized ones within the stated
/// tolerance.
#[test]
fn check_device_on_the_cpu_compares_candles_path_with_bora_kernels() {
    let models = [
        fixture("tiny-mixtral"),
        fixture("gguf/tiny-Q8_0.gguf"),
        fixture("gguf/tiny-Q4_K_M.gguf"),
    ];
    let models: Vec<&str> = models.iter().map(|p| p.to_str().unwrap()).collect();
    let list = models.join(",");
    let out = ok(&[
        "check-device",
        "--device",
        "cpu",
        "--models",
        &list,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["passed"], true, "{v}");
    let ms = v["models"].as_array().unwrap();
    assert_eq!(ms.len(), 3);
    assert_eq!(ms[0]["kind"], "dense f32");
    assert!(ms[0]["abs_diff"]["max"].as_f64().unwrap() < 1e-4, "{v}");
    assert_eq!(ms[0]["greedy_agree"], ms[0]["greedy_compared"]);
    // The quantized models, against bora's kernels: within what was measured (median 0.024 to
    // 0.034, max 0.21 to 1.0, 65 to 67 of 69 greedy tokens the same), not only the verdict.
    for q in &ms[1..] {
        assert_eq!(q["kind"], "quantized f32", "{q}");
        let d = &q["abs_diff"];
        assert!(d["median"].as_f64().unwrap() < 0.045, "{q}");
        assert!(d["max"].as_f64().unwrap() < 1.3, "{q}");
        let (agree, of) = (
            q["greedy_agree"].as_u64().unwrap(),
            q["greedy_compared"].as_u64().unwrap(),
        );
        assert!(of > 30 && agree * 100 >= of * 90, "{q}");
    }
    // A tolerance nothing meets fails, with the reason.
    let e = err(&[
        "check-device",
        "--device",
        "cpu",
        "--models",
        models[1],
        "--tolerance",
        "0,0,0",
    ]);
    assert!(e.contains("beyond the tolerance"), "{e}");
}

/// `random:NAME` models: the benchmarks' shapes with random weights and no file.
#[test]
fn random_models_bench_and_report_the_memory_bound() {
    let out = ok(&[
        "bench",
        "--model",
        "random:demo",
        "--quantize",
        "q8_0",
        "--prompt-len",
        "16",
        "--gen-len",
        "4",
        "--batch",
        "1,2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);
    assert_eq!(v["device"], "cpu");
    assert!(
        v["active_weight_bytes_per_token"].as_u64().unwrap() > 100_000,
        "{v}"
    );
    assert!(
        v["memory_bandwidth_bytes_per_s"].as_f64().unwrap() > 1e8,
        "{v}"
    );
    assert!(
        v["memory_bandwidth_method"]
            .as_str()
            .unwrap()
            .contains("read bandwidth"),
        "{v}"
    );
    // What the model holds once loaded comes before the bench's own buffers.
    let (loaded, peak) = (
        v["loaded_peak_memory_bytes"].as_u64().unwrap(),
        v["peak_memory_bytes"].as_u64().unwrap(),
    );
    assert!(loaded > 0 && loaded <= peak, "{v}");
    assert!(v["batch1_decode_fraction_of_bound"].as_f64().unwrap() > 0.0);
    let out = ok(&[
        "bench-moe",
        "--shape",
        "demo",
        "--quantize",
        "q8_0",
        "--tokens",
        "1,16",
        "--iters",
        "2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["weights"], "Q8_0");
    assert_eq!(v["runs"][1]["tokens"], 16);
    assert!(v["runs"][1]["experts_hit"].as_u64().unwrap() >= 2);
    // Q4_K rows are 256 values: the demo's 128 are not, and the error says so.
    let e = err(&["bench-moe", "--shape", "demo", "--quantize", "q4_k"]);
    assert!(e.contains("not a multiple"), "{e}");
    let e = err(&["serve", "--model", "random:demo"]);
    assert!(e.contains("random weights are made by"), "{e}");
    let e = err(&["bench", "--model", "random:nope"]);
    assert!(e.contains("unknown shape"), "{e}");
    // Weights made in memory (random, or quantized at load) are checked against the host's
    // available memory first: 8x22B in bf16 is 282 GB.
    let e = err(&["bench", "--model", "random:mixtral-8x22b", "--batch", "1"]);
    assert!(e.contains("does not fit on cpu"), "{e}");
}

/// Issue 16, item 8: each cause of a loading error is said once, and a garbage tokenizer.json
/// is called what it is.
#[test]
fn loading_errors_say_each_cause_once_and_name_the_tokenizer_kind() {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture("tiny-mixtral")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let m = dir.path().to_str().unwrap();
    let run = || {
        err(&[
            "run",
            "--model",
            m,
            "--prompt",
            "x",
            "--raw",
            "--max-tokens",
            "1",
        ])
    };
    std::fs::write(dir.path().join("tokenizer.json"), "garbage{").unwrap();
    let e = run();
    assert!(e.contains("not a valid tokenizer.json"), "{e}");
    assert!(!e.contains("sentencepiece"), "{e}");
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = run();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    assert_eq!(e.matches("(os error 2)").count(), 1, "{e}");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = run();
    assert_eq!(e.matches("(os error 2)").count(), 1, "{e}");
}

/// Issue 16, item 3: `bora serve` with a client that sent half a request head stops on SIGTERM
/// (within the header timeout), exit status 0.
#[cfg(unix)]
#[test]
fn serve_stops_on_sigterm_with_a_half_sent_head_open() {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args([
            "serve",
            "--model",
            fixture("tiny-mixtral").to_str().unwrap(),
            "--port",
            "0",
            "--header-timeout",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.contains("ready"), "{ready}");
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(15) {
            let _ = child.kill();
            panic!("bora serve did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(6));
    drop(half);
}

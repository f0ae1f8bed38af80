use super::*;
use bora_tests::fixture;

/// Loads `source` with `opts`, checking that every phase reported starts, then finishes.
fn load(source: &ModelSource, opts: &ModelOptions) -> Result<LoadedModel, LoadError> {
    let mut events = Vec::new();
    let r = load_model(source, opts, &mut |e| events.push(e));
    let mut open: Option<LoadPhase> = None;
    for e in &events {
        match *e {
            LoadProgress::Start { phase, .. } => {
                assert_eq!(open, None, "{events:?}");
                open = Some(phase);
            }
            LoadProgress::Done { .. } => assert!(open.is_some(), "{events:?}"),
            LoadProgress::Finish { phase } => {
                assert_eq!(open, Some(phase), "{events:?}");
                open = None;
            }
        }
    }
    if r.is_ok() {
        assert_eq!(open, None, "a phase never finished: {events:?}");
    }
    r
}

#[test]
fn sources_parse_as_the_cli_takes_them() {
    let p = |s: &str| s.parse::<ModelSource>().unwrap();
    assert_eq!(p("bora-demo"), ModelSource::Demo);
    assert_eq!(p("bora-demo-v3"), ModelSource::DemoV3);
    assert_eq!(
        p("random:mixtral-8x7b"),
        ModelSource::Random("mixtral-8x7b".into())
    );
    assert_eq!(
        p("mistralai/Mixtral-8x7B-v0.1"),
        ModelSource::Named("mistralai/Mixtral-8x7B-v0.1".into())
    );
    for s in ["bora-demo", "random:demo", "a/b", "/x/y.gguf"] {
        assert_eq!(p(s).to_string(), s);
    }
}

#[test]
fn sources_resolve_to_files() {
    let dir = fixture("tiny-mixtral");
    let gguf = fixture("gguf/tiny-Q8_0.gguf");
    let resolve = |s: ModelSource| s.resolve(false, &mut |_| {});
    let named = |p: &std::path::Path| ModelSource::Named(p.display().to_string());
    assert_eq!(resolve(named(&dir)).unwrap(), ModelSource::Dir(dir.clone()));
    assert_eq!(
        resolve(named(&gguf)).unwrap(),
        ModelSource::Gguf(gguf.clone())
    );
    assert!(matches!(
        resolve(ModelSource::Demo).unwrap(),
        ModelSource::Dir(_)
    ));
    assert_eq!(
        resolve(ModelSource::Random("demo".into())).unwrap(),
        ModelSource::Random("demo".into())
    );
    // Nothing there, and not a repo id: where it was looked for.
    let e = resolve(ModelSource::Named("/no/such/model".into())).unwrap_err();
    assert!(matches!(e, LoadError::NotFound(_)), "{e}");
    assert!(e.to_string().contains("/no/such/model"), "{e}");
    // A repo id that is in no cache: downloads must be allowed.
    let e = resolve(ModelSource::Named("bora-tests/not-a-repo".into())).unwrap_err();
    assert!(matches!(e, LoadError::NotDownloaded { .. }), "{e}");
    assert!(e.to_string().contains("allow downloads"), "{e}");
}

#[test]
fn every_kind_of_source_loads() {
    let opts = ModelOptions::default();
    let dir = load(&ModelSource::Dir(fixture("tiny-mixtral")), &opts).unwrap();
    assert!(!dir.info.random);
    assert!(dir.info.to_string().starts_with("loaded "), "{}", dir.info);
    let gguf = load(&ModelSource::Gguf(fixture("gguf/tiny-Q4_K_M.gguf")), &opts).unwrap();
    assert!(gguf.info.weights.contains("Q4_K×"), "{}", gguf.info);
    // The file's own vocabulary, the size of its embedding.
    assert_eq!(gguf.tokenizer.vocab_size(), gguf.model.config().vocab_size);
    let demo = load(&ModelSource::Demo, &opts).unwrap();
    assert_eq!(demo.tokenizer.vocab_size(), 32000);
    let random = load(
        &ModelSource::Random("demo".into()),
        &ModelOptions {
            quantize: Some(QType::Q8_0),
            ..ModelOptions::default()
        },
    )
    .unwrap();
    assert!(random.info.random);
    assert_eq!(random.info.weights, "Q8_0");
    assert!(
        random.info.to_string().starts_with("made random:demo: "),
        "{}",
        random.info
    );
    // A tokenizer given instead of the GGUF file's.
    let other = load(
        &ModelSource::Gguf(fixture("gguf/tiny-Q8_0.gguf")),
        &ModelOptions {
            tokenizer: Some(fixture("tiny-mixtral/tokenizer.json")),
            ..ModelOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        other.tokenizer.encode("hello").unwrap(),
        dir.tokenizer.encode("hello").unwrap()
    );
}

#[test]
fn errors_say_what_is_wrong_where() {
    let opts = ModelOptions::default();
    let e = load(&ModelSource::Random("mixtral-9x9b".into()), &opts).unwrap_err();
    assert!(matches!(e, LoadError::UnknownShape { .. }), "{e}");

    let e = load(
        &ModelSource::Dir(fixture("tiny-mixtral")),
        &ModelOptions {
            tokenizer: Some("/no/such/tokenizer.json".into()),
            ..ModelOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&e, LoadError::Tokenizer { path, .. } if path.ends_with("tokenizer.json")),
        "{e}"
    );

    for threads in [0, 1 << 40] {
        let e = load(
            &ModelSource::Dir(fixture("tiny-mixtral")),
            &ModelOptions {
                threads: Some(threads),
                ..ModelOptions::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::Option {
                    name: "threads",
                    ..
                }
            ),
            "{e}"
        );
    }

    // A checkpoint without its weights: the weights layer's error, naming the directory.
    let empty = std::env::temp_dir().join(format!("bora-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(
        fixture("tiny-mixtral/config.json"),
        empty.join("config.json"),
    )
    .unwrap();
    let e = load(&ModelSource::Dir(empty.clone()), &opts).unwrap_err();
    assert!(
        matches!(&e, LoadError::Weights(bora_weights::WeightsError::NoWeights { dir }) if *dir == empty),
        "{e}"
    );
    std::fs::remove_file(empty.join("config.json")).unwrap();
    let e = load(&ModelSource::Dir(empty.clone()), &opts).unwrap_err();
    assert!(matches!(e, LoadError::Core(_)), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
    let _ = std::fs::remove_dir_all(&empty);
}

/// `bora quantize` of a `random:` shape: the file it writes (one layer at a time) loads back to
/// the very model `random:` makes in that type: the same logits, bit for bit, here for Q8_0 and
/// an i-quant on the demo's shape (rows of 128: types of 32-value blocks).
#[test]
fn a_random_model_written_as_gguf_is_the_same_model() {
    use bora_model::{Batch, Logits};
    let dir = tempfile::tempdir().unwrap();
    let logits = |m: &LoadedModel| -> Vec<f32> {
        let model = &m.model;
        let mut cache = model.new_cache(1, 16).unwrap();
        let out = model
            .forward(
                &Batch::single(vec![1, 415, 2936, 9060], 0, cache.slot(0), Logits::Last),
                &mut cache,
            )
            .unwrap();
        out.flatten_all().unwrap().to_vec1().unwrap()
    };
    for q in [QType::Q8_0, QType::IQ4NL] {
        let path = dir.path().join(format!("random-{q}.gguf"));
        let mut calls = 0;
        write_random_gguf("demo", q, &path, |_, _| calls += 1).unwrap();
        assert!(calls > 10, "{calls} tensors");
        let opts = ModelOptions {
            quantize: Some(q),
            ..ModelOptions::default()
        };
        let made = load(&ModelSource::Random("demo".into()), &opts).unwrap();
        let read = load(&ModelSource::Gguf(path), &ModelOptions::default()).unwrap();
        assert!(read.info.weights.contains(q.name()), "{}", read.info);
        let (a, b) = (logits(&made), logits(&read));
        assert_eq!(a.len(), made.model.config().vocab_size);
        assert!(a.iter().any(|&x| x != 0.0));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff == 0.0,
            "{q}: the file's logits differ from the model's by up to {diff}"
        );
    }
}

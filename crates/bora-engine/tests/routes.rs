//! Routing traces: the serving engine's (`EngineConfig::route_trace`) and `trace_routes`'s
//! agree on a prompt's tokens; windows, parallel sequences and positions are laid out as
//! documented; a summary counts what the trace holds.

use std::collections::HashMap;

use bora_engine::load::load_model;
use bora_engine::{
    trace_routes, Engine, EngineConfig, ModelOptions, ModelSource, RouteOptions, RouteSummary,
    StepRoutes,
};

/// `(sequence, position, layer)` → (experts by rank, weights by rank).
type Routes = HashMap<(u32, u32, u16), (Vec<u16>, Vec<f32>)>;

fn collect(steps: &[StepRoutes]) -> Routes {
    let mut out: Routes = HashMap::new();
    for s in steps {
        for i in 0..s.len() {
            let e = out
                .entry((s.sequence[i], s.position[i], s.layer[i]))
                .or_default();
            assert_eq!(e.0.len(), s.rank[i] as usize, "ranks in order");
            e.0.push(s.expert[i]);
            e.1.push(s.weight[i]);
        }
    }
    out
}

fn demo_ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 1 + (i * 7919) % 31000).collect()
}

#[test]
fn windows_and_parallel_sequences_cover_every_token_once() {
    let loaded = load_model(&ModelSource::Demo, &ModelOptions::default(), &mut |_| {}).unwrap();
    let model = &loaded.model;
    let cfg = model.config();
    let seqs = vec![demo_ids(150), demo_ids(7), demo_ids(64)];
    let mut steps = Vec::new();
    let opts = RouteOptions {
        context: 48,
        parallel: 2,
        probs: true,
        step_tokens: 40,
    };
    let n = trace_routes(model, &seqs, &opts, &mut |s| {
        steps.push(s);
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 221);
    let routes = collect(&steps);
    assert_eq!(routes.len(), 221 * cfg.num_hidden_layers);
    for ((s, p, _), (experts, weights)) in &routes {
        assert!((*p as usize) < seqs[*s as usize].len());
        assert_eq!(experts.len(), cfg.num_experts_per_tok);
        assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // token_id is the sequence's token at that position; probs has E values a row.
    for st in &steps {
        assert_eq!(st.probs.len(), st.len() * cfg.num_local_experts);
        for i in 0..st.len() {
            assert_eq!(
                st.token_id[i],
                seqs[st.sequence[i] as usize][st.position[i] as usize]
            );
        }
    }
    // A window of 48 tokens restarts the context: position 48 of the first sequence routes
    // as position 0 of a sequence that starts with its token would.
    let mut restart = Vec::new();
    trace_routes(
        model,
        &[seqs[0][48..96].to_vec()],
        &RouteOptions {
            context: 48,
            parallel: 1,
            probs: false,
            step_tokens: 256,
        },
        &mut |s| {
            restart.push(s);
            Ok(())
        },
    )
    .unwrap();
    let restart = collect(&restart);
    for l in 0..cfg.num_hidden_layers as u16 {
        assert_eq!(routes[&(0, 48, l)].0, restart[&(0, 0, l)].0);
    }
    // The summary counts each token once and each choice once.
    let mut summary = RouteSummary::new(cfg.num_hidden_layers, cfg.num_local_experts, 50);
    steps.iter().for_each(|s| summary.add(s));
    let numbers = summary.numbers();
    assert_eq!(numbers.tokens, 221);
    // Windows of 50 tokens; the last 21 join the window before them.
    assert_eq!(numbers.load_series.len(), 4);
    for point in &numbers.load_series {
        for shares in point {
            assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }
    for shares in &numbers.shares {
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
    assert!(numbers.router_entropy_bits.is_some());
}

#[test]
fn the_serving_trace_agrees_with_the_direct_one() {
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = Engine::load(
        &ModelSource::Demo,
        &ModelOptions::default(),
        EngineConfig {
            route_trace: Some(tx),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let prompt = demo_ids(40);
    let mut req = bora_engine::Completion::new(Default::default());
    req.max_tokens = Some(3);
    let mut stream = engine.submit(prompt.clone(), &req).unwrap();
    while stream.next_blocking().is_some() {}
    drop(stream);
    drop(engine);
    let served: Vec<StepRoutes> = rx.iter().collect();
    let served = collect(&served);
    let loaded = load_model(&ModelSource::Demo, &ModelOptions::default(), &mut |_| {}).unwrap();
    let mut direct = Vec::new();
    trace_routes(
        &loaded.model,
        std::slice::from_ref(&prompt),
        &RouteOptions::default(),
        &mut |s| {
            direct.push(s);
            Ok(())
        },
    )
    .unwrap();
    let direct = collect(&direct);
    let layers = loaded.model.config().num_hidden_layers;
    // The prompt's tokens and the generated ones (fed back one by one) are all there.
    let positions: std::collections::BTreeSet<u32> = served.keys().map(|k| k.1).collect();
    assert_eq!(positions.len(), 40 + 2);
    let mut same = 0;
    for p in 0..40u32 {
        for l in 0..layers as u16 {
            let key = served
                .keys()
                .find(|k| k.1 == p && k.2 == l)
                .copied()
                .unwrap();
            let (a, b) = (&served[&key], &direct[&(0, p, l)]);
            for (x, y) in a.1.iter().zip(&b.1) {
                assert!((x - y).abs() < 2e-2, "{p} {l}: {a:?} {b:?}");
            }
            same += usize::from(a.0 == b.0);
        }
    }
    // Chunked otherwise, the two may part on a near-tie; nearly every choice is the same.
    assert!(same * 100 >= 40 * layers * 97, "{same} of {}", 40 * layers);
}

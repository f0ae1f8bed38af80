//! The Grafana dashboard (dashboards/grafana-bora.json) parses, and every metric its queries
//! name is one that `/metrics` exports.

use std::collections::BTreeSet;

use bora_engine::EngineStats;
use bora_server::metrics::Metrics;
use serde_json::Value;

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dashboards/grafana-bora.json"
    );
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(dash["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let mut queries = Vec::new();
    exprs(&dash, &mut queries);
    // Every family, with the engine state that shows the optional ones.
    let stats = EngineStats {
        expert_tokens: vec![vec![1; 8]; 2],
        expert_cache: Some(bora_engine::CacheStats::default()),
        ..EngineStats::default()
    };
    let m = Metrics::new();
    m.first_token(std::time::Duration::from_millis(5));
    m.request(200);
    m.tokens(3, 2);
    m.inter_token(std::time::Duration::from_millis(5));
    let text = m.render(Some(&stats));
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let mut named = BTreeSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(i) = rest.find("bora_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            named.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    assert!(named.len() >= 12, "{named:?}");
    for n in &named {
        assert!(
            exported.contains(n),
            "the dashboard queries {n}, which /metrics does not export:\n{text}"
        );
    }
    // The expert-load heatmap is there.
    assert!(queries
        .iter()
        .any(|q| q.contains("bora_expert_tokens_total")));
}

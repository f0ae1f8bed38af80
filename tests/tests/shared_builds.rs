//! The optimized builds CI makes one after another (the `bora` binary with the C library, the
//! Python extension, bora-engine's optimized tests) compile each third-party crate with the same
//! features, so that each reuses the others' compiled dependencies instead of building most of
//! them again (4 minutes for the Python package alone in CI). The `bora-hack` crate
//! (crates/bora-hack, written by `cargo hakari generate`) holds the union of the features; this
//! test fails when a dependency change leaves it behind: run `cargo hakari generate` then.

use std::collections::BTreeMap;
use std::process::Command;

/// Each third-party package `cargo tree` resolves for `selection` (name and version), with the
/// features it is built with.
fn features(selection: &[&str]) -> BTreeMap<String, String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["tree", "--locked", "--offline", "--prefix", "none"])
        .args(["-f", "{p} [{f}]"])
        .args(selection)
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree {selection:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" (/"))
        .filter_map(|l| {
            let (package, rest) = l.split_once(" [")?;
            let features = rest.split(']').next()?;
            Some((package.to_string(), features.to_string()))
        })
        .collect()
}

#[test]
fn optimized_builds_share_their_dependencies() {
    let cli = features(&["-e", "normal,build", "-p", "bora-cli", "-p", "bora-c"]);
    let others = [
        (
            "the Python extension",
            vec!["-e", "normal,build", "-p", "bora-py"],
        ),
        (
            "bora-engine's tests",
            vec!["-e", "normal,build,dev", "-p", "bora-engine"],
        ),
    ];
    assert!(cli.len() > 100, "cargo tree listed too little: {cli:?}");
    for (what, selection) in others {
        let theirs = features(&selection);
        let differ: Vec<String> = theirs
            .iter()
            .filter_map(|(package, f)| match cli.get(package) {
                Some(g) if g != f => Some(format!("{package}: [{f}] there, [{g}] in bora-cli")),
                _ => None,
            })
            .collect();
        assert!(
            differ.is_empty(),
            "{what} builds these with other features than bora-cli (run `cargo hakari \
             generate`):\n{}",
            differ.join("\n")
        );
    }
}

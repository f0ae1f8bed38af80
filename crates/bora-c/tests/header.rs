//! `include/bora.h` is what cbindgen writes from this crate's `extern "C"` items. Run with
//! `BORA_WRITE_HEADER=1` to write it after changing the API. (A test rather than a build
//! script: building libbora then needs nothing beyond the engine's own dependencies, and
//! shares their compiled artifacts with the `bora` binary's build.)

#[test]
fn the_committed_header_is_cbindgens() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("bora.h can be generated");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = format!("{dir}/include/bora.h");
    if std::env::var_os("BORA_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("bora.h is writable");
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{path} is not what cbindgen writes from src/lib.rs: run \
         `BORA_WRITE_HEADER=1 cargo test -p bora-c --test header` and commit it"
    );
}

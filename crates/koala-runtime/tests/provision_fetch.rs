//! The real fetch from PyPI into an empty cache (ignored by default: it downloads 24 MB).
//! Run with `cargo test -p koala-runtime --test provision_fetch -- --ignored`.

use koala_runtime::provision::{cached_dylib, resolve_dylib, ResolveEnv};

#[test]
#[ignore = "downloads the 24 MB onnxruntime wheel from the package index"]
fn fetches_the_library_into_an_empty_cache() {
    let cache = tempfile::tempdir().unwrap();
    let env = ResolveEnv {
        dylib_override: None,
        cache_root: Some(cache.path().to_path_buf()),
        python: Some("python3".into()),
    };
    let path = resolve_dylib(&env).expect("fetch");
    assert_eq!(path, cached_dylib(cache.path()));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "an ELF shared object");
    // The wheel's member is 29,352,200 bytes for 1.31.1 on x86-64 Linux; any real build is > 10 MB.
    assert!(bytes.len() > 10_000_000, "{} bytes", bytes.len());
    // A second resolution finds the cached file without fetching (python disabled).
    let again = ResolveEnv {
        python: None,
        ..env
    };
    assert_eq!(resolve_dylib(&again).unwrap(), path);
}

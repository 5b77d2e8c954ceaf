//! Loading something that is not ONNX Runtime fails with an error naming the file and saying
//! what to do, and leaves the process able to load the real library afterwards.
//!
//! Its own test binary (its own process), and one sequential test: the library is loaded once
//! per process, so the failures must come before the success, and must not disturb other tests.

use std::path::PathBuf;

use koala_runtime::{init, init_with, ort_version, Error, ProvisionError, ResolveEnv};

/// The C library this process has mapped: a real shared library that is not ONNX Runtime.
fn loaded_libc() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .map(PathBuf::from)
        .expect("libc is mapped in every glibc process")
}

fn only_override(path: PathBuf) -> ResolveEnv {
    ResolveEnv {
        dylib_override: Some(path),
        cache_root: None,
        python: None,
    }
}

#[test]
fn wrong_files_are_refused_then_the_real_library_loads() {
    // 1. A path that does not exist.
    let err = init_with(&only_override(
        "/nonexistent/libonnxruntime.so.1.31.1".into(),
    ))
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Provision(ProvisionError::OverrideMissing { .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("/nonexistent/libonnxruntime.so.1.31.1"),
        "{err}"
    );

    // 2. A text file.
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&text, "this is not a shared library\n").unwrap();
    let err = init_with(&only_override(text.clone())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Load { .. }), "{err:?}");
    assert!(msg.contains(&text.display().to_string()), "{msg}");
    assert!(
        msg.contains("dynamic loader refused") && msg.contains("Set ORT_DYLIB_PATH"),
        "{msg}"
    );

    // 3. A real shared library that is not ONNX Runtime.
    let libc = loaded_libc();
    let err = init_with(&only_override(libc.clone())).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("OrtGetApiBase") && msg.contains("not an ONNX Runtime library"),
        "{msg}"
    );

    // 4. None of that poisoned anything: the normal resolution still loads 1.31.1.
    let path = init().expect("the real library loads after the failures");
    assert!(path.is_file());
    assert!(
        ort_version().unwrap().starts_with("1.3"),
        "{}",
        ort_version().unwrap()
    );
}

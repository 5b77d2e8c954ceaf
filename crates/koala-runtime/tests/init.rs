//! `init` loads the library once per process, from any number of threads.

use koala_runtime::{init, ort_version, provision::DYLIB_FILE_NAME};

#[test]
fn concurrent_init_calls_agree_and_report_the_version() {
    let paths: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(init))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("init thread").expect("init"))
        .collect();
    assert!(paths.windows(2).all(|w| w[0] == w[1]), "{paths:?}");
    assert_eq!(init().unwrap(), paths[0], "init is idempotent");
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        // Provisioned by koala: the pinned version, under the pinned file name.
        assert_eq!(paths[0].file_name().unwrap(), DYLIB_FILE_NAME);
        assert_eq!(ort_version().unwrap(), "1.31.1");
    }
}

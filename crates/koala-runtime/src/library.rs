//! Loading libonnxruntime into the process, once.
//!
//! `ort` keeps the loaded library and its environment in process-global state, and a library
//! cannot be unloaded and replaced once sessions exist. So [`init`] loads at most one library per
//! process: the first successful call wins and later calls return its path. A failed call leaves
//! nothing behind, so a later call (say, after fixing `ORT_DYLIB_PATH`) can still succeed.
//!
//! Before handing the file to `ort`, koala opens it itself and asks `OrtGetApiBase()` for its
//! version string. That turns "not a library", "not ONNX Runtime" and "too old" into one clear
//! error naming the file, instead of a panic deep inside `ort` on first use.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::error::{Error, Result};
use crate::provision::{resolve_dylib, ResolveEnv};

/// The lowest ONNX Runtime minor version `ort` rc.15 with `api-31` can drive.
const MIN_MINOR: u32 = 31;

/// What [`init`] loaded.
struct Loaded {
    path: PathBuf,
    version: String,
    environment: Environment,
    /// Our own handle, kept open so the library stays mapped for the life of the process.
    _library: libloading::Library,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
/// Serialises first-time loading, so two threads do not both fetch and load.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Finds (or fetches) libonnxruntime, loads it and creates the ONNX Runtime environment.
///
/// Idempotent and thread-safe; returns the path of the library in use. Sessions call it
/// implicitly, so other crates only need it to report the library or fail early.
pub fn init() -> Result<PathBuf> {
    init_with(&ResolveEnv::from_process_env())
}

/// [`init`] with an explicit [`ResolveEnv`] instead of the process environment.
///
/// If a library is already loaded, `env` is ignored and that library's path is returned.
pub fn init_with(env: &ResolveEnv) -> Result<PathBuf> {
    if let Some(loaded) = LOADED.get() {
        return Ok(loaded.path.clone());
    }
    let _guard = INIT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(loaded) = LOADED.get() {
        return Ok(loaded.path.clone());
    }
    let path = resolve_dylib(env)?;
    let loaded = load(&path)?;
    let path = loaded.path.clone();
    // Cannot fail: we hold the lock and checked that the cell is empty.
    let _ = LOADED.set(loaded);
    Ok(path)
}

/// The version string of the loaded ONNX Runtime (e.g. `1.31.1`), loading it first if needed.
pub fn ort_version() -> Result<String> {
    init()?;
    Ok(loaded()?.version.clone())
}

/// The process-wide `ort` environment, for code that must use `ort` directly.
pub fn environment() -> Result<&'static Environment> {
    init()?;
    Ok(&loaded()?.environment)
}

fn loaded() -> Result<&'static Loaded> {
    LOADED.get().ok_or_else(|| Error::Ort {
        context: "ONNX Runtime".into(),
        message: "init() succeeded but no library is recorded (internal error)".into(),
    })
}

/// Opens `path`, checks that it is ONNX Runtime of a usable version, and hands it to `ort`.
fn load(path: &Path) -> Result<Loaded> {
    let load_err = |reason: String| Error::Load {
        path: path.to_path_buf(),
        reason,
    };
    // An absolute path, because `ort` resolves relative ones against the executable's directory.
    let path = std::fs::canonicalize(path)
        .map_err(|e| load_err(format!("cannot resolve the path ({e})")))?;
    let (library, version) = open_and_probe(&path).map_err(load_err)?;
    check_version(&version).map_err(load_err)?;
    let builder = ort::init_from(&path).map_err(|e| load_err(e.to_string()))?;
    let environment = builder
        .with_name("koala")
        .build()
        .map_err(|e| load_err(format!("creating the environment failed: {}", e.message())))?;
    Ok(Loaded {
        path,
        version,
        environment,
        _library: library,
    })
}

/// dlopens the file and reads `OrtGetApiBase()->GetVersionString()`.
fn open_and_probe(path: &Path) -> std::result::Result<(libloading::Library, String), String> {
    // SAFETY: loading a shared library runs its initialisers; that is inherent to using ORT at all.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("the dynamic loader refused it ({})", with_sources(&e)))?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: the symbol, when present, has this signature in every ONNX Runtime release.
    let get_base = unsafe { library.get::<GetApiBase>(b"OrtGetApiBase") }.map_err(|_| {
        "it does not export OrtGetApiBase, so it is not an ONNX Runtime library".to_string()
    })?;
    // SAFETY: OrtGetApiBase takes no arguments and returns a pointer to a static struct.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err("OrtGetApiBase returned null".into());
    }
    // SAFETY: `base` is non-null and points to ORT's static OrtApiBase; the version string is a
    // static NUL-terminated C string.
    let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) }
        .to_string_lossy()
        .into_owned();
    Ok((library, version))
}

/// An error's message followed by its sources' (libloading puts dlerror's text in the source).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Accepts ONNX Runtime 1.x with x ≥ 31 (the C API level `ort` is built against). koala fetches
/// exactly 1.31.1; a newer 1.x given through `ORT_DYLIB_PATH` is accepted because ORT's C API
/// is backward compatible.
pub(crate) fn check_version(version: &str) -> std::result::Result<(), String> {
    let mut parts = version.trim().split('.');
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(1), Some(minor)) if minor >= MIN_MINOR => Ok(()),
        (Some(_), Some(_)) => Err(format!(
            "it is ONNX Runtime {version}, but koala needs 1.x with x ≥ {MIN_MINOR} (it fetches {})",
            crate::provision::ORT_VERSION
        )),
        _ => Err(format!("it reports an unreadable version string {version:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::check_version;

    #[test]
    fn versions_at_or_above_1_31_are_accepted() {
        assert!(check_version("1.31.1").is_ok());
        assert!(check_version("1.31.0").is_ok());
        assert!(check_version("1.32.0").is_ok());
    }

    #[test]
    fn older_other_major_or_garbage_versions_are_refused_with_the_version() {
        let e = check_version("1.30.2").unwrap_err();
        assert!(e.contains("1.30.2") && e.contains("1.31.1"), "{e}");
        assert!(check_version("2.0.0").unwrap_err().contains("2.0.0"));
        assert!(check_version("banana").unwrap_err().contains("banana"));
    }
}

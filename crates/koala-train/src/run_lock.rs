//! One process per run directory: `koala.lock` in the run directory, held with an OS file
//! lock (`File::try_lock`, `flock` on Unix) for the life of a `finetune` or `--resume`.
//!
//! Without it two runs on one directory both ran to the end: `metrics.jsonl` held both
//! runs' lines interleaved, and `model.onnx`, `config.toml` and the checkpoints were
//! whichever wrote last. The OS lock, not the file's existence, decides: the kernel
//! releases it when the holder exits or crashes, so a file left by a killed run is simply
//! taken over, and no PID has to be probed (PIDs are reused and meaningless on another
//! host sharing the directory). The file's text (PID, host, start time, command) only
//! tells the refused user who holds the run.
//!
//! `koala export --run-dir` takes no lock: it only reads, checkpoints are renamed into
//! place whole (see [`crate::checkpoint`]), and exporting the best checkpoint of a run
//! that is still training is useful.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside a run directory.
pub const FILE_NAME: &str = "koala.lock";

/// A held run-directory lock; dropping it removes the file and releases the lock.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks `run_dir` (which must exist) for `command` (e.g. `finetune`, `finetune
    /// --resume`). Refuses at once, naming the holder's PID and the lock file, when another
    /// process holds it; takes over a file whose holder is gone (a crashed or killed run),
    /// with a note naming the PID it had recorded.
    pub fn acquire(run_dir: &Path, command: &str) -> Result<RunLock> {
        let path = run_dir.join(FILE_NAME);
        // The file can be removed by its holder between our open and our lock (a run that
        // just finished); a lock on a removed file guards nothing, so open again.
        for _ in 0..8 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open the run lock '{}'", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => bail!(refusal(&path, &read_holder(&path))),
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot lock '{}': this file system does not seem to support file locks (some network mounts); pass a --run-dir on a local disk",
                            path.display()
                        )
                    })
                }
            }
            if !still_at(&file, &path) {
                continue;
            }
            let previous = read_to_string(&mut file);
            if let Some(pid) = Holder::parse(&previous).and_then(|h| h.pid) {
                eprintln!(
                    "note: took over '{}' left by process {pid}, which is no longer running",
                    path.display()
                );
            }
            write_holder(&mut file, &Holder::this_process(command).to_text())
                .with_context(|| format!("cannot write the run lock '{}'", path.display()))?;
            return Ok(RunLock { file, path });
        }
        bail!(
            "cannot lock '{}': it keeps being removed and recreated; is another koala starting and stopping on this run directory?",
            path.display()
        )
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    /// Removes the file while still holding the lock (a process that opened it meanwhile
    /// notices with [`still_at`] and opens again), then releases the lock by closing it.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Who holds (or last held) a run directory, as written in its lock file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Holder {
    /// Process id.
    pub pid: Option<u32>,
    /// Host name.
    pub host: Option<String>,
    /// Start time, UTC, ISO 8601.
    pub started: Option<String>,
    /// The koala command that holds it.
    pub command: Option<String>,
}

impl Holder {
    fn this_process(command: &str) -> Holder {
        Holder {
            pid: Some(std::process::id()),
            host: Some(host_name()),
            started: Some(utc_now()),
            command: Some(format!("koala {command}")),
        }
    }

    /// `key = value` lines, one per known field.
    fn to_text(&self) -> String {
        let mut s = String::new();
        if let Some(p) = self.pid {
            s += &format!("pid = {p}\n");
        }
        for (k, v) in [
            ("host", &self.host),
            ("started", &self.started),
            ("command", &self.command),
        ] {
            if let Some(v) = v {
                s += &format!("{k} = {v}\n");
            }
        }
        s
    }

    /// Reads [`to_text`](Self::to_text)'s form; `None` when no field is recognised (an
    /// empty file: a holder that has locked it but not written it yet).
    pub fn parse(text: &str) -> Option<Holder> {
        let mut h = Holder::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().to_string();
            match k.trim() {
                "pid" => h.pid = v.parse().ok(),
                "host" => h.host = Some(v),
                "started" => h.started = Some(v),
                "command" => h.command = Some(v),
                _ => {}
            }
        }
        (h != Holder::default()).then_some(h)
    }
}

/// The refusal when another process holds the lock: who, where, and what to do.
fn refusal(path: &Path, holder: &Option<Holder>) -> String {
    let run_dir = path.parent().unwrap_or(Path::new("."));
    let who = match holder {
        Some(h) => {
            let mut who = match h.pid {
                Some(p) => format!("process {p}"),
                None => "another process".into(),
            };
            if let Some(host) = &h.host {
                who += &format!(" on {host}");
            }
            if let Some(c) = &h.command {
                who += &format!(" ({c}");
                who += &match &h.started {
                    Some(t) => format!(", started {t})"),
                    None => ")".into(),
                };
            }
            who
        }
        None => "another process (still starting; its PID is not written yet)".into(),
    };
    format!(
        "run directory '{}' is in use by {who}: it holds the lock '{}'. Two runs on one directory would mix their metrics, checkpoints and model.onnx; wait for that run to finish (or stop it), or pass another --run-dir",
        run_dir.display(),
        path.display()
    )
}

fn read_holder(path: &Path) -> Option<Holder> {
    Holder::parse(&std::fs::read_to_string(path).ok()?)
}

fn read_to_string(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut s));
    s
}

fn write_holder(file: &mut File, text: &str) -> std::io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Whether `path` still names the open `file` (not removed or replaced since it was opened).
#[cfg(unix)]
fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Elsewhere an open file cannot be removed, so the path still names it.
#[cfg(not(unix))]
fn still_at(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// The machine's name, for the lock file (std has no portable call for it).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    utc_text(secs)
}

/// Seconds since 1970-01-01 UTC as ISO 8601 (civil-from-days, proleptic Gregorian).
fn utc_text(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_held_directory_is_refused_naming_pid_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let held = RunLock::acquire(dir.path(), "finetune").unwrap();
        let e = RunLock::acquire(dir.path(), "finetune --resume").unwrap_err();
        let msg = format!("{e:#}");
        let pid = format!("process {}", std::process::id());
        assert!(
            msg.contains(&pid) && msg.contains(&held.path().display().to_string()),
            "{msg}"
        );
        assert!(
            msg.contains("koala finetune") && msg.contains("--run-dir"),
            "{msg}"
        );
        drop(held);
        assert!(!dir.path().join(FILE_NAME).exists(), "released on drop");
        let again = RunLock::acquire(dir.path(), "finetune").unwrap();
        drop(again);
    }

    #[test]
    fn a_file_left_by_a_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(
            &path,
            "pid = 4000000\nhost = elsewhere\nstarted = 2020-01-01T00:00:00Z\ncommand = koala finetune\n",
        )
        .unwrap();
        let lock = RunLock::acquire(dir.path(), "finetune").unwrap();
        let now = Holder::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(now.pid, Some(std::process::id()));
        assert_eq!(now.command.as_deref(), Some("koala finetune"));
        drop(lock);
    }

    #[test]
    fn a_holder_that_has_not_written_its_pid_yet_is_named_as_starting() {
        let path = Path::new("/runs/r1").join(FILE_NAME);
        let msg = refusal(&path, &None);
        assert!(
            msg.contains("still starting") && msg.contains("/runs/r1/koala.lock"),
            "{msg}"
        );
    }

    #[test]
    fn holder_text_round_trips() {
        let h = Holder::this_process("finetune");
        assert_eq!(Holder::parse(&h.to_text()), Some(h));
        assert_eq!(Holder::parse(""), None);
    }

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_text(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_text(1_796_043_893), "2026-11-30T13:04:53Z");
    }
}

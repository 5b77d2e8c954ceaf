//! Ctrl-C (SIGINT) during `finetune`: the first one asks the loop to stop after the current
//! step and write a checkpoint; a second one exits at once.
//!
//! Before this, SIGINT killed the process where it stood, and every step since the last
//! checkpoint was lost (thousands of steps when evaluation, and so checkpointing, is
//! rare). The handler only sets a flag, so the loop stops at a step boundary, where the
//! trainer state is consistent and the checkpoint resumes exactly; a second Ctrl-C is the
//! way out when the user cannot wait for the step (checkpoints are written atomically, so
//! even that loses nothing already saved).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Conventional exit code of a process stopped by SIGINT (128 + 2).
pub const EXIT_INTERRUPTED: u8 = 130;

/// SIGINTs received since [`install`] (or the last [`reset`]).
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

/// Installs the Ctrl-C handler (once per process; later calls do nothing). Only `finetune`
/// installs it: other commands hold nothing worth saving and keep the default (exit at
/// once).
pub fn install() -> anyhow::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = ctrlc::set_handler(on_interrupt)
            .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"));
    });
    result
}

/// The handler: runs on ctrlc's own thread, so it may print and exit.
fn on_interrupt() {
    if request_stop() == 1 {
        eprintln!(
            "\ninterrupted: finishing the current step, then writing a checkpoint (Ctrl-C again stops at once, losing the steps since the last checkpoint)"
        );
    } else {
        stop_now();
    }
}

/// The second Ctrl-C: says so and ends the process, with nothing printed after.
///
/// `std::process::exit` ran the C exit handlers and C++ static destructors while the main
/// thread was still inside an ONNX Runtime kernel; that kernel then failed, and the main
/// thread printed the raw ONNX Runtime error (and out-of-memory advice), or finished its
/// step and printed "checkpoint written", after "stopping now". `_exit` ends the process
/// without running anything, and the stderr lock, held until then, keeps every other
/// thread's message out.
fn stop_now() -> ! {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(
        stderr,
        "\ninterrupted again: stopping now without a checkpoint"
    );
    let _ = stderr.flush();
    exit_immediately(i32::from(EXIT_INTERRUPTED))
}

/// Ends the process at once: no exit handlers, destructors or buffer flushes. Checkpoints
/// are written atomically, so nothing already saved is lost.
#[cfg(unix)]
fn exit_immediately(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and takes no pointers; it never returns.
    unsafe { libc::_exit(code) }
}

/// Elsewhere, the closest std offers.
#[cfg(not(unix))]
fn exit_immediately(code: i32) -> ! {
    std::process::exit(code)
}

/// Asks the training loop to stop at the next step boundary (what the first Ctrl-C does;
/// also for embedding applications and tests). Returns how many requests there were.
pub fn request_stop() -> usize {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst) + 1
}

/// Whether a stop was requested.
pub fn stop_requested() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 0
}

/// Forgets earlier requests (an application that runs several trainings in one process).
pub fn reset() {
    INTERRUPTS.store(0, Ordering::SeqCst);
}

/// The error a run returns when it stopped on request after writing a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interrupted {
    /// The run directory, to resume.
    pub run_dir: PathBuf,
    /// Steps done (the checkpoint's step).
    pub step: u64,
    /// Steps the run was to do.
    pub total_steps: u64,
    /// The checkpoint written.
    pub checkpoint: PathBuf,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interrupted after step {}/{}; checkpoint written to '{}'. Continue the run with:\n  koala finetune --resume {}",
            self.step,
            self.total_steps,
            self.checkpoint.display(),
            shell_quoted(&self.run_dir)
        )
    }
}

impl std::error::Error for Interrupted {}

/// `path` as one shell word: unchanged when it holds only safe characters, else in single
/// quotes, so the printed `--resume` command can be pasted as is.
pub fn shell_quoted(path: &Path) -> String {
    let s = path.display().to_string();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_command_is_one_shell_word() {
        assert_eq!(shell_quoted(Path::new("runs/r1")), "runs/r1");
        assert_eq!(
            shell_quoted(Path::new("my runs/it's")),
            r"'my runs/it'\''s'"
        );
    }

    #[test]
    fn the_message_names_the_resume_command_and_the_checkpoint() {
        let i = Interrupted {
            run_dir: PathBuf::from("/tmp/r 1"),
            step: 7,
            total_steps: 100,
            checkpoint: PathBuf::from("/tmp/r 1/checkpoints/step-00000007"),
        };
        let msg = i.to_string();
        assert!(
            msg.contains("koala finetune --resume '/tmp/r 1'")
                && msg.contains("step 7/100")
                && msg.contains("step-00000007"),
            "{msg}"
        );
    }
}

//! Running short helper commands (`ip`, clients) with a deadline.
//!
//! Every command the harness runs is bounded in time: a hung child must fail
//! the test with a message, never hang CI. Output is read on helper threads so
//! a chatty child cannot deadlock on a full pipe.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Timeout for the small configuration commands (`ip ...`).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The command as a shell-like line, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![quote(cmd.get_program())];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

/// `s` quoted for a shell-like display (plain words stay bare).
pub fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` (stdin from /dev/null) and waits at most `timeout`; on timeout
/// the child is killed and an error returned. A non-zero exit is *not* an
/// error here (see [`run_with_timeout`]).
///
/// An interrupt (see [`crate::interrupt`]) stops the wait early: the child is
/// killed and an error returned.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    output_inner(cmd, timeout, true)
}

fn output_inner(cmd: &mut Command, timeout: Duration, interruptible: bool) -> Result<Output> {
    let shown = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let waited = if interruptible {
        wait_interruptible(&mut child, timeout)?
    } else {
        wait_deadline(&mut child, timeout)?
    };
    let status = match waited {
        Some(status) => status,
        None => {
            kill_and_reap(&mut child);
            if interruptible && crate::interrupt::requested() {
                bail!("`{shown}` stopped: interrupted");
            }
            let err = collect(&stderr, Duration::from_millis(200));
            bail!(
                "`{shown}` did not finish within {timeout:?} (killed); stderr: {}",
                err.trim()
            );
        }
    };
    // A grandchild may keep the pipes open; don't wait for it forever.
    let out = collect(&stdout, Duration::from_secs(2));
    let err = collect(&stderr, Duration::from_secs(2));
    Ok(Output {
        status,
        stdout: out,
        stderr: err,
    })
}

/// Like [`output_with_timeout`], but a non-zero exit is an error carrying
/// stderr; returns stdout.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<String> {
    run_inner(cmd, timeout, true)
}

fn run_inner(cmd: &mut Command, timeout: Duration, interruptible: bool) -> Result<String> {
    let shown = describe(cmd);
    let out = output_inner(cmd, timeout, interruptible)?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}{}",
            out.status,
            out.stderr.trim(),
            if out.stdout.trim().is_empty() {
                String::new()
            } else {
                format!(" (stdout: {})", out.stdout.trim())
            }
        );
    }
    Ok(out.stdout)
}

/// Runs `ip ARGS` in the current (root) network namespace with the helper
/// timeout. It runs in its own process group and is not cut short by an
/// interrupt, so a Ctrl-C never stops a setup or cleanup step half-way.
pub fn ip(args: &[&str]) -> Result<String> {
    let mut c = Command::new("ip");
    c.args(args).process_group(0);
    run_inner(&mut c, HELPER_TIMEOUT, false)
}

/// Waits for `child` up to `timeout`; `None` if it is still running.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Like [`wait_deadline`], but also gives up (`None`) as soon as an
/// interrupt was requested (see [`crate::interrupt`]).
pub fn wait_interruptible(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if start.elapsed() >= timeout || crate::interrupt::requested() {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A child process killed and reaped on drop (a helper server a test
/// starts, such as an HTTP server inside a pod).
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

/// Kills `child` (SIGKILL) and reaps it; a child that already exited is fine.
pub fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = child.kill();
    // SIGKILL cannot be ignored, but a process stuck in the kernel (D state)
    // may take a moment; don't block forever on it.
    let _ = wait_deadline(child, Duration::from_secs(5));
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut p) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

fn collect(rx: &mpsc::Receiver<Vec<u8>>, wait: Duration) -> String {
    rx.recv_timeout(wait)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Last `lines` lines of a text file (for logs in error messages).
pub fn tail_file(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all[from..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Sends `signal` to `pid`; a process that is gone already is not an error.
pub fn signal_pid(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid <= 0 {
        return; // never signal a process group or everything
    }
    // SAFETY: kill(2) with a positive pid only signals that process.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Polls until none of `pids` is alive; false if some survive `timeout`.
pub fn wait_pids_gone(pids: &[u32], timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if !pids.iter().any(|p| pid_alive(*p)) {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

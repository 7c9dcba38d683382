//! A tiny command runner: every command that changes something is printed
//! before it runs, and a failure names the command that failed.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use bpfproxy_tests::process::quote;

/// A `Command` for `program` with `args`.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Runs `c`, printing it first; fails unless it exits 0.
pub fn run(c: &mut Command) -> Result<()> {
    let shown = show(c);
    println!("$ {shown}");
    let status = c
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `c` quietly and returns its stdout; fails unless it exits 0.
pub fn read(c: &mut Command) -> Result<String> {
    let shown = show(c);
    let out = c
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8"))
}

/// Runs `c` quietly; its stdout if it could start and exited 0, else `None`.
/// For probes ("is this installed?") where failure is an answer.
pub fn probe(c: &mut Command) -> Option<String> {
    let out = c.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}

/// The command as a shell line: `(cd DIR) VAR=value program args`.
fn show(c: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = c.get_current_dir() {
        parts.push(format!("(cd {})", dir.display()));
    }
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            parts.push(format!("{}={}", k.to_string_lossy(), quote(v)));
        }
    }
    parts.push(quote(c.get_program()));
    parts.extend(c.get_args().map(quote));
    parts.join(" ")
}

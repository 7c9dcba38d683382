//! A tiny command runner: every command that changes something is printed
//! before it runs, and a failure names the command that failed.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
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

/// Runs `c`, printing it first; fails unless it exits 0. Its stderr still
/// streams through, and a failure repeats the lines that name the cause:
/// CI shows only the end of a long log, where the cause has scrolled away.
pub fn run(c: &mut Command) -> Result<()> {
    let shown = show(c);
    println!("$ {shown}");
    let mut child = c
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let kept = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            let mut kept = Causes::default();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                kept.push(line);
            }
            kept
        })
    });
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    let kept = kept.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        bail!("`{shown}` failed ({status}){}", kept.render());
    }
    Ok(())
}

/// The lines of a command's stderr worth repeating when it fails: the first
/// ones that look like a cause, and the last few.
#[derive(Default)]
struct Causes {
    causes: Vec<String>,
    tail: VecDeque<String>,
}

impl Causes {
    const MAX_CAUSES: usize = 30;
    const TAIL: usize = 12;

    fn push(&mut self, line: String) {
        let lower = line.to_ascii_lowercase();
        let cause = ["error", "panicked", "fail", "no space"]
            .iter()
            .any(|w| lower.contains(w));
        if cause && self.causes.len() < Self::MAX_CAUSES {
            self.causes.push(line.clone());
        }
        if self.tail.len() == Self::TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn render(&self) -> String {
        let mut s = String::new();
        if !self.causes.is_empty() {
            s += "\n  its stderr's lines that name a cause:";
            for l in &self.causes {
                s += "\n    ";
                s += l;
            }
        }
        if !self.tail.is_empty() {
            s += "\n  its stderr's last lines:";
            for l in &self.tail {
                s += "\n    ";
                s += l;
            }
        }
        s
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_repeats_the_cause_and_the_tail() {
        let mut k = Causes::default();
        k.push("   Compiling foo".into());
        k.push("error: could not compile `foo`".into());
        for i in 0..20 {
            k.push(format!("line {i}"));
        }
        let r = k.render();
        assert!(r.contains("error: could not compile `foo`"), "{r}");
        assert!(r.contains("line 19") && !r.contains("line 7\n"), "{r}");
        assert!(!r.contains("Compiling foo"), "{r}");
    }

    #[test]
    fn run_reports_a_failing_commands_stderr() {
        let e = run(&mut cmd(
            "sh",
            ["-c", "echo 'Error: disk full' >&2; exit 3"],
        ))
        .expect_err("exit 3 is a failure");
        assert!(format!("{e}").contains("Error: disk full"), "{e}");
    }
}

//! Summaries and the report file.
use std::{fmt::Write as _, path::PathBuf, time::Duration};

/// p50, p95 and max of `samples`, in milliseconds.
pub fn summary(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {:8.2} ms  p95 {:8.2} ms  max {:8.2} ms  (n={})",
        ms(at(0.5)),
        ms(at(0.95)),
        ms(at(1.0)),
        samples.len()
    )
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints `text` and writes it to `target/bench/<name>.md`.
pub fn write(name: &str, title: &str, body: &str) -> anyhow::Result<()> {
    let mut text = String::new();
    let _ = writeln!(text, "# {title}\n");
    let _ = writeln!(text, "machine: {} cores; {}\n", cores(), kernel());
    text.push_str(body);
    print!("{text}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.md"));
    std::fs::write(&path, &text)?;
    println!("\nreport written to {}", path.display());
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("kernel {}", s.trim()))
        .unwrap_or_default()
}

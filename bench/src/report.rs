//! Summaries, tables and the report file.
use std::{fmt::Write as _, path::PathBuf, time::Duration};

/// p50, p95 and max of `samples`, in milliseconds.
pub fn summary(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort();
    format!(
        "p50 {:8.2} ms  p95 {:8.2} ms  max {:8.2} ms  (n={})",
        ms(quantile(samples, 0.5)),
        ms(quantile(samples, 0.95)),
        ms(quantile(samples, 1.0)),
        samples.len()
    )
}

/// The `q` quantile (nearest rank) of `sorted`, which must not be empty.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A markdown table whose first `labels` columns are left-aligned text and
/// the others right-aligned numbers; cells are padded so it also reads as
/// plain text on a terminal.
pub fn table(header: &[String], rows: &[Vec<String>], labels: usize) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&width)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < labels {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&rule));
    for row in rows {
        out.push_str(&line(row));
    }
    out
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
    let dir = dir()?;
    let path = dir.join(format!("{name}.md"));
    std::fs::write(&path, &text)?;
    println!("\nreport written to {}", path.display());
    Ok(())
}

/// `target/bench/`, created if missing.
pub fn dir() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
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

//! What the demo prints around its checks: numbered step headers, the
//! closing summary, and the small text helpers they share.

/// Numbered step headers.
pub(super) struct Steps {
    n: usize,
    total: usize,
}

impl Steps {
    pub(super) fn new(total: usize) -> Self {
        Steps { n: 0, total }
    }

    pub(super) fn next(&mut self, what: &str) {
        self.n += 1;
        println!("\n[{}/{}] {what}", self.n, self.total);
    }
}

/// One line per check, printed after the teardown.
#[derive(Debug, Default)]
pub(super) struct Summary {
    lines: Vec<(&'static str, String)>,
}

impl Summary {
    pub(super) fn add(&mut self, what: &'static str, text: String) {
        self.lines.push((what, text));
    }

    pub(super) fn print(&self) {
        println!("\nsummary: every check passed");
        for (what, text) in &self.lines {
            println!("  {what:<12} {text}");
        }
    }
}

/// `1 backend`, `4 backends`.
pub(super) fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub(super) fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plural_adds_an_s_unless_one() {
        assert_eq!(plural(1, "backend"), "1 backend");
        assert_eq!(plural(0, "pod"), "0 pods");
        assert_eq!(plural(4, "backend"), "4 backends");
    }

    #[test]
    fn indent_shifts_every_line_by_four() {
        assert_eq!(indent("a\nb"), "    a\n    b");
    }
}

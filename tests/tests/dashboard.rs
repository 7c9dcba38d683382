//! The Grafana dashboard (`manifests/grafana-dashboard.json`) and the
//! README's metrics reference, checked against what a real agent exports:
//! every query of every panel (and of the template variables) names a series
//! the agent's `/metrics` has, and every metric family the agent exports has
//! a row in the reference, with its type, while no row names one it lacks.
//! A renamed or added metric fails here instead of leaving an empty panel or
//! a stale table.
//!
//! prometheus-client leaves a labelled family out of the scrape until it has
//! a label set (an agent that never failed a map write shows no
//! `bpfproxy_map_write_errors_total` at all), so what the agent exports is
//! the scrape together with the families proxy-agent registers, read from
//! its sources; every family the scrape shows must agree with that scan.
//!
//! Metric names come out of PromQL through a small extractor rather than a
//! PromQL parser: it drops everything that cannot hold a metric name
//! (strings, label matchers, ranges, grouping clauses, Grafana variables,
//! numbers) and keeps the identifiers left that are neither calls nor
//! keywords. Its own tests below show what it keeps and what it drops.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpfproxy_tests::{manifest, Agent, Sandbox, SandboxConfig};
use serde_json::Value;

const VIP: &str = "10.96.0.10";
const WAIT: Duration = Duration::from_secs(20);
const DASHBOARD: &str = "manifests/grafana-dashboard.json";
/// The README section the reference table lives in.
const REFERENCE_HEADING: &str = "## Metrics reference";

fn repo_file(rel: &str) -> Result<String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

// ---- PromQL: which metric names does a query use ----

/// Keywords and literals that look like identifiers (binary operators,
/// modifiers); function and aggregation names are recognised as calls.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "atan2", "bool", "offset", "inf", "nan",
];
/// Clauses whose parenthesised list holds label names, not metrics.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Open,
    Close,
    Other,
}

/// Skips a string literal whose opening `quote` was just read. Backticks
/// are raw strings in PromQL; the other two take backslash escapes.
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars>, quote: char) {
    while let Some(c) = chars.next() {
        if c == '\\' && quote != '`' {
            chars.next();
        } else if c == quote {
            return;
        }
    }
}

/// `expr` without string literals and without what `{…}` and `[…]` hold
/// (label matchers, ranges, subqueries): label names there would pass for
/// metric names. Strings go while scanning, so a brace inside a matcher's
/// value cannot end the matcher early.
fn strip_enclosed(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut depth = 0usize;
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => skip_string(&mut chars, c),
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
        // Whatever was removed still separates the tokens around it.
        if depth > 0 || matches!(c, '}' | ']' | '"' | '\'' | '`') {
            out.push(' ');
        }
    }
    out
}

/// Consumes the characters `keep` accepts after the one already read.
fn take_while(
    chars: &mut std::iter::Peekable<std::str::Chars>,
    first: char,
    keep: impl Fn(char) -> bool,
) -> String {
    let mut s = String::from(first);
    while let Some(&c) = chars.peek() {
        if !keep(c) {
            break;
        }
        s.push(c);
        chars.next();
    }
    s
}

/// Identifiers, parentheses and everything else (numbers with their units
/// and exponents, Grafana's `$var`/`${var}`, operators) as one kind.
fn tokens(s: &str) -> Vec<Tok> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '(' => out.push(Tok::Open),
            ')' => out.push(Tok::Close),
            '$' => {
                take_while(&mut chars, c, |c| ident(c) || "{}".contains(c));
                out.push(Tok::Other);
            }
            '0'..='9' | '.' => {
                let n = take_while(&mut chars, c, |c| c.is_ascii_alphanumeric() || c == '.');
                // 1e-3: the sign belongs to the exponent.
                if n.ends_with(['e', 'E']) && chars.peek().is_some_and(|c| "+-".contains(*c)) {
                    chars.next();
                    take_while(&mut chars, '0', |c| c.is_ascii_digit());
                }
                out.push(Tok::Other);
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                out.push(Tok::Ident(take_while(&mut chars, c, ident)));
            }
            c if c.is_whitespace() => {}
            _ => out.push(Tok::Other),
        }
    }
    out
}

/// `toks` without grouping clauses (`by (le)`, `on (map) group_left`), so
/// an aggregation is always directly followed by its `(`.
fn drop_grouping(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out = Vec::with_capacity(toks.len());
    let mut it = toks.into_iter().peekable();
    while let Some(t) = it.next() {
        let Tok::Ident(id) = &t else {
            out.push(t);
            continue;
        };
        if !GROUPING.contains(&id.as_str()) {
            out.push(t);
            continue;
        }
        if it.peek() == Some(&Tok::Open) {
            // A label list: no nesting is possible inside it.
            for t in it.by_ref() {
                if t == Tok::Close {
                    break;
                }
            }
        }
    }
    out
}

/// The metric names a PromQL expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let toks = drop_grouping(tokens(&strip_enclosed(expr)));
    let mut names = BTreeSet::new();
    for (i, t) in toks.iter().enumerate() {
        let Tok::Ident(id) = t else { continue };
        let call = toks.get(i + 1) == Some(&Tok::Open);
        if !call && !KEYWORDS.contains(&id.as_str()) {
            names.insert(id.clone());
        }
    }
    names
}

/// The metric names a Grafana template variable's query reads: PromQL, or
/// Grafana's `label_values(selector, label)` / `query_result(expr)`.
fn variable_metric_names(query: &str) -> BTreeSet<String> {
    let q = query.trim();
    if let Some(args) = q
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(')'))
    {
        // One argument is a bare label name; with two, the first selects.
        return match args.rsplit_once(',') {
            Some((selector, _label)) => metric_names(selector),
            None => BTreeSet::new(),
        };
    }
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|a| a.strip_suffix(')'))
    {
        return metric_names(inner);
    }
    metric_names(q)
}

// ---- what the agent exports ----

/// `(family, type)` of every `# TYPE` line of a scrape.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// The series names a family of this type has (OpenMetrics suffixes, as
/// prometheus-client writes them: counters get `_total`).
fn series_of(family: &str, kind: &str) -> Vec<String> {
    let suffixes: &[&str] = match kind {
        "counter" => &["_total"],
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["", "_sum", "_count"],
        "info" => &["_info"],
        _ => &[""],
    };
    suffixes.iter().map(|s| format!("{family}{s}")).collect()
}

/// Every series name a scrape can hold: from its `# TYPE` lines (a family
/// no label set has touched yet has no sample, but is exported) and from
/// its samples.
fn exported_series(exposition: &str) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = families(exposition)
        .iter()
        .flat_map(|(f, k)| series_of(f, k))
        .collect();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        if let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
            out.insert(name.to_string());
        }
    }
    out
}

// ---- what proxy-agent registers ----

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            rust_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// The string literal `s` starts with (after blanks and one comma), and
/// the text after it.
fn string_literal(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start().strip_prefix(',').unwrap_or(s).trim_start();
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => out.extend(chars.next().map(|(_, c)| c)),
            '"' => return Some((out, &body[i + 1..])),
            _ => out.push(c),
        }
    }
    None
}

/// The metric type of the value `let ident` holds, from its declaration.
fn declared_kind(source: &str, ident: &str) -> Option<&'static str> {
    let at = source
        .find(&format!("let {ident} ="))
        .or_else(|| source.find(&format!("let {ident}:")))?;
    let decl = &source[at..at + source[at..].find(';')?];
    // Histogram first: a histogram's declaration mentions no other type;
    // a Family names its metric type (`Family::<L, Counter>`).
    ["Histogram", "Counter", "Gauge"]
        .into_iter()
        .find(|t| decl.contains(t))
        .map(|t| match t {
            "Histogram" => "histogram",
            "Counter" => "counter",
            _ => "gauge",
        })
}

/// `(family, type)` of every `.register("name", "help", value…)` in a file.
fn registrations(source: &str) -> Result<Vec<(String, String)>> {
    // Its names are not what `register` gives: teach this test about it
    // before using it. (`register_collector` families are listed by the
    // collector: see `registered_families`.)
    let other = "register_with_unit(";
    ensure!(!source.contains(other), "{other} is not understood here");
    let mut out = Vec::new();
    for (at, _) in source.match_indices(".register(") {
        let rest = &source[at + ".register(".len()..];
        let (name, rest) = string_literal(rest).context("register: a name literal")?;
        let (_help, rest) = string_literal(rest).with_context(|| format!("{name}: help"))?;
        let value = rest.trim_start().trim_start_matches(',').trim_start();
        let ident: String = value
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let kind = declared_kind(source, &ident)
            .with_context(|| format!("{name}: no declaration of {ident:?}"))?;
        out.push((name, kind.to_string()));
    }
    Ok(out)
}

/// `family → type` of every metric proxy-agent registers.
fn registered_families() -> Result<BTreeMap<String, String>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proxy-agent/src");
    let mut files = Vec::new();
    rust_files(&root, &mut files)?;
    // The per-Service traffic collector reads the kernel's counters at
    // each scrape (`register_collector`): its families are its own list.
    let mut out: BTreeMap<String, String> = proxy_agent::service_stats::FAMILIES
        .iter()
        .map(|f| (f.to_string(), "counter".to_string()))
        .collect();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for (name, kind) in registrations(&text).with_context(|| f.display().to_string())? {
            ensure!(
                out.insert(name.clone(), kind).is_none(),
                "{name} registered twice"
            );
        }
    }
    Ok(out)
}

/// The name the README reference uses: what a query names for counters
/// and gauges, the family for histograms.
fn reference_name(family: &str, kind: &str) -> String {
    match kind {
        "counter" => format!("{family}_total"),
        _ => family.to_string(),
    }
}

// ---- the dashboard ----

fn dashboard() -> Result<Value> {
    serde_json::from_str(&repo_file(DASHBOARD)?).context(DASHBOARD)
}

/// Every panel, the panels of rows included (rows themselves too).
fn panels_of(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// One query of the dashboard.
#[derive(Debug)]
struct Query {
    /// The panel and refId, or the variable, for messages.
    at: String,
    expr: String,
    /// A template variable's query (it may use Grafana's own functions).
    variable: bool,
}

/// Every query: panel targets and template variables.
fn dashboard_queries(d: &Value) -> Vec<Query> {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = Vec::new();
    for p in panels_of(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let at = format!("panel {:?} {}", text(&p["title"]), text(&t["refId"]));
            let expr = text(&t["expr"]);
            out.push(Query {
                at,
                expr,
                variable: false,
            });
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = &v["query"];
            let expr = if q.is_object() {
                text(&q["query"])
            } else {
                text(q)
            };
            let at = format!("variable {}", text(&v["name"]));
            out.push(Query {
                at,
                expr,
                variable: true,
            });
        }
    }
    out
}

/// `where: name` for every metric a query names that `exported` lacks.
fn missing_metrics(queries: &[Query], exported: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for q in queries {
        let names = if q.variable {
            variable_metric_names(&q.expr)
        } else {
            metric_names(&q.expr)
        };
        out.extend(
            names
                .into_iter()
                .filter(|n| !exported.contains(n))
                .map(|n| format!("{}: {n}", q.at)),
        );
    }
    out
}

/// The name of the dashboard's `datasource` template variable.
fn datasource_variable(d: &Value) -> Result<String> {
    let vars = d["templating"]["list"]
        .as_array()
        .context("templating.list")?;
    let v = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .context("no Prometheus datasource variable")?;
    Ok(v["name"].as_str().context("variable name")?.to_string())
}

/// Whether a `datasource` field points at the variable `var`.
fn uses_variable(ds: &Value, var: &str) -> bool {
    let uid = ds["uid"].as_str().or(ds.as_str()).unwrap_or("");
    uid == format!("${{{var}}}") || uid == format!("${var}")
}

/// Panels (rows aside) that lack a title, a query, or the variable.
fn panel_problems(d: &Value, var: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in panels_of(d).into_iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("");
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if title.is_empty() || p["gridPos"].is_null() {
            out.push(format!("panel {}: no title or gridPos", p["id"]));
        }
        if targets.is_empty() {
            out.push(format!("{title}: no targets"));
        }
        if !uses_variable(&p["datasource"], var) {
            out.push(format!(
                "{title}: datasource {} is not ${var}",
                p["datasource"]
            ));
        }
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            if expr.trim().is_empty() || !uses_variable(&t["datasource"], var) {
                out.push(format!("{title} {}: empty expr or datasource", t["refId"]));
            }
            // A name given as a matcher would escape the check below.
            if expr.contains("__name__") {
                out.push(format!("{title}: names a metric through __name__"));
            }
        }
    }
    out
}

// ---- the README's metrics reference ----

/// `name → type` of every row of the reference table: `| `name` | type | …`.
fn reference_rows(readme: &str) -> Result<BTreeMap<String, String>> {
    let start = readme
        .lines()
        .position(|l| l.trim() == REFERENCE_HEADING)
        .with_context(|| format!("README has no {REFERENCE_HEADING:?}"))?;
    let mut rows = BTreeMap::new();
    let section = readme.lines().skip(start + 1);
    for line in section.take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(name) = cells.get(1).and_then(|c| c.strip_prefix('`')) else {
            continue;
        };
        let name = name.trim_end_matches('`').to_string();
        let kind = cells.get(2).copied().unwrap_or("").to_string();
        if rows.insert(name.clone(), kind).is_some() {
            bail!("{name} has two rows in the metrics reference");
        }
    }
    Ok(rows)
}

/// What the reference gets wrong against the exported `families`.
fn reference_problems(
    rows: &BTreeMap<String, String>,
    families: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut wanted = BTreeSet::new();
    for (family, kind) in families {
        let name = reference_name(family, kind);
        match rows.get(&name) {
            None => out.push(format!("{name} ({kind}) is exported but has no row")),
            Some(k) if k != kind => out.push(format!("{name}: the row says {k}, it is a {kind}")),
            Some(_) => {}
        }
        wanted.insert(name);
    }
    for name in rows.keys().filter(|n| !wanted.contains(*n)) {
        out.push(format!("{name} has a row but the agent does not export it"));
    }
    out
}

// ---- the agent ----

/// An agent serving `default/web` (80→8080/TCP on both backends) beside a
/// Service it must skip, so labelled families have samples and the scrape
/// can check the source scan on them too.
fn start_agent(sb: &Sandbox) -> Result<Agent> {
    let ips = sb.backend_ips();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let docs = manifest::documents(&[
        manifest::service("default/web", VIP, &[("http", 80, 8080, "TCP")]),
        manifest::endpoint_slice("default/web", "web-1", &refs, &[("http", 8080, "TCP")], &[]),
        manifest::service("default/bad-ip", "10.96.999.1", &[("", 80, 8080, "TCP")]),
    ]);
    sb.write_manifest("web.yaml", &docs)?;
    let mut agent = sb.start_agent()?;
    agent.wait_for_backends(VIP, 80, "TCP", &sb.backend_addrs(8080), WAIT)?;
    Ok(agent)
}

/// The agent's /metrics once it holds `needle`, from inside the client
/// namespace it listens in; retried while its HTTP server may still be
/// binding.
fn scrape(sb: &Sandbox, agent: &mut Agent, needle: &str) -> Result<String> {
    let url = "http://127.0.0.1:10249/metrics";
    let deadline = Instant::now() + WAIT;
    loop {
        agent.check_alive()?;
        let text = sb.client(&["curl", "-sS", "--max-time", "5", url]);
        match text {
            Ok(text) if text.contains(needle) && text.contains("# EOF") => return Ok(text),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(text) => bail!("{url} lacks {needle:?}:\n{text}"),
            Err(e) => return Err(e.context(format!("scraping {url}"))),
        }
    }
}

/// The registered families, checked against those the scrape shows: same
/// names, same types (the scan must not drift from what the agent does).
fn exported_families(scrape: &str) -> Result<BTreeMap<String, String>> {
    let registered = registered_families()?;
    for (family, kind) in families(scrape) {
        ensure!(
            registered.get(&family) == Some(&kind),
            "the agent exports {family} ({kind}); the source scan found {:?}",
            registered.get(&family)
        );
    }
    Ok(registered)
}

#[test]
fn every_dashboard_query_and_reference_row_names_what_a_real_agent_exports() -> Result<()> {
    let sb = Sandbox::with_config(SandboxConfig {
        backends: 2,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..SandboxConfig::default()
    })?;
    let mut agent = start_agent(&sb)?;
    let text = scrape(&sb, &mut agent, "bpfproxy_skipped_objects_total{")?;
    let fams = exported_families(&text)?;
    ensure!(
        families(&text).len() > 10 && fams.len() > 15,
        "{fams:?}\n{text}"
    );
    let mut exported = exported_series(&text);
    exported.extend(fams.iter().flat_map(|(f, k)| series_of(f, k)));
    let queries = dashboard_queries(&dashboard()?);
    ensure!(queries.len() > 10, "{queries:?}");
    let missing = missing_metrics(&queries, &exported);
    ensure!(
        missing.is_empty(),
        "the dashboard names metrics the agent does not export:\n{}\n\nexported: {exported:?}",
        missing.join("\n")
    );
    let problems = reference_problems(&reference_rows(&repo_file("README.md")?)?, &fams);
    ensure!(
        problems.is_empty(),
        "README's {REFERENCE_HEADING} is stale:\n{}",
        problems.join("\n")
    );
    println!(
        "{} queries over {} exported series; {} families ({} in this scrape) in the reference",
        queries.len(),
        exported.len(),
        fams.len(),
        families(&text).len()
    );
    agent.check_alive()
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_on_a_datasource_variable() -> Result<()> {
    let d = dashboard()?;
    ensure!(d["title"].is_string() && d["uid"].is_string(), "title, uid");
    let var = datasource_variable(&d)?;
    let panels = panels_of(&d);
    ensure!(panels.iter().filter(|p| p["type"] != "row").count() >= 10);
    let problems = panel_problems(&d, &var);
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            ensure!(
                uses_variable(&v["datasource"], &var),
                "variable {}",
                v["name"]
            );
        }
    }
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    ensure!(ids.len() == panels.len(), "panel ids must be unique");
    // `kubectl apply -k manifests/` ships it as a ConfigMap.
    let k = repo_file("manifests/kustomization.yaml")?;
    ensure!(
        k.contains("configMapGenerator:") && k.contains("- grafana-dashboard.json"),
        "{k}"
    );
    Ok(())
}

#[test]
fn the_extractor_keeps_metric_names_and_drops_functions_labels_and_clauses() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(kubeproxy_sync_proxy_rules_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))"#,
            &["kubeproxy_sync_proxy_rules_duration_seconds_bucket"],
        ),
        (
            r#"sum without (cpu) (rate(a_total{reason=~"err_.*|x}", map!='m'}[5m:1m] offset 1h)) / on (map) group_left (kind) b"#,
            &["a_total", "b"],
        ),
        (
            "time() - max by (instance) (last_seconds)",
            &["last_seconds"],
        ),
        ("sum(rate(x[1m])) by (le)", &["x"]),
        (
            "clamp_min(a - b, 0) > bool 1e-3 and c unless d or e * nan",
            &["a", "b", "c", "d", "e"],
        ),
        (
            "topk(5, rec:rule:sum) * 2.5e+3 + atan2 y",
            &["rec:rule:sum", "y"],
        ),
        (r#"label_replace(up, "dst", "$1", "src", "(.*)")"#, &["up"]),
        ("count_values(\"v\", z) @ end()", &["z"]),
        ("vector(1)", &[]),
    ];
    for (expr, want) in cases {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(metric_names(expr), want, "{expr}");
    }
    assert_eq!(
        variable_metric_names("label_values(bpfproxy_map_capacity_entries{job=\"x\"}, instance)"),
        BTreeSet::from(["bpfproxy_map_capacity_entries".to_string()])
    );
    assert!(variable_metric_names("label_values(instance)").is_empty());
}

/// A scrape shaped as prometheus-client writes it.
const EXPOSITION: &str = "# HELP bpfproxy_repins Re-pins.\n# TYPE bpfproxy_repins counter\n\
bpfproxy_repins_total 0\n# TYPE lat_seconds histogram\nlat_seconds_sum 0.0\n\
# TYPE untouched counter\n# TYPE fill gauge\nfill{map=\"m\"} 3\n# EOF\n";

#[test]
fn a_name_the_agent_does_not_export_is_reported() {
    let exported = exported_series(EXPOSITION);
    let q = |expr: &str| Query {
        at: format!("q {expr}"),
        expr: expr.to_string(),
        variable: false,
    };
    let queries = [
        q("rate(bpfproxy_repins_total[5m])"),
        q("histogram_quantile(0.5, rate(lat_seconds_bucket[5m]))"),
        q("increase(untouched_total[1h]) + fill"),
        // A counter's family name is no series; nor is a histogram's.
        q("bpfproxy_repins"),
        q("lat_seconds"),
        q("sum(bpfproxy_bogus_total{map=\"x\"})"),
        Query {
            at: "var".to_string(),
            expr: "label_values(fill_ratio, instance)".to_string(),
            variable: true,
        },
    ];
    assert_eq!(
        missing_metrics(&queries, &exported),
        [
            "q bpfproxy_repins: bpfproxy_repins",
            "q lat_seconds: lat_seconds",
            "q sum(bpfproxy_bogus_total{map=\"x\"}): bpfproxy_bogus_total",
            "var: fill_ratio",
        ]
    );
}

#[test]
fn a_stale_or_incomplete_reference_is_reported() -> Result<()> {
    let readme = "# x\n## Metrics reference\n\n| metric | type | labels | meaning |\n|---|---|---|---|\n\
| `bpfproxy_repins_total` | counter | | re-pins |\n| `fill` | counter | `map` | wrong type |\n\
| `gone_total` | counter | | removed metric |\n\n## Next\n| `lat_seconds` | histogram | | not in the section |\n";
    let problems = reference_problems(&reference_rows(readme)?, &families(EXPOSITION));
    assert_eq!(
        problems,
        [
            "fill: the row says counter, it is a gauge",
            "lat_seconds (histogram) is exported but has no row",
            "untouched_total (counter) is exported but has no row",
            "gone_total has a row but the agent does not export it",
        ]
    );
    Ok(())
}

#[test]
fn the_source_scan_finds_each_registration_and_its_type() -> Result<()> {
    let src = r#"
        let h = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        r.register("lat_seconds", "Latency, in \"seconds\"", h.clone());
        let fam = Family::<MapLabels, Counter>::default();
        r.register(
            "errors",
            "Failures, by map",
            fam.clone(),
        );
        let ts: FloatGauge = FloatGauge::default();
        r.register("stamp_seconds", "When", ts.clone());
    "#;
    let got = registrations(src)?;
    let want = [
        ("lat_seconds", "histogram"),
        ("errors", "counter"),
        ("stamp_seconds", "gauge"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(registrations("r.register_with_unit(\"x\", \"h\", Unit::Seconds, c);").is_err());
    // And proxy-agent's own: every kind there, kube-proxy's names included.
    let real = registered_families()?;
    for (family, kind) in [
        ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
        ("kubeproxy_sync_proxy_rules_endpoint_changes", "counter"),
        (
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "gauge",
        ),
        ("bpfproxy_map_write_errors", "counter"),
    ] {
        assert_eq!(
            real.get(family).map(String::as_str),
            Some(kind),
            "{family}: {real:?}"
        );
    }
    Ok(())
}

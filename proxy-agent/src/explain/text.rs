//! The text walk: one line per step, in the kernel's order.
use std::fmt;

use super::report::{AffinityEntry, AffinityStep, ExistingFlow, Explanation, RangeCheck};

/// At most this many flows in the text walk: a client without a port may
/// have hundreds, mostly closing ones waiting out their timeout.
const TEXT_FLOWS: usize = 10;

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client = self.client.as_deref().unwrap_or("any client");
        writeln!(f, "connection: {client} → {}", self.destination)?;
        writeln!(f, "view: {}", self.view)?;
        for flow in self.existing_flows.iter().take(TEXT_FLOWS) {
            writeln!(f, "existing flow: {}", flow_line(flow))?;
        }
        if self.existing_flows.len() > TEXT_FLOWS {
            let more = self.existing_flows.len() - TEXT_FLOWS;
            writeln!(f, "existing flows: … {more} more (--json lists them all)")?;
        }
        if let Some(nm) = &self.no_match {
            writeln!(f, "frontend: none matched ({})", nm.reason)?;
        }
        if let Some(fe) = &self.frontend {
            writeln!(
                f,
                "frontend {} ({}) matched as {}, {} view, revNAT {}",
                fe.key, fe.service, fe.matched_as, fe.scope, fe.rev_nat_id
            )?;
            let flags = if fe.flags.is_empty() {
                "none".to_string()
            } else {
                fe.flags.join(", ")
            };
            writeln!(f, "flags: {flags}")?;
            for filter in &fe.filters {
                writeln!(f, "filter: {filter}")?;
            }
        }
        if let Some(r) = &self.source_ranges {
            writeln!(f, "source ranges: {}", ranges_line(r, client))?;
        }
        if let Some(a) = &self.affinity {
            writeln!(f, "affinity: {}", affinity_line(a))?;
            for e in &a.other_entries {
                writeln!(f, "    {}", entry_line(e))?;
            }
        }
        if self.frontend.is_some() {
            writeln!(f, "candidates: {}", self.candidates_line())?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        let to = self
            .verdict
            .backend
            .as_deref()
            .map(|b| format!(" to {b}"))
            .unwrap_or_default();
        writeln!(
            f,
            "verdict: {}{to} ({})",
            self.verdict.action, self.verdict.because
        )
    }
}

impl Explanation {
    fn candidates_line(&self) -> String {
        if self.candidates.is_empty() {
            return "none".into();
        }
        let all: Vec<String> = self
            .candidates
            .iter()
            .map(|c| {
                let local = if c.local { ", local" } else { "" };
                format!("{} (weight {}/{}{local})", c.backend, c.weight, c.of)
            })
            .collect();
        all.join(" ")
    }
}

fn flow_line(fl: &ExistingFlow) -> String {
    let snat = fl
        .snat
        .as_deref()
        .map(|s| format!(" snat {s}"))
        .unwrap_or_default();
    let state = if fl.state.is_empty() {
        String::new()
    } else {
        format!(" {}", fl.state)
    };
    let table = if fl.confirmed { "confirmed" } else { "new" };
    format!(
        "conntrack entry from {} → backend {}{snat}{state}, idle {}s ({table} table)",
        fl.client, fl.backend, fl.idle_s
    )
}

fn ranges_line(r: &RangeCheck, client: &str) -> String {
    let verdict = match (r.allowed, &r.matched) {
        (Some(true), Some(m)) => format!("{client} allowed (by {m})"),
        (Some(_), _) => format!("{client} denied"),
        (None, _) => "give --src to check a client".to_string(),
    };
    format!("{}: {verdict}", r.ranges.join(", "))
}

fn affinity_line(a: &AffinityStep) -> String {
    let head = format!("ClientIP, timeout {}s", a.timeout_s);
    match (&a.client_key, &a.entry) {
        (Some(_), Some(e)) => format!("{head}; {}", entry_line(e)),
        (Some(c), None) => format!("{head}; client {c} has no entry: the pick below is remembered"),
        (None, _) => format!(
            "{head}; {} entries of unknown clients",
            a.other_entries.len()
        ),
    }
}

fn entry_line(e: &AffinityEntry) -> String {
    let backend = e
        .backend
        .clone()
        .unwrap_or_else(|| format!("id {} (gone)", e.backend_id));
    match e.expires_in_s {
        Some(left) if e.backend.is_some() => format!(
            "client {} pinned to backend {backend} (entry expires in {left}s)",
            e.client
        ),
        Some(_) => format!(
            "client {} was pinned to backend {backend}, now gone: re-picked",
            e.client
        ),
        None => format!(
            "client {} was pinned to backend {backend}; expired (idle {}s): re-picked",
            e.client, e.idle_s
        ),
    }
}

//! Kubernetes manifests as YAML strings, for the agent's `--source` directory.
//!
//! Objects are built as JSON values (so the structure is exactly the API's)
//! and printed as block YAML; any string that could be misread as a number,
//! boolean or null (`"80"`, `"yes"`, `"10.96.0.10"`) is double-quoted.

use serde_json::{json, Map, Value};

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty for an unnamed port (only valid when it is the only port).
    pub name: String,
    pub port: u16,
    /// A number, or a named container port.
    pub target_port: TargetPort,
    /// "TCP", "UDP" or "SCTP".
    pub protocol: String,
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A Service beyond what [`service`] covers: type, traffic policies,
/// session affinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// `namespace/name`, or `name` for the `default` namespace.
    pub name: String,
    /// "ClusterIP" (default), "NodePort", "LoadBalancer", "ExternalName".
    pub type_: String,
    /// An IPv4 address, "None" for a headless Service, or `None` to omit.
    pub cluster_ip: Option<String>,
    pub ports: Vec<ServicePort>,
    pub internal_traffic_policy: Option<String>,
    pub external_traffic_policy: Option<String>,
    /// `Some(timeout_seconds)` for `sessionAffinity: ClientIP`.
    pub client_ip_affinity_seconds: Option<u32>,
    pub external_name: Option<String>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<String>,
    /// `status.loadBalancer.ingress[].ip`, as a cloud or MetalLB sets it.
    pub load_balancer_ips: Vec<String>,
    /// `spec.loadBalancerSourceRanges`.
    pub source_ranges: Vec<String>,
    pub labels: Vec<(String, String)>,
}

impl ServiceSpec {
    /// A ClusterIP Service with no ports yet.
    pub fn cluster_ip(name: &str, cluster_ip: &str) -> Self {
        ServiceSpec {
            name: name.to_string(),
            type_: "ClusterIP".to_string(),
            cluster_ip: Some(cluster_ip.to_string()),
            ports: Vec::new(),
            internal_traffic_policy: None,
            external_traffic_policy: None,
            client_ip_affinity_seconds: None,
            external_name: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Adds a port (`protocol` "TCP"/"UDP"/"SCTP").
    pub fn port(mut self, name: &str, port: u16, target_port: u16, protocol: &str) -> Self {
        self.ports.push(ServicePort {
            name: name.to_string(),
            port,
            target_port: TargetPort::Number(target_port),
            protocol: protocol.to_string(),
            node_port: None,
        });
        self
    }

    /// The object as JSON (the API structure).
    pub fn to_value(&self) -> Value {
        let (ns, name) = split_name(&self.name);
        let mut spec = Map::new();
        spec.insert("type".into(), json!(self.type_));
        if let Some(ip) = &self.cluster_ip {
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
        }
        if let Some(en) = &self.external_name {
            spec.insert("externalName".into(), json!(en));
        }
        if !self.external_ips.is_empty() {
            spec.insert("externalIPs".into(), json!(self.external_ips));
        }
        if !self.ports.is_empty() {
            let ports: Vec<Value> = self
                .ports
                .iter()
                .map(|p| {
                    let mut m = Map::new();
                    if !p.name.is_empty() {
                        m.insert("name".into(), json!(p.name));
                    }
                    m.insert("protocol".into(), json!(p.protocol));
                    m.insert("port".into(), json!(p.port));
                    m.insert(
                        "targetPort".into(),
                        match &p.target_port {
                            TargetPort::Number(n) => json!(n),
                            TargetPort::Name(s) => json!(s),
                        },
                    );
                    if let Some(np) = p.node_port {
                        m.insert("nodePort".into(), json!(np));
                    }
                    Value::Object(m)
                })
                .collect();
            spec.insert("ports".into(), Value::Array(ports));
        }
        if let Some(p) = &self.internal_traffic_policy {
            spec.insert("internalTrafficPolicy".into(), json!(p));
        }
        if let Some(p) = &self.external_traffic_policy {
            spec.insert("externalTrafficPolicy".into(), json!(p));
        }
        if !self.source_ranges.is_empty() {
            spec.insert("loadBalancerSourceRanges".into(), json!(self.source_ranges));
        }
        if let Some(t) = self.client_ip_affinity_seconds {
            spec.insert("sessionAffinity".into(), json!("ClientIP"));
            spec.insert(
                "sessionAffinityConfig".into(),
                json!({"clientIP": {"timeoutSeconds": t}}),
            );
        }
        let mut svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(ns, name, &self.labels),
            "spec": Value::Object(spec),
        });
        if !self.load_balancer_ips.is_empty() {
            let ingress: Vec<Value> = self
                .load_balancer_ips
                .iter()
                .map(|ip| json!({ "ip": ip }))
                .collect();
            svc["status"] = json!({ "loadBalancer": { "ingress": ingress } });
        }
        svc
    }

    pub fn to_yaml(&self) -> String {
        to_yaml(&self.to_value())
    }
}

/// A ClusterIP Service: `name` is `namespace/name` or `name` (namespace
/// `default`); `ports` are `(port_name, port, target_port, "TCP"|"UDP")`.
pub fn service(name: &str, cluster_ip: &str, ports: &[(&str, u16, u16, &str)]) -> String {
    let mut s = ServiceSpec::cluster_ip(name, cluster_ip);
    for (pname, port, target, proto) in ports {
        s = s.port(pname, *port, *target, proto);
    }
    s.to_yaml()
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: String,
    pub ready: bool,
    /// Defaults to `ready` (as the EndpointSlice controller sets it).
    pub serving: Option<bool>,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
}

impl Endpoint {
    pub fn ready(ip: &str) -> Self {
        Endpoint {
            ip: ip.to_string(),
            ready: true,
            serving: None,
            terminating: false,
            node_name: None,
            zone: None,
        }
    }

    pub fn not_ready(ip: &str) -> Self {
        Endpoint {
            ready: false,
            ..Endpoint::ready(ip)
        }
    }

    /// Terminating but still serving (the graceful-termination fallback).
    pub fn terminating_serving(ip: &str) -> Self {
        Endpoint {
            ready: false,
            serving: Some(true),
            terminating: true,
            ..Endpoint::ready(ip)
        }
    }

    pub fn on_node(mut self, node: &str) -> Self {
        self.node_name = Some(node.to_string());
        self
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("addresses".into(), json!([self.ip]));
        m.insert(
            "conditions".into(),
            json!({
                "ready": self.ready,
                "serving": self.serving.unwrap_or(self.ready),
                "terminating": self.terminating,
            }),
        );
        if let Some(n) = &self.node_name {
            m.insert("nodeName".into(), json!(n));
        }
        if let Some(z) = &self.zone {
            m.insert("zone".into(), json!(z));
        }
        Value::Object(m)
    }
}

/// A `discovery.k8s.io/v1` EndpointSlice (addressType IPv4) of `service`
/// (`namespace/name` or `name`), labelled `kubernetes.io/service-name`.
/// `ports` are `(port_name, port, "TCP"|"UDP")`; the name must match the
/// Service port's name ("" for an unnamed port).
pub fn endpoint_slice_with(
    service: &str,
    slice_name: &str,
    endpoints: &[Endpoint],
    ports: &[(&str, u16, &str)],
) -> String {
    let (ns, svc) = split_name(service);
    let labels = vec![("kubernetes.io/service-name".to_string(), svc.to_string())];
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port, proto)| {
            let mut m = Map::new();
            // The API distinguishes an unnamed port by name "".
            m.insert("name".into(), json!(name));
            m.insert("protocol".into(), json!(proto));
            m.insert("port".into(), json!(port));
            Value::Object(m)
        })
        .collect();
    let v = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata(ns, slice_name, &labels),
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(Endpoint::to_value).collect::<Vec<_>>(),
        "ports": ports,
    });
    to_yaml(&v)
}

/// [`endpoint_slice_with`] for plain IPs, `ready[i]` for `ips[i]` (missing
/// entries count as ready).
pub fn endpoint_slice(
    service: &str,
    slice_name: &str,
    ips: &[&str],
    ports: &[(&str, u16, &str)],
    ready: &[bool],
) -> String {
    let eps: Vec<Endpoint> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            if ready.get(i).copied().unwrap_or(true) {
                Endpoint::ready(ip)
            } else {
                Endpoint::not_ready(ip)
            }
        })
        .collect();
    endpoint_slice_with(service, slice_name, &eps, ports)
}

/// Several documents in one file.
pub fn documents(docs: &[String]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(d);
    }
    out
}

fn split_name(full: &str) -> (&str, &str) {
    full.split_once('/').unwrap_or(("default", full))
}

fn metadata(ns: &str, name: &str, labels: &[(String, String)]) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("namespace".into(), json!(ns));
    if !labels.is_empty() {
        let l: Map<String, Value> = labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        m.insert("labels".into(), Value::Object(l));
    }
    Value::Object(m)
}

/// Block-style YAML for a JSON value. Strings are plain when that cannot
/// change their type, else double-quoted with JSON escapes (a valid YAML
/// double-quoted scalar); keys are plain when safe and in Kubernetes' usual
/// order.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

/// Keys in the order Kubernetes documents and kubectl print them; keys not
/// listed follow in alphabetical order (serde_json's maps are sorted).
const KEY_ORDER: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "addressType",
    "spec",
    "type",
    "clusterIP",
    "clusterIPs",
    "externalName",
    "addresses",
    "conditions",
    "ready",
    "serving",
    "terminating",
    "nodeName",
    "zone",
    "endpoints",
    "ports",
    "protocol",
    "port",
    "targetPort",
    "nodePort",
];

fn ordered(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    entries.sort_by_key(|(k, _)| {
        (
            KEY_ORDER
                .iter()
                .position(|o| o == k)
                .unwrap_or(KEY_ORDER.len()),
            k.as_str(),
        )
    });
    entries
}

fn write_map(out: &mut String, m: &Map<String, Value>, indent: usize) {
    for (k, v) in ordered(m) {
        out.push_str(&" ".repeat(indent));
        write_entry(out, k, v, indent);
    }
}

/// `key: value` with the key's indentation already written.
fn write_entry(out: &mut String, k: &str, v: &Value, indent: usize) {
    out.push_str(&key(k));
    out.push(':');
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, indent);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, a: &[Value], indent: usize) {
    for item in a {
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => {
                // First entry on the dash line, the rest aligned under it.
                for (i, (k, v)) in ordered(m).into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&" ".repeat(indent + 2));
                    }
                    write_entry(out, k, v, indent + 2);
                }
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_seq(out, inner, indent + 2);
            }
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

/// Whether a string can be written unquoted and still reads back as this
/// very string in YAML 1.1 and 1.2: starts with a letter, only
/// `[A-Za-z0-9._/-]`, and no boolean/null word (`yes`, `on`, `null`, …).
fn plain_safe(s: &str) -> bool {
    const WORDS: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if plain_safe(s) => s.clone(),
        Value::Object(_) => "{}".to_string(),
        Value::Array(_) => "[]".to_string(),
        // Value's Display is JSON: quoted+escaped strings, plain numbers,
        // true/false/null — all valid YAML scalars.
        other => other.to_string(),
    }
}

/// Writes `dir/<name>` atomically (a hidden temporary file, then rename), so
/// an agent watching `dir` never reads half a file.
pub fn write_file(dir: &std::path::Path, name: &str, yaml: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    check_file_name(name)?;
    // A dot-file: a watcher that ignores hidden files never sees it.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
    let dst = dir.join(name);
    std::fs::rename(&tmp, &dst).with_context(|| format!("renaming to {}", dst.display()))
}

/// Removes `dir/<name>` (missing is fine).
pub fn remove_file(dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    check_file_name(name)?;
    let p = dir.join(name);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

fn check_file_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        anyhow::bail!("manifest name {name:?} must be a plain, non-hidden file name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Value {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn service_yaml_roundtrips() {
        let y = service(
            "demo/web",
            "10.96.0.10",
            &[("http", 80, 8080, "TCP"), ("dns", 53, 5353, "UDP")],
        );
        let v = parse(&y);
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Service");
        assert_eq!(v["metadata"]["namespace"], "demo");
        assert_eq!(v["metadata"]["name"], "web");
        assert_eq!(v["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(v["spec"]["clusterIPs"][0], "10.96.0.10");
        assert_eq!(v["spec"]["ports"][0]["name"], "http");
        assert_eq!(v["spec"]["ports"][0]["port"], 80);
        assert_eq!(v["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(v["spec"]["ports"][1]["protocol"], "UDP");
        // Exactly what the structure says, nothing else.
        assert_eq!(
            v,
            ServiceSpec::cluster_ip("demo/web", "10.96.0.10")
                .port("http", 80, 8080, "TCP")
                .port("dns", 53, 5353, "UDP")
                .to_value()
        );
    }

    #[test]
    fn default_namespace_and_unnamed_port() {
        let v = parse(&service("web", "10.96.0.11", &[("", 80, 8080, "TCP")]));
        assert_eq!(v["metadata"]["namespace"], "default");
        assert!(v["spec"]["ports"][0].get("name").is_none());
    }

    #[test]
    fn endpoint_slice_yaml_roundtrips() {
        let y = endpoint_slice(
            "demo/web",
            "web-abc",
            &["10.200.0.2", "10.200.0.3"],
            &[("http", 8080, "TCP")],
            &[true, false],
        );
        let v = parse(&y);
        assert_eq!(v["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(v["kind"], "EndpointSlice");
        assert_eq!(v["addressType"], "IPv4");
        assert_eq!(v["metadata"]["name"], "web-abc");
        assert_eq!(v["metadata"]["namespace"], "demo");
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert_eq!(v["endpoints"][0]["addresses"][0], "10.200.0.2");
        assert_eq!(v["endpoints"][0]["conditions"]["ready"], true);
        assert_eq!(v["endpoints"][1]["conditions"]["ready"], false);
        assert_eq!(v["endpoints"][1]["conditions"]["serving"], false);
        assert_eq!(v["ports"][0]["name"], "http");
        assert_eq!(v["ports"][0]["port"], 8080);
        assert_eq!(v["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn empty_slice_has_empty_lists() {
        let v = parse(&endpoint_slice("web", "web-0", &[], &[], &[]));
        assert_eq!(v["endpoints"], json!([]));
        assert_eq!(v["ports"], json!([]));
    }

    #[test]
    fn multi_document_file() {
        let docs = documents(&[
            service("web", "10.96.0.10", &[("http", 80, 8080, "TCP")]),
            endpoint_slice(
                "web",
                "web-1",
                &["10.200.0.2"],
                &[("http", 8080, "TCP")],
                &[],
            ),
        ]);
        let parsed: Vec<Value> = serde_yaml::Deserializer::from_str(&docs)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1]["kind"], "EndpointSlice");
    }

    #[test]
    fn tricky_strings_stay_strings() {
        let v = json!({
            "a": "yes", "b": "80", "c": "null", "d": "x: y", "e": "\"q\"\n",
            "f": "10.96.0.10", "g": "1e3", "h": "On", "i": "~", "j": "0x1F",
            "k": "plain-name.v1/x", "l": "", "m": "Y", "n": "-1",
        });
        assert_eq!(parse(&to_yaml(&v)), v);
    }

    #[test]
    fn keys_in_kubernetes_order() {
        let y = service("web", "10.96.0.10", &[("http", 80, 8080, "TCP")]);
        let keys: Vec<&str> = y
            .lines()
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split(':').next())
            .collect();
        assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec"]);
        assert!(
            y.contains("  - name: http\n    protocol: TCP\n    port: 80\n"),
            "{y}"
        );
    }
}

//! bpfproxy: an eBPF replacement for kube-proxy.
//!
//! The flow: source → [`model::Model`] (every Service's build, conflicts
//! resolved) → [`datapath::render`] → [`datapath::plan`] →
//! [`datapath::apply`] through [`maps::LbMaps`] → the kernel programs.
//! Everything before `apply` is pure. A change to some Services goes the
//! same way for those Services alone (`sync`'s incremental path).
pub mod agent;
pub mod bpffs;
pub mod cli;
pub mod ct_filter;
pub mod ct_sweeper;
pub mod datapath;
pub mod drift;
pub mod dump;
pub mod explain;
pub mod health;
pub mod healthcheck;
pub mod kernel;
pub mod loader;
pub mod malloc;
pub mod map_stats;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod node_addrs;
pub mod node_links;
pub mod node_watch;
pub mod preflight;
pub mod runner;
pub mod server;
pub mod service_stats;
pub mod snat_ports;
pub mod sock_diag;
pub mod source;
pub mod stale_udp;
pub mod supervise;
pub mod sync;

//! A node's network for the program tests and the TC benchmark: the FIB
//! lookups of the TC programs under BPF_PROG_TEST_RUN see the routes of the
//! calling thread's network namespace, so the thread joins one whose routes
//! the test controls instead of the host's.
//!
//! ```text
//!  node ns: NIC 10.0.0.1/24 ── peer ns 10.0.0.2 (the next hop)
//!    10.244.2.0/24, 198.51.100.0/24, 203.0.113.0/24 via 10.0.0.2 (host-gw style)
//!    flannel.1 10.244.1.0/32, MTU 1450, VXLAN over the NIC:
//!      10.244.3.0/24 via 10.244.3.0 onlink, permanent neighbour
//! ```
//!
//! No packet is ever sent: BPF_PROG_TEST_RUN hands packets back, and a
//! redirect verdict is only a number.
use anyhow::{Context, Result};

use crate::{netns::Netns, process, veth::VethPair};

/// The node address on the NIC.
pub const NODE: &str = "10.0.0.1";
/// The overlay's address on this node and its MTU.
pub const OVERLAY: &str = "10.244.1.0";
pub const OVERLAY_MTU: u32 = 1450;

/// The namespaces and links; the calling thread is inside the node
/// namespace from [`NodeNet::new`] on.
#[derive(Debug)]
pub struct NodeNet {
    // Dropped first: the veth goes with its namespaces anyway.
    _veth: VethPair,
    _peer: Netns,
    _node: Netns,
}

impl NodeNet {
    /// Puts the calling thread into the node namespace too (the programs'
    /// route lookups under BPF_PROG_TEST_RUN see the caller's namespace).
    pub fn join_this_thread(&self) -> Result<()> {
        self._node.join_this_thread()
    }

    /// Builds the node (names carry `tag`) and joins it on this thread.
    pub fn new(tag: &str) -> Result<Self> {
        let node = Netns::new(&format!("{tag}n"))?;
        let peer = Netns::new(&format!("{tag}p"))?;
        let veth = VethPair::new(&node, &[&format!("{NODE}/24")], &peer, &["10.0.0.2/24"])?;
        let nic = veth.a().to_string();
        let mut sysctl = node.command("sysctl")?;
        sysctl.args(["-qw", "net.ipv4.ip_forward=1"]);
        process::run_with_timeout(&mut sysctl, process::HELPER_TIMEOUT)
            .context("enabling forwarding")?;
        for cmd in [
            "route add 10.244.2.0/24 via 10.0.0.2".to_string(),
            "route add 198.51.100.0/24 via 10.0.0.2".to_string(),
            "route add 203.0.113.0/24 via 10.0.0.2".to_string(),
            format!(
                "link add flannel.1 type vxlan id 1 local {NODE} dev {nic} dstport 8472 nolearning"
            ),
            format!("link set flannel.1 mtu {OVERLAY_MTU} up"),
            format!("addr add {OVERLAY}/32 dev flannel.1"),
            "route add 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink".to_string(),
            "neigh add 10.244.3.0 lladdr 02:00:0a:f4:03:00 dev flannel.1 nud permanent".to_string(),
        ] {
            node.ip_line(&cmd)?;
        }
        node.join_this_thread()?;
        Ok(Self {
            _veth: veth,
            _peer: peer,
            _node: node,
        })
    }
}

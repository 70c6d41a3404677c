//! Direct server return (`forwarding = "dsr"`): the master reads the clients' frames for a
//! VIP:port on `node.interface`, picks a backend (flow table, then the affinity group's stick
//! table, then Maglev over the client key), rewrites the destination MAC and sends the frame
//! on; the backend holds the VIP on its loopback and replies to the client directly.
//!
//! - [`packet`]: frame parsing and classification (pure).
//! - [`arp`]: ARP for the VIP and for backend MACs (pure).
//! - [`flow`]: the bounded flow table (pure).
//! - [`engine`]: the per-frame decision over the snapshot (no sockets).
//! - [`fastpath`]: the forwarder's side of the XDP fast path (which flows the program holds).
//! - [`forwarder`]: the AF_PACKET socket, its thread, start/stop and the active flag.
//! - [`sync`]: the flow-table sync datagram between balancer nodes (pure).
//! - [`metrics`]: the `portico_dsr_*` families.
//! - [`xdp`]: the XDP fast path: an eBPF program that forwards flow-table hits in the driver.
//!
//! # Why the VIP is not a local address here
//!
//! If the master held the VIP as a local address, the kernel would take every VIP packet as
//! its own as well: answer TCP SYNs with resets (nothing listens), send ICMP port
//! unreachables for UDP. Dropping the kernel's copy would need an nftables or tc rule, i.e.
//! modules and tools a namespace may not have. Instead the forwarder answers ARP for the VIP
//! itself (and announces it with gratuitous ARP when it becomes active), and the VIP is never
//! added to the interface: the kernel sees VIP packets as not for this host and, with IP
//! forwarding off on that interface (checked at start), silently discards its copy. The
//! AF_PACKET socket still receives every frame, before that. A node that stops forwarding
//! simply stops answering ARP; the next master's announcement moves the clients over.
//!
//! See docs/dsr.md for the topology, the gateway side and failover behaviour.

pub mod arp;
pub mod engine;
pub mod fastpath;
pub mod flow;
pub mod forwarder;
pub mod metrics;
pub mod packet;
pub mod sync;
pub mod xdp;

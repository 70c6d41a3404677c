//! The XDP fast path for `dsr`: an eBPF program on the interface's receive path that
//! forwards frames of known flows itself, in the driver, before any socket buffer exists.
//!
//! # Why
//!
//! The AF_PACKET forwarder ([`super::forwarder`]) tops out around 300k frames/s per core:
//! every frame is copied to user space and sent back down. Katran's answer is followed here:
//! the XDP program rewrites the MACs of a flow-table *hit* and returns `XDP_TX` (the frame
//! leaves by the interface it came in on, as dsr frames do), and everything else returns
//! `XDP_PASS`, so the AF_PACKET path sees it exactly as today and stays the one place that
//! decides: it places new flows (stick table, Maglev) and inserts them into the program's
//! flow map, so the next frames of that flow never leave the driver.
//!
//! There is no clang/LLVM where Portico is built, so the program is written as instructions
//! in Rust ([`insn`], [`program`]) and loaded with raw `bpf(2)` calls ([`sys`]).
//!
//! # Per frame
//!
//! 1. `control[0].active == 0` → `XDP_PASS` (a standby node: user space decides, including
//!    the step-down grace forwarding).
//! 2. Shorter than Ethernet + 20 bytes of IPv4, or ethertype not 0x0800 (a VLAN tag, ARP,
//!    IPv6, anything else) → `XDP_PASS`.
//! 3. IPv4 version not 4, IHL < 5, total length below IHL*4 or beyond the frame → `XDP_PASS`.
//! 4. A fragment (MF set or offset != 0) → `XDP_PASS`.
//! 5. Protocol not TCP or UDP → `XDP_PASS`. TCP needs its 20-byte header within the packet
//!    and the frame, a data offset in [20, L4 length], and neither FIN nor RST; UDP its
//!    8-byte header. Otherwise `XDP_PASS`. The ports are read after the IPv4 options.
//! 6. The destination MAC must be one of `macs` (the interface's, a VIP's virtual MAC):
//!    else `XDP_PASS`, as the user-space path forwards only frames sent to it (a flooded
//!    frame, or another balancer's forwarded copy of one, must never be sent on again).
//! 7. The 5-tuple (as in the frame, network order) is looked up in `flows`: a miss →
//!    `XDP_PASS`.
//! 8. A hit: destination and source MAC are rewritten from the value, `last_seen_ns` is set
//!    to `bpf_ktime_get_ns()`, `stats[gateway]` counts the frame and its length (an index
//!    beyond `stats` is forwarded uncounted) → `XDP_TX`.
//!
//! Steps 2–5 make `XDP_TX` a subset of what the user-space parser ([`super::packet`]) would
//! forward, so every frame it would drop still reaches it and is counted by reason.
//!
//! # What user space still gets, and why
//!
//! - New flows (misses): placement needs the stick table and Maglev, which live there.
//! - TCP FIN and RST: user space sees a flow end, forwards the frame itself and drops the
//!   flow from both tables ([`Xdp::remove_flow`]).
//! - Fragments, malformed and truncated packets: user space drops and counts them.
//! - ARP (the forwarder answers for the VIP), IPv6, VLAN-tagged frames, other protocols.
//! - Everything while inactive.
//!
//! A passed frame continues into the kernel, where the AF_PACKET socket sees it as before. A
//! transmitted one is seen by no socket (`tcpdump` on the interface shows neither copy) and
//! its counts are only in `stats`, which the forwarder adds to `portico_dsr_*`.
//!
//! # Maps
//!
//! | map | type | key | value |
//! |---|---|---|---|
//! | `flows` | LRU hash, `max_flows` entries (the kernel evicts the least recently used when full) | [`FlowKey`], 16 bytes | [`FlowValue`], 24 bytes |
//! | `stats` | per-CPU array, `max_gateways` entries | gateway index, u32 | `{ packets: u64, bytes: u64 }` |
//! | `control` | array, 1 entry | 0, u32 | `{ active: u32, pad: u32 }` |
//! | `macs` | hash, 16 entries | a MAC, zero-padded to 8 bytes | u32 (unused) |
//!
//! `FlowKey` bytes: `saddr` 0..4, `daddr` 4..8, `sport` 8..10, `dport` 10..12 (all in network
//! order, as in the packet, so the program copies them without swapping), `proto` 12, zero
//! padding 13..16. `FlowValue` bytes: destination MAC 0..6, source MAC 6..12 (the order of an
//! Ethernet header), `gateway` 12..16 and `last_seen_ns` 16..24 in host order.
//! `last_seen_ns` is CLOCK_MONOTONIC ([`monotonic_ns`]), so user space can expire idle flows.
//! Per-CPU values are read as one 8-byte-aligned slot per possible CPU and summed.
//!
//! # Attaching
//!
//! [`Xdp::attach`] creates a BPF link (`BPF_LINK_CREATE`, attach type `BPF_XDP`): the program
//! is attached while the link fd is open, and the kernel detaches it when the fd is closed,
//! including when the process dies, so a crashed daemon never leaves a program forwarding
//! with a frozen flow table. Native (driver) mode is tried first, generic (skb) mode when the
//! driver has no XDP support; the mode is reported. A link never replaces a program another
//! process attached (EBUSY).
//!
//! Loading needs CAP_BPF (maps and program) and CAP_NET_ADMIN (attach), or root; without
//! them every call fails with [`XdpError::Unsupported`] and the AF_PACKET path carries on
//! alone. CAP_PERFMON (or CAP_SYS_ADMIN) is *not* needed: the verifier would demand it for
//! arithmetic on packet pointers with a variable offset or for pointer subtraction, and the
//! program uses neither ([`program`] says how); tests/xdp.rs loads and runs it with both
//! dropped.
//!
//! - [`insn`]: eBPF instruction encoding and a builder with labels (pure).
//! - [`program`]: the forwarding program (pure).
//! - [`sys`]: the `bpf(2)` calls.

pub mod insn;
pub mod program;
mod sys;

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use crate::config::Protocol;
use crate::dsr::packet::{FiveTuple, Mac, IPPROTO_TCP, IPPROTO_UDP};
use insn::{BuildError, Insn};
use sys::{Map, MapType};

pub use program::{XDP_PASS, XDP_TX};

/// `flows` key layout (see the module docs).
pub const KEY_SIZE: usize = 16;
const KEY_SADDR: i16 = 0;
const KEY_DADDR: i16 = 4;
const KEY_SPORT: i16 = 8;
const KEY_DPORT: i16 = 10;
const KEY_PROTO: i16 = 12;
/// `flows` value layout.
pub const VALUE_SIZE: usize = 24;
const VALUE_DST_MAC: usize = 0;
const VALUE_SRC_MAC: usize = 6;
const VALUE_GATEWAY: i16 = 12;
const VALUE_LAST_SEEN: i16 = 16;
/// `stats` value layout.
const STATS_SIZE: usize = 16;
const STATS_PACKETS: i16 = 0;
const STATS_BYTES: i16 = 8;
/// `control` value layout.
const CONTROL_SIZE: usize = 8;
/// `macs` key: a MAC in its first 6 bytes, zero after.
pub const MAC_KEY_SIZE: usize = 8;
/// Destination MACs the program accepts frames for (the interface's, the VIPs' virtual ones).
pub const MAX_MACS: u32 = 16;

/// A flow as the program matches it: the frame's IPv4 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: Protocol,
}

impl FlowKey {
    /// The key of a user-space tuple; `None` for IPv6 (the program forwards IPv4 only).
    pub fn from_tuple(t: &FiveTuple) -> Option<FlowKey> {
        match (t.src, t.dst) {
            (std::net::IpAddr::V4(saddr), std::net::IpAddr::V4(daddr)) => Some(FlowKey {
                saddr,
                daddr,
                sport: t.src_port,
                dport: t.dst_port,
                protocol: t.protocol,
            }),
            _ => None,
        }
    }

    /// The map's key bytes: addresses and ports in network order, padding zero.
    pub fn to_bytes(&self) -> [u8; KEY_SIZE] {
        let mut b = [0u8; KEY_SIZE];
        b[0..4].copy_from_slice(&self.saddr.octets());
        b[4..8].copy_from_slice(&self.daddr.octets());
        b[8..10].copy_from_slice(&self.sport.to_be_bytes());
        b[10..12].copy_from_slice(&self.dport.to_be_bytes());
        b[12] = match self.protocol {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        };
        b
    }

    /// The user-space tuple of this key.
    pub fn tuple(&self) -> FiveTuple {
        FiveTuple {
            src: self.saddr.into(),
            dst: self.daddr.into(),
            src_port: self.sport,
            dst_port: self.dport,
            protocol: self.protocol,
        }
    }

    /// A key read back from the map; `None` for a protocol we never insert.
    pub fn from_bytes(b: &[u8; KEY_SIZE]) -> Option<FlowKey> {
        let protocol = match b[12] {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        Some(FlowKey {
            saddr: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            daddr: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
            sport: u16::from_be_bytes([b[8], b[9]]),
            dport: u16::from_be_bytes([b[10], b[11]]),
            protocol,
        })
    }
}

/// Where a flow's frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// The gateway's MAC.
    pub dst_mac: Mac,
    /// Ours (or the VRRP group's virtual MAC).
    pub src_mac: Mac,
    /// Index into `stats` ([`Xdp::gateway_stats`]).
    pub gateway: u32,
    /// CLOCK_MONOTONIC ns of the last frame forwarded by the program ([`monotonic_ns`]);
    /// whatever was inserted until then.
    pub last_seen_ns: u64,
}

impl FlowValue {
    pub fn to_bytes(&self) -> [u8; VALUE_SIZE] {
        let mut b = [0u8; VALUE_SIZE];
        b[VALUE_DST_MAC..VALUE_DST_MAC + 6].copy_from_slice(&self.dst_mac);
        b[VALUE_SRC_MAC..VALUE_SRC_MAC + 6].copy_from_slice(&self.src_mac);
        b[12..16].copy_from_slice(&self.gateway.to_ne_bytes());
        b[16..24].copy_from_slice(&self.last_seen_ns.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; VALUE_SIZE]) -> FlowValue {
        let mut v = FlowValue::default();
        v.dst_mac
            .copy_from_slice(&b[VALUE_DST_MAC..VALUE_DST_MAC + 6]);
        v.src_mac
            .copy_from_slice(&b[VALUE_SRC_MAC..VALUE_SRC_MAC + 6]);
        v.gateway = u32::from_ne_bytes([b[12], b[13], b[14], b[15]]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[16..24]);
        v.last_seen_ns = u64::from_ne_bytes(t);
        v
    }
}

/// Frames and bytes the program forwarded to one gateway, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GatewayStats {
    pub packets: u64,
    pub bytes: u64,
}

/// How the program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before any skb: the fast path.
    Native,
    /// After the skb is built (the driver has no XDP): correct, barely faster than AF_PACKET.
    Generic,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

/// Why the XDP path is not available or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// This kernel or these privileges do not allow eBPF/XDP (ENOSYS, EPERM, or EINVAL with no
    /// verifier log): keep the AF_PACKET path and log this.
    #[error("eBPF/XDP unavailable ({what}): {source}")]
    Unsupported {
        what: &'static str,
        source: io::Error,
    },
    /// The verifier refused the program; the tail of its log says at which instruction and
    /// with which register state.
    #[error("the kernel's verifier rejected the XDP program:\n{log_tail}")]
    Verifier { log_tail: String },
    /// Loading failed otherwise (e.g. ENOMEM).
    #[error("loading the XDP program: {source}")]
    Load { source: io::Error },
    #[error("attaching XDP to interface index {ifindex}: {source}")]
    Attach { ifindex: u32, source: io::Error },
    #[error("bpf map {op}: {source}")]
    Map { op: &'static str, source: io::Error },
    #[error("building the XDP program: {0}")]
    Program(#[from] BuildError),
    #[error("BPF_PROG_TEST_RUN: {source}")]
    TestRun { source: io::Error },
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EINVAL)
    )
}

/// The verifier log kept on a failed load.
const VERIFIER_LOG: usize = 1 << 20;
/// How much of it goes into the error: the end, where the verifier says why it stopped.
const VERIFIER_LOG_TAIL: usize = 4096;

/// Loads `insns` as an XDP program. A first attempt runs without a log (the verifier is
/// faster without one); on a refusal the load is repeated with a log to report.
fn load_program(insns: &[Insn], name: &str) -> Result<OwnedFd, XdpError> {
    let first = match sys::prog_load(sys::PROG_TYPE_XDP, insns, name, None) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    if !matches!(
        first.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EINVAL)
    ) {
        return Err(if is_unsupported(&first) {
            XdpError::Unsupported {
                what: "loading the program (BPF_PROG_LOAD)",
                source: first,
            }
        } else {
            XdpError::Load { source: first }
        });
    }
    let mut log = vec![0u8; VERIFIER_LOG];
    let second = match sys::prog_load(sys::PROG_TYPE_XDP, insns, name, Some(&mut log)) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let text = text.trim_end();
    if !text.is_empty() {
        let cut = text
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| text.len() - i <= VERIFIER_LOG_TAIL)
            .unwrap_or(0);
        return Err(XdpError::Verifier {
            log_tail: text[cut..].to_string(),
        });
    }
    Err(if is_unsupported(&second) {
        XdpError::Unsupported {
            what: "loading the program (BPF_PROG_LOAD)",
            source: second,
        }
    } else {
        XdpError::Load { source: second }
    })
}

/// Links `prog` to `ifindex`, natively if the driver can, else generically.
fn attach_link(prog: &OwnedFd, ifindex: u32) -> Result<(OwnedFd, AttachMode), XdpError> {
    attach_link_as(prog, ifindex, true)
}

/// Links `prog` to `ifindex` natively; generically too if `allow_generic` and the driver has
/// no native XDP.
fn attach_link_as(
    prog: &OwnedFd,
    ifindex: u32,
    allow_generic: bool,
) -> Result<(OwnedFd, AttachMode), XdpError> {
    match sys::link_create_xdp(prog, ifindex, sys::XDP_FLAGS_DRV_MODE) {
        Ok(link) => Ok((link, AttachMode::Native)),
        // The driver has no native XDP: the generic hook works on any interface.
        Err(e) if allow_generic && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            sys::link_create_xdp(prog, ifindex, sys::XDP_FLAGS_SKB_MODE)
                .map(|link| (link, AttachMode::Generic))
                .map_err(|source| XdpError::Attach { ifindex, source })
        }
        Err(source) => Err(XdpError::Attach { ifindex, source }),
    }
}

fn create_map(
    kind: MapType,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    name: &'static str,
) -> Result<Map, XdpError> {
    let (Ok(key_size), Ok(value_size)) = (u32::try_from(key_size), u32::try_from(value_size))
    else {
        return Err(XdpError::Map {
            op: "create",
            source: io::ErrorKind::InvalidInput.into(),
        });
    };
    Map::create(kind, key_size, value_size, max_entries, name).map_err(|source| {
        if is_unsupported(&source) {
            XdpError::Unsupported {
                what: "creating a map (BPF_MAP_CREATE)",
                source,
            }
        } else {
            XdpError::Map {
                op: "create",
                source,
            }
        }
    })
}

/// The program's maps.
struct Maps {
    flows: Map,
    stats: Map,
    control: Map,
    macs: Map,
    max_flows: u32,
    max_gateways: u32,
}

impl Maps {
    fn create(max_flows: u32, max_gateways: u32) -> Result<Maps, XdpError> {
        if max_flows == 0 || max_gateways == 0 {
            return Err(XdpError::Map {
                op: "create",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "max_flows and max_gateways must be at least 1",
                ),
            });
        }
        Ok(Maps {
            flows: create_map(
                MapType::LruHash,
                KEY_SIZE,
                VALUE_SIZE,
                max_flows,
                "portico_flows",
            )?,
            stats: create_map(
                MapType::PercpuArray,
                4,
                STATS_SIZE,
                max_gateways,
                "portico_stats",
            )?,
            control: create_map(MapType::Array, 4, CONTROL_SIZE, 1, "portico_control")?,
            macs: create_map(MapType::Hash, MAC_KEY_SIZE, 4, MAX_MACS, "portico_macs")?,
            max_flows,
            max_gateways,
        })
    }
}

/// The forwarding program of one interface, its maps and (once attached) its link.
///
/// Dropping it detaches the program (the link is closed) and frees the maps.
pub struct Xdp {
    // Declared first so it is dropped first: the program leaves the interface before the
    // rest is released (the kernel keeps a loaded program's maps alive in any case).
    link: Option<(OwnedFd, AttachMode)>,
    prog: OwnedFd,
    maps: Maps,
}

impl Xdp {
    /// Creates the maps and loads the program, inactive and not attached.
    pub fn load(max_flows: u32, max_gateways: u32) -> Result<Xdp, XdpError> {
        let maps = Maps::create(max_flows, max_gateways)?;
        let insns = program::forwarding(program::MapFds {
            flows: maps.flows.raw_fd(),
            stats: maps.stats.raw_fd(),
            control: maps.control.raw_fd(),
            macs: maps.macs.raw_fd(),
        })?;
        let prog = load_program(&insns, "portico_dsr")?;
        Ok(Xdp {
            link: None,
            prog,
            maps,
        })
    }

    /// Attaches the program to `ifindex` (an interface of the calling thread's network
    /// namespace) and returns the mode it got. Fails if this program is attached already, or
    /// if the interface has an XDP program of someone else's.
    pub fn attach(&mut self, ifindex: u32) -> Result<AttachMode, XdpError> {
        self.attach_as(ifindex, true)
    }

    /// As [`Xdp::attach`], but in native mode only: generic mode forwards barely faster than
    /// the AF_PACKET path, so where it is all there is, the fast path is not worth having.
    pub fn attach_native(&mut self, ifindex: u32) -> Result<AttachMode, XdpError> {
        self.attach_as(ifindex, false)
    }

    fn attach_as(&mut self, ifindex: u32, allow_generic: bool) -> Result<AttachMode, XdpError> {
        if self.link.is_some() {
            return Err(XdpError::Attach {
                ifindex,
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "this program is attached already (detach first)",
                ),
            });
        }
        let (link, mode) = attach_link_as(&self.prog, ifindex, allow_generic)?;
        self.link = Some((link, mode));
        Ok(mode)
    }

    /// Detaches the program; `false` if it was not attached.
    pub fn detach(&mut self) -> bool {
        self.link.take().is_some()
    }

    /// The attach mode, while attached.
    pub fn mode(&self) -> Option<AttachMode> {
        self.link.as_ref().map(|(_, m)| *m)
    }

    /// Forward flow hits (`true`), or pass every frame to the kernel (`false`, the state after
    /// [`Xdp::load`]).
    pub fn set_active(&self, active: bool) -> Result<(), XdpError> {
        let mut value = [0u8; CONTROL_SIZE];
        value[..4].copy_from_slice(&u32::from(active).to_ne_bytes());
        self.maps
            .control
            .update(&0u32.to_ne_bytes(), &value, sys::UPDATE_ANY)
            .map_err(|source| XdpError::Map {
                op: "control update",
                source,
            })
    }

    /// Accepts frames sent to `mac` (the interface's, or a VIP's virtual MAC): the program
    /// forwards only frames whose destination MAC it was given, as the user-space path does,
    /// so a flooded frame or another node's forwarded copy is never sent on again (that is
    /// how forwarding loops start).
    pub fn accept_mac(&self, mac: Mac) -> Result<(), XdpError> {
        let mut key = [0u8; MAC_KEY_SIZE];
        key[..6].copy_from_slice(&mac);
        self.maps
            .macs
            .update(&key, &1u32.to_ne_bytes(), sys::UPDATE_ANY)
            .map_err(|source| XdpError::Map {
                op: "macs update",
                source,
            })
    }

    /// Whether the program forwards (the control map's flag).
    pub fn is_active(&self) -> Result<bool, XdpError> {
        let mut value = [0u8; CONTROL_SIZE];
        let found = self
            .maps
            .control
            .lookup(&0u32.to_ne_bytes(), &mut value)
            .map_err(|source| XdpError::Map {
                op: "control lookup",
                source,
            })?;
        Ok(found && value[..4] != [0; 4])
    }

    /// Inserts or replaces a flow. When `flows` is full the kernel evicts the least recently
    /// used entry to make room.
    pub fn insert_flow(&self, key: &FlowKey, value: &FlowValue) -> Result<(), XdpError> {
        self.maps
            .flows
            .update(&key.to_bytes(), &value.to_bytes(), sys::UPDATE_ANY)
            .map_err(|source| XdpError::Map {
                op: "flows update",
                source,
            })
    }

    /// Removes a flow; `false` if it was not there (expired by the LRU, or never inserted).
    pub fn remove_flow(&self, key: &FlowKey) -> Result<bool, XdpError> {
        self.maps
            .flows
            .delete(&key.to_bytes())
            .map_err(|source| XdpError::Map {
                op: "flows delete",
                source,
            })
    }

    /// One flow's entry.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowValue>, XdpError> {
        let mut value = [0u8; VALUE_SIZE];
        let found = self
            .maps
            .flows
            .lookup(&key.to_bytes(), &mut value)
            .map_err(|source| XdpError::Map {
                op: "flows lookup",
                source,
            })?;
        Ok(found.then(|| FlowValue::from_bytes(&value)))
    }

    /// Every flow (for expiry and sync), read [`BATCH`] at a time (one syscall each), or key
    /// by key where the kernel has no batch operations for LRU hash maps. Entries inserted or
    /// removed meanwhile may or may not be in it.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, XdpError> {
        match self.batched(false) {
            Err(e) if batch_unsupported(&e) => self.flows_by_key(),
            r => r.map_err(|source| XdpError::Map {
                op: "flows lookup batch",
                source,
            }),
        }
    }

    /// Empties `flows`; returns how many entries it removed.
    pub fn clear_flows(&self) -> Result<usize, XdpError> {
        match self.batched(true) {
            Ok(v) => Ok(v.len()),
            Err(e) if batch_unsupported(&e) => {
                let flows = self.flows_by_key()?;
                let mut n = 0;
                for (key, _) in &flows {
                    n += usize::from(self.remove_flow(key)?);
                }
                Ok(n)
            }
            Err(source) => Err(XdpError::Map {
                op: "flows lookup-and-delete batch",
                source,
            }),
        }
    }

    fn batched(&self, delete: bool) -> io::Result<Vec<(FlowKey, FlowValue)>> {
        let mut keys = vec![0u8; BATCH * KEY_SIZE];
        let mut values = vec![0u8; BATCH * VALUE_SIZE];
        let mut out = Vec::new();
        let mut from = None;
        // Bounded: a map of max_flows entries takes max_flows / BATCH calls; twice that and
        // some to spare covers a map refilled under the walk.
        let calls = usize::try_from(self.maps.max_flows)
            .unwrap_or(usize::MAX)
            .div_ceil(BATCH)
            .saturating_mul(2)
            .saturating_add(16);
        for _ in 0..calls {
            let (n, next) = self
                .maps
                .flows
                .batch(from.as_ref(), &mut keys, &mut values, delete)?;
            for (k, v) in keys
                .chunks_exact(KEY_SIZE)
                .zip(values.chunks_exact(VALUE_SIZE))
                .take(n)
            {
                let (Ok(k), Ok(v)) = (
                    <&[u8; KEY_SIZE]>::try_from(k),
                    <&[u8; VALUE_SIZE]>::try_from(v),
                ) else {
                    continue;
                };
                if let Some(key) = FlowKey::from_bytes(k) {
                    out.push((key, FlowValue::from_bytes(v)));
                }
            }
            match next {
                Some(t) => from = Some(t),
                None => break,
            }
        }
        Ok(out)
    }

    /// [`Xdp::flows`] the slow way: two syscalls per entry.
    fn flows_by_key(&self) -> Result<Vec<(FlowKey, FlowValue)>, XdpError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut cur: Option<[u8; KEY_SIZE]> = None;
        let mut next = [0u8; KEY_SIZE];
        // A key removed under the walk restarts it from the first key (the hash map's
        // behaviour): bounded so that churn cannot keep us here.
        let limit = usize::try_from(self.maps.max_flows)
            .unwrap_or(usize::MAX)
            .saturating_mul(2)
            .saturating_add(16);
        for _ in 0..limit {
            let more = self
                .maps
                .flows
                .next_key(cur.as_ref().map(|k| &k[..]), &mut next)
                .map_err(|source| XdpError::Map {
                    op: "flows next key",
                    source,
                })?;
            if !more {
                break;
            }
            let mut value = [0u8; VALUE_SIZE];
            let found = self
                .maps
                .flows
                .lookup(&next, &mut value)
                .map_err(|source| XdpError::Map {
                    op: "flows lookup",
                    source,
                })?;
            if let (true, Some(key)) = (found, FlowKey::from_bytes(&next)) {
                if seen.insert(key) {
                    out.push((key, FlowValue::from_bytes(&value)));
                }
            }
            cur = Some(next);
        }
        Ok(out)
    }

    /// Frames and bytes forwarded to `gateway`, summed over CPUs.
    pub fn gateway_stats(&self, gateway: u32) -> Result<GatewayStats, XdpError> {
        if gateway >= self.maps.max_gateways {
            return Err(XdpError::Map {
                op: "stats lookup",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "gateway {gateway} out of range (max_gateways {})",
                        self.maps.max_gateways
                    ),
                ),
            });
        }
        let mut values = vec![0u8; self.maps.stats.value_len()];
        self.maps
            .stats
            .lookup(&gateway.to_ne_bytes(), &mut values)
            .map_err(|source| XdpError::Map {
                op: "stats lookup",
                source,
            })?;
        let stride = STATS_SIZE.next_multiple_of(8);
        let u64_at = |slot: &[u8], at: i16| {
            let at = usize::try_from(at).unwrap_or(0);
            slot.get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_ne_bytes)
        };
        let mut sum = GatewayStats::default();
        for slot in values.chunks_exact(stride) {
            sum.packets = sum.packets.wrapping_add(u64_at(slot, STATS_PACKETS));
            sum.bytes = sum.bytes.wrapping_add(u64_at(slot, STATS_BYTES));
        }
        Ok(sum)
    }

    /// Runs the program once on `frame` without any interface (BPF_PROG_TEST_RUN): the action
    /// ([`XDP_PASS`], [`XDP_TX`]) and the frame as the program left it. Maps are used and
    /// updated as for a real frame. The kernel refuses frames shorter than an Ethernet header
    /// (EINVAL), which no interface delivers either.
    pub fn test_run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), XdpError> {
        let mut out = vec![0u8; frame.len() + 256];
        let (action, len) = sys::prog_test_run(&self.prog, frame, &mut out)
            .map_err(|source| XdpError::TestRun { source })?;
        out.truncate(len);
        Ok((action, out))
    }
}

/// Entries read per batch call.
const BATCH: usize = 1024;

/// Whether a batch call failed for want of batch support (an older kernel or map type), not
/// for a reason the key-by-key walk would share.
fn batch_unsupported(e: &io::Error) -> bool {
    /// `ENOTSUPP`, the kernel-internal "not supported" some map types return.
    const ENOTSUPP: i32 = 524;
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP | libc::ENOSPC)
    )
}

/// A program that passes every frame, attached while this lives.
///
/// On a veth, `XDP_TX` delivers only if the *peer* has NAPI enabled, which an attached XDP
/// program does: attach this to the peer of an interface running [`Xdp`] (containers, labs,
/// tests). Real NICs need nothing of the kind.
pub struct PassProgram {
    _link: OwnedFd,
    mode: AttachMode,
}

impl PassProgram {
    pub fn attach(ifindex: u32) -> Result<PassProgram, XdpError> {
        let prog = load_program(&program::pass_all(), "portico_pass")?;
        // The link holds its own reference to the program: the program fd can go.
        let (link, mode) = attach_link(&prog, ifindex)?;
        Ok(PassProgram { _link: link, mode })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }
}

/// CLOCK_MONOTONIC in ns: the clock of [`FlowValue::last_seen_ns`] (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_are_network_order_with_zero_padding() {
        let k = FlowKey {
            saddr: Ipv4Addr::new(10, 200, 1, 5),
            daddr: Ipv4Addr::new(10, 200, 0, 100),
            sport: 0xc350,
            dport: 443,
            protocol: Protocol::Tcp,
        };
        assert_eq!(
            k.to_bytes(),
            [10, 200, 1, 5, 10, 200, 0, 100, 0xc3, 0x50, 0x01, 0xbb, 6, 0, 0, 0]
        );
        assert_eq!(FlowKey::from_bytes(&k.to_bytes()), Some(k));
        let mut other = k.to_bytes();
        other[12] = 1;
        assert_eq!(FlowKey::from_bytes(&other), None);
    }

    #[test]
    fn value_bytes_follow_the_ethernet_header_order() {
        let v = FlowValue {
            dst_mac: [2, 0, 0, 0, 0, 0x11],
            src_mac: [2, 0, 0, 0, 0, 0x22],
            gateway: 3,
            last_seen_ns: 0x0102_0304_0506_0708,
        };
        let b = v.to_bytes();
        assert_eq!(b[..12], [2, 0, 0, 0, 0, 0x11, 2, 0, 0, 0, 0, 0x22]);
        assert_eq!(b[12..16], 3u32.to_ne_bytes());
        assert_eq!(FlowValue::from_bytes(&b), v);
    }

    #[test]
    fn ipv6_tuples_have_no_key() {
        let t = FiveTuple {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::100".parse().unwrap(),
            src_port: 1,
            dst_port: 2,
            protocol: Protocol::Udp,
        };
        assert_eq!(FlowKey::from_tuple(&t), None);
        let t4 = FiveTuple {
            src: Ipv4Addr::new(1, 2, 3, 4).into(),
            dst: Ipv4Addr::new(5, 6, 7, 8).into(),
            ..t
        };
        assert_eq!(
            FlowKey::from_tuple(&t4).map(|k| (k.saddr, k.dport)),
            Some((Ipv4Addr::new(1, 2, 3, 4), 2))
        );
    }

    /// The one test here that needs the kernel (skipped where eBPF is unavailable): a refused
    /// program comes back as `Verifier` with the log's last lines, which name the fault.
    #[test]
    fn a_refused_program_reports_the_verifier_log() {
        use insn::Reg;
        // R2 is never written: "R2 !read_ok".
        let bad = [Insn::mov64_reg(Reg::R0, Reg::R2), Insn::exit()];
        match load_program(&bad, "portico_bad") {
            Err(XdpError::Verifier { log_tail }) => {
                assert!(log_tail.contains("R2 !read_ok"), "{log_tail}");
                assert!(log_tail.len() <= VERIFIER_LOG_TAIL);
            }
            Err(e @ XdpError::Unsupported { .. }) => eprintln!("SKIPPED: {e}"),
            other => panic!("expected a verifier error: {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn the_monotonic_clock_moves() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}

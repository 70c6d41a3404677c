//! VRRPv3 (RFC 5798): the packet codec and the state machine (both pure), and the driver that
//! runs one instance per VIP group (VRID) on a thread of its own.
//!
//! - [`packet`]: advert parse/encode, checksum with the IPv4/IPv6 pseudo-header, the IPv4
//!   header of raw-socket reads, and [`RxError`], the reasons a packet is dropped; the fuzz
//!   target's body.
//! - [`machine`]: Initialize/Backup/Master with skew time, Master_Down_Interval, preempt,
//!   preempt delay, owner rule, tie-break and dual-master detection; no I/O.
//! - [`driver`]: raw sockets, validation and demultiplexing by VRID, one task per instance
//!   executing the machine's actions (adverts, VIPs, metrics, logs), pool tracking, and the
//!   [`Handle`] the admin side uses (state, demote, resume).

pub mod driver;
pub mod machine;
pub mod packet;

pub use driver::{Handle, Spec, Status};
pub use machine::{Action, Event, Machine, Params, Reason, State, Timer};
pub use packet::{Advert, RxError};

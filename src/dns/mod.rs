//! The authoritative DNS server for the gateway alias: one zone (`[dns] zone`) with its SOA
//! and NS, the alias (the certificate's CN) answering with the VIPs whose pools can serve, and
//! one name per gateway so an operator can reach a single node by its SAN name. UDP and TCP,
//! EDNS(0), case-insensitive names; AXFR over TCP to `allow_transfer` only.
//!
//! # Why not hickory-server (measured)
//!
//! A hickory-server engine was built and measured beside this one (commit 547e888, "dns: a
//! hickory-server engine"; `git show 547e888:src/dns/hickory.rs`): hickory's `Server` owning
//! the sockets, parsing each request and encoding each response, with a `RequestHandler`
//! answering from this module's [`zone`] (the same health-aware zone, so the same answers;
//! five of the six tests in tests/dns.rs passed on it unchanged). With `benches/dnsperf.sh`
//! on the shared 2-core machine it answered at 0.66-0.86x NSD's rate, this responder at
//! 0.87-0.95x in the same runs (docs/benchmarks.md): fast enough, so speed is not why it was
//! dropped. It was dropped because:
//!
//! - hickory's loop decides about bad input before any handler sees it: a datagram shorter
//!   than a header is dropped, one it cannot parse gets hickory's own FORMERR, and one larger
//!   than its 4 KiB buffer is read cut short and answered. None of that can be counted in
//!   `portico_dns_malformed_total` by reason, which the issue and tests/dns.rs
//!   (`malformed_queries_are_counted_and_survived`) require, and the oversized one is answered
//!   where it should be dropped;
//! - it logs every request at `info` (the daemon's default level): in the first measurement
//!   that cut its rate to 0.53-0.65x NSD and would flood the journal;
//! - it saves no code: the zone's answers (negative answers with the SOA, ANY, AXFR policy,
//!   truncation) would still be decided here, either in this wire form or rewritten as
//!   hickory `Record`s, and only the two socket loops of [`server`] would go.
//!
//! So this module is a small responder of its own:
//!
//! - [`wire`] (pure) recognises the whole query before answering (header, one question with
//!   plain labels, OPT), with a typed reason for everything it refuses;
//! - [`zone`] (pure) builds, per snapshot, every answer as ready wire bytes (owners as
//!   compression pointers into the echoed question), so answering is one hash lookup of the
//!   lower-cased name and a few copies into a reused buffer, with no allocation;
//! - [`server`] is the I/O: one UDP socket per core sharing the port (`SO_REUSEPORT`), each
//!   drained by a task in batches, and a TCP listener with a connection cap and idle timeout.
//!
//! [`fuzzing`] holds the logic of the `dns_query` fuzz target (also run as plain tests over
//! its seed corpus and random input).
//!
//! hickory-proto is still the reference: the zone's unit and property tests decode every
//! answer with it, so our encoder is checked by an independent decoder, and the integration
//! tests ask the real `dig`.
//!
//! # Health
//!
//! The alias's addresses come from the config at start ([`zone::ZoneSpec`]); which of them
//! are answered follows the snapshot: an address is left out while any of its services has no
//! eligible backend, unless no address can serve, in which case all are answered (Route 53's
//! rule). Every socket task keeps the snapshot it last saw; when the published one differs
//! (one pointer comparison per query), the zone is rebuilt once under a lock and shared. The
//! SOA serial moves only when the answered set changes.

pub mod fuzzing;
pub mod server;
pub mod wire;
pub mod zone;

pub use server::{bind, Bound};
pub use zone::ZoneSpec;

//! The authoritative DNS server for the gateway alias: one zone (`[dns] zone`) with its SOA
//! and NS, the alias (the certificate's CN) answering with the VIPs whose pools can serve, and
//! one name per gateway so an operator can reach a single node by its SAN name. UDP and TCP,
//! EDNS(0), case-insensitive names; AXFR over TCP to `allow_transfer` only.
//!
//! # Why not hickory-server's Catalog
//!
//! hickory-server answers from an `Authority` (now `ZoneHandler`) holding `Record` values:
//! each query goes through an async trait object, builds `Name`s, `Record`s and a
//! `MessageResponse`, and serialises it, and following health would mean upserting a new
//! authority into the `Catalog` on every snapshot. That is several allocations and a full
//! encode per query, for a zone of a dozen records, and the target here is at least half of
//! NSD's rate (≈330k q/s on this machine). So this module is a small responder of its own:
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
pub mod hickory;
pub mod server;
pub mod wire;
pub mod zone;

pub use server::{bind, Bound};
pub use zone::ZoneSpec;

//! The interface and its addresses over rtnetlink: look up the interface, list, add and
//! remove addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Context};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::Handle;

use crate::config::IpPrefix;

use super::frames::Mac;

/// One address found on the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub prefix: IpPrefix,
    pub label: Option<String>,
}

/// What Portico needs to know about its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
}

/// A route-netlink connection (its I/O task runs on the current runtime).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    pub fn connect() -> anyhow::Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link(&self, name: &str) -> anyhow::Result<LinkInfo> {
        let msg = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
            .with_context(|| format!("interface {name}"))?
            .ok_or_else(|| anyhow!("interface {name} not found"))?;
        let mac = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| anyhow!("interface {name} has no Ethernet address"))?;
        Ok(LinkInfo {
            name: name.to_owned(),
            index: msg.header.index,
            mac,
        })
    }

    /// Every address on interface `index`.
    pub async fn addresses(&self, index: u32) -> anyhow::Result<Vec<Found>> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.context("listing addresses")? {
            let mut addr = None;
            let mut local = None;
            let mut label = None;
            for a in &msg.attributes {
                match a {
                    AddressAttribute::Address(ip) => addr = Some(*ip),
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Label(l) => label = Some(l.clone()),
                    _ => {}
                }
            }
            // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS may be a peer).
            if let Some(ip) = local.or(addr) {
                out.push(Found {
                    prefix: IpPrefix {
                        addr: ip,
                        len: msg.header.prefix_len,
                    },
                    label,
                });
            }
        }
        Ok(out)
    }

    /// Adds `p` to interface `index`; IPv4 with `label`, IPv6 without duplicate address
    /// detection (the VIP moves between nodes: DAD would hold it tentative for a second).
    /// An address already present is not an error.
    pub async fn add(&self, index: u32, p: IpPrefix, label: &str) -> anyhow::Result<()> {
        let mut req = self.handle.address().add(index, p.addr, p.len);
        match p.addr {
            IpAddr::V4(_) => req
                .message_mut()
                .attributes
                .push(AddressAttribute::Label(label.to_owned())),
            IpAddr::V6(_) => {
                let m = req.message_mut();
                m.header.flags |= AddressHeaderFlags::Nodad;
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding {}/{}", p.addr, p.len)),
        }
    }

    /// Removes `p` from interface `index`; an address already gone is not an error.
    pub async fn remove(&self, index: u32, p: IpPrefix) -> anyhow::Result<()> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(p.addr)
            .execute();
        while let Some(msg) = stream.try_next().await.context("listing addresses")? {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -libc::EADDRNOTAVAIL || e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", p.addr)),
            }
        }
        Ok(())
    }
}

/// The interface's primary IPv4 address (first one that is not ours) and its IPv6 link-local.
pub fn primaries(found: &[Found], ours: &[IpAddr]) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let v4 = found.iter().find_map(|f| match f.prefix.addr {
        IpAddr::V4(a) if !ours.contains(&f.prefix.addr) => Some(a),
        _ => None,
    });
    let v6 = found.iter().find_map(|f| match f.prefix.addr {
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some(a),
        _ => None,
    });
    (v4, v6)
}

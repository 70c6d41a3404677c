//! Traffic source for `benches/dsr_pps.sh`: sends UDP frames to VIP:port from an AF_PACKET
//! socket as fast as `sendmmsg` allows, for a bounded time, and prints how many it sent.
//!
//! `dsr_blast IFACE DST_MAC VIP PORT FRAME_BYTES SECONDS [FLOWS] [RATE]`
//!
//! RATE (frames per second, 0 = as fast as possible) paces the sender, batch by batch: an
//! offered load above what the forwarder's core can take only measures how the kernel drops
//! (receive livelock), not what the core forwards.
//!
//! Frames come from 10.200.1.1 with FLOWS different source ports (default 64), so the
//! forwarder's flow table and Maglev see several flows. Run it only inside a namespace the
//! benchmark created.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use portico::config::Protocol;
use portico::dsr::{arp, forwarder, packet::build};

const BATCH: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: dsr_blast IFACE DST_MAC VIP PORT FRAME_BYTES SECONDS [FLOWS] [RATE]");
        std::process::exit(2);
    }
    let iface = &args[1];
    let dst = arp::parse_mac(&args[2]).expect("DST_MAC");
    let vip: Ipv4Addr = args[3].parse().expect("VIP");
    let port: u16 = args[4].parse().expect("PORT");
    let size: usize = args[5].parse().expect("FRAME_BYTES");
    let secs: f64 = args[6].parse().expect("SECONDS");
    let flows: u16 = args.get(7).map_or(64, |f| f.parse().expect("FLOWS"));
    let rate: f64 = args.get(8).map_or(0.0, |r| r.parse().expect("RATE"));
    let src_mac = forwarder::interface_mac(iface).expect("source MAC");
    let payload = size.saturating_sub(14 + 20 + 8);
    let frames: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            build::ipv4(
                dst,
                src_mac,
                Ipv4Addr::new(10, 200, 1, 1),
                vip,
                Protocol::Udp,
                20_000 + i,
                port,
                payload,
            )
        })
        .collect();
    let name = std::ffi::CString::new(iface.as_str()).expect("iface");
    // SAFETY: plain syscalls on a socket this process owns; the iovecs point into `frames`,
    // which outlives every sendmmsg call below.
    let sent = unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        // Protocol 0: the socket sends only, so frames coming back are not queued to it.
        sll.sll_protocol = 0;
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let r = libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let mut iov: Vec<libc::iovec> = (0..BATCH)
            .map(|i| {
                let f = &frames[i % frames.len()];
                libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                }
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| std::mem::zeroed()).collect();
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        let t0 = Instant::now();
        let until = Duration::from_secs_f64(secs);
        let mut sent: u64 = 0;
        while t0.elapsed() < until {
            if rate > 0.0 {
                while sent as f64 > rate * t0.elapsed().as_secs_f64() {
                    std::hint::spin_loop();
                }
            }
            let r = libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0);
            if r > 0 {
                sent += r as u64;
            }
        }
        libc::close(fd);
        sent
    };
    println!("sent {sent}");
}

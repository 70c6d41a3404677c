//! Helper for `benches/dsr_pps.sh`: attaches a pass-all XDP program to an interface and keeps
//! it there until killed (the link closes with the process).
//!
//! `xdp_pass IFACE [SECONDS]`
//!
//! On a veth, frames the dsr XDP program sends back out (`XDP_TX`) reach the peer only if the
//! peer runs NAPI; an XDP program of its own turns that on (GRO does not suffice here). Real
//! NICs need nothing of the kind. Run it only inside a namespace the benchmark created.

use std::time::{Duration, Instant};

use portico::dsr::{forwarder, xdp::PassProgram};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(iface) = args.get(1) else {
        eprintln!("usage: xdp_pass IFACE [SECONDS]");
        std::process::exit(2);
    };
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3600);
    let index = match forwarder::ifindex(iface) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("xdp_pass: {iface}: {e}");
            std::process::exit(1);
        }
    };
    let prog = match PassProgram::attach(index) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xdp_pass: {iface}: {e}");
            std::process::exit(1);
        }
    };
    println!("xdp_pass: {iface}: {}", prog.mode().as_str());
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
}

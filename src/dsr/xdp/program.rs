//! The XDP forwarding program, built as instructions (pure: map fds in, instructions out).
//!
//! What it does per frame is specified in the module docs ([`super`]); this file is that
//! specification in eBPF, one commented step at a time. Register use:
//!
//! | register | holds |
//! |---|---|
//! | R6 | the `xdp_md` context (R1 is clobbered by the first call) |
//! | R7 | `data`, the frame's first byte (a packet pointer) |
//! | R8 | `data_end`; once the fixed headers are checked, the L4 length; after a hit, the flow's value in `flows` |
//! | R9 | the frame length (`bpf_xdp_get_buff_len`) |
//! | R1..R5 | scratch; R1 = IHL in bytes, R2 = total length, then the L4 header's offset |
//!
//! The verifier accepts a direct packet access only below a pointer it has seen compared
//! against `data_end`, and it refuses arithmetic between a packet pointer and a variable
//! offset to a loader without CAP_PERFMON ("pointer arithmetic with it prohibited for
//! !root"), which the daemon does not have. So the program reads the frame directly only at
//! constant offsets (Ethernet and the fixed 20 bytes of IPv4, checked once), compares the
//! IPv4 lengths as scalars with the frame length from `bpf_xdp_get_buff_len`, and copies the
//! L4 header, which starts at the variable `14 + IHL*4`, to the stack with
//! `bpf_xdp_load_bytes` (bounds-checked by the helper). Lengths are never computed as
//! `data_end - data`: pointer subtraction needs CAP_PERFMON as well.

use super::insn::{Alu, BuildError, Builder, Cond, Helper, Insn, Label, Reg, Size};
use super::{
    KEY_DADDR, KEY_DPORT, KEY_PROTO, KEY_SADDR, KEY_SIZE, KEY_SPORT, STATS_BYTES, STATS_PACKETS,
    VALUE_GATEWAY, VALUE_LAST_SEEN,
};
use crate::dsr::packet;

/// `enum xdp_action` values the program returns.
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// `struct xdp_md` field offsets.
const MD_DATA: i16 = 0;
const MD_DATA_END: i16 = 4;

/// Frame offsets (Ethernet, then IPv4 without options).
const ETH_TYPE: i16 = 12;
const IP: i16 = packet::ETH_HEADER as i16;
const IP_VER_IHL: i16 = IP;
const IP_TOT_LEN: i16 = IP + 2;
const IP_FRAG: i16 = IP + 6;
const IP_PROTO: i16 = IP + 9;
const IP_SADDR: i16 = IP + 12;
const IP_DADDR: i16 = IP + 16;
/// Ethernet header plus an option-less IPv4 header: every fixed-offset read lies below this.
const MIN_FRAME: i32 = IP as i32 + 20;
const TCP_HEADER: i32 = 20;
const UDP_HEADER: i32 = 8;
/// TCP header: data offset (high nibble) and flags bytes.
const TCP_DOFF: i16 = 12;
const TCP_FLAGS: i16 = 13;
const TCP_FIN: i32 = 0x01;
const TCP_RST: i32 = 0x04;
const IPPROTO_TCP: i32 = packet::IPPROTO_TCP as i32;
const IPPROTO_UDP: i32 = packet::IPPROTO_UDP as i32;

/// Stack slots (R10-relative): the flow key, the stats key, the control key, and a copy of
/// the L4 header's first bytes (a TCP header's 20 at most).
const STACK_KEY: i16 = -16;
const STACK_GATEWAY: i16 = -20;
const STACK_CONTROL_KEY: i16 = -24;
const STACK_L4: i16 = -48;
const STACK_MAC: i16 = -56;
// The key slot is exactly one key long, ending at the frame pointer.
const _: () = assert!(-STACK_KEY as usize == KEY_SIZE);
// The ports are copied as one 4-byte word: the key holds them adjacent, as the header does.
const _: () = assert!(KEY_DPORT == KEY_SPORT + 2);

/// A 16-bit field as the program loads it from the frame: network-order bytes read as a
/// native u16, so the program compares without swapping on any host.
fn wire16(value: u16) -> i32 {
    i32::from(u16::from_ne_bytes(value.to_be_bytes()))
}

/// The fds of the maps the program uses (the kernel resolves them at load time; after that
/// the program holds its own references).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapFds {
    pub flows: i32,
    pub stats: i32,
    pub control: i32,
    pub macs: i32,
}

/// The forwarding program.
pub fn forwarding(fds: MapFds) -> Result<Vec<Insn>, BuildError> {
    use Reg::*;
    let mut b = Builder::new();
    let pass = b.label("pass");
    let tx = b.label("tx");
    let udp = b.label("udp");
    let key = b.label("key");

    b.push(Insn::mov64_reg(R6, R1));

    // control[0].active: a standby node leaves every frame to the kernel (and the forwarder's
    // user-space path), and touches neither the flows' LRU state nor the counters.
    b.push(Insn::st(Size::W, R10, STACK_CONTROL_KEY, 0));
    b.push(Insn::mov64_reg(R2, R10));
    b.push(Insn::alu64_imm(Alu::Add, R2, i32::from(STACK_CONTROL_KEY)));
    b.push2(Insn::ld_map_fd(R1, fds.control));
    b.push(Insn::call(Helper::MapLookupElem));
    b.jmp_imm(Cond::Eq, R0, 0, pass);
    b.push(Insn::ldx(Size::W, R1, R0, 0));
    b.jmp_imm(Cond::Eq, R1, 0, pass);

    // R9 = the frame length, a scalar the length checks compare with (and the byte count).
    b.push(Insn::mov64_reg(R1, R6));
    b.push(Insn::call(Helper::XdpGetBuffLen));
    b.push(Insn::mov64_reg(R9, R0));

    // Ethernet + the fixed IPv4 header present; ethertype IPv4 (a VLAN tag, ARP, IPv6:
    // pass). Every direct read of the frame below is at a constant offset under this bound.
    b.push(Insn::ldx(Size::W, R7, R6, MD_DATA));
    b.push(Insn::ldx(Size::W, R8, R6, MD_DATA_END));
    b.push(Insn::mov64_reg(R1, R7));
    b.push(Insn::alu64_imm(Alu::Add, R1, MIN_FRAME));
    b.jmp_reg(Cond::Gt, R1, R8, pass);
    b.push(Insn::ldx(Size::H, R1, R7, ETH_TYPE));
    b.jmp_imm(Cond::Ne, R1, wire16(packet::ETHERTYPE_IPV4), pass);

    // Version 4, IHL >= 5; R1 = header length in bytes, in [20, 60].
    b.push(Insn::ldx(Size::B, R1, R7, IP_VER_IHL));
    b.push(Insn::mov64_reg(R2, R1));
    b.push(Insn::alu64_imm(Alu::Rsh, R2, 4));
    b.jmp_imm(Cond::Ne, R2, 4, pass);
    b.push(Insn::alu64_imm(Alu::And, R1, 0x0f));
    b.jmp_imm(Cond::Lt, R1, 5, pass);
    b.push(Insn::alu64_imm(Alu::Lsh, R1, 2));

    // R2 = total length, assembled from its two bytes (a byte swap would leave the verifier
    // without bounds; this is [0, 65535]). It must cover the header and fit in the frame
    // (Ethernet padding may follow it): the user-space path drops such packets as bad or
    // truncated and counts them, so they are not forwarded here either.
    b.push(Insn::ldx(Size::B, R2, R7, IP_TOT_LEN));
    b.push(Insn::alu64_imm(Alu::Lsh, R2, 8));
    b.push(Insn::ldx(Size::B, R3, R7, IP_TOT_LEN + 1));
    b.push(Insn::alu64_reg(Alu::Or, R2, R3));
    b.jmp_reg(Cond::Lt, R2, R1, pass);
    b.push(Insn::mov64_reg(R3, R2));
    b.push(Insn::alu64_imm(Alu::Add, R3, i32::from(IP)));
    b.jmp_reg(Cond::Gt, R3, R9, pass);

    // A fragment (MF set or a non-zero offset) carries no ports after the first: the
    // user-space path counts and drops them all.
    b.push(Insn::ldx(Size::H, R3, R7, IP_FRAG));
    b.jmp_imm(Cond::Set, R3, wire16(0x3fff), pass);

    // R8 = L4 length (data_end is not needed any more); R2 = the L4 header's offset in the
    // frame, past the options, for bpf_xdp_load_bytes.
    b.push(Insn::mov64_reg(R8, R2));
    b.push(Insn::alu64_reg(Alu::Sub, R8, R1));
    b.push(Insn::mov64_reg(R2, R1));
    b.push(Insn::alu64_imm(Alu::Add, R2, i32::from(IP)));
    b.push(Insn::ldx(Size::B, R3, R7, IP_PROTO));
    b.jmp_imm(Cond::Eq, R3, IPPROTO_UDP, udp);
    b.jmp_imm(Cond::Ne, R3, IPPROTO_TCP, pass);

    // TCP: a whole header in the packet and in the frame, a sane data offset, and neither
    // FIN nor RST (flow ends go to user space, which forwards them and ends its flow).
    b.jmp_imm(Cond::Lt, R8, TCP_HEADER, pass);
    load_l4(&mut b, TCP_HEADER, pass);
    b.push(Insn::ldx(Size::B, R5, R10, STACK_L4 + TCP_DOFF));
    b.push(Insn::alu64_imm(Alu::Rsh, R5, 4));
    b.push(Insn::alu64_imm(Alu::Lsh, R5, 2));
    b.jmp_imm(Cond::Lt, R5, TCP_HEADER, pass);
    b.jmp_reg(Cond::Gt, R5, R8, pass);
    b.push(Insn::ldx(Size::B, R5, R10, STACK_L4 + TCP_FLAGS));
    b.jmp_imm(Cond::Set, R5, TCP_FIN | TCP_RST, pass);
    b.ja(key);

    // UDP: a whole header in the packet and in the frame.
    b.bind(udp);
    b.jmp_imm(Cond::Lt, R8, UDP_HEADER, pass);
    load_l4(&mut b, UDP_HEADER, pass);

    b.bind(key);
    // TCP and UDP meet here. Sent to us (the interface's MAC or a VIP's virtual MAC)? The MAC, zero-padded to the
    // map's 8-byte key, looked up in `macs`: a flooded frame or another node's forwarded
    // copy goes up, where the user-space path drops it as not ours.
    b.push(Insn::st(Size::DW, R10, STACK_MAC, 0));
    b.push(Insn::ldx(Size::W, R5, R7, 0));
    b.push(Insn::stx(Size::W, R10, STACK_MAC, R5));
    b.push(Insn::ldx(Size::H, R5, R7, 4));
    b.push(Insn::stx(Size::H, R10, STACK_MAC + 4, R5));
    b.push(Insn::mov64_reg(R2, R10));
    b.push(Insn::alu64_imm(Alu::Add, R2, i32::from(STACK_MAC)));
    b.push2(Insn::ld_map_fd(R1, fds.macs));
    b.push(Insn::call(Helper::MapLookupElem));
    b.jmp_imm(Cond::Eq, R0, 0, pass);

    // The key on the stack, copied from the frame as it is (network order); the last 8
    // bytes are zeroed first so the padding is zero. The ports are the L4 header's first
    // 4 bytes, source then destination, the key's own order.
    let at = |field: i16| STACK_KEY + field;
    b.push(Insn::st(Size::DW, R10, at(KEY_SPORT), 0));
    b.push(Insn::ldx(Size::W, R5, R7, IP_SADDR));
    b.push(Insn::stx(Size::W, R10, at(KEY_SADDR), R5));
    b.push(Insn::ldx(Size::W, R5, R7, IP_DADDR));
    b.push(Insn::stx(Size::W, R10, at(KEY_DADDR), R5));
    b.push(Insn::ldx(Size::W, R5, R10, STACK_L4));
    b.push(Insn::stx(Size::W, R10, at(KEY_SPORT), R5)); // and KEY_DPORT
    b.push(Insn::ldx(Size::B, R5, R7, IP_PROTO));
    b.push(Insn::stx(Size::B, R10, at(KEY_PROTO), R5));
    b.push(Insn::mov64_reg(R2, R10));
    b.push(Insn::alu64_imm(Alu::Add, R2, i32::from(STACK_KEY)));
    b.push2(Insn::ld_map_fd(R1, fds.flows));
    b.push(Insn::call(Helper::MapLookupElem));
    b.jmp_imm(Cond::Eq, R0, 0, pass);
    b.push(Insn::mov64_reg(R8, R0));

    // A hit. The value starts with dst MAC then src MAC, the frame's own layout: three
    // 4-byte copies rewrite both.
    for off in [0i16, 4, 8] {
        b.push(Insn::ldx(Size::W, R1, R8, off));
        b.push(Insn::stx(Size::W, R7, off, R1));
    }
    b.push(Insn::call(Helper::KtimeGetNs));
    b.push(Insn::stx(Size::DW, R8, VALUE_LAST_SEEN, R0));

    // stats[gateway] += (1, frame length). Per-CPU values: plain adds, no atomics. A
    // gateway index past the array finds no entry: the frame is still forwarded, uncounted.
    b.push(Insn::ldx(Size::W, R1, R8, VALUE_GATEWAY));
    b.push(Insn::stx(Size::W, R10, STACK_GATEWAY, R1));
    b.push(Insn::mov64_reg(R2, R10));
    b.push(Insn::alu64_imm(Alu::Add, R2, i32::from(STACK_GATEWAY)));
    b.push2(Insn::ld_map_fd(R1, fds.stats));
    b.push(Insn::call(Helper::MapLookupElem));
    b.jmp_imm(Cond::Eq, R0, 0, tx);
    b.push(Insn::ldx(Size::DW, R1, R0, STATS_PACKETS));
    b.push(Insn::alu64_imm(Alu::Add, R1, 1));
    b.push(Insn::stx(Size::DW, R0, STATS_PACKETS, R1));
    b.push(Insn::ldx(Size::DW, R1, R0, STATS_BYTES));
    b.push(Insn::alu64_reg(Alu::Add, R1, R9));
    b.push(Insn::stx(Size::DW, R0, STATS_BYTES, R1));

    b.bind(tx);
    b.push(Insn::mov64_imm(R0, XDP_TX as i32));
    b.push(Insn::exit());

    b.bind(pass);
    b.push(Insn::mov64_imm(R0, XDP_PASS as i32));
    b.push(Insn::exit());

    b.finish()
}

/// Copies the first `len` bytes of the L4 header (at the offset in R2) to the stack at
/// [`STACK_L4`] with `bpf_xdp_load_bytes`, which checks the bounds itself; a frame too short
/// for them goes to `pass`. R1..R5 are clobbered.
fn load_l4(b: &mut Builder, len: i32, pass: Label) {
    use Reg::*;
    b.push(Insn::mov64_reg(R1, R6));
    b.push(Insn::mov64_reg(R3, R10));
    b.push(Insn::alu64_imm(Alu::Add, R3, i32::from(STACK_L4)));
    b.push(Insn::mov64_imm(R4, len));
    b.push(Insn::call(Helper::XdpLoadBytes));
    b.jmp_imm(Cond::Ne, R0, 0, pass);
}

/// A program that passes every frame. On a veth it gives the interface NAPI, which the
/// *peer's* `XDP_TX` needs to deliver anything (veth hands transmitted XDP frames to the
/// peer's NAPI queue).
pub fn pass_all() -> Vec<Insn> {
    vec![Insn::mov64_imm(Reg::R0, XDP_PASS as i32), Insn::exit()]
}

/// The program's bytes as the kernel reads them.
pub fn to_bytes(program: &[Insn]) -> Vec<u8> {
    program.iter().flat_map(|i| i.to_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::super::insn::PSEUDO_MAP_FD;
    use super::*;

    const FDS: MapFds = MapFds {
        flows: 101,
        stats: 102,
        control: 103,
        macs: 104,
    };

    #[test]
    fn the_program_assembles_and_every_jump_lands_on_an_instruction() {
        let p = forwarding(FDS).expect("no unresolved label, every offset fits");
        assert!(p.last().is_some_and(|i| i.is_exit()), "ends in EXIT");
        // Second slots of 64-bit immediate loads are not instructions: no jump may land there.
        let second_slots: Vec<usize> = p
            .iter()
            .enumerate()
            .filter(|(_, i)| i.is_ld_imm64())
            .map(|(at, _)| at + 1)
            .collect();
        for (at, insn) in p.iter().enumerate().filter(|(_, i)| i.is_jump()) {
            let to = i64::try_from(at).unwrap() + 1 + i64::from(insn.off);
            assert!(
                to > i64::try_from(at).unwrap(),
                "{at}: only forward jumps (no loops)"
            );
            let to = usize::try_from(to).unwrap();
            assert!(to < p.len(), "{at}: jump past the end");
            assert!(!second_slots.contains(&to), "{at}: jump into a wide load");
        }
        // The instruction before every landing point either falls through or ends a path:
        // nothing runs off the end (the last instruction is EXIT, checked above).
        assert!(p.len() < 200, "a short program: {} instructions", p.len());
    }

    #[test]
    fn each_map_is_loaded_by_fd() {
        let p = forwarding(FDS).unwrap();
        let mut fds: Vec<i32> = p
            .iter()
            .filter(|i| i.is_ld_imm64())
            .map(|i| {
                assert_eq!(i.src(), PSEUDO_MAP_FD);
                i.imm
            })
            .collect();
        fds.sort_unstable();
        assert_eq!(fds, vec![101, 102, 103, 104]);
    }

    #[test]
    fn the_program_returns_only_pass_or_tx() {
        let p = forwarding(FDS).unwrap();
        for (at, insn) in p.iter().enumerate().filter(|(_, i)| i.is_exit()) {
            let set_r0 = p[at - 1];
            assert_eq!(set_r0, Insn::mov64_imm(Reg::R0, set_r0.imm));
            assert!(
                [XDP_PASS as i32, XDP_TX as i32].contains(&set_r0.imm),
                "{at}: {insn}"
            );
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn wire_order_constants() {
        // Bytes 08 00 read as a little-endian u16.
        assert_eq!(wire16(0x0800), 0x0008);
        // MF (0x20 in the first byte) and the 13-bit offset.
        assert_eq!(wire16(0x3fff), 0xff3f);
        assert_eq!(
            to_bytes(&pass_all()),
            [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}

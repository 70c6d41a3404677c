//! eBPF instruction encoding (pure) and a small program builder with named labels.
//!
//! There is no clang/LLVM on the build machines and CI must not need one, so the XDP program
//! is written as instructions here, the way the kernel's own selftests and `bpf_insn.h`
//! macros do it. Only what the forwarding program needs is covered: ALU (64 and 32 bit,
//! immediate and register source), loads and stores of 1/2/4/8 bytes, conditional jumps
//! (64 and 32 bit, immediate and register), helper calls, exit, and the two-slot 64-bit
//! immediate load including its map-fd form. Encodings follow
//! Documentation/bpf/standardization/instruction-set.rst.
//!
//! Jumps name their target by a [`Label`]; offsets are resolved in [`Builder::finish`], which
//! checks that each fits the instruction's signed 16-bit field (an error, never a panic: a
//! program too long for a jump is a programming mistake, but it is reported, not crashed on).

use std::fmt;

/// Instruction classes (the low 3 bits of the opcode).
const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
/// Source bit of ALU and jump opcodes: immediate (`K`) or register (`X`).
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
/// Addressing modes of loads and stores.
const MODE_IMM: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
/// Jump operations that take no condition.
const OP_JA: u8 = 0x00;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;

/// `src_reg` of a 64-bit immediate load whose immediate is a map fd: the kernel replaces it
/// with the map's address at load time.
pub const PSEUDO_MAP_FD: u8 = 1;

/// The eleven registers. R0 holds return values, R1..R5 are helper arguments (clobbered by
/// calls), R6..R9 survive calls, R10 is the read-only frame pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    R0 = 0,
    R1 = 1,
    R2 = 2,
    R3 = 3,
    R4 = 4,
    R5 = 5,
    R6 = 6,
    R7 = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
}

/// Memory access size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 1 byte.
    B,
    /// 2 bytes.
    H,
    /// 4 bytes.
    W,
    /// 8 bytes.
    DW,
}

impl Size {
    const fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::DW => 0x18,
        }
    }
}

/// ALU operations (the high 4 bits of an ALU opcode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alu {
    Add,
    Sub,
    Mul,
    Div,
    Or,
    And,
    Lsh,
    Rsh,
    Mod,
    Xor,
    Mov,
    Arsh,
}

impl Alu {
    const fn bits(self) -> u8 {
        match self {
            Alu::Add => 0x00,
            Alu::Sub => 0x10,
            Alu::Mul => 0x20,
            Alu::Div => 0x30,
            Alu::Or => 0x40,
            Alu::And => 0x50,
            Alu::Lsh => 0x60,
            Alu::Rsh => 0x70,
            Alu::Mod => 0x90,
            Alu::Xor => 0xa0,
            Alu::Mov => 0xb0,
            Alu::Arsh => 0xc0,
        }
    }
}

/// Jump conditions: `if dst <cond> src goto target` (unsigned unless `S`-prefixed; `Set`
/// is `dst & src != 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    Eq,
    Gt,
    Ge,
    Set,
    Ne,
    Sgt,
    Sge,
    Lt,
    Le,
    Slt,
    Sle,
}

impl Cond {
    const fn bits(self) -> u8 {
        match self {
            Cond::Eq => 0x10,
            Cond::Gt => 0x20,
            Cond::Ge => 0x30,
            Cond::Set => 0x40,
            Cond::Ne => 0x50,
            Cond::Sgt => 0x60,
            Cond::Sge => 0x70,
            Cond::Lt => 0xa0,
            Cond::Le => 0xb0,
            Cond::Slt => 0xc0,
            Cond::Sle => 0xd0,
        }
    }
}

/// Kernel helper functions the programs call (`imm` of a CALL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Helper {
    /// `void *bpf_map_lookup_elem(map, key)`: the value or NULL.
    MapLookupElem = 1,
    /// `u64 bpf_ktime_get_ns(void)`: CLOCK_MONOTONIC in ns.
    KtimeGetNs = 5,
    /// `u64 bpf_xdp_get_buff_len(xdp_md *)`: the frame's length (Linux 5.18).
    XdpGetBuffLen = 188,
    /// `long bpf_xdp_load_bytes(xdp_md *, u32 offset, void *buf, u32 len)`: copies frame
    /// bytes, 0 or a negative error when they are not all there (Linux 5.18).
    XdpLoadBytes = 189,
}

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn` (8 bytes: opcode, the
/// two 4-bit register numbers in one byte, a signed 16-bit offset, a signed 32-bit
/// immediate), so a `&[Insn]` can be handed to `BPF_PROG_LOAD` as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// An instruction from its fields. `dst`/`src` are register numbers (0..=10, or a pseudo
    /// value for `src`); only their low 4 bits are kept.
    pub const fn raw(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        // `struct bpf_insn` declares `dst_reg:4, src_reg:4`: C bit-fields are allocated from
        // the least significant bit on little-endian targets and from the most significant
        // one on big-endian targets.
        let regs = if cfg!(target_endian = "little") {
            (dst & 0x0f) | ((src & 0x0f) << 4)
        } else {
            ((dst & 0x0f) << 4) | (src & 0x0f)
        };
        Insn {
            code,
            regs,
            off,
            imm,
        }
    }

    /// The destination register number.
    pub const fn dst(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs & 0x0f
        } else {
            self.regs >> 4
        }
    }

    /// The source register number (or pseudo value).
    pub const fn src(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0x0f
        }
    }

    /// The instruction's class (`code & 7`).
    pub const fn class(&self) -> u8 {
        self.code & 0x07
    }

    /// The 8 bytes the kernel reads (native byte order, as `struct bpf_insn` in memory).
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }

    /// `dst = dst <op> imm` on 64 bits (`imm` sign-extended).
    pub const fn alu64_imm(op: Alu, dst: Reg, imm: i32) -> Insn {
        Insn::raw(CLASS_ALU64 | SRC_K | op.bits(), dst as u8, 0, 0, imm)
    }

    /// `dst = dst <op> src` on 64 bits.
    pub const fn alu64_reg(op: Alu, dst: Reg, src: Reg) -> Insn {
        Insn::raw(CLASS_ALU64 | SRC_X | op.bits(), dst as u8, src as u8, 0, 0)
    }

    /// `dst = (u32)(dst <op> imm)`: 32-bit ALU, the upper half of `dst` is zeroed.
    pub const fn alu32_imm(op: Alu, dst: Reg, imm: i32) -> Insn {
        Insn::raw(CLASS_ALU | SRC_K | op.bits(), dst as u8, 0, 0, imm)
    }

    /// `dst = (u32)(dst <op> src)`.
    pub const fn alu32_reg(op: Alu, dst: Reg, src: Reg) -> Insn {
        Insn::raw(CLASS_ALU | SRC_X | op.bits(), dst as u8, src as u8, 0, 0)
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub const fn mov64_imm(dst: Reg, imm: i32) -> Insn {
        Insn::alu64_imm(Alu::Mov, dst, imm)
    }

    /// `dst = src` (64-bit).
    pub const fn mov64_reg(dst: Reg, src: Reg) -> Insn {
        Insn::alu64_reg(Alu::Mov, dst, src)
    }

    /// `dst = *(size *)(src + off)`.
    pub const fn ldx(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::raw(
            CLASS_LDX | MODE_MEM | size.bits(),
            dst as u8,
            src as u8,
            off,
            0,
        )
    }

    /// `*(size *)(dst + off) = src`.
    pub const fn stx(size: Size, dst: Reg, off: i16, src: Reg) -> Insn {
        Insn::raw(
            CLASS_STX | MODE_MEM | size.bits(),
            dst as u8,
            src as u8,
            off,
            0,
        )
    }

    /// `*(size *)(dst + off) = imm`.
    pub const fn st(size: Size, dst: Reg, off: i16, imm: i32) -> Insn {
        Insn::raw(CLASS_ST | MODE_MEM | size.bits(), dst as u8, 0, off, imm)
    }

    /// `if dst <cond> imm goto pc + 1 + off` (64-bit compare). Prefer [`Builder::jmp_imm`],
    /// which takes a label.
    pub const fn jmp_imm(cond: Cond, dst: Reg, imm: i32, off: i16) -> Insn {
        Insn::raw(CLASS_JMP | SRC_K | cond.bits(), dst as u8, 0, off, imm)
    }

    /// `if dst <cond> src goto pc + 1 + off` (64-bit compare).
    pub const fn jmp_reg(cond: Cond, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::raw(
            CLASS_JMP | SRC_X | cond.bits(),
            dst as u8,
            src as u8,
            off,
            0,
        )
    }

    /// `if (u32)dst <cond> imm goto pc + 1 + off`.
    pub const fn jmp32_imm(cond: Cond, dst: Reg, imm: i32, off: i16) -> Insn {
        Insn::raw(CLASS_JMP32 | SRC_K | cond.bits(), dst as u8, 0, off, imm)
    }

    /// `if (u32)dst <cond> (u32)src goto pc + 1 + off`.
    pub const fn jmp32_reg(cond: Cond, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::raw(
            CLASS_JMP32 | SRC_X | cond.bits(),
            dst as u8,
            src as u8,
            off,
            0,
        )
    }

    /// `goto pc + 1 + off`.
    pub const fn ja(off: i16) -> Insn {
        Insn::raw(CLASS_JMP | OP_JA, 0, 0, off, 0)
    }

    /// `r0 = helper(r1, .., r5)`; R1..R5 are clobbered.
    pub const fn call(helper: Helper) -> Insn {
        Insn::raw(CLASS_JMP | OP_CALL, 0, 0, 0, helper as i32)
    }

    /// Return R0.
    pub const fn exit() -> Insn {
        Insn::raw(CLASS_JMP | OP_EXIT, 0, 0, 0, 0)
    }

    /// `dst = imm` with a full 64-bit immediate: two instruction slots.
    pub const fn ld_imm64(dst: Reg, imm: u64) -> [Insn; 2] {
        Insn::ld_imm64_raw(dst, 0, imm)
    }

    /// `dst = &map` for the map behind `fd` (the kernel resolves the fd at load time).
    pub const fn ld_map_fd(dst: Reg, fd: i32) -> [Insn; 2] {
        // The fd is the low word; the high word stays zero.
        Insn::ld_imm64_raw(dst, PSEUDO_MAP_FD, fd as u32 as u64)
    }

    const fn ld_imm64_raw(dst: Reg, src: u8, imm: u64) -> [Insn; 2] {
        [
            Insn::raw(
                CLASS_LD | MODE_IMM | Size::DW.bits(),
                dst as u8,
                src,
                0,
                imm as u32 as i32,
            ),
            Insn::raw(0, 0, 0, 0, (imm >> 32) as u32 as i32),
        ]
    }

    /// The first slot of a 64-bit immediate load (the next slot is its upper half, not an
    /// instruction).
    pub const fn is_ld_imm64(&self) -> bool {
        self.code == (CLASS_LD | MODE_IMM | Size::DW.bits())
    }

    /// A conditional or unconditional jump with an offset (not CALL or EXIT).
    pub const fn is_jump(&self) -> bool {
        let class = self.class();
        let op = self.code & 0xf0;
        (class == CLASS_JMP || class == CLASS_JMP32) && op != OP_CALL && op != OP_EXIT
    }

    /// EXIT.
    pub const fn is_exit(&self) -> bool {
        self.code == (CLASS_JMP | OP_EXIT)
    }
}

/// A jump target of one [`Builder`], bound to a position with [`Builder::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Why a program could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("label {0:?} is jumped to but never bound")]
    Unbound(&'static str),
    #[error("label {0:?} is bound twice")]
    BoundTwice(&'static str),
    #[error("a label from another builder was used")]
    Foreign,
    #[error("the jump at {from} to label {label:?} at {to} does not fit a 16-bit offset")]
    TooFar {
        label: &'static str,
        from: usize,
        to: usize,
    },
}

/// Collects instructions and resolves label jumps at the end.
///
/// Errors (a label bound twice or used from another builder) are remembered and returned by
/// [`Builder::finish`], so emitting stays infallible and the program text reads straight.
#[derive(Debug, Default)]
pub struct Builder {
    insns: Vec<Insn>,
    /// Name and position (instruction index) of each label.
    labels: Vec<(&'static str, Option<usize>)>,
    /// Jump instructions (by index) whose offset is to be set to reach a label.
    fixups: Vec<(usize, Label)>,
    error: Option<BuildError>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// A new, unbound label; `name` is for error messages.
    pub fn label(&mut self, name: &'static str) -> Label {
        self.labels.push((name, None));
        Label(self.labels.len() - 1)
    }

    /// Binds `label` to the next instruction emitted.
    pub fn bind(&mut self, label: Label) {
        let at = self.insns.len();
        match self.labels.get_mut(label.0) {
            Some((_, pos @ None)) => *pos = Some(at),
            Some((name, Some(_))) => {
                let name = *name;
                self.fail(BuildError::BoundTwice(name));
            }
            None => self.fail(BuildError::Foreign),
        }
    }

    fn fail(&mut self, e: BuildError) {
        self.error.get_or_insert(e);
    }

    /// Appends one instruction.
    pub fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    /// Appends both slots of a 64-bit immediate load.
    pub fn push2(&mut self, insns: [Insn; 2]) {
        self.insns.extend_from_slice(&insns);
    }

    fn jump_to(&mut self, insn: Insn, target: Label) {
        self.fixups.push((self.insns.len(), target));
        self.insns.push(insn);
    }

    /// `if dst <cond> imm goto target` (64-bit).
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, target: Label) {
        self.jump_to(Insn::jmp_imm(cond, dst, imm, 0), target);
    }

    /// `if dst <cond> src goto target` (64-bit).
    pub fn jmp_reg(&mut self, cond: Cond, dst: Reg, src: Reg, target: Label) {
        self.jump_to(Insn::jmp_reg(cond, dst, src, 0), target);
    }

    /// `if (u32)dst <cond> imm goto target`.
    pub fn jmp32_imm(&mut self, cond: Cond, dst: Reg, imm: i32, target: Label) {
        self.jump_to(Insn::jmp32_imm(cond, dst, imm, 0), target);
    }

    /// `if (u32)dst <cond> (u32)src goto target`.
    pub fn jmp32_reg(&mut self, cond: Cond, dst: Reg, src: Reg, target: Label) {
        self.jump_to(Insn::jmp32_reg(cond, dst, src, 0), target);
    }

    /// `goto target`.
    pub fn ja(&mut self, target: Label) {
        self.jump_to(Insn::ja(0), target);
    }

    /// Instructions emitted so far (slots: a 64-bit immediate load counts two).
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// Resolves every jump and returns the program.
    pub fn finish(mut self) -> Result<Vec<Insn>, BuildError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for &(at, label) in &self.fixups {
            let Some(&(name, pos)) = self.labels.get(label.0) else {
                return Err(BuildError::Foreign);
            };
            let Some(to) = pos else {
                return Err(BuildError::Unbound(name));
            };
            // The offset counts from the instruction after the jump.
            let off = i64::try_from(to).unwrap_or(i64::MAX) - i64::try_from(at).unwrap_or(0) - 1;
            let off = i16::try_from(off).map_err(|_| BuildError::TooFar {
                label: name,
                from: at,
                to,
            })?;
            if let Some(insn) = self.insns.get_mut(at) {
                insn.off = off;
            }
        }
        Ok(self.insns)
    }
}

impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "code={:#04x} dst=r{} src={} off={} imm={}",
            self.code,
            self.dst(),
            self.src(),
            self.off,
            self.imm
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bytes as the kernel's little-endian `struct bpf_insn` lays them out (hand-computed from
    // the opcode tables of instruction-set.rst).
    #[cfg(target_endian = "little")]
    #[test]
    fn encodings_match_the_kernel_layout() {
        let cases: &[(Insn, [u8; 8])] = &[
            // r0 = 2 (BPF_ALU64 | BPF_MOV | BPF_K = 0xb7)
            (Insn::mov64_imm(Reg::R0, 2), [0xb7, 0x00, 0, 0, 2, 0, 0, 0]),
            // r6 = r1 (0xbf; src in the high nibble)
            (
                Insn::mov64_reg(Reg::R6, Reg::R1),
                [0xbf, 0x16, 0, 0, 0, 0, 0, 0],
            ),
            // r2 += -4 (0x07)
            (
                Insn::alu64_imm(Alu::Add, Reg::R2, -4),
                [0x07, 0x02, 0, 0, 0xfc, 0xff, 0xff, 0xff],
            ),
            // w1 &= 15 (BPF_ALU | BPF_AND | BPF_K = 0x54)
            (
                Insn::alu32_imm(Alu::And, Reg::R1, 15),
                [0x54, 0x01, 0, 0, 15, 0, 0, 0],
            ),
            // w3 -= w4 (0x1c)
            (
                Insn::alu32_reg(Alu::Sub, Reg::R3, Reg::R4),
                [0x1c, 0x43, 0, 0, 0, 0, 0, 0],
            ),
            // r1 <<= 2 (0x67), r2 >>= 4 (0x77), r2 |= r3 (0x4f)
            (
                Insn::alu64_imm(Alu::Lsh, Reg::R1, 2),
                [0x67, 0x01, 0, 0, 2, 0, 0, 0],
            ),
            (
                Insn::alu64_imm(Alu::Rsh, Reg::R2, 4),
                [0x77, 0x02, 0, 0, 4, 0, 0, 0],
            ),
            (
                Insn::alu64_reg(Alu::Or, Reg::R2, Reg::R3),
                [0x4f, 0x32, 0, 0, 0, 0, 0, 0],
            ),
            // r7 = *(u32 *)(r6 + 4) (BPF_LDX | BPF_MEM | BPF_W = 0x61)
            (
                Insn::ldx(Size::W, Reg::R7, Reg::R6, 4),
                [0x61, 0x67, 4, 0, 0, 0, 0, 0],
            ),
            // r1 = *(u16 *)(r7 + 12) (0x69), r1 = *(u8 *)(r7 + 14) (0x71), DW (0x79)
            (
                Insn::ldx(Size::H, Reg::R1, Reg::R7, 12),
                [0x69, 0x71, 12, 0, 0, 0, 0, 0],
            ),
            (
                Insn::ldx(Size::B, Reg::R1, Reg::R7, 14),
                [0x71, 0x71, 14, 0, 0, 0, 0, 0],
            ),
            (
                Insn::ldx(Size::DW, Reg::R1, Reg::R0, 8),
                [0x79, 0x01, 8, 0, 0, 0, 0, 0],
            ),
            // *(u64 *)(r10 - 8) = r1 (BPF_STX | BPF_MEM | BPF_DW = 0x7b)
            (
                Insn::stx(Size::DW, Reg::R10, -8, Reg::R1),
                [0x7b, 0x1a, 0xf8, 0xff, 0, 0, 0, 0],
            ),
            // *(u8 *)(r10 - 4) = r3 (0x73), *(u16 *)(r10 - 6) = r5 (0x6b), W (0x63)
            (
                Insn::stx(Size::B, Reg::R10, -4, Reg::R3),
                [0x73, 0x3a, 0xfc, 0xff, 0, 0, 0, 0],
            ),
            (
                Insn::stx(Size::H, Reg::R10, -6, Reg::R5),
                [0x6b, 0x5a, 0xfa, 0xff, 0, 0, 0, 0],
            ),
            (
                Insn::stx(Size::W, Reg::R7, 0, Reg::R1),
                [0x63, 0x17, 0, 0, 0, 0, 0, 0],
            ),
            // *(u32 *)(r10 - 4) = 0 (BPF_ST | BPF_MEM | BPF_W = 0x62); DW = 0x7a
            (
                Insn::st(Size::W, Reg::R10, -4, 0),
                [0x62, 0x0a, 0xfc, 0xff, 0, 0, 0, 0],
            ),
            (
                Insn::st(Size::DW, Reg::R10, -8, 7),
                [0x7a, 0x0a, 0xf8, 0xff, 7, 0, 0, 0],
            ),
            // if r1 != 8 goto +5 (BPF_JMP | BPF_JNE | BPF_K = 0x55)
            (
                Insn::jmp_imm(Cond::Ne, Reg::R1, 8, 5),
                [0x55, 0x01, 5, 0, 8, 0, 0, 0],
            ),
            // if r3 > r8 goto +300 (BPF_JMP | BPF_JGT | BPF_X = 0x2d)
            (
                Insn::jmp_reg(Cond::Gt, Reg::R3, Reg::R8, 300),
                [0x2d, 0x83, 0x2c, 0x01, 0, 0, 0, 0],
            ),
            // if r3 & 0x3fff goto -2 (BPF_JSET | BPF_K = 0x45)
            (
                Insn::jmp_imm(Cond::Set, Reg::R3, 0x3fff, -2),
                [0x45, 0x03, 0xfe, 0xff, 0xff, 0x3f, 0, 0],
            ),
            // if w1 < 5 goto +1 (BPF_JMP32 | BPF_JLT | BPF_K = 0xa6); w2 <= w1 (0xbe)
            (
                Insn::jmp32_imm(Cond::Lt, Reg::R1, 5, 1),
                [0xa6, 0x01, 1, 0, 5, 0, 0, 0],
            ),
            (
                Insn::jmp32_reg(Cond::Le, Reg::R2, Reg::R1, 1),
                [0xbe, 0x12, 1, 0, 0, 0, 0, 0],
            ),
            // goto +3 (0x05)
            (Insn::ja(3), [0x05, 0x00, 3, 0, 0, 0, 0, 0]),
            // call bpf_map_lookup_elem (0x85, imm 1); call 188
            (
                Insn::call(Helper::MapLookupElem),
                [0x85, 0, 0, 0, 1, 0, 0, 0],
            ),
            (
                Insn::call(Helper::XdpGetBuffLen),
                [0x85, 0, 0, 0, 188, 0, 0, 0],
            ),
            // exit (0x95)
            (Insn::exit(), [0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        for (insn, bytes) in cases {
            assert_eq!(insn.to_bytes(), *bytes, "{insn}");
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn wide_immediates_take_two_slots() {
        let [a, b] = Insn::ld_imm64(Reg::R3, 0x1122_3344_5566_7788);
        assert_eq!(a.to_bytes(), [0x18, 0x03, 0, 0, 0x88, 0x77, 0x66, 0x55]);
        assert_eq!(b.to_bytes(), [0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11]);
        // The map-fd form: src_reg = BPF_PSEUDO_MAP_FD (1), the fd in the low word.
        let [a, b] = Insn::ld_map_fd(Reg::R1, 7);
        assert_eq!(a.to_bytes(), [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        assert_eq!(b.to_bytes(), [0; 8]);
        assert!(a.is_ld_imm64() && !b.is_ld_imm64());
    }

    #[test]
    fn struct_layout_is_the_kernels() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::align_of::<Insn>(), 4);
        let i = Insn::ldx(Size::W, Reg::R9, Reg::R10, -3);
        assert_eq!((i.dst(), i.src(), i.off), (9, 10, -3));
        assert_eq!(i.class(), CLASS_LDX);
    }

    #[test]
    fn labels_resolve_forward_and_backward() {
        let mut b = Builder::new();
        let end = b.label("end");
        let top = b.label("top");
        b.bind(top);
        b.push(Insn::mov64_imm(Reg::R0, 0)); // 0
        b.jmp_imm(Cond::Eq, Reg::R0, 1, end); // 1 -> 5: off 3
        b.push2(Insn::ld_imm64(Reg::R1, 1)); // 2, 3
        b.jmp_reg(Cond::Gt, Reg::R1, Reg::R0, top); // 4 -> 0: off -5
        b.bind(end);
        b.push(Insn::exit()); // 5
        let p = b.finish().expect("assembles");
        assert_eq!(p.len(), 6);
        assert_eq!(p[1].off, 3);
        assert_eq!(p[4].off, -5);
        assert!(p[5].is_exit());
    }

    #[test]
    fn label_mistakes_are_errors() {
        let mut b = Builder::new();
        let never = b.label("never");
        b.ja(never);
        assert_eq!(b.finish(), Err(BuildError::Unbound("never")));

        let mut b = Builder::new();
        let twice = b.label("twice");
        b.bind(twice);
        b.push(Insn::exit());
        b.bind(twice);
        assert_eq!(b.finish(), Err(BuildError::BoundTwice("twice")));

        let mut other = Builder::new();
        let _ = other.label("a");
        let foreign = other.label("b");
        let mut b = Builder::new();
        b.ja(foreign);
        assert_eq!(b.finish(), Err(BuildError::Foreign));
    }

    #[test]
    fn jumps_beyond_16_bits_are_errors_not_panics() {
        let mut b = Builder::new();
        let far = b.label("far");
        b.ja(far);
        for _ in 0..i16::MAX as usize {
            b.push(Insn::mov64_imm(Reg::R0, 0));
        }
        // The offset to here is exactly i16::MAX: still fits.
        b.bind(far);
        b.push(Insn::exit());
        let p = b.finish().expect("i16::MAX fits");
        assert_eq!(p[0].off, i16::MAX);

        let mut b = Builder::new();
        let far = b.label("far");
        b.ja(far);
        for _ in 0..=i16::MAX as usize {
            b.push(Insn::mov64_imm(Reg::R0, 0));
        }
        b.bind(far);
        b.push(Insn::exit());
        assert_eq!(
            b.finish(),
            Err(BuildError::TooFar {
                label: "far",
                from: 0,
                to: i16::MAX as usize + 2,
            })
        );
    }
}

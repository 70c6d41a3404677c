//! The `bpf(2)` calls, with our own `#[repr(C)]` prefixes of `union bpf_attr`
//! (include/uapi/linux/bpf.h). The kernel accepts an attr shorter than its own and zeroes
//! the rest, so each struct stops after the last field we set.
//!
//! Every fd comes back as an [`OwnedFd`]: maps, the program and the XDP link are released
//! when their owner drops them, and the kernel creates them all close-on-exec. Map access
//! goes through [`Map`], which knows its key and value sizes and refuses a buffer of another
//! length: the kernel reads and writes exactly those sizes at the pointers we pass.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::insn::Insn;

// enum bpf_cmd
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_int = 4;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TEST_RUN: libc::c_int = 10;
const BPF_LINK_CREATE: libc::c_int = 28;
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_int = 25;

/// `enum bpf_prog_type`: BPF_PROG_TYPE_XDP.
pub const PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: BPF_XDP.
const ATTACH_TYPE_XDP: u32 = 37;
/// `XDP_FLAGS_*` of a link: generic (skb) or native (driver) mode.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `BPF_ANY`: create or replace.
pub const UPDATE_ANY: u64 = 0;
/// `BPF_OBJ_NAME_LEN`, the NUL included.
const OBJ_NAME_LEN: usize = 16;

/// The map types we create (`enum bpf_map_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    Hash = 1,
    Array = 2,
    PercpuArray = 6,
    LruHash = 9,
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; OBJ_NAME_LEN],
}

/// `union bpf_attr`'s `batch` member (BPF_MAP_*_BATCH).
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A hash map's batch position: the kernel reads and writes a u32 bucket index; 8 bytes leave
/// room to spare.
pub type BatchToken = [u8; 8];

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for BPF_MAP_GET_NEXT_KEY.
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// `bpf(cmd, attr, sizeof *attr)`.
///
/// # Safety
///
/// `T` must be a `#[repr(C)]` prefix of the attr layout of `cmd`, and every pointer in it
/// must point to live memory of at least the size the attr states for it (writable where the
/// kernel writes).
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller upholds the layout and pointer contract; the size passed is T's.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An fd returned by the kernel, owned from now on.
fn owned_fd(r: libc::c_long) -> io::Result<OwnedFd> {
    let fd = libc::c_int::try_from(r).map_err(|_| io::Error::other("bpf returned no fd"))?;
    // SAFETY: a fresh fd the kernel just created for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn obj_name(name: &str) -> [u8; OBJ_NAME_LEN] {
    // The kernel accepts [A-Za-z0-9_.] and needs the NUL: callers pass short literals.
    let mut out = [0u8; OBJ_NAME_LEN];
    for (o, c) in out.iter_mut().zip(name.bytes().take(OBJ_NAME_LEN - 1)) {
        *o = c;
    }
    out
}

fn fd_u32(fd: &OwnedFd) -> u32 {
    // Open fds are never negative.
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

fn wrong_len(what: &str, got: usize, want: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} of {got} bytes, the map's is {want}"),
    )
}

/// A map and the sizes of its key and of the value as user space reads and writes it.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key_size: usize,
    /// For per-CPU maps: one 8-byte-aligned slot per possible CPU.
    value_len: usize,
}

impl Map {
    pub fn create(
        kind: MapType,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        name: &str,
    ) -> io::Result<Map> {
        let value_len = match kind {
            MapType::PercpuArray => {
                let stride = (value_size as usize).next_multiple_of(8);
                stride * possible_cpu_slots()?
            }
            MapType::Hash | MapType::Array | MapType::LruHash => value_size as usize,
        };
        let mut attr = MapCreateAttr {
            map_type: kind as u32,
            key_size,
            value_size,
            max_entries,
            map_flags: 0,
            inner_map_fd: 0,
            numa_node: 0,
            map_name: obj_name(name),
        };
        // SAFETY: MapCreateAttr is the BPF_MAP_CREATE prefix; it holds no pointers.
        let fd = owned_fd(unsafe { bpf(BPF_MAP_CREATE, &mut attr) }?)?;
        Ok(Map {
            fd,
            key_size: key_size as usize,
            value_len,
        })
    }

    /// The fd, for a program's map loads (valid while `self` lives).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The length of a value buffer (all CPUs' slots for a per-CPU map).
    pub fn value_len(&self) -> usize {
        self.value_len
    }

    fn elem(&self, key: u64, value: u64, flags: u64) -> ElemAttr {
        ElemAttr {
            map_fd: fd_u32(&self.fd),
            _pad: 0,
            key,
            value,
            flags,
        }
    }

    fn check_key(&self, key: &[u8]) -> io::Result<()> {
        if key.len() == self.key_size {
            Ok(())
        } else {
            Err(wrong_len("key", key.len(), self.key_size))
        }
    }

    fn check_value(&self, value: &[u8]) -> io::Result<()> {
        if value.len() == self.value_len {
            Ok(())
        } else {
            Err(wrong_len("value", value.len(), self.value_len))
        }
    }

    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        self.check_key(key)?;
        self.check_value(value)?;
        let mut attr = self.elem(key.as_ptr() as u64, value.as_ptr() as u64, flags);
        // SAFETY: the ELEM prefix; key and value are live buffers of the map's sizes (checked
        // above), only read by the kernel.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(|_| ())
    }

    /// Fills `value`; `false` when the key has no entry.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
        self.check_key(key)?;
        self.check_value(value)?;
        let mut attr = self.elem(key.as_ptr() as u64, value.as_mut_ptr() as u64, 0);
        // SAFETY: the ELEM prefix; key is a live buffer of key_size bytes, value a live,
        // writable buffer of the value length the kernel writes (checked above).
        match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `false` when the key had no entry.
    pub fn delete(&self, key: &[u8]) -> io::Result<bool> {
        self.check_key(key)?;
        let mut attr = self.elem(key.as_ptr() as u64, 0, 0);
        // SAFETY: the ELEM prefix; key is a live buffer of key_size bytes.
        match unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) } {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads the entries after batch position `from` (the start for `None`) into `keys` and
    /// `values` (whole numbers of keys and values, the same count of each), many per call;
    /// returns how many it read and the position to go on from (`None`: that was the end).
    /// With `delete`, the entries read are also removed (BPF_MAP_LOOKUP_AND_DELETE_BATCH).
    /// Kernels without batch operations for this map type fail with EINVAL or ENOTSUPP.
    pub fn batch(
        &self,
        from: Option<&BatchToken>,
        keys: &mut [u8],
        values: &mut [u8],
        delete: bool,
    ) -> io::Result<(usize, Option<BatchToken>)> {
        let room = keys.len() / self.key_size.max(1);
        if room == 0 || keys.len() != room * self.key_size || values.len() < room * self.value_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "batch buffers must hold the same whole number of keys and values",
            ));
        }
        let mut next: BatchToken = [0; 8];
        let mut attr = BatchAttr {
            in_batch: from.map_or(0, |t| t.as_ptr() as u64),
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(room).unwrap_or(u32::MAX),
            map_fd: fd_u32(&self.fd),
            elem_flags: 0,
            flags: 0,
        };
        let cmd = if delete {
            BPF_MAP_LOOKUP_AND_DELETE_BATCH
        } else {
            BPF_MAP_LOOKUP_BATCH
        };
        // SAFETY: the `batch` member's layout; in_batch is null or a live 8-byte token,
        // out_batch a live writable 8-byte token (the kernel writes a u32), keys and values
        // live writable buffers of `count` keys and values (checked above).
        let r = unsafe { bpf(cmd, &mut attr) };
        let read = usize::try_from(attr.count).unwrap_or(0).min(room);
        match r {
            Ok(_) => Ok((read, Some(next))),
            // The end: `count` says how many the last call still read.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((read, None)),
            Err(e) => Err(e),
        }
    }

    /// Writes the key after `key` (the first key for `None`) to `next`; `false` at the end.
    pub fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
        if let Some(k) = key {
            self.check_key(k)?;
        }
        if next.len() != self.key_size {
            return Err(wrong_len("key", next.len(), self.key_size));
        }
        let key_ptr = key.map_or(0, |k| k.as_ptr() as u64);
        let mut attr = self.elem(key_ptr, next.as_mut_ptr() as u64, 0);
        // SAFETY: the ELEM prefix; key is null or a live key_size buffer, next a live,
        // writable key_size buffer.
        match unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The license the program declares. None of the helpers it calls today is GPL-only, but
/// some are (`bpf_trace_printk`, handy while debugging a program) and refuse any other.
const LICENSE: &[u8] = b"GPL\0";

/// Loads a program. With `log`, the verifier writes its log there (level 1: the instructions
/// it walked and the register state where it stopped, the last lines kept when it overflows).
pub fn prog_load(
    prog_type: u32,
    insns: &[Insn],
    name: &str,
    log: Option<&mut [u8]>,
) -> io::Result<OwnedFd> {
    let insn_cnt = u32::try_from(insns.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "program too long"))?;
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => {
            // The kernel caps log_size at UINT32_MAX >> 2.
            let size = u32::try_from(buf.len())
                .unwrap_or(u32::MAX >> 2)
                .min(u32::MAX >> 2);
            (1, size, buf.as_mut_ptr() as u64)
        }
        None => (0, 0, 0),
    };
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        kern_version: 0,
        prog_flags: 0,
        prog_name: obj_name(name),
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    // SAFETY: the PROG_LOAD prefix; `insns` is a live array of insn_cnt `struct bpf_insn`
    // (Insn has its layout), the license a NUL-terminated static string, the log buffer (if
    // any) live and writable for log_size bytes.
    owned_fd(unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?)
}

/// Runs `prog` once on a copy of `data` (BPF_PROG_TEST_RUN); returns the program's return
/// value and the frame as it left the program, written to `out` (its length returned).
pub fn prog_test_run(prog: &OwnedFd, data: &[u8], out: &mut [u8]) -> io::Result<(u32, usize)> {
    let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "frame too long");
    let mut attr = TestRunAttr {
        prog_fd: fd_u32(prog),
        retval: 0,
        data_size_in: u32::try_from(data.len()).map_err(|_| too_long())?,
        data_size_out: u32::try_from(out.len()).map_err(|_| too_long())?,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        duration: 0,
    };
    // SAFETY: the PROG_TEST_RUN prefix; data_in is live for data_size_in bytes, data_out live
    // and writable for data_size_out bytes (the kernel writes at most that, ENOSPC beyond).
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok((attr.retval, (attr.data_size_out as usize).min(out.len())))
}

/// Attaches an XDP program to `ifindex` (of the calling thread's network namespace) through
/// a link: the program stays attached while the returned fd is open and is detached when it
/// is closed, by us or by the kernel when the process dies. A link refuses to replace another
/// program already attached in any mode (EBUSY) rather than silently taking over.
pub fn link_create_xdp(prog: &OwnedFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog),
        target_ifindex: ifindex,
        attach_type: ATTACH_TYPE_XDP,
        flags,
    };
    // SAFETY: the LINK_CREATE prefix; it holds no pointers.
    owned_fd(unsafe { bpf(BPF_LINK_CREATE, &mut attr) }?)
}

const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

/// Slots to allocate for one per-CPU value: the highest possible CPU number plus one. The
/// kernel copies one slot per possible CPU, which is never more than that (fewer when the
/// possible set has holes: the extra slots stay zero).
pub fn possible_cpu_slots() -> io::Result<usize> {
    let text = std::fs::read_to_string(POSSIBLE_CPUS)?;
    parse_cpu_list(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{POSSIBLE_CPUS}: cannot parse {:?}", text.trim()),
        )
    })
}

/// The highest CPU number in a kernel CPU list ("0-3", "0,2-5,8") plus one.
fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut top: Option<usize> = None;
    for part in text.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim().parse::<usize>().ok()?, hi.trim().parse().ok()?),
            None => {
                let n = part.trim().parse::<usize>().ok()?;
                (n, n)
            }
        };
        if hi < lo {
            return None;
        }
        top = Some(top.map_or(hi, |t: usize| t.max(hi)));
    }
    // A CPU number beyond any real machine is a parse of garbage, not a size to allocate.
    top.filter(|&t| t < 65_536).map(|t| t + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(1));
        assert_eq!(parse_cpu_list("0-3\n"), Some(4));
        assert_eq!(parse_cpu_list("0,2-5,8"), Some(9));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-x"), None);
        assert_eq!(parse_cpu_list("0-999999"), None);
        assert!(possible_cpu_slots().is_ok_and(|n| n >= 1));
    }

    #[test]
    fn attr_layouts_match_the_uapi_offsets() {
        use std::mem::{offset_of, size_of};
        assert_eq!(offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(size_of::<ElemAttr>(), 32);
        assert_eq!(offset_of!(ElemAttr, key), 8);
        assert_eq!(offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(offset_of!(TestRunAttr, data_in), 16);
        assert_eq!(offset_of!(TestRunAttr, repeat), 32);
        assert_eq!(size_of::<LinkCreateAttr>(), 16);
        assert_eq!(obj_name("portico_flows_and_more")[15], 0);
    }
}

//! Socket options that socket2 has no setter for (`TCP_DEFER_ACCEPT`, `PACKET_RX_RING`,
//! `IPV6_CHECKSUM`, ...): one typed `setsockopt(2)` for every module.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `setsockopt(fd, level, name, value)`, with the size of `T` as the option's length; `T` must
/// be the type the kernel expects for that option (`c_int` for flags and counts).
pub fn set<T>(fd: impl AsFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T for the call and its exact size is passed with it;
    // the descriptor is borrowed, so it stays open for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_an_option_the_kernel_reads_back_and_names_a_bad_one() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        set(&s, libc::IPPROTO_TCP, libc::TCP_NODELAY, &1 as &libc::c_int).unwrap();
        assert!(s.tcp_nodelay().unwrap());
        let e = set(&s, libc::IPPROTO_TCP, 0x7fff, &1 as &libc::c_int).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT));
    }
}

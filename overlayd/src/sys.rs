//! The few raw system calls overlayd makes, each wrapped and explained.

/// Sets SO_RCVBUFFORCE / SO_SNDBUFFORCE (root may exceed net.core.*mem_max);
/// returns false where that is refused so the caller can fall back.
pub fn force_buffers(fd: std::os::fd::RawFd, bytes: usize) -> bool {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let mut ok = true;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: `fd` is an open socket owned by the caller; the option
        // value is a c_int on the stack whose size we pass.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ok &= r == 0;
    }
    ok
}

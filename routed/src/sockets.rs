//! The sockets BGP and BFD run on, with their TTL (IPv4) and hop-limit
//! (IPv6) rules: BFD single hop (RFC 5881) and BGP with GTSM (RFC 5082)
//! send with 255 and take only what arrives with 255, so a sender farther
//! than one hop away is not heard. For TCP the kernel drops the rest
//! (`IP_MINTTL`, `IPV6_MINHOPCOUNT`: Linux checks them for TCP only); a
//! BFD datagram comes with its TTL as ancillary data, checked by the
//! router ([`recv_with_ttl`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use tokio::net::UdpSocket;

pub const BFD_PORT: u16 = 3784;
/// Multihop BFD (RFC 5883), as FRR runs it for a neighbour with GTSM.
pub const BFD_MULTIHOP_PORT: u16 = 4784;

fn setsockopt_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket, and an int option of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends with TTL / hop limit 255 on a socket of family `v6`.
pub fn send_255(fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255)
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_TTL, 255)
    }
}

/// The kernel drops what arrives with a TTL / hop limit below 255. On a
/// dual-stack IPv6 socket both are set: its IPv4 packets are checked by
/// the IPv4 option.
pub fn receive_only_255(fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
    receive_min(fd, v6, 255)
}

/// The lowest TTL / hop limit the kernel lets through (0: any).
pub fn receive_min(fd: &impl AsRawFd, v6: bool, min: u8) -> io::Result<()> {
    let min = libc::c_int::from(min);
    if v6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, min)?;
        // Only meaningful when the socket also takes IPv4; harmless when not.
        let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MINTTL, min);
        Ok(())
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MINTTL, min)
    }
}

/// `struct tcp_md5sig` of linux/tcp.h.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; 80],
}

/// TCP-MD5 (RFC 2385) for segments to and from `peer` on this socket (a
/// listener passes it to the connections it accepts): with a key, the
/// kernel drops every segment from `peer` that is not signed with it, the
/// SYN included; an empty key removes it. On an IPv6 socket an IPv4 peer
/// is given in its mapped form (a dual-stack listener).
pub fn set_md5(fd: &impl AsRawFd, socket_v6: bool, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > 80 {
        return Err(io::Error::other("a TCP-MD5 key is at most 80 bytes"));
    }
    // SAFETY: all-zero is a valid tcp_md5sig.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let peer = match (socket_v6, peer) {
        (true, IpAddr::V4(a)) => IpAddr::V6(a.to_ipv6_mapped()),
        (_, p) => p,
    };
    // SAFETY: sockaddr_storage is large and aligned enough for either.
    unsafe {
        match peer {
            IpAddr::V4(a) => {
                let sa = &mut *(&mut sig.addr as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from(a).to_be();
            }
            IpAddr::V6(a) => {
                let sa = &mut *(&mut sig.addr as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = a.octets();
            }
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: a valid socket and a tcp_md5sig of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&sig as *const TcpMd5Sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel for each datagram's TTL (hop limit) and the interface
/// it arrived on as ancillary data.
fn want_ttl(fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

/// A datagram read by [`recv_with_ttl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// The TTL (hop limit) it arrived with, if the kernel gave it.
    pub ttl: Option<u8>,
    /// The interface it arrived on, if the kernel gave it.
    pub ifindex: Option<u32>,
}

/// The index of interface `name`, if there is one.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string for the call's duration.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// One datagram with its sender, TTL (hop limit) and arrival interface,
/// from a socket of [`bfd_receiver_at`].
pub async fn recv_with_ttl(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    loop {
        sock.readable().await?;
        match sock.try_io(tokio::io::Interest::READABLE, || recvmsg_ttl(sock, buf)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

fn recvmsg_ttl(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for a TTL or hop-limit message and a packet-info one, aligned
    // for cmsghdr.
    let mut control = [0u64; 16];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the sizes it gives.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let (mut ttl, mut ifindex) = (None, None);
    // SAFETY: the kernel filled msg_control; the CMSG macros walk it
    // within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            let is_ttl = (h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_TTL)
                || (h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_HOPLIMIT);
            if is_ttl {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                ttl = u8::try_from(v).ok();
            } else if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_PKTINFO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                ifindex = u32::try_from(v.ipi_ifindex).ok();
            } else if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_PKTINFO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>());
                ifindex = Some(v.ipi6_ifindex);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    // SAFETY: the kernel wrote a socket address of the family it names,
    // and sockaddr_storage is large and aligned enough for either.
    let from = unsafe {
        match libc::c_int::from(addr.ss_family) {
            libc::AF_INET => {
                let a = &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                SocketAddr::from((
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                ))
            }
            libc::AF_INET6 => {
                let a = &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                SocketAddr::from((
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                ))
            }
            f => {
                return Err(io::Error::other(format!(
                    "a datagram from address family {f}"
                )))
            }
        }
    };
    Ok(Received {
        len: n as usize,
        from,
        ttl,
        ifindex,
    })
}

/// BFD's send sockets, one per family: source port 49152-65535 and TTL /
/// hop limit 255 (RFC 5881 §4). The IPv6 one may be missing, with why.
pub fn bfd_senders() -> io::Result<(UdpSocket, Result<UdpSocket, String>)> {
    fn one(v6: bool) -> io::Result<UdpSocket> {
        let mut last = None;
        for port in 49152..49252u16 {
            let addr: SocketAddr = if v6 {
                (Ipv6Addr::UNSPECIFIED, port).into()
            } else {
                (Ipv4Addr::UNSPECIFIED, port).into()
            };
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            if v6 {
                s.set_only_v6(true)?;
            }
            match s.bind(&addr.into()) {
                Ok(()) => {
                    send_255(&s, v6)?;
                    s.set_nonblocking(true)?;
                    return UdpSocket::from_std(s.into());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free port in 49152-49251")))
    }
    let v4 = one(false)?;
    let v6 = one(true).map_err(|e| format!("no IPv6 BFD send socket: {e}"));
    Ok((v4, v6))
}

/// This host's addresses on the interface that holds `local` (a BGP
/// session's own address): what a router on that link reaches it at, per
/// family, and so the next hops to give that router (RFC 4760, RFC 2545).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkAddrs {
    pub v4: Option<Ipv4Addr>,
    /// A global (not link-local) IPv6 address.
    pub v6: Option<Ipv6Addr>,
    /// The interface's link-local IPv6 address: the second next hop of
    /// RFC 2545 for a router on that link.
    pub v6_local: Option<Ipv6Addr>,
    /// The interface's index: where a router's link-local next hop is.
    pub ifindex: Option<u32>,
}

/// This host's interface addresses: interface name, address, prefix
/// length.
fn interface_addrs() -> io::Result<Vec<(std::ffi::CString, IpAddr, u8)>> {
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifa) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut all = Vec::new();
    let mut p = ifa;
    while !p.is_null() {
        // SAFETY: p walks the list getifaddrs made; each address (and its
        // netmask, when there is one) is of the family it names.
        unsafe {
            let e = &*p;
            if !e.ifa_addr.is_null() {
                let name = std::ffi::CStr::from_ptr(e.ifa_name).to_owned();
                let mask = e.ifa_netmask;
                match libc::c_int::from((*e.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let a = &*e.ifa_addr.cast::<libc::sockaddr_in>();
                        let len = if mask.is_null() {
                            32
                        } else {
                            (*mask.cast::<libc::sockaddr_in>())
                                .sin_addr
                                .s_addr
                                .count_ones() as u8
                        };
                        all.push((
                            name,
                            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                            len,
                        ));
                    }
                    libc::AF_INET6 => {
                        let a = &*e.ifa_addr.cast::<libc::sockaddr_in6>();
                        let len = if mask.is_null() {
                            128
                        } else {
                            (*mask.cast::<libc::sockaddr_in6>())
                                .sin6_addr
                                .s6_addr
                                .iter()
                                .map(|b| b.count_ones() as u8)
                                .sum()
                        };
                        all.push((name, Ipv6Addr::from(a.sin6_addr.s6_addr).into(), len));
                    }
                    _ => {}
                }
            }
            p = e.ifa_next;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(ifa) };
    Ok(all)
}

pub fn link_addrs(local: IpAddr) -> io::Result<LinkAddrs> {
    let all = interface_addrs()?;
    let mut out = LinkAddrs::default();
    match local {
        IpAddr::V4(a) => out.v4 = Some(a),
        IpAddr::V6(a) => out.v6 = Some(a),
    }
    let Some((ifname, _, _)) = all.iter().find(|(_, a, _)| *a == local) else {
        return Ok(out);
    };
    // SAFETY: a NUL-terminated name getifaddrs gave.
    let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    out.ifindex = (index != 0).then_some(index);
    for (_, a, _) in all.iter().filter(|(n, _, _)| n == ifname) {
        match a {
            IpAddr::V4(a) if out.v4.is_none() => out.v4 = Some(*a),
            IpAddr::V6(a) if a.is_unicast_link_local() => {
                out.v6_local = out.v6_local.or(Some(*a));
            }
            IpAddr::V6(a) if out.v6.is_none() => out.v6 = Some(*a),
            _ => {}
        }
    }
    Ok(out)
}

/// Our address on a link that holds `neighbor`: the interface address
/// whose prefix contains it (not a link-local one for a global
/// neighbour). What routed serves a router on that LAN from.
pub fn local_on_link_to(neighbor: IpAddr) -> io::Result<Option<IpAddr>> {
    Ok(interface_addrs()?.into_iter().find_map(|(_, a, len)| {
        let net = ipnet::IpNet::new(a, len).ok()?;
        let same_kind = match (a, neighbor) {
            (IpAddr::V6(x), IpAddr::V6(y)) => {
                x.is_unicast_link_local() == y.is_unicast_link_local()
            }
            (IpAddr::V4(_), IpAddr::V4(_)) => true,
            _ => false,
        };
        (same_kind && a != neighbor && len > 0 && net.contains(&neighbor)).then_some(a)
    }))
}

/// Binds even before the address is on an interface (an overlay address
/// comes with overlayd's TUN, which may start after routed or restart).
fn freebind(fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1)
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_FREEBIND, 1)
    }
}

/// BFD's receive socket on one served address and `port` (3784, or 4784
/// for multihop), asking for each datagram's TTL.
pub fn bfd_receiver_at(addr: IpAddr, port: u16) -> io::Result<UdpSocket> {
    let to = SocketAddr::new(addr, port);
    let s = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // No SO_REUSEADDR: on UDP it would let another socket share the port.
    freebind(&s, addr.is_ipv6())?;
    s.bind(&to.into())?;
    want_ttl(&s, addr.is_ipv6())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// A BGP listener on one served address, port `port`: sends with TTL
/// 255 (GTSM), bound before the address exists if need be.
pub fn bgp_listener_at(addr: IpAddr, port: u16) -> io::Result<tokio::net::TcpListener> {
    let at = SocketAddr::new(addr, port);
    let s = socket2::Socket::new(
        socket2::Domain::for_address(at),
        socket2::Type::STREAM,
        None,
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    freebind(&s, addr.is_ipv6())?;
    send_255(&s, addr.is_ipv6())?;
    s.set_nonblocking(true)?;
    s.bind(&at.into())?;
    s.listen(128)?;
    tokio::net::TcpListener::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_ttl(s: &UdpSocket, v6: bool, ttl: libc::c_int) {
        if v6 {
            setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, ttl).unwrap();
        } else {
            setsockopt_int(s, libc::IPPROTO_IP, libc::IP_TTL, ttl).unwrap();
        }
    }

    /// Each datagram comes with the TTL (hop limit) it was sent with, on
    /// both families: 254 is told from 255 (RFC 5881 §5); and with the
    /// interface it arrived on.
    #[tokio::test]
    async fn each_datagram_comes_with_its_ttl_on_both_families() {
        for v6 in [false, true] {
            let any: SocketAddr = if v6 {
                "[::1]:0".parse().unwrap()
            } else {
                "127.0.0.1:0".parse().unwrap()
            };
            let rx = UdpSocket::bind(any).await.unwrap();
            want_ttl(&rx, v6).unwrap();
            let to = rx.local_addr().unwrap();
            let tx = UdpSocket::bind(any).await.unwrap();
            set_ttl(&tx, v6, 254);
            tx.send_to(b"far", to).await.unwrap();
            send_255(&tx, v6).unwrap();
            tx.send_to(b"near", to).await.unwrap();
            let mut buf = [0u8; 16];
            let lo = ifindex("lo");
            assert!(lo.is_some());
            let r = recv_with_ttl(&rx, &mut buf).await.unwrap();
            assert_eq!((&buf[..r.len], r.ttl), (&b"far"[..], Some(254)), "v6 {v6}");
            assert_eq!(r.from, tx.local_addr().unwrap());
            assert_eq!(r.ifindex, lo, "arrived on lo, v6 {v6}");
            let r = recv_with_ttl(&rx, &mut buf).await.unwrap();
            assert_eq!((&buf[..r.len], r.ttl), (&b"near"[..], Some(255)), "v6 {v6}");
        }
    }

    /// TCP with GTSM: a connection whose packets come with TTL 254 is not
    /// accepted by a listener that takes only 255; one with 255 is. (The
    /// kernel checks the minimum for TCP; it does not for UDP, which is why
    /// BFD reads the TTL itself.)
    #[tokio::test]
    async fn a_gtsm_listener_accepts_only_ttl_255() {
        for v6 in [false, true] {
            let any: SocketAddr = if v6 {
                "[::1]:0".parse().unwrap()
            } else {
                "127.0.0.1:0".parse().unwrap()
            };
            let l = tokio::net::TcpListener::bind(any).await.unwrap();
            receive_only_255(&l, v6).unwrap();
            let to = l.local_addr().unwrap();
            let far = if v6 {
                tokio::net::TcpSocket::new_v6()
            } else {
                tokio::net::TcpSocket::new_v4()
            }
            .unwrap();
            if v6 {
                setsockopt_int(&far, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 254).unwrap();
            } else {
                setsockopt_int(&far, libc::IPPROTO_IP, libc::IP_TTL, 254).unwrap();
            }
            // Its SYNs are dropped: the connect does not complete while
            // the near one, started after it, is accepted.
            let far_connect = tokio::spawn(far.connect(to));
            let near = if v6 {
                tokio::net::TcpSocket::new_v6()
            } else {
                tokio::net::TcpSocket::new_v4()
            }
            .unwrap();
            send_255(&near, v6).unwrap();
            let near = near.connect(to).await.unwrap();
            let (accepted, from) = l.accept().await.unwrap();
            assert_eq!(from, near.local_addr().unwrap(), "v6 {v6}");
            drop(accepted);
            assert!(
                !far_connect.is_finished(),
                "v6 {v6}: the TTL-254 connect completed"
            );
            far_connect.abort();
        }
    }

    /// The loopback interface holds 127.0.0.1 and ::1: asked for one, the
    /// other family's address of the same interface comes with it.
    #[test]
    fn the_other_familys_address_of_the_same_interface() {
        let l = link_addrs("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(l.v4, Some(Ipv4Addr::LOCALHOST));
        // ::1 is on lo unless IPv6 is off.
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            assert_eq!(l.v6, Some(Ipv6Addr::LOCALHOST));
        }
        assert!(l.ifindex.is_some(), "{l:?}");
        let l = link_addrs("192.0.2.77".parse().unwrap()).unwrap();
        assert_eq!(
            l,
            LinkAddrs {
                v4: Some("192.0.2.77".parse().unwrap()),
                ..Default::default()
            }
        );
    }

    /// A neighbour on the loopback's network is served from 127.0.0.1;
    /// one on no link of ours from nothing.
    #[test]
    fn our_address_on_the_link_to_a_neighbour() {
        assert_eq!(
            local_on_link_to("127.0.0.9".parse().unwrap()).unwrap(),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            local_on_link_to("240.0.0.77".parse().unwrap()).unwrap(),
            None
        );
    }

    /// Bound to an address no interface has (yet): the overlay's, before
    /// overlayd's TUN is up.
    #[tokio::test]
    async fn served_sockets_bind_before_their_address_exists() {
        let absent: IpAddr = "240.0.0.200".parse().unwrap();
        let l = bgp_listener_at(absent, 0).unwrap();
        assert_eq!(l.local_addr().unwrap().ip(), absent);
    }

    /// A listener with a TCP-MD5 key for a peer accepts that peer only
    /// when it signs with the key: unsigned, its SYN is dropped; signed
    /// with the key, it is accepted. A peer without a key on the listener
    /// is not affected.
    #[tokio::test]
    async fn a_tcp_md5_listener_accepts_only_the_signed_peer() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = l.local_addr().unwrap();
        set_md5(&l, false, "127.0.0.1".parse().unwrap(), b"secret").unwrap();
        let unsigned = tokio::net::TcpSocket::new_v4().unwrap();
        let unsigned = tokio::spawn(unsigned.connect(to));
        let signed = tokio::net::TcpSocket::new_v4().unwrap();
        set_md5(&signed, false, to.ip(), b"secret").unwrap();
        let signed = signed.connect(to).await.unwrap();
        let (_, from) = l.accept().await.unwrap();
        assert_eq!(from, signed.local_addr().unwrap());
        assert!(!unsigned.is_finished(), "an unsigned connect completed");
        unsigned.abort();
    }
}

//! Sockets as the proxy needs them: listeners that bind a VIP the host may not hold yet,
//! backend connections from the SNAT address, and aborts that send a RST.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
};

use nix::sys::socket::{
    AddressFamily, Shutdown, SockFlag, SockType, SockaddrIn, bind, setsockopt, shutdown, socket,
    sockopt,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Pending connections the kernel queues per listener before the proxy accepts them.
const LISTEN_BACKLOG: u32 = 1024;

/// A TCP listener on `addr`. `IP_FREEBIND` lets it bind a VIP that is not on the host
/// (yet): a VRRP backup listens before it owns the address.
pub(super) fn tcp_listener(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    // One listener per relay thread on the same address.
    socket.set_reuseport(true)?;
    setsockopt(&socket, sockopt::IpFreebind, &true)?;
    socket.bind(addr.into())?;
    socket.listen(LISTEN_BACKLOG)
}

/// A non-blocking UDP socket bound to `addr`. With `vip`, also `SO_REUSEADDR` and
/// `IP_FREEBIND`, as for [`tcp_listener`].
pub(super) fn udp_socket(addr: SocketAddrV4, vip: bool) -> io::Result<std::net::UdpSocket> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if vip {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        setsockopt(&fd, sockopt::IpFreebind, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    Ok(std::net::UdpSocket::from(fd))
}

/// Connects to `backend` from `snat` (the kernel picks the port at connect time, so
/// connections to different backends may share one).
pub(super) async fn connect(snat: Ipv4Addr, backend: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Only an optimisation (the port is chosen for the 4-tuple, so one source port can
    // serve many backends); where it is unknown, as under qemu-user, bind as usual.
    match setsockopt(&socket, sockopt::IpBindAddressNoPort, &true) {
        Ok(()) | Err(nix::errno::Errno::ENOPROTOOPT) => {}
        Err(err) => return Err(err.into()),
    }
    socket.bind(SocketAddrV4::new(snat, 0).into())?;
    let stream = socket.connect(backend.into()).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Closes `stream` with a RST instead of a FIN: the peer learns at once that the
/// connection is gone, and no state lingers on either side.
pub(super) fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Sends a FIN: the peer reads end of file, the other direction stays open.
pub(super) fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    match shutdown(stream.as_raw_fd(), Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Raises this process's open-file limit to its hard limit: a proxied TCP connection
/// holds two sockets and up to two pipes (six descriptors), far beyond the usual soft
/// limit of 1024 with a thousand clients.
pub(super) fn raise_file_limit() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

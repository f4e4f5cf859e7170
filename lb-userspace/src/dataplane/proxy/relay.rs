//! Moving bytes between a client connection and its backend connection, both directions
//! at once, until both sides have finished, one fails, the flow idles out or its backend's
//! flows are cut.
//!
//! Each direction ends on its own: end of file from one side becomes a FIN (`shutdown`
//! for writing) to the other, and the opposite direction keeps going until it ends too
//! (half-close). An error on either side ends both, and the proxy then resets the other
//! side so that a reset travels end to end.
//!
//! Two ways to move bytes, both driven by socket readiness on whatever runtime runs the
//! task:
//! - [`RelayMode::Splice`]: `splice(2)` from the source socket into a pipe and from the
//!   pipe into the destination socket; the payload never enters userspace. The pipe is
//!   created when the direction first has data, so an idle connection holds none.
//! - [`RelayMode::Copy`]: `read`/`write` through a 16 KiB buffer, also allocated on first
//!   data.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    time::Duration,
};

use futures::future::try_join;
use nix::fcntl::OFlag;
use tokio::{io::Interest, net::TcpStream, sync::watch};

use super::{
    RelayMode, socket,
    state::{Activity, Counters, Direction},
};

/// Buffer per direction in copy mode.
const COPY_BUFFER: usize = 16 * 1024;
/// Most bytes one `splice` moves into the pipe: the default pipe capacity (16 pages).
const SPLICE_CHUNK: usize = 64 * 1024;

/// Why a relayed connection ended.
#[derive(Debug)]
pub(super) enum Ending {
    /// Both sides sent their FIN and every byte was delivered.
    Closed,
    /// A side reset or failed; the other side is reset.
    Failed(io::Error),
    /// Nothing moved for the idle timeout.
    Idle,
    /// The backend's established flows were cut.
    Cut,
}

/// What a relay counts into, and the flow's activity clock.
pub(super) struct Meters<'a> {
    pub(super) service: &'a Counters,
    pub(super) backend: &'a Counters,
    pub(super) activity: &'a Activity,
}

impl Meters<'_> {
    fn forwarded(&self, direction: Direction, bytes: usize) {
        self.service.forwarded(direction, bytes);
        self.backend.forwarded(direction, bytes);
        self.activity.touch();
    }
}

/// Relays until the connection ends; see the module docs.
pub(super) async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    mode: RelayMode,
    meters: &Meters<'_>,
    idle_timeout: Duration,
    cut: &mut watch::Receiver<u64>,
) -> Ending {
    let both_ways = try_join(
        one_way(mode, client, backend, meters, Direction::ToBackend),
        one_way(mode, backend, client, meters, Direction::ToClient),
    );
    tokio::select! {
        result = both_ways => match result {
            Ok(_) => Ending::Closed,
            Err(err) => Ending::Failed(err),
        },
        () = meters.activity.idle(idle_timeout) => Ending::Idle,
        // The backend owns the sender and outlives the relay: `changed` fails only if
        // that no longer holds, and then there is nothing left to cut.
        Ok(()) = cut.changed() => Ending::Cut,
    }
}

/// Relays `from` -> `to` until `from` ends, then passes the end on as a FIN.
async fn one_way(
    mode: RelayMode,
    from: &TcpStream,
    to: &TcpStream,
    meters: &Meters<'_>,
    direction: Direction,
) -> io::Result<()> {
    match mode {
        RelayMode::Splice => splice_one_way(from, to, meters, direction).await?,
        RelayMode::Copy => copy_one_way(from, to, meters, direction).await?,
    }
    socket::shutdown_write(to)
}

async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    meters: &Meters<'_>,
    direction: Direction,
) -> io::Result<()> {
    let mut pipe: Option<Pipe> = None;
    loop {
        from.readable().await?;
        let pipe = match &mut pipe {
            Some(pipe) => pipe,
            none => none.insert(Pipe::new()?),
        };
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing.
        let n = match from.try_io(Interest::READABLE, || pipe.fill_from(from.as_raw_fd())) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        };
        meters.forwarded(direction, n);
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || pipe.drain_to(to.as_raw_fd(), left)) {
                Ok(written) => left -= written,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
    }
}

async fn copy_one_way(
    from: &TcpStream,
    to: &TcpStream,
    meters: &Meters<'_>,
    direction: Direction,
) -> io::Result<()> {
    let mut buffer: Option<Box<[u8]>> = None;
    loop {
        from.readable().await?;
        let buffer = buffer.get_or_insert_with(|| vec![0; COPY_BUFFER].into_boxed_slice());
        let n = match from.try_read(buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        };
        meters.forwarded(direction, n);
        let mut sent = 0;
        while sent < n {
            to.writable().await?;
            match to.try_write(&buffer[sent..n]) {
                Ok(written) => sent += written,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
    }
}

/// A non-blocking pipe that carries one direction's bytes between two sockets.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Self { read, write })
    }

    /// Moves what `socket` has (up to a pipe's capacity) into the pipe; 0 at end of file.
    fn fill_from(&self, socket: RawFd) -> io::Result<usize> {
        splice(socket, self.write.as_raw_fd(), SPLICE_CHUNK)
    }

    /// Moves up to `len` bytes from the pipe into `socket`.
    fn drain_to(&self, socket: RawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), socket, len)
    }
}

/// `splice(2)` without offsets, never blocking on the pipe (the sockets are non-blocking
/// themselves).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and null offsets; the kernel validates both descriptors.
    let moved = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(moved).map_err(|_| io::Error::last_os_error())
}

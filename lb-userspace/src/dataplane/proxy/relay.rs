//! Moving bytes between a client connection and its backend connection, both directions
//! at once, until both sides have finished, one fails, the flow idles out or its backend's
//! flows are cut.
//!
//! Each direction ends on its own: end of file from one side becomes a FIN (`shutdown`
//! for writing) to the other, and the opposite direction keeps going until it ends too
//! (half-close). An error on either side ends both, and the proxy then resets the other
//! side so that a reset travels end to end.
//!
//! How bytes move ([`RelayMode`]):
//! - copy: `read` into a 16 KiB buffer shared by every connection of the runtime thread,
//!   then `write` at once. A connection holds a buffer of its own only while its
//!   destination cannot take what was read (at most 16 KiB, freed once written), so idle
//!   and request/response connections cost no buffer memory. A read that leaves the
//!   buffer partly empty proves the socket drained, which saves the `read` that would
//!   only say "nothing more".
//! - splice: `splice(2)` from the source socket into a pipe and from the pipe into the
//!   destination; the payload never enters userspace. The pipe is created when the
//!   direction first has data. Each burst ends with a `splice` that finds nothing, as a
//!   short splice does not prove the socket drained.
//! - auto (the default): copy, and splice once a read fills the whole buffer, as bulk
//!   transfers do (HAProxy's `splice-auto`): small messages take the fewest system calls,
//!   large streams skip the copies.

use std::{
    cell::RefCell,
    future::poll_fn,
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures::future::try_join;
use nix::fcntl::OFlag;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, Interest, ReadBuf},
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
    sync::watch,
};

use super::{
    RelayMode, socket,
    state::{Activity, Counters, Direction},
};

/// Size of the copy buffer, and of the reads that count as bulk.
const COPY_BUFFER: usize = 16 * 1024;
/// Most bytes one `splice` moves into the pipe: the default pipe capacity (16 pages).
const SPLICE_CHUNK: usize = 64 * 1024;

thread_local! {
    /// The copy buffer of every connection relayed on this thread. Used only between a
    /// read and the write that follows it, within one poll, never across an `.await`.
    static COPY: RefCell<Box<[u8]>> = RefCell::new(vec![0; COPY_BUFFER].into_boxed_slice());
}

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
    client: &mut TcpStream,
    backend: &mut TcpStream,
    mode: RelayMode,
    meters: &Meters<'_>,
    idle_timeout: Duration,
    cut: &mut watch::Receiver<u64>,
) -> Ending {
    let (client_in, client_out) = client.split();
    let (backend_in, backend_out) = backend.split();
    let both_ways = try_join(
        one_way(mode, client_in, backend_out, meters, Direction::ToBackend),
        one_way(mode, backend_in, client_out, meters, Direction::ToClient),
    );
    // Biased: the relay is what runs on every wakeup, and a fair select would draw a
    // random number each time to decide which branch to poll first.
    tokio::select! {
        biased;
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
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    meters: &Meters<'_>,
    direction: Direction,
) -> io::Result<()> {
    if mode != RelayMode::Splice {
        loop {
            let (read, left) = match poll_fn(|cx| copy_some(cx, &mut from, &mut to)).await? {
                Copied::End => return socket::shutdown_write(to.as_ref()),
                Copied::All(read) => (read, None),
                Copied::Part { read, left } => (read, Some(left)),
            };
            meters.forwarded(direction, read);
            if let Some(left) = left {
                write_rest(&mut to, &left, meters).await?;
            }
            if mode == RelayMode::Auto && read == COPY_BUFFER {
                break;
            }
        }
    }
    splice_all(from.as_ref(), to.as_ref(), meters, direction).await?;
    socket::shutdown_write(to.as_ref())
}

/// What one [`copy_some`] did.
enum Copied {
    /// `from` is at end of file.
    End,
    /// Read `n` bytes and wrote them all.
    All(usize),
    /// Read `read` bytes; `to` did not take `left` yet.
    Part { read: usize, left: Vec<u8> },
}

/// Reads once from `from` into the thread's copy buffer and writes what it can to `to`
/// right away.
fn copy_some(
    cx: &mut Context<'_>,
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
) -> Poll<io::Result<Copied>> {
    COPY.with_borrow_mut(|buffer| {
        let mut read = ReadBuf::new(buffer);
        ready!(Pin::new(&mut *from).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Ok(Copied::End));
        }
        let mut written = 0;
        while written < n {
            match Pin::new(&mut *to).poll_write(cx, &buffer[written..n]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(w)) => written += w,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(if written == n {
            Copied::All(n)
        } else {
            Copied::Part {
                read: n,
                left: buffer[written..n].to_vec(),
            }
        }))
    })
}

/// Writes what `to` could not take at once. Progress counts as activity: a slow reader
/// is not an idle one.
async fn write_rest(
    to: &mut WriteHalf<'_>,
    mut left: &[u8],
    meters: &Meters<'_>,
) -> io::Result<()> {
    while !left.is_empty() {
        let written = to.write(left).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        left = &left[written..];
        meters.activity.touch();
    }
    Ok(())
}

async fn splice_all(
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
                Ok(written) => {
                    left -= written;
                    meters.activity.touch();
                }
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

//! UDP services: a session per client address, each with its own socket connected to the
//! client's backend from the SNAT address. Datagrams from the client go out on that
//! socket; the backend's replies come back on it and leave from the VIP socket, so the
//! client sees answers from the address it asked.
//!
//! The session table belongs to the service's listener task alone (no locks). It is
//! bounded by `dataplane.flow_table_size`, evicting the least recently used session when
//! full, like the XDP connection table; a service's connection limit caps its sessions
//! and drops datagrams that would open more. A session ends when nothing has moved either
//! way for `timeouts.udp`, and when its backend's flows are cut: the next datagram from
//! the client is then dropped and counted, as the XDP program does, and the one after
//! opens a session on a live backend.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    io,
    net::{SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
    sync::Arc,
    time::Duration,
};

use nix::sys::socket::{MsgFlags, SockaddrIn, sendto};
use tokio::{
    net::UdpSocket,
    sync::{oneshot, watch},
    task::JoinSet,
    time::{MissedTickBehavior, interval},
};
use tracing::debug;

use super::{
    Settings, socket,
    state::{Activity, Backend, Direction, Occupancy, Service, millis_since},
};

/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

thread_local! {
    /// Where reply tasks receive backends' datagrams: one buffer per runtime thread rather
    /// than one per session. A datagram is received and sent on without an `.await`
    /// between, so the buffer is never held across a task switch.
    static REPLY_BUFFER: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

/// Receives client datagrams on the VIP until `stop` changes (or its sender is gone).
/// Dropping the session table and the task set on the way out ends every session.
pub(super) async fn serve(
    vip: UdpSocket,
    service: Arc<Service>,
    settings: Arc<Settings>,
    mut stop: watch::Receiver<bool>,
) {
    let idle = settings.udp_idle();
    let mut listener = Listener {
        vip: Arc::new(vip),
        sessions: Sessions::default(),
        replies: JoinSet::new(),
        service,
        settings,
    };
    let mut buffer = vec![0u8; MAX_DATAGRAM].into_boxed_slice();
    let mut sweeps = interval((idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    sweeps.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = listener.replies.join_next() => {}
            _ = sweeps.tick() => listener.expire(),
            received = listener.vip.recv_from(&mut buffer) => match received {
                Ok((n, SocketAddr::V4(client))) => listener.datagram(client, &buffer[..n]),
                Ok((_, SocketAddr::V6(_))) => {}
                Err(err) => debug!(service = %listener.service.name, "receiving: {err}"),
            },
        }
    }
}

struct Listener {
    vip: Arc<UdpSocket>,
    sessions: Sessions,
    replies: JoinSet<()>,
    service: Arc<Service>,
    settings: Arc<Settings>,
}

impl Listener {
    fn now_ms(&self) -> u64 {
        millis_since(self.settings.epoch)
    }

    fn datagram(&mut self, client: SocketAddrV4, datagram: &[u8]) {
        let now = self.now_ms();
        if let Some(session) = self.sessions.get(client)
            && session.cut.has_changed().unwrap_or(false)
        {
            let backend = session.backend.clone();
            self.sessions.remove(client);
            self.service.counters.dropped();
            backend.counters.dropped();
            return;
        }
        if self.sessions.get(client).is_none() && !self.open(client, now) {
            self.service.counters.dropped();
            return;
        }
        self.sessions.touch(client, now);
        let Some(session) = self.sessions.get(client) else {
            return;
        };
        session.link.activity.touch();
        match send(&session.link.upstream, datagram, None) {
            Ok(_) => {
                self.service
                    .counters
                    .forwarded(Direction::ToBackend, datagram.len());
                session
                    .backend
                    .counters
                    .forwarded(Direction::ToBackend, datagram.len());
            }
            Err(err) => {
                // A full socket buffer, or an ICMP error left by an earlier datagram:
                // UDP may lose this one, the session stays.
                debug!(
                    service = %self.service.name,
                    backend = %session.backend.name,
                    "sending: {err}"
                );
                self.service.counters.dropped();
                session.backend.counters.dropped();
            }
        }
    }

    /// Opens a session for `client`; false if the datagram must be dropped.
    fn open(&mut self, client: SocketAddrV4, now: u64) -> bool {
        if self.service.at_limit() {
            return false;
        }
        let Some(pick) = self.service.pick() else {
            return false;
        };
        let backend = pick.backend;
        let cut = backend.cut_signal();
        let upstream = socket::udp_socket(SocketAddrV4::new(pick.snat, 0), false)
            .and_then(|s| s.connect(backend.address).map(|()| s))
            .and_then(UdpSocket::from_std);
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(err) => {
                debug!(
                    service = %self.service.name,
                    backend = %backend.name,
                    "opening a session: {err}"
                );
                backend.counters.dropped();
                return false;
            }
        };
        if self.sessions.len() >= self.settings.flow_table_size {
            self.sessions.remove_oldest();
        }
        let link = Arc::new(Link {
            upstream,
            activity: Activity::new(self.settings.epoch),
        });
        let (stop, stopped) = oneshot::channel();
        self.replies.spawn(replies(
            self.vip.clone(),
            link.clone(),
            client,
            self.service.clone(),
            backend.clone(),
            cut.clone(),
            stopped,
        ));
        let mut occupancy = Occupancy::new(self.service.clone());
        occupancy.established(&backend);
        self.service.counters.new_flow();
        backend.counters.new_flow();
        self.sessions.insert(
            client,
            Session {
                link,
                backend,
                cut,
                touched: (0, 0),
                _stop: stop,
                _occupancy: occupancy,
            },
            now,
        );
        true
    }

    fn expire(&mut self) {
        let now = self.now_ms();
        let idle = u64::try_from(self.settings.udp_idle().as_millis()).unwrap_or(u64::MAX);
        self.sessions.expire(now, idle);
    }
}

/// Forwards a session's replies to its client until the session ends or its backend's
/// flows are cut.
async fn replies(
    vip: Arc<UdpSocket>,
    link: Arc<Link>,
    client: SocketAddrV4,
    service: Arc<Service>,
    backend: Arc<Backend>,
    mut cut: watch::Receiver<u64>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            Ok(()) = cut.changed() => return,
            ready = link.upstream.readable() => if ready.is_err() {
                return;
            },
        }
        REPLY_BUFFER.with_borrow_mut(|buffer| {
            loop {
                let n = match link.upstream.try_recv(buffer) {
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                    // An ICMP error (the backend's port is closed): the session stays, as
                    // the backend may come back.
                    Err(err) => {
                        debug!(
                            service = %service.name,
                            backend = %backend.name,
                            "receiving: {err}"
                        );
                        continue;
                    }
                };
                link.activity.touch();
                match send(&vip, &buffer[..n], Some(client)) {
                    Ok(_) => {
                        service.counters.forwarded(Direction::ToClient, n);
                        backend.counters.forwarded(Direction::ToClient, n);
                    }
                    Err(err) => {
                        debug!(service = %service.name, %client, "replying: {err}");
                        service.counters.dropped();
                        backend.counters.dropped();
                    }
                }
            }
        });
    }
}

/// What a session's listener entry and its reply task share.
struct Link {
    upstream: UdpSocket,
    /// Datagrams either way.
    activity: Activity,
}

struct Session {
    link: Arc<Link>,
    backend: Arc<Backend>,
    cut: watch::Receiver<u64>,
    /// Its key in [`Sessions::order`].
    touched: (u64, u64),
    /// Dropping it ends the session's reply task.
    _stop: oneshot::Sender<()>,
    _occupancy: Occupancy,
}

/// Sessions by client address, ordered by last use.
#[derive(Default)]
struct Sessions {
    by_client: HashMap<SocketAddrV4, Session>,
    /// (milliseconds of last use, tie-breaking sequence) -> client, oldest first. Last use
    /// is the client's last datagram, or later if replies kept the session alive.
    order: BTreeMap<(u64, u64), SocketAddrV4>,
    sequence: u64,
}

impl Sessions {
    fn len(&self) -> usize {
        self.by_client.len()
    }

    fn get(&self, client: SocketAddrV4) -> Option<&Session> {
        self.by_client.get(&client)
    }

    fn insert(&mut self, client: SocketAddrV4, session: Session, now: u64) {
        self.by_client.insert(client, session);
        self.reorder(client, now);
    }

    /// Marks `client`'s session used at `now`.
    fn touch(&mut self, client: SocketAddrV4, now: u64) {
        // Within one millisecond the order barely matters; skip the map updates.
        if self
            .by_client
            .get(&client)
            .is_some_and(|s| s.touched.0 != now)
        {
            self.reorder(client, now);
        }
    }

    fn reorder(&mut self, client: SocketAddrV4, at: u64) {
        let Some(session) = self.by_client.get_mut(&client) else {
            return;
        };
        self.order.remove(&session.touched);
        self.sequence += 1;
        session.touched = (at, self.sequence);
        self.order.insert(session.touched, client);
    }

    fn remove(&mut self, client: SocketAddrV4) -> Option<Session> {
        let session = self.by_client.remove(&client)?;
        self.order.remove(&session.touched);
        Some(session)
    }

    fn remove_oldest(&mut self) {
        if let Some((_, client)) = self.order.pop_first() {
            self.by_client.remove(&client);
        }
    }

    /// Ends sessions idle for `idle` ms. Sessions only replies kept alive move to their
    /// last reply's place in the order, so each sweep looks at few sessions.
    fn expire(&mut self, now: u64, idle: u64) {
        let mut expired = Vec::new();
        let mut alive = Vec::new();
        for (&(used, _), &client) in &self.order {
            if now.saturating_sub(used) < idle {
                break;
            }
            let last = self.by_client[&client].link.activity.last_ms();
            if now.saturating_sub(last) >= idle {
                expired.push(client);
            } else {
                alive.push((client, last));
            }
        }
        for client in expired {
            self.remove(client);
        }
        for (client, last) in alive {
            self.reorder(client, last);
        }
    }
}

/// Sends one datagram now or not at all. Straight to the kernel rather than through
/// tokio's `try_send`, which refuses until the reactor has seen the socket writable once
/// (a session's first datagram would be lost); nothing here ever waits to send, so tokio
/// needs no readiness for it.
fn send(socket: &UdpSocket, datagram: &[u8], to: Option<SocketAddrV4>) -> io::Result<usize> {
    let fd = socket.as_raw_fd();
    let flags = MsgFlags::MSG_DONTWAIT;
    let sent = match to {
        Some(to) => sendto(fd, datagram, &SockaddrIn::from(to), flags),
        None => nix::sys::socket::send(fd, datagram, flags),
    };
    Ok(sent?)
}

//! TCP services: accept client connections on the VIP, connect each to a backend from the
//! SNAT address, optionally announce the client with a PROXY v2 header, and relay.
//!
//! Refusals are RSTs, never silent drops or slow closes: a client of a service with no
//! backend, over its connection limit, or whose backends could not be reached learns it
//! at once and can retry elsewhere.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
    time::{Instant, timeout},
};
use tracing::{debug, warn};

use super::{
    Settings, proxy_v2,
    relay::{self, Ending, Meters},
    socket,
    state::{Activity, Occupancy, Pick, Service},
};

/// How long a backend may take to accept a connection: long enough for lost SYNs to be
/// sent again, as HAProxy advises for `timeout connect`. A lost SYN goes again after 1 s,
/// then every second (`tcp_syn_linear_timeouts`) or doubling, so 3.5 s lets three or four
/// out. At 2 s only two went out, and on a link losing a fifth of its packets each way
/// about one client connection in sixty was reset that the XDP path, which leaves the
/// retries to the client's own TCP, delivers (tests/tests/faults.rs).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(3500);
/// Pause after `accept` fails for lack of descriptors or memory, so the loop does not
/// spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often running out of descriptors or memory is logged while it lasts.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts connections until `stop` changes (or its sender is gone). Dropping the task
/// set on the way out closes every connection the service still has.
pub(super) async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    settings: Arc<Settings>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut last_warning: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((client, SocketAddr::V4(peer))) => {
                    if let Some(pick) = admit(&service) {
                        let occupancy = Occupancy::new(service.clone());
                        connections.spawn(connection(
                            client,
                            peer,
                            pick,
                            occupancy,
                            service.clone(),
                            settings.clone(),
                        ));
                    } else {
                        service.counters.dropped();
                        socket::reset(client);
                    }
                }
                // An IPv4 listener only accepts IPv4 peers.
                Ok((client, SocketAddr::V6(_))) => socket::reset(client),
                Err(err) => accept_failed(&service, &err, &mut last_warning).await,
            },
        }
    }
}

/// The backend for a new connection, unless it must be refused.
fn admit(service: &Service) -> Option<Pick> {
    if service.at_limit() {
        debug!(service = %service.name, "connection limit reached, refusing a connection");
        return None;
    }
    let pick = service.pick();
    if pick.is_none() {
        debug!(service = %service.name, "no backend available, refusing a connection");
    }
    pick
}

async fn accept_failed(service: &Service, err: &io::Error, last_warning: &mut Option<Instant>) {
    match err.raw_os_error() {
        // The client gave up before it was accepted: nothing to do.
        Some(libc::ECONNABORTED | libc::EPROTO) => {}
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            if last_warning.is_none_or(|at| at.elapsed() >= ACCEPT_WARNING_INTERVAL) {
                warn!(service = %service.name, "cannot accept connections: {err}; retrying");
                *last_warning = Some(Instant::now());
            }
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
        _ => debug!(service = %service.name, "accept: {err}"),
    }
}

/// One client connection, from connecting its backend to the end of the relay.
async fn connection(
    mut client: TcpStream,
    peer: SocketAddrV4,
    pick: Pick,
    mut occupancy: Occupancy,
    service: Arc<Service>,
    settings: Arc<Settings>,
) {
    // Small requests and responses should not wait for Nagle's algorithm on the proxy.
    let _ = client.set_nodelay(true);
    let Some((mut backend_stream, pick, mut cut)) =
        connect_backend(&client, peer, pick, &service).await
    else {
        service.counters.dropped();
        socket::reset(client);
        return;
    };
    let backend = pick.backend;
    occupancy.established(&backend);
    service.counters.new_flow();
    backend.counters.new_flow();

    let activity = Activity::new(Instant::now());
    let idle_timeout = settings.tcp_idle();
    let meters = Meters {
        service: &service.counters,
        backend: &backend.counters,
        activity: &activity,
    };
    let ending = relay::relay(
        &mut client,
        &mut backend_stream,
        settings.relay,
        &meters,
        idle_timeout,
        &mut cut,
    )
    .await;
    let reason = match ending {
        // Both FINs passed on: the sockets close normally.
        Ending::Closed => return,
        Ending::Failed(err) => format!("failed ({err})"),
        Ending::Idle => format!("idle for {idle_timeout:?}"),
        Ending::Cut => {
            service.counters.dropped();
            backend.counters.dropped();
            "cut, its backend is down".to_string()
        }
    };
    debug!(
        service = %service.name,
        backend = %backend.name,
        client = %peer,
        "connection {reason}: resetting both sides"
    );
    socket::reset(client);
    socket::reset(backend_stream);
}

/// Connects to the picked backend, and if that fails, once to another one (HAProxy's
/// `redispatch`). Returns the connection, the backend it reached and that backend's cut
/// signal, taken before connecting so that a cut during the connect is not missed.
async fn connect_backend(
    client: &TcpStream,
    peer: SocketAddrV4,
    first: Pick,
    service: &Service,
) -> Option<(TcpStream, Pick, watch::Receiver<u64>)> {
    let header = if service.options().send_proxy_v2 {
        let vip = match client.local_addr() {
            Ok(SocketAddr::V4(vip)) => vip,
            _ => service.listen,
        };
        Some(proxy_v2::header(peer, vip))
    } else {
        None
    };
    let mut pick = first;
    for attempt in 0..2 {
        if attempt > 0 {
            pick = service.pick_other(&pick.backend)?;
        }
        let cut = pick.backend.cut_signal();
        let failure = match timeout(CONNECT_TIMEOUT, open(&pick, header.as_ref())).await {
            Ok(Ok(stream)) => return Some((stream, pick, cut)),
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
        };
        debug!(
            service = %service.name,
            backend = %pick.backend.name,
            "connecting: {failure}"
        );
        pick.backend.counters.dropped();
    }
    None
}

async fn open(pick: &Pick, header: Option<&[u8; proxy_v2::HEADER_LEN]>) -> io::Result<TcpStream> {
    let mut stream = socket::connect(pick.snat, pick.backend.address).await?;
    if let Some(header) = header {
        stream.write_all(header).await?;
    }
    Ok(stream)
}

//! The operator's configuration: the TOML file, its validation, and the validated types the
//! rest of gerbang is built from.
//!
//! A file is either accepted whole or rejected with every problem in it, each as
//! `file:line:column: field: what is wrong and what is allowed`, so that it can be fixed in
//! one edit. `config/gerbang.toml` is a commented example of a real deployment;
//! `config/pair-a.toml` and `config/pair-b.toml` are the two nodes of a VRRP pair.
//!
//! # The file
//!
//! ```toml
//! [dataplane]
//! interfaces = ["eth0"]        # required: 1+ distinct Linux interface names (1-15 bytes,
//!                              #   no '/', ':', whitespace or control characters)
//! attach = "auto"              # "native" | "generic" | "auto" (native, else generic); default "auto"
//! snat_address = "10.0.0.1"    # default SNAT source for every service (IPv4, an address of this host)
//! snat_ports = "1024-32767"    # SNAT source ports "MIN-MAX", 1 <= MIN <= MAX <= 65535; default "1024-32767"
//! flow_table_size = 65536      # connection table entries, 1024..=16777216; default 65536
//! pin_path = "/sys/fs/bpf/gerbang" # where maps and the XDP link are pinned, under a bpffs mount, so
//!                              #   a restart keeps every flow; absolute, no "..", <= 200 bytes
//!
//! [timeouts]                   # idle timeouts; the table and each key are optional
//! tcp_syn = "30s"              # TCP before the backend answers; default 30s
//! tcp_established = "15m"      # TCP after it has; default 15m
//! tcp_closing = "10s"          # TCP after a RST or FINs both ways; default 10s
//! udp = "60s"                  # default 60s
//!
//! [control]                    # optional
//! socket = "/run/gerbang/control.sock" # the control Unix socket; absolute, <= 107 bytes (sun_path)
//!
//! [http]                       # optional: the status page, its JSON API and /metrics
//! enabled = true               # default true
//! listen = "127.0.0.1:8404"    # "IP:port", IPv4 or [IPv6]; default "127.0.0.1:8404" (HAProxy's
//!                              #   stats port); port 0 takes any free port (the log names it)
//!
//! [[service]]                  # 1 to 256 services
//! name = "web"                 # required, unique: 1-64 characters of A-Z a-z 0-9 _ . -
//! listen = "192.0.2.10:80"     # required: the VIP, IPv4:port
//! protocol = "tcp"             # "tcp" | "udp"; default "tcp"
//! scheduler = "round-robin"    # "round-robin" (the only one so far, and the default)
//! snat_address = "10.0.0.1"    # overrides dataplane.snat_address for this service
//! on_backend_down = "reset"    # established flows of a backend that fails its checks:
//!                              #   "reset" (cut; TCP clients get a RST; default) | "keep"
//! role = "any"                 # replicated databases: "any" (every healthy backend; default) |
//!                              #   "primary" (the one primary: writes) | "replica" (replicas
//!                              #   within max_lag: reads); "primary" and "replica" need a
//!                              #   role check (type "postgres", "mysql", "galera" or "http-role")
//! max_lag = "10s"              # role = "replica" only: a replica further behind takes no new
//!                              #   flows (and is DOWN for on_backend_down); default 10s
//! replica_fallback = "primary" # role = "replica" only: while no replica is within max_lag,
//!                              #   "primary" (reads go to the primary; default) | "none"
//!
//!   [service.check]            # health checks; the table and each key are optional
//!   type = "tcp"               # "tcp" (connect; default) | "http" | "none" (always up) |
//!                              #   "postgres" | "mysql" (also MariaDB) | "galera" | "http-role":
//!                              #   role checks (see CheckKind), which log in over plain TCP
//!   interval = "2s"            # between checks while up (HAProxy inter); default 2s
//!   fast_interval = "1s"       # while changing state (fastinter); default: interval
//!   down_interval = "5s"       # while down (downinter); default: interval
//!   timeout = "1s"             # for one check (timeout check); default: interval
//!   fall = 3                   # failures before down, 1..=100; default 3
//!   rise = 2                   # successes before up, 1..=100; default 2
//!   port = 8080                # check this port instead of the backend's, 1..=65535
//!   address = "10.0.1.99"      # check this address instead (same rules as backends)
//!   path = "/health"           # http only: starts with '/', printable ASCII, no spaces,
//!                              #   <= 1024 bytes; default "/"
//!   host = "www.example.com"   # http only: Host header, printable ASCII, no spaces, <= 255
//!                              #   bytes; default: the checked address
//!   expect_status = "200-399"  # http only: "200", "200-399", "200,204,301-302", each
//!                              #   100..=599; default "200-399"
//!   expect_body = "OK"         # http only: in the first 64 KiB of the body, 1-1024 bytes
//!   user = "gerbang"           # postgres, mysql, galera: who the check logs in as; default
//!                              #   "gerbang"; 1-128 bytes
//!   password_file = "/etc/gerbang/db.password" # postgres, mysql, galera: at most one of
//!                              #   password = "..." | password_env = "VAR" | password_file =
//!                              #   "/abs/path" (one trailing newline dropped); read when the
//!                              #   file is loaded (start, reload); none: no password
//!   database = "postgres"      # postgres, mysql, galera: the database to connect to;
//!                              #   postgres default "postgres", mysql/galera none; 1-64 bytes
//!   primary_path = "/primary"  # http-role only (Patroni's REST API): 200 means primary;
//!                              #   default "/primary"; same rules as path
//!   replica_path = "/replica?lag=16MB" # http-role only: 200 means a fresh replica; default "/replica"
//!
//!   [[service.backend]]        # 1 or more per service, at most 4096 over all services
//!   name = "web1"              # required, unique in the service; same characters as service names
//!   address = "10.0.1.11:8080" # required, unique in the service: IPv4:port
//!   weight = 1                 # share of new flows, 0..=256 (0: none, as in HAProxy); default 1
//!   backup = false             # takes new flows only while no primary backend is up
//!   check = { port = 8081 }    # or [service.backend.check]: the keys of [service.check],
//!                              #   over the service's
//!
//! [[vrrp]]                     # 0 or more VRRP instances (keepalived's vrrp_instance)
//! name = "VI_1"                # required, unique; same characters as service names
//! interface = "eth0"           # required; same rules as dataplane.interfaces
//! virtual_router_id = 51       # required, 1..=255; unique per interface
//! priority = 100               # 1..=255 (255: the addresses' owner); default 100
//! version = 3                  # 3 (RFC 5798, default) | 2 (RFC 3768, keepalived's default)
//! advert_interval = "1s"       # v3: whole centiseconds, 10ms..=40.95s; v2: whole seconds,
//!                              #   1s..=255s; default 1s
//! preempt = true               # take over from a lower priority master; default true
//! preempt_delay = "0s"         # after start-up, before preempting; "0s"..="1000s"; default 0s;
//!                              #   only with preempt = true
//! virtual_addresses = ["192.0.2.10/24"] # required, 1-20, "IPv4/len" or "IPv4" (/32); same
//!                              #   rules as VIPs; each in one instance only
//! unicast_peers = ["10.0.0.3"] # advertise to these instead of multicast to 224.0.0.18
//! unicast_source = "10.0.0.2"  # this node's address; only with unicast_peers
//! auth_password = "secret"     # version 2 only (keepalived auth_type PASS): 1-8 printable ASCII
//! garp_count = 3               # gratuitous ARPs on becoming master, 1..=100; default 3
//! garp_interval = "100ms"      # between them; default 100ms
//! track_services = [{ service = "web", weight = -20 }]      # a configured service: fails
//!                              #   while none of its backends is up
//! track_interfaces = [{ interface = "eth1", weight = 0 }]  # fails while the link is down
//!
//!   [[vrrp.track_script]]      # keepalived's vrrp_script, run with sh -c
//!   name = "chk"               # required, unique in the instance
//!   command = "test ! -e /etc/gerbang/maintenance" # required, 1-4096 bytes; fails on exit != 0
//!   interval = "2s"            # default 2s
//!   timeout = "2s"             # default: interval
//!   fall = 2                   # 1..=100; default 2
//!   rise = 2                   # 1..=100; default 2
//!   weight = 0                 # as for the other tracks
//!
//!   [vrrp.notify]              # commands run with sh -c on entering a state; each optional,
//!   master = "..."             #   1-4096 bytes: master, backup, fault, stop
//! ```
//!
//! Durations are a whole number and a unit, `ms`, `s`, `m` or `h` (`"200ms"`, `"30s"`,
//! `"15m"`, `"1h"`), longer than zero and at most 7 days (`preempt_delay` may be `"0s"`).
//!
//! A track's weight, -254..=254 (default 0), is added to the instance's priority while the
//! track fails; a weight of 0 puts the instance in FAULT instead (keepalived's semantics).
//!
//! # Rules across fields
//!
//! - Addresses (VIPs, backends, SNAT, check addresses, VRRP addresses and peers) may not be
//!   unspecified (`0.0.0.0`), loopback, multicast or broadcast, and ports may not be 0.
//! - Every service needs a SNAT address, its own or `dataplane.snat_address`.
//! - No two services share a listen address, port and protocol.
//! - A service may not listen, with the same protocol, on a SNAT address at a port inside
//!   `snat_ports`: replies from backends to that port would be taken for client traffic.
//! - A backend's check is the service's with the backend's keys over it; `fast_interval`,
//!   `down_interval` and `timeout` default to the resulting `interval`. `path`, `host`,
//!   `expect_status` and `expect_body` are errors where the check's type is not `"http"`.
//! - `role = "primary"` and `"replica"` need every backend checked by a role check;
//!   `max_lag` and `replica_fallback` need `role = "replica"`; `role = "primary"` always
//!   resets the flows of a backend that stops being the primary (so `on_backend_down =
//!   "keep"` is an error there). `user`, `password*` and `database` need a database check,
//!   `primary_path` and `replica_path` an `http-role` one, and one layer sets at most one of
//!   `password`, `password_env` and `password_file` (a backend's replaces the service's).
//! - VRRP: names unique; `(interface, virtual_router_id)` unique; a virtual address in one
//!   instance only; `advert_interval` fits the version; `auth_password` needs version 2;
//!   `unicast_source` needs `unicast_peers`; tracked services exist.
//! - Unknown keys are errors, so that a misspelt key is never silently ignored.

mod duration;
mod error;
mod locate;
mod raw;
mod secret;
mod validate;

#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

pub use error::{ConfigError, Problem};
pub use secret::Secret;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub timeouts: FlowTimeouts,
    pub services: Vec<ServiceConfig>,
    pub control: ControlConfig,
    /// The status page and metrics.
    pub http: HttpConfig,
    /// VRRP instances, in file order; empty when this node holds its addresses alone.
    pub vrrp: Vec<VrrpConfig>,
}

/// Where and how the XDP program runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Which data plane forwards: the XDP program or the userspace proxy.
    pub mode: DataplaneMode,
    /// Interfaces the program is attached to; at least one, no duplicates.
    pub interfaces: Vec<String>,
    pub attach: AttachMode,
    /// Source ports the full NAT allocates from.
    pub snat_ports: PortRange,
    /// Entries of the connection table.
    pub flow_table_size: u32,
    /// Directory under a bpffs mount where the maps and the XDP link are pinned, so that a
    /// restart of gerbang keeps every flow. Absolute, without `..`.
    pub pin_path: PathBuf,
    /// Debug log lines the XDP program may emit per second on each CPU; 0 (the default)
    /// builds the program without them.
    pub xdp_log_rate: u32,
    /// Threads the userspace proxy relays TCP connections on; 0 (the default) is one per
    /// CPU the process may use.
    pub proxy_threads: u32,
}

impl DataplaneConfig {
    /// The most log lines per second per CPU `xdp_log_rate` allows: enough to follow a
    /// test client, too few to drown a busy host in logs.
    pub const MAX_XDP_LOG_RATE: u32 = 1000;
    /// The most relay threads `proxy_threads` allows: more than CPUs only adds switching.
    pub const MAX_PROXY_THREADS: u32 = 256;
    /// Where maps are pinned when the file does not say.
    pub const DEFAULT_PIN_PATH: &'static str = "/sys/fs/bpf/gerbang";
}

/// The control interface (`gerbang ctl`, the status page's actions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// The Unix socket the controller listens on. Absolute, fits `sun_path`.
    pub socket: PathBuf,
}

impl ControlConfig {
    pub const DEFAULT_SOCKET: &'static str = "/run/gerbang/control.sock";
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(Self::DEFAULT_SOCKET),
        }
    }
}

/// The HTTP listener of the status page, its JSON API and the Prometheus endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    pub enabled: bool,
    /// Loopback by default: what it shows is for the operator, so exposing it is a choice.
    pub listen: SocketAddr,
}

impl HttpConfig {
    /// HAProxy's customary stats port, on loopback.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8404));
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: Self::DEFAULT_LISTEN,
        }
    }
}

/// Which data plane forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DataplaneMode {
    /// XDP where the kernel, architecture and interfaces allow it, else the userspace
    /// proxy; gerbang logs which and why.
    #[default]
    Auto,
    /// The XDP program only: start fails where it cannot run.
    Xdp,
    /// The userspace proxy (32-bit kernels, hosts without BPF).
    Userspace,
}

impl DataplaneMode {
    pub const ALL: [Self; 3] = [Self::Auto, Self::Xdp, Self::Userspace];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Xdp => "xdp",
            Self::Userspace => "userspace",
        }
    }
}

impl fmt::Display for DataplaneMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the XDP program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttachMode {
    /// In the driver: fastest, but not every driver supports it.
    Native,
    /// In the kernel's network stack: works on any interface, costs more CPU per packet.
    Generic,
    /// Native where the driver allows it, generic elsewhere.
    #[default]
    Auto,
}

impl AttachMode {
    pub const ALL: [Self; 3] = [Self::Native, Self::Generic, Self::Auto];

    /// The name the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Auto => "auto",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of ports, `min <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// How long a flow may stay idle before its connection-table entry expires, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// TCP flow whose handshake has not completed (no answer yet, or no ACK from the client).
    pub tcp_syn: Duration,
    /// TCP flow in data transfer.
    pub tcp_established: Duration,
    /// TCP flow after a RST or after FINs from both sides.
    pub tcp_closing: Duration,
    pub udp: Duration,
}

impl Default for FlowTimeouts {
    /// The data plane's own defaults, so a file without `[timeouts]` changes nothing.
    fn default() -> Self {
        let timeouts = lb_common::Timeouts::DEFAULT;
        Self {
            tcp_syn: Duration::from_nanos(timeouts.tcp_syn_ns),
            tcp_established: Duration::from_nanos(timeouts.tcp_established_ns),
            tcp_closing: Duration::from_nanos(timeouts.tcp_closing_ns),
            udp: Duration::from_nanos(timeouts.udp_ns),
        }
    }
}

/// One virtual service: clients connect to `listen`, flows go to one of `backends`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub listen: SocketAddrV4,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    /// The source address backends see: the service's own, else the dataplane default.
    pub snat_address: Ipv4Addr,
    /// What happens to established flows of a backend that fails its health checks.
    pub on_backend_down: DownPolicy,
    /// Userspace mode: at most this many connections (TCP) or sessions (UDP) at once.
    pub max_connections: Option<u32>,
    /// Userspace mode, TCP: open each backend connection with a PROXY protocol v2 header
    /// carrying the client's address (HAProxy's `send-proxy-v2`).
    pub send_proxy_v2: bool,
    /// Which backends of a replicated database take new flows.
    pub role: ServiceRole,
    /// `role = "replica"`: where reads go while no replica is within `max_lag` (which each
    /// backend's role check carries, see [`DbCheck::max_lag`]).
    pub replica_fallback: ReplicaFallback,
    /// The service's `[service.check]` with defaults applied; each backend's
    /// [`BackendConfig::check`] is this with the backend's own keys over it.
    pub check: CheckConfig,
    pub backends: Vec<BackendConfig>,
}

/// What happens to a backend's established flows when it fails its health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DownPolicy {
    /// They are cut: TCP clients get a RST on their next packet, so they fail fast and
    /// reconnect to a live backend instead of hanging.
    #[default]
    Reset,
    /// They continue, in case the backend still serves them.
    Keep,
}

impl DownPolicy {
    pub const ALL: [Self; 2] = [Self::Reset, Self::Keep];

    /// The name the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::Keep => "keep",
        }
    }
}

impl fmt::Display for DownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which backends of a replicated database a service uses (`service.role`).
///
/// The layouts of MySQL Router (read-write port, read-only port) and of HAProxy in front of
/// PostgreSQL (write port, read port) are two services over the same backends, one
/// `Primary` and one `Replica`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ServiceRole {
    /// Every healthy backend, whatever its role.
    #[default]
    Any,
    /// At most one backend: the one primary. A second claimant stops new flows until one
    /// of them stops claiming (fail closed), and a backend that stops being the primary has
    /// its flows cut.
    Primary,
    /// Replicas whose lag is within `max_lag`, else [`ServiceConfig::replica_fallback`].
    Replica,
}

impl ServiceRole {
    pub const ALL: [Self; 3] = [Self::Any, Self::Primary, Self::Replica];

    /// The name the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Primary => "primary",
            Self::Replica => "replica",
        }
    }
}

impl fmt::Display for ServiceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a `role = "replica"` service sends new flows while no replica is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReplicaFallback {
    /// To the primary, as MySQL Router's `round-robin-with-fallback` read-only port and
    /// HAProxy's read port with the primary as `backup` do: reads stay available and are
    /// never stale.
    #[default]
    Primary,
    /// Nowhere: clients are refused rather than loading the primary.
    None,
}

impl ReplicaFallback {
    pub const ALL: [Self; 2] = [Self::Primary, Self::None];

    /// The name the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::None => "none",
        }
    }
}

impl ServiceConfig {
    /// `max_lag` when the file does not say.
    pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(10);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub const ALL: [Self; 2] = [Self::Tcp, Self::Udp];

    /// The name the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a service picks a backend for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scheduler {
    #[default]
    RoundRobin,
}

impl Scheduler {
    pub const ALL: [Self; 1] = [Self::RoundRobin];

    /// The name the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub address: SocketAddrV4,
    /// Share of new flows relative to the service's other active backends, 0 to 256; 0
    /// takes no new flows (as in HAProxy).
    pub weight: u32,
    /// Takes new flows only while no primary (non-backup) backend of the service is up.
    pub backup: bool,
    /// How this backend is health-checked: the service's check with the backend's own keys
    /// over it, fully resolved.
    pub check: CheckConfig,
}

/// A health check, fully resolved: every default applied, every inherited key merged.
///
/// The names follow HAProxy's `server ... check inter fastinter downinter fall rise port
/// addr` and `timeout check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub kind: CheckKind,
    /// Between checks of a backend that is steadily up (HAProxy `inter`).
    pub interval: Duration,
    /// Between checks while a backend is between states, failing while up or succeeding
    /// while down (HAProxy `fastinter`).
    pub fast_interval: Duration,
    /// Between checks of a backend that is down (HAProxy `downinter`).
    pub down_interval: Duration,
    /// How long one check may take before it counts as failed (HAProxy `timeout check`).
    pub timeout: Duration,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Port to check instead of the backend's (HAProxy `port`).
    pub port: Option<u16>,
    /// Address to check instead of the backend's (HAProxy `addr`).
    pub address: Option<Ipv4Addr>,
}

impl CheckConfig {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
    pub const DEFAULT_FALL: u32 = 3;
    pub const DEFAULT_RISE: u32 = 2;
}

impl Default for CheckConfig {
    /// A TCP connect every 2 s, down after 3 failures, up after 2 successes: what a
    /// `[[service]]` without `[service.check]` gets.
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            interval: Self::DEFAULT_INTERVAL,
            fast_interval: Self::DEFAULT_INTERVAL,
            down_interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_INTERVAL,
            fall: Self::DEFAULT_FALL,
            rise: Self::DEFAULT_RISE,
            port: None,
            address: None,
        }
    }
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// No checks: the backend is always taken as up.
    None,
    /// A TCP connection is opened and closed.
    Tcp,
    /// An HTTP/1.1 `GET` whose response is judged.
    Http(HttpCheck),
    /// PostgreSQL: `pg_is_in_recovery()` and the replay lag. A role check.
    Postgres(DbCheck),
    /// MySQL or MariaDB: `@@global.read_only` and the replica status. A role check.
    Mysql(DbCheck),
    /// A MariaDB Galera node: up while synced (`wsrep_local_state = 4`) in the primary
    /// component; every such node may take writes. A role check.
    Galera(DbCheck),
    /// Patroni-style REST endpoints: `GET primary_path` answers 200 on the primary,
    /// `GET replica_path` 200 on a replica fit for reads. A role check.
    HttpRole(HttpRoleCheck),
}

impl CheckKind {
    /// The `type` the config file uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Tcp => "tcp",
            Self::Http(_) => "http",
            Self::Postgres(_) => "postgres",
            Self::Mysql(_) => "mysql",
            Self::Galera(_) => "galera",
            Self::HttpRole(_) => "http-role",
        }
    }

    /// Whether the check asks the backend for its role, as `role = "primary"` and
    /// `"replica"` services need.
    pub fn is_role_check(&self) -> bool {
        !matches!(self, Self::None | Self::Tcp | Self::Http(_))
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An HTTP check (HAProxy `option httpchk GET /path` with `http-check expect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// Request path: starts with `/`, printable ASCII without spaces.
    pub path: String,
    /// `Host` header; `None` sends the checked address.
    pub host: Option<String>,
    /// Statuses that pass, as inclusive ranges, each within 100..=599.
    pub expect_status: Vec<(u16, u16)>,
    /// Text that must appear in the first 64 KiB of the body.
    pub expect_body: Option<String>,
}

impl HttpCheck {
    /// How much of a response body `expect_body` is searched in.
    pub const BODY_LIMIT: usize = 64 * 1024;

    /// Whether `status` is one of the expected ones.
    pub fn status_passes(&self, status: u16) -> bool {
        self.expect_status
            .iter()
            .any(|&(min, max)| (min..=max).contains(&status))
    }
}

impl Default for HttpCheck {
    /// `GET /`, any 2xx or 3xx passes.
    fn default() -> Self {
        Self {
            path: "/".to_owned(),
            host: None,
            expect_status: vec![(200, 399)],
            expect_body: None,
        }
    }
}

/// How a database check logs in, and what it judges a replica by.
///
/// The connection is plain TCP without TLS: gerbang checks databases on the private network
/// behind it, as HAProxy's `mysql-check` and `pgsql-check` do, so the password should be
/// one for a user that may do nothing but look (see `config/postgres-pair.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbCheck {
    pub user: String,
    /// `None` logs in without one.
    pub password: Option<Secret>,
    /// The database to connect to (PostgreSQL needs one; MySQL none).
    pub database: Option<String>,
    /// A replica further behind than this is not fit for reads: the service's `max_lag`.
    pub max_lag: Duration,
}

impl DbCheck {
    /// `user` when the file does not say.
    pub const DEFAULT_USER: &'static str = "gerbang";
    /// PostgreSQL's `database` when the file does not say.
    pub const DEFAULT_POSTGRES_DATABASE: &'static str = "postgres";
}

/// A role check against HTTP endpoints that answer 200 only for their role (Patroni's
/// `/primary` and `/replica?lag=...`; the endpoint judges the lag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoleCheck {
    pub primary_path: String,
    pub replica_path: String,
}

impl Default for HttpRoleCheck {
    /// Patroni's endpoints.
    fn default() -> Self {
        Self {
            primary_path: "/primary".to_owned(),
            replica_path: "/replica".to_owned(),
        }
    }
}

/// One VRRP instance (keepalived's `vrrp_instance`): a virtual router that holds
/// `virtual_addresses` on `interface` while it is master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpConfig {
    /// Unique among instances; same characters as service names.
    pub name: String,
    pub interface: String,
    /// 1 to 255; unique per interface, shared by every node of the virtual router.
    pub virtual_router_id: u8,
    /// 1 to 255; 255 is the owner of the addresses.
    pub priority: u8,
    pub version: VrrpVersion,
    /// Between advertisements: whole centiseconds from 10ms to 40.95s in VRRPv3, whole
    /// seconds from 1s to 255s in VRRPv2.
    pub advert_interval: Duration,
    /// Whether a higher-priority backup takes over from a lower-priority master.
    pub preempt: bool,
    /// How long to wait after start-up before preempting; zero is at once.
    pub preempt_delay: Duration,
    /// 1 to 20, none of them in another instance.
    pub virtual_addresses: Vec<VirtualAddress>,
    /// Source of unicast advertisements; only with `unicast_peers`.
    pub unicast_source: Option<Ipv4Addr>,
    /// Where advertisements go; empty is multicast to 224.0.0.18.
    pub unicast_peers: Vec<Ipv4Addr>,
    /// keepalived's `auth_type PASS`; VRRPv2 only.
    pub auth_password: Option<String>,
    /// Gratuitous ARPs sent for each address on becoming master.
    pub garp_count: u32,
    /// Between those gratuitous ARPs.
    pub garp_interval: Duration,
    pub track_services: Vec<TrackService>,
    pub track_interfaces: Vec<TrackInterface>,
    pub track_scripts: Vec<TrackScript>,
    pub notify: NotifyCommands,
}

impl VrrpConfig {
    /// Where VRRP advertisements go without unicast peers (RFC 5798).
    pub const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
}

/// Which VRRP the instance speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VrrpVersion {
    /// RFC 3768; keepalived's default. Needed for `auth_password`.
    V2,
    /// RFC 5798.
    #[default]
    V3,
}

impl VrrpVersion {
    pub const ALL: [Self; 2] = [Self::V2, Self::V3];

    /// The number the config file and the wire use.
    pub fn number(self) -> u8 {
        match self {
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }
}

impl fmt::Display for VrrpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VRRPv{}", self.number())
    }
}

/// An address a VRRP master adds to its interface, with the prefix it is added with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VirtualAddress {
    pub address: Ipv4Addr,
    /// 1 to 32.
    pub prefix_len: u8,
}

impl fmt::Display for VirtualAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// A service whose health moves an instance's priority.
///
/// For every track, a failure adds `weight` to the priority (keepalived semantics), and a
/// weight of 0 puts the instance in FAULT while the failure lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackService {
    /// The name of a configured service; it fails while none of its backends is up.
    pub service: String,
    /// -254 to 254.
    pub weight: i32,
}

/// An interface whose link state moves an instance's priority; it fails while down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInterface {
    pub interface: String,
    /// -254 to 254; see [`TrackService`].
    pub weight: i32,
}

/// A command run periodically with `sh -c`; it fails on a non-zero exit or a timeout
/// (keepalived's `vrrp_script`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackScript {
    /// Unique within the instance; same characters as service names.
    pub name: String,
    pub command: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before it counts as failed.
    pub fall: u32,
    /// Consecutive successes before it counts as succeeding again.
    pub rise: u32,
    /// -254 to 254; see [`TrackService`].
    pub weight: i32,
}

/// Commands run with `sh -c` when an instance enters a state (keepalived's `notify_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyCommands {
    pub master: Option<String>,
    pub backup: Option<String>,
    pub fault: Option<String>,
    pub stop: Option<String>,
}

impl Config {
    /// Reads and validates the file at `path`; errors name that path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|error| ConfigError::unreadable(&origin, &error))?;
        let text = String::from_utf8(bytes).map_err(|error| {
            let offset = error.utf8_error().valid_up_to();
            let message = "not UTF-8 text: a TOML file must be UTF-8";
            let problem = Problem::at(
                &locate::Lines::new(error.as_bytes()),
                Some(offset),
                "",
                message,
            );
            ConfigError::new(&origin, vec![problem])
        })?;
        Self::parse(&text, &origin)
    }

    /// Validates `text`; `origin` is what errors call the file (a path, or `<builtin>`).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw = raw::parse(text).map_err(|problem| ConfigError::new(origin, vec![problem]))?;
        validate::validate(&raw, text).map_err(|problems| ConfigError::new(origin, problems))
    }
}

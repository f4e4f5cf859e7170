//! The operator's configuration: the TOML file, its validation, and the validated types the
//! rest of gerbang is built from.
//!
//! A file is either accepted whole or rejected with every problem in it, each as
//! `file:line:column: field: what is wrong and what is allowed`, so that it can be fixed in
//! one edit. `config/gerbang.toml` is a commented example of a real deployment.
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
//!
//! [timeouts]                   # idle timeouts; the table and each key are optional
//! tcp_syn = "30s"              # TCP before the backend answers; default 30s
//! tcp_established = "15m"      # TCP after it has; default 15m
//! tcp_closing = "10s"          # TCP after a RST or FINs both ways; default 10s
//! udp = "60s"                  # default 60s
//!
//! [[service]]                  # 1 to 256 services
//! name = "web"                 # required, unique: 1-64 characters of A-Z a-z 0-9 _ . -
//! listen = "192.0.2.10:80"     # required: the VIP, IPv4:port
//! protocol = "tcp"             # "tcp" | "udp"; default "tcp"
//! scheduler = "round-robin"    # "round-robin" (the only one so far, and the default)
//! snat_address = "10.0.0.1"    # overrides dataplane.snat_address for this service
//!
//!   [[service.backend]]        # 1 or more per service, at most 4096 over all services
//!   name = "web1"              # required, unique in the service; same characters as service names
//!   address = "10.0.1.11:8080" # required, unique in the service: IPv4:port
//! ```
//!
//! Durations are a whole number and a unit, `ms`, `s`, `m` or `h` (`"200ms"`, `"30s"`,
//! `"15m"`, `"1h"`), longer than zero and at most 7 days.
//!
//! # Rules across fields
//!
//! - Addresses (VIPs, backends, SNAT) may not be unspecified (`0.0.0.0`), loopback, multicast
//!   or broadcast, and ports may not be 0.
//! - Every service needs a SNAT address, its own or `dataplane.snat_address`.
//! - No two services share a listen address, port and protocol.
//! - A service may not listen, with the same protocol, on a SNAT address at a port inside
//!   `snat_ports`: replies from backends to that port would be taken for client traffic.
//! - Unknown keys are errors, so that a misspelt key is never silently ignored.

mod duration;
mod error;
mod locate;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

pub use error::{ConfigError, Problem};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub timeouts: FlowTimeouts,
    pub services: Vec<ServiceConfig>,
}

/// Where and how the XDP program runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Interfaces the program is attached to; at least one, no duplicates.
    pub interfaces: Vec<String>,
    pub attach: AttachMode,
    /// Source ports the full NAT allocates from.
    pub snat_ports: PortRange,
    /// Entries of the connection table.
    pub flow_table_size: u32,
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
    /// TCP flow whose backend has not answered yet.
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
    pub backends: Vec<BackendConfig>,
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

//! Turns the raw file into a [`Config`] in one pass that applies every rule and collects every
//! problem, so that an operator fixes them all in one edit rather than one per restart.
//!
//! Each check returns `Checked<T>`: the value, or proof that a problem was recorded. A field
//! that failed is simply left out of the checks that need it, so one mistake is reported
//! once, where it was made, and not again by every rule that depends on it.
//!
//! Health checks (`check`) and VRRP instances (`vrrp`) have their own submodules.

mod check;
mod role;
mod vrrp;

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    ops::{Range, RangeInclusive},
    path::{Component, Path, PathBuf},
    time::Duration,
};

use lb_common::{
    flow::DEFAULT_FLOW_TABLE_SIZE,
    service::{MAX_BACKENDS, MAX_SERVICES, RING_SLOTS},
};
use toml::{Spanned, Value};

use self::check::{CheckContext, CheckLayer};
use super::{
    AttachMode, BackendConfig, CheckConfig, Config, ControlConfig, DataplaneConfig, DataplaneMode,
    DownPolicy, FlowTimeouts, HttpConfig, PortRange, Problem, Protocol, Scheduler, ServiceConfig,
    VrrpConfig, duration,
    locate::{self, Lines},
    raw::{
        Leaf, RawBackend, RawConfig, RawControl, RawDataplane, RawHttp, RawService, RawTimeouts,
        Table, Tables,
    },
};

const MAX_NAME_LEN: usize = 64;
const NAME_RULE: &str = "1 to 64 characters of A-Z a-z 0-9 _ . -";
/// Linux's IFNAMSIZ, less the terminating NUL.
const MAX_INTERFACE_NAME_LEN: usize = 15;
const FLOW_TABLE_SIZES: RangeInclusive<u32> = 1024..=16_777_216;
/// Below Linux's ephemeral ports (32768-60999), so the host's own connections from a SNAT
/// address never take a port the NAT hands out.
const DEFAULT_SNAT_PORTS: PortRange = PortRange {
    min: 1024,
    max: 32767,
};
const UNICAST_RULE: &str =
    "use a unicast address (not 0.0.0.0, 127.0.0.0/8, 224.0.0.0/4 or 255.255.255.255)";
const SNAT_HELP: &str = "set dataplane.snat_address or service.snat_address: the address \
                         backends see as the source, an address of this host";
const LISTEN_EXAMPLE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), 80);
const BACKEND_EXAMPLE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 11), 8080);
const ADDRESS_EXAMPLE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 11);
/// HAProxy's range of server weights.
const WEIGHTS: RangeInclusive<u32> = 0..=256;
const MAX_CONNECTIONS: RangeInclusive<u32> = 1..=1_000_000;
const DEFAULT_WEIGHT: u32 = 1;
/// Long enough for any sane bpffs directory, short enough to leave room under PATH_MAX for
/// the names pinned in it.
const MAX_PIN_PATH_LEN: usize = 200;
/// `sun_path` holds 108 bytes, the last of them the terminating NUL.
const MAX_SOCKET_PATH_LEN: usize = 107;
/// Of a command run with `sh -c`.
const MAX_COMMAND_LEN: usize = 4096;

/// Whether `name` may name a service, a backend, a VRRP instance or a track script. Names
/// end up in logs, metrics labels and field paths, hence the small character set.
pub(super) fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks `raw` (parsed from `text`) and builds the configuration, or returns every problem
/// in file order.
pub(super) fn validate(raw: &RawConfig, text: &str) -> Result<Config, Vec<Problem>> {
    let mut checker = Checker {
        lines: Lines::new(text.as_bytes()),
        problems: Vec::new(),
    };
    let dataplane = checker.dataplane(raw.dataplane.as_ref());
    let timeouts = checker.timeouts(raw.timeouts.as_ref());
    let (services, known) = checker.services(raw.service.as_ref(), &dataplane);
    let control = checker.control(raw.control.as_ref());
    let http = checker.http(raw.http.as_ref());
    let vrrp = checker.vrrp(raw.vrrp.as_ref(), &known);
    let config = assemble(dataplane, timeouts, services, control, http, vrrp);
    let mut problems = checker.problems;
    match config {
        Ok(config) if problems.is_empty() => Ok(config),
        // Either the config failed, and then it has reported why, or a check across fields
        // found a problem after the fields themselves were fine.
        _ => {
            problems.sort_by_key(|problem| (problem.line, problem.column));
            Err(problems)
        }
    }
}

fn assemble(
    dataplane: DataplaneDraft,
    timeouts: Checked<FlowTimeouts>,
    services: Checked<Vec<ServiceConfig>>,
    control: Checked<ControlConfig>,
    http: Checked<HttpConfig>,
    vrrp: Checked<Vec<VrrpConfig>>,
) -> Checked<Config> {
    Ok(Config {
        dataplane: DataplaneConfig {
            mode: dataplane.mode?,
            interfaces: dataplane.interfaces?,
            attach: dataplane.attach?,
            snat_ports: dataplane.snat_ports?,
            flow_table_size: dataplane.flow_table_size?,
            pin_path: dataplane.pin_path?,
            xdp_log_rate: dataplane.xdp_log_rate?,
            proxy_threads: dataplane.proxy_threads?,
        },
        timeouts: timeouts?,
        services: services?,
        control: control?,
        http: http?,
        vrrp: vrrp?,
    })
}

/// Proof that a problem was recorded. Only [`Checker::report`] makes one, so a check cannot
/// fail without saying why.
#[derive(Debug, Clone, Copy)]
struct Reported;

type Checked<T> = Result<T, Reported>;

/// A SNAT address and where it was set, for problems that involve it.
#[derive(Clone)]
struct Snat {
    address: Ipv4Addr,
    field: String,
    span: Range<usize>,
}

/// `[dataplane]`, checked field by field; services need some fields before it is assembled.
struct DataplaneDraft {
    mode: Checked<DataplaneMode>,
    interfaces: Checked<Vec<String>>,
    attach: Checked<AttachMode>,
    snat: Checked<Option<Snat>>,
    snat_ports: Checked<PortRange>,
    flow_table_size: Checked<u32>,
    pin_path: Checked<PathBuf>,
    xdp_log_rate: Checked<u32>,
    proxy_threads: Checked<u32>,
}

/// One `[[service]]`, checked field by field; the checks across services read it.
struct ServiceDraft {
    /// `service[web]`, or `service[3]` without a usable name.
    path: String,
    header: Range<usize>,
    name: Checked<Spanned<String>>,
    listen: Checked<Spanned<SocketAddrV4>>,
    protocol: Checked<Protocol>,
    scheduler: Checked<Scheduler>,
    snat: Checked<Snat>,
    on_backend_down: Checked<DownPolicy>,
    max_connections: Checked<Option<u32>>,
    send_proxy_v2: Checked<bool>,
    role: role::RoleDraft,
    check: Checked<CheckConfig>,
    backends: Checked<Vec<BackendConfig>>,
}

impl ServiceDraft {
    fn build(self) -> Checked<ServiceConfig> {
        Ok(ServiceConfig {
            name: self.name?.into_inner(),
            listen: self.listen?.into_inner(),
            protocol: self.protocol?,
            scheduler: self.scheduler?,
            snat_address: self.snat?.address,
            on_backend_down: self.on_backend_down?,
            max_connections: self.max_connections?,
            send_proxy_v2: self.send_proxy_v2?,
            role: self.role.role?,
            replica_fallback: self.role.replica_fallback?,
            check: self.check?,
            backends: self.backends?,
        })
    }
}

/// One `[[service.backend]]`, checked field by field.
struct BackendDraft {
    name: Checked<Spanned<String>>,
    address: Checked<Spanned<SocketAddrV4>>,
    weight: Checked<u32>,
    backup: Checked<bool>,
    check: Checked<CheckConfig>,
}

impl BackendDraft {
    fn build(self) -> Checked<BackendConfig> {
        Ok(BackendConfig {
            name: self.name?.into_inner(),
            address: self.address?.into_inner(),
            weight: self.weight?,
            backup: self.backup?,
            check: self.check?,
        })
    }
}

/// The services a VRRP instance may track: those whose names passed their checks.
struct KnownServices {
    names: HashSet<String>,
    /// The names as a problem lists them: sorted, quoted, the first few only.
    listing: String,
    /// Set when a service's name failed its checks: a name missing from `names` may be that
    /// one, and is not reported again.
    unnamed: Option<Reported>,
}

impl KnownServices {
    /// How many names a problem lists before "and N more".
    const LISTED: usize = 10;

    fn new(drafts: &[ServiceDraft]) -> Self {
        let names: HashSet<String> = drafts
            .iter()
            .filter_map(|draft| draft.name.as_ref().ok())
            .map(|name| name.get_ref().clone())
            .collect();
        let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        let mut listing = sorted
            .iter()
            .take(Self::LISTED)
            .map(|name| format!("{name:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        if sorted.len() > Self::LISTED {
            listing.push_str(&format!(" and {} more", sorted.len() - Self::LISTED));
        }
        Self {
            listing,
            unnamed: drafts
                .iter()
                .find_map(|draft| draft.name.as_ref().err().copied()),
            names,
        }
    }
}

struct Checker<'t> {
    lines: Lines<'t>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn report(
        &mut self,
        span: Option<Range<usize>>,
        field: &str,
        message: impl Into<String>,
    ) -> Reported {
        let offset = span.map(|span| span.start);
        self.problems
            .push(Problem::at(&self.lines, offset, field, message));
        Reported
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.lines.line_col(span.start).0
    }

    /// A key the schema requires. `table` is where it is missing from, and the problem
    /// points there; `what` says what to add.
    fn required<'v>(
        &mut self,
        leaf: &'v Leaf,
        table: Option<Range<usize>>,
        field: &str,
        what: &str,
    ) -> Checked<&'v Spanned<Value>> {
        match leaf {
            Some(value) => Ok(value),
            None => Err(self.report(table, field, format!("missing: {what}"))),
        }
    }

    fn string<'v>(
        &mut self,
        value: &'v Spanned<Value>,
        field: &str,
        expected: &str,
    ) -> Checked<&'v str> {
        match value.get_ref() {
            Value::String(text) => Ok(text),
            other => {
                let message = format!("expected {expected}, found {}", describe(other));
                Err(self.report(Some(value.span()), field, message))
            }
        }
    }

    /// One of a fixed set of keywords, `T::default()` when absent.
    fn choice<T: Copy + Default>(
        &mut self,
        leaf: &Leaf,
        field: &str,
        all: &[T],
        name: fn(T) -> &'static str,
    ) -> Checked<T> {
        let Some(value) = leaf else {
            return Ok(T::default());
        };
        let allowed = all
            .iter()
            .map(|&choice| format!("{:?}", name(choice)))
            .collect::<Vec<_>>()
            .join(", ");
        let text = self.string(value, field, &format!("one of {allowed}"))?;
        match all.iter().copied().find(|&choice| name(choice) == text) {
            Some(choice) => Ok(choice),
            None => {
                let default = name(T::default());
                let message =
                    format!("invalid value {text:?}: allowed {allowed} (default {default:?})");
                Err(self.report(Some(value.span()), field, message))
            }
        }
    }

    fn dataplane(&mut self, raw: Option<&Spanned<Table<RawDataplane>>>) -> DataplaneDraft {
        let absent = RawDataplane::default();
        // Without the table, problems about its required keys have no line to point at.
        let (table, span) = match raw {
            Some(table) => (&**table.get_ref(), Some(table.span())),
            None => (&absent, None),
        };
        let mode = self.choice(
            &table.mode,
            "dataplane.mode",
            &DataplaneMode::ALL,
            DataplaneMode::as_str,
        );
        // The proxy listens on the VIPs themselves; it needs no interface to attach to.
        let interfaces =
            if table.interfaces.is_none() && matches!(mode, Ok(DataplaneMode::Userspace)) {
                Ok(Vec::new())
            } else {
                self.interfaces(&table.interfaces, span)
            };
        DataplaneDraft {
            mode,
            interfaces,
            attach: self.choice(
                &table.attach,
                "dataplane.attach",
                &AttachMode::ALL,
                AttachMode::as_str,
            ),
            snat: match &table.snat_address {
                Some(value) => self.snat(value, "dataplane.snat_address").map(Some),
                None => Ok(None),
            },
            snat_ports: self.snat_ports(&table.snat_ports),
            flow_table_size: self.flow_table_size(&table.flow_table_size),
            xdp_log_rate: self.xdp_log_rate(&table.xdp_log_rate),
            proxy_threads: self.proxy_threads(&table.proxy_threads),
            pin_path: self.path(
                &table.pin_path,
                "dataplane.pin_path",
                PathRule {
                    default: DataplaneConfig::DEFAULT_PIN_PATH,
                    what: "a directory under a bpffs mount",
                    max_len: MAX_PIN_PATH_LEN,
                    why_max: "",
                    parent_allowed: false,
                },
            ),
        }
    }

    fn control(&mut self, raw: Option<&Spanned<Table<RawControl>>>) -> Checked<ControlConfig> {
        let absent = RawControl::default();
        let table = raw.map_or(&absent, |table| &**table.get_ref());
        let socket = self.path(
            &table.socket,
            "control.socket",
            PathRule {
                default: ControlConfig::DEFAULT_SOCKET,
                what: "the path of a Unix socket",
                max_len: MAX_SOCKET_PATH_LEN,
                why_max: ", what a Unix socket address holds",
                parent_allowed: true,
            },
        )?;
        Ok(ControlConfig { socket })
    }

    fn http(&mut self, raw: Option<&Spanned<Table<RawHttp>>>) -> Checked<HttpConfig> {
        let absent = RawHttp::default();
        let table = raw.map_or(&absent, |table| &**table.get_ref());
        let enabled = self.boolean(&table.enabled, "http.enabled", true);
        let listen = match &table.listen {
            Some(value) => self.listen_address(value, "http.listen"),
            None => Ok(HttpConfig::DEFAULT_LISTEN),
        };
        Ok(HttpConfig {
            enabled: enabled?,
            listen: listen?,
        })
    }

    /// An address and port to listen on, IPv4 or IPv6.
    fn listen_address(&mut self, value: &Spanned<Value>, field: &str) -> Checked<SocketAddr> {
        let example = HttpConfig::DEFAULT_LISTEN;
        let text = self.string(
            value,
            field,
            &format!("an address and port such as \"{example}\""),
        )?;
        let problem = match text.parse::<SocketAddr>() {
            Ok(address) if address.ip().is_multicast() => {
                format!("{address} is a multicast address: give an address of this host")
            }
            Ok(address) => return Ok(address),
            Err(_) => match text.parse::<std::net::IpAddr>() {
                Ok(ip) => format!(
                    "invalid address {text:?}: give a port too, such as {}",
                    SocketAddr::new(ip, example.port())
                ),
                Err(_) => format!(
                    "invalid address {text:?}: expected IP:port such as \"{example}\", \
                     \"0.0.0.0:{port}\" or \"[::1]:{port}\"",
                    port = example.port()
                ),
            },
        };
        Err(self.report(Some(value.span()), field, problem))
    }

    /// A filesystem path, `rule.default` when absent.
    fn path(&mut self, leaf: &Leaf, field: &str, rule: PathRule) -> Checked<PathBuf> {
        let Some(value) = leaf else {
            return Ok(PathBuf::from(rule.default));
        };
        let expected = format!("an absolute path such as {:?}", rule.default);
        let text = self.string(value, field, &expected)?;
        let problem = if !text.starts_with('/') {
            format!(
                "{text:?} is not an absolute path: give {}, starting with '/', such as {:?} (the \
                 default)",
                rule.what, rule.default
            )
        } else if let Some(c) = text.chars().find(|c| c.is_control()) {
            format!("{text:?} contains {c:?}: a path cannot contain control characters")
        } else if text.len() > rule.max_len {
            format!(
                "path is {} bytes long: at most {}{}",
                text.len(),
                rule.max_len,
                rule.why_max
            )
        } else if !rule.parent_allowed
            && Path::new(text)
                .components()
                .any(|part| part == Component::ParentDir)
        {
            format!("{text:?} has a \"..\" component: give the path without it")
        } else {
            return Ok(PathBuf::from(text));
        };
        Err(self.report(Some(value.span()), field, problem))
    }

    fn interfaces(&mut self, leaf: &Leaf, table: Option<Range<usize>>) -> Checked<Vec<String>> {
        const FIELD: &str = "dataplane.interfaces";
        let what =
            "list the interfaces to attach to, such as interfaces = [\"eth0\"] under [dataplane]";
        let value = self.required(leaf, table, FIELD, what)?;
        let span = value.span();
        let items = match value.get_ref() {
            Value::Array(items) if !items.is_empty() => items,
            Value::Array(_) => {
                let message = "empty: list at least one interface to attach to, such as [\"eth0\"]";
                return Err(self.report(Some(span), FIELD, message));
            }
            other => {
                let message = format!(
                    "expected an array of interface names such as [\"eth0\"], found {}",
                    describe(other)
                );
                return Err(self.report(Some(span), FIELD, message));
            }
        };
        // toml::Value keeps no spans inside arrays: problems point at the array and name
        // the element by index.
        let mut seen = HashSet::new();
        let mut interfaces = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let problem = match item {
                Value::String(name) => match interface_problem(name) {
                    Some(problem) => problem,
                    None if seen.insert(name.as_str()) => {
                        interfaces.push(Ok(name.clone()));
                        continue;
                    }
                    None => format!("{name:?} is listed twice: list each interface once"),
                },
                other => format!(
                    "expected an interface name (a string) such as \"eth0\", found {}",
                    describe(other)
                ),
            };
            let field = format!("{FIELD}[{index}]");
            interfaces.push(Err(self.report(Some(span.clone()), &field, problem)));
        }
        interfaces.into_iter().collect()
    }

    fn snat(&mut self, value: &Spanned<Value>, field: &str) -> Checked<Snat> {
        let text = self.string(value, field, "an IPv4 address such as \"10.0.0.1\"")?;
        let checked = match text.parse::<Ipv4Addr>() {
            Ok(address) => check_unicast(address).map(|()| address),
            Err(_) if text.parse::<SocketAddrV4>().is_ok() => Err(format!(
                "{text:?} has a port: a SNAT address is an address only; its source ports come \
                 from dataplane.snat_ports"
            )),
            Err(_) => Err(format!(
                "invalid address {text:?}: expected an IPv4 address of this host, such as 10.0.0.1"
            )),
        };
        match checked {
            Ok(address) => Ok(Snat {
                address,
                field: field.to_owned(),
                span: value.span(),
            }),
            Err(message) => Err(self.report(Some(value.span()), field, message)),
        }
    }

    fn snat_ports(&mut self, leaf: &Leaf) -> Checked<PortRange> {
        const FIELD: &str = "dataplane.snat_ports";
        let Some(value) = leaf else {
            return Ok(DEFAULT_SNAT_PORTS);
        };
        let text = self.string(value, FIELD, "a port range such as \"1024-32767\"")?;
        port_range(text).map_err(|message| self.report(Some(value.span()), FIELD, message))
    }

    fn xdp_log_rate(&mut self, leaf: &Leaf) -> Checked<u32> {
        let max = DataplaneConfig::MAX_XDP_LOG_RATE;
        self.count_up_to(
            leaf,
            "dataplane.xdp_log_rate",
            max,
            &format!("0 (off, the default) to {max} lines per second per CPU"),
            "lines",
        )
    }

    fn proxy_threads(&mut self, leaf: &Leaf) -> Checked<u32> {
        let max = DataplaneConfig::MAX_PROXY_THREADS;
        self.count_up_to(
            leaf,
            "dataplane.proxy_threads",
            max,
            &format!("0 (one per CPU, the default) to {max}"),
            "threads",
        )
    }

    /// A whole number of `unit` from 0 to `max`, 0 when absent; `allowed` says what the
    /// range means.
    fn count_up_to(
        &mut self,
        leaf: &Leaf,
        field: &str,
        max: u32,
        allowed: &str,
        unit: &str,
    ) -> Checked<u32> {
        let Some(value) = leaf else {
            return Ok(0);
        };
        let message = match value.get_ref() {
            Value::Integer(n) => match u32::try_from(*n) {
                Ok(count) if count <= max => return Ok(count),
                _ => format!("{n} is out of range: allowed {allowed}"),
            },
            other => format!(
                "expected a number of {unit}, found {}: allowed {allowed}",
                describe(other)
            ),
        };
        Err(self.report(Some(value.span()), field, message))
    }

    fn flow_table_size(&mut self, leaf: &Leaf) -> Checked<u32> {
        const FIELD: &str = "dataplane.flow_table_size";
        let Some(value) = leaf else {
            return Ok(DEFAULT_FLOW_TABLE_SIZE);
        };
        let allowed = format!(
            "allowed {} to {} entries (default {DEFAULT_FLOW_TABLE_SIZE})",
            FLOW_TABLE_SIZES.start(),
            FLOW_TABLE_SIZES.end()
        );
        let message = match value.get_ref() {
            Value::Integer(n) => match u32::try_from(*n) {
                Ok(size) if FLOW_TABLE_SIZES.contains(&size) => return Ok(size),
                _ => format!("{n} is out of range: {allowed}"),
            },
            other => format!(
                "expected a number of entries, found {}: {allowed}",
                describe(other)
            ),
        };
        Err(self.report(Some(value.span()), FIELD, message))
    }

    fn timeouts(&mut self, raw: Option<&Spanned<Table<RawTimeouts>>>) -> Checked<FlowTimeouts> {
        let absent = RawTimeouts::default();
        let table = raw.map_or(&absent, |table| &**table.get_ref());
        let default = FlowTimeouts::default();
        let tcp_syn = self.duration(&table.tcp_syn, "timeouts.tcp_syn", default.tcp_syn);
        let tcp_established = self.duration(
            &table.tcp_established,
            "timeouts.tcp_established",
            default.tcp_established,
        );
        let tcp_closing = self.duration(
            &table.tcp_closing,
            "timeouts.tcp_closing",
            default.tcp_closing,
        );
        let udp = self.duration(&table.udp, "timeouts.udp", default.udp);
        Ok(FlowTimeouts {
            tcp_syn: tcp_syn?,
            tcp_established: tcp_established?,
            tcp_closing: tcp_closing?,
            udp: udp?,
        })
    }

    fn duration(&mut self, leaf: &Leaf, field: &str, default: Duration) -> Checked<Duration> {
        match leaf {
            Some(value) => self.duration_value(value, field),
            None => Ok(default),
        }
    }

    fn duration_value(&mut self, value: &Spanned<Value>, field: &str) -> Checked<Duration> {
        if let Value::Integer(n) = value.get_ref() {
            let message = format!(
                "expected a duration with a unit, such as \"{n}s\", found the bare number {n}"
            );
            return Err(self.report(Some(value.span()), field, message));
        }
        let text = self.string(value, field, "a duration such as \"30s\"")?;
        duration::parse(text)
            .map_err(|error| self.report(Some(value.span()), field, error.to_string()))
    }

    /// A duration that may be zero (`"0s"`, "not at all"), `default` when absent.
    fn duration_or_zero(
        &mut self,
        leaf: &Leaf,
        field: &str,
        default: Duration,
    ) -> Checked<Duration> {
        let Some(value) = leaf else {
            return Ok(default);
        };
        match value.get_ref() {
            Value::String(text)
                if matches!(duration::parse(text), Err(duration::DurationError::Zero(_))) =>
            {
                Ok(Duration::ZERO)
            }
            _ => self.duration_value(value, field),
        }
    }

    /// A whole number within `range`; `what` names it when it is not a number, and
    /// `default`, when there is one, is shown with what is allowed.
    fn number<T>(
        &mut self,
        value: &Spanned<Value>,
        field: &str,
        range: RangeInclusive<T>,
        what: &str,
        default: Option<T>,
    ) -> Checked<T>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display + Copy,
    {
        let mut allowed = format!("allowed {} to {}", range.start(), range.end());
        if let Some(default) = default {
            allowed.push_str(&format!(" (default {default})"));
        }
        let message = match value.get_ref() {
            Value::Integer(n) => match T::try_from(*n) {
                Ok(number) if range.contains(&number) => return Ok(number),
                _ => format!("{n} is out of range: {allowed}"),
            },
            other => format!("expected {what}, found {}: {allowed}", describe(other)),
        };
        Err(self.report(Some(value.span()), field, message))
    }

    /// [`Self::number`] for a key that may be absent.
    fn optional_number<T>(
        &mut self,
        leaf: &Leaf,
        field: &str,
        range: RangeInclusive<T>,
        what: &str,
        default: T,
    ) -> Checked<T>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display + Copy,
    {
        match leaf {
            Some(value) => self.number(value, field, range, what, Some(default)),
            None => Ok(default),
        }
    }

    /// `max_connections` and `send_proxy_v2`: things only the userspace proxy can do, since
    /// it terminates connections and the XDP program forwards packets.
    fn proxy_options(
        &mut self,
        raw: &RawService,
        path: &str,
        dataplane: &DataplaneDraft,
        protocol: &Checked<Protocol>,
    ) -> (Checked<Option<u32>>, Checked<bool>) {
        let userspace = matches!(dataplane.mode, Ok(DataplaneMode::Userspace));
        let needs_userspace = |this: &mut Self, leaf: &Leaf, key: &str| {
            if let (Some(value), false) = (leaf, userspace) {
                let message = format!(
                    "{key} needs dataplane.mode = \"userspace\": the XDP program forwards \
                     packets and never sees a connection to limit or prefix"
                );
                this.report(Some(value.span()), &format!("{path}.{key}"), message);
            }
        };
        needs_userspace(self, &raw.max_connections, "max_connections");
        needs_userspace(self, &raw.send_proxy_v2, "send_proxy_v2");
        let max_connections = match &raw.max_connections {
            Some(value) => self
                .number(
                    value,
                    &format!("{path}.max_connections"),
                    MAX_CONNECTIONS,
                    "a whole number of connections",
                    None,
                )
                .map(Some),
            None => Ok(None),
        };
        let send_proxy_v2 =
            self.boolean(&raw.send_proxy_v2, &format!("{path}.send_proxy_v2"), false);
        if let (Ok(true), Ok(Protocol::Udp), Some(value)) =
            (&send_proxy_v2, protocol, &raw.send_proxy_v2)
        {
            let message = "the PROXY protocol v2 header is sent on TCP connections; a UDP \
                           service cannot carry it";
            self.report(
                Some(value.span()),
                &format!("{path}.send_proxy_v2"),
                message,
            );
        }
        (max_connections, send_proxy_v2)
    }

    fn boolean(&mut self, leaf: &Leaf, field: &str, default: bool) -> Checked<bool> {
        match leaf.as_ref().map(|value| (value, value.get_ref())) {
            None => Ok(default),
            Some((_, Value::Boolean(b))) => Ok(*b),
            Some((value, other)) => {
                let message = format!(
                    "expected true or false, found {} (default {default})",
                    describe(other)
                );
                Err(self.report(Some(value.span()), field, message))
            }
        }
    }

    /// An IPv4 address that may be a backend's: not 0.0.0.0, loopback, multicast or
    /// broadcast.
    fn ipv4(&mut self, value: &Spanned<Value>, field: &str) -> Checked<Ipv4Addr> {
        let text = self.string(
            value,
            field,
            &format!("an IPv4 address such as \"{ADDRESS_EXAMPLE}\""),
        )?;
        ipv4_address(text).map_err(|message| self.report(Some(value.span()), field, message))
    }

    /// A command run with `sh -c`.
    fn command(&mut self, value: &Spanned<Value>, field: &str) -> Checked<String> {
        let text = self.string(value, field, "a command for sh -c, as a string")?;
        let problem = if text.trim().is_empty() {
            "empty: give a command for sh -c, or remove the key".to_owned()
        } else if text.len() > MAX_COMMAND_LEN {
            format!(
                "command is {} bytes long: at most {MAX_COMMAND_LEN}; put a longer one in a script",
                text.len()
            )
        } else if text.contains('\0') {
            "contains a NUL character, which no command line can hold".to_owned()
        } else {
            return Ok(text.to_owned());
        };
        Err(self.report(Some(value.span()), field, problem))
    }

    fn services(
        &mut self,
        raw: Option<&Spanned<Tables<RawService>>>,
        dataplane: &DataplaneDraft,
    ) -> (Checked<Vec<ServiceConfig>>, KnownServices) {
        let list = match raw {
            Some(list) if !list.get_ref().is_empty() => list,
            other => {
                let message = "no services: add at least one [[service]] with a name, a listen \
                               address and at least one [[service.backend]]";
                let reported = self.report(other.map(Spanned::span), "service", message);
                let known = KnownServices {
                    names: HashSet::new(),
                    listing: String::new(),
                    unnamed: None,
                };
                return (Err(reported), known);
            }
        };
        let mut total_backends = 0;
        let mut drafts = Vec::with_capacity(list.get_ref().len());
        for (index, raw) in list.get_ref().iter().enumerate() {
            drafts.push(self.service(index, raw, dataplane, &mut total_backends));
        }
        if let Some(extra) = drafts.get(MAX_SERVICES as usize) {
            let message = format!(
                "too many services: {} configured, at most {MAX_SERVICES} (the size of the data \
                 plane's service table)",
                drafts.len()
            );
            self.report(Some(extra.header.clone()), &extra.path, message);
        }
        self.unique_service_names(&drafts);
        self.unique_listens(&drafts);
        // Each SNAT address is compared with every listener; past the limit the file is
        // rejected anyway, and a hostile one must not cost quadratic time.
        let within_limit = &drafts[..drafts.len().min(MAX_SERVICES as usize)];
        self.snat_port_collisions(within_limit, dataplane.snat_ports);
        let known = KnownServices::new(&drafts);
        let services = drafts.into_iter().map(ServiceDraft::build).collect();
        (services, known)
    }

    fn service(
        &mut self,
        index: usize,
        raw: &Spanned<Table<RawService>>,
        dataplane: &DataplaneDraft,
        total_backends: &mut usize,
    ) -> ServiceDraft {
        let header = raw.span();
        let raw: &RawService = raw.get_ref();
        let path = locate::element("service", leaf_str(&raw.name), index);
        let field = |key: &str| format!("{path}.{key}");

        let name = self.name(&raw.name, &header, &field("name"));
        let what = format!(
            "the address and port clients connect to, such as listen = \"{LISTEN_EXAMPLE}\""
        );
        let listen = self
            .required(&raw.listen, Some(header.clone()), &field("listen"), &what)
            .and_then(|value| self.socket_addr(value, &field("listen"), LISTEN_EXAMPLE));
        let protocol = self.choice(
            &raw.protocol,
            &field("protocol"),
            &Protocol::ALL,
            Protocol::as_str,
        );
        let scheduler = self.choice(
            &raw.scheduler,
            &field("scheduler"),
            &Scheduler::ALL,
            Scheduler::as_str,
        );
        let snat = match (&raw.snat_address, &dataplane.snat) {
            (Some(value), _) => self.snat(value, &field("snat_address")),
            (None, Ok(Some(snat))) => Ok(snat.clone()),
            (None, Ok(None)) => {
                let message = format!("no SNAT address: {SNAT_HELP}");
                Err(self.report(Some(header.clone()), &field("snat_address"), message))
            }
            // An invalid dataplane.snat_address has been reported where it is.
            (None, Err(reported)) => Err(*reported),
        };
        let on_backend_down = self.choice(
            &raw.on_backend_down,
            &field("on_backend_down"),
            &DownPolicy::ALL,
            DownPolicy::as_str,
        );
        let (max_connections, send_proxy_v2) = self.proxy_options(raw, &path, dataplane, &protocol);
        let role = self.service_role(raw, &path, &on_backend_down);
        let check_layer = self.check_layer(raw.check.as_ref(), field("check"), None);
        // An invalid protocol has been reported; its checks are judged as a TCP service's.
        let context = CheckContext {
            protocol: protocol.unwrap_or(Protocol::Tcp),
            max_lag: role.max_lag,
        };
        let check = check::resolve(&[&check_layer], context);
        let backends = self.backends(&path, raw, &header, &check_layer, context, total_backends);
        self.role_checks(raw, &path, &role.role, &backends);
        ServiceDraft {
            path,
            header,
            name,
            listen,
            protocol,
            scheduler,
            snat,
            on_backend_down,
            max_connections,
            send_proxy_v2,
            role,
            check,
            backends,
        }
    }

    fn name(&mut self, leaf: &Leaf, table: &Range<usize>, field: &str) -> Checked<Spanned<String>> {
        let value = self.required(
            leaf,
            Some(table.clone()),
            field,
            &format!("give it a name of {NAME_RULE}"),
        )?;
        let text = self.string(value, field, &format!("a name of {NAME_RULE}"))?;
        if is_valid_name(text) {
            Ok(Spanned::new(value.span(), text.to_owned()))
        } else {
            let message = format!("invalid name {text:?}: use {NAME_RULE}");
            Err(self.report(Some(value.span()), field, message))
        }
    }

    fn socket_addr(
        &mut self,
        value: &Spanned<Value>,
        field: &str,
        example: SocketAddrV4,
    ) -> Checked<Spanned<SocketAddrV4>> {
        let text = self.string(
            value,
            field,
            &format!("an IPv4:port address such as \"{example}\""),
        )?;
        match socket_addr(text, example) {
            Ok(address) => Ok(Spanned::new(value.span(), address)),
            Err(message) => Err(self.report(Some(value.span()), field, message)),
        }
    }

    fn backends(
        &mut self,
        service: &str,
        raw: &RawService,
        header: &Range<usize>,
        service_check: &CheckLayer,
        context: CheckContext,
        total: &mut usize,
    ) -> Checked<Vec<BackendConfig>> {
        let array = format!("{service}.backend");
        let list = match &raw.backend {
            Some(list) if !list.get_ref().is_empty() => list,
            other => {
                let message = format!(
                    "no backends: add at least one [[service.backend]] with a name and an \
                     address, such as address = \"{BACKEND_EXAMPLE}\""
                );
                let span = other.as_ref().map_or_else(|| header.clone(), Spanned::span);
                return Err(self.report(Some(span), &array, message));
            }
        };
        // Earlier backends by name and by address, with the line they are on.
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<SocketAddrV4, (String, usize)> = HashMap::new();
        let mut backends = Vec::with_capacity(list.get_ref().len());
        for (index, raw) in list.get_ref().iter().enumerate() {
            let table = raw.span();
            let raw: &RawBackend = raw.get_ref();
            let path = locate::element(&array, leaf_str(&raw.name), index);
            *total += 1;
            if index == RING_SLOTS {
                let message = format!(
                    "too many backends in one service: more than {RING_SLOTS} (the length of \
                     the data plane's schedule); split the pool over two services"
                );
                self.report(Some(table.clone()), &path, message);
            }
            if *total == MAX_BACKENDS as usize + 1 {
                let message = format!(
                    "too many backends: more than {MAX_BACKENDS} over all services (the size of \
                     the data plane's backend table)"
                );
                self.report(Some(table.clone()), &path, message);
            }
            let name_field = format!("{path}.name");
            let name = self.name(&raw.name, &table, &name_field);
            if let Ok(name) = &name {
                match names.entry(name.get_ref().clone()) {
                    Entry::Vacant(entry) => {
                        entry.insert(self.line(&name.span()));
                    }
                    Entry::Occupied(entry) => {
                        let message = format!(
                            "{:?} is already the name of the backend on line {}: backend names \
                             must be unique within a service",
                            name.get_ref(),
                            entry.get()
                        );
                        self.report(Some(name.span()), &name_field, message);
                    }
                }
            }
            let address_field = format!("{path}.address");
            let what =
                format!("where the backend listens, such as address = \"{BACKEND_EXAMPLE}\"");
            let address = self
                .required(&raw.address, Some(table), &address_field, &what)
                .and_then(|value| self.socket_addr(value, &address_field, BACKEND_EXAMPLE));
            if let Ok(address) = &address {
                match addresses.entry(*address.get_ref()) {
                    Entry::Vacant(entry) => {
                        entry.insert((path.clone(), self.line(&address.span())));
                    }
                    Entry::Occupied(entry) => {
                        let (first, line) = entry.get();
                        let message = format!(
                            "{} is already the address of {first} (line {line}): list each backend \
                             once per service",
                            address.get_ref()
                        );
                        self.report(Some(address.span()), &address_field, message);
                    }
                }
            }
            let weight = self.optional_number(
                &raw.weight,
                &format!("{path}.weight"),
                WEIGHTS,
                "a whole number",
                DEFAULT_WEIGHT,
            );
            let backup = self.boolean(&raw.backup, &format!("{path}.backup"), false);
            let check = match &raw.check {
                Some(own) => {
                    let layer =
                        self.check_layer(Some(own), format!("{path}.check"), Some(service_check));
                    check::resolve(&[&layer, service_check], context)
                }
                None => check::resolve(&[service_check], context),
            };
            backends.push(
                BackendDraft {
                    name,
                    address,
                    weight,
                    backup,
                    check,
                }
                .build(),
            );
        }
        backends.into_iter().collect()
    }

    fn unique_service_names(&mut self, drafts: &[ServiceDraft]) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for draft in drafts {
            let Ok(name) = &draft.name else { continue };
            match seen.entry(name.get_ref()) {
                Entry::Vacant(entry) => {
                    entry.insert(self.line(&name.span()));
                }
                Entry::Occupied(entry) => {
                    let message = format!(
                        "{:?} is already the name of the service on line {}: service names must \
                         be unique",
                        name.get_ref(),
                        entry.get()
                    );
                    self.report(Some(name.span()), &format!("{}.name", draft.path), message);
                }
            }
        }
    }

    fn unique_listens(&mut self, drafts: &[ServiceDraft]) {
        let mut seen: HashMap<(SocketAddrV4, Protocol), (&str, usize)> = HashMap::new();
        for draft in drafts {
            let (Ok(listen), Ok(protocol)) = (&draft.listen, draft.protocol) else {
                continue;
            };
            match seen.entry((*listen.get_ref(), protocol)) {
                Entry::Vacant(entry) => {
                    entry.insert((&draft.path, self.line(&listen.span())));
                }
                Entry::Occupied(entry) => {
                    let (first, line) = entry.get();
                    let message = format!(
                        "{}/{protocol} is already the listen address of {first} (line {line}): \
                         each service needs its own address, port and protocol",
                        listen.get_ref()
                    );
                    self.report(
                        Some(listen.span()),
                        &format!("{}.listen", draft.path),
                        message,
                    );
                }
            }
        }
    }

    /// Replies from backends come back to the SNAT address at a port from `snat_ports`. If a
    /// service listens there, the data plane would take those replies for new clients.
    fn snat_port_collisions(&mut self, drafts: &[ServiceDraft], snat_ports: Checked<PortRange>) {
        let Ok(snat_ports) = snat_ports else { return };
        let mut listeners: HashMap<(Ipv4Addr, Protocol), Vec<&ServiceDraft>> = HashMap::new();
        for draft in drafts {
            if let (Ok(listen), Ok(protocol)) = (&draft.listen, draft.protocol)
                && snat_ports.contains(listen.get_ref().port())
            {
                listeners
                    .entry((*listen.get_ref().ip(), protocol))
                    .or_default()
                    .push(draft);
            }
        }
        // One problem per place a SNAT address is set (and protocol), however many services
        // share it: the fix is made there or in snat_ports.
        let mut checked = HashSet::new();
        for draft in drafts {
            let (Ok(snat), Ok(protocol)) = (&draft.snat, draft.protocol) else {
                continue;
            };
            if !checked.insert((snat.span.start, protocol)) {
                continue;
            }
            let Some(colliding) = listeners.get(&(snat.address, protocol)) else {
                continue;
            };
            let mut services = Vec::new();
            let mut ports = Vec::new();
            for listener in colliding {
                if let Ok(listen) = &listener.listen {
                    let line = self.line(&listen.span());
                    services.push(format!(
                        "{} ({}/{protocol}, line {line})",
                        listener.path,
                        listen.get_ref()
                    ));
                    ports.push(listen.get_ref().port().to_string());
                }
            }
            let message = format!(
                "SNAT address {} is also the listen address of {}, and dataplane.snat_ports \
                 {snat_ports} includes {} {}: replies from backends to {} would be mistaken for \
                 client traffic; narrow dataplane.snat_ports to leave out {}, or use a SNAT \
                 address no {protocol} service listens on",
                snat.address,
                services.join(" and "),
                if ports.len() == 1 { "port" } else { "ports" },
                ports.join(", "),
                if ports.len() == 1 {
                    "that port"
                } else {
                    "those ports"
                },
                ports.join(", "),
            );
            self.report(Some(snat.span.clone()), &snat.field, message);
        }
    }
}

/// The string in `leaf`, if it holds one; for naming a table before it is checked.
fn leaf_str(leaf: &Leaf) -> Option<&str> {
    leaf.as_ref().and_then(|value| value.get_ref().as_str())
}

/// How a value of the wrong type is shown in a problem.
fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => format!("the string {text:?}"),
        Value::Integer(n) => format!("the number {n}"),
        Value::Float(x) => format!("the number {x}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(datetime) => format!("the date-time {datetime}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// Why `name` cannot be a Linux interface name, if it cannot (the kernel's `dev_valid_name`).
fn interface_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("empty interface name".to_owned())
    } else if name.len() > MAX_INTERFACE_NAME_LEN {
        Some(format!(
            "interface name {name:?} is {} bytes long: Linux allows at most {MAX_INTERFACE_NAME_LEN}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some(format!("{name:?} cannot be a Linux interface name"))
    } else {
        name.chars()
            .find(|&c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
            .map(|c| {
                format!(
                    "interface name {name:?} contains {c:?}: Linux interface names cannot contain \
                     '/', ':', whitespace or control characters"
                )
            })
    }
}

/// Addresses that cannot be a VIP, a backend or a SNAT source.
fn check_unicast(address: Ipv4Addr) -> Result<(), String> {
    let kind = if address.is_unspecified() {
        "the unspecified address"
    } else if address.is_loopback() {
        "a loopback address"
    } else if address.is_multicast() {
        "a multicast address"
    } else if address.is_broadcast() {
        "the broadcast address"
    } else {
        return Ok(());
    };
    Err(format!("{address} is {kind}: {UNICAST_RULE}"))
}

/// What [`Checker::path`] accepts.
struct PathRule {
    default: &'static str,
    /// What the path names, for "give {what}".
    what: &'static str,
    max_len: usize,
    /// Why `max_len`, appended to "at most {max_len}".
    why_max: &'static str,
    /// Whether `..` may appear.
    parent_allowed: bool,
}

/// An IPv4 address that may be a backend's.
fn ipv4_address(text: &str) -> Result<Ipv4Addr, String> {
    match text.parse::<Ipv4Addr>() {
        Ok(address) => check_unicast(address).map(|()| address),
        Err(_) if text.parse::<SocketAddrV4>().is_ok() => Err(format!(
            "{text:?} has a port: expected an address only, such as {ADDRESS_EXAMPLE}"
        )),
        Err(_) if text.parse::<Ipv6Addr>().is_ok() => Err(format!(
            "invalid address {text:?}: IPv6 is not supported yet; expected an IPv4 address such \
             as {ADDRESS_EXAMPLE}"
        )),
        Err(_) => Err(format!(
            "invalid address {text:?}: expected an IPv4 address such as {ADDRESS_EXAMPLE}"
        )),
    }
}

/// An `IPv4:port` address; `example` shapes the suggestion when it is not one.
fn socket_addr(text: &str, example: SocketAddrV4) -> Result<SocketAddrV4, String> {
    if let Ok(address) = text.parse::<SocketAddrV4>() {
        if address.port() == 0 {
            return Err(format!(
                "port 0 in {text:?} is not a port: use 1 to 65535, such as {}:{}",
                address.ip(),
                example.port()
            ));
        }
        check_unicast(*address.ip())?;
        return Ok(address);
    }
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Err(format!(
            "invalid address {text:?}: expected IPv4:port such as {ip}:{}",
            example.port()
        ));
    }
    if let Some((ip, port)) = text.rsplit_once(':')
        && ip.parse::<Ipv4Addr>().is_ok()
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "invalid address {text:?}: port {port} is out of range 1 to 65535"
        ));
    }
    if text
        .parse::<SocketAddr>()
        .is_ok_and(|address| address.is_ipv6())
        || text.parse::<Ipv6Addr>().is_ok()
    {
        return Err(format!(
            "invalid address {text:?}: IPv6 is not supported yet; expected IPv4:port such as {example}"
        ));
    }
    Err(format!(
        "invalid address {text:?}: expected IPv4:port such as {example}"
    ))
}

/// `"MIN-MAX"`, 1 <= MIN <= MAX <= 65535.
fn port_range(text: &str) -> Result<PortRange, String> {
    let rule = "expected \"MIN-MAX\" with 1 <= MIN <= MAX <= 65535, such as \"1024-32767\"";
    // Digits only: no signs or spaces. Too many digits is out of range, not malformed.
    let number = |part: &str| {
        (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u32>().unwrap_or(u32::MAX))
    };
    let Some((Some(min), Some(max))) = text
        .split_once('-')
        .map(|(min, max)| (number(min), number(max)))
    else {
        return Err(format!("invalid port range {text:?}: {rule}"));
    };
    let (Ok(min), Ok(max)) = (u16::try_from(min), u16::try_from(max)) else {
        return Err(format!(
            "invalid port range {text:?}: ports end at 65535; {rule}"
        ));
    };
    if min == 0 {
        Err(format!(
            "invalid port range {text:?}: ports start at 1; {rule}"
        ))
    } else if min > max {
        Err(format!(
            "invalid port range {text:?}: MIN {min} is greater than MAX {max}; {rule}"
        ))
    } else {
        Ok(PortRange { min, max })
    }
}

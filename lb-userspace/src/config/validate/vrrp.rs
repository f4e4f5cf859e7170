//! `[[vrrp]]`: VRRP instances, keepalived's `vrrp_instance` in this file's words, checked
//! instance by instance and across instances (names, virtual router ids per interface and
//! virtual addresses are each in one instance only).

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    net::Ipv4Addr,
    ops::{Range, RangeInclusive},
    time::Duration,
};

use toml::{Spanned, Value};

use super::{
    Checked, Checker, KnownServices, check::FALLS_AND_RISES, check_unicast, describe,
    interface_problem, ipv4_address, leaf_str,
};
use crate::config::{
    NotifyCommands, TrackInterface, TrackScript, TrackService, VirtualAddress, VrrpConfig,
    VrrpVersion, locate,
    raw::{
        Leaf, RawNotify, RawTrackInterface, RawTrackScript, RawTrackService, RawVrrp, Table, Tables,
    },
};

const VIRTUAL_ROUTER_IDS: RangeInclusive<u8> = 1..=255;
const PRIORITIES: RangeInclusive<u8> = 1..=255;
const DEFAULT_PRIORITY: u8 = 100;
const DEFAULT_ADVERT_INTERVAL: Duration = Duration::from_secs(1);
/// keepalived's limit.
const MAX_PREEMPT_DELAY: Duration = Duration::from_secs(1000);
/// What keepalived accepts in one instance's advertisement.
const VIRTUAL_ADDRESSES: RangeInclusive<usize> = 1..=20;
const PREFIX_LENS: RangeInclusive<u8> = 1..=32;
const MAX_AUTH_PASSWORD_LEN: usize = 8;
const GARP_COUNTS: RangeInclusive<u32> = 1..=100;
const DEFAULT_GARP_COUNT: u32 = 3;
const DEFAULT_GARP_INTERVAL: Duration = Duration::from_millis(100);
const TRACK_WEIGHTS: RangeInclusive<i32> = -254..=254;
const DEFAULT_SCRIPT_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_SCRIPT_FALL: u32 = 2;
const DEFAULT_SCRIPT_RISE: u32 = 2;
const WEIGHT_WHAT: &str = "a priority change, negative to lower it (0: FAULT while failing)";
const VIRTUAL_ADDRESS_EXAMPLE: &str = "203.0.113.10/24";

/// What earlier instances claimed, with where, for the rules across instances.
#[derive(Default)]
struct Claimed {
    names: HashMap<String, usize>,
    routers: HashMap<(String, u8), (String, usize)>,
    /// By address: the instance's index, its path and the line of its list.
    addresses: HashMap<Ipv4Addr, (usize, String, usize)>,
}

/// `version`, and how a problem that depends on it names it.
struct Version {
    version: VrrpVersion,
    said: String,
}

impl Checker<'_> {
    pub(super) fn vrrp(
        &mut self,
        raw: Option<&Spanned<Tables<RawVrrp>>>,
        services: &KnownServices,
    ) -> Checked<Vec<VrrpConfig>> {
        let Some(list) = raw else {
            return Ok(Vec::new());
        };
        let mut claimed = Claimed::default();
        let instances: Vec<_> = list
            .get_ref()
            .iter()
            .enumerate()
            .map(|(index, raw)| self.vrrp_instance(index, raw, services, &mut claimed))
            .collect();
        instances.into_iter().collect()
    }

    fn vrrp_instance(
        &mut self,
        index: usize,
        raw: &Spanned<Table<RawVrrp>>,
        services: &KnownServices,
        claimed: &mut Claimed,
    ) -> Checked<VrrpConfig> {
        let header = raw.span();
        let raw: &RawVrrp = raw.get_ref();
        let path = locate::element("vrrp", leaf_str(&raw.name), index);
        let field = |key: &str| format!("{path}.{key}");

        let name = self.name(&raw.name, &header, &field("name"));
        if let Ok(name) = &name {
            match claimed.names.entry(name.get_ref().clone()) {
                Entry::Vacant(entry) => {
                    entry.insert(self.line(&name.span()));
                }
                Entry::Occupied(entry) => {
                    let message = format!(
                        "{:?} is already the name of the VRRP instance on line {}: instance \
                         names must be unique",
                        name.get_ref(),
                        entry.get()
                    );
                    self.report(Some(name.span()), &field("name"), message);
                }
            }
        }
        let interface = self
            .required(
                &raw.interface,
                Some(header.clone()),
                &field("interface"),
                "the interface to advertise on and add the addresses to, such as \
                 interface = \"eth0\"",
            )
            .and_then(|value| self.interface_name(value, &field("interface")));
        let virtual_router_id = self
            .required(
                &raw.virtual_router_id,
                Some(header.clone()),
                &field("virtual_router_id"),
                "the virtual router's id, 1 to 255, the same on every node of the pair, such \
                 as virtual_router_id = 51",
            )
            .and_then(|value| {
                let what = "a virtual router id";
                let id = self.number(
                    value,
                    &field("virtual_router_id"),
                    VIRTUAL_ROUTER_IDS,
                    what,
                    None,
                )?;
                Ok(Spanned::new(value.span(), id))
            });
        if let (Ok(interface), Ok(id)) = (&interface, &virtual_router_id) {
            let line = self.line(&id.span());
            match claimed.routers.entry((interface.clone(), *id.get_ref())) {
                Entry::Vacant(entry) => {
                    entry.insert((path.clone(), line));
                }
                Entry::Occupied(entry) => {
                    let (first, line) = entry.get();
                    let message = format!(
                        "virtual router {} on {interface} is already {first} (line {line}): \
                         each instance on an interface needs its own virtual_router_id",
                        id.get_ref()
                    );
                    self.report(Some(id.span()), &field("virtual_router_id"), message);
                }
            }
        }
        let priority = self.optional_number(
            &raw.priority,
            &field("priority"),
            PRIORITIES,
            "a priority (255: the owner of the addresses)",
            DEFAULT_PRIORITY,
        );
        let version = self.vrrp_version(&raw.version, &field("version"));
        let advert_interval = self.advert_interval(
            &raw.advert_interval,
            &field("advert_interval"),
            version.as_ref().ok(),
        );
        let preempt = self.boolean(&raw.preempt, &field("preempt"), true);
        let preempt_delay =
            self.duration_or_zero(&raw.preempt_delay, &field("preempt_delay"), Duration::ZERO);
        if let (Some(value), Ok(delay)) = (&raw.preempt_delay, &preempt_delay) {
            if *delay > MAX_PREEMPT_DELAY {
                let message = format!(
                    "preempt_delay {delay:?} is too long: at most {MAX_PREEMPT_DELAY:?} \
                     (keepalived's limit)"
                );
                self.report(Some(value.span()), &field("preempt_delay"), message);
            } else if let (Ok(false), Some(preempt)) = (preempt, &raw.preempt) {
                let message = format!(
                    "preempt_delay applies only when preempting, and preempt = false (line {}): \
                     remove preempt_delay, or preempt",
                    self.line(&preempt.span())
                );
                self.report(Some(value.span()), &field("preempt_delay"), message);
            }
        }
        let virtual_addresses = self.virtual_addresses(
            &raw.virtual_addresses,
            &header,
            (index, &path),
            &mut claimed.addresses,
        );
        let unicast_peers = self.unicast_peers(&raw.unicast_peers, &field("unicast_peers"));
        let unicast_source = match &raw.unicast_source {
            None => Ok(None),
            Some(value) => {
                let source = self.ipv4(value, &field("unicast_source"));
                match (&source, &unicast_peers) {
                    (Ok(source), Ok(peers)) if peers.is_empty() => {
                        let message = "unicast_source is used only with unicast_peers: list the \
                                       other nodes' addresses in unicast_peers, or remove \
                                       unicast_source to advertise by multicast to 224.0.0.18";
                        Err(self.report(Some(value.span()), &field("unicast_source"), message))
                    }
                    (Ok(source), Ok(peers)) if peers.contains(source) => {
                        let message = format!(
                            "{source} is also in unicast_peers: the source is this node, the \
                             peers are the others"
                        );
                        Err(self.report(Some(value.span()), &field("unicast_source"), message))
                    }
                    _ => source.map(Some),
                }
            }
        };
        let auth_password = match &raw.auth_password {
            None => Ok(None),
            Some(value) => self
                .auth_password(value, &field("auth_password"), version.as_ref().ok())
                .map(Some),
        };
        let garp_count = self.optional_number(
            &raw.garp_count,
            &field("garp_count"),
            GARP_COUNTS,
            "a number of gratuitous ARPs",
            DEFAULT_GARP_COUNT,
        );
        let garp_interval = self.duration(
            &raw.garp_interval,
            &field("garp_interval"),
            DEFAULT_GARP_INTERVAL,
        );
        let track_services = self.track_services(raw.track_services.as_ref(), &path, services);
        let track_interfaces = self.track_interfaces(raw.track_interfaces.as_ref(), &path);
        let track_scripts = self.track_scripts(raw.track_script.as_ref(), &path);
        let notify = self.notify(raw.notify.as_ref(), &field("notify"));

        Ok(VrrpConfig {
            name: name?.into_inner(),
            interface: interface?,
            virtual_router_id: virtual_router_id?.into_inner(),
            priority: priority?,
            version: version?.version,
            advert_interval: advert_interval?,
            preempt: preempt?,
            preempt_delay: preempt_delay?,
            virtual_addresses: virtual_addresses?,
            unicast_source: unicast_source?,
            unicast_peers: unicast_peers?,
            auth_password: auth_password?,
            garp_count: garp_count?,
            garp_interval: garp_interval?,
            track_services: track_services?,
            track_interfaces: track_interfaces?,
            track_scripts: track_scripts?,
            notify: notify?,
        })
    }

    fn interface_name(&mut self, value: &Spanned<Value>, field: &str) -> Checked<String> {
        let text = self.string(value, field, "an interface name such as \"eth0\"")?;
        match interface_problem(text) {
            None => Ok(text.to_owned()),
            Some(problem) => Err(self.report(Some(value.span()), field, problem)),
        }
    }

    fn vrrp_version(&mut self, leaf: &Leaf, field: &str) -> Checked<Version> {
        let Some(value) = leaf else {
            return Ok(Version {
                version: VrrpVersion::default(),
                said: "version 3 (the default)".to_owned(),
            });
        };
        let allowed = "allowed 3 (RFC 5798, the default) or 2 (RFC 3768, keepalived's default)";
        let message = match value.get_ref() {
            Value::Integer(n) => {
                match VrrpVersion::ALL
                    .into_iter()
                    .find(|version| i64::from(version.number()) == *n)
                {
                    Some(version) => {
                        return Ok(Version {
                            version,
                            said: format!("version {n} (line {})", self.line(&value.span())),
                        });
                    }
                    None => format!("invalid version {n}: {allowed}"),
                }
            }
            other => format!(
                "expected the number 3 or 2, found {}: {allowed}",
                describe(other)
            ),
        };
        Err(self.report(Some(value.span()), field, message))
    }

    /// Both versions carry the interval in a field of their own unit: VRRPv3 12 bits of
    /// centiseconds, VRRPv2 8 bits of seconds.
    fn advert_interval(
        &mut self,
        leaf: &Leaf,
        field: &str,
        version: Option<&Version>,
    ) -> Checked<Duration> {
        let interval = self.duration(leaf, field, DEFAULT_ADVERT_INTERVAL)?;
        let (Some(value), Some(version)) = (leaf, version) else {
            return Ok(interval);
        };
        let millis = interval.as_millis();
        let rule = match version.version {
            VrrpVersion::V3 if millis % 10 != 0 || !(10..=40_950).contains(&millis) => {
                "VRRPv3 advertises in whole centiseconds, from \"10ms\" to \"40950ms\" (40.95s), \
                 such as \"1s\" or \"100ms\""
            }
            VrrpVersion::V2 if millis % 1000 != 0 || !(1000..=255_000).contains(&millis) => {
                "VRRPv2 advertises in whole seconds, from \"1s\" to \"255s\""
            }
            _ => return Ok(interval),
        };
        let message = format!(
            "{interval:?} is not an advertisement interval of {}: {rule}",
            version.said
        );
        Err(self.report(Some(value.span()), field, message))
    }

    fn auth_password(
        &mut self,
        value: &Spanned<Value>,
        field: &str,
        version: Option<&Version>,
    ) -> Checked<String> {
        if let Some(Version {
            version: VrrpVersion::V3,
            said,
        }) = version
        {
            let message = format!(
                "VRRPv3 has no authentication (RFC 5798 removed it), and this instance speaks \
                 {said}: remove auth_password, or set version = 2 to interoperate with a \
                 keepalived peer that uses auth_type PASS"
            );
            return Err(self.report(Some(value.span()), field, message));
        }
        let text = self.string(value, field, "a password of 1 to 8 characters")?;
        let rule = "1 to 8 printable ASCII characters (keepalived's auth_pass; sent in clear)";
        let problem = if text.is_empty() || text.len() > MAX_AUTH_PASSWORD_LEN {
            format!("password is {} bytes long: use {rule}", text.len())
        } else if text.bytes().any(|b| !(b' '..=b'~').contains(&b)) {
            format!("password contains a character outside printable ASCII: use {rule}")
        } else {
            return Ok(text.to_owned());
        };
        Err(self.report(Some(value.span()), field, problem))
    }

    /// `virtual_addresses`: each `a.b.c.d/len` or `a.b.c.d`, in this instance only.
    fn virtual_addresses(
        &mut self,
        leaf: &Leaf,
        header: &Range<usize>,
        (instance, path): (usize, &str),
        claimed: &mut HashMap<Ipv4Addr, (usize, String, usize)>,
    ) -> Checked<Vec<VirtualAddress>> {
        let field = format!("{path}.virtual_addresses");
        let what = format!(
            "the addresses the master holds, such as virtual_addresses = \
             [\"{VIRTUAL_ADDRESS_EXAMPLE}\"]"
        );
        let value = self.required(leaf, Some(header.clone()), &field, &what)?;
        let span = value.span();
        let items = match value.get_ref() {
            Value::Array(items) if VIRTUAL_ADDRESSES.contains(&items.len()) => items,
            Value::Array(items) => {
                let message = format!(
                    "{} addresses: list {} to {} per instance (more need another instance)",
                    items.len(),
                    VIRTUAL_ADDRESSES.start(),
                    VIRTUAL_ADDRESSES.end()
                );
                return Err(self.report(Some(span), &field, message));
            }
            other => {
                let message = format!(
                    "expected an array of addresses such as [\"{VIRTUAL_ADDRESS_EXAMPLE}\"], \
                     found {}",
                    describe(other)
                );
                return Err(self.report(Some(span), &field, message));
            }
        };
        let line = self.line(&span);
        let mut addresses = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let element = format!("{field}[{index}]");
            let checked = match item {
                Value::String(text) => virtual_address(text),
                other => Err(format!(
                    "expected an address such as \"{VIRTUAL_ADDRESS_EXAMPLE}\" or \
                     \"203.0.113.10\" (/32), found {}",
                    describe(other)
                )),
            };
            let address = checked.and_then(|address| match claimed.entry(address.address) {
                Entry::Vacant(entry) => {
                    entry.insert((instance, path.to_owned(), line));
                    Ok(address)
                }
                Entry::Occupied(entry) if entry.get().0 == instance => Err(format!(
                    "{} is listed twice: list each address once",
                    address.address
                )),
                Entry::Occupied(entry) => {
                    let (_, first, line) = entry.get();
                    Err(format!(
                        "{} is already a virtual address of {first} (line {line}): an \
                             address belongs to one instance only",
                        address.address
                    ))
                }
            });
            addresses.push(
                address.map_err(|message| self.report(Some(span.clone()), &element, message)),
            );
        }
        addresses.into_iter().collect()
    }

    fn unicast_peers(&mut self, leaf: &Leaf, field: &str) -> Checked<Vec<Ipv4Addr>> {
        let Some(value) = leaf else {
            return Ok(Vec::new());
        };
        let span = value.span();
        let Value::Array(items) = value.get_ref() else {
            let message = format!(
                "expected an array of the other nodes' addresses such as [\"10.0.0.3\"], found \
                 {}",
                describe(value.get_ref())
            );
            return Err(self.report(Some(span), field, message));
        };
        let mut seen = HashSet::new();
        let mut peers = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let checked = match item {
                Value::String(text) => ipv4_address(text).and_then(|peer| {
                    if seen.insert(peer) {
                        Ok(peer)
                    } else {
                        Err(format!("{peer} is listed twice: list each peer once"))
                    }
                }),
                other => Err(format!(
                    "expected a peer's address such as \"10.0.0.3\", found {}",
                    describe(other)
                )),
            };
            let element = format!("{field}[{index}]");
            peers.push(
                checked.map_err(|message| self.report(Some(span.clone()), &element, message)),
            );
        }
        peers.into_iter().collect()
    }

    fn track_weight(&mut self, leaf: &Leaf, field: &str) -> Checked<i32> {
        self.optional_number(leaf, field, TRACK_WEIGHTS, WEIGHT_WHAT, 0)
    }

    fn track_services(
        &mut self,
        raw: Option<&Spanned<Tables<RawTrackService>>>,
        path: &str,
        services: &KnownServices,
    ) -> Checked<Vec<TrackService>> {
        let Some(list) = raw else {
            return Ok(Vec::new());
        };
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut tracks = Vec::with_capacity(list.get_ref().len());
        for (index, raw) in list.get_ref().iter().enumerate() {
            let table = raw.span();
            let raw: &RawTrackService = raw.get_ref();
            let element = format!("{path}.track_services[{index}]");
            let field = format!("{element}.service");
            let service = self
                .required(
                    &raw.service,
                    Some(table),
                    &field,
                    "the name of the service to track, such as service = \"web\"",
                )
                .and_then(|value| {
                    let name = self.string(value, &field, "the name of a service")?;
                    let line = self.line(&value.span());
                    let problem = if !services.names.contains(name) {
                        if let Some(reported) = services.unnamed {
                            // Perhaps the service whose name was reported as invalid.
                            return Err(reported);
                        }
                        format!(
                            "no service is named {name:?}: the services are {}",
                            services.listing
                        )
                    } else if let Some(first) = seen.get(name) {
                        format!(
                            "{name:?} is already tracked on line {first}: track each service once"
                        )
                    } else {
                        seen.insert(name.to_owned(), line);
                        return Ok(name.to_owned());
                    };
                    Err(self.report(Some(value.span()), &field, problem))
                });
            let weight = self.track_weight(&raw.weight, &format!("{element}.weight"));
            tracks.push(service.and_then(|service| {
                Ok(TrackService {
                    service,
                    weight: weight?,
                })
            }));
        }
        tracks.into_iter().collect()
    }

    fn track_interfaces(
        &mut self,
        raw: Option<&Spanned<Tables<RawTrackInterface>>>,
        path: &str,
    ) -> Checked<Vec<TrackInterface>> {
        let Some(list) = raw else {
            return Ok(Vec::new());
        };
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut tracks = Vec::with_capacity(list.get_ref().len());
        for (index, raw) in list.get_ref().iter().enumerate() {
            let table = raw.span();
            let raw: &RawTrackInterface = raw.get_ref();
            let element = format!("{path}.track_interfaces[{index}]");
            let field = format!("{element}.interface");
            let interface = self
                .required(
                    &raw.interface,
                    Some(table),
                    &field,
                    "the interface to track, such as interface = \"eth1\"",
                )
                .and_then(|value| {
                    let interface = self.interface_name(value, &field)?;
                    match seen.entry(interface) {
                        Entry::Vacant(entry) => {
                            let interface = entry.key().clone();
                            entry.insert(self.line(&value.span()));
                            Ok(interface)
                        }
                        Entry::Occupied(entry) => {
                            let message = format!(
                                "{:?} is already tracked on line {}: track each interface once",
                                entry.key(),
                                entry.get()
                            );
                            Err(self.report(Some(value.span()), &field, message))
                        }
                    }
                });
            let weight = self.track_weight(&raw.weight, &format!("{element}.weight"));
            tracks.push(interface.and_then(|interface| {
                Ok(TrackInterface {
                    interface,
                    weight: weight?,
                })
            }));
        }
        tracks.into_iter().collect()
    }

    fn track_scripts(
        &mut self,
        raw: Option<&Spanned<Tables<RawTrackScript>>>,
        path: &str,
    ) -> Checked<Vec<TrackScript>> {
        let Some(list) = raw else {
            return Ok(Vec::new());
        };
        let array = format!("{path}.track_script");
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut scripts = Vec::with_capacity(list.get_ref().len());
        for (index, raw) in list.get_ref().iter().enumerate() {
            let table = raw.span();
            let raw: &RawTrackScript = raw.get_ref();
            let element = locate::element(&array, leaf_str(&raw.name), index);
            let field = |key: &str| format!("{element}.{key}");
            let name = self.name(&raw.name, &table, &field("name"));
            if let Ok(name) = &name {
                match names.entry(name.get_ref().clone()) {
                    Entry::Vacant(entry) => {
                        entry.insert(self.line(&name.span()));
                    }
                    Entry::Occupied(entry) => {
                        let message = format!(
                            "{:?} is already the name of the script on line {}: script names \
                             must be unique within an instance",
                            name.get_ref(),
                            entry.get()
                        );
                        self.report(Some(name.span()), &field("name"), message);
                    }
                }
            }
            let command = self
                .required(
                    &raw.command,
                    Some(table),
                    &field("command"),
                    "the command to run with sh -c, whose exit status 0 is success, such as \
                     command = \"test ! -e /etc/gerbang/maintenance\"",
                )
                .and_then(|value| self.command(value, &field("command")));
            let interval =
                self.duration(&raw.interval, &field("interval"), DEFAULT_SCRIPT_INTERVAL);
            let timeout = match (&raw.timeout, interval) {
                (Some(_), _) | (None, Err(_)) => {
                    self.duration(&raw.timeout, &field("timeout"), DEFAULT_SCRIPT_INTERVAL)
                }
                (None, Ok(interval)) => Ok(interval),
            };
            let fall = self.optional_number(
                &raw.fall,
                &field("fall"),
                FALLS_AND_RISES,
                "a number of runs",
                DEFAULT_SCRIPT_FALL,
            );
            let rise = self.optional_number(
                &raw.rise,
                &field("rise"),
                FALLS_AND_RISES,
                "a number of runs",
                DEFAULT_SCRIPT_RISE,
            );
            let weight = self.track_weight(&raw.weight, &field("weight"));
            scripts.push(name.and_then(|name| {
                Ok(TrackScript {
                    name: name.into_inner(),
                    command: command?,
                    interval: interval?,
                    timeout: timeout?,
                    fall: fall?,
                    rise: rise?,
                    weight: weight?,
                })
            }));
        }
        scripts.into_iter().collect()
    }

    fn notify(
        &mut self,
        raw: Option<&Spanned<Table<RawNotify>>>,
        path: &str,
    ) -> Checked<NotifyCommands> {
        let absent = RawNotify::default();
        let table = raw.map_or(&absent, |table| &**table.get_ref());
        let mut command = |leaf: &Leaf, key: &str| -> Checked<Option<String>> {
            leaf.as_ref()
                .map(|value| self.command(value, &format!("{path}.{key}")))
                .transpose()
        };
        let master = command(&table.master, "master");
        let backup = command(&table.backup, "backup");
        let fault = command(&table.fault, "fault");
        let stop = command(&table.stop, "stop");
        Ok(NotifyCommands {
            master: master?,
            backup: backup?,
            fault: fault?,
            stop: stop?,
        })
    }
}

/// `"a.b.c.d/len"` or `"a.b.c.d"` (a /32), an address a VIP could have.
fn virtual_address(text: &str) -> Result<VirtualAddress, String> {
    let rule = format!(
        "expected an IPv4 address with an optional prefix length from 1 to 32, such as \
         \"{VIRTUAL_ADDRESS_EXAMPLE}\" or \"203.0.113.10\" (/32)"
    );
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let Ok(address) = address.parse::<Ipv4Addr>() else {
        return Err(format!("invalid address {text:?}: {rule}"));
    };
    let prefix_len = match prefix {
        None => 32,
        Some(prefix) => match prefix.parse::<u8>() {
            Ok(len) if PREFIX_LENS.contains(&len) && prefix.bytes().all(|b| b.is_ascii_digit()) => {
                len
            }
            _ => return Err(format!("invalid prefix length in {text:?}: {rule}")),
        },
    };
    check_unicast(address)?;
    if prefix_len <= 30 {
        let host_bits = u32::MAX >> prefix_len;
        let host = u32::from(address) & host_bits;
        if host == 0 || host == host_bits {
            let which = if host == 0 { "network" } else { "broadcast" };
            return Err(format!(
                "{address} is the {which} address of its /{prefix_len}: give the address the \
                 master should answer on, such as \"{VIRTUAL_ADDRESS_EXAMPLE}\""
            ));
        }
    }
    Ok(VirtualAddress {
        address,
        prefix_len,
    })
}

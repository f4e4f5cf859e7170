//! The status as gerbang shows it: one [`StatusView`] built from the controller's
//! [`Status`], behind the JSON API, the status page, `gerbang status` and `/metrics`, so
//! that all four always agree.
//!
//! It is built field by field from what an operator may see: names, addresses, states,
//! counters. Nothing is copied wholesale from the configuration, so a secret in it (a VRRP
//! `auth_password`) has no way in.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::TrafficCounters;
use serde::{Deserialize, Serialize};

use crate::{
    config::{CheckKind, ServiceConfig, VrrpConfig},
    control::admin_word,
    controller::Status,
    dataplane::{BackendState, ServicePlan},
    health::BackendHealth,
    vrrp::{VrrpState, VrrpStatus},
};

/// Everything the status page and `gerbang status` show. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub started: u64,
    pub uptime_seconds: u64,
    pub dataplane: DataplaneView,
    pub flows: FlowsView,
    pub updates: UpdatesView,
    /// Every VRRP instance, in configuration order.
    pub vrrp: Vec<VrrpView>,
    /// Every configured service, live here or not, in configuration order.
    pub services: Vec<ServiceView>,
    /// Packets the XDP program counted per event (`lb_common::Event` names), every event
    /// listed; they add up to every packet it saw.
    pub events: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataplaneView {
    /// `"xdp"` or `"userspace"`.
    pub mode: String,
    pub attachments: Vec<AttachmentView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachmentView {
    pub interface: String,
    /// `"native"`, `"generic"` or `"taken over"`.
    pub mode: String,
}

/// The connection table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowsView {
    /// With XDP, live flows at the last sweep of the connection table (closing ones
    /// included); the userspace proxy, which has no such table, counts its open
    /// connections and UDP sessions (each service's UDP sessions are bounded by
    /// `table_size`).
    pub live: u64,
    pub table_size: u32,
}

/// How long applying a plan to the data path took, as a cumulative histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdatesView {
    pub count: u64,
    pub sum_seconds: f64,
    pub max_seconds: f64,
    /// (upper bound in seconds, updates that took at most that), ascending.
    pub buckets: Vec<(f64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpView {
    pub name: String,
    pub interface: String,
    pub virtual_router_id: u8,
    /// keepalived's words: `"INIT"`, `"BACKUP"`, `"MASTER"` or `"FAULT"`.
    pub state: String,
    pub priority: u8,
    /// As advertised, moved by tracking.
    pub effective_priority: u8,
    /// The master's address when known: ours while master.
    pub master: Option<Ipv4Addr>,
    pub transitions: u64,
    /// When the current state was entered.
    pub since: u64,
    /// `"IPv4/len"`, held here while master.
    pub virtual_addresses: Vec<String>,
    pub adverts_received: u64,
    pub adverts_sent: u64,
    pub priority_zero_received: u64,
    pub priority_zero_sent: u64,
    pub send_errors: u64,
    /// Packets dropped per reason, every reason listed.
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub listen: String,
    pub protocol: String,
    /// Whether this node forwards it now: false while a VRRP peer holds its VIP.
    pub live: bool,
    /// The VRRP instance managing its VIP, if one does.
    pub vrrp: Option<VipHolder>,
    /// `"any"`, or `"primary"` / `"replica"` for the services of a replicated database.
    #[serde(default)]
    pub role: String,
    /// Why a `role = "primary"` service refuses new flows although backends are up: more
    /// than one claims to be the primary.
    #[serde(default)]
    pub primary_conflict: Option<String>,
    /// Backends taking new flows.
    pub active_backends: usize,
    /// HAProxy's current sessions: with XDP, the service's open flows (TCP before a RST or
    /// FINs both ways, UDP while live) at the last sweep of the connection table; in the
    /// userspace proxy, its open connections and UDP sessions now. 0 while not live here.
    #[serde(default)]
    pub current_sessions: u64,
    pub traffic: TrafficView,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipHolder {
    pub instance: String,
    /// The instance's state here: `"MASTER"` means this node holds the VIP.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendView {
    pub name: String,
    pub address: String,
    pub weight: u32,
    pub backup: bool,
    /// `"active"` (takes new flows), `"standby"` (keeps its flows, takes no new ones: a
    /// backup, drained, weight 0, or its service is not live here) or `"down"` (failed its
    /// checks).
    pub state: String,
    /// `"ready"`, `"drain"` or `"maint"`, as the operator set it.
    pub admin: String,
    pub check: CheckView,
    /// As [`ServiceView::current_sessions`], of the flows pinned to this backend (in the
    /// proxy: established with it).
    #[serde(default)]
    pub current_sessions: u64,
    pub traffic: TrafficView,
    /// For a database with a role check: `"primary"`, `"replica"` or `"galera member"`;
    /// `null` for other checks and until the first answer.
    pub db_role: Option<String>,
    /// A replica's lag at the last probe that told it.
    pub replication_lag_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckView {
    /// The check's `type`: `"tcp"`, `"http"`, `"none"`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The verdict; `null` before the first probe answered.
    pub up: Option<bool>,
    /// The last probe as HAProxy's `check_status` says it (`L4OK`, `L7STS`, ...); `null`
    /// for a backend without checks.
    pub status: Option<String>,
    /// The last probe's detail (`"HTTP 200"`) or why it failed (`"connection refused"`).
    pub last_result: Option<String>,
    pub last_duration_seconds: Option<f64>,
    pub last_checked: Option<u64>,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub checks: u64,
    pub failures: u64,
}

/// Traffic as the data plane counted it. "in" is from clients towards backends, "out"
/// back to clients, as in HAProxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficView {
    pub new_flows: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub drops: u64,
}

impl StatusView {
    pub fn new(status: &Status) -> StatusView {
        let (started, now) = (unix(status.started), unix(SystemTime::now()));
        StatusView {
            version: status.version.to_owned(),
            started,
            uptime_seconds: now.saturating_sub(started),
            dataplane: DataplaneView {
                mode: status.dataplane.to_owned(),
                attachments: status
                    .attachments
                    .iter()
                    .map(|(interface, mode)| AttachmentView {
                        interface: interface.clone(),
                        mode: (*mode).to_owned(),
                    })
                    .collect(),
            },
            flows: FlowsView {
                live: if status.dataplane == "userspace" {
                    status
                        .traffic
                        .services
                        .iter()
                        .map(|s| s.current_sessions)
                        .sum()
                } else {
                    status.flows.live as u64
                },
                table_size: status.flow_table_size,
            },
            updates: UpdatesView {
                count: status.updates.count,
                sum_seconds: status.updates.sum.as_secs_f64(),
                max_seconds: status.updates.max.as_secs_f64(),
                buckets: crate::controller::UPDATE_BUCKETS
                    .into_iter()
                    .zip(
                        status
                            .updates
                            .buckets
                            .iter()
                            .copied()
                            .chain(std::iter::repeat(0)),
                    )
                    .collect(),
            },
            vrrp: status
                .config
                .vrrp
                .iter()
                .zip(&status.vrrp)
                .map(|(config, now)| vrrp_view(config, now))
                .collect(),
            services: status
                .config
                .services
                .iter()
                .map(|service| service_view(status, service))
                .collect(),
            events: status
                .traffic
                .events
                .iter()
                .map(|(event, packets)| (event.name().to_owned(), *packets))
                .collect(),
        }
    }

    /// One line of JSON (the control socket's answer is one line).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a status view always serializes")
    }

    pub fn from_json(text: &str) -> serde_json::Result<StatusView> {
        serde_json::from_str(text)
    }
}

fn vrrp_view(config: &VrrpConfig, status: &VrrpStatus) -> VrrpView {
    let counters = &status.counters;
    VrrpView {
        name: status.name.clone(),
        interface: status.interface.clone(),
        virtual_router_id: status.virtual_router_id,
        state: status.state.as_str().to_owned(),
        priority: status.priority,
        effective_priority: status.effective_priority,
        master: status.master,
        transitions: status.transitions,
        since: unix(status.since),
        virtual_addresses: config
            .virtual_addresses
            .iter()
            .map(ToString::to_string)
            .collect(),
        adverts_received: counters.adverts_received,
        adverts_sent: counters.adverts_sent,
        priority_zero_received: counters.priority_zero_received,
        priority_zero_sent: counters.priority_zero_sent,
        send_errors: counters.send_errors,
        drops: counters
            .drops
            .iter()
            .map(|(reason, count)| (reason.as_str().to_owned(), count))
            .collect(),
    }
}

fn service_view(status: &Status, service: &ServiceConfig) -> ServiceView {
    let plan: Option<&ServicePlan> = status.plan.services.iter().find(|s| s.name == service.name);
    let traffic = status.traffic.service(&service.name);
    let vip = *service.listen.ip();
    let vrrp = status
        .config
        .vrrp
        .iter()
        .zip(&status.vrrp)
        .find(|(config, _)| config.virtual_addresses.iter().any(|a| a.address == vip))
        .map(|(config, now)| VipHolder {
            instance: config.name.clone(),
            state: now.state.as_str().to_owned(),
        });
    let backends: Vec<BackendView> = service
        .backends
        .iter()
        .map(|backend| {
            let key = (service.name.clone(), backend.name.clone());
            let planned = plan.and_then(|p| p.backends.iter().find(|b| b.name == backend.name));
            let health = status.health.iter().find(|h| h.key == key);
            let backend_traffic = traffic.and_then(|t| t.backend(&backend.name));
            let state = match (planned, health) {
                (Some(planned), _) => planned.state,
                // Not live here: it takes nothing, but whether it is down still matters.
                (None, Some(health)) if health.up == Some(false) => BackendState::Down,
                (None, _) => BackendState::Standby,
            };
            BackendView {
                name: backend.name.clone(),
                address: backend.address.to_string(),
                weight: backend.weight,
                backup: backend.backup,
                state: state_word(state).to_owned(),
                admin: admin_word(status.admin.get(&key).copied().unwrap_or_default()).to_owned(),
                check: check_view(&backend.check.kind, health),
                current_sessions: backend_traffic.map_or(0, |b| b.current_sessions),
                traffic: backend_traffic
                    .map_or_else(TrafficView::default, |b| traffic_view(&b.counters)),
                db_role: health.and_then(|h| Some(h.role?.role.as_str().to_owned())),
                replication_lag_seconds: health.and_then(|h| Some(h.lag?.as_secs_f64())),
            }
        })
        .collect();
    ServiceView {
        name: service.name.clone(),
        listen: service.listen.to_string(),
        protocol: service.protocol.as_str().to_owned(),
        live: plan.is_some(),
        vrrp,
        role: service.role.as_str().to_owned(),
        primary_conflict: plan.and_then(|p| p.conflict.clone()),
        active_backends: backends.iter().filter(|b| b.state == "active").count(),
        current_sessions: traffic.map_or(0, |t| t.current_sessions),
        traffic: traffic.map_or_else(TrafficView::default, |t| traffic_view(&t.counters)),
        backends,
    }
}

fn check_view(kind: &CheckKind, health: Option<&BackendHealth>) -> CheckView {
    let Some(health) = health else {
        return CheckView {
            kind: kind.as_str().to_owned(),
            up: None,
            status: (!matches!(kind, CheckKind::None)).then(|| "INI".to_owned()),
            last_result: None,
            last_duration_seconds: None,
            last_checked: None,
            consecutive_successes: 0,
            consecutive_failures: 0,
            checks: 0,
            failures: 0,
        };
    };
    CheckView {
        kind: health.kind.to_owned(),
        up: health.up,
        status: check_status(health).map(str::to_owned),
        last_result: health.last_result.clone(),
        last_duration_seconds: health.last_latency.as_ref().map(Duration::as_secs_f64),
        last_checked: health.last_checked.map(unix),
        consecutive_successes: health.consecutive_successes,
        consecutive_failures: health.consecutive_failures,
        checks: health.checks,
        failures: health.failures,
    }
}

/// HAProxy's `check_status` for the last probe: `INI` before the first, `L4OK` (a TCP
/// check) or `L7OK` (any check that judges an answer) when it passed, `L4TOUT`/`L7TOUT` for a timeout while connecting or after, `L4CON` for a
/// connection problem, `L7STS` for an unexpected HTTP status, `L7RSP` for any other wrong
/// answer. `None` for a backend without checks.
///
/// Read from the probe's reason, whose wording `health::probe` owns; the tests below pin
/// the phrases this relies on.
pub fn check_status(health: &BackendHealth) -> Option<&'static str> {
    // Every check but a TCP connect judges an answer (HTTP, a database's role).
    let layer7 = match health.kind {
        "none" => return None,
        "tcp" => false,
        _ => true,
    };
    let Some(result) = &health.last_result else {
        return Some("INI");
    };
    Some(if health.consecutive_successes > 0 {
        if layer7 { "L7OK" } else { "L4OK" }
    } else if result.starts_with("timeout") {
        if result.ends_with("(connecting)") {
            "L4TOUT"
        } else {
            "L7TOUT"
        }
    } else if result.starts_with("HTTP status") {
        "L7STS"
    } else if !layer7
        || [
            "connection ",
            "no route",
            "network unreachable",
            "no local address",
        ]
        .iter()
        .any(|prefix| result.starts_with(prefix))
    {
        "L4CON"
    } else {
        "L7RSP"
    })
}

/// Every `check_status` [`check_status`] gives, for a state set.
pub const CHECK_STATUSES: [&str; 8] = [
    "INI", "L4OK", "L4TOUT", "L4CON", "L7OK", "L7TOUT", "L7STS", "L7RSP",
];

fn traffic_view(c: &TrafficCounters) -> TrafficView {
    TrafficView {
        new_flows: c.new_flows,
        packets_in: c.packets_to_backend,
        packets_out: c.packets_to_client,
        bytes_in: c.bytes_to_backend,
        bytes_out: c.bytes_to_client,
        drops: c.drops,
    }
}

fn state_word(state: BackendState) -> &'static str {
    match state {
        BackendState::Active => "active",
        BackendState::Standby => "standby",
        BackendState::Down => "down",
    }
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The keepalived-exporter number of a VRRP state name.
pub fn vrrp_state_number(state: &str) -> u8 {
    [
        VrrpState::Init,
        VrrpState::Backup,
        VrrpState::Master,
        VrrpState::Fault,
    ]
    .iter()
    .position(|s| s.as_str() == state)
    .unwrap_or(0) as u8
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;

    fn health(kind: &'static str, passed: bool, result: &str) -> BackendHealth {
        BackendHealth {
            key: ("web".into(), "a".into()),
            target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80),
            kind,
            up: Some(passed),
            consecutive_successes: u32::from(passed),
            consecutive_failures: u32::from(!passed),
            last_result: Some(result.to_owned()),
            last_latency: None,
            last_checked: None,
            checks: 1,
            failures: u64::from(!passed),
            role: None,
            lag: None,
        }
    }

    #[test]
    fn check_statuses_follow_haproxy() {
        for (kind, passed, result, expected) in [
            ("tcp", true, "connected", "L4OK"),
            ("http", true, "HTTP 200", "L7OK"),
            ("tcp", false, "connection refused", "L4CON"),
            ("tcp", false, "no route to host", "L4CON"),
            ("http", false, "connection reset", "L4CON"),
            ("tcp", false, "timeout after 1s (connecting)", "L4TOUT"),
            (
                "http",
                false,
                "timeout after 200ms (waiting for the response)",
                "L7TOUT",
            ),
            ("http", false, "HTTP status 503", "L7STS"),
            ("http", false, "not an HTTP response: \"SSH-2.0\"", "L7RSP"),
            ("http", false, "body does not contain \"OK\"", "L7RSP"),
            ("http", false, "closed before answering", "L7RSP"),
        ] {
            let status = check_status(&health(kind, passed, result));
            assert_eq!(status, Some(expected), "{kind} {result:?}");
            assert!(CHECK_STATUSES.contains(&expected));
        }
        let mut fresh = health("http", false, "");
        fresh.last_result = None;
        assert_eq!(check_status(&fresh), Some("INI"));
        assert_eq!(check_status(&health("none", true, "not checked")), None);
    }

    /// The phrases [`check_status`] reads are the probe's own.
    #[tokio::test]
    async fn probe_reasons_classify() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = match closed.local_addr().unwrap() {
            std::net::SocketAddr::V4(addr) => addr,
            other => panic!("{other}"),
        };
        drop(closed);
        let timeout = Duration::from_secs(1);
        let refused = crate::health::probe(target, &CheckKind::Tcp, timeout)
            .await
            .unwrap_err();
        assert_eq!(
            check_status(&health("tcp", false, &refused.reason)),
            Some("L4CON")
        );

        // A listener that never answers: the HTTP check times out waiting for the response.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = match silent.local_addr().unwrap() {
            std::net::SocketAddr::V4(addr) => addr,
            other => panic!("{other}"),
        };
        let kind = CheckKind::Http(Default::default());
        let stalled = crate::health::probe(target, &kind, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(
            check_status(&health("http", false, &stalled.reason)),
            Some("L7TOUT"),
            "{}",
            stalled.reason
        );
    }

    #[test]
    fn vrrp_states_number_as_keepalived_exporter() {
        assert_eq!(vrrp_state_number("INIT"), 0);
        assert_eq!(vrrp_state_number("BACKUP"), 1);
        assert_eq!(vrrp_state_number("MASTER"), 2);
        assert_eq!(vrrp_state_number("FAULT"), 3);
    }
}

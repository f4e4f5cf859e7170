//! `/metrics`: the status in the OpenMetrics text format, read at scrape time from a
//! [`StatusView`] (the data plane's per-CPU counters summed then, nothing counted per
//! packet in userspace).
//!
//! Where HAProxy's exporter has a metric that means the same, the name and labels have its
//! shape, so dashboards and alerts translate by renaming: `haproxy_X{proxy, server}` is
//! `gerbang_X{service, backend}` (HAProxy's "backend" is a gerbang service, its "server" a
//! gerbang backend). VRRP metrics follow keepalived-exporter's `keepalived_*` metrics and
//! labels (`iname`, `intf`, `vrid`, `ip_address`) the same way.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet, text},
    metrics::MetricType,
    registry::Registry,
};

use super::view::{
    BackendView, CHECK_STATUSES, StatusView, TrafficView, VrrpView, vrrp_state_number,
};

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition of `view`, ending in `# EOF`.
pub fn encode(view: &StatusView) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(view.clone())));
    let mut out = String::with_capacity(16 * 1024);
    text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// One scrape's view, encoded when the registry is.
#[derive(Debug)]
struct Snapshot(StatusView);

type Labels = Vec<(&'static str, String)>;

/// Reads one counter of a view.
type Count<T> = fn(&T) -> u64;

/// A sample's value.
#[derive(Clone, Copy)]
enum Value {
    Counter(u64),
    Gauge(i64),
    Seconds(f64),
}

impl Value {
    fn encode(self, metric: &mut MetricEncoder) -> fmt::Result {
        match self {
            Value::Counter(n) => metric.encode_counter::<NoLabelSet, _, u64>(&n, None),
            Value::Gauge(n) => metric.encode_gauge(&n),
            Value::Seconds(x) => metric.encode_gauge(&x),
        }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let view = &self.0;
        let mut out = Families(&mut encoder);
        out.info(
            "gerbang_build",
            "gerbang's version.",
            vec![("version", view.version.clone())],
        )?;
        out.gauge(
            "gerbang_process_start_time_seconds",
            "When gerbang started, in Unix seconds.",
            [(vec![], int(view.started))],
        )?;
        out.info(
            "gerbang_dataplane",
            "The data plane: \"xdp\" or \"userspace\".",
            vec![("mode", view.dataplane.mode.clone())],
        )?;
        out.gauge(
            "gerbang_dataplane_attached",
            "Interfaces the XDP program is attached to, by attach mode.",
            view.dataplane.attachments.iter().map(|a| {
                let labels = vec![("interface", a.interface.clone()), ("mode", a.mode.clone())];
                (labels, 1)
            }),
        )?;
        out.counter(
            "gerbang_packets",
            "Packets the XDP program saw, by what it did with them (every packet counts under \
             exactly one event: pass_*, tx, redirect, rst_*, drop_*).",
            view.events
                .iter()
                .map(|(event, packets)| (vec![("event", event.clone())], *packets)),
        )?;
        out.gauge(
            "gerbang_flow_table_entries",
            "Live flows in the connection table at its last sweep (closing ones included); \
             in the userspace proxy, its open connections and UDP sessions.",
            [(vec![], int(view.flows.live))],
        )?;
        out.gauge(
            "gerbang_flow_table_size",
            "Entries the connection table holds; the least recently used flow is forgotten \
             when it is full.",
            [(vec![], i64::from(view.flows.table_size))],
        )?;
        out.update_histogram(view)?;
        self.services(&mut out)?;
        self.backends(&mut out)?;
        self.vrrp(&mut out)
    }
}

impl Snapshot {
    /// Per service: HAProxy's `haproxy_backend_*`.
    fn services(&self, out: &mut Families) -> fmt::Result {
        let services = &self.0.services;
        let labels = |name: &str| vec![("service", name.to_owned())];
        out.gauge(
            "gerbang_backend_status",
            "1 while at least one of the service's backends is UP, else 0 (as HAProxy's \
             backend status).",
            services.iter().map(|s| {
                let up = s.backends.iter().any(|b| server_status(b) == UP);
                (labels(&s.name), i64::from(up))
            }),
        )?;
        out.gauge(
            "gerbang_backend_primary_conflict",
            "1 while a role = \"primary\" service refuses new flows because more than one \
             backend claims to be the primary, else 0.",
            services
                .iter()
                .map(|s| (labels(&s.name), i64::from(s.primary_conflict.is_some()))),
        )?;
        out.gauge(
            "gerbang_backend_live",
            "1 while this node forwards the service: it holds the service's VIP (VRRP \
             master) or the VIP is not VRRP-managed.",
            services
                .iter()
                .map(|s| (labels(&s.name), i64::from(s.live))),
        )?;
        for (name, help, backup) in [
            (
                "gerbang_backend_active_servers",
                "Primary (non-backup) backends UP.",
                false,
            ),
            (
                "gerbang_backend_backup_servers",
                "Backup backends UP.",
                true,
            ),
        ] {
            out.gauge(
                name,
                help,
                services.iter().map(|s| {
                    let n = s
                        .backends
                        .iter()
                        .filter(|b| b.backup == backup && server_status(b) == UP)
                        .count();
                    (labels(&s.name), int(n as u64))
                }),
            )?;
        }
        out.gauge(
            "gerbang_backend_current_sessions",
            "Current sessions of the service: with XDP, its open flows (TCP before a RST or \
             FINs both ways, UDP while live) at the last sweep of the connection table; in \
             the userspace proxy, its open connections and UDP sessions now.",
            services
                .iter()
                .map(|s| (labels(&s.name), int(s.current_sessions))),
        )?;
        out.traffic(
            "gerbang_backend",
            "the service",
            services.iter().map(|s| (labels(&s.name), &s.traffic)),
        )
    }

    /// Per backend: HAProxy's `haproxy_server_*`.
    fn backends(&self, out: &mut Families) -> fmt::Result {
        let backends: Vec<(Labels, &BackendView)> = self
            .0
            .services
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(|b| {
                    let labels = vec![("service", s.name.clone()), ("backend", b.name.clone())];
                    (labels, b)
                })
            })
            .collect();
        out.gauge(
            "gerbang_server_status",
            "The backend's state as HAProxy numbers it: 0 DOWN (failed its checks), 1 UP, \
             2 MAINT, 3 DRAIN (both set with `gerbang backend`).",
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), i64::from(server_status(b)))),
        )?;
        out.gauge(
            "gerbang_server_weight",
            "The backend's weight: its share of new flows among the active backends.",
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), i64::from(b.weight))),
        )?;
        out.gauge(
            "gerbang_server_current_sessions",
            "Current sessions of the backend: with XDP, open flows pinned to it at the last \
             sweep of the connection table; in the userspace proxy, connections and UDP \
             sessions established with it now.",
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), int(b.current_sessions))),
        )?;
        out.gauge(
            "gerbang_server_check_status",
            "The last health check's result as HAProxy's check_status (state label), 1 for \
             the current one; absent for backends without checks.",
            backends.iter().flat_map(|(labels, b)| {
                let now = b.check.status.as_deref();
                now.into_iter().flat_map(move |now| {
                    CHECK_STATUSES.into_iter().map(move |state| {
                        let mut labels = labels.clone();
                        labels.push(("state", state.to_owned()));
                        (labels, i64::from(state == now))
                    })
                })
            }),
        )?;
        let checked = || backends.iter().filter(|(_, b)| b.check.status.is_some());
        out.counter(
            "gerbang_server_check_failures",
            "Failed health checks.",
            checked().map(|(labels, b)| (labels.clone(), b.check.failures)),
        )?;
        out.seconds(
            "gerbang_server_check_duration_seconds",
            "How long the last health check took.",
            checked()
                .filter_map(|(labels, b)| Some((labels.clone(), b.check.last_duration_seconds?))),
        )?;
        out.gauge(
            "gerbang_server_db_role",
            "A database backend's replication role (role label: primary, replica, galera \
             member), 1; absent until its role check has answered.",
            backends.iter().filter_map(|(labels, b)| {
                let mut labels = labels.clone();
                labels.push(("role", b.db_role.clone()?));
                Some((labels, 1))
            }),
        )?;
        out.seconds(
            "gerbang_server_replication_lag_seconds",
            "A replica's replication lag at the last role check that told it.",
            backends
                .iter()
                .filter_map(|(labels, b)| Some((labels.clone(), b.replication_lag_seconds?))),
        )?;
        out.traffic(
            "gerbang_server",
            "the backend",
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), &b.traffic)),
        )
    }

    /// Per VRRP instance: keepalived-exporter's `keepalived_*`.
    fn vrrp(&self, out: &mut Families) -> fmt::Result {
        let instances: Vec<(Labels, &VrrpView)> = self
            .0
            .vrrp
            .iter()
            .map(|v| {
                let labels = vec![
                    ("iname", v.name.clone()),
                    ("intf", v.interface.clone()),
                    ("vrid", v.virtual_router_id.to_string()),
                ];
                (labels, v)
            })
            .collect();
        out.gauge(
            "gerbang_vrrp_state",
            "The instance's state per virtual address: 0 INIT, 1 BACKUP, 2 MASTER (this node \
             holds the address), 3 FAULT.",
            instances.iter().flat_map(|(labels, v)| {
                let state = i64::from(vrrp_state_number(&v.state));
                v.virtual_addresses.iter().map(move |address| {
                    let mut labels = labels.clone();
                    labels.push(("ip_address", address.clone()));
                    (labels, state)
                })
            }),
        )?;
        out.counter(
            "gerbang_vrrp_state_transitions",
            "State changes since start.",
            instances
                .iter()
                .map(|(labels, v)| (labels.clone(), v.transitions)),
        )?;
        out.gauge(
            "gerbang_vrrp_priority",
            "The priority advertised now: the configured one moved by tracked services, \
             interfaces and scripts.",
            instances
                .iter()
                .map(|(labels, v)| (labels.clone(), i64::from(v.effective_priority))),
        )?;
        out.gauge(
            "gerbang_vrrp_base_priority",
            "The configured priority.",
            instances
                .iter()
                .map(|(labels, v)| (labels.clone(), i64::from(v.priority))),
        )?;
        for (name, help, count) in [
            (
                "gerbang_vrrp_advertisements_received",
                "Advertisements accepted.",
                (|v| v.adverts_received) as Count<VrrpView>,
            ),
            (
                "gerbang_vrrp_advertisements_sent",
                "Advertisements sent.",
                |v| v.adverts_sent,
            ),
            (
                "gerbang_vrrp_priority_zero_received",
                "Priority-0 advertisements (a master stepping down) accepted.",
                |v| v.priority_zero_received,
            ),
            (
                "gerbang_vrrp_priority_zero_sent",
                "Priority-0 advertisements sent.",
                |v| v.priority_zero_sent,
            ),
            (
                "gerbang_vrrp_send_errors",
                "Advertisements the kernel refused to send.",
                |v| v.send_errors,
            ),
        ] {
            out.counter(
                name,
                help,
                instances
                    .iter()
                    .map(|(labels, v)| (labels.clone(), count(v))),
            )?;
        }
        out.counter(
            "gerbang_vrrp_dropped_packets",
            "Received VRRP packets dropped, by reason.",
            instances.iter().flat_map(|(labels, v)| {
                v.drops.iter().map(move |(reason, count)| {
                    let mut labels = labels.clone();
                    labels.push(("reason", reason.clone()));
                    (labels, *count)
                })
            }),
        )
    }
}

/// A count as a gauge's value.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const DOWN: u8 = 0;
const UP: u8 = 1;
const MAINT: u8 = 2;
const DRAIN: u8 = 3;

/// HAProxy 2.0's server status numbers: maintenance first, then the health verdict.
fn server_status(backend: &BackendView) -> u8 {
    match (backend.admin.as_str(), backend.state.as_str()) {
        ("maint", _) => MAINT,
        (_, "down") => DOWN,
        ("drain", _) => DRAIN,
        _ => UP,
    }
}

/// Writes metric families into the encoder.
struct Families<'a, 'e>(&'a mut DescriptorEncoder<'e>);

impl Families<'_, '_> {
    fn family(
        &mut self,
        name: &str,
        help: &str,
        metric_type: MetricType,
        samples: impl IntoIterator<Item = (Labels, Value)>,
    ) -> fmt::Result {
        let mut family = self.0.encode_descriptor(name, help, None, metric_type)?;
        for (labels, value) in samples {
            // Without labels, the sample is the family's own (no empty `{}`).
            if labels.is_empty() {
                value.encode(&mut family)?;
            } else {
                value.encode(&mut family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, i64)>,
    ) -> fmt::Result {
        let samples = samples.into_iter().map(|(l, n)| (l, Value::Gauge(n)));
        self.family(name, help, MetricType::Gauge, samples)
    }

    fn seconds(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) -> fmt::Result {
        let samples = samples.into_iter().map(|(l, x)| (l, Value::Seconds(x)));
        self.family(name, help, MetricType::Gauge, samples)
    }

    /// `name` without `_total`, which the encoder appends.
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) -> fmt::Result {
        let samples = samples.into_iter().map(|(l, n)| (l, Value::Counter(n)));
        self.family(name, help, MetricType::Counter, samples)
    }

    /// `name` without `_info`, which the encoder appends.
    fn info(&mut self, name: &str, help: &str, labels: Labels) -> fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Info)?
            .encode_info(&labels)
    }

    /// HAProxy's traffic counters of a service (`gerbang_backend`) or a backend
    /// (`gerbang_server`), and packets and drops, which HAProxy does not have.
    fn traffic<'t>(
        &mut self,
        prefix: &str,
        whose: &str,
        items: impl Iterator<Item = (Labels, &'t TrafficView)> + Clone,
    ) -> fmt::Result {
        let counters: [(&str, String, Count<TrafficView>); 6] = [
            (
                "sessions",
                format!("Flows created towards {whose} (HAProxy's sessions)."),
                |t| t.new_flows,
            ),
            (
                "bytes_in",
                format!("Bytes from clients forwarded to {whose}, Ethernet headers included."),
                |t| t.bytes_in,
            ),
            (
                "bytes_out",
                format!("Bytes from {whose} forwarded to clients, Ethernet headers included."),
                |t| t.bytes_out,
            ),
            (
                "packets_in",
                format!("Packets from clients forwarded to {whose}."),
                |t| t.packets_in,
            ),
            (
                "packets_out",
                format!("Packets from {whose} forwarded to clients."),
                |t| t.packets_out,
            ),
            (
                "dropped_packets",
                format!("Packets of {whose}'s flows dropped."),
                |t| t.drops,
            ),
        ];
        for (suffix, help, count) in counters {
            let samples = items.clone().map(|(labels, t)| (labels, count(t)));
            self.counter(&format!("{prefix}_{suffix}"), &help, samples)?;
        }
        Ok(())
    }

    /// The map-update latency histogram, from the controller's cumulative buckets.
    fn update_histogram(&mut self, view: &StatusView) -> fmt::Result {
        let updates = &view.updates;
        // The encoder wants each bucket's own count and adds them up; +Inf takes the rest.
        let mut buckets = Vec::with_capacity(updates.buckets.len() + 1);
        let mut below = 0;
        for &(bound, cumulative) in &updates.buckets {
            buckets.push((bound, cumulative.saturating_sub(below)));
            below = cumulative.max(below);
        }
        buckets.push((f64::INFINITY, updates.count.saturating_sub(below)));
        self.0
            .encode_descriptor(
                "gerbang_map_update_duration_seconds",
                "How long applying a change of the backend sets to the data path took.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(updates.sum_seconds, updates.count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::observe::view::{CheckView, DataplaneView, FlowsView, ServiceView, UpdatesView};

    fn backend(name: &str, state: &str, admin: &str) -> BackendView {
        BackendView {
            name: name.into(),
            address: "10.0.0.1:80".into(),
            weight: 2,
            backup: false,
            state: state.into(),
            admin: admin.into(),
            check: CheckView {
                kind: "http".into(),
                up: Some(state != "down"),
                status: Some(if state == "down" { "L7STS" } else { "L7OK" }.into()),
                last_result: Some("HTTP 200".into()),
                last_duration_seconds: Some(0.002),
                last_checked: Some(1),
                consecutive_successes: 1,
                consecutive_failures: 0,
                checks: 10,
                failures: 3,
            },
            current_sessions: 4,
            traffic: TrafficView {
                new_flows: 7,
                packets_in: 70,
                packets_out: 60,
                bytes_in: 7000,
                bytes_out: 6000,
                drops: 1,
            },
            db_role: None,
            replication_lag_seconds: None,
        }
    }

    fn view() -> StatusView {
        StatusView {
            version: "1.2.3".into(),
            started: 1000,
            uptime_seconds: 5,
            dataplane: DataplaneView {
                mode: "xdp".into(),
                attachments: vec![],
            },
            flows: FlowsView {
                live: 3,
                table_size: 1024,
            },
            updates: UpdatesView {
                count: 4,
                sum_seconds: 0.01,
                max_seconds: 0.008,
                buckets: vec![(0.001, 1), (0.01, 3)],
            },
            vrrp: vec![VrrpView {
                name: "VI_1".into(),
                interface: "eth0".into(),
                virtual_router_id: 51,
                state: "MASTER".into(),
                priority: 150,
                effective_priority: 130,
                master: None,
                transitions: 2,
                since: 0,
                virtual_addresses: vec!["192.0.2.10/24".into()],
                adverts_received: 0,
                adverts_sent: 9,
                priority_zero_received: 0,
                priority_zero_sent: 0,
                send_errors: 0,
                drops: BTreeMap::from([("auth".into(), 2)]),
            }],
            services: vec![ServiceView {
                name: "web".into(),
                listen: "192.0.2.10:80".into(),
                protocol: "tcp".into(),
                live: true,
                vrrp: None,
                role: "primary".into(),
                primary_conflict: Some("a, b claim to be the primary".into()),
                active_backends: 1,
                current_sessions: 9,
                traffic: TrafficView::default(),
                backends: vec![
                    backend("a", "active", "ready"),
                    backend("b", "down", "ready"),
                    backend("c", "standby", "drain"),
                    BackendView {
                        db_role: Some("replica".into()),
                        replication_lag_seconds: Some(1.5),
                        ..backend("d", "down", "maint")
                    },
                ],
            }],
            events: BTreeMap::from([("tx".into(), 5), ("drop_fragment".into(), 1)]),
        }
    }

    #[test]
    fn exposition_has_haproxy_shapes() {
        let text = encode(&view());
        for line in [
            "gerbang_build_info{version=\"1.2.3\"} 1",
            "gerbang_packets_total{event=\"drop_fragment\"} 1",
            "gerbang_server_status{service=\"web\",backend=\"a\"} 1",
            "gerbang_server_status{service=\"web\",backend=\"b\"} 0",
            "gerbang_server_status{service=\"web\",backend=\"c\"} 3",
            "gerbang_server_status{service=\"web\",backend=\"d\"} 2",
            "gerbang_server_check_status{service=\"web\",backend=\"b\",state=\"L7STS\"} 1",
            "gerbang_server_check_status{service=\"web\",backend=\"b\",state=\"L7OK\"} 0",
            "gerbang_server_sessions_total{service=\"web\",backend=\"a\"} 7",
            "gerbang_server_current_sessions{service=\"web\",backend=\"a\"} 4",
            "gerbang_backend_current_sessions{service=\"web\"} 9",
            "gerbang_server_check_failures_total{service=\"web\",backend=\"a\"} 3",
            "gerbang_backend_active_servers{service=\"web\"} 1",
            "gerbang_backend_primary_conflict{service=\"web\"} 1",
            "gerbang_backend_status{service=\"web\"} 1",
            "gerbang_vrrp_state{iname=\"VI_1\",intf=\"eth0\",vrid=\"51\",ip_address=\"192.0.2.10/24\"} 2",
            "gerbang_vrrp_dropped_packets_total{iname=\"VI_1\",intf=\"eth0\",vrid=\"51\",reason=\"auth\"} 2",
            "gerbang_map_update_duration_seconds_bucket{le=\"0.001\"} 1",
            "gerbang_map_update_duration_seconds_bucket{le=\"0.01\"} 3",
            "gerbang_map_update_duration_seconds_bucket{le=\"+Inf\"} 4",
            "gerbang_map_update_duration_seconds_count 4",
            "gerbang_server_db_role{service=\"web\",backend=\"d\",role=\"replica\"} 1",
            "gerbang_server_replication_lag_seconds{service=\"web\",backend=\"d\"} 1.5",
            "gerbang_flow_table_size 1024",
            "gerbang_process_start_time_seconds 1000",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}

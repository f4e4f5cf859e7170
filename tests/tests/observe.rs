//! What gerbang shows of itself, judged by peers nobody here wrote: `/metrics` parsed by the
//! reference OpenMetrics parser (Python's prometheus_client) while real traffic flows,
//! connections are held open, backends fail and a VRRP instance goes to FAULT and back;
//! database roles and lag from a real PostgreSQL primary and replica; the status page as
//! headless Chromium renders it, `gerbang status` from the binary, the Grafana dashboard
//! against a real scrape, and no secret (VRRP or database password) in any of them. The
//! binary itself logs JSON on request and serves on loopback unless told otherwise.
//!
//! gerbang runs in-process in the balancer's namespace (but for the binary's test); its
//! HTTP endpoint listens on loopback there, so every client (curl, Chromium) runs inside
//! that namespace too.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use gerbang::observe::StatusView;
use gerbang_testbed::{Cmd, HttpBackend, TcpStreamClient, TwoArm, curl, http_get_many};
use support::{
    db::Postgres,
    gerbang::{InProcess, binary, isolate, wait_until},
    tempdir::TempDir,
};

const HTTP: u16 = 8080;
/// The VRRP password (v2, 8 characters at most): it must never be shown.
const PASSWORD: &str = "s3cr3tPw";
/// The database check's password, which PostgreSQL accepts: it must never be shown.
const DB_PASSWORD: &str = "m0nitor-Db-s3cret";
/// A database check's password that PostgreSQL refuses: it must never be shown either.
const WRONG_DB_PASSWORD: &str = "wr0ng-Db-s3cret";
const VRRP_VIP: &str = "10.200.1.100/24";
const REQUESTS: usize = 10;
const WAIT: Duration = Duration::from_secs(10);
/// Long enough for two sweeps of the connection table (every 5 s), which is when XDP's
/// current sessions are counted.
const SWEEP_WAIT: Duration = Duration::from_secs(15);
/// Idle connections held open through the VIP: an even number, for round-robin to split.
const HELD: usize = 6;

/// The `web` service over every backend of `t`, with fast HTTP checks.
fn web_service(t: &TwoArm) -> String {
    let mut text = format!(
        "\n[[service]]\nname = \"web\"\nlisten = \"{}:80\"\n\
         [service.check]\ntype = \"http\"\ninterval = \"200ms\"\nfall = 2\nrise = 2\n",
        t.vip
    );
    for (i, b) in t.backends.iter().enumerate() {
        text += &format!(
            "  [[service.backend]]\n  name = \"b{i}\"\n  address = \"{}:{HTTP}\"\n",
            b.addr
        );
    }
    text
}

/// The XDP data plane on both arms of `t`. Closed TCP flows stay in the connection table
/// for a minute, so that a current-sessions figure falling to 0 within [`SWEEP_WAIT`] of
/// closing shows the sweep tells closed flows from open ones, not that they expired.
fn xdp_dataplane(t: &TwoArm) -> String {
    format!(
        "[dataplane]\ninterfaces = [\"{}\", \"{}\"]\nattach = \"native\"\nsnat_address = \"{}\"\n\
         flow_table_size = 4096\n\n[timeouts]\ntcp_closing = \"60s\"\n",
        t.lb_client_if, t.lb_backend_if, t.snat
    )
}

/// Two backends with fast HTTP checks, and a VRRP instance that owns its address (priority
/// 255: master at once) with a password, tracking `web` with weight 0: FAULT while none of
/// its backends is up, as keepalived's track weight 0 does.
fn config(t: &TwoArm) -> String {
    let mut text = xdp_dataplane(t) + &web_service(t);
    text += &format!(
        "\n[[vrrp]]\nname = \"VI_obs\"\ninterface = \"{}\"\nvirtual_router_id = 77\n\
         priority = 255\nversion = 2\nauth_password = \"{PASSWORD}\"\n\
         virtual_addresses = [\"{VRRP_VIP}\"]\ngarp_count = 1\n\
         track_services = [{{ service = \"web\", weight = 0 }}]\n",
        t.lb_client_if
    );
    text
}

/// The userspace proxy instead of XDP, no VRRP.
fn userspace_config(t: &TwoArm) -> String {
    format!(
        "[dataplane]\nmode = \"userspace\"\nsnat_address = \"{}\"\n",
        t.snat
    ) + &web_service(t)
}

/// A topology with HTTP servers on both backends and gerbang in front of them, its VRRP
/// instance master.
struct Scenario {
    gerbang: InProcess,
    servers: Vec<HttpBackend>,
    http: SocketAddr,
    t: TwoArm,
}

impl Scenario {
    fn start() -> Scenario {
        Self::start_with(config)
    }

    /// gerbang with the configuration `config` makes for the topology; once its VRRP
    /// instances (if any) are master and both backends are active.
    fn start_with(config: fn(&TwoArm) -> String) -> Scenario {
        let t = TwoArm::new(2).unwrap();
        let servers = HttpBackend::start_on_each(&t.backends, HTTP).unwrap();
        let gerbang = InProcess::start(&t.lb, &config(&t)).unwrap();
        let http = gerbang.http_address().expect("[http] is enabled");
        assert!(http.ip().is_loopback() && http.port() != 0, "{http}");
        wait_until(WAIT, || {
            let status = gerbang.status();
            let states: Vec<&str> = status.vrrp.iter().map(|v| v.state.as_str()).collect();
            let active = status.plan.services[0].active().count();
            (states.iter().all(|s| *s == "MASTER") && active == 2)
                .then_some(())
                .ok_or_else(|| anyhow!("VRRP is {states:?}, {active} backends active"))
        })
        .unwrap();
        Scenario {
            gerbang,
            servers,
            http,
            t,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// GET from inside the balancer's namespace, with curl.
    fn get(&self, path: &str) -> String {
        curl(&self.t.lb, &self.url(path)).unwrap()
    }

    fn scrape(&self) -> Scrape {
        Scrape::parse(self.get("/metrics")).unwrap()
    }

    /// Waits until `web`'s current sessions, and their sum over its backends, are `n`;
    /// that scrape.
    fn wait_for_sessions(&self, n: usize) -> Scrape {
        wait_until(SWEEP_WAIT, || {
            let scrape = self.scrape();
            let service = scrape.value("gerbang_backend_current_sessions", &[("service", "web")]);
            let backends = scrape.sum("gerbang_server_current_sessions", &[("service", "web")]);
            (service == Some(n as f64) && backends == n as f64)
                .then_some(scrape)
                .ok_or_else(|| {
                    anyhow!("web has {service:?} current sessions, {backends} over its backends")
                })
        })
        .unwrap()
    }

    /// Opens `n` idle TCP connections to `web` from the client.
    fn hold_connections(&self, n: usize) -> Vec<TcpStreamClient> {
        let vip = SocketAddrV4::new(self.t.vip, 80);
        (0..n)
            .map(|_| TcpStreamClient::connect(&self.t.client, vip).unwrap())
            .collect()
    }

    /// Restarts backend `i`'s HTTP server and waits until /metrics says it is UP.
    fn restore_backend(&mut self, i: usize) -> Scrape {
        let b = &self.t.backends[i];
        self.servers[i] =
            HttpBackend::start(&b.ns, SocketAddrV4::new(b.addr, HTTP), &format!("b{i}")).unwrap();
        let name = format!("b{i}");
        wait_until(WAIT, || {
            let scrape = self.scrape();
            let status = scrape.value("gerbang_server_status", &[("backend", &name)]);
            (status == Some(1.0))
                .then_some(scrape)
                .ok_or_else(|| anyhow!("gerbang_server_status of {name} is {status:?}"))
        })
        .unwrap()
    }

    /// Waits until /metrics shows the VRRP instance in `state` (keepalived-exporter's
    /// number); that scrape.
    fn wait_for_vrrp(&self, state: f64) -> Scrape {
        wait_until(WAIT, || {
            let scrape = self.scrape();
            let now = scrape.value("gerbang_vrrp_state", &[("iname", "VI_obs")]);
            (now == Some(state))
                .then_some(scrape)
                .ok_or_else(|| anyhow!("gerbang_vrrp_state is {now:?}, waiting for {state}"))
        })
        .unwrap()
    }

    /// Stops backend `i` and waits until /metrics says it is DOWN.
    fn fail_backend(&mut self, i: usize) -> Scrape {
        self.servers[i].stop();
        let name = format!("b{i}");
        wait_until(WAIT, || {
            let scrape = self.scrape();
            let status = scrape.value("gerbang_server_status", &[("backend", &name)]);
            (status == Some(0.0))
                .then_some(scrape)
                .ok_or_else(|| anyhow!("gerbang_server_status of {name} is {status:?}"))
        })
        .unwrap()
    }
}

/// One scrape as the OpenMetrics parser read it.
struct Scrape {
    text: String,
    /// Family name to type (`counter`, `gauge`, ...).
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses the exposition on stdin with prometheus_client's OpenMetrics parser, which
/// rejects anything the format does not allow, and prints families and samples as JSON.
const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
types, samples = {}, []
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    samples += [[s.name, s.labels, s.value] for s in family.samples]
print(json.dumps({"types": types, "samples": samples}))
"#;

impl Scrape {
    fn parse(text: String) -> Result<Scrape> {
        // Debian's interpreter, where python3-prometheus-client installs; not whatever
        // python3 comes first in PATH.
        let mut python = Command::new("/usr/bin/python3")
            .args(["-c", PARSER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running /usr/bin/python3 (cargo xtask setup installs it)")?;
        python.stdin.take().unwrap().write_all(text.as_bytes())?;
        let output = python.wait_with_output()?;
        ensure!(
            output.status.success(),
            "the OpenMetrics parser refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let types = serde_json::from_value(parsed["types"].clone())?;
        let samples = serde_json::from_value(parsed["samples"].clone())?;
        Ok(Scrape {
            text,
            types,
            samples,
        })
    }

    /// The value of the one sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| *value)
            .collect();
        match matching.as_slice() {
            [value] => Some(*value),
            [] => None,
            more => panic!("{} samples of {name} {labels:?}: {more:?}", more.len()),
        }
    }

    /// The sum of the samples `name` whose labels include `labels` (0 if none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| *value)
            .sum()
    }

    /// Names of samples, and of families (a gauge's is its samples'): a family without a
    /// sample in this scenario (no database backend, say) still counts as exported.
    fn names(&self) -> BTreeSet<&str> {
        let samples = self.samples.iter().map(|(n, _, _)| n.as_str());
        samples
            .chain(self.types.keys().map(String::as_str))
            .collect()
    }
}

#[test]
fn metrics_count_the_traffic_and_follow_backend_health() {
    let mut s = Scenario::start();
    let vip = SocketAddrV4::new(s.t.vip, 80);
    for answer in http_get_many(&s.t.client, vip, REQUESTS) {
        answer.unwrap();
    }

    let content_type =
        s.t.lb
            .exec(
                "curl",
                [
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{content_type}",
                    &s.url("/metrics"),
                ],
            )
            .unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    for (args, expected) in [(&["-X", "POST"][..], "405"), (&["-X", "GET"][..], "404")] {
        let code =
            s.t.lb
                .exec(
                    "curl",
                    ["-s", "-o", "/dev/null", "-w", "%{http_code}"]
                        .iter()
                        .chain(args)
                        .chain([&s.url("/nothing-here").as_str()]),
                )
                .unwrap();
        assert_eq!(code, expected, "{args:?}");
    }
    let scrape = s.scrape();
    for (family, kind) in [
        ("gerbang_build", "info"),
        ("gerbang_packets", "counter"),
        ("gerbang_server_status", "gauge"),
        ("gerbang_server_sessions", "counter"),
        ("gerbang_map_update_duration_seconds", "histogram"),
        ("gerbang_vrrp_state", "gauge"),
    ] {
        assert_eq!(
            scrape.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        scrape.value("gerbang_build_info", &[("version", version)]),
        Some(1.0)
    );

    // Flows, per service and per backend, are the requests sent: round-robin splits them.
    let web = [("service", "web")];
    assert_eq!(
        scrape.value("gerbang_backend_sessions_total", &web),
        Some(REQUESTS as f64)
    );
    for backend in ["b0", "b1"] {
        let labels = [("service", "web"), ("backend", backend)];
        assert_eq!(
            scrape.value("gerbang_server_sessions_total", &labels),
            Some((REQUESTS / 2) as f64),
            "{backend}"
        );
        assert_eq!(scrape.value("gerbang_server_status", &labels), Some(1.0));
        assert_eq!(scrape.value("gerbang_server_weight", &labels), Some(1.0));
        let l7ok = [labels[0], labels[1], ("state", "L7OK")];
        assert_eq!(
            scrape.value("gerbang_server_check_status", &l7ok),
            Some(1.0)
        );
        // A request and its answer: at least a handshake, the request and a FIN each way.
        let packets = scrape
            .value("gerbang_server_packets_in_total", &labels)
            .unwrap();
        assert!(
            packets >= 3.0 * (REQUESTS / 2) as f64,
            "{backend}: {packets}"
        );
        assert!(
            scrape
                .value("gerbang_server_bytes_out_total", &labels)
                .unwrap()
                > 0.0
        );
    }
    assert_eq!(
        scrape.value("gerbang_backend_active_servers", &web),
        Some(2.0)
    );
    assert_eq!(scrape.value("gerbang_backend_live", &web), Some(1.0));
    // Every event is exported; the forwarded packets are among them.
    let events: Vec<&str> = scrape
        .samples
        .iter()
        .filter(|(n, _, _)| n == "gerbang_packets_total")
        .map(|(_, l, _)| l["event"].as_str())
        .collect();
    assert_eq!(events.len(), lb_common::Event::ALL.len(), "{events:?}");
    let forwarded = scrape
        .value("gerbang_packets_total", &[("event", "tx")])
        .unwrap()
        + scrape
            .value("gerbang_packets_total", &[("event", "redirect")])
            .unwrap();
    assert!(forwarded > 0.0);
    assert_eq!(scrape.value("gerbang_flow_table_size", &[]), Some(4096.0));
    assert!(scrape.value("gerbang_map_update_duration_seconds_count", &[]) >= Some(1.0));
    assert_eq!(
        scrape.value("gerbang_vrrp_state", &[("ip_address", VRRP_VIP)]),
        Some(2.0),
        "MASTER"
    );
    assert_eq!(
        scrape.value("gerbang_dataplane_info", &[("mode", "xdp")]),
        Some(1.0)
    );
    // The HTTP requests are over: no session is left once a sweep has counted.
    s.wait_for_sessions(0);
    held_connections_are_current_sessions(&s, &["b0", "b1"]);

    // b1 stops: its status goes to 0 (DOWN) with HAProxy's L4CON, the service keeps b0.
    let scrape = s.fail_backend(1);
    let b1 = [("service", "web"), ("backend", "b1"), ("state", "L4CON")];
    assert_eq!(scrape.value("gerbang_server_check_status", &b1), Some(1.0));
    assert!(scrape.value("gerbang_server_check_failures_total", &b1[..2]) >= Some(2.0));
    assert_eq!(
        scrape.value("gerbang_backend_active_servers", &web),
        Some(1.0)
    );
    assert_eq!(scrape.value("gerbang_backend_status", &web), Some(1.0));

    // b0 stops too: the service has no backend, and the VRRP instance tracking it goes to
    // FAULT (3); back to MASTER (2) once b0 is back. Each change is a transition.
    let vrrp = [("iname", "VI_obs")];
    let transitions = |scrape: &Scrape| {
        scrape
            .value("gerbang_vrrp_state_transitions_total", &vrrp)
            .unwrap()
    };
    let before = transitions(&scrape);
    s.fail_backend(0);
    let scrape = s.wait_for_vrrp(3.0);
    assert_eq!(scrape.value("gerbang_backend_status", &web), Some(0.0));
    assert_eq!(
        scrape.value("gerbang_backend_active_servers", &web),
        Some(0.0)
    );
    let faulted = transitions(&scrape);
    assert!(faulted > before, "{before} -> {faulted}");
    s.restore_backend(0);
    let scrape = s.wait_for_vrrp(2.0);
    assert!(transitions(&scrape) > faulted);
    assert_eq!(scrape.value("gerbang_backend_status", &web), Some(1.0));

    assert!(
        !scrape.text.contains(PASSWORD),
        "the VRRP password is in /metrics"
    );
    dashboard_queries_name_exported_metrics(&scrape);
    s.gerbang.stop().unwrap();
}

/// The userspace proxy's current sessions are its open connections, per backend those
/// established with it.
#[test]
fn userspace_current_sessions_are_the_proxys_connections() {
    let s = Scenario::start_with(userspace_config);
    let scrape = s.scrape();
    assert_eq!(
        scrape.value("gerbang_dataplane_info", &[("mode", "userspace")]),
        Some(1.0)
    );
    held_connections_are_current_sessions(&s, &["b0", "b1"]);
    s.gerbang.stop().unwrap();
}

/// [`HELD`] idle connections through the VIP are `web`'s current sessions once counted
/// (with XDP, at the next sweep of the connection table), split evenly over `backends` by
/// round-robin, in /metrics and the JSON API alike; closed, they are gone at the next count.
fn held_connections_are_current_sessions(s: &Scenario, backends: &[&str]) {
    let held = s.hold_connections(HELD);
    let scrape = s.wait_for_sessions(HELD);
    let each = (HELD / backends.len()) as f64;
    for backend in backends {
        let labels = [("service", "web"), ("backend", backend)];
        assert_eq!(
            scrape.value("gerbang_server_current_sessions", &labels),
            Some(each),
            "{backend}"
        );
    }
    let view = StatusView::from_json(&s.get("/api/status")).unwrap();
    let web = &view.services[0];
    assert_eq!(web.current_sessions, HELD as u64);
    if view.dataplane.mode == "userspace" {
        // No connection table: its fill is the proxy's connections.
        assert_eq!(view.flows.live, HELD as u64);
        assert_eq!(
            scrape.value("gerbang_flow_table_entries", &[]),
            Some(HELD as f64)
        );
    }
    let sessions: Vec<(&str, u64)> = web
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.current_sessions))
        .collect();
    let expected: Vec<(&str, u64)> = backends.iter().map(|b| (*b, each as u64)).collect();
    assert_eq!(sessions, expected);

    drop(held);
    let scrape = s.wait_for_sessions(0);
    for backend in backends {
        let labels = [("service", "web"), ("backend", backend)];
        assert_eq!(
            scrape.value("gerbang_server_current_sessions", &labels),
            Some(0.0),
            "{backend}"
        );
    }
}

/// Every metric a PromQL query of the shipped dashboard names is one gerbang exports.
fn dashboard_queries_name_exported_metrics(scrape: &Scrape) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/grafana/gerbang.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "only {} queries found", exprs.len());
    let exported = scrape.names();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no gerbang metric in {expr:?}");
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "the dashboard queries {name}, which gerbang does not export: {expr}"
            );
            used.insert(name);
        }
    }
    eprintln!(
        "the dashboard uses {} of {} metrics",
        used.len(),
        exported.len()
    );
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `gerbang_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("gerbang_") {
        let starts_word = !rest[..at].ends_with(is_ident);
        let tail = &rest[at..];
        let end = tail.find(|c| !is_ident(c)).unwrap_or(tail.len());
        if starts_word {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn status_page_api_and_cli_show_each_backend_and_no_secret() {
    let mut s = Scenario::start();
    s.fail_backend(1);
    // Two connections held open, both on b0, the one backend left: its current sessions.
    let _held = s.hold_connections(2);
    s.wait_for_sessions(2);

    let json = s.get("/api/status");
    let view = StatusView::from_json(&json).unwrap();
    let states: Vec<(&str, &str)> = view.services[0]
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.state.as_str()))
        .collect();
    assert_eq!(states, [("b0", "active"), ("b1", "down")]);
    let sessions: Vec<u64> = view.services[0]
        .backends
        .iter()
        .map(|b| b.current_sessions)
        .collect();
    assert_eq!(sessions, [2, 0]);
    assert_eq!(view.vrrp[0].state, "MASTER");
    assert_eq!(view.vrrp[0].virtual_addresses, [VRRP_VIP]);
    let b1 = &view.services[0].backends[1].check;
    assert_eq!(
        (b1.status.as_deref(), b1.last_result.as_deref()),
        (Some("L4CON"), Some("connection refused"))
    );

    // What a person sees: each backend's row, with its state, after the page's script ran.
    let dom = chromium(&s, "status-page").unwrap();
    for (backend, state) in [("b0", "active"), ("b1", "down")] {
        let row = row_text(&dom, backend).unwrap_or_else(|| panic!("no row for {backend}\n{dom}"));
        assert!(
            row.split_whitespace().take(3).any(|w| w == state),
            "{backend} should show {state}: {row:?}"
        );
        assert!(row.starts_with(backend), "{row:?}");
    }
    for (backend, sessions) in [("b0", 2), ("b1", 0)] {
        let row = row_html(&dom, backend).unwrap();
        assert!(
            row.contains(&format!("data-sessions=\"{sessions}\">{sessions}<")),
            "{backend} should show {sessions} current sessions: {row}"
        );
    }
    assert!(
        dom.contains("2 current sessions")
            && dom.contains("Sessions: open flows at the last sweep of the connection table"),
        "{dom}"
    );
    assert!(dom.contains("VI_obs") && dom.contains("MASTER"), "{dom}");

    // `gerbang status` through the control socket: the same, as tables and as JSON.
    let socket = control_socket(&s);
    let tables = run_binary(&["status", "--socket", &socket]).unwrap();
    for (backend, state) in [("b0", "active"), ("b1", "down")] {
        let line = tables
            .lines()
            .find(|line| line.split_whitespace().nth(1) == Some(backend))
            .unwrap_or_else(|| panic!("no line for {backend}:\n{tables}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            (words[0], words[3]),
            ("web", state),
            "{backend}: {line:?}\n{tables}"
        );
    }
    for (backend, sessions) in [("b0", "2"), ("b1", "0")] {
        assert_eq!(
            cell(
                &tables,
                &["SERVICE", "BACKEND"],
                &["web", backend],
                "SESSIONS"
            )
            .as_deref(),
            Some(sessions),
            "{backend}\n{tables}"
        );
    }
    assert_eq!(
        cell(&tables, &["SERVICE", "LISTEN"], &["web"], "SESSIONS").as_deref(),
        Some("2"),
        "{tables}"
    );
    assert!(
        tables.contains("VI_obs") && tables.contains("MASTER"),
        "{tables}"
    );
    let cli_json = run_binary(&["status", "--socket", &socket, "--json"]).unwrap();
    let cli_view = StatusView::from_json(cli_json.trim()).unwrap();
    assert_eq!(backend_states(&cli_view), backend_states(&view));

    let page = s.get("/");
    for (what, text) in [
        ("the JSON API", &json),
        ("the status page", &page),
        ("the rendered page", &dom),
        ("gerbang status", &tables),
        ("gerbang status --json", &cli_json),
    ] {
        assert!(!text.contains(PASSWORD), "the VRRP password is in {what}");
    }
    s.gerbang.stop().unwrap();
}

/// A PostgreSQL check with `password`, fast, and the two servers as backends.
fn pg_service(t: &TwoArm, name: &str, port: u16, lines: &str, password: &str) -> String {
    let mut text = format!(
        "\n[[service]]\nname = \"{name}\"\nlisten = \"{}:{port}\"\n{lines}\
         [service.check]\ntype = \"postgres\"\nuser = \"gerbang\"\npassword = \"{password}\"\n\
         interval = \"300ms\"\ntimeout = \"900ms\"\nfall = 2\nrise = 2\n",
        t.vip
    );
    for (i, b) in t.backends.iter().enumerate() {
        text += &format!(
            "  [[service.backend]]\n  name = \"pg{i}\"\n  address = \"{}:{}\"\n",
            b.addr,
            Postgres::PORT
        );
    }
    text
}

/// A real PostgreSQL primary and its streaming replica behind a replica service: each
/// backend's role, the replica's lag, and a check refused for its wrong password arrive in
/// /metrics, the JSON API and `gerbang status`; neither configured password does.
#[test]
fn database_roles_and_lag_are_shown_and_their_passwords_never_are() {
    let t = TwoArm::new(2).unwrap();
    let scratch = TempDir::new();
    let (a0, a1) = (t.backends[0].addr, t.backends[1].addr);
    let primary = Postgres::primary(&t.backends[0].ns, a0, scratch.path(), "pg0").unwrap();
    primary
        .psql(&format!(
            "CREATE ROLE gerbang LOGIN PASSWORD '{DB_PASSWORD}'"
        ))
        .unwrap();
    let _replica =
        Postgres::replica(&t.backends[1].ns, a1, scratch.path(), "pg1", &primary).unwrap();
    let config = xdp_dataplane(&t)
        + &pg_service(
            &t,
            "pg-read",
            6433,
            "role = \"replica\"\nmax_lag = \"10s\"\n",
            DB_PASSWORD,
        )
        + &pg_service(&t, "pg-badpass", 6434, "", WRONG_DB_PASSWORD);
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    let http = gerbang.http_address().unwrap();
    let s = Scenario {
        gerbang,
        servers: Vec::new(),
        http,
        t,
    };

    let read = |backend| [("service", "pg-read"), ("backend", backend)];
    let badpass = [("service", "pg-badpass"), ("backend", "pg0")];
    let scrape = wait_until(Duration::from_secs(20), || {
        let scrape = s.scrape();
        let roles = [("pg0", "primary"), ("pg1", "replica")].map(|(backend, role)| {
            let [service, backend] = read(backend);
            scrape.value(
                "gerbang_server_db_role",
                &[service, backend, ("role", role)],
            )
        });
        let refused = scrape.value("gerbang_server_status", &badpass);
        (roles == [Some(1.0); 2] && refused == Some(0.0))
            .then_some(scrape)
            .ok_or_else(|| anyhow!("roles {roles:?}, pg-badpass/pg0 status {refused:?}"))
    })
    .unwrap();
    let lag = scrape
        .value("gerbang_server_replication_lag_seconds", &read("pg1"))
        .expect("the replica's lag");
    assert!((0.0..10.0).contains(&lag), "{lag}");
    assert_eq!(
        scrape.value("gerbang_server_status", &read("pg1")),
        Some(1.0)
    );
    let l7rsp = [badpass[0], badpass[1], ("state", "L7RSP")];
    assert_eq!(
        scrape.value("gerbang_server_check_status", &l7rsp),
        Some(1.0)
    );

    let json = s.get("/api/status");
    let view = StatusView::from_json(&json).unwrap();
    let roles: Vec<(&str, Option<&str>)> = view.services[0]
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.db_role.as_deref()))
        .collect();
    assert_eq!(roles, [("pg0", Some("primary")), ("pg1", Some("replica"))]);
    assert!(
        view.services[0].backends[1]
            .replication_lag_seconds
            .is_some()
    );
    let refused = view.services[1].backends[0].check.last_result.as_deref();
    assert!(
        refused.is_some_and(|r| r.contains("password authentication failed")),
        "{refused:?}"
    );

    let socket = control_socket(&s);
    let tables = run_binary(&["status", "--socket", &socket]).unwrap();
    for (backend, role) in [("pg0", "primary"), ("pg1", "replica")] {
        assert_eq!(
            cell(
                &tables,
                &["SERVICE", "BACKEND"],
                &["pg-read", backend],
                "DB ROLE"
            )
            .as_deref(),
            Some(role),
            "{tables}"
        );
    }
    let cli_json = run_binary(&["status", "--socket", &socket, "--json"]).unwrap();
    for (what, text) in [
        ("/metrics", &scrape.text),
        ("the JSON API", &json),
        ("gerbang status", &tables),
        ("gerbang status --json", &cli_json),
    ] {
        for password in [DB_PASSWORD, WRONG_DB_PASSWORD] {
            assert!(!text.contains(password), "a database password is in {what}");
        }
    }
    s.gerbang.stop().unwrap();
}

/// The binary as an operator runs it with `--log-format json`: every line it logs is a JSON
/// object, none holds the database password, and without `[http] listen` the status page
/// and metrics are on 127.0.0.1:8404, not reachable from the network.
#[test]
fn the_binary_logs_json_and_serves_on_loopback_by_default() {
    let t = TwoArm::new(1).unwrap();
    let b = &t.backends[0];
    let _server = HttpBackend::start(&b.ns, SocketAddrV4::new(b.addr, HTTP), "b0").unwrap();
    // A database nobody runs: its check fails and says why, in the log too.
    let config = xdp_dataplane(&t)
        + &web_service(&t)
        + &format!(
            "\n[[service]]\nname = \"db\"\nlisten = \"{}:5432\"\n\
             [service.check]\ntype = \"postgres\"\nuser = \"gerbang\"\n\
             password = \"{DB_PASSWORD}\"\ninterval = \"200ms\"\n\
             [[service.backend]]\nname = \"db0\"\naddress = \"{}:5432\"\n\
             \n[http]\nenabled = true\n",
            t.vip, b.addr
        );
    let dir = TempDir::new();
    let path = dir.write("gerbang.toml", &isolate(&config));
    let log = dir.path().join("gerbang.log");
    let mut process =
        t.lb.spawn(
            &Cmd::new(binary())
                .args(["--log-format", "json", "run", "--config"])
                .arg(&path)
                .log_to(&log),
        )
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let default = "http://127.0.0.1:8404";
    let scrape = wait_until(WAIT, || {
        let scrape = Scrape::parse(curl(&t.lb, &format!("{default}/metrics"))?)?;
        let db0 = [("service", "db"), ("backend", "db0")];
        let status = scrape.value("gerbang_server_status", &db0);
        (status == Some(0.0))
            .then_some(scrape)
            .ok_or_else(|| anyhow!("db0 is {status:?}"))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read_log()));
    assert_eq!(
        scrape.value(
            "gerbang_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    for address in [t.lb_client_addr, t.vip] {
        let target = SocketAddr::from((address, 8404));
        let connected = t
            .client
            .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))
            .unwrap();
        assert!(
            connected.is_err(),
            "the status page answers the network on {target}"
        );
    }

    let status = process.terminate().unwrap();
    let output = read_log();
    assert!(status.success(), "{status:?}\n{output}");
    let mut messages = Vec::new();
    for line in output.lines().filter(|line| !line.trim().is_empty()) {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("a log line that is not JSON ({err}): {line:?}"));
        assert!(
            entry["timestamp"].is_string() && entry["level"].is_string(),
            "{line}"
        );
        let message = entry["fields"]["message"].as_str();
        messages.push(
            message
                .unwrap_or_else(|| panic!("no message: {line}"))
                .to_owned(),
        );
    }
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&format!("status page on {default}/"))),
        "{output}"
    );
    assert!(
        output.contains("db0") && !output.contains(DB_PASSWORD),
        "the database password is in the log, or db0 is not:\n{output}"
    );
}

/// (service, backend, state, admin state) of every backend: what two snapshots taken a
/// moment apart agree on (counters and check timings move on).
fn backend_states(view: &StatusView) -> Vec<(String, String, String, String)> {
    view.services
        .iter()
        .flat_map(|s| {
            s.backends.iter().map(|b| {
                (
                    s.name.clone(),
                    b.name.clone(),
                    b.state.clone(),
                    b.admin.clone(),
                )
            })
        })
        .collect()
}

/// The page as headless Chromium renders it after its script has fetched the status, as
/// serialized DOM; a screenshot goes to `target/test-artifacts/observe-NAME.png`.
fn chromium(s: &Scenario, name: &str) -> Result<String> {
    let profile = TempDir::new();
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts)?;
    let screenshot = artifacts.join(format!("observe-{name}.png"));
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,700",
        // Virtual time runs the page's timers at once; it waits for the fetch.
        "--virtual-time-budget=3000",
    ];
    let user_data = format!("--user-data-dir={}", profile.path().display());
    let url = s.url("/");
    let mut args: Vec<String> = common.iter().map(|a| a.to_string()).collect();
    args.push(user_data);
    let shot = format!("--screenshot={}", screenshot.display());
    s.t.lb
        .exec(
            "chromium",
            args.iter()
                .map(String::as_str)
                .chain([shot.as_str(), url.as_str()]),
        )
        .context("taking a screenshot of the status page with chromium")?;
    ensure!(screenshot.exists(), "chromium wrote no screenshot");
    let dom =
        s.t.lb
            .exec(
                "chromium",
                args.iter()
                    .map(String::as_str)
                    .chain(["--dump-dom", url.as_str()]),
            )
            .context("loading the status page in chromium")?;
    eprintln!("status page screenshot: {}", screenshot.display());
    Ok(dom)
}

/// The HTML inside the table row of `backend`.
fn row_html<'d>(dom: &'d str, backend: &str) -> Option<&'d str> {
    let start = dom.find(&format!("data-backend=\"{backend}\""))?;
    let row = &dom[start..];
    Some(&row[row.find('>')? + 1..row.find("</tr>")?])
}

/// The cell of `column` in the row whose first words are `row`, in the table of `gerbang
/// status` whose header starts with `header`: columns are padded to line up, so the cell
/// starts where its header does.
fn cell(tables: &str, header: &[&str], row: &[&str], column: &str) -> Option<String> {
    let starts = |line: &str, words: &[&str]| {
        line.split_whitespace()
            .take(words.len())
            .eq(words.iter().copied())
    };
    let mut lines = tables.lines().skip_while(|line| !starts(line, header));
    let at = lines.next()?.find(column)?;
    let line = lines
        .take_while(|line| !line.trim().is_empty())
        .find(|line| starts(line, row))?;
    Some(line.get(at..)?.split_whitespace().next()?.to_owned())
}

/// The visible text of the table row of `backend`, cells separated by spaces.
fn row_text(dom: &str, backend: &str) -> Option<String> {
    let row = row_html(dom, backend)?;
    let mut text = String::new();
    let mut in_tag = false;
    for c in row.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// `target/test-artifacts`, next to the profile directory this test runs from.
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>
    exe.ancestors().nth(3).unwrap().join("test-artifacts")
}

fn control_socket(s: &Scenario) -> String {
    s.gerbang
        .status()
        .config
        .control
        .socket
        .display()
        .to_string()
}

fn run_binary(args: &[&str]) -> Result<String> {
    let output = Command::new(binary()).args(args).output()?;
    if !output.status.success() {
        bail!(
            "gerbang {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

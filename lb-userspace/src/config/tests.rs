//! Tests of the whole module through its public API: the example file, defaults, every rule
//! with the exact line and field it is reported at, and inputs that must not panic.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use super::*;

const EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/gerbang.toml");
const EXAMPLE: &str = include_str!("../../../config/gerbang.toml");
const PAIR_A: &str = include_str!("../../../config/pair-a.toml");
const PAIR_B: &str = include_str!("../../../config/pair-b.toml");

/// A valid file using every default. Line numbers below refer to it.
const MINIMAL: &str = r#"[dataplane]
interfaces = ["eth0"]
snat_address = "10.0.0.1"

[[service]]
name = "web"
listen = "192.0.2.10:80"

  [[service.backend]]
  name = "web1"
  address = "10.0.1.11:8080"
"#;

/// `MINIMAL` with the first `from` replaced by `to`.
#[track_caller]
fn edit(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from:?} is not in MINIMAL");
    MINIMAL.replacen(from, to, 1)
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml")
}

#[track_caller]
fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(config) => panic!("accepted: {config:#?}"),
        Err(error) => error.problems().to_vec(),
    }
}

/// Asserts that `text` has exactly one problem, on `line` about `field`; returns its message.
#[track_caller]
fn only_problem(text: &str, line: usize, field: &str) -> String {
    let problems = problems(text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(
        (problems[0].line, problems[0].field.as_str()),
        (Some(line), field),
        "{problems:#?}"
    );
    problems[0].message.clone()
}

fn addr(text: &str) -> SocketAddrV4 {
    text.parse().unwrap()
}

#[test]
fn example_file_loads() {
    let config = Config::load(Path::new(EXAMPLE_PATH)).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.dataplane.interfaces, ["eth0", "eth1"]);
    assert_eq!(config.dataplane.attach, AttachMode::Auto);
    assert_eq!(
        config.dataplane.snat_ports,
        PortRange {
            min: 1024,
            max: 32767
        }
    );
    assert_eq!(config.dataplane.flow_table_size, 65536);
    assert_eq!(config.timeouts, FlowTimeouts::default());
    let services: Vec<_> = config
        .services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.listen,
                s.protocol,
                s.snat_address,
                s.backends.len(),
            )
        })
        .collect();
    let snat = Ipv4Addr::new(10, 0, 0, 1);
    assert_eq!(
        services,
        [
            ("web-http", addr("203.0.113.10:80"), Protocol::Tcp, snat, 4),
            (
                "web-https",
                addr("203.0.113.10:443"),
                Protocol::Tcp,
                snat,
                3
            ),
            ("dns", addr("203.0.113.10:53"), Protocol::Udp, snat, 2),
        ]
    );
    assert_eq!(
        config.dataplane.pin_path,
        PathBuf::from(DataplaneConfig::DEFAULT_PIN_PATH)
    );
    assert_eq!(config.control, ControlConfig::default());
    assert_eq!(config.vrrp, []);

    let web = &config.services[0];
    assert_eq!(web.on_backend_down, DownPolicy::Reset);
    let web_check = CheckConfig {
        kind: CheckKind::Http(HttpCheck {
            path: "/health".into(),
            ..HttpCheck::default()
        }),
        interval: Duration::from_secs(2),
        fast_interval: Duration::from_secs(1),
        down_interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        fall: 3,
        rise: 2,
        port: None,
        address: None,
    };
    assert_eq!(web.check, web_check);
    assert_eq!(
        web.backends[2],
        BackendConfig {
            name: "pi-3".into(),
            address: addr("10.0.0.13:80"),
            weight: 2,
            backup: false,
            check: CheckConfig {
                port: Some(8081),
                ..web_check.clone()
            },
        }
    );
    let backends: Vec<_> = web
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.weight, b.backup, b.check.port))
        .collect();
    assert_eq!(
        backends,
        [
            ("pi-1", 1, false, None),
            ("pi-2", 1, false, None),
            ("pi-3", 2, false, Some(8081)),
            ("sorry", 1, true, None),
        ]
    );
    // Without [service.check]: a TCP connect every 2 s for TCP, no check for UDP.
    for service in &config.services[1..] {
        let expected = match service.protocol {
            Protocol::Tcp => CheckConfig::default(),
            Protocol::Udp => CheckConfig {
                kind: CheckKind::None,
                ..CheckConfig::default()
            },
        };
        assert_eq!(service.check, expected, "{}", service.name);
        assert!(service.backends.iter().all(|b| b.check == service.check));
    }
}

#[test]
fn defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(
        config,
        Config {
            dataplane: DataplaneConfig {
                mode: DataplaneMode::Auto,
                interfaces: vec!["eth0".into()],
                attach: AttachMode::Auto,
                snat_ports: PortRange {
                    min: 1024,
                    max: 32767
                },
                flow_table_size: 65536,
                pin_path: PathBuf::from("/sys/fs/bpf/gerbang"),
                xdp_log_rate: 0,
                proxy_threads: 0,
            },
            timeouts: FlowTimeouts {
                tcp_syn: Duration::from_secs(30),
                tcp_established: Duration::from_secs(15 * 60),
                tcp_closing: Duration::from_secs(10),
                udp: Duration::from_secs(60),
            },
            services: vec![ServiceConfig {
                name: "web".into(),
                listen: addr("192.0.2.10:80"),
                protocol: Protocol::Tcp,
                scheduler: Scheduler::RoundRobin,
                snat_address: Ipv4Addr::new(10, 0, 0, 1),
                on_backend_down: DownPolicy::Reset,
                max_connections: None,
                send_proxy_v2: false,
                role: ServiceRole::Any,
                replica_fallback: ReplicaFallback::Primary,
                check: DEFAULT_CHECK,
                backends: vec![BackendConfig {
                    name: "web1".into(),
                    address: addr("10.0.1.11:8080"),
                    weight: 1,
                    backup: false,
                    check: DEFAULT_CHECK,
                }],
            }],
            control: ControlConfig {
                socket: PathBuf::from("/run/gerbang/control.sock"),
            },
            http: HttpConfig {
                enabled: true,
                listen: "127.0.0.1:8404".parse().unwrap(),
            },
            vrrp: vec![],
        }
    );
    assert_eq!(CheckConfig::default(), DEFAULT_CHECK);
}

/// What a service without `[service.check]` gets, spelt out.
const DEFAULT_CHECK: CheckConfig = CheckConfig {
    kind: CheckKind::Tcp,
    interval: Duration::from_secs(2),
    fast_interval: Duration::from_secs(2),
    down_interval: Duration::from_secs(2),
    timeout: Duration::from_secs(2),
    fall: 3,
    rise: 2,
    port: None,
    address: None,
};

#[test]
fn every_key_set() {
    let text = r#"
[dataplane]
interfaces = ["eth0", "wg0"]
attach = "generic"
snat_address = "10.0.0.1"
snat_ports = "20000-29999"
flow_table_size = 1024
xdp_log_rate = 20
proxy_threads = 3
[timeouts]
tcp_syn = "200ms"
tcp_established = "1h"
tcp_closing = "5s"
udp = "2m"
[[service]]
name = "dns.v4-main_1"
listen = "192.0.2.10:53"
protocol = "udp"
scheduler = "round-robin"
snat_address = "10.0.0.2"
backend = [{ name = "a", address = "10.0.1.1:53" }, { name = "b", address = "10.0.1.2:53" }]
"#;
    let config = parse(text).unwrap();
    assert_eq!(config.dataplane.attach, AttachMode::Generic);
    assert_eq!(
        config.dataplane.snat_ports,
        PortRange {
            min: 20000,
            max: 29999
        }
    );
    assert_eq!(config.dataplane.flow_table_size, 1024);
    assert_eq!(config.dataplane.xdp_log_rate, 20);
    assert_eq!(config.dataplane.proxy_threads, 3);
    assert_eq!(config.timeouts.tcp_syn, Duration::from_millis(200));
    assert_eq!(config.timeouts.udp, Duration::from_secs(120));
    let service = &config.services[0];
    assert_eq!(
        (service.protocol, service.snat_address),
        (Protocol::Udp, Ipv4Addr::new(10, 0, 0, 2))
    );
    assert_eq!(service.backends.len(), 2);
}

#[test]
fn display_names_file_line_column_and_field() {
    let error = parse(&edit("10.0.1.11:8080", "10.0.0.2")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "test.toml:11:13: service[web].backend[web1].address: invalid address \"10.0.0.2\": \
         expected IPv4:port such as 10.0.0.2:8080"
    );
}

#[test]
fn duplicate_listen() {
    let text = format!(
        "{MINIMAL}\n[[service]]\nname = \"api\"\nlisten = \"192.0.2.10:80\"\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.1.12:80\"\n"
    );
    let message = only_problem(&text, 15, "service[api].listen");
    assert_eq!(
        message,
        "192.0.2.10:80/tcp is already the listen address of service[web] (line 7): each service \
         needs its own address, port and protocol"
    );
    // The same address and port over UDP is another service.
    parse(&text.replace("name = \"api\"", "name = \"api\"\nprotocol = \"udp\"")).unwrap();
}

#[test]
fn bad_duration() {
    let text = format!("{MINIMAL}[timeouts]\ntcp_syn = \"5 parsecs\"\n");
    let message = only_problem(&text, 13, "timeouts.tcp_syn");
    assert!(
        message.starts_with("invalid duration \"5 parsecs\": expected a whole number"),
        "{message}"
    );
    let problem = &problems(&text)[0];
    assert_eq!(problem.column, Some(11));

    let text =
        format!("{MINIMAL}[timeouts]\nudp = 60\ntcp_closing = \"0s\"\ntcp_established = \"8d\"\n");
    let found: Vec<_> = problems(&text)
        .into_iter()
        .map(|p| (p.line, p.field, p.message))
        .collect();
    assert_eq!(
        found,
        [
            (
                Some(13),
                "timeouts.udp".into(),
                "expected a duration with a unit, such as \"60s\", found the bare number 60".into()
            ),
            (
                Some(14),
                "timeouts.tcp_closing".into(),
                "duration \"0s\" is zero: it must be longer than 0".into()
            ),
            (
                Some(15),
                "timeouts.tcp_established".into(),
                "invalid duration \"8d\": expected a whole number followed by ms, s, m or h, such \
                 as \"200ms\", \"30s\", \"15m\" or \"1h\""
                    .into()
            ),
        ]
    );
}

#[test]
fn bad_snat_ports() {
    let text = edit(
        "snat_address = \"10.0.0.1\"\n",
        "snat_address = \"10.0.0.1\"\nsnat_ports = \"9-3\"\n",
    );
    let message = only_problem(&text, 4, "dataplane.snat_ports");
    assert_eq!(
        message,
        "invalid port range \"9-3\": MIN 9 is greater than MAX 3; expected \"MIN-MAX\" with 1 <= \
         MIN <= MAX <= 65535, such as \"1024-32767\""
    );
    for bad in [
        "0-10",
        "1-65536",
        "1024",
        "1024 - 2048",
        "-5",
        "+1-5",
        "a-b",
        "1-99999999999999999999",
    ] {
        let text = edit(
            "snat_address = \"10.0.0.1\"\n",
            &format!("snat_address = \"10.0.0.1\"\nsnat_ports = {bad:?}\n"),
        );
        only_problem(&text, 4, "dataplane.snat_ports");
    }
    let text = edit(
        "snat_address = \"10.0.0.1\"\n",
        "snat_address = \"10.0.0.1\"\nsnat_ports = \"1-65535\"\n",
    );
    assert_eq!(
        parse(&text).unwrap().dataplane.snat_ports,
        PortRange { min: 1, max: 65535 }
    );
}

#[test]
fn unknown_keys() {
    let message = only_problem(&edit("interfaces", "interface"), 2, "dataplane.interface");
    assert_eq!(
        message,
        "unknown field `interface`, expected one of `mode`, `interfaces`, `attach`, `snat_address`, \
         `snat_ports`, `flow_table_size`, `pin_path`, `xdp_log_rate`, `proxy_threads`"
    );
    let message = only_problem(
        &edit("  name = \"web1\"\n", "  name = \"web1\"\n  port = 3\n"),
        11,
        "service[web].backend[web1].port",
    );
    assert_eq!(
        message,
        "unknown field `port`, expected one of `name`, `address`, `weight`, `backup`, `check`"
    );
    let message = only_problem(
        &format!("{MINIMAL}  check = {{ inter = \"5s\" }}\n"),
        12,
        "service[web].backend[web1].check.inter",
    );
    assert!(
        message.starts_with("unknown field `inter`, expected one of `type`, `interval`,"),
        "{message}"
    );
    only_problem(
        &format!("{MINIMAL}  [service.backend.check]\n  prot = 1\n"),
        13,
        "service[web].backend[web1].check.prot",
    );
    only_problem(
        &format!("{MINIMAL}[control]\npath = \"/x\"\n"),
        13,
        "control.path",
    );
    only_problem(
        &format!("{MINIMAL}{VRRP}[vrrp.notify]\nmastr = \"true\"\n"),
        19,
        "vrrp[VI_1].notify.mastr",
    );
    only_problem(
        &vrrp("track_services = [{ service = \"web\", wieght = -2 }]\n"),
        18,
        "vrrp[VI_1].track_services[0].wieght",
    );
    only_problem(&format!("{MINIMAL}[metrics]\n"), 12, "metrics");
    let error = parse(&edit("interfaces", "\"inter\\nfaces\"")).unwrap_err();
    assert_eq!(error.to_string().lines().count(), 1, "{error}");
}

#[test]
fn missing_snat_address() {
    let text = edit("snat_address = \"10.0.0.1\"\n", "");
    let message = only_problem(&text, 4, "service[web].snat_address");
    assert_eq!(
        message,
        "no SNAT address: set dataplane.snat_address or service.snat_address: the address backends \
         see as the source, an address of this host"
    );
    // A service's own address is enough.
    let config = parse(&text.replace(
        "name = \"web\"\n",
        "name = \"web\"\nsnat_address = \"10.0.0.9\"\n",
    ))
    .unwrap();
    assert_eq!(config.services[0].snat_address, Ipv4Addr::new(10, 0, 0, 9));
}

#[test]
fn bad_snat_address() {
    let message = only_problem(
        &edit("\"10.0.0.1\"", "\"127.0.0.1\""),
        3,
        "dataplane.snat_address",
    );
    assert!(
        message.starts_with("127.0.0.1 is a loopback address: use a unicast address"),
        "{message}"
    );
    let message = only_problem(
        &edit("\"10.0.0.1\"", "\"10.0.0.1:80\""),
        3,
        "dataplane.snat_address",
    );
    assert!(message.contains("has a port"), "{message}");
    let text = edit(
        "name = \"web\"\n",
        "name = \"web\"\nsnat_address = \"0.0.0.0\"\n",
    );
    only_problem(&text, 7, "service[web].snat_address");
}

#[test]
fn snat_ports_colliding_with_a_service_on_the_snat_address() {
    let text = format!(
        "{}\n[[service]]\nname = \"alt\"\nlisten = \"192.0.2.10:8080\"\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.1.12:80\"\n",
        edit("\"10.0.0.1\"", "\"192.0.2.10\"")
    );
    let message = only_problem(&text, 3, "dataplane.snat_address");
    assert_eq!(
        message,
        "SNAT address 192.0.2.10 is also the listen address of service[alt] (192.0.2.10:8080/tcp, \
         line 15), and dataplane.snat_ports 1024-32767 includes port 8080: replies from backends \
         to that port would be mistaken for client traffic; narrow dataplane.snat_ports to leave \
         out 8080, or use a SNAT address no tcp service listens on"
    );
    // Port 80 of service[web] is outside snat_ports, so SNAT from the VIP itself is fine there.
    parse(&edit("\"10.0.0.1\"", "\"192.0.2.10\"")).unwrap();
    // Narrowing the range or listening over another protocol resolves it.
    parse(&text.replace(
        "snat_address = \"192.0.2.10\"\n",
        "snat_address = \"192.0.2.10\"\nsnat_ports = \"10000-20000\"\n",
    ))
    .unwrap();
    // A UDP service on that port does not meet TCP replies (its own SNAT address is elsewhere).
    parse(&text.replace(
        "name = \"alt\"\n",
        "name = \"alt\"\nprotocol = \"udp\"\nsnat_address = \"10.0.0.5\"\n",
    ))
    .unwrap();
    // A service's own SNAT address is reported where it is set.
    let text = format!(
        "{MINIMAL}\n[[service]]\nname = \"alt\"\nlisten = \"192.0.2.10:8080\"\nsnat_address = \"192.0.2.10\"\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.1.12:80\"\n"
    );
    let message = only_problem(&text, 16, "service[alt].snat_address");
    assert!(
        message.contains("service[alt] (192.0.2.10:8080/tcp, line 15)"),
        "{message}"
    );
}

/// A file with `count` services, each with one backend.
fn many_services(count: usize, backends_each: usize) -> String {
    let mut text =
        String::from("[dataplane]\ninterfaces = [\"eth0\"]\nsnat_address = \"10.0.0.1\"\n");
    for i in 0..count {
        write!(
            text,
            "[[service]]\nname = \"svc{i}\"\nlisten = \"192.0.2.10:{}\"\n",
            1000 + i
        )
        .unwrap();
        for j in 0..backends_each {
            write!(
                text,
                "[[service.backend]]\nname = \"b{j}\"\naddress = \"10.1.{}.{}:80\"\n",
                j / 250,
                j % 250 + 1
            )
            .unwrap();
        }
    }
    text
}

#[test]
fn too_many_services() {
    assert_eq!(parse(&many_services(256, 1)).unwrap().services.len(), 256);
    // Header lines: 3 of [dataplane], then 6 per service.
    let message = only_problem(&many_services(257, 1), 3 + 256 * 6 + 1, "service[svc256]");
    assert_eq!(
        message,
        "too many services: 257 configured, at most 256 (the size of the data plane's service table)"
    );
}

#[test]
fn too_many_backends_in_one_service() {
    assert_eq!(
        parse(&many_services(1, 256)).unwrap().services[0]
            .backends
            .len(),
        256
    );
    let message = only_problem(
        &many_services(1, 257),
        3 + 3 + 256 * 3 + 1,
        "service[svc0].backend[b256]",
    );
    assert!(
        message.starts_with("too many backends in one service: more than 256"),
        "{message}"
    );
}

#[test]
fn too_many_backends() {
    let total: usize = parse(&many_services(16, 256))
        .unwrap()
        .services
        .iter()
        .map(|s| s.backends.len())
        .sum();
    assert_eq!(total, 4096);
    // The 4097th backend is the first of the 17th service.
    let message = only_problem(
        &many_services(17, 256),
        3 + 16 * (3 + 256 * 3) + 3 + 1,
        "service[svc16].backend[b0]",
    );
    assert!(
        message.starts_with("too many backends: more than 4096 over all services"),
        "{message}"
    );
}

#[test]
fn interfaces() {
    let message = only_problem(&edit("[\"eth0\"]", "[]"), 2, "dataplane.interfaces");
    assert!(
        message.starts_with("empty: list at least one interface"),
        "{message}"
    );
    let message = only_problem(
        &edit("\"eth0\"", "\"enp0s31f6-uplink\""),
        2,
        "dataplane.interfaces[0]",
    );
    assert_eq!(
        message,
        "interface name \"enp0s31f6-uplink\" is 16 bytes long: Linux allows at most 15"
    );
    only_problem(
        &edit("\"eth0\"", "\"eth0\", \"eth0\""),
        2,
        "dataplane.interfaces[1]",
    );
    only_problem(&edit("\"eth0\"", "\"eth 0\""), 2, "dataplane.interfaces[0]");
    only_problem(&edit("\"eth0\"", "\"a/b\""), 2, "dataplane.interfaces[0]");
    only_problem(&edit("\"eth0\"", "\"\""), 2, "dataplane.interfaces[0]");
    only_problem(&edit("\"eth0\"", "3"), 2, "dataplane.interfaces[0]");
    let message = only_problem(&edit("[\"eth0\"]", "\"eth0\""), 2, "dataplane.interfaces");
    assert_eq!(
        message,
        "expected an array of interface names such as [\"eth0\"], found the string \"eth0\""
    );
    // 15 bytes is the most Linux allows.
    parse(&edit("\"eth0\"", "\"enp0s31f6-upli\"")).unwrap();
}

#[test]
fn syntax_error() {
    let found = problems(&edit("\"192.0.2.10:80\"", "192.0.2.10:80"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!((found[0].line, found[0].field.as_str()), (Some(7), ""));
    assert!(found[0].message.starts_with("invalid TOML: "), "{found:#?}");
    let error = parse("[dataplane]\ninterfaces = [\"eth0\"\n\n[[service]]\n").unwrap_err();
    assert!(error.to_string().starts_with("test.toml:"), "{error}");
    // A duplicate table is a TOML error too.
    assert_eq!(
        problems(&format!("{MINIMAL}[dataplane]\n"))[0].line,
        Some(12)
    );
}

#[test]
fn wrong_table_shapes() {
    let message = only_problem(
        &MINIMAL.replace("[dataplane]", "[[dataplane]]"),
        1,
        "dataplane[0]",
    );
    assert_eq!(
        message,
        "invalid type: array, expected a table: [name] with single brackets, or an inline { ... }"
    );
    let message = only_problem(
        &MINIMAL
            .replace("[[service]]", "[service]")
            .replace("[[service.backend]]", "[service.backend]"),
        5,
        "service",
    );
    assert!(
        message.contains("expected an array of tables: [[name]] with double brackets"),
        "{message}"
    );
    only_problem("dataplane = 5\n", 1, "dataplane");
}

#[test]
fn missing_things() {
    let found: Vec<_> = problems("")
        .into_iter()
        .map(|p| (p.line, p.field))
        .collect();
    assert_eq!(
        found,
        [
            (None, "dataplane.interfaces".into()),
            (None, "service".into())
        ]
    );

    let text = "[dataplane]\ninterfaces = [\"eth0\"]\nsnat_address = \"10.0.0.1\"\n[[service]]\n[[service.backend]]\n";
    let found: Vec<_> = problems(text)
        .into_iter()
        .map(|p| (p.line, p.field))
        .collect();
    assert_eq!(
        found,
        [
            (Some(4), "service[0].name".into()),
            (Some(4), "service[0].listen".into()),
            (Some(5), "service[0].backend[0].name".into()),
            (Some(5), "service[0].backend[0].address".into()),
        ]
    );
    let message = only_problem(
        &MINIMAL[..MINIMAL.find("\n  [[service.backend]]").unwrap()],
        5,
        "service[web].backend",
    );
    assert!(
        message.starts_with("no backends: add at least one [[service.backend]]"),
        "{message}"
    );
}

#[test]
fn addresses() {
    for (listen, expected) in [
        (
            "127.0.0.1:80",
            "127.0.0.1 is a loopback address: use a unicast address",
        ),
        ("0.0.0.0:80", "0.0.0.0 is the unspecified address"),
        ("224.0.0.1:80", "224.0.0.1 is a multicast address"),
        (
            "255.255.255.255:80",
            "255.255.255.255 is the broadcast address",
        ),
        (
            "192.0.2.10:0",
            "port 0 in \"192.0.2.10:0\" is not a port: use 1 to 65535, such as 192.0.2.10:80",
        ),
        (
            "192.0.2.10:70000",
            "invalid address \"192.0.2.10:70000\": port 70000 is out of range 1 to 65535",
        ),
        (
            "[2001:db8::1]:80",
            "invalid address \"[2001:db8::1]:80\": IPv6 is not supported yet",
        ),
        (
            "web.example:80",
            "invalid address \"web.example:80\": expected IPv4:port such as 192.0.2.10:80",
        ),
        (
            "010.0.0.1:80",
            "invalid address \"010.0.0.1:80\": expected IPv4:port",
        ),
    ] {
        let message = only_problem(&edit("192.0.2.10:80", listen), 7, "service[web].listen");
        assert!(message.starts_with(expected), "{listen}: {message}");
    }
    let text = edit(
        "  name = \"web1\"\n  address = \"10.0.1.11:8080\"\n",
        "  name = \"web1\"\n  address = \"10.0.1.11:8080\"\n[[service.backend]]\nname = \"web2\"\naddress = \"10.0.1.11:8080\"\n",
    );
    let message = only_problem(&text, 14, "service[web].backend[web2].address");
    assert_eq!(
        message,
        "10.0.1.11:8080 is already the address of service[web].backend[web1] (line 11): list each \
         backend once per service"
    );
}

#[test]
fn names() {
    let message = only_problem(&edit("\"web\"", "\"my web\""), 6, "service[0].name");
    assert_eq!(
        message,
        "invalid name \"my web\": use 1 to 64 characters of A-Z a-z 0-9 _ . -"
    );
    only_problem(
        &edit("\"web\"", &format!("{:?}", "w".repeat(65))),
        6,
        "service[0].name",
    );
    let text = format!(
        "{MINIMAL}[[service]]\nname = \"web\"\nlisten = \"192.0.2.11:80\"\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.1.12:80\"\n"
    );
    let message = only_problem(&text, 13, "service[web].name");
    assert!(
        message.starts_with("\"web\" is already the name of the service on line 6"),
        "{message}"
    );
    let text = edit(
        "  name = \"web1\"\n  address = \"10.0.1.11:8080\"\n",
        "  name = \"web1\"\n  address = \"10.0.1.11:8080\"\n[[service.backend]]\nname = \"web1\"\naddress = \"10.0.1.12:8080\"\n",
    );
    only_problem(&text, 13, "service[web].backend[web1].name");
}

#[test]
fn keywords_and_numbers() {
    let message = only_problem(
        &edit("listen", "protocol = \"sctp\"\nlisten"),
        7,
        "service[web].protocol",
    );
    assert_eq!(
        message,
        "invalid value \"sctp\": allowed \"tcp\", \"udp\" (default \"tcp\")"
    );
    only_problem(
        &edit("listen", "scheduler = \"least-conn\"\nlisten"),
        7,
        "service[web].scheduler",
    );
    let message = only_problem(
        &edit("interfaces", "attach = true\ninterfaces"),
        2,
        "dataplane.attach",
    );
    assert_eq!(
        message,
        "expected one of \"native\", \"generic\", \"auto\", found true"
    );
    let message = only_problem(
        &edit("interfaces", "flow_table_size = 100\ninterfaces"),
        2,
        "dataplane.flow_table_size",
    );
    assert_eq!(
        message,
        "100 is out of range: allowed 1024 to 16777216 entries (default 65536)"
    );
    only_problem(
        &edit("interfaces", "flow_table_size = \"big\"\ninterfaces"),
        2,
        "dataplane.flow_table_size",
    );
    only_problem(
        &edit("interfaces", "flow_table_size = -1\ninterfaces"),
        2,
        "dataplane.flow_table_size",
    );
    let config = parse(&edit(
        "interfaces",
        "attach = \"native\"\nflow_table_size = 16777216\ninterfaces",
    ))
    .unwrap();
    assert_eq!(
        (config.dataplane.attach, config.dataplane.flow_table_size),
        (AttachMode::Native, 16_777_216)
    );
}

#[test]
fn many_problems_at_once() {
    let text = r#"[dataplane]
interfaces = ["eth0", "eth0"]
attach = "fast"
snat_ports = "9-3"
flow_table_size = 12

[timeouts]
udp = "5 parsecs"

[[service]]
name = "web"
listen = "192.0.2.10"
protocol = "TCP"

  [[service.backend]]
  name = "web 1"
  address = "10.0.1.11:8080"

[[service]]
name = "web"
listen = "192.0.2.11:80"
"#;
    let error = parse(text).unwrap_err();
    let found: Vec<_> = error
        .problems()
        .iter()
        .map(|p| (p.line.unwrap(), p.field.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (2, "dataplane.interfaces[1]"),
            (3, "dataplane.attach"),
            (4, "dataplane.snat_ports"),
            (5, "dataplane.flow_table_size"),
            (8, "timeouts.udp"),
            (10, "service[web].snat_address"),
            (12, "service[web].listen"),
            (13, "service[web].protocol"),
            (16, "service[web].backend[0].name"),
            (19, "service[web].snat_address"),
            (19, "service[web].backend"),
            (20, "service[web].name"),
        ]
    );
    let rendered = error.to_string();
    assert_eq!(rendered.lines().count(), found.len(), "{rendered}");
    assert!(
        rendered.starts_with("test.toml:2:14: dataplane.interfaces[1]: \"eth0\" is listed twice"),
        "{rendered}"
    );
}

#[test]
fn load_names_the_file() {
    let missing = Path::new("/nonexistent/gerbang.toml");
    let error = Config::load(missing).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/gerbang.toml: cannot read: "),
        "{error}"
    );
    assert_eq!(error.origin(), "/nonexistent/gerbang.toml");

    let path =
        std::env::temp_dir().join(format!("gerbang-config-test-{}.toml", std::process::id()));
    let mut bytes = MINIMAL.as_bytes().to_vec();
    bytes.splice(
        MINIMAL.find("web1").unwrap()..MINIMAL.find("web1").unwrap(),
        [0xff],
    );
    std::fs::write(&path, &bytes).unwrap();
    let result = Config::load(&path);
    std::fs::remove_file(&path).unwrap();
    let error = result.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:10:11: not UTF-8 text: a TOML file must be UTF-8",
            path.display()
        )
    );
}

// ---- Example files ----

/// `text` with one level of commented-out TOML uncommented: `# key = ...`, `# [table]` and
/// `# # comment` lose their `# `; explanations stay comments.
fn uncomment(text: &str) -> String {
    let is_toml = |inner: &str| {
        inner.starts_with('#')
            || inner.starts_with('[')
            || inner.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
    };
    let mut out = String::new();
    for line in text.lines() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        match body.strip_prefix("# ") {
            Some(inner) if is_toml(inner) => writeln!(out, "{indent}{inner}").unwrap(),
            _ => writeln!(out, "{line}").unwrap(),
        }
    }
    out
}

#[test]
fn commented_out_examples_are_valid() {
    let once = uncomment(EXAMPLE);
    assert_ne!(once, EXAMPLE);
    let config = parse(&once).unwrap_or_else(|error| panic!("{error}\n{once}"));
    let web = &config.services[0];
    assert_eq!(web.snat_address, Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(
        (web.check.port, web.check.address),
        (Some(8080), Some(Ipv4Addr::new(10, 0, 0, 11)))
    );
    // pi-3 still checks its own port.
    assert_eq!(web.backends[2].check.port, Some(8081));
    let CheckKind::Http(http) = &web.check.kind else {
        panic!("{:?}", web.check.kind)
    };
    assert_eq!(
        (http.host.as_deref(), http.expect_body.as_deref()),
        (Some("www.example.com"), Some("OK"))
    );
    let [vrrp] = &config.vrrp[..] else {
        panic!("{:#?}", config.vrrp)
    };
    assert_eq!(
        *vrrp,
        VrrpConfig {
            name: "VI_1".into(),
            interface: "eth0".into(),
            virtual_router_id: 51,
            priority: 150,
            version: VrrpVersion::V3,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::from_secs(30),
            virtual_addresses: vec![VirtualAddress {
                address: Ipv4Addr::new(203, 0, 113, 10),
                prefix_len: 24
            }],
            unicast_source: None,
            unicast_peers: vec![],
            auth_password: None,
            garp_count: 3,
            garp_interval: Duration::from_millis(100),
            track_services: vec![TrackService {
                service: "web-http".into(),
                weight: -60
            }],
            track_interfaces: vec![TrackInterface {
                interface: "eth1".into(),
                weight: 0
            }],
            track_scripts: vec![TrackScript {
                name: "chk_maint".into(),
                command: "test ! -e /etc/gerbang/maintenance".into(),
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                fall: 1,
                rise: 2,
                weight: 0
            }],
            notify: NotifyCommands {
                master: Some("logger -t gerbang 'VI_1 is master: 203.0.113.10 is here'".into()),
                backup: Some("logger -t gerbang 'VI_1 is backup'".into()),
                fault: Some("logger -t gerbang 'VI_1 is faulty'".into()),
                stop: Some("logger -t gerbang 'VI_1 stopped'".into()),
            },
        }
    );

    // The second level: unicast and the VRRPv2 password.
    let twice = uncomment(&once).replace("version = 3", "version = 2");
    let config = parse(&twice).unwrap_or_else(|error| panic!("{error}\n{twice}"));
    let vrrp = &config.vrrp[0];
    assert_eq!(
        (
            vrrp.version,
            vrrp.unicast_source,
            &vrrp.unicast_peers[..],
            vrrp.auth_password.as_deref()
        ),
        (
            VrrpVersion::V2,
            Some(Ipv4Addr::new(203, 0, 113, 2)),
            &[Ipv4Addr::new(203, 0, 113, 3)][..],
            Some("gerbang1")
        )
    );
}

#[test]
fn pair_files_are_two_nodes_of_one_router() {
    let dir = Path::new(EXAMPLE_PATH).parent().unwrap();
    let a = Config::load(&dir.join("pair-a.toml")).unwrap_or_else(|error| panic!("{error}"));
    let b = Config::load(&dir.join("pair-b.toml")).unwrap_or_else(|error| panic!("{error}"));
    let (va, vb) = (&a.vrrp[0], &b.vrrp[0]);
    assert_eq!((va.priority, vb.priority), (150, 100));
    assert_eq!(va.unicast_source, vb.unicast_peers.first().copied());
    assert_eq!(vb.unicast_source, va.unicast_peers.first().copied());
    // The same router: only priority and unicast addresses differ.
    let same = |v: &VrrpConfig| VrrpConfig {
        priority: 0,
        unicast_source: None,
        unicast_peers: vec![],
        ..v.clone()
    };
    assert_eq!(same(va), same(vb));
    assert_eq!(va.track_services[0].service, "web");
    // The same services: only the SNAT address differs.
    let services = |config: &Config| {
        let mut services = config.services.clone();
        for service in &mut services {
            service.snat_address = Ipv4Addr::UNSPECIFIED;
        }
        services
    };
    assert_eq!(services(&a), services(&b));
    assert_ne!(a.services[0].snat_address, b.services[0].snat_address);
    assert_eq!(a.dataplane, b.dataplane);
    // Every VIP is held by the router.
    for service in &a.services {
        assert!(
            va.virtual_addresses
                .iter()
                .any(|v| v.address == *service.listen.ip()),
            "{}",
            service.name
        );
    }
}

// ---- dataplane.pin_path and [control] ----

#[test]
fn pin_path() {
    let with = |path: &str| {
        edit(
            "snat_address = \"10.0.0.1\"\n",
            &format!("snat_address = \"10.0.0.1\"\npin_path = {path:?}\n"),
        )
    };
    let config = parse(&with("/sys/fs/bpf/lb/")).unwrap();
    assert_eq!(config.dataplane.pin_path, PathBuf::from("/sys/fs/bpf/lb/"));
    let longest = format!("/sys/fs/bpf/{}", "p".repeat(200 - 12));
    parse(&with(&longest)).unwrap();
    for (path, expected) in [
        (
            "sys/fs/bpf/gerbang".to_owned(),
            "\"sys/fs/bpf/gerbang\" is not an absolute path: give a directory under a bpffs \
             mount, starting with '/', such as \"/sys/fs/bpf/gerbang\" (the default)"
                .to_owned(),
        ),
        (
            "/sys/fs/bpf/../gerbang".to_owned(),
            "\"/sys/fs/bpf/../gerbang\" has a \"..\" component: give the path without it"
                .to_owned(),
        ),
        (
            format!("{longest}q"),
            "path is 201 bytes long: at most 200".to_owned(),
        ),
        (
            "/sys/fs/bpf/a\nb".to_owned(),
            "\"/sys/fs/bpf/a\\nb\" contains '\\n': a path cannot contain control characters"
                .to_owned(),
        ),
    ] {
        assert_eq!(
            only_problem(&with(&path), 4, "dataplane.pin_path"),
            expected
        );
    }
    let text = edit(
        "snat_address = \"10.0.0.1\"\n",
        "snat_address = \"10.0.0.1\"\npin_path = \"/sys/fs/bpf/a\\u0000\"\n",
    );
    assert_eq!(
        only_problem(&text, 4, "dataplane.pin_path"),
        "\"/sys/fs/bpf/a\\0\" contains '\\0': a path cannot contain control characters"
    );
    // "..." and "a..b" are names, not the parent directory.
    parse(&with("/sys/fs/bpf/.../a..b")).unwrap();
    let message = only_problem(
        &edit("interfaces", "pin_path = 1\ninterfaces"),
        2,
        "dataplane.pin_path",
    );
    assert_eq!(
        message,
        "expected an absolute path such as \"/sys/fs/bpf/gerbang\", found the number 1"
    );
}

#[test]
fn control_socket() {
    let with = |path: &str| format!("{MINIMAL}[control]\nsocket = {path:?}\n");
    let longest = format!("/run/{}", "s".repeat(107 - 5));
    assert_eq!(
        parse(&with(&longest)).unwrap().control.socket,
        PathBuf::from(&longest)
    );
    // A socket may be reached through "..".
    parse(&with("/run/gerbang/../gerbang.sock")).unwrap();
    let message = only_problem(&with(&format!("{longest}x")), 13, "control.socket");
    assert_eq!(
        message,
        "path is 108 bytes long: at most 107, what a Unix socket address holds"
    );
    let message = only_problem(&with("control.sock"), 13, "control.socket");
    assert!(
        message.starts_with(
            "\"control.sock\" is not an absolute path: give the path of a Unix socket"
        ),
        "{message}"
    );
    // An empty table takes the defaults.
    assert_eq!(
        parse(&format!("{MINIMAL}[control]\n")).unwrap().control,
        ControlConfig::default()
    );
    only_problem(&format!("{MINIMAL}[[control]]\n"), 12, "control[0]");
}

#[test]
fn http_listener() {
    let with = |lines: &str| format!("{MINIMAL}[http]\n{lines}\n");
    let listen = |text: &str| {
        parse(&with(&format!("listen = {text:?}")))
            .unwrap()
            .http
            .listen
    };
    assert_eq!(listen("0.0.0.0:9100"), "0.0.0.0:9100".parse().unwrap());
    assert_eq!(listen("[::1]:8404"), "[::1]:8404".parse().unwrap());
    // Port 0 takes any free port: tests run several gerbangs at once.
    assert_eq!(listen("127.0.0.1:0").port(), 0);
    let off = parse(&with("enabled = false")).unwrap().http;
    assert_eq!(
        (off.enabled, off.listen),
        (false, HttpConfig::DEFAULT_LISTEN)
    );
    assert_eq!(
        parse(&with("")).unwrap().http,
        HttpConfig::default(),
        "an empty table takes the defaults"
    );

    let message = only_problem(&with("listen = \"127.0.0.1\""), 13, "http.listen");
    assert_eq!(
        message,
        "invalid address \"127.0.0.1\": give a port too, such as 127.0.0.1:8404"
    );
    let message = only_problem(&with("listen = \"localhost:8404\""), 13, "http.listen");
    assert!(message.contains("\"[::1]:8404\""), "{message}");
    let message = only_problem(&with("listen = \"224.0.0.1:80\""), 13, "http.listen");
    assert!(message.contains("multicast"), "{message}");
    let message = only_problem(&with("listen = 8404"), 13, "http.listen");
    assert_eq!(
        message,
        "expected an address and port such as \"127.0.0.1:8404\", found the number 8404"
    );
    let message = only_problem(&with("enabled = \"no\""), 13, "http.enabled");
    assert!(message.starts_with("expected true or false"), "{message}");
    only_problem(&with("port = 8404"), 13, "http.port");
}

// ---- Services: on_backend_down, weight, backup ----

#[test]
fn on_backend_down() {
    let text = edit("listen", "on_backend_down = \"keep\"\nlisten");
    assert_eq!(
        parse(&text).unwrap().services[0].on_backend_down,
        DownPolicy::Keep
    );
    let message = only_problem(
        &edit("listen", "on_backend_down = \"drop\"\nlisten"),
        7,
        "service[web].on_backend_down",
    );
    assert_eq!(
        message,
        "invalid value \"drop\": allowed \"reset\", \"keep\" (default \"reset\")"
    );
    assert_eq!(DownPolicy::Keep.to_string(), "keep");
    assert_eq!(DownPolicy::default().as_str(), "reset");
}

#[test]
fn weights_and_backups() {
    let with = |keys: &str| format!("{MINIMAL}{keys}\n");
    let backend = |text: &str| parse(text).unwrap().services[0].backends[0].clone();
    assert_eq!(backend(&with("  weight = 0")).weight, 0);
    assert_eq!(backend(&with("  weight = 256")).weight, 256);
    assert!(backend(&with("  backup = true")).backup);
    for (keys, field, expected) in [
        (
            "  weight = 257",
            "service[web].backend[web1].weight",
            "257 is out of range: allowed 0 to 256 (default 1)",
        ),
        (
            "  weight = -1",
            "service[web].backend[web1].weight",
            "-1 is out of range: allowed 0 to 256 (default 1)",
        ),
        (
            "  weight = \"2\"",
            "service[web].backend[web1].weight",
            "expected a whole number, found the string \"2\": allowed 0 to 256 (default 1)",
        ),
        (
            "  weight = 1.5",
            "service[web].backend[web1].weight",
            "expected a whole number, found the number 1.5: allowed 0 to 256 (default 1)",
        ),
        (
            "  backup = \"yes\"",
            "service[web].backend[web1].backup",
            "expected true or false, found the string \"yes\" (default false)",
        ),
    ] {
        assert_eq!(only_problem(&with(keys), 12, field), expected, "{keys}");
    }
}

// ---- Health checks ----

/// `MINIMAL` with a `[service.check]` of `keys` on line 9; its keys start on line 10.
fn with_service_check(keys: &str) -> String {
    edit(
        "\n  [[service.backend]]",
        &format!("\n[service.check]\n{keys}\n  [[service.backend]]"),
    )
}

fn check_of(text: &str) -> (CheckConfig, CheckConfig) {
    let config = parse(text).unwrap_or_else(|error| panic!("{error}"));
    let service = &config.services[0];
    (service.check.clone(), service.backends[0].check.clone())
}

#[test]
fn service_check_defaults_follow_interval() {
    let (service, backend) = check_of(&with_service_check("type = \"http\"\ninterval = \"5s\""));
    assert_eq!(
        service,
        CheckConfig {
            kind: CheckKind::Http(HttpCheck {
                path: "/".into(),
                host: None,
                expect_status: vec![(200, 399)],
                expect_body: None,
            }),
            interval: Duration::from_secs(5),
            fast_interval: Duration::from_secs(5),
            down_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            fall: 3,
            rise: 2,
            port: None,
            address: None,
        }
    );
    assert_eq!(backend, service);
    let (service, _) = check_of(&with_service_check("type = \"none\""));
    assert_eq!(service.kind, CheckKind::None);
    assert_eq!(CheckKind::None.to_string(), "none");
    let (service, _) = check_of(&with_service_check(
        "fall = 1\nrise = 100\nport = 65535\naddress = \"10.0.2.1\"\ntimeout = \"500ms\"",
    ));
    assert_eq!(
        (
            service.kind,
            service.fall,
            service.rise,
            service.port,
            service.address,
            service.timeout,
            service.interval
        ),
        (
            CheckKind::Tcp,
            1,
            100,
            Some(65535),
            Some(Ipv4Addr::new(10, 0, 2, 1)),
            Duration::from_millis(500),
            Duration::from_secs(2)
        )
    );
}

#[test]
fn backend_check_overrides_the_service_check() {
    // The service says http /health every 2 s; the backend says port 8081.
    let service_keys = "type = \"http\"\npath = \"/health\"\ninterval = \"2s\"";
    let expected = CheckConfig {
        kind: CheckKind::Http(HttpCheck {
            path: "/health".into(),
            ..HttpCheck::default()
        }),
        port: Some(8081),
        ..DEFAULT_CHECK
    };
    for backend_keys in [
        "  check = { port = 8081 }\n",
        "  [service.backend.check]\n  port = 8081\n",
    ] {
        let text = format!("{}{backend_keys}", with_service_check(service_keys));
        let (service, backend) = check_of(&text);
        assert_eq!(backend, expected, "{backend_keys}");
        assert_eq!(service.port, None);
    }

    // A backend's interval moves the intervals that follow it, unless the service set them.
    let text = format!(
        "{}  check = {{ interval = \"10s\", path = \"/ready\" }}\n",
        with_service_check("type = \"http\"\nfast_interval = \"1s\"")
    );
    let (service, backend) = check_of(&text);
    assert_eq!(
        (
            backend.interval,
            backend.fast_interval,
            backend.down_interval,
            backend.timeout
        ),
        (
            Duration::from_secs(10),
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_secs(10)
        )
    );
    assert_eq!(service.interval, Duration::from_secs(2));
    let CheckKind::Http(http) = backend.kind else {
        panic!()
    };
    assert_eq!(http.path, "/ready");

    // A backend may change the type: the service's HTTP keys then do not apply to it.
    let text = format!(
        "{}  check = {{ type = \"tcp\" }}\n",
        with_service_check(service_keys)
    );
    assert_eq!(check_of(&text).1.kind, CheckKind::Tcp);
    // Or make an HTTP check of the service's TCP one.
    let text = format!("{MINIMAL}  check = {{ type = \"http\", expect_status = 204 }}\n");
    let (service, backend) = check_of(&text);
    assert_eq!(service.kind, CheckKind::Tcp);
    assert_eq!(
        backend.kind,
        CheckKind::Http(HttpCheck {
            expect_status: vec![(204, 204)],
            ..HttpCheck::default()
        })
    );
}

#[test]
fn http_keys_need_an_http_check() {
    let message = only_problem(
        &with_service_check("path = \"/health\""),
        10,
        "service[web].check.path",
    );
    assert_eq!(
        message,
        "path applies to http checks only, and this check's type is \"tcp\" (the default): set \
         type = \"http\", or remove path"
    );
    // Reported as out of place, not as malformed as well.
    let message = only_problem(
        &with_service_check("type = \"none\"\nexpect_status = \"2xx\""),
        11,
        "service[web].check.expect_status",
    );
    assert_eq!(
        message,
        "expect_status applies to http checks only, and this check's type is \"none\" (set on \
         line 10): set type = \"http\", or remove expect_status"
    );
    // A backend's HTTP key needs the type it inherits to be http.
    let text = format!(
        "{}  check = {{ host = \"www.example.com\" }}\n",
        with_service_check("type = \"tcp\"")
    );
    let message = only_problem(&text, 14, "service[web].backend[web1].check.host");
    assert_eq!(
        message,
        "host applies to http checks only, and this check's type is \"tcp\" (from \
         service[web].check.type on line 10): set type = \"http\", or remove host"
    );
    let text = format!(
        "{}  check = {{ type = \"tcp\", expect_body = \"OK\" }}\n",
        with_service_check("type = \"http\"")
    );
    only_problem(&text, 14, "service[web].backend[web1].check.expect_body");
    // Every out-of-place key is reported.
    let found: Vec<_> = problems(&with_service_check(
        "path = \"/\"\nhost = \"h\"\nexpect_status = \"200\"\nexpect_body = \"OK\"",
    ))
    .into_iter()
    .map(|p| (p.line, p.field))
    .collect();
    assert_eq!(
        found,
        [
            (Some(10), "service[web].check.path".into()),
            (Some(11), "service[web].check.host".into()),
            (Some(12), "service[web].check.expect_status".into()),
            (Some(13), "service[web].check.expect_body".into()),
        ]
    );
}

#[test]
fn check_values() {
    for (key, expected) in [
        (
            "type = \"icmp\"",
            "invalid value \"icmp\": allowed \"tcp\", \"http\", \"none\", \"postgres\", \
             \"mysql\", \"galera\", \"http-role\" (default \"tcp\")",
        ),
        (
            "interval = \"0s\"",
            "duration \"0s\" is zero: it must be longer than 0",
        ),
        (
            "fast_interval = 2",
            "expected a duration with a unit, such as \"2s\", found the bare number 2",
        ),
        (
            "down_interval = \"1d\"",
            "invalid duration \"1d\": expected a whole number",
        ),
        ("timeout = \"169h\"", "duration \"169h\" is too long"),
        (
            "fall = 0",
            "0 is out of range: allowed 1 to 100 (default 3)",
        ),
        (
            "rise = 101",
            "101 is out of range: allowed 1 to 100 (default 2)",
        ),
        (
            "rise = \"2\"",
            "expected a number of checks, found the string \"2\": allowed 1 to 100 (default 2)",
        ),
        ("port = 0", "0 is out of range: allowed 1 to 65535"),
        ("port = 65536", "65536 is out of range: allowed 1 to 65535"),
        (
            "address = \"127.0.0.1\"",
            "127.0.0.1 is a loopback address: use a unicast address",
        ),
        (
            "address = \"10.0.1.11:80\"",
            "\"10.0.1.11:80\" has a port: expected an address only, such as 10.0.1.11",
        ),
        (
            "address = \"::1\"",
            "invalid address \"::1\": IPv6 is not supported yet",
        ),
        (
            "address = \"backend1\"",
            "invalid address \"backend1\": expected an IPv4 address such as 10.0.1.11",
        ),
    ] {
        let message = only_problem(
            &with_service_check(key),
            10,
            &format!("service[web].check.{}", key.split_once(' ').unwrap().0),
        );
        assert!(message.starts_with(expected), "{key}: {message}");
    }
    let long_path = format!("/{}", "p".repeat(1023));
    check_of(&with_service_check(&format!(
        "type = \"http\"\npath = {long_path:?}"
    )));
    let long_host = "h".repeat(255);
    check_of(&with_service_check(&format!(
        "type = \"http\"\nhost = {long_host:?}"
    )));
    let long_body = "b".repeat(1024);
    check_of(&with_service_check(&format!(
        "type = \"http\"\nexpect_body = {long_body:?}"
    )));
    check_of(&with_service_check(
        "type = \"http\"\npath = \"/health?full=1&x=%20\"",
    ));
    for (key, expected) in [
        ("path = \"health\"".to_owned(), "invalid path \"health\": it must start with '/', such as \"/health\"".to_owned()),
        ("path = \"\"".to_owned(), "invalid path \"\": it must start with '/'".to_owned()),
        ("path = \"/a b\"".to_owned(), "invalid path \"/a b\": ' ' is not allowed; use printable ASCII without spaces, and percent-encode anything else (a space is %20)".to_owned()),
        ("path = \"/é\"".to_owned(), "invalid path \"/é\": 'é' is not allowed".to_owned()),
        (format!("path = \"{long_path}p\""), "path is 1025 bytes long: at most 1024".to_owned()),
        ("host = \"\"".to_owned(), "empty: give the Host header to send, or remove host to send the checked address".to_owned()),
        ("host = \"a b\"".to_owned(), "invalid host \"a b\": ' ' is not allowed".to_owned()),
        (format!("host = \"{long_host}h\""), "host is 256 bytes long: at most 255".to_owned()),
        ("expect_body = \"\"".to_owned(), "empty: give text the response body must contain, or remove expect_body".to_owned()),
        (format!("expect_body = \"{long_body}b\""), "expect_body is 1025 bytes long: at most 1024".to_owned()),
        ("expect_status = true".to_owned(), "expected statuses or ranges of them separated by commas, each from 100 to 599, such as \"200-399\" (the default), \"200\" or \"200,204,301-302\"; found true".to_owned()),
    ] {
        let field = format!("service[web].check.{}", key.split_once(' ').unwrap().0);
        let message = only_problem(&with_service_check(&format!("type = \"http\"\n{key}")), 11, &field);
        assert!(message.starts_with(&expected), "{key}: {message}");
    }
}

#[test]
fn expect_status() {
    let statuses = |value: &str| {
        let (check, _) = check_of(&with_service_check(&format!(
            "type = \"http\"\nexpect_status = {value}"
        )));
        match check.kind {
            CheckKind::Http(http) => http.expect_status,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(statuses("\"200-399\""), [(200, 399)]);
    assert_eq!(statuses("\"200\""), [(200, 200)]);
    assert_eq!(statuses("200"), [(200, 200)]);
    assert_eq!(
        statuses("\"200,204,301-302\""),
        [(200, 200), (204, 204), (301, 302)]
    );
    assert_eq!(statuses("\" 200 , 204 - 206 \""), [(200, 200), (204, 206)]);
    assert_eq!(statuses("\"100-599\""), [(100, 599)]);
    let http = HttpCheck {
        expect_status: statuses("\"200,301-302\""),
        ..HttpCheck::default()
    };
    assert!(http.status_passes(200) && http.status_passes(302));
    assert!(!http.status_passes(201) && !http.status_passes(303));

    let rule = "expected statuses or ranges of them separated by commas, each from 100 to 599, \
                such as \"200-399\" (the default), \"200\" or \"200,204,301-302\"";
    for (value, expected) in [
        ("\"99\"", format!("invalid status list \"99\": 99 is not an HTTP status; {rule}")),
        ("600", format!("invalid status list \"600\": 600 is not an HTTP status; {rule}")),
        ("\"200-600\"", format!("invalid status list \"200-600\": 600 is not an HTTP status; {rule}")),
        ("\"99999999999999999999\"", format!("invalid status list \"99999999999999999999\": 4294967295 is not an HTTP status; {rule}")),
        ("\"300-200\"", "invalid status list \"300-200\": the range 300-200 goes down; write the lower status first".to_owned()),
        ("\"2xx\"", format!("invalid status list \"2xx\": \"2xx\" is not a status or a range of them; {rule}")),
        ("\"200,\"", format!("invalid status list \"200,\": \"\" is not a status or a range of them; {rule}")),
        ("\"-200\"", format!("invalid status list \"-200\": \"-200\" is not a status or a range of them; {rule}")),
        ("\"+200\"", format!("invalid status list \"+200\": \"+200\" is not a status or a range of them; {rule}")),
        ("\"200-300-400\"", format!("invalid status list \"200-300-400\": \"200-300-400\" is not a status or a range of them; {rule}")),
        ("\"\"", format!("empty: {rule}")),
        ("-1", format!("invalid status list \"-1\": \"-1\" is not a status or a range of them; {rule}")),
    ] {
        let text = with_service_check(&format!("type = \"http\"\nexpect_status = {value}"));
        assert_eq!(
            only_problem(&text, 11, "service[web].check.expect_status"),
            expected,
            "{value}"
        );
    }
}

#[test]
fn a_bad_service_check_is_reported_once() {
    // Every backend inherits the bad interval; it is reported where it is written.
    let text = format!(
        "{}[[service.backend]]\nname = \"web2\"\naddress = \"10.0.1.12:8080\"\ncheck = {{ port = 81 }}\n",
        with_service_check("interval = \"soon\"")
    );
    only_problem(&text, 10, "service[web].check.interval");
    // A bad backend check is that backend's alone.
    let text = format!("{MINIMAL}  check = {{ fall = 0 }}\n");
    only_problem(&text, 12, "service[web].backend[web1].check.fall");
}

// ---- VRRP ----

/// A VRRP instance using every default, to append to `MINIMAL`: `[[vrrp]]` is on line 13 and
/// the lines after it from 18.
const VRRP: &str = r#"
[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_addresses = ["192.0.2.10/24"]
"#;

/// `MINIMAL` and `VRRP`, then `extra` from line 18.
fn vrrp(extra: &str) -> String {
    format!("{MINIMAL}{VRRP}{extra}")
}

fn vrrp_of(text: &str) -> VrrpConfig {
    let config = parse(text).unwrap_or_else(|error| panic!("{error}"));
    config.vrrp[0].clone()
}

#[test]
fn vrrp_defaults() {
    assert_eq!(
        vrrp_of(&vrrp("")),
        VrrpConfig {
            name: "VI_1".into(),
            interface: "eth0".into(),
            virtual_router_id: 51,
            priority: 100,
            version: VrrpVersion::V3,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::ZERO,
            virtual_addresses: vec![VirtualAddress {
                address: Ipv4Addr::new(192, 0, 2, 10),
                prefix_len: 24
            }],
            unicast_source: None,
            unicast_peers: vec![],
            auth_password: None,
            garp_count: 3,
            garp_interval: Duration::from_millis(100),
            track_services: vec![],
            track_interfaces: vec![],
            track_scripts: vec![],
            notify: NotifyCommands::default(),
        }
    );
    assert_eq!(
        VirtualAddress {
            address: Ipv4Addr::new(192, 0, 2, 10),
            prefix_len: 24
        }
        .to_string(),
        "192.0.2.10/24"
    );
    assert_eq!(VrrpVersion::V2.to_string(), "VRRPv2");
    assert_eq!(VrrpConfig::MULTICAST_GROUP, Ipv4Addr::new(224, 0, 0, 18));
}

#[test]
fn vrrp_every_key_set() {
    let text = vrrp(
        r#"priority = 255
version = 2
advert_interval = "3s"
preempt = true
preempt_delay = "1000s"
unicast_source = "10.0.0.1"
unicast_peers = ["10.0.0.2", "10.0.0.3"]
auth_password = "pass wd!"
garp_count = 100
garp_interval = "1s"
track_services = [{ service = "web", weight = -20 }]
track_interfaces = [{ interface = "eth1" }, { interface = "wg0", weight = 254 }]
[[vrrp.track_script]]
name = "chk"
command = "pidof nginx"
interval = "5s"
[vrrp.notify]
stop = "true"
"#,
    );
    let v = vrrp_of(&text);
    assert_eq!(
        (v.priority, v.version, v.advert_interval, v.preempt_delay),
        (
            255,
            VrrpVersion::V2,
            Duration::from_secs(3),
            Duration::from_secs(1000)
        )
    );
    assert_eq!(v.unicast_source, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(v.unicast_peers.len(), 2);
    assert_eq!(v.auth_password.as_deref(), Some("pass wd!"));
    assert_eq!(
        (v.garp_count, v.garp_interval),
        (100, Duration::from_secs(1))
    );
    assert_eq!(
        v.track_services,
        [TrackService {
            service: "web".into(),
            weight: -20
        }]
    );
    assert_eq!(
        v.track_interfaces,
        [
            TrackInterface {
                interface: "eth1".into(),
                weight: 0
            },
            TrackInterface {
                interface: "wg0".into(),
                weight: 254
            }
        ]
    );
    assert_eq!(
        v.track_scripts,
        [TrackScript {
            name: "chk".into(),
            command: "pidof nginx".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            fall: 2,
            rise: 2,
            weight: 0
        }]
    );
    assert_eq!(
        v.notify,
        NotifyCommands {
            stop: Some("true".into()),
            ..NotifyCommands::default()
        }
    );
}

#[test]
fn vrrp_required_keys() {
    let text = format!("{MINIMAL}\n[[vrrp]]\npriority = 100\n");
    let found: Vec<_> = problems(&text)
        .into_iter()
        .map(|p| (p.line, p.field))
        .collect();
    assert_eq!(
        found,
        [
            (Some(13), "vrrp[0].name".into()),
            (Some(13), "vrrp[0].interface".into()),
            (Some(13), "vrrp[0].virtual_router_id".into()),
            (Some(13), "vrrp[0].virtual_addresses".into()),
        ]
    );
    let message = only_problem(
        &vrrp("").replace("virtual_router_id = 51\n", ""),
        13,
        "vrrp[VI_1].virtual_router_id",
    );
    assert_eq!(
        message,
        "missing: the virtual router's id, 1 to 255, the same on every node of the pair, such as \
         virtual_router_id = 51"
    );
    only_problem(&format!("{MINIMAL}[vrrp]\n"), 12, "vrrp");
}

#[test]
fn vrrp_advert_interval_depends_on_the_version() {
    let interval = |version: &str, value: &str| {
        let text = vrrp(&format!("{version}advert_interval = {value:?}\n"));
        parse(&text).map(|config| config.vrrp[0].advert_interval)
    };
    // VRRPv3: whole centiseconds, 10ms to 40.95s.
    for (value, millis) in [
        ("10ms", 10),
        ("40950ms", 40_950),
        ("1500ms", 1500),
        ("40s", 40_000),
    ] {
        assert_eq!(
            interval("", value),
            Ok(Duration::from_millis(millis)),
            "{value}"
        );
    }
    for value in ["5ms", "15ms", "40960ms", "41s", "1m"] {
        let text = vrrp(&format!("advert_interval = {value:?}\n"));
        let message = only_problem(&text, 18, "vrrp[VI_1].advert_interval");
        assert!(
            message.ends_with(
                "is not an advertisement interval of version 3 (the default): VRRPv3 advertises \
                 in whole centiseconds, from \"10ms\" to \"40950ms\" (40.95s), such as \"1s\" or \
                 \"100ms\""
            ),
            "{value}: {message}"
        );
    }
    // VRRPv2: whole seconds, 1s to 255s.
    for (value, secs) in [("1s", 1), ("255s", 255), ("2000ms", 2), ("4m", 240)] {
        assert_eq!(
            interval("version = 2\n", value),
            Ok(Duration::from_secs(secs)),
            "{value}"
        );
    }
    for value in ["100ms", "1500ms", "256s", "5m"] {
        let text = vrrp(&format!("version = 2\nadvert_interval = {value:?}\n"));
        let message = only_problem(&text, 19, "vrrp[VI_1].advert_interval");
        assert!(
            message.ends_with(
                "is not an advertisement interval of version 2 (line 18): VRRPv2 advertises in \
                 whole seconds, from \"1s\" to \"255s\""
            ),
            "{value}: {message}"
        );
    }
    let message = only_problem(
        &vrrp("version = 2\nadvert_interval = \"1500ms\"\n"),
        19,
        "vrrp[VI_1].advert_interval",
    );
    assert!(
        message.starts_with("1.5s is not an advertisement interval"),
        "{message}"
    );
    // A bad version is reported alone, not again by the interval.
    let message = only_problem(
        &vrrp("version = 4\nadvert_interval = \"15ms\"\n"),
        18,
        "vrrp[VI_1].version",
    );
    assert_eq!(
        message,
        "invalid version 4: allowed 3 (RFC 5798, the default) or 2 (RFC 3768, keepalived's \
         default)"
    );
    only_problem(&vrrp("version = \"3\"\n"), 18, "vrrp[VI_1].version");
}

#[test]
fn vrrp_auth_password_is_v2_only() {
    let message = only_problem(
        &vrrp("auth_password = \"secret\"\n"),
        18,
        "vrrp[VI_1].auth_password",
    );
    assert_eq!(
        message,
        "VRRPv3 has no authentication (RFC 5798 removed it), and this instance speaks version 3 \
         (the default): remove auth_password, or set version = 2 to interoperate with a \
         keepalived peer that uses auth_type PASS"
    );
    let message = only_problem(
        &vrrp("version = 3\nauth_password = \"secret\"\n"),
        19,
        "vrrp[VI_1].auth_password",
    );
    assert!(message.contains("speaks version 3 (line 18)"), "{message}");
    let text = vrrp("version = 2\nauth_password = \"12345678\"\n");
    assert_eq!(vrrp_of(&text).auth_password.as_deref(), Some("12345678"));
    for (password, expected) in [
        (
            "123456789",
            "password is 9 bytes long: use 1 to 8 printable ASCII characters",
        ),
        ("", "password is 0 bytes long"),
        (
            "pässwd",
            "password contains a character outside printable ASCII",
        ),
        (
            "tab\there",
            "password contains a character outside printable ASCII",
        ),
    ] {
        let text = vrrp(&format!("version = 2\nauth_password = {password:?}\n"));
        let message = only_problem(&text, 19, "vrrp[VI_1].auth_password");
        assert!(message.starts_with(expected), "{password:?}: {message}");
    }
}

#[test]
fn vrrp_router_ids_are_unique_per_interface() {
    let second = |interface: &str, vrid: u32| {
        format!(
            "\n[[vrrp]]\nname = \"VI_2\"\ninterface = {interface:?}\nvirtual_router_id = \
             {vrid}\nvirtual_addresses = [\"192.0.2.11\"]\n"
        )
    };
    let message = only_problem(
        &vrrp(&second("eth0", 51)),
        22,
        "vrrp[VI_2].virtual_router_id",
    );
    assert_eq!(
        message,
        "virtual router 51 on eth0 is already vrrp[VI_1] (line 16): each instance on an interface \
         needs its own virtual_router_id"
    );
    let config = parse(&vrrp(&second("eth1", 51))).unwrap();
    assert_eq!(config.vrrp.len(), 2);
    parse(&vrrp(&second("eth0", 52))).unwrap();
    // Names are unique too.
    let text = vrrp(&second("eth0", 52).replace("VI_2", "VI_1"));
    let message = only_problem(&text, 20, "vrrp[VI_1].name");
    assert!(
        message.starts_with("\"VI_1\" is already the name of the VRRP instance on line 14"),
        "{message}"
    );
}

#[test]
fn vrrp_virtual_addresses() {
    let with = |list: &str| vrrp("").replace("[\"192.0.2.10/24\"]", list);
    let addresses = |list: &str| vrrp_of(&with(list)).virtual_addresses;
    assert_eq!(
        addresses("[\"192.0.2.10\", \"198.51.100.7/31\", \"10.1.2.3/8\"]"),
        [
            VirtualAddress {
                address: Ipv4Addr::new(192, 0, 2, 10),
                prefix_len: 32
            },
            VirtualAddress {
                address: Ipv4Addr::new(198, 51, 100, 7),
                prefix_len: 31
            },
            VirtualAddress {
                address: Ipv4Addr::new(10, 1, 2, 3),
                prefix_len: 8
            },
        ]
    );
    let twenty: Vec<_> = (1..=20).map(|i| format!("\"192.0.2.{i}\"")).collect();
    assert_eq!(addresses(&format!("[{}]", twenty.join(", "))).len(), 20);
    let message = only_problem(
        &with(&format!("[{}, \"192.0.2.21\"]", twenty.join(", "))),
        17,
        "vrrp[VI_1].virtual_addresses",
    );
    assert_eq!(
        message,
        "21 addresses: list 1 to 20 per instance (more need another instance)"
    );
    only_problem(&with("[]"), 17, "vrrp[VI_1].virtual_addresses");
    only_problem(&with("\"192.0.2.10\""), 17, "vrrp[VI_1].virtual_addresses");
    for (element, expected) in [
        (
            "\"192.0.2.10/33\"",
            "invalid prefix length in \"192.0.2.10/33\": expected an IPv4 address with an optional prefix length from 1 to 32",
        ),
        (
            "\"192.0.2.10/0\"",
            "invalid prefix length in \"192.0.2.10/0\"",
        ),
        (
            "\"192.0.2.10/+8\"",
            "invalid prefix length in \"192.0.2.10/+8\"",
        ),
        (
            "\"192.0.2.10/\"",
            "invalid prefix length in \"192.0.2.10/\"",
        ),
        ("\"192.0.2.10:80\"", "invalid address \"192.0.2.10:80\""),
        ("\"127.0.0.1/8\"", "127.0.0.1 is a loopback address"),
        (
            "\"192.0.2.0/24\"",
            "192.0.2.0 is the network address of its /24: give the address the master should answer on",
        ),
        (
            "\"192.0.2.255/24\"",
            "192.0.2.255 is the broadcast address of its /24",
        ),
        (
            "51",
            "expected an address such as \"203.0.113.10/24\" or \"203.0.113.10\" (/32), found the number 51",
        ),
    ] {
        let message = only_problem(
            &with(&format!("[\"192.0.2.10/24\", {element}]")),
            17,
            "vrrp[VI_1].virtual_addresses[1]",
        );
        assert!(message.starts_with(expected), "{element}: {message}");
    }
    let message = only_problem(
        &with("[\"192.0.2.10/24\", \"192.0.2.10/32\"]"),
        17,
        "vrrp[VI_1].virtual_addresses[1]",
    );
    assert_eq!(
        message,
        "192.0.2.10 is listed twice: list each address once"
    );
    // An address belongs to one instance only.
    let text = vrrp(
        "\n[[vrrp]]\nname = \"VI_2\"\ninterface = \"eth1\"\nvirtual_router_id = 52\n\
         virtual_addresses = [\"192.0.2.11\", \"192.0.2.10/32\"]\n",
    );
    let message = only_problem(&text, 23, "vrrp[VI_2].virtual_addresses[1]");
    assert_eq!(
        message,
        "192.0.2.10 is already a virtual address of vrrp[VI_1] (line 17): an address belongs to \
         one instance only"
    );
}

#[test]
fn vrrp_unicast() {
    let message = only_problem(
        &vrrp("unicast_source = \"10.0.0.1\"\n"),
        18,
        "vrrp[VI_1].unicast_source",
    );
    assert_eq!(
        message,
        "unicast_source is used only with unicast_peers: list the other nodes' addresses in \
         unicast_peers, or remove unicast_source to advertise by multicast to 224.0.0.18"
    );
    let message = only_problem(
        &vrrp("unicast_source = \"10.0.0.1\"\nunicast_peers = [\"10.0.0.2\", \"10.0.0.1\"]\n"),
        18,
        "vrrp[VI_1].unicast_source",
    );
    assert_eq!(
        message,
        "10.0.0.1 is also in unicast_peers: the source is this node, the peers are the others"
    );
    // Peers alone are enough: the kernel picks the source.
    assert_eq!(
        vrrp_of(&vrrp("unicast_peers = [\"10.0.0.2\"]\n")).unicast_peers,
        [Ipv4Addr::new(10, 0, 0, 2)]
    );
    for (peers, field, expected) in [
        (
            "[\"10.0.0.2\", \"10.0.0.2\"]",
            "vrrp[VI_1].unicast_peers[1]",
            "10.0.0.2 is listed twice: list each peer once",
        ),
        (
            "[\"224.0.0.18\"]",
            "vrrp[VI_1].unicast_peers[0]",
            "224.0.0.18 is a multicast address",
        ),
        (
            "[2]",
            "vrrp[VI_1].unicast_peers[0]",
            "expected a peer's address such as \"10.0.0.3\", found the number 2",
        ),
        (
            "\"10.0.0.2\"",
            "vrrp[VI_1].unicast_peers",
            "expected an array of the other nodes' addresses such as [\"10.0.0.3\"], found the string \"10.0.0.2\"",
        ),
    ] {
        let message = only_problem(&vrrp(&format!("unicast_peers = {peers}\n")), 18, field);
        assert!(message.starts_with(expected), "{peers}: {message}");
    }
    // A bad source with no peers is reported for what it is.
    let message = only_problem(
        &vrrp("unicast_source = \"0.0.0.0\"\n"),
        18,
        "vrrp[VI_1].unicast_source",
    );
    assert!(
        message.starts_with("0.0.0.0 is the unspecified address"),
        "{message}"
    );
}

#[test]
fn vrrp_numbers_and_preemption() {
    for (key, field, expected) in [
        (
            "priority = 0",
            "priority",
            "0 is out of range: allowed 1 to 255 (default 100)",
        ),
        (
            "priority = 256",
            "priority",
            "256 is out of range: allowed 1 to 255 (default 100)",
        ),
        (
            "garp_count = 0",
            "garp_count",
            "0 is out of range: allowed 1 to 100 (default 3)",
        ),
        (
            "garp_interval = \"0ms\"",
            "garp_interval",
            "duration \"0ms\" is zero",
        ),
        (
            "preempt = 1",
            "preempt",
            "expected true or false, found the number 1 (default true)",
        ),
        (
            "preempt_delay = \"1001s\"",
            "preempt_delay",
            "preempt_delay 1001s is too long: at most 1000s (keepalived's limit)",
        ),
        (
            "preempt_delay = 30",
            "preempt_delay",
            "expected a duration with a unit, such as \"30s\"",
        ),
        (
            "track_interfaces = [{ interface = \"eth1\", weight = 255 }]",
            "track_interfaces[0].weight",
            "255 is out of range: allowed -254 to 254 (default 0)",
        ),
        (
            "track_interfaces = [{ interface = \"eth1\", weight = -255 }]",
            "track_interfaces[0].weight",
            "-255 is out of range: allowed -254 to 254 (default 0)",
        ),
        (
            "track_interfaces = [{ interface = \"eth1\", weight = \"-20\" }]",
            "track_interfaces[0].weight",
            "expected a priority change, negative to lower it (0: FAULT while failing), found the string \"-20\"",
        ),
    ] {
        let message = only_problem(
            &vrrp(&format!("{key}\n")),
            18,
            &format!("vrrp[VI_1].{field}"),
        );
        assert!(message.starts_with(expected), "{key}: {message}");
    }
    for (vrid, expected) in [
        ("0", "0 is out of range: allowed 1 to 255"),
        (
            "\"51\"",
            "expected a virtual router id, found the string \"51\": allowed 1 to 255",
        ),
    ] {
        let text = vrrp("").replace(
            "virtual_router_id = 51",
            &format!("virtual_router_id = {vrid}"),
        );
        assert_eq!(
            only_problem(&text, 16, "vrrp[VI_1].virtual_router_id"),
            expected
        );
    }
    assert_eq!(
        vrrp_of(&vrrp("preempt_delay = \"0s\"\n")).preempt_delay,
        Duration::ZERO
    );
    assert!(!vrrp_of(&vrrp("preempt = false\n")).preempt);
    let message = only_problem(
        &vrrp("preempt = false\npreempt_delay = \"10s\"\n"),
        19,
        "vrrp[VI_1].preempt_delay",
    );
    assert_eq!(
        message,
        "preempt_delay applies only when preempting, and preempt = false (line 18): remove \
         preempt_delay, or preempt"
    );
}

#[test]
fn vrrp_track_services_name_configured_services() {
    let message = only_problem(
        &vrrp("track_services = [{ service = \"api\", weight = -20 }]\n"),
        18,
        "vrrp[VI_1].track_services[0].service",
    );
    assert_eq!(
        message,
        "no service is named \"api\": the services are \"web\""
    );
    let message = only_problem(
        &vrrp("track_services = [{ service = \"web\" }, { service = \"web\", weight = -5 }]\n"),
        18,
        "vrrp[VI_1].track_services[1].service",
    );
    assert_eq!(
        message,
        "\"web\" is already tracked on line 18: track each service once"
    );
    let text = vrrp("[[vrrp.track_services]]\nweight = -10\n");
    let message = only_problem(&text, 18, "vrrp[VI_1].track_services[0].service");
    assert!(
        message.starts_with("missing: the name of the service to track"),
        "{message}"
    );
    // A service whose name is invalid is reported once, not again by a track naming it.
    let text =
        vrrp("track_services = [{ service = \"my web\" }]\n").replacen("\"web\"", "\"my web\"", 1);
    only_problem(&text, 6, "service[0].name");
    // A long list of services is cut short.
    let text = format!(
        "{}[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 1\n\
         virtual_addresses = [\"192.0.2.10\"]\ntrack_services = [{{ service = \"web\" }}]\n",
        many_services(12, 1)
    );
    let message = only_problem(
        &text,
        3 + 12 * 6 + 6,
        "vrrp[VI_1].track_services[0].service",
    );
    assert_eq!(
        message,
        "no service is named \"web\": the services are \"svc0\", \"svc1\", \"svc10\", \"svc11\", \
         \"svc2\", \"svc3\", \"svc4\", \"svc5\", \"svc6\", \"svc7\" and 2 more"
    );
    // The weight is checked even when the service is unknown.
    let found: Vec<_> = problems(&vrrp(
        "track_services = [{ service = \"api\", weight = 300 }]\n",
    ))
    .into_iter()
    .map(|p| p.field)
    .collect();
    assert_eq!(
        found,
        [
            "vrrp[VI_1].track_services[0].service",
            "vrrp[VI_1].track_services[0].weight"
        ]
    );
}

#[test]
fn vrrp_track_interfaces() {
    let message = only_problem(
        &vrrp("track_interfaces = [{ interface = \"eth1\" }, { interface = \"eth1\" }]\n"),
        18,
        "vrrp[VI_1].track_interfaces[1].interface",
    );
    assert_eq!(
        message,
        "\"eth1\" is already tracked on line 18: track each interface once"
    );
    let message = only_problem(
        &vrrp("track_interfaces = [{ interface = \"eth 1\" }]\n"),
        18,
        "vrrp[VI_1].track_interfaces[0].interface",
    );
    assert!(
        message.starts_with("interface name \"eth 1\" contains ' '"),
        "{message}"
    );
    let message = only_problem(
        &vrrp("").replace("interface = \"eth0\"", "interface = \"enp0s31f6-uplink\""),
        15,
        "vrrp[VI_1].interface",
    );
    assert_eq!(
        message,
        "interface name \"enp0s31f6-uplink\" is 16 bytes long: Linux allows at most 15"
    );
}

#[test]
fn vrrp_track_scripts_and_notify() {
    let script = |keys: &str| vrrp(&format!("[[vrrp.track_script]]\nname = \"chk\"\n{keys}\n"));
    let v = vrrp_of(&script(
        "command = \"true\"\ninterval = \"3s\"\ntimeout = \"1s\"\nfall = 1\nrise = 5\nweight = -30",
    ));
    assert_eq!(
        v.track_scripts,
        [TrackScript {
            name: "chk".into(),
            command: "true".into(),
            interval: Duration::from_secs(3),
            timeout: Duration::from_secs(1),
            fall: 1,
            rise: 5,
            weight: -30,
        }]
    );
    let message = only_problem(&script(""), 18, "vrrp[VI_1].track_script[chk].command");
    assert!(
        message.starts_with("missing: the command to run with sh -c"),
        "{message}"
    );
    let long = "x".repeat(4096);
    vrrp_of(&script(&format!("command = {long:?}")));
    for (keys, field, expected) in [
        (
            "command = \"  \"",
            "command",
            "empty: give a command for sh -c, or remove the key",
        ),
        (
            "command = \"a\\u0000b\"",
            "command",
            "contains a NUL character, which no command line can hold",
        ),
        (
            "command = 1",
            "command",
            "expected a command for sh -c, as a string, found the number 1",
        ),
        (
            "command = \"true\"\nfall = 0",
            "fall",
            "0 is out of range: allowed 1 to 100 (default 2)",
        ),
        (
            "command = \"true\"\ntimeout = \"0s\"",
            "timeout",
            "duration \"0s\" is zero",
        ),
    ] {
        let line = 20 + keys.lines().count() - 1;
        let message = only_problem(
            &script(keys),
            line,
            &format!("vrrp[VI_1].track_script[chk].{field}"),
        );
        assert!(message.starts_with(expected), "{keys}: {message}");
    }
    let message = only_problem(
        &script(&format!("command = \"{long}x\"")),
        20,
        "vrrp[VI_1].track_script[chk].command",
    );
    assert_eq!(
        message,
        "command is 4097 bytes long: at most 4096; put a longer one in a script"
    );
    let text =
        script("command = \"true\"\n[[vrrp.track_script]]\nname = \"chk\"\ncommand = \"false\"");
    let message = only_problem(&text, 22, "vrrp[VI_1].track_script[chk].name");
    assert!(
        message.starts_with("\"chk\" is already the name of the script on line 19"),
        "{message}"
    );
    let text = vrrp("[[vrrp.track_script]]\ncommand = \"true\"\n");
    only_problem(&text, 18, "vrrp[VI_1].track_script[0].name");

    let notify = vrrp("[vrrp.notify]\nmaster = \"/usr/local/bin/became-master\"\nfault = \"\"\n");
    let message = only_problem(&notify, 20, "vrrp[VI_1].notify.fault");
    assert_eq!(
        message,
        "empty: give a command for sh -c, or remove the key"
    );
    let v = vrrp_of(&vrrp("notify = { master = \"a\", backup = \"b\" }\n"));
    assert_eq!(
        (
            v.notify.master.as_deref(),
            v.notify.backup.as_deref(),
            v.notify.fault
        ),
        (Some("a"), Some("b"), None)
    );
}

#[test]
fn new_rules_report_together() {
    let text = r#"[dataplane]
interfaces = ["eth0"]
snat_address = "10.0.0.1"
pin_path = "bpf"

[control]
socket = "sock"

[[service]]
name = "web"
listen = "192.0.2.10:80"
on_backend_down = "hang"

  [service.check]
  path = "/health"
  fall = 0

  [[service.backend]]
  name = "web1"
  address = "10.0.1.11:8080"
  weight = 1000
  check = { port = 0 }

[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
advert_interval = "5ms"
auth_password = "x"
virtual_addresses = ["192.0.2.10/24"]
track_services = [{ service = "api" }]

[[vrrp]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 51
virtual_addresses = ["192.0.2.10"]
"#;
    let error = parse(text).unwrap_err();
    let found: Vec<_> = error
        .problems()
        .iter()
        .map(|p| (p.line.unwrap(), p.field.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (4, "dataplane.pin_path"),
            (7, "control.socket"),
            (12, "service[web].on_backend_down"),
            (15, "service[web].check.path"),
            (16, "service[web].check.fall"),
            (21, "service[web].backend[web1].weight"),
            (22, "service[web].backend[web1].check.port"),
            (28, "vrrp[VI_1].advert_interval"),
            (29, "vrrp[VI_1].auth_password"),
            (31, "vrrp[VI_1].track_services[0].service"),
            (36, "vrrp[VI_2].virtual_router_id"),
            (37, "vrrp[VI_2].virtual_addresses[0]"),
        ]
    );
    let rendered = error.to_string();
    assert_eq!(rendered.lines().count(), found.len(), "{rendered}");
}

/// xorshift64: deterministic, good enough to shake a parser.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments that make random input look enough like a config to get past the parser.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "\n",
    " ",
    ",",
    ".",
    "{",
    "}",
    "#",
    "-",
    ":",
    "\\",
    "\0",
    "é",
    "dataplane",
    "timeouts",
    "service",
    "backend",
    "service.backend",
    "name",
    "listen",
    "address",
    "interfaces",
    "snat_address",
    "snat_ports",
    "protocol",
    "udp",
    "tcp_syn",
    "attach",
    "0",
    "1",
    "65536",
    "-1",
    "1e9",
    "true",
    "1979-05-27T07:32:00Z",
    "\"eth0\"",
    "\"30s\"",
    "\"1-65535\"",
    "\"10.0.0.1\"",
    "\"10.0.0.1:80\"",
    "\"web\"",
    "\"\"\"",
    "check",
    "service.check",
    "service.backend.check",
    "type",
    "\"http\"",
    "path",
    "expect_status",
    "\"200-399\"",
    "weight",
    "backup",
    "on_backend_down",
    "control",
    "socket",
    "pin_path",
    "\"/run/x\"",
    "vrrp",
    "vrrp.notify",
    "vrrp.track_script",
    "virtual_router_id",
    "virtual_addresses",
    "\"192.0.2.10/24\"",
    "version",
    "auth_password",
    "track_services",
    "unicast_peers",
    "command",
    "-254",
];

/// Parses `text`, turning a panic into a test failure that shows the input, and checks that
/// a rejection renders one line per problem.
fn parse_must_not_panic(text: &str) {
    let result = std::panic::catch_unwind(|| Config::parse(text, "fuzz.toml"));
    match result {
        Err(_) => panic!("Config::parse panicked on {text:?}"),
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            assert!(!error.problems().is_empty(), "{text:?}");
            assert_eq!(
                error.to_string().lines().count(),
                error.problems().len(),
                "{text:?}: {error}"
            );
        }
    }
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let mut bytes = Vec::new();
        for _ in 0..rng.below(80) {
            if rng.below(4) == 0 {
                bytes.push(rng.next() as u8);
            } else {
                bytes.extend_from_slice(TOKENS[rng.below(TOKENS.len())].as_bytes());
            }
        }
        parse_must_not_panic(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn mutated_examples_never_panic() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    // The examples with their commented-out keys too, so every key is mutated.
    let uncommented = uncomment(&uncomment(EXAMPLE));
    let corpus = [EXAMPLE, MINIMAL, PAIR_A, PAIR_B, &uncommented, &vrrp("")];
    for round in 0..6000 {
        let mut bytes = corpus[round % corpus.len()].as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            let len = rng.below(40).min(bytes.len() - at);
            match rng.below(4) {
                0 => drop(bytes.drain(at..at + len)),
                1 => {
                    let copy = bytes[at..at + len].to_vec();
                    let to = rng.below(bytes.len() + 1);
                    bytes.splice(to..to, copy);
                }
                2 => drop(bytes.splice(at..at, TOKENS[rng.below(TOKENS.len())].bytes())),
                _ => {
                    if at < bytes.len() {
                        bytes[at] = rng.next() as u8;
                    }
                }
            }
        }
        parse_must_not_panic(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn hostile_nesting_is_rejected() {
    let deep = 100_000;
    for text in [
        format!(
            "[dataplane]\ninterfaces = {}{}\n",
            "[".repeat(deep),
            "]".repeat(deep)
        ),
        format!(
            "[dataplane]\ninterfaces = {}1{}\n",
            "{a=".repeat(deep),
            "}".repeat(deep)
        ),
        format!("[{}a]\n", "a.".repeat(deep)),
        format!("[[service]]\nname.{}a = 1\n", "a.".repeat(deep / 10)),
        format!(
            "[[service]]\nname = {}1{}\n",
            "{a=".repeat(70),
            "}".repeat(70)
        ),
        format!("{}x = 1\n", "[[service]]\n".repeat(deep / 10)),
    ] {
        parse_must_not_panic(&text);
    }
}

#[test]
fn userspace_mode_needs_no_interfaces_and_allows_proxy_options() {
    let text = MINIMAL
        .replace("interfaces = [\"eth0\"]\n", "mode = \"userspace\"\n")
        .replace(
            "listen = \"192.0.2.10:80\"\n",
            "listen = \"192.0.2.10:80\"\nmax_connections = 500\nsend_proxy_v2 = true\n",
        );
    let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.dataplane.mode, DataplaneMode::Userspace);
    assert!(config.dataplane.interfaces.is_empty());
    assert_eq!(config.services[0].max_connections, Some(500));
    assert!(config.services[0].send_proxy_v2);
}

#[test]
fn proxy_options_need_userspace_mode_and_tcp() {
    let with_limit = MINIMAL.replace(
        "listen = \"192.0.2.10:80\"\n",
        "listen = \"192.0.2.10:80\"\nmax_connections = 5\n",
    );
    let line = with_limit
        .lines()
        .position(|l| l.starts_with("max_connections"))
        .unwrap()
        + 1;
    let message = only_problem(&with_limit, line, "service[web].max_connections");
    assert!(
        message.contains("needs dataplane.mode = \"userspace\""),
        "{message}"
    );

    let udp = MINIMAL
        .replace("interfaces = [\"eth0\"]\n", "mode = \"userspace\"\n")
        .replace(
            "listen = \"192.0.2.10:80\"\n",
            "listen = \"192.0.2.10:80\"\nprotocol = \"udp\"\nsend_proxy_v2 = true\n",
        );
    let line = udp
        .lines()
        .position(|l| l.starts_with("send_proxy_v2"))
        .unwrap()
        + 1;
    let message = only_problem(&udp, line, "service[web].send_proxy_v2");
    assert!(message.contains("UDP"), "{message}");

    let message = only_problem(
        &MINIMAL.replace("[dataplane]\n", "[dataplane]\nmode = \"ebpf\"\n"),
        2,
        "dataplane.mode",
    );
    assert!(
        message.contains("\"auto\", \"xdp\", \"userspace\""),
        "{message}"
    );
}

#[test]
fn proxy_threads_are_bounded() {
    let text = MINIMAL.replacen("[dataplane]\n", "[dataplane]\nproxy_threads = 257\n", 1);
    let message = only_problem(&text, 2, "dataplane.proxy_threads");
    assert_eq!(
        message,
        "257 is out of range: allowed 0 (one per CPU, the default) to 256"
    );
    let text = MINIMAL.replacen("[dataplane]\n", "[dataplane]\nproxy_threads = -1\n", 1);
    only_problem(&text, 2, "dataplane.proxy_threads");
    let text = MINIMAL.replacen("[dataplane]\n", "[dataplane]\nproxy_threads = \"all\"\n", 1);
    only_problem(&text, 2, "dataplane.proxy_threads");
}

#[test]
fn xdp_log_rate_is_bounded() {
    let text = MINIMAL.replacen("[dataplane]\n", "[dataplane]\nxdp_log_rate = 1001\n", 1);
    let message = only_problem(&text, 2, "dataplane.xdp_log_rate");
    assert_eq!(
        message,
        "1001 is out of range: allowed 0 (off, the default) to 1000 lines per second per CPU"
    );
    let text = MINIMAL.replacen("[dataplane]\n", "[dataplane]\nxdp_log_rate = \"fast\"\n", 1);
    only_problem(&text, 2, "dataplane.xdp_log_rate");
}

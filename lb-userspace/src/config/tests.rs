//! Tests of the whole module through its public API: the example file, defaults, every rule
//! with the exact line and field it is reported at, and inputs that must not panic.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use super::*;

const EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/gerbang.toml");
const EXAMPLE: &str = include_str!("../../../config/gerbang.toml");

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
            ("web-http", addr("203.0.113.10:80"), Protocol::Tcp, snat, 3),
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
        config.services[0].backends[2],
        BackendConfig {
            name: "pi-3".into(),
            address: addr("10.0.0.13:80")
        }
    );
}

#[test]
fn defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(
        config,
        Config {
            dataplane: DataplaneConfig {
                interfaces: vec!["eth0".into()],
                attach: AttachMode::Auto,
                snat_ports: PortRange {
                    min: 1024,
                    max: 32767
                },
                flow_table_size: 65536,
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
                backends: vec![BackendConfig {
                    name: "web1".into(),
                    address: addr("10.0.1.11:8080")
                }],
            }],
        }
    );
}

#[test]
fn every_key_set() {
    let text = r#"
[dataplane]
interfaces = ["eth0", "wg0"]
attach = "generic"
snat_address = "10.0.0.1"
snat_ports = "20000-29999"
flow_table_size = 1024
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
        "unknown field `interface`, expected one of `interfaces`, `attach`, `snat_address`, \
         `snat_ports`, `flow_table_size`"
    );
    let message = only_problem(
        &edit("  name = \"web1\"\n", "  name = \"web1\"\n  weight = 3\n"),
        11,
        "service[web].backend[web1].weight",
    );
    assert!(
        message.starts_with("unknown field `weight`, expected `name` or `address`"),
        "{message}"
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
    for round in 0..3000 {
        let mut bytes = if round % 2 == 0 { EXAMPLE } else { MINIMAL }
            .as_bytes()
            .to_vec();
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

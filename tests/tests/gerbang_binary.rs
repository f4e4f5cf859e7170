//! The `gerbang` binary as an operator runs it: configuration errors, missing interfaces,
//! missing privileges, and a real run that balances and detaches on SIGTERM.

mod support;

use std::{collections::BTreeMap, net::SocketAddrV4, process::Command, time::Duration};

use gerbang_testbed::{Cmd, HttpBackend, Netns, TwoArm, curl, http_get, http_get_many};
use support::{
    gerbang::{backend_entries, binary, isolate, wait_until},
    tempdir::TempDir,
};

fn gerbang(args: &[&str]) -> (bool, String, String) {
    // The PostgreSQL example reads its monitoring password from the environment when the
    // file is loaded, as an operator's unit file would provide it.
    let out = Command::new(binary())
        .args(args)
        .env("GERBANG_PG_PASSWORD", "example")
        .output()
        .expect("running gerbang");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MINIMAL: &str = r#"
[dataplane]
interfaces = ["nope0"]
snat_address = "10.200.2.1"

[[service]]
name = "web"
listen = "10.200.100.1:80"
  [[service.backend]]
  name = "b0"
  address = "10.200.2.10:8080"
"#;

#[test]
fn check_config_accepts_every_shipped_example() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    let mut checked = 0;
    // Secret files the examples name live under /etc/gerbang on a real host; here they
    // are provided in a scratch directory the copies point at.
    let secrets = TempDir::new();
    secrets.write("mariadb-monitor.password", "example\n");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("/etc/gerbang/", &format!("{}/", secrets.path().display()));
            let copy = secrets.write(path.file_name().unwrap().to_str().unwrap(), &text);
            let (ok, stdout, stderr) = gerbang(&["check-config", copy.to_str().unwrap()]);
            assert!(ok, "{}: {stderr}", path.display());
            assert!(stdout.contains(": ok ("), "{stdout}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} examples found in {dir}");
}

#[test]
fn check_config_names_the_file_line_and_field() {
    let dir = TempDir::new();
    let bad = MINIMAL.replace("10.200.2.10:8080", "10.200.2.10");
    let path = dir.write("bad.toml", &bad);
    let (ok, _, stderr) = gerbang(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    let line = bad.lines().position(|l| l.contains("10.200.2.10")).unwrap() + 1;
    let expected = format!("{}:{line}:", path.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        stderr.contains("service[web].backend[b0].address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("IPv4:port"),
        "says what is allowed: {stderr}"
    );
}

#[test]
fn a_missing_interface_is_a_clear_error() {
    let ns = Netns::new("cli").unwrap();
    let dir = TempDir::new();
    let path = dir.write("gerbang.toml", MINIMAL);
    let binary = binary();
    let err = ns
        .exec(&binary, ["run", "--config", path.to_str().unwrap()])
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("interface nope0"), "{message}");
    assert!(message.contains("interfaces here: lo"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
}

#[test]
fn running_without_root_says_what_to_do() {
    let dir = TempDir::new();
    let path = dir.write("gerbang.toml", MINIMAL);
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(binary())
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs root"), "{stderr}");
}

#[test]
fn the_binary_balances_and_detaches_on_sigterm() {
    let output = balance_through_the_binary(0);
    assert!(
        !output.contains("lines held back"),
        "no XDP debug logs unless asked for:\n{output}"
    );
}

/// `dataplane.xdp_log_rate` turns the program's debug logs on: each names the event and the
/// addresses, and no more than the rate per CPU per second arrive.
#[test]
fn xdp_debug_logs_are_rate_limited() {
    const RATE: usize = 2;
    let started = std::time::Instant::now();
    let output = balance_through_the_binary(RATE as u32);
    let seconds = started.elapsed().as_secs() as usize + 1;
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("lines held back"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tx ") || l.contains("redirect ")),
        "forwarded packets are logged with their event:\n{output}"
    );
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        lines.len() <= RATE * cpus * seconds,
        "{} lines in {seconds} s at {RATE}/s on {cpus} CPUs:\n{output}",
        lines.len()
    );
    assert!(
        output.contains("XDP debug logs on: at most 2 lines per second per CPU"),
        "{output}"
    );
}

/// Runs the binary in front of three HTTP backends, checks it balances and that SIGTERM
/// detaches it, and returns its log.
fn balance_through_the_binary(xdp_log_rate: u32) -> String {
    let t = TwoArm::new(3).unwrap();
    let _servers: Vec<HttpBackend> = HttpBackend::start_on_each(&t.backends, 8080).unwrap();
    let mut config = format!(
        "[dataplane]\ninterfaces = [\"{}\", \"{}\"]\nsnat_address = \"{}\"\nxdp_log_rate = {xdp_log_rate}\n\n[[service]]\nname = \"web\"\nlisten = \"{}:80\"\n",
        t.lb_client_if, t.lb_backend_if, t.snat, t.vip
    );
    config += &backend_entries(&t.backends, 8080);
    let dir = TempDir::new();
    let path = dir.write("gerbang.toml", &isolate(&config));
    let log = dir.path().join("gerbang.log");
    let mut process =
        t.lb.spawn(
            &Cmd::new(binary())
                .args(["run", "--config", path.to_str().unwrap()])
                .log_to(&log),
        )
        .unwrap();

    let vip = SocketAddrV4::new(t.vip, 80);
    wait_until(Duration::from_secs(10), || http_get(&t.client, vip)).unwrap_or_else(|e| {
        panic!(
            "gerbang never served: {e:#}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let mut counts = BTreeMap::new();
    for answer in http_get_many(&t.client, vip, 30) {
        *counts
            .entry(answer.unwrap().trim().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&n| n == 10 || n == 11),
        "round-robin after the probe: {counts:?}"
    );
    assert!(
        curl(&t.client, &format!("http://{vip}/"))
            .unwrap()
            .starts_with('b'),
        "curl is served too"
    );

    let status = process.terminate().unwrap();
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{output}"
    );
    assert!(output.contains("SIGTERM received"), "{output}");
    assert!(output.contains("detaching XDP program"), "{output}");
    for interface in [&t.lb_client_if, &t.lb_backend_if] {
        let link = t.lb.ip(["link", "show", "dev", interface]).unwrap();
        assert!(
            !link.contains("xdp"),
            "program detached from {interface}: {link}"
        );
    }
    assert!(
        http_get(&t.client, vip).is_err(),
        "nothing answers on the VIP once gerbang is gone"
    );
    output
}

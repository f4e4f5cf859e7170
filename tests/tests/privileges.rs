//! Least privilege: the real `gerbang` binary, once started, keeps only the capabilities
//! the running controller uses, in every thread and in the bounding set, with
//! no_new_privs, and still does everything it does at run time: forwards, answers admin
//! commands, applies reloads (attaching XDP to an interface a reload adds), moves VRRP
//! addresses, runs notify scripts (with the same set) and detaches on SIGTERM. Its control
//! socket is root's alone.

mod support;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::Path,
    process::Command,
    time::Duration,
};

use gerbang::privileges::{CapSet, Capability, ThreadState};
use gerbang_testbed::{ChildGuard, Cmd, HttpBackend, TwoArm, http_get, http_get_many};
use support::{
    gerbang::{backend_entries, binary, isolate, wait_until},
    tempdir::TempDir,
};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Every thread's capability state, by thread id.
fn threads_of(pid: u32) -> BTreeMap<u32, ThreadState> {
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let entry = entry.unwrap();
        let Ok(tid) = entry.file_name().to_string_lossy().parse() else {
            continue;
        };
        if let Ok(status) = std::fs::read_to_string(entry.path().join("status")) {
            threads.insert(tid, ThreadState::parse(&status).unwrap());
        }
    }
    threads
}

/// Asserts that every thread of `pid` holds exactly `kept`: permitted, effective and
/// bounding; nothing inheritable or ambient; no_new_privs set.
/// What a thread left with exactly `kept` shows: permitted, effective and bounding, nothing
/// inheritable or ambient, `no_new_privs`.
fn restricted_to(kept: CapSet) -> ThreadState {
    ThreadState {
        inheritable: CapSet::EMPTY,
        permitted: kept,
        effective: kept,
        bounding: kept,
        ambient: CapSet::EMPTY,
        no_new_privs: true,
    }
}

fn assert_only(pid: u32, kept: CapSet) {
    let threads = threads_of(pid);
    assert!(
        threads.len() >= 3,
        "a tokio runtime has threads: {threads:?}"
    );
    for (tid, state) in threads {
        let expected = restricted_to(kept);
        assert_eq!(
            state, expected,
            "thread {tid} of {pid}: holds {} (bounding {}), expected {kept}",
            state.effective, state.bounding
        );
    }
}

fn http_backends(t: &TwoArm) -> Vec<HttpBackend> {
    HttpBackend::start_on_each(&t.backends, 8080).unwrap()
}

fn backends_toml(t: &TwoArm) -> String {
    first_backends_toml(t, t.backends.len())
}

fn first_backends_toml(t: &TwoArm, n: usize) -> String {
    backend_entries(&t.backends[..n], 8080)
}

/// The control socket an [`isolate`]d config names.
fn socket_of(config: &str) -> String {
    config
        .lines()
        .find_map(|l| l.strip_prefix("socket = \""))
        .map(|s| s.trim_end_matches('"').to_string())
        .expect("isolate() names a control socket")
}

/// `gerbang ARGS --socket SOCKET` from the test, as root; its answer or its error.
fn ctl(args: &[&str], socket: &str) -> Result<String, String> {
    let out = Command::new(binary())
        .args(args)
        .args(["--socket", socket])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn start(t: &TwoArm, config: &Path, log: &Path, extra: &[&str]) -> ChildGuard {
    let mut process =
        t.lb.spawn(
            &Cmd::new(binary())
                .args(["run", "--config", config.to_str().unwrap()])
                .args(extra)
                .log_to(log),
        )
        .unwrap();
    wait_dropped(&mut process, log);
    process
}

/// Waits for gerbang to log that it dropped its capabilities; fails at once if it exits.
fn wait_dropped(process: &mut ChildGuard, log: &Path) {
    wait_until(Duration::from_secs(20), || {
        if read(log).contains("capabilities dropped") {
            return Ok(());
        }
        match process.try_wait()? {
            Some(status) => Err(anyhow::anyhow!("gerbang exited ({status})")),
            None => Err(anyhow::anyhow!("not yet")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read(log)));
}

fn tally(answers: Vec<Result<String, anyhow::Error>>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts
            .entry(answer.unwrap().trim().to_string())
            .or_default() += 1;
    }
    counts
}

/// XDP: only CAP_NET_ADMIN stays, for the managed neighbours of backends' next hops (one
/// a reload adds, and their removal at stop). Traffic, admin commands, a reload that
/// attaches the program to one more interface and adds a backend, and the detaching stop
/// all still work.
#[test]
fn the_xdp_controller_keeps_only_net_admin_and_still_works() {
    let t = TwoArm::new(3).unwrap();
    let _servers = http_backends(&t);
    // An interface for the reload to attach to.
    t.lb.ip([
        "link", "add", "extra0", "type", "veth", "peer", "name", "extra1",
    ])
    .unwrap();
    for interface in ["extra0", "extra1"] {
        t.lb.ip(["link", "set", "dev", interface, "up"]).unwrap();
    }
    let head = |interfaces: &str, backends: usize| {
        format!(
            "[dataplane]\nmode = \"xdp\"\ninterfaces = [{interfaces}]\nsnat_address = \"{}\"\n\n\
             [[service]]\nname = \"web\"\nlisten = \"{}:80\"\n[service.check]\ninterval = \"200ms\"\n{}",
            t.snat,
            t.vip,
            first_backends_toml(&t, backends)
        )
    };
    let two = format!("\"{}\", \"{}\"", t.lb_client_if, t.lb_backend_if);
    let text = isolate(&head(&two, 2));
    let socket = socket_of(&text);
    let dir = TempDir::new();
    let config = dir.write("gerbang.toml", &text);
    let log = dir.path().join("gerbang.log");
    let mut gerbang = start(&t, &config, &log, &[]);
    let said = read(&log);
    assert!(
        said.contains("kept=CAP_NET_ADMIN") && said.contains("bounding=CAP_NET_ADMIN"),
        "{said}"
    );
    assert_only(gerbang.pid(), CapSet::of(&[Capability::NET_ADMIN]));

    // Traffic.
    let vip = SocketAddrV4::new(t.vip, 80);
    wait_until(Duration::from_secs(10), || http_get(&t.client, vip))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log)));
    assert_eq!(
        tally(http_get_many(&t.client, vip, 8)),
        BTreeMap::from([("b0".into(), 4), ("b1".into(), 4)])
    );

    // The control socket: root's alone.
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0));
    let nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(binary())
        .args(["status", "--socket", &socket])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!nobody.status.success());
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&nobody.stderr)
    );

    // An admin command answers and takes effect.
    let answer = ctl(&["backend", "drain", "web", "b0"], &socket).unwrap();
    assert!(answer.contains("web/b0 is drain"), "{answer}");
    assert_eq!(
        tally(http_get_many(&t.client, vip, 4)),
        BTreeMap::from([("b1".into(), 4)])
    );
    ctl(&["backend", "ready", "web", "b0"], &socket).unwrap();

    // A reload that attaches the program to one more interface and adds a backend, whose
    // next hop becomes a managed neighbour.
    std::fs::write(
        &config,
        isolate_like(&text, &head(&format!("{two}, \"extra0\""), 3)),
    )
    .unwrap();
    let answer = ctl(&["reload"], &socket).unwrap_or_else(|e| panic!("{e}\n{}", read(&log)));
    assert!(answer.contains("reloaded"), "{answer}");
    assert!(
        t.lb.ip(["link", "show", "dev", "extra0"])
            .unwrap()
            .contains("xdp"),
        "{}",
        read(&log)
    );
    let b2 = t.backends[2].addr.to_string();
    let managed = || {
        t.lb.ip(["neigh", "show", "dev", &t.lb_backend_if])
            .unwrap()
            .lines()
            .filter(|l| l.contains("managed"))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
            .collect::<Vec<String>>()
    };
    wait_until(Duration::from_secs(10), || {
        if managed().contains(&b2) {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "{b2} is not a managed neighbour: {:?}",
                managed()
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log)));
    wait_until(Duration::from_secs(10), || {
        let seen = tally(http_get_many(&t.client, vip, 6));
        if seen.len() == 3 {
            Ok(())
        } else {
            Err(anyhow::anyhow!("answers from {seen:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log)));
    std::fs::write(&config, &text).unwrap();
    ctl(&["reload"], &socket).unwrap();
    assert!(
        !t.lb
            .ip(["link", "show", "dev", "extra0"])
            .unwrap()
            .contains("xdp")
    );
    assert_eq!(
        tally(http_get_many(&t.client, vip, 4)),
        BTreeMap::from([("b0".into(), 2), ("b1".into(), 2)])
    );
    assert_only(gerbang.pid(), CapSet::of(&[Capability::NET_ADMIN]));

    // The detaching stop needs nothing more, and removes the managed neighbours.
    let status = gerbang.terminate().unwrap();
    let said = read(&log);
    assert!(status.success(), "{said}");
    for interface in [&t.lb_client_if, &t.lb_backend_if] {
        assert!(
            !t.lb
                .ip(["link", "show", "dev", interface])
                .unwrap()
                .contains("xdp"),
            "{said}"
        );
    }
    assert_eq!(managed(), Vec::<String>::new(), "{said}");
    assert!(!said.contains("ERROR") && !said.contains("WARN"), "{said}");
}

/// `text` (an [`isolate`]d config) with its head replaced by `head`: the same pins,
/// socket and HTTP port.
fn isolate_like(text: &str, head: &str) -> String {
    let tail = &text[text.find("\n[control]").expect("isolate() adds [control]")..];
    let pin = text
        .lines()
        .find(|l| l.starts_with("pin_path = "))
        .expect("isolate() adds a pin path");
    format!(
        "{}{tail}",
        head.replacen("[dataplane]\n", &format!("[dataplane]\n{pin}\n"), 1)
    )
}

/// The userspace proxy with a VRRP instance: CAP_NET_ADMIN for the virtual address,
/// CAP_NET_BIND_SERVICE for the proxy's reloads and CAP_NET_RAW because
/// `--keep-capability` asks for it. The address arrives after the drop,
/// a notify script runs with exactly the kept set, and SIGTERM takes the address away.
#[test]
fn vrrp_moves_its_address_and_scripts_inherit_the_kept_set() {
    let t = TwoArm::new(2).unwrap();
    let _servers = http_backends(&t);
    let dir = TempDir::new();
    let notified = dir.path().join("master.status");
    let vip = Ipv4Addr::new(10, 200, 1, 100);
    let text = isolate(&format!(
        "[dataplane]\nmode = \"userspace\"\nsnat_address = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{vip}:80\"\n{}\n\
         [[vrrp]]\nname = \"VI_1\"\ninterface = \"{}\"\nvirtual_router_id = 51\n\
         advert_interval = \"1s\"\nvirtual_addresses = [\"{vip}/24\"]\n\
         [vrrp.notify]\nmaster = \"cat /proc/self/status > {}\"\n",
        t.snat,
        backends_toml(&t),
        t.lb_client_if,
        notified.display()
    ));
    let config = dir.write("gerbang.toml", &text);
    let log = dir.path().join("gerbang.log");
    let mut gerbang = start(&t, &config, &log, &["--keep-capability", "net_raw"]);
    let kept = CapSet::of(&[
        Capability::NET_ADMIN,
        Capability::NET_RAW,
        Capability::NET_BIND_SERVICE,
    ]);
    assert_only(gerbang.pid(), kept);
    let said = read(&log);
    assert!(
        said.contains("CAP_NET_ADMIN: VRRP virtual addresses")
            && said.contains("CAP_NET_RAW: --keep-capability"),
        "{said}"
    );

    // A single node becomes master (3 s of silence and some skew), after the drop.
    let has_vip = || {
        t.lb.ip(["-4", "addr", "show", "dev", &t.lb_client_if])
            .unwrap()
            .contains(&format!("{vip}/24"))
    };
    wait_until(Duration::from_secs(10), || {
        if has_vip() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("not master yet"))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log)));
    let said = read(&log);
    let dropped = said.find("capabilities dropped").unwrap();
    let master = said.find("-> MASTER").expect("the transition is logged");
    assert!(dropped < master, "{said}");

    let script = wait_until(Duration::from_secs(5), || {
        ThreadState::parse(&read(&notified)).ok_or_else(|| anyhow::anyhow!("no status yet"))
    })
    .unwrap();
    assert_eq!(
        script,
        restricted_to(kept),
        "the notify script runs as root with the kept set only"
    );

    let service = SocketAddrV4::new(vip, 80);
    wait_until(Duration::from_secs(10), || http_get(&t.client, service))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log)));

    let status = gerbang.terminate().unwrap();
    assert!(status.success(), "{}", read(&log));
    assert!(
        !has_vip(),
        "a graceful stop removes the address\n{}",
        read(&log)
    );
}

/// The userspace proxy alone keeps only CAP_NET_BIND_SERVICE, with which a reload binds
/// a new service on a port below 1024; a reload that reweights backends applies too.
#[test]
fn the_proxy_alone_keeps_only_net_bind_service() {
    let t = TwoArm::new(2).unwrap();
    let _servers = http_backends(&t);
    let service = |name: &str, port: u16, weight0: u32| {
        format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{}:{port}\"\n\
             [[service.backend]]\nname = \"b0\"\naddress = \"{}:8080\"\nweight = {weight0}\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"{}:8080\"\n",
            t.vip, t.backends[0].addr, t.backends[1].addr
        )
    };
    let head = format!(
        "[dataplane]\nmode = \"userspace\"\nsnat_address = \"{}\"\n",
        t.snat
    );
    let text = isolate(&(head.clone() + &service("web", 80, 1)));
    let socket = socket_of(&text);
    let dir = TempDir::new();
    let config = dir.write("gerbang.toml", &text);
    let log = dir.path().join("gerbang.log");
    let mut gerbang = start(&t, &config, &log, &[]);
    assert_only(gerbang.pid(), CapSet::of(&[Capability::NET_BIND_SERVICE]));
    assert!(
        read(&log).contains("kept=CAP_NET_BIND_SERVICE"),
        "{}",
        read(&log)
    );

    let vip = SocketAddrV4::new(t.vip, 80);
    wait_until(Duration::from_secs(10), || http_get(&t.client, vip)).unwrap();
    let reloaded = head + &service("web", 80, 0) + &service("admin", 81, 1);
    std::fs::write(&config, isolate_like(&text, &reloaded)).unwrap();
    let answer = ctl(&["reload"], &socket).unwrap_or_else(|e| panic!("{e}\n{}", read(&log)));
    assert!(answer.contains("2 services (was 1)"), "{answer}");
    assert_eq!(
        tally(http_get_many(&t.client, vip, 4)),
        BTreeMap::from([("b1".into(), 4)])
    );
    let admin = SocketAddrV4::new(t.vip, 81);
    wait_until(Duration::from_secs(10), || http_get(&t.client, admin)).unwrap();
    let status = gerbang.terminate().unwrap();
    assert!(status.success(), "{}", read(&log));
}

/// The capabilities config/gerbang.service leaves the service, as setpriv's
/// `--bounding-set` wants them: `-all,+bpf,+net_admin,...`.
fn unit_bounding_set() -> String {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gerbang.service"),
    )
    .unwrap();
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    let mut set = String::from("-all");
    for cap in caps.split_whitespace() {
        set += ",+";
        set += &cap.trim_start_matches("CAP_").to_ascii_lowercase();
    }
    set
}

/// gerbang starts (XDP, a VRRP instance) with no more than the systemd unit grants, and
/// with no_new_privs already set, as the unit runs it; it then narrows the set further.
#[test]
fn the_systemd_units_capabilities_are_enough_to_start() {
    let t = TwoArm::new(2).unwrap();
    let _servers = http_backends(&t);
    let vrrp_vip = Ipv4Addr::new(10, 200, 1, 100);
    let text = isolate(&format!(
        "[dataplane]\nmode = \"xdp\"\ninterfaces = [\"{}\", \"{}\"]\nsnat_address = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{}:80\"\n{}\n\
         [[vrrp]]\nname = \"VI_1\"\ninterface = \"{}\"\nvirtual_router_id = 52\n\
         advert_interval = \"100ms\"\nvirtual_addresses = [\"{vrrp_vip}/24\"]\n",
        t.lb_client_if,
        t.lb_backend_if,
        t.snat,
        t.vip,
        backends_toml(&t),
        t.lb_client_if,
    ));
    let dir = TempDir::new();
    let config = dir.write("gerbang.toml", &text);
    let log = dir.path().join("gerbang.log");
    let bounding = unit_bounding_set();
    let mut gerbang =
        t.lb.spawn(
            &Cmd::new("setpriv")
                .args([
                    "--inh-caps=-all",
                    &format!("--bounding-set={bounding}"),
                    "--no-new-privs",
                    "--",
                ])
                .arg(binary())
                .args(["run", "--config", config.to_str().unwrap()])
                .log_to(&log),
        )
        .unwrap();
    wait_dropped(&mut gerbang, &log);
    assert_only(gerbang.pid(), CapSet::of(&[Capability::NET_ADMIN]));
    let vip = SocketAddrV4::new(t.vip, 80);
    wait_until(Duration::from_secs(10), || http_get(&t.client, vip))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log)));
    wait_until(Duration::from_secs(10), || {
        let held =
            t.lb.ip(["-4", "addr", "show", "dev", &t.lb_client_if])
                .unwrap()
                .contains(&format!("{vrrp_vip}/24"));
        if held {
            Ok(())
        } else {
            Err(anyhow::anyhow!("not master yet"))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log)));
    let said = read(&log);
    assert!(!said.contains("WARN") && !said.contains("ERROR"), "{said}");
}

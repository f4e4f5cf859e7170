//! Hitless restart: the real `gerbang` binary is killed (`kill -9`) or told to exit leaving
//! traffic flowing (SIGUSR2, the upgrade path), a long TCP stream keeps flowing with its
//! bytes intact while no controller runs, and a new gerbang takes the pinned state over
//! without resetting it.

mod support;

use std::{net::SocketAddrV4, path::Path, time::Duration};

use gerbang_testbed::{ChildGuard, Cmd, TcpStreamClient, TcpStreamServer, TwoArm};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use support::{
    gerbang::{backend_entries, binary, isolate, wait_until},
    tempdir::TempDir,
};

const STREAM: u16 = 9000;

fn start(t: &TwoArm, config: &Path, log: &Path) -> ChildGuard {
    t.lb.spawn(
        &Cmd::new(binary())
            .args(["run", "--config", config.to_str().unwrap()])
            .log_to(log),
    )
    .unwrap()
}

fn wait_exit(process: &mut ChildGuard) {
    wait_until(Duration::from_secs(10), || match process.try_wait()? {
        Some(status) => Ok(status),
        None => Err(anyhow::anyhow!("still running")),
    })
    .unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn survives(signal: Signal) {
    let t = TwoArm::new(2).unwrap();
    let _streams: Vec<TcpStreamServer> =
        TcpStreamServer::start_on_each(&t.backends, STREAM).unwrap();
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"{}\", \"{}\"]\nsnat_address = \"{}\"\n\n[[service]]\nname = \"stream\"\nlisten = \"{}:{STREAM}\"\n[service.check]\ninterval = \"200ms\"\n",
        t.lb_client_if, t.lb_backend_if, t.snat, t.vip
    );
    text += &backend_entries(&t.backends, STREAM);
    let text = isolate(&text);
    let pin_dir = text
        .lines()
        .find_map(|l| l.strip_prefix("pin_path = \""))
        .map(|p| p.trim_end_matches('"').to_string())
        .unwrap();
    let dir = TempDir::new();
    let config = dir.write("gerbang.toml", &text);
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let vip = SocketAddrV4::new(t.vip, STREAM);

    let mut first = start(&t, &config, &log_a);
    let mut long = wait_until(Duration::from_secs(10), || {
        TcpStreamClient::connect(&t.client, vip)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log_a)));
    let chunk: Vec<u8> = (0..48 * 1024).map(|i| (i * 13 % 251) as u8).collect();
    assert_eq!(long.echo(&chunk).unwrap(), chunk);

    kill(Pid::from_raw(first.pid() as i32), signal).unwrap();
    wait_exit(&mut first);
    let a_said = read(&log_a);
    if signal == Signal::SIGUSR2 {
        assert!(a_said.contains("XDP program stays attached"), "{a_said}");
    }
    // No controller runs now: the pinned program and maps carry on alone.
    for round in 0..5u8 {
        let payload: Vec<u8> = chunk.iter().map(|b| b.wrapping_add(round)).collect();
        assert_eq!(
            long.echo(&payload).unwrap(),
            payload,
            "round {round} without a controller"
        );
    }
    let mut fresh = TcpStreamClient::connect(&t.client, vip).unwrap();
    assert_eq!(fresh.echo(b"new flows too").unwrap(), b"new flows too");

    let mut second = start(&t, &config, &log_b);
    wait_until(Duration::from_secs(10), || {
        if read(&log_b).contains("took over the maps of the previous run") {
            Ok(())
        } else {
            Err(anyhow::anyhow!("not yet"))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log_b)));
    wait_until(Duration::from_secs(10), || {
        if read(&log_b).contains("gerbang running") {
            Ok(())
        } else {
            Err(anyhow::anyhow!("starting"))
        }
    })
    .unwrap();
    for round in 0..5u8 {
        let payload: Vec<u8> = chunk.iter().map(|b| b.wrapping_sub(round)).collect();
        assert_eq!(
            long.echo(&payload).unwrap(),
            payload,
            "round {round} after the takeover"
        );
    }
    assert_eq!(fresh.echo(b"still").unwrap(), b"still");
    let mut after = TcpStreamClient::connect(&t.client, vip).unwrap();
    assert_eq!(after.echo(b"and new ones").unwrap(), b"and new ones");

    let status = second.terminate().unwrap();
    let b_said = read(&log_b);
    assert!(status.success(), "{b_said}");
    assert!(b_said.contains("detaching XDP program"), "{b_said}");
    // Counters were pinned too: the second run reports the first run's flows as well.
    let flows: u64 = b_said
        .lines()
        .find(|l| {
            l.contains("service=stream") && l.contains("new_flows=") && !l.contains("backend=")
        })
        .and_then(|l| l.split("new_flows=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no summary in\n{b_said}"));
    assert!(flows >= 3, "new_flows={flows}");
    assert!(
        !Path::new(&pin_dir).join("abi-1").exists(),
        "a detaching stop removes the pins"
    );
    for interface in [&t.lb_client_if, &t.lb_backend_if] {
        assert!(
            !t.lb
                .ip(["link", "show", "dev", interface])
                .unwrap()
                .contains("xdp")
        );
    }
}

#[test]
fn a_stream_survives_kill_9_of_the_controller_and_its_restart() {
    survives(Signal::SIGKILL);
}

#[test]
fn a_stream_survives_an_upgrade_handover_with_sigusr2() {
    survives(Signal::SIGUSR2);
}

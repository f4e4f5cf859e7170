//! gerbang's VRRP between gerbang nodes: election, failover, preemption, graceful stop,
//! tracking, split brain, bad input and start-up errors. Each node is a network namespace
//! on a shared bridge running the VRRP speaker in-process (no XDP involved).
//!
//! Timings are measured and reported; assertions use generous bounds only.

mod support;

use std::time::{Duration, Instant};

use gerbang::{
    config::{TrackScript, TrackService, VirtualAddress, VrrpVersion},
    vrrp::{DropReason, VrrpState},
};
use support::{
    tempdir::TempDir,
    vrrp::{Lan, Speaker, VIP, VIP2, WAIT, advert, inject, instance, read_lines, wait_for},
};

const SECOND: Duration = Duration::from_secs(1);

/// The higher priority is master and holds both VIPs; a crash hands them to the backup in
/// well under a second with 100 ms adverts; the first node takes them back when it
/// returns (preempt), and gratuitous ARP moves a neighbour's cache each time.
#[test]
fn failover_and_preempt_with_100ms_adverts() {
    let lan = Lan::new(3).unwrap();
    // Node 2 is a plain host that learns addresses from gratuitous ARP.
    lan.ns(2)
        .sysctl("net.ipv4.conf.all.arp_accept", "1")
        .unwrap();
    lan.ns(2)
        .sysctl("net.ipv4.conf.lan0.arp_accept", "1")
        .unwrap();
    let a = Speaker::start(lan.ns(0), vec![instance("web", 51, 200)], &[]).unwrap();
    let b = Speaker::start(lan.ns(1), vec![instance("web", 51, 100)], &[]).unwrap();

    a.wait_state(VrrpState::Master);
    b.wait_state(VrrpState::Backup);
    lan.wait_sole_holder(0, VIP);
    lan.wait_sole_holder(0, VIP2);
    let neighbour_is = |node: usize| {
        let out = lan.ns(2).ip(["neigh", "show", &VIP.to_string()]).unwrap();
        out.contains(&gerbang_testbed::link::format_mac(lan.mac(node)))
    };
    wait_for(WAIT, || neighbour_is(0)).expect("gratuitous ARP from node 0");
    let status = &b.status()[0];
    assert_eq!(status.master, Some(lan.addr(0)));
    assert_eq!(status.counters.drops.total(), 0, "{status:#?}");

    // Crash: no priority 0, the backup must notice the silence.
    let crashed = Instant::now();
    a.crash();
    lan.power_off(0);
    b.wait_state(VrrpState::Master);
    let failover = crashed.elapsed();
    lan.wait_sole_holder(1, VIP);
    eprintln!("failover after a crash with 100 ms adverts: {failover:?}");
    assert!(failover < SECOND, "failover took {failover:?}");
    wait_for(WAIT, || neighbour_is(1)).expect("gratuitous ARP from node 1");

    // Node 0 returns and preempts.
    lan.power_on(0);
    let a = Speaker::start(lan.ns(0), vec![instance("web", 51, 200)], &[]).unwrap();
    a.wait_state(VrrpState::Master);
    b.wait_state(VrrpState::Backup);
    lan.wait_sole_holder(0, VIP);
    wait_for(WAIT, || neighbour_is(0)).expect("gratuitous ARP after preempting");
    let status = &b.status()[0];
    assert_eq!(status.counters.drops.total(), 0, "{status:#?}");
    // backup -> master -> backup, after init -> backup.
    assert_eq!(status.transitions, 3, "{status:#?}");
}

/// A master that exits leaving its addresses (a hand-over to a new gerbang, SIGUSR2, or a
/// crash and a quick restart) resumes as master when it starts holding them: the backup
/// never takes over, so the VIP does not move away and back.
#[test]
fn a_quick_restart_holding_the_vips_resumes_as_master() {
    let lan = Lan::new(2).unwrap();
    let a = Speaker::start(lan.ns(0), vec![instance("web", 51, 200)], &[]).unwrap();
    let b = Speaker::start(lan.ns(1), vec![instance("web", 51, 100)], &[]).unwrap();
    a.wait_state(VrrpState::Master);
    b.wait_state(VrrpState::Backup);
    lan.wait_sole_holder(0, VIP);

    a.crash();
    assert!(
        lan.holds(0, VIP),
        "the addresses stay with the exited process's host"
    );
    let a = Speaker::start(lan.ns(0), vec![instance("web", 51, 200)], &[]).unwrap();
    a.wait_state(VrrpState::Master);
    // Several of the backup's master-down intervals (about 350 ms here) pass quietly.
    std::thread::sleep(Duration::from_millis(1200));
    let status = &b.status()[0];
    assert_eq!(status.state, VrrpState::Backup);
    assert_eq!(status.transitions, 1, "init -> backup only: {status:#?}");
    assert_eq!(lan.holders(VIP), [0]);

    // Stopped properly, it gives the addresses up like any master.
    a.stop();
    b.wait_state(VrrpState::Master);
    lan.wait_sole_holder(1, VIP);
}

/// Without preempt the returning higher-priority node stays backup.
#[test]
fn no_preempt_keeps_the_current_master() {
    let lan = Lan::new(2).unwrap();
    let b = Speaker::start(lan.ns(1), vec![instance("web", 52, 100)], &[]).unwrap();
    b.wait_state(VrrpState::Master);
    let mut config = instance("web", 52, 200);
    config.preempt = false;
    let a = Speaker::start(lan.ns(0), vec![config], &[]).unwrap();
    std::thread::sleep(SECOND);
    assert_eq!(a.state(), VrrpState::Backup);
    assert_eq!(b.state(), VrrpState::Master);
    assert_eq!(lan.holders(VIP), [1]);
}

/// A graceful stop sends priority 0: the backup takes over after its skew time, not the
/// master down interval. Notify commands run on each transition.
#[test]
fn graceful_stop_hands_over_at_once_and_notifies() {
    let lan = Lan::new(2).unwrap();
    let dir = TempDir::new();
    let events = dir.path().join("events");
    let with_notify = |priority| {
        let mut config = instance("web", 53, priority);
        // 1 s adverts: a master down interval of 3.6 s, which priority 0 cuts short.
        config.advert_interval = SECOND;
        let log = |what: &str| {
            let env = "$GERBANG_VRRP_INSTANCE $GERBANG_VRRP_STATE $GERBANG_VRRP_PRIORITY";
            Some(format!("echo {what} {env} >> {}", events.display()))
        };
        config.notify.master = log(&format!("master{priority}"));
        config.notify.backup = log(&format!("backup{priority}"));
        config.notify.stop = log(&format!("stop{priority}"));
        config
    };
    let a = Speaker::start(lan.ns(0), vec![with_notify(200)], &[]).unwrap();
    let b = Speaker::start(lan.ns(1), vec![with_notify(100)], &[]).unwrap();
    a.wait_state(VrrpState::Master);
    b.wait_state(VrrpState::Backup);

    let stopped = Instant::now();
    a.stop();
    b.wait_state(VrrpState::Master);
    let takeover = stopped.elapsed();
    eprintln!("takeover after a graceful stop with 1 s adverts: {takeover:?}");
    // The master down interval is 3.6 s: only priority 0 explains a faster takeover.
    assert!(takeover < 2 * SECOND, "takeover took {takeover:?}");
    lan.wait_sole_holder(1, VIP);
    let counters = &b.status()[0].counters;
    assert!(counters.priority_zero_received >= 1, "{counters:#?}");

    b.stop();
    let lines = read_lines(&events);
    for expected in [
        "backup200 web BACKUP 200",
        "master200 web MASTER 200",
        "stop200 web STOP 200",
        "backup100 web BACKUP 100",
        "master100 web MASTER 100",
        "stop100 web STOP 100",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "{expected:?} in {lines:?}"
        );
    }
    assert!(lan.holders(VIP).is_empty());
}

/// Two instances in one speaker, one v2 with a password at 1 s, one v3: each pair elects
/// its own master.
#[test]
fn several_instances_and_v2_with_password() {
    let lan = Lan::new(2).unwrap();
    let v2 = |priority| {
        let mut config = instance("legacy", 60, priority);
        config.version = VrrpVersion::V2;
        config.advert_interval = SECOND;
        config.auth_password = Some("s3cret".into());
        config.virtual_addresses = vec![VirtualAddress {
            address: [10, 200, 50, 110].into(),
            prefix_len: 24,
        }];
        config
    };
    let a = Speaker::start(lan.ns(0), vec![instance("web", 61, 100), v2(200)], &[]).unwrap();
    let b = Speaker::start(lan.ns(1), vec![instance("web", 61, 200), v2(100)], &[]).unwrap();
    let legacy = [10, 200, 50, 110].into();
    let started = Instant::now();
    wait_for(WAIT, || {
        a.status()[1].state == VrrpState::Master && b.status()[0].state == VrrpState::Master
    })
    .unwrap();
    lan.wait_sole_holder(1, VIP);
    lan.wait_sole_holder(0, legacy);
    assert_eq!(a.status()[0].state, VrrpState::Backup);
    assert_eq!(b.status()[1].state, VrrpState::Backup);

    let crashed = Instant::now();
    a.crash();
    lan.power_off(0);
    wait_for(WAIT, || b.status()[1].state == VrrpState::Master).unwrap();
    let failover = crashed.elapsed();
    eprintln!(
        "v2 election in {:?}, failover after a crash with 1 s adverts: {failover:?}",
        crashed - started
    );
    assert!(failover < 5 * SECOND);
    lan.wait_sole_holder(1, legacy);
    for status in b.status() {
        assert_eq!(status.counters.drops.total(), 0, "{status:#?}");
    }
}

/// A tracked service losing every backend lowers the master's priority below the
/// backup's, which takes over; it comes back when a backend does.
#[test]
fn tracked_service_without_backends_hands_the_vip_over() {
    let lan = Lan::new(2).unwrap();
    let mut config = instance("web", 54, 200);
    config.track_services = vec![TrackService {
        service: "web".into(),
        weight: -150,
    }];
    let a = Speaker::start(lan.ns(0), vec![config], &["web"]).unwrap();
    let b = Speaker::start(lan.ns(1), vec![instance("web", 54, 100)], &[]).unwrap();
    a.wait_state(VrrpState::Master);
    lan.wait_sole_holder(0, VIP);

    a.set_health("web", 0);
    b.wait_state(VrrpState::Master);
    a.wait_state(VrrpState::Backup);
    lan.wait_sole_holder(1, VIP);
    assert_eq!(a.status()[0].effective_priority, 50);

    a.set_health("web", 2);
    a.wait_state(VrrpState::Master);
    lan.wait_sole_holder(0, VIP);
    assert_eq!(a.status()[0].effective_priority, 200);
}

/// A failing check script with weight 0 puts the master in FAULT: it gives the VIP up at
/// once (priority 0) and takes it back when the script passes again.
#[test]
fn failing_script_with_weight_zero_is_a_fault() {
    let lan = Lan::new(2).unwrap();
    let dir = TempDir::new();
    let flag = dir.write("healthy", "");
    let mut config = instance("web", 55, 200);
    config.advert_interval = SECOND;
    config.track_scripts = vec![TrackScript {
        name: "healthy".into(),
        command: format!("test -e {}", flag.display()),
        interval: Duration::from_millis(100),
        timeout: SECOND,
        fall: 2,
        rise: 2,
        weight: 0,
    }];
    let a = Speaker::start(lan.ns(0), vec![config], &[]).unwrap();
    let mut backup = instance("web", 55, 100);
    backup.advert_interval = SECOND;
    let b = Speaker::start(lan.ns(1), vec![backup], &[]).unwrap();
    a.wait_state(VrrpState::Master);

    std::fs::remove_file(&flag).unwrap();
    let failed = Instant::now();
    a.wait_state(VrrpState::Fault);
    b.wait_state(VrrpState::Master);
    eprintln!("FAULT hand-over with 1 s adverts: {:?}", failed.elapsed());
    lan.wait_sole_holder(1, VIP);

    std::fs::write(&flag, "").unwrap();
    a.wait_state(VrrpState::Backup);
    a.wait_state(VrrpState::Master);
    lan.wait_sole_holder(0, VIP);
}

/// The own interface going down is a fault too (keepalived's behaviour).
#[test]
fn interface_down_is_a_fault() {
    let lan = Lan::new(2).unwrap();
    let a = Speaker::start(lan.ns(0), vec![instance("web", 56, 200)], &[]).unwrap();
    let b = Speaker::start(lan.ns(1), vec![instance("web", 56, 100)], &[]).unwrap();
    a.wait_state(VrrpState::Master);
    lan.ns(0)
        .ip(["link", "set", "dev", "lan0", "down"])
        .unwrap();
    a.wait_state(VrrpState::Fault);
    b.wait_state(VrrpState::Master);
    assert!(!lan.holds(0, VIP));
    lan.ns(0).ip(["link", "set", "dev", "lan0", "up"]).unwrap();
    a.wait_state(VrrpState::Master);
    lan.wait_sole_holder(0, VIP);
}

/// Split brain over unicast: a partition makes both nodes master. Once it heals, the tie
/// between equal priorities goes to the higher address (node 1) at once, and stays.
#[test]
fn split_brain_converges_to_the_higher_address_without_flapping() {
    let lan = Lan::new(2).unwrap();
    let unicast = |me: usize, peer: usize| {
        let mut config = instance("web", 57, 150);
        config.unicast_source = Some(lan.addr(me));
        config.unicast_peers = vec![lan.addr(peer)];
        config
    };
    let a = Speaker::start(lan.ns(0), vec![unicast(0, 1)], &[]).unwrap();
    let b = Speaker::start(lan.ns(1), vec![unicast(1, 0)], &[]).unwrap();
    // Whoever is master first stays: an equal priority does not preempt.
    wait_for(WAIT, || {
        let states = [a.state(), b.state()];
        states.contains(&VrrpState::Master) && states.contains(&VrrpState::Backup)
    })
    .unwrap();

    lan.partition(0, true);
    a.wait_state(VrrpState::Master);
    b.wait_state(VrrpState::Master);
    assert_eq!(lan.holders(VIP), [0, 1]);
    let healed = Instant::now();
    lan.partition(0, false);
    a.wait_state(VrrpState::Backup);
    eprintln!("split brain healed after {:?}", healed.elapsed());
    lan.wait_sole_holder(1, VIP);

    let transitions = || (a.status()[0].transitions, b.status()[0].transitions);
    let before = transitions();
    std::thread::sleep(SECOND);
    assert_eq!(before, transitions(), "flapping after the partition healed");
    assert_eq!(b.state(), VrrpState::Master);
    assert_eq!(b.status()[0].counters.drops.total(), 0);
}

/// Bad advertisements, each claiming priority 255 from a higher address so that acting
/// on any would demote the master: dropped, counted by reason, never acted upon.
#[test]
fn bad_adverts_are_dropped_and_counted() {
    let lan = Lan::new(2).unwrap();
    let mut v2 = instance("legacy", 71, 200);
    v2.version = VrrpVersion::V2;
    v2.advert_interval = SECOND;
    v2.auth_password = Some("s3cret".into());
    v2.virtual_addresses.truncate(1);
    let mut v3 = instance("web", 70, 200);
    v3.virtual_addresses.truncate(1);
    v3.priority = 255; // the owner: master at once
    let a = Speaker::start(lan.ns(0), vec![v3, v2], &[]).unwrap();
    wait_for(WAIT, || {
        a.status().iter().all(|s| s.state == VrrpState::Master)
    })
    .unwrap();
    let before = a.status();

    let attacker = lan.addr(1); // higher than node 0's address
    let vips = [VIP];
    let v3_ok = advert(3, 70, 255, 10, &vips, attacker, None);
    let v2_ok = advert(2, 71, 255, 1, &vips, attacker, Some("s3cret"));
    let mut bad_checksum = v3_ok.clone();
    bad_checksum[6] ^= 0x55;
    let cases: Vec<(u8, Vec<u8>, DropReason)> = vec![
        (254, v3_ok.clone(), DropReason::Ttl),
        (255, bad_checksum, DropReason::Checksum),
        (
            255,
            advert(2, 70, 255, 1, &vips, attacker, None),
            DropReason::Version,
        ),
        (255, v3_ok[..10].to_vec(), DropReason::Truncated),
        (255, v3_ok[..5].to_vec(), DropReason::Truncated),
        (
            255,
            advert(3, 70, 255, 10, &[VIP2], attacker, None),
            DropReason::Addresses,
        ),
        (
            255,
            advert(2, 71, 255, 1, &vips, attacker, Some("guess")),
            DropReason::Auth,
        ),
        (
            255,
            advert(2, 71, 255, 2, &vips, attacker, Some("s3cret")),
            DropReason::Interval,
        ),
        (254, v2_ok, DropReason::Ttl),
    ];
    for (ttl, message, _) in &cases {
        inject(lan.ns(1), attacker, *ttl, message).unwrap();
    }
    inject(
        lan.ns(1),
        attacker,
        255,
        &advert(3, 99, 255, 10, &vips, attacker, None),
    )
    .unwrap();
    // Random bytes.
    inject(lan.ns(1), attacker, 255, &[0xff; 40]).unwrap();

    // Each instance drops the packets for its VRID, VRID 99 and the random bytes; a
    // sibling instance's VRID is not its concern.
    let expected = |vrid: u8| cases.iter().filter(|(_, m, _)| m[1] == vrid).count() as u64 + 2;
    let expected = [expected(70), expected(71)];
    wait_for(WAIT, || {
        let status = a.status();
        (0..2).all(|i| status[i].counters.drops.total() >= expected[i])
    })
    .unwrap_or_else(|_| panic!("{:#?}", a.status()));
    let after = a.status();
    for (ttl, message, reason) in &cases {
        let slot = usize::from(message[1] == 71);
        let count = after[slot].counters.drops.get(*reason);
        assert!(
            count >= 1,
            "ttl {ttl} {message:?}: no {reason} drop in {:#?}",
            after[slot]
        );
    }
    for (status, expected) in after.iter().zip(expected) {
        assert_eq!(status.counters.drops.total(), expected, "{status:#?}");
        assert_eq!(status.counters.drops.get(DropReason::ForeignVrid), 2);
        assert_eq!(status.state, VrrpState::Master);
        assert_eq!(status.counters.adverts_received, 0, "{status:#?}");
    }
    assert_eq!(
        before.iter().map(|s| s.transitions).collect::<Vec<_>>(),
        after.iter().map(|s| s.transitions).collect::<Vec<_>>()
    );
    assert!(lan.holds(0, VIP));
}

/// Start-up refuses what cannot work, with a message that says why.
#[test]
fn start_errors_are_clear() {
    let lan = Lan::new(1).unwrap();
    let mut off_subnet = instance("web", 80, 100);
    off_subnet.virtual_addresses = vec![VirtualAddress {
        address: [192, 0, 2, 10].into(),
        prefix_len: 24,
    }];
    let error = Speaker::start(lan.ns(0), vec![off_subnet], &[])
        .err()
        .expect("a VIP off the interface's subnets is refused");
    let message = format!("{error:#}");
    assert!(message.contains("192.0.2.10/24"), "{message}");
    assert!(
        message.contains("not on a subnet of interface lan0"),
        "{message}"
    );
    assert!(message.contains("VRRP instance web"), "{message}");

    let mut missing = instance("web", 80, 100);
    missing.interface = "eth9".into();
    let error = Speaker::start(lan.ns(0), vec![missing], &[]).err().unwrap();
    assert!(
        format!("{error:#}").contains("interface eth9 does not exist"),
        "{error:#}"
    );

    // A /32 needs no subnet; nothing was left behind by the failed starts.
    let mut host_route = instance("web", 80, 255);
    host_route.virtual_addresses = vec![VirtualAddress {
        address: [192, 0, 2, 10].into(),
        prefix_len: 32,
    }];
    let speaker = Speaker::start(lan.ns(0), vec![host_route], &[]).unwrap();
    speaker.wait_state(VrrpState::Master);
    assert!(lan.holds(0, [192, 0, 2, 10].into()));
    speaker.stop();
    assert!(!lan.holds(0, [192, 0, 2, 10].into()));
}

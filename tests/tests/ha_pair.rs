//! Two complete gerbangs (data path, health checks and VRRP) on one LAN: the service is
//! live only on the node that holds its VIP, and a node whose tracked service loses every
//! backend hands the VIP, and with it the traffic, to its peer. The same story with the XDP
//! program and with the userspace proxy.

mod support;

use std::{collections::BTreeMap, net::SocketAddrV4};

use gerbang::vrrp::VrrpState;
use gerbang_testbed::{HttpBackend, http_get_many};
use support::{
    gerbang::{InProcess, wait_until},
    vrrp::{IFACE, Lan, VIP, WAIT},
};

const WEB: u16 = 8080;
/// Node A checks the backends on this port, node B on [`WEB`]: stopping it fails A's checks
/// alone.
const A_CHECK: u16 = 8081;

/// The `[dataplane]` lines of each data plane under test (the XDP one on [`IFACE`]).
const XDP: &str = "interfaces = [\"lan0\"]\nattach = \"generic\"";
const USERSPACE: &str = "mode = \"userspace\"";

fn node_config(lan: &Lan, dataplane: &str, node: usize, priority: u8, check_port: u16) -> String {
    let mut text = format!(
        "[dataplane]\n{dataplane}\nsnat_address = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{VIP}:80\"\n\
         [service.check]\ntype = \"http\"\nport = {check_port}\ninterval = \"100ms\"\nfall = 2\nrise = 2\n",
        lan.addr(node)
    );
    for backend in [3, 4] {
        text += &format!(
            "  [[service.backend]]\n  name = \"n{backend}\"\n  address = \"{}:{WEB}\"\n",
            lan.addr(backend)
        );
    }
    text += &format!(
        "\n[[vrrp]]\nname = \"vip\"\ninterface = \"{IFACE}\"\nvirtual_router_id = 51\n\
         priority = {priority}\nadvert_interval = \"100ms\"\nvirtual_addresses = [\"{VIP}/24\"]\n\
         garp_count = 1\ntrack_services = [{{ service = \"web\", weight = 0 }}]\n"
    );
    text
}

fn vrrp_state(gerbang: &InProcess) -> VrrpState {
    gerbang.status().vrrp[0].state
}

fn serves(gerbang: &InProcess) -> bool {
    gerbang
        .status()
        .plan
        .services
        .iter()
        .any(|s| s.name == "web")
}

fn tally(lan: &Lan, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in http_get_many(lan.ns(2), SocketAddrV4::new(VIP, 80), n) {
        *counts
            .entry(answer.unwrap().trim().to_string())
            .or_default() += 1;
    }
    counts
}

#[test]
fn the_service_follows_the_vip_and_a_failed_track_hands_it_over() {
    follow_the_vip(XDP);
}

#[test]
fn the_proxy_follows_the_vip_too() {
    follow_the_vip(USERSPACE);
}

fn follow_the_vip(dataplane: &str) {
    // Nodes 0 and 1 balance, 2 is the client, 3 and 4 are backends.
    let lan = Lan::new(5).unwrap();
    let _web: Vec<HttpBackend> = [3, 4]
        .iter()
        .map(|&n| {
            HttpBackend::start(
                lan.ns(n),
                SocketAddrV4::new(lan.addr(n), WEB),
                &format!("n{n}"),
            )
            .unwrap()
        })
        .collect();
    let mut a_checks: Vec<HttpBackend> = [3, 4]
        .iter()
        .map(|&n| {
            HttpBackend::start(
                lan.ns(n),
                SocketAddrV4::new(lan.addr(n), A_CHECK),
                &format!("n{n}"),
            )
            .unwrap()
        })
        .collect();

    let a = InProcess::start(lan.ns(0), &node_config(&lan, dataplane, 0, 150, A_CHECK)).unwrap();
    let b = InProcess::start(lan.ns(1), &node_config(&lan, dataplane, 1, 100, WEB)).unwrap();
    wait_until(WAIT, || {
        (vrrp_state(&a) == VrrpState::Master && vrrp_state(&b) == VrrpState::Backup)
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("A {:?}, B {:?}", vrrp_state(&a), vrrp_state(&b)))
    })
    .unwrap();
    lan.wait_sole_holder(0, VIP);
    assert!(
        serves(&a) && !serves(&b),
        "only the master serves the VIP's service"
    );
    assert_eq!(
        tally(&lan, 10),
        BTreeMap::from([("n3".into(), 5), ("n4".into(), 5)])
    );
    let through_a = a.traffic().service("web").unwrap().counters.new_flows;
    assert_eq!(through_a, 10, "node A carried the traffic");

    // A's checks fail: its tracked service has no backend up, so it goes to FAULT and B
    // takes the VIP; B's checks still pass and it serves.
    for check in &mut a_checks {
        check.stop();
    }
    let moved = lan.wait_sole_holder(1, VIP);
    wait_until(WAIT, || {
        (vrrp_state(&a) == VrrpState::Fault && serves(&b) && !serves(&a))
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("A {:?}, B serves {}", vrrp_state(&a), serves(&b)))
    })
    .unwrap();
    eprintln!("the VIP moved {moved:?} after A's checks failed");
    assert_eq!(
        tally(&lan, 10),
        BTreeMap::from([("n3".into(), 5), ("n4".into(), 5)])
    );
    let web_b = b.traffic();
    assert_eq!(
        web_b.service("web").unwrap().counters.new_flows,
        10,
        "node B carried it"
    );
    assert_eq!(
        a.traffic()
            .service("web")
            .map_or(through_a, |s| s.counters.new_flows),
        through_a
    );
    b.stop().unwrap();
    a.stop().unwrap();
}

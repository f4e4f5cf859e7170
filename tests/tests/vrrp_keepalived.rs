//! Interoperability with keepalived 2.2.7 (Debian's package), the judge nobody here
//! wrote: gerbang in one namespace, keepalived in another, on one bridge. VRRP v2 (with
//! keepalived's default `vrrp_version` and `auth_type PASS`) and v3 (100 ms adverts),
//! multicast and unicast, each side as master and as backup. The node that should be
//! master is, failover works both ways, gerbang drops none of keepalived's packets and
//! keepalived logs none of gerbang's as invalid.

mod support;

use std::time::{Duration, Instant, SystemTime};

use gerbang::{
    config::{VrrpConfig, VrrpVersion},
    vrrp::VrrpState,
};
use support::vrrp::{IFACE, Keepalived, Lan, Speaker, VIP, VIP2, instance};

const SECOND: Duration = Duration::from_secs(1);
/// Node 0 runs gerbang, node 1 keepalived.
const GERBANG: usize = 0;
const KEEPALIVED: usize = 1;
const VRID: u8 = 42;
const PASSWORD: &str = "kaPass1";

#[derive(Clone, Copy)]
struct Mode {
    version: VrrpVersion,
    unicast: bool,
}

impl Mode {
    fn interval(self) -> Duration {
        match self.version {
            VrrpVersion::V2 => SECOND,
            VrrpVersion::V3 => Duration::from_millis(100),
        }
    }

    /// Generous bound for a takeover after the master went silent: 3 intervals + skew.
    fn failover_bound(self) -> Duration {
        match self.version {
            VrrpVersion::V2 => 5 * SECOND,
            VrrpVersion::V3 => SECOND,
        }
    }

    fn gerbang(self, lan: &Lan, priority: u8) -> VrrpConfig {
        let mut config = instance("VI_1", VRID, priority);
        config.version = self.version;
        config.advert_interval = self.interval();
        if self.version == VrrpVersion::V2 {
            config.auth_password = Some(PASSWORD.into());
        }
        if self.unicast {
            config.unicast_source = Some(lan.addr(GERBANG));
            config.unicast_peers = vec![lan.addr(KEEPALIVED)];
        }
        config
    }

    fn keepalived(self, lan: &Lan, priority: u8) -> String {
        let (version, advert_int, auth) = match self.version {
            // keepalived's default is version 2: leave it implicit.
            VrrpVersion::V2 => (
                String::new(),
                "1",
                format!("authentication {{\n\tauth_type PASS\n\tauth_pass {PASSWORD}\n    }}"),
            ),
            VrrpVersion::V3 => ("vrrp_version 3".to_owned(), "0.1", String::new()),
        };
        let unicast = if self.unicast {
            format!(
                "unicast_src_ip {}\n    unicast_peer {{\n        {}\n    }}",
                lan.addr(KEEPALIVED),
                lan.addr(GERBANG)
            )
        } else {
            String::new()
        };
        format!(
            "global_defs {{
    router_id keepalived-test
    enable_script_security
    vrrp_garp_master_delay 0
    {version}
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface {IFACE}
    virtual_router_id {VRID}
    priority {priority}
    advert_int {advert_int}
    {auth}
    {unicast}
    virtual_ipaddress {{
        {VIP}/32
        {VIP2}/32
    }}
}}
"
        )
    }
}

/// gerbang (200) is master over keepalived (100); keepalived takes over when gerbang
/// crashes, gives the VIPs back when it returns, and takes over at once on a graceful stop.
fn gerbang_master(mode: Mode) {
    let lan = Lan::new(2).unwrap();
    let keepalived = Keepalived::start(lan.ns(KEEPALIVED), &mode.keepalived(&lan, 100)).unwrap();
    let gerbang = Speaker::start(lan.ns(GERBANG), vec![mode.gerbang(&lan, 200)], &[]).unwrap();
    gerbang.wait_state(VrrpState::Master);
    lan.wait_sole_holder(GERBANG, VIP);
    lan.wait_sole_holder(GERBANG, VIP2);

    let crashed = Instant::now();
    gerbang.crash();
    lan.power_off(GERBANG);
    lan.wait_sole_holder(KEEPALIVED, VIP);
    let failover = crashed.elapsed();
    eprintln!("keepalived took over from a crashed gerbang in {failover:?}");
    assert!(failover < mode.failover_bound(), "{failover:?}");

    lan.power_on(GERBANG);
    let gerbang = Speaker::start(lan.ns(GERBANG), vec![mode.gerbang(&lan, 200)], &[]).unwrap();
    gerbang.wait_state(VrrpState::Master);
    lan.wait_sole_holder(GERBANG, VIP);
    let status = &gerbang.status()[0];
    assert!(status.counters.adverts_received > 0, "{status:#?}");
    assert_eq!(status.counters.drops.total(), 0, "{status:#?}");

    let stopped = Instant::now();
    gerbang.stop();
    lan.wait_sole_holder(KEEPALIVED, VIP);
    eprintln!(
        "keepalived took over from a stopping gerbang in {:?}",
        stopped.elapsed()
    );
    let log = keepalived.log();
    assert!(
        log.contains("Backup received priority 0 advertisement"),
        "{log}"
    );
    keepalived.stop();
}

/// keepalived (200) is master over gerbang (100); gerbang takes over at once when
/// keepalived stops (priority 0), and gives the VIPs back when it returns (preempt).
fn keepalived_master(mode: Mode) {
    let lan = Lan::new(2).unwrap();
    let keepalived = Keepalived::start(lan.ns(KEEPALIVED), &mode.keepalived(&lan, 200)).unwrap();
    let gerbang = Speaker::start(lan.ns(GERBANG), vec![mode.gerbang(&lan, 100)], &[]).unwrap();
    lan.wait_sole_holder(KEEPALIVED, VIP);
    lan.wait_sole_holder(KEEPALIVED, VIP2);
    gerbang.wait_state(VrrpState::Backup);
    assert_eq!(gerbang.status()[0].master, Some(lan.addr(KEEPALIVED)));

    // Measured to the state change: keepalived itself takes a while to exit.
    let stopped = SystemTime::now();
    keepalived.stop();
    gerbang.wait_state(VrrpState::Master);
    let status = &gerbang.status()[0];
    let takeover = status.since.duration_since(stopped).unwrap();
    eprintln!("gerbang took over from a stopping keepalived in {takeover:?}");
    assert!(status.counters.priority_zero_received >= 1, "{status:#?}");
    lan.wait_sole_holder(GERBANG, VIP);

    let keepalived = Keepalived::start(lan.ns(KEEPALIVED), &mode.keepalived(&lan, 200)).unwrap();
    gerbang.wait_state(VrrpState::Backup);
    lan.wait_sole_holder(KEEPALIVED, VIP);
    let status = &gerbang.status()[0];
    assert!(status.counters.adverts_received > 0, "{status:#?}");
    assert_eq!(status.counters.drops.total(), 0, "{status:#?}");
    gerbang.stop();
    keepalived.stop();
}

const V2_MULTICAST: Mode = Mode {
    version: VrrpVersion::V2,
    unicast: false,
};
const V2_UNICAST: Mode = Mode {
    version: VrrpVersion::V2,
    unicast: true,
};
const V3_MULTICAST: Mode = Mode {
    version: VrrpVersion::V3,
    unicast: false,
};
const V3_UNICAST: Mode = Mode {
    version: VrrpVersion::V3,
    unicast: true,
};

#[test]
fn v2_multicast_gerbang_master() {
    gerbang_master(V2_MULTICAST);
}

#[test]
fn v2_multicast_keepalived_master() {
    keepalived_master(V2_MULTICAST);
}

#[test]
fn v2_unicast_gerbang_master() {
    gerbang_master(V2_UNICAST);
}

#[test]
fn v2_unicast_keepalived_master() {
    keepalived_master(V2_UNICAST);
}

#[test]
fn v3_multicast_gerbang_master() {
    gerbang_master(V3_MULTICAST);
}

#[test]
fn v3_multicast_keepalived_master() {
    keepalived_master(V3_MULTICAST);
}

#[test]
fn v3_unicast_gerbang_master() {
    gerbang_master(V3_UNICAST);
}

#[test]
fn v3_unicast_keepalived_master() {
    keepalived_master(V3_UNICAST);
}

/// A unicast peer gerbang does not know is dropped as such, and keepalived, told about a
/// peer that is not gerbang, never hears from it: the two stay apart.
#[test]
fn unicast_from_a_stranger_is_dropped() {
    let lan = Lan::new(3).unwrap();
    let mode = V3_UNICAST;
    let keepalived = Keepalived::start(lan.ns(KEEPALIVED), &mode.keepalived(&lan, 200)).unwrap();
    let mut config = mode.gerbang(&lan, 100);
    // gerbang expects its peer at node 2, but keepalived (node 1) sends to it.
    config.unicast_peers = vec![lan.addr(2)];
    let gerbang = Speaker::start(lan.ns(GERBANG), vec![config], &[]).unwrap();
    gerbang.wait_state(VrrpState::Master);
    let drops = gerbang.status()[0].counters.drops.clone();
    assert!(drops.get(gerbang::vrrp::DropReason::Peer) > 0, "{drops:?}");
    gerbang.stop();
    drop(keepalived);
}

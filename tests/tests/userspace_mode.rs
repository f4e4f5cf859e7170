//! The userspace proxy as a deployment runs it: chosen by `mode = "auto"` where XDP cannot
//! attach, and the 32-bit ARM (Raspberry Pi Zero 2 W) build running under qemu-user.

mod support;

use std::{collections::BTreeMap, net::SocketAddrV4, time::Duration};

use gerbang_testbed::{
    Cmd, HttpBackend, Netns, TwoArm, UdpEcho, http_get, http_get_many, link, udp_request,
};
use support::{
    gerbang::{InProcess, backend_entries, isolate, wait_until},
    tempdir::TempDir,
};

fn tally(answers: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.trim().to_string()).or_default() += 1;
    }
    counts
}

/// `lo` has no native XDP: with `mode = "auto"` gerbang says so and runs the proxy, which
/// serves the same service.
#[test]
fn auto_falls_back_to_the_proxy_where_xdp_cannot_attach() {
    let t = TwoArm::new(2).unwrap();
    let _servers: Vec<HttpBackend> = HttpBackend::start_on_each(&t.backends, 8080).unwrap();
    let mut config = format!(
        "[dataplane]\nmode = \"auto\"\ninterfaces = [\"lo\"]\nattach = \"native\"\nsnat_address = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{}:80\"\n",
        t.snat, t.vip
    );
    config += &backend_entries(&t.backends, 8080);
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    let status = gerbang.status();
    assert_eq!(status.dataplane, "userspace");
    assert!(status.attachments.is_empty());
    assert!(
        !t.lb
            .ip(["link", "show", "dev", "lo"])
            .unwrap()
            .contains("xdp"),
        "nothing left attached"
    );
    let answers = http_get_many(&t.client, SocketAddrV4::new(t.vip, 80), 10)
        .into_iter()
        .map(Result::unwrap);
    assert_eq!(
        tally(answers),
        BTreeMap::from([("b0".into(), 5), ("b1".into(), 5)])
    );
    gerbang.stop().unwrap();
}

/// The armv7 binary (`cargo xtask test` builds it and names it in `GERBANG_ARMV7_BIN`)
/// proxies a TCP and a UDP exchange on loopback, under qemu-arm.
#[test]
fn the_armv7_binary_proxies_tcp_and_udp_under_qemu() {
    let Some(binary) = std::env::var_os("GERBANG_ARMV7_BIN") else {
        eprintln!("GERBANG_ARMV7_BIN is not set: run through `cargo xtask test`, which builds it");
        return;
    };
    assert!(
        std::path::Path::new(&binary).exists(),
        "{binary:?} was not built"
    );
    // One namespace whose loopback carries the VIP and two backends.
    let ns = Netns::new("pi").unwrap();
    let [vip, b0, b1] = ["10.220.0.1", "10.220.0.2", "10.220.0.3"].map(|a| a.parse().unwrap());
    for address in [vip, b0, b1] {
        link::add_addr(&ns, "lo", &format!("{address}/32")).unwrap();
    }
    let _web = [b0, b1]
        .map(|a| HttpBackend::start(&ns, SocketAddrV4::new(a, 8080), &a.to_string()).unwrap());
    let _echo =
        [b0, b1].map(|a| UdpEcho::start(&ns, SocketAddrV4::new(a, 5353), &a.to_string()).unwrap());
    let text = isolate(&format!(
        "[dataplane]\nmode = \"userspace\"\nsnat_address = \"{vip}\"\n\n\
         [http]\nenabled = false\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{vip}:80\"\n\
           [[service.backend]]\n  name = \"b0\"\n  address = \"{b0}:8080\"\n\
           [[service.backend]]\n  name = \"b1\"\n  address = \"{b1}:8080\"\n\n\
         [[service]]\nname = \"echo\"\nlisten = \"{vip}:53\"\nprotocol = \"udp\"\n\
           [[service.backend]]\n  name = \"b0\"\n  address = \"{b0}:5353\"\n\
           [[service.backend]]\n  name = \"b1\"\n  address = \"{b1}:5353\"\n"
    ));
    let dir = TempDir::new();
    let config = dir.write("pi.toml", &text);
    let log = dir.path().join("pi.log");
    let mut gerbang = ns
        .spawn(
            &Cmd::new("qemu-arm")
                .args(["-L", "/usr/arm-linux-gnueabihf"])
                .arg(&binary)
                .args(["run", "--config", config.to_str().unwrap()])
                .log_to(&log),
        )
        .unwrap();
    let web = SocketAddrV4::new(vip, 80);
    wait_until(Duration::from_secs(60), || http_get(&ns, web)).unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let answers = http_get_many(&ns, web, 10).into_iter().map(Result::unwrap);
    assert_eq!(
        tally(answers),
        BTreeMap::from([(b0.to_string(), 5), (b1.to_string(), 5)])
    );
    let mut replies = Vec::new();
    for i in 0..4u16 {
        let from = SocketAddrV4::new(vip, 40000 + i);
        let reply = udp_request(&ns, Some(from), SocketAddrV4::new(vip, 53), b"ping").unwrap();
        replies.push(String::from_utf8(reply).unwrap());
    }
    let backends: Vec<&str> = replies
        .iter()
        .map(|r| r.split(':').next().unwrap())
        .collect();
    assert_eq!(
        tally(backends.iter().map(|b| b.to_string())).len(),
        2,
        "{replies:?}"
    );
    assert!(replies.iter().all(|r| r.ends_with(":ping")), "{replies:?}");
    let status = gerbang.terminate().unwrap();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{said}");
    assert!(said.contains("userspace proxy listening"), "{said}");
}

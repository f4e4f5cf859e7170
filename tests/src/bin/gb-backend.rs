//! A test backend as a process of its own, so that tests can treat it as a real server:
//! `kill -9` it, `SIGSTOP` it (it keeps accepting in the kernel but never answers).
//!
//! Usage, inside a namespace: `ip netns exec NS gb-backend NS http|stream|udp ADDR NAME`.
//! Serves until SIGTERM or SIGKILL.

use std::{net::SocketAddrV4, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use gerbang_testbed::{HttpBackend, Netns, TcpStreamServer, UdpEcho};
use nix::sys::signal::{SigSet, Signal};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gb-backend: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ns, kind, addr, name] = args.as_slice() else {
        bail!("usage: gb-backend NETNS http|stream|udp ADDR NAME");
    };
    let ns = Netns::existing(ns)?;
    let addr: SocketAddrV4 = addr.parse().context("ADDR must be IPv4:port")?;
    // Block the signals before any thread starts, then wait for one of them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;
    let _server: Box<dyn std::any::Any> = match kind.as_str() {
        "http" => Box::new(HttpBackend::start(&ns, addr, name)?),
        "stream" => Box::new(TcpStreamServer::start(&ns, addr, name)?),
        "udp" => Box::new(UdpEcho::start(&ns, addr, name)?),
        other => bail!("unknown kind {other:?}: http, stream or udp"),
    };
    println!("serving {kind} on {addr} as {name}");
    signals.wait()?;
    Ok(())
}

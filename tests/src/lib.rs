//! Network-namespace testbed for gerbang's integration tests, `cargo xtask demo` and
//! benchmarks.
//!
//! It builds throw-away topologies out of network namespaces, veth pairs and bridges
//! ([`TwoArm`], [`OneArm`]), runs real servers inside them ([`HttpBackend`], [`UdpEcho`],
//! [`TcpStreamServer`], or any program through [`Netns::spawn`]) and sends real traffic
//! from clients inside them ([`http_get`], [`curl`], [`udp_request`], [`TcpStreamClient`]).
//! Everything a topology creates is torn down when it is dropped, also while a failing
//! test unwinds. Real PostgreSQL servers, a primary and its streaming replicas, run in
//! them too ([`Postgres`]).
//!
//! The topologies are prepared for an XDP program on the load balancer's interfaces:
//! senders compute full checksums (TX checksum offload off) and the far ends of the load
//! balancer's veths accept native `XDP_TX` and redirected frames ([`XdpPass`], GRO on).
//!
//! # Safety rule
//!
//! Traffic goes only to loopback or to addresses inside namespaces this crate created, all
//! in 10.200.0.0/16. Nothing here touches the root namespace's interfaces, routes or
//! sysctls: links are created directly inside their namespaces (`ip -n`), and sysctls are
//! written from threads that have entered the target namespace.
//!
//! Requires root (namespaces, veth), `iproute2`, `ethtool` and, for [`curl`], `curl`.
//! This crate deliberately does not depend on `lb-userspace`, so it builds before any eBPF
//! toolchain is installed.

pub mod clients;
pub mod link;
pub mod netns;
pub mod postgres;
pub mod process;
pub mod servers;
pub mod topology;
pub mod xdp;

pub use clients::{TcpStreamClient, curl, http_get, http_get_many, udp_request};
pub use netns::{Netns, NsThread, remove_stale};
pub use postgres::Postgres;
pub use process::{ChildGuard, Cmd};
pub use servers::{HttpBackend, TcpStreamServer, UdpEcho};
pub use topology::{Backend, OneArm, TwoArm};
pub use xdp::XdpPass;

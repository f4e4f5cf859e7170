//! Replication-aware services with real databases: PostgreSQL 15 streaming replication and
//! MariaDB 10.11 binary-log replication, each server in a backend namespace of a two-arm
//! topology, gerbang in-process in the balancer's, and the clients (tokio-postgres and
//! mysql_async, tagging what they write) in the client's. The layouts are HAProxy's
//! (PostgreSQL write :6432, read :6433) and MySQL Router's (read-write :3306, read-only
//! :3307).
//!
//! How long gerbang takes to follow a promotion is printed, not asserted: `cargo xtask
//! bench` measures it.

mod support;

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use gerbang::dataplane::BackendState;
use gerbang_testbed::{HttpBackend, TwoArm, curl, http_get};
use mysql_async::prelude::Queryable as _;
use support::{
    db::{Fake, FakeServer, MARIADB_PASSWORD, Mariadb, PG_PASSWORD, Postgres},
    gerbang::{InProcess, wait_until},
    tempdir::TempDir,
};
use tokio_postgres::{NoTls, SimpleQueryMessage};

const PG_WRITE: u16 = 6432;
const PG_READ: u16 = 6433;
const PG_BADPASS: u16 = 6434;
const MY_RW: u16 = 3306;
const MY_RO: u16 = 3307;
const MY_BADPASS: u16 = 3308;
/// The check's own user, with a password of its own.
const MONITOR_PASSWORD: &str = "monitor-secret";

/// Fast role checks, so that a test sees a promotion followed within a second or two.
fn check(kind: &str, password: &str) -> String {
    format!(
        "  [service.check]\n  type = \"{kind}\"\n  user = \"gerbang\"\n  password = \
         \"{password}\"\n  interval = \"300ms\"\n  fast_interval = \"150ms\"\n  timeout = \
         \"500ms\"\n  fall = 2\n  rise = 2\n"
    )
}

/// The `[dataplane]` of a two-arm topology.
fn dataplane(t: &TwoArm) -> String {
    format!(
        "[dataplane]\ninterfaces = [\"{}\", \"{}\"]\nattach = \"native\"\nsnat_address = \"{}\"\n",
        t.lb_client_if, t.lb_backend_if, t.snat
    )
}

/// A `[[service]]` on the VIP at `port` over `backends` (name, address).
fn service(
    t: &TwoArm,
    name: &str,
    port: u16,
    lines: &str,
    check: &str,
    backends: &[(&str, SocketAddrV4)],
) -> String {
    let mut text = format!(
        "\n[[service]]\nname = \"{name}\"\nlisten = \"{}:{port}\"\n{lines}{check}",
        t.vip
    );
    for (backend, address) in backends {
        text +=
            &format!("  [[service.backend]]\n  name = \"{backend}\"\n  address = \"{address}\"\n");
    }
    text
}

/// The last check result of `service/backend` once it is DOWN.
fn down_reason(gerbang: &InProcess, service: &str, backend: &str) -> String {
    wait_until(Duration::from_secs(20), || {
        let status = gerbang.status();
        let health = status
            .health
            .iter()
            .find(|h| h.key.0 == service && h.key.1 == backend)
            .ok_or_else(|| anyhow!("no health for {service}/{backend}"))?;
        match (health.up, &health.last_result) {
            (Some(false), Some(reason)) => Ok(reason.clone()),
            other => Err(anyhow!("{service}/{backend}: {other:?}")),
        }
    })
    .unwrap()
}

/// Database clients inside the client namespace, on their own runtime.
struct Client {
    runtime: tokio::runtime::Runtime,
    vip: Ipv4Addr,
}

impl Client {
    fn new(vip: Ipv4Addr) -> Client {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Client { runtime, vip }
    }

    fn block_on<T>(&self, future: impl Future<Output = Result<T>>) -> Result<T> {
        self.runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(3), future).await? })
    }

    /// Runs `sql` through the VIP at `port` as the PostgreSQL superuser on a new
    /// connection; the first column of the first row.
    fn pg(&self, port: u16, sql: &str) -> Result<String> {
        let address = SocketAddrV4::new(self.vip, port);
        self.block_on(async move {
            let mut config = tokio_postgres::Config::new();
            config
                .hostaddr((*address.ip()).into())
                .port(address.port())
                .user("postgres")
                .password(PG_PASSWORD)
                .dbname("postgres");
            let (client, connection) = config.connect(NoTls).await?;
            let connection = tokio::spawn(connection);
            let messages = client.simple_query(sql).await?;
            drop(client);
            let _ = connection.await;
            messages
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .ok_or_else(|| anyhow!("no row"))
        })
    }

    /// A new MySQL connection through the VIP at `port` as `app`.
    fn my_connect(&self, port: u16) -> Result<mysql_async::Conn> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.vip.to_string())
            .tcp_port(port)
            .user(Some("app"))
            .pass(Some(MARIADB_PASSWORD))
            .prefer_socket(false);
        self.block_on(async move { Ok(mysql_async::Conn::new(opts).await?) })
    }

    /// Runs `statements` on `conn`; the first column of the last one's first row.
    fn my_on(&self, conn: &mut mysql_async::Conn, statements: &[&str]) -> Result<String> {
        self.block_on(async move {
            let mut last = None;
            for statement in statements {
                let row: Option<mysql_async::Row> = conn.query_first(*statement).await?;
                last = row.and_then(|row| row.get_opt::<String, _>(0)?.ok());
            }
            last.ok_or_else(|| anyhow!("no row"))
        })
    }

    /// [`Client::my_on`] on a new connection through the VIP at `port`.
    fn my(&self, port: u16, statements: &[&str]) -> Result<String> {
        let mut conn = self.my_connect(port)?;
        let answer = self.my_on(&mut conn, statements);
        let _ = self.block_on(async move { Ok(conn.disconnect().await?) });
        answer
    }
}

/// Polls `attempt` until it returns `expected`; how long that took.
fn time_until(expected: &str, mut attempt: impl FnMut() -> Result<String>) -> Duration {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(answer) if answer == expected => return start.elapsed(),
            _ if start.elapsed() > Duration::from_secs(20) => {
                panic!("no answer {expected:?} within 20 s")
            }
            _ => thread::sleep(Duration::from_millis(20)),
        }
    }
}

const WRITE_PG: &str = "INSERT INTO writes (tag) VALUES ('t') RETURNING host(inet_server_addr())";
const READ_PG: &str = "SELECT host(inet_server_addr())";

#[test]
fn postgres_streaming_replication() {
    let t = TwoArm::new(2).unwrap();
    let scratch = TempDir::new();
    let (a1, a2) = (t.backends[0].addr, t.backends[1].addr);
    let primary = Postgres::primary(&t.backends[0].ns, a1, scratch.path(), "pg1").unwrap();
    primary
        .psql(&format!(
            "CREATE ROLE gerbang LOGIN PASSWORD '{MONITOR_PASSWORD}'; \
             CREATE TABLE writes (id serial PRIMARY KEY, tag text)"
        ))
        .unwrap();
    let replica =
        Postgres::replica(&t.backends[1].ns, a2, scratch.path(), "pg2", &primary).unwrap();
    let mut primary = primary;

    let backends = [
        ("pg1", SocketAddrV4::new(a1, Postgres::PORT)),
        ("pg2", SocketAddrV4::new(a2, Postgres::PORT)),
    ];
    let check = check("postgres", MONITOR_PASSWORD);
    let config = dataplane(&t)
        + &service(
            &t,
            "pg-write",
            PG_WRITE,
            "role = \"primary\"\n",
            &check,
            &backends,
        )
        + &service(
            &t,
            "pg-read",
            PG_READ,
            "role = \"replica\"\nmax_lag = \"1s\"\n",
            &check,
            &backends,
        );
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    let (s1, s2) = (a1.to_string(), a2.to_string());

    t.client
        .run(|| {
            let client = Client::new(t.vip);
            gerbang.wait_for_backend_state("pg-write", "pg1", BackendState::Active);
            gerbang.wait_for_backend_state("pg-read", "pg2", BackendState::Active);
            for _ in 0..5 {
                assert_eq!(client.pg(PG_WRITE, WRITE_PG).unwrap(), s1);
                assert_eq!(client.pg(PG_READ, READ_PG).unwrap(), s2);
            }
            assert_eq!(gerbang.backend_state("pg-write", "pg2"), BackendState::Down);
            assert_eq!(
                gerbang.backend_state("pg-read", "pg1"),
                BackendState::Standby
            );

            // Replay paused while the primary writes: the replica falls behind, leaves
            // the read set, and reads go to the primary until it has caught up.
            replica.psql("SELECT pg_wal_replay_pause()").unwrap();
            let paused = Instant::now();
            wait_until(Duration::from_secs(20), || {
                client.pg(PG_WRITE, WRITE_PG)?;
                thread::sleep(Duration::from_millis(100));
                match gerbang.backend_state("pg-read", "pg2") {
                    BackendState::Down => Ok(()),
                    other => Err(anyhow!("pg2 is {other:?}")),
                }
            })
            .unwrap();
            eprintln!(
                "lagging replica left the read set {:?} after the pause",
                paused.elapsed()
            );
            assert_eq!(client.pg(PG_READ, READ_PG).unwrap(), s1);
            replica.psql("SELECT pg_wal_replay_resume()").unwrap();
            gerbang.wait_for_backend_state("pg-read", "pg2", BackendState::Active);
            assert_eq!(client.pg(PG_READ, READ_PG).unwrap(), s2);

            // Failover: the replica is promoted, the old primary stopped.
            replica.psql("SELECT pg_promote()").unwrap();
            let promoted = Instant::now();
            primary.stop();
            let took = time_until(&s2, || client.pg(PG_WRITE, WRITE_PG));
            eprintln!(
                "writes land on the new primary {:?} after the promotion, {took:?} after the old \
                 primary stopped",
                promoted.elapsed()
            );
            assert_eq!(gerbang.backend_state("pg-write", "pg1"), BackendState::Down);
            assert_eq!(gerbang.service_plan("pg-write").conflict, None);
            // No replica left: reads fall back to the new primary.
            assert_eq!(client.pg(PG_READ, READ_PG).unwrap(), s2);
        })
        .unwrap();
    gerbang.stop().unwrap();
}

#[test]
fn two_primaries_stop_the_write_service() {
    let t = TwoArm::new(2).unwrap();
    let scratch = TempDir::new();
    let (a1, a2) = (t.backends[0].addr, t.backends[1].addr);
    let mut servers = Vec::new();
    for (i, name) in ["pg1", "pg2"].into_iter().enumerate() {
        let b = &t.backends[i];
        let server = Postgres::primary(&b.ns, b.addr, scratch.path(), name).unwrap();
        server
            .psql(&format!(
                "CREATE ROLE gerbang LOGIN PASSWORD '{MONITOR_PASSWORD}'; \
                 CREATE TABLE writes (id serial PRIMARY KEY, tag text)"
            ))
            .unwrap();
        servers.push(server);
    }
    let backends = [
        ("pg1", SocketAddrV4::new(a1, Postgres::PORT)),
        ("pg2", SocketAddrV4::new(a2, Postgres::PORT)),
    ];
    let config = dataplane(&t)
        + &service(
            &t,
            "pg-write",
            PG_WRITE,
            "role = \"primary\"\n",
            &check("postgres", MONITOR_PASSWORD),
            &backends,
        );
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    let plan = wait_until(Duration::from_secs(20), || {
        let plan = gerbang.service_plan("pg-write");
        match plan.conflict {
            Some(_) => Ok(plan),
            None => bail!("no conflict yet: {plan:?}"),
        }
    })
    .unwrap();
    assert_eq!(
        plan.conflict.as_deref(),
        Some("pg1, pg2 claim to be the primary")
    );
    assert!(plan.backends.iter().all(|b| b.state == BackendState::Down));
    // Exposed where an operator looks: the metrics and the status API.
    let http = gerbang.http_address().unwrap();
    let metrics = curl(&t.lb, &format!("http://{http}/metrics")).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "gerbang_backend_primary_conflict{service=\"pg-write\"} 1"),
        "{metrics}"
    );
    let api = curl(&t.lb, &format!("http://{http}/api/status")).unwrap();
    assert!(
        api.contains("\"primary_conflict\":\"pg1, pg2 claim to be the primary\""),
        "{api}"
    );
    t.client
        .run(|| {
            let client = Client::new(t.vip);
            for _ in 0..5 {
                let refused = client.pg(PG_WRITE, WRITE_PG);
                assert!(refused.is_err(), "a write went through: {refused:?}");
            }
            // One of them goes: the other is the primary.
            servers[1].stop();
            gerbang.wait_for_backend_state("pg-write", "pg1", BackendState::Active);
            assert_eq!(gerbang.service_plan("pg-write").conflict, None);
            assert_eq!(client.pg(PG_WRITE, WRITE_PG).unwrap(), a1.to_string());
        })
        .unwrap();
    gerbang.stop().unwrap();
}

#[test]
fn mariadb_replication() {
    let t = TwoArm::new(2).unwrap();
    let scratch = TempDir::new();
    let template = Mariadb::install(scratch.path()).unwrap();
    let (a1, a2) = (t.backends[0].addr, t.backends[1].addr);
    let db1 = Mariadb::start(&t.backends[0].ns, a1, scratch.path(), &template, 1, &[]).unwrap();
    let db2 = Mariadb::start(&t.backends[1].ns, a2, scratch.path(), &template, 2, &[]).unwrap();
    db2.replicate_from(&db1).unwrap();
    db1.sql(
        "CREATE DATABASE test; \
         CREATE TABLE test.writes (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(64))",
    )
    .unwrap();
    wait_until(Duration::from_secs(20), || {
        db2.sql("SELECT COUNT(*) FROM test.writes")
    })
    .unwrap();

    let backends = [
        ("db1", SocketAddrV4::new(a1, Mariadb::PORT)),
        ("db2", SocketAddrV4::new(a2, Mariadb::PORT)),
    ];
    let check_lines = check("mysql", MARIADB_PASSWORD);
    let config = dataplane(&t)
        + &service(
            &t,
            "my-rw",
            MY_RW,
            "role = \"primary\"\n",
            &check_lines,
            &backends,
        )
        + &service(
            &t,
            "my-ro",
            MY_RO,
            "role = \"replica\"\nmax_lag = \"2s\"\n",
            &check_lines,
            &backends,
        )
        + &service(
            &t,
            "my-badpass",
            MY_BADPASS,
            "",
            &check("mysql", "wrong"),
            &backends[..1],
        );
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    let reason = down_reason(&gerbang, "my-badpass", "db1");
    assert!(
        reason.starts_with("MySQL error 1045: Access denied"),
        "{reason}"
    );

    const WRITE: &[&str] = &[
        "INSERT INTO test.writes (tag) VALUES ('t')",
        "SELECT @@server_id",
    ];
    const READ: &[&str] = &["SELECT @@server_id"];
    t.client
        .run(|| {
            let client = Client::new(t.vip);
            gerbang.wait_for_backend_state("my-rw", "db1", BackendState::Active);
            gerbang.wait_for_backend_state("my-ro", "db2", BackendState::Active);
            for _ in 0..5 {
                assert_eq!(client.my(MY_RW, WRITE).unwrap(), "1");
                assert_eq!(client.my(MY_RO, READ).unwrap(), "2");
            }

            // The replica stops applying: it leaves the read set, reads go to the primary.
            db2.sql("STOP SLAVE SQL_THREAD").unwrap();
            gerbang.wait_for_backend_state("my-ro", "db2", BackendState::Down);
            assert_eq!(client.my(MY_RO, READ).unwrap(), "1");
            db2.sql("START SLAVE SQL_THREAD").unwrap();
            gerbang.wait_for_backend_state("my-ro", "db2", BackendState::Active);
            assert_eq!(client.my(MY_RO, READ).unwrap(), "2");

            // A write connection open on the primary when it is demoted...
            let mut held = client.my_connect(MY_RW).unwrap();
            assert_eq!(client.my_on(&mut held, READ).unwrap(), "1");
            db1.sql("SET GLOBAL read_only = 1").unwrap();
            db2.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0")
                .unwrap();
            let took = time_until("2", || client.my(MY_RW, WRITE));
            eprintln!("writes land on the promoted replica {took:?} after the promotion");
            assert_eq!(gerbang.backend_state("my-rw", "db1"), BackendState::Down);
            // ...is cut: its next statement meets a reset, not the server.
            match client.my_on(&mut held, READ) {
                Err(err) => assert!(
                    !matches!(
                        err.downcast_ref::<mysql_async::Error>(),
                        Some(mysql_async::Error::Server(_))
                    ),
                    "{err:#}"
                ),
                Ok(answer) => panic!("the old primary still answered: {answer}"),
            }
            // The demoted primary is a replica now, though not replicating: reads go to
            // the new primary, once the read service's own checks have seen it promoted.
            time_until("2", || client.my(MY_RO, READ));
        })
        .unwrap();
    gerbang.stop().unwrap();
}

#[test]
fn galera_nodes() {
    let t = TwoArm::new(3).unwrap();
    let scratch = TempDir::new();
    let template = Mariadb::install(scratch.path()).unwrap();
    // Two one-node clusters (a joiner would need a state transfer) and a server without
    // Galera.
    let nodes: Vec<Mariadb> = (0..3)
        .map(|i| {
            let b = &t.backends[i];
            let options = if i < 2 {
                Mariadb::galera_options(b.addr)
            } else {
                Vec::new()
            };
            Mariadb::start(
                &b.ns,
                b.addr,
                scratch.path(),
                &template,
                i as u32 + 1,
                &options,
            )
            .unwrap()
        })
        .collect();
    nodes[0].sql("CREATE DATABASE test; CREATE TABLE test.writes (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(64))").unwrap();
    nodes[1].sql("CREATE DATABASE test; CREATE TABLE test.writes (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(64))").unwrap();
    let address = |i: usize| SocketAddrV4::new(t.backends[i].addr, Mariadb::PORT);
    let check_lines = check("galera", MARIADB_PASSWORD);
    let config = dataplane(&t)
        + &service(
            &t,
            "galera-rw",
            MY_RW,
            "role = \"primary\"\n",
            &check_lines,
            &[("g1", address(0)), ("g2", address(1))],
        )
        + &service(
            &t,
            "galera-any",
            MY_RO,
            "",
            &check_lines,
            &[("plain", address(2))],
        );
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    let reason = down_reason(&gerbang, "galera-any", "plain");
    assert_eq!(
        reason,
        "no wsrep status: not a Galera node (is wsrep_on OFF?)"
    );

    const WRITE: &[&str] = &[
        "INSERT INTO test.writes (tag) VALUES ('t')",
        "SELECT @@server_id",
    ];
    t.client
        .run(|| {
            let client = Client::new(t.vip);
            // First available: one member takes the writes, the other stands by.
            gerbang.wait_for_backend_state("galera-rw", "g1", BackendState::Active);
            assert_eq!(
                gerbang.backend_state("galera-rw", "g2"),
                BackendState::Standby
            );
            assert_eq!(client.my(MY_RW, WRITE).unwrap(), "1");
            // Desynced (as a donor is): not a member any more, the other one takes over.
            nodes[0].sql("SET GLOBAL wsrep_desync = ON").unwrap();
            let reason = down_reason(&gerbang, "galera-rw", "g1");
            assert!(
                reason.starts_with("galera node not synced: wsrep_local_state 2 (Donor/Desynced)"),
                "{reason}"
            );
            gerbang.wait_for_backend_state("galera-rw", "g2", BackendState::Active);
            assert_eq!(client.my(MY_RW, WRITE).unwrap(), "2");
        })
        .unwrap();
    gerbang.stop().unwrap();
}

#[test]
fn bad_backends_are_down_with_a_reason() {
    let t = TwoArm::new(4).unwrap();
    let scratch = TempDir::new();
    let addr = |i: usize, port| SocketAddrV4::new(t.backends[i].addr, port);
    let real =
        Postgres::primary(&t.backends[0].ns, t.backends[0].addr, scratch.path(), "pg").unwrap();
    real.psql(&format!(
        "CREATE ROLE gerbang LOGIN PASSWORD '{MONITOR_PASSWORD}'; \
         CREATE TABLE writes (id serial PRIMARY KEY, tag text)"
    ))
    .unwrap();
    let _fakes = [
        FakeServer::start(&t.backends[1].ns, addr(1, 5432), Fake::Silent).unwrap(),
        FakeServer::start(&t.backends[1].ns, addr(1, 3306), Fake::Silent).unwrap(),
        FakeServer::start(&t.backends[3].ns, addr(3, 5432), Fake::AncientPostgres).unwrap(),
        FakeServer::start(&t.backends[3].ns, addr(3, 3306), Fake::AncientMysql).unwrap(),
    ];
    let _web = [
        HttpBackend::start(&t.backends[2].ns, addr(2, 5432), "web").unwrap(),
        HttpBackend::start(&t.backends[2].ns, addr(2, 3306), "web").unwrap(),
    ];
    let pg_check = check("postgres", MONITOR_PASSWORD);
    let pg_backends: Vec<(&str, SocketAddrV4)> = ["real", "silent", "http", "ancient"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| (name, addr(i, 5432)))
        .collect();
    let my_backends: Vec<(&str, SocketAddrV4)> = ["silent", "http", "ancient"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| (name, addr(i + 1, 3306)))
        .collect();
    let config = dataplane(&t)
        + &service(
            &t,
            "pg",
            PG_WRITE,
            "role = \"primary\"\n",
            &pg_check,
            &pg_backends,
        )
        + &service(
            &t,
            "pg-badpass",
            PG_BADPASS,
            "",
            &check("postgres", "wrong"),
            &pg_backends[..1],
        )
        + &service(&t, "my", MY_RW, "", &check("mysql", "x"), &my_backends);
    let gerbang = InProcess::start(&t.lb, &config).unwrap();

    let mut reasons = Vec::new();
    for (service, backend) in [
        ("pg-badpass", "real"),
        ("pg", "silent"),
        ("pg", "http"),
        ("pg", "ancient"),
        ("my", "silent"),
        ("my", "http"),
        ("my", "ancient"),
    ] {
        let reason = down_reason(&gerbang, service, backend);
        eprintln!("{service}/{backend} is DOWN: {reason}");
        reasons.push(reason);
    }
    let expect = |i: usize, text: &str| assert!(reasons[i].contains(text), "{}", reasons[i]);
    expect(
        0,
        "PostgreSQL FATAL 28P01: password authentication failed for user \"gerbang\"",
    );
    expect(1, "timeout after 500ms (logging in)");
    expect(
        3,
        "PostgreSQL FATAL 0A000: unsupported frontend protocol 3.0",
    );
    expect(4, "timeout after 500ms (logging in)");
    expect(
        6,
        "not an answer of a MySQL or MariaDB server this client knows",
    );

    // The database that works is unaffected.
    gerbang.wait_for_backend_state("pg", "real", BackendState::Active);
    for backend in ["silent", "http", "ancient"] {
        assert_eq!(gerbang.backend_state("pg", backend), BackendState::Down);
    }
    t.client
        .run(|| {
            let client = Client::new(t.vip);
            assert_eq!(
                client.pg(PG_WRITE, WRITE_PG).unwrap(),
                t.backends[0].addr.to_string()
            );
        })
        .unwrap();
    gerbang.stop().unwrap();
}

#[test]
fn patroni_style_endpoints() {
    const API: u16 = 8008;
    let t = TwoArm::new(2).unwrap();
    let nodes: Vec<HttpBackend> = t
        .backends
        .iter()
        .map(|b| {
            HttpBackend::start(
                &b.ns,
                SocketAddrV4::new(b.addr, API),
                &format!("node{}", b.index),
            )
            .unwrap()
        })
        .collect();
    nodes[1].set_status(503);
    let check = "  [service.check]\n  type = \"http-role\"\n  replica_path = \"/replica?lag=16MB\"\n  \
                 interval = \"300ms\"\n  fast_interval = \"150ms\"\n  timeout = \"500ms\"\n  \
                 fall = 2\n  rise = 2\n";
    let backends: Vec<(&str, SocketAddrV4)> = vec![
        ("node0", SocketAddrV4::new(t.backends[0].addr, API)),
        ("node1", SocketAddrV4::new(t.backends[1].addr, API)),
    ];
    let config =
        dataplane(&t) + &service(&t, "leader", API, "role = \"primary\"\n", check, &backends);
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    let vip = SocketAddrV4::new(t.vip, API);
    assert_eq!(http_get(&t.client, vip).unwrap().trim(), "node0");
    let reason = down_reason(&gerbang, "leader", "node1");
    assert!(
        reason.starts_with("neither primary nor replica: GET /primary answered 503"),
        "{reason}"
    );

    // The leader changes: node1 answers 200 from now on, node0 503.
    nodes[0].set_status(503);
    nodes[1].set_status(200);
    wait_until(Duration::from_secs(20), || match http_get(&t.client, vip) {
        Ok(body) if body.trim() == "node1" => Ok(()),
        other => bail!("{other:?}"),
    })
    .unwrap();
    assert_eq!(gerbang.backend_state("leader", "node0"), BackendState::Down);
    gerbang.stop().unwrap();
}

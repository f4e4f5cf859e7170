//! Real database servers for the replication tests, each inside a backend's namespace:
//! PostgreSQL 15 (a primary, a streaming replica made with `pg_basebackup -R`; from
//! [`gerbang_testbed::postgres`], re-exported here) and MariaDB
//! 10.11 (binary-log replication with GTID), started fast (no fsync, small buffers) from
//! data directories under a scratch directory, and stopped when dropped. Also fake servers
//! that misbehave in the ways a role check must survive.
//!
//! Servers run as their own users (`setpriv` to `postgres`; `mariadbd --user=mysql`),
//! listen on their namespace's address only, and keep their Unix sockets in their own
//! directories, which is also how the tests administer them (`psql`, `mariadb`).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use gerbang_testbed::{
    ChildGuard, Cmd, Netns, NsThread,
    process::{owned_dir, retry_until, run_program},
};
use nix::sys::signal::Signal;

/// The PostgreSQL servers live in the testbed library, which `cargo xtask bench` shares.
#[allow(unused_imports)] // each test binary uses its own subset
pub use gerbang_testbed::postgres::{PG_PASSWORD, Postgres};

/// MariaDB's replication, monitoring and application users' password.
pub const MARIADB_PASSWORD: &str = "my-secret";
/// How long a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ---- MariaDB ----

/// A MariaDB server listening on `addr:3306` inside a namespace.
pub struct Mariadb {
    server: ChildGuard,
    pub addr: SocketAddrV4,
    pub server_id: u32,
    socket: PathBuf,
    pub log: PathBuf,
}

impl Mariadb {
    pub const PORT: u16 = 3306;

    /// A fresh data directory made by `mariadb-install-db` under `dir`, to copy for each
    /// server (installing once is most of a server's start-up time).
    pub fn install(dir: &Path) -> Result<PathBuf> {
        let data = owned_dir(&dir.join("template"), "mysql", 0o750)?;
        run_program(
            "mariadb-install-db",
            &[
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                "--user=mysql",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            &[],
        )?;
        Ok(data)
    }

    /// Starts a server with a copy of `template`, with the binary log on and `server_id`,
    /// and creates the users the tests use: `repl` (replication), `gerbang` (monitoring)
    /// and `app` (the `test` database), each with [`MARIADB_PASSWORD`], none of them
    /// replicated. `extra` are more `mariadbd` options.
    pub fn start(
        ns: &Netns,
        addr: Ipv4Addr,
        scratch: &Path,
        template: &Path,
        server_id: u32,
        extra: &[String],
    ) -> Result<Mariadb> {
        let home = owned_dir(&scratch.join(format!("mariadb{server_id}")), "mysql", 0o755)?;
        let data = home.join("data");
        run_program(
            "cp",
            &["-a", &template.to_string_lossy(), &data.to_string_lossy()],
            &[],
        )?;
        let socket = home.join("mysqld.sock");
        let log = home.join("server.log");
        let cmd = Cmd::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", home.join("mysqld.pid").display()))
            .arg(format!("--bind-address={addr}"))
            .arg(format!("--port={}", Self::PORT))
            .arg(format!("--server-id={server_id}"))
            .args([
                "--user=mysql",
                "--log-bin=mysql-bin",
                "--binlog-format=ROW",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-use-native-aio=0",
                "--sync-binlog=0",
            ])
            .args(extra)
            .current_dir(&home)
            .log_to(&log);
        let server = ns.spawn(&cmd)?;
        let mariadb = Mariadb {
            server,
            addr: SocketAddrV4::new(addr, Self::PORT),
            server_id,
            socket,
            log,
        };
        retry_until(START_TIMEOUT, || mariadb.sql("SELECT 1")).with_context(|| {
            format!(
                "MariaDB at {addr} did not start: see {}",
                mariadb.log.display()
            )
        })?;
        let pw = MARIADB_PASSWORD;
        mariadb.sql(&format!(
            "SET sql_log_bin = 0; \
             CREATE USER repl@'%' IDENTIFIED BY '{pw}'; \
             GRANT REPLICATION SLAVE ON *.* TO repl@'%'; \
             CREATE USER gerbang@'%' IDENTIFIED BY '{pw}'; \
             GRANT SLAVE MONITOR ON *.* TO gerbang@'%'; \
             CREATE USER app@'%' IDENTIFIED BY '{pw}'; \
             GRANT ALL ON test.* TO app@'%'"
        ))?;
        Ok(mariadb)
    }

    /// The options that make a server the one node of a new Galera cluster at `addr`.
    pub fn galera_options(addr: Ipv4Addr) -> Vec<String> {
        [
            "--wsrep-on=ON",
            "--wsrep-provider=/usr/lib/galera/libgalera_smm.so",
            "--wsrep-cluster-address=gcomm://",
            "--innodb-autoinc-lock-mode=2",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([
            format!("--wsrep-node-address={addr}"),
            format!("--wsrep-provider-options=gmcast.listen_addr=tcp://{addr}:4567"),
        ])
        .collect()
    }

    /// Makes this server a read-only replica of `primary` (GTID, from its current position).
    pub fn replicate_from(&self, primary: &Mariadb) -> Result<()> {
        self.sql(&format!(
            "SET GLOBAL read_only = 1; \
             CHANGE MASTER TO MASTER_HOST = '{}', MASTER_PORT = {}, MASTER_USER = 'repl', \
             MASTER_PASSWORD = '{MARIADB_PASSWORD}', MASTER_USE_GTID = slave_pos, \
             MASTER_CONNECT_RETRY = 1; \
             START SLAVE",
            primary.addr.ip(),
            Self::PORT
        ))?;
        Ok(())
    }

    /// Runs `sql` as root over the server's socket; the rows, tab-separated.
    pub fn sql(&self, sql: &str) -> Result<String> {
        run_program(
            "mariadb",
            &[
                "--no-defaults",
                "-S",
                &self.socket.to_string_lossy(),
                "-u",
                "root",
                "-N",
                "-B",
                "-e",
                sql,
            ],
            &[],
        )
        .map(|out| out.trim().to_owned())
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.server
            .stop_with(Signal::SIGKILL, Duration::from_secs(5));
    }
}

// ---- Servers that are not (working) databases ----

/// What a [`FakeServer`] does with a connection.
#[derive(Clone, Copy, Debug)]
pub enum Fake {
    /// Accepts and never says a word (a hung database).
    Silent,
    /// A PostgreSQL too old for protocol 3, refusing the startup message as PostgreSQL 7.3
    /// would.
    AncientPostgres,
    /// A MySQL greeting of protocol version 9 (MySQL 3.22), which no current client knows.
    AncientMysql,
}

/// A TCP server in a namespace that misbehaves as [`Fake`] says, until dropped.
pub struct FakeServer {
    stop: Arc<AtomicBool>,
    thread: Option<NsThread<()>>,
}

impl FakeServer {
    pub fn start(ns: &Netns, addr: SocketAddrV4, fake: Fake) -> Result<FakeServer> {
        let listener = ns.run(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = ns.spawn_thread("fake-db", move || {
            let mut held = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = answer(&stream, fake);
                        held.push(stream);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        })?;
        Ok(FakeServer {
            stop,
            thread: Some(thread),
        })
    }
}

fn answer(mut stream: &TcpStream, fake: Fake) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    match fake {
        Fake::Silent => Ok(()),
        Fake::AncientPostgres => {
            // The startup message: a length, then that many bytes less the length itself.
            let mut len = [0; 4];
            stream.read_exact(&mut len)?;
            let mut rest = vec![
                0;
                (u32::from_be_bytes(len) as usize)
                    .saturating_sub(4)
                    .min(4096)
            ];
            stream.read_exact(&mut rest)?;
            let mut fields = Vec::new();
            for (code, text) in [
                (b'S', "FATAL"),
                (b'C', "0A000"),
                (
                    b'M',
                    "unsupported frontend protocol 3.0: server supports 1.0 to 2.0",
                ),
            ] {
                fields.push(code);
                fields.extend_from_slice(text.as_bytes());
                fields.push(0);
            }
            fields.push(0);
            let mut message = vec![b'E'];
            message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
            message.extend_from_slice(&fields);
            stream.write_all(&message)
        }
        Fake::AncientMysql => {
            let mut payload = vec![9];
            payload.extend_from_slice(b"3.22.32\0");
            payload.extend_from_slice(&7u32.to_le_bytes());
            payload.extend_from_slice(b"abcdefgh\0");
            let len = payload.len() as u32;
            let mut packet = len.to_le_bytes()[..3].to_vec();
            packet.push(0);
            packet.extend_from_slice(&payload);
            stream.write_all(&packet)
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join_timeout(Duration::from_secs(5));
        }
    }
}

//! Real database servers for the replication tests, each inside a backend's namespace:
//! PostgreSQL 15 (a primary, a streaming replica made with `pg_basebackup -R`) and MariaDB
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
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use gerbang_testbed::{ChildGuard, Cmd, Netns, NsThread};
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, User, chown},
};

/// The PostgreSQL superuser's password, also the replication password.
pub const PG_PASSWORD: &str = "pg-secret";
/// MariaDB's replication, monitoring and application users' password.
pub const MARIADB_PASSWORD: &str = "my-secret";
/// How long a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `program` to completion outside any namespace; stdout on success.
fn run(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<String> {
    let shown = format!("{} {}", program.as_ref().to_string_lossy(), args.join(" "));
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `dir`, created and owned by `user`.
fn owned_dir(dir: &Path, user: &str, mode: u32) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let user = User::from_name(user)?.ok_or_else(|| anyhow!("no user {user}"))?;
    chown(dir, Some(user.uid), Some(user.gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    Ok(dir.to_path_buf())
}

/// Polls `probe` until it succeeds, failing with its last error after `timeout`.
fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Stops a server with `signal` and waits for it, SIGKILLing its group after `grace`.
fn stop_with(server: &mut ChildGuard, signal: Signal, grace: Duration) {
    if matches!(server.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = kill(Pid::from_raw(server.pid() as i32), signal);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(server.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = server.terminate();
}

// ---- PostgreSQL ----

/// A program of the newest installed PostgreSQL (`/usr/lib/postgresql/N/bin`, Debian's
/// layout), else from `PATH`.
fn pg_bin(name: &str) -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            Some((
                entry.file_name().to_str()?.parse::<u32>().ok()?,
                entry.path(),
            ))
        })
        .max();
    match newest {
        Some((_, dir)) => dir.join("bin").join(name),
        None => PathBuf::from(name),
    }
}

/// A PostgreSQL server listening on `addr:5432` inside a namespace.
pub struct Postgres {
    server: ChildGuard,
    pub addr: SocketAddrV4,
    socket_dir: PathBuf,
    pub log: PathBuf,
}

impl Postgres {
    pub const PORT: u16 = 5432;

    /// A new primary: `initdb` (superuser `postgres` with [`PG_PASSWORD`], password logins
    /// from the test network, trust on its socket), then started.
    pub fn primary(ns: &Netns, addr: Ipv4Addr, scratch: &Path, name: &str) -> Result<Postgres> {
        let home = owned_dir(&scratch.join(name), "postgres", 0o755)?;
        let data = home.join("data");
        let pwfile = home.join("pwfile");
        std::fs::write(&pwfile, PG_PASSWORD)?;
        owned_file(&pwfile, "postgres")?;
        let initdb = pg_bin("initdb");
        run(
            "setpriv",
            &[
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
                &initdb.to_string_lossy(),
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            &[],
        )?;
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))?;
        writeln!(hba, "host all all 10.200.0.0/16 scram-sha-256")?;
        writeln!(hba, "host replication all 10.200.0.0/16 scram-sha-256")?;
        Self::start(ns, addr, &home, &[])
    }

    /// A streaming replica of `primary`: `pg_basebackup -R` from inside `ns`, then started.
    pub fn replica(
        ns: &Netns,
        addr: Ipv4Addr,
        scratch: &Path,
        name: &str,
        primary: &Postgres,
    ) -> Result<Postgres> {
        let home = owned_dir(&scratch.join(name), "postgres", 0o755)?;
        let data = home.join("data");
        let basebackup = pg_bin("pg_basebackup");
        let password = format!("PGPASSWORD={PG_PASSWORD}");
        ns.exec(
            "env",
            [
                password.as_str(),
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
                &basebackup.to_string_lossy(),
                "-h",
                &primary.addr.ip().to_string(),
                "-U",
                "postgres",
                "-D",
                &data.to_string_lossy(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        )
        .context("pg_basebackup")?;
        let conninfo = format!(
            "primary_conninfo=host={} port={} user=postgres password={PG_PASSWORD} \
             application_name={name}",
            primary.addr.ip(),
            Self::PORT
        );
        Self::start(ns, addr, &home, &[&conninfo])
    }

    fn start(ns: &Netns, addr: Ipv4Addr, home: &Path, extra: &[&str]) -> Result<Postgres> {
        let socket_dir = owned_dir(&home.join("run"), "postgres", 0o755)?;
        let log = home.join("server.log");
        let postgres = pg_bin("postgres");
        let mut cmd = Cmd::new("setpriv")
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(&postgres)
            .arg("-D")
            .arg(home.join("data"))
            .current_dir(home)
            .log_to(&log);
        for setting in [
            format!("listen_addresses={addr}"),
            format!("port={}", Self::PORT),
            format!("unix_socket_directories={}", socket_dir.display()),
            "fsync=off".into(),
            "synchronous_commit=off".into(),
            "full_page_writes=off".into(),
            "shared_buffers=16MB".into(),
            "max_connections=40".into(),
            "wal_receiver_status_interval=1s".into(),
            "logging_collector=off".into(),
        ]
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        {
            cmd = cmd.arg("-c").arg(setting);
        }
        let server = ns.spawn(&cmd)?;
        let postgres = Postgres {
            server,
            addr: SocketAddrV4::new(addr, Self::PORT),
            socket_dir,
            log,
        };
        poll(START_TIMEOUT, || postgres.psql("SELECT 1")).with_context(|| {
            format!(
                "PostgreSQL at {addr} did not start: see {}",
                postgres.log.display()
            )
        })?;
        Ok(postgres)
    }

    /// Runs `sql` as the superuser over the server's socket; the rows, `|`-separated.
    pub fn psql(&self, sql: &str) -> Result<String> {
        run(
            pg_bin("psql"),
            &[
                "-h",
                &self.socket_dir.to_string_lossy(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            &[],
        )
        .map(|out| out.trim().to_owned())
    }

    /// Fast shutdown (`pg_ctl stop -m fast`), waiting for it.
    pub fn stop(&mut self) {
        stop_with(&mut self.server, Signal::SIGINT, Duration::from_secs(10));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown: nothing is kept.
        stop_with(&mut self.server, Signal::SIGQUIT, Duration::from_secs(5));
    }
}

fn owned_file(path: &Path, user: &str) -> Result<()> {
    let user = User::from_name(user)?.ok_or_else(|| anyhow!("no user {user}"))?;
    chown(path, Some(user.uid), Some(user.gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

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
        run(
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
        run(
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
        poll(START_TIMEOUT, || mariadb.sql("SELECT 1")).with_context(|| {
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
        run(
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
        stop_with(&mut self.server, Signal::SIGKILL, Duration::from_secs(5));
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

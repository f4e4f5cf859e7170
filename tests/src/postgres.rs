//! Real PostgreSQL servers inside namespaces, for the replication tests and `cargo xtask
//! bench`: a primary made by `initdb`, and streaming replicas made from it with
//! `pg_basebackup -R`, started fast (no fsync, small buffers) from data directories under
//! a scratch directory, and stopped when dropped.
//!
//! Servers run as the `postgres` user (`setpriv`), listen on their namespace's address
//! only, and keep their Unix sockets in their own directories, which is also how they are
//! administered ([`Postgres::psql`], run from the caller's namespace).
//!
//! Requires the `postgres` user and a PostgreSQL installation (Debian's layout,
//! `/usr/lib/postgresql/N/bin`, the newest version is used; else the programs on `PATH`).

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;

use crate::process::{owned_dir, owned_file, retry_until, run_program};
use crate::{ChildGuard, Cmd, Netns};

/// The PostgreSQL superuser's password, also the replication password.
pub const PG_PASSWORD: &str = "pg-secret";
/// How long a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A program of the newest installed PostgreSQL (`/usr/lib/postgresql/N/bin`, Debian's
/// layout), else from `PATH`.
pub fn pg_bin(name: &str) -> PathBuf {
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
    home: PathBuf,
    socket_dir: PathBuf,
    pub log: PathBuf,
}

impl Postgres {
    pub const PORT: u16 = 5432;

    /// A new primary in `scratch/name`: `initdb` (superuser `postgres` with
    /// [`PG_PASSWORD`], password logins and replication from 10.200.0.0/16, trust on its
    /// socket), then started.
    pub fn primary(ns: &Netns, addr: Ipv4Addr, scratch: &Path, name: &str) -> Result<Postgres> {
        let home = owned_dir(&scratch.join(name), "postgres", 0o755)?;
        let data = home.join("data");
        let pwfile = home.join("pwfile");
        std::fs::write(&pwfile, PG_PASSWORD)?;
        owned_file(&pwfile, "postgres")?;
        let initdb = pg_bin("initdb");
        run_program(
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

    /// A streaming replica of `primary` in `scratch/name` (a new directory):
    /// `pg_basebackup -R` from inside `ns`, then started.
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
            home: home.to_path_buf(),
            socket_dir,
            log,
        };
        retry_until(START_TIMEOUT, || postgres.psql("SELECT 1")).with_context(|| {
            format!(
                "PostgreSQL at {addr} did not start: see {}",
                postgres.log.display()
            )
        })?;
        Ok(postgres)
    }

    /// The server's directory: its data directory, socket directory and log.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Runs `sql` as the superuser over the server's socket; the rows, `|`-separated.
    pub fn psql(&self, sql: &str) -> Result<String> {
        run_program(
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

    /// `kill -9` of the postmaster, waiting for it to be gone (its backends notice and
    /// exit on their own).
    pub fn kill(&mut self) {
        self.server
            .stop_with(Signal::SIGKILL, Duration::from_secs(5));
    }

    /// Fast shutdown (`pg_ctl stop -m fast`), waiting for it.
    pub fn stop(&mut self) {
        self.server
            .stop_with(Signal::SIGINT, Duration::from_secs(10));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown: nothing is kept.
        self.server
            .stop_with(Signal::SIGQUIT, Duration::from_secs(5));
    }
}

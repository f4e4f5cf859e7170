//! The write service following a PostgreSQL promotion (the replication issue's targets).
//!
//! Two backends of a two-arm topology run PostgreSQL: a primary and its streaming replica
//! ([`gerbang_testbed::postgres`]). gerbang serves them on VIP:6432 as a `role =
//! "primary"` service with a `postgres` role check (every 500 ms, rise 2). Client threads
//! write through the VIP all the while, each on its own persistent connection (reconnecting
//! after an error, as a connection pool does), a write every 10 ms per thread; every write
//! is `INSERT ... RETURNING inet_server_addr()`, so its answer names the server that took it.
//!
//! A run promotes the replica (`pg_promote(wait => false)`, the operator's `pg_ctl
//! promote`) and at once stops the old primary (fast shutdown, `pg_ctl stop -m fast`,
//! waited for). Then, the writes still going, the old primary's host is rebuilt as a
//! replica of the new primary (`pg_basebackup`), the demotion of PostgreSQL, and left long
//! enough for gerbang's checks to see it back. The figures:
//!
//! - the time from the promotion to the first write answered by the new primary (target:
//!   `interval × rise + 1 s`), and the writes that failed meanwhile;
//! - the writes that reached the old primary's host once it had stopped being primary
//!   (its shutdown complete): answered by it, or refused by it as a read-only standby
//!   (target: none). Only the write service can take a write there;
//! - for the record, the writes the old primary took between the promotion and the end of
//!   its shutdown: both servers were primaries then (PostgreSQL commits what a session had
//!   sent before its shutdown reached it), and no check can have told yet.
//!
//! The next run promotes that replica back, so every run starts from the same layout.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use gerbang_testbed::{
    ChildGuard, Cmd, NsThread, TwoArm,
    postgres::{PG_PASSWORD, Postgres, pg_bin},
};
use tokio_postgres::{NoTls, SimpleQueryMessage, error::SqlState};

use super::{
    Bench, checkpoint,
    peers::{Checks, Job, gerbang_conf},
    results::{Metric, Results, Sys},
};

/// The write service's port, as in HAProxy's PostgreSQL layouts.
const PG_WRITE: u16 = 6432;
/// The role check: what the target is computed from.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);
pub const RISE: u32 = 2;
const FALL: u32 = 3;
/// The check's own login.
const MONITOR_PASSWORD: &str = "monitor-secret";
/// Writer threads, and how often each writes.
const WRITERS: usize = 2;
const PACE: Duration = Duration::from_millis(10);
/// How long one write (connecting included) may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The replication issue's target: the write service accepts writes on the new primary
/// within `interval × rise + 1 s` of the promotion.
pub fn target() -> Duration {
    CHECK_INTERVAL * RISE + Duration::from_secs(1)
}

/// Measures the promotion for gerbang XDP native and userspace, `failover_runs` times
/// each. A failure is reported in the results, not fatal to the benchmark.
pub fn run(bench: &Bench<'_>, results: &mut Results) -> Result<()> {
    let systems = [Sys::XdpNative, Sys::Userspace];
    if let Some(reason) = missing_postgres() {
        println!("bench: PostgreSQL promotion: not run: {reason}");
        for sys in systems {
            results.not_run(Some(Metric::PgPromotion), sys, reason.clone());
        }
        return Ok(());
    }
    let systems: Vec<Sys> = systems
        .into_iter()
        .filter(|&sys| match results.system_not_run(sys) {
            Some(reason) => {
                let reason = reason.to_owned();
                results.not_run(Some(Metric::PgPromotion), sys, reason);
                false
            }
            None => true,
        })
        .collect();
    if systems.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    if let Err(err) = measure(bench, &systems, results) {
        checkpoint()?;
        println!("bench: PostgreSQL promotion: failed: {err:#}");
        results
            .failures
            .push(format!("PostgreSQL promotion: {err:#}"));
        let first = format!("{err:#}").lines().next().unwrap_or("").to_owned();
        for sys in systems {
            if results.figure(Metric::PgPromotion, sys).is_none() {
                results.not_run(Some(Metric::PgPromotion), sys, format!("failed: {first}"));
            }
        }
    }
    println!(
        "bench: PostgreSQL promotion scenario took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Why PostgreSQL cannot run here, if it cannot.
fn missing_postgres() -> Option<String> {
    for program in ["initdb", "postgres", "pg_basebackup", "psql"] {
        if !pg_bin(program).is_file() {
            return Some(format!(
                "PostgreSQL's {program} is not installed (`cargo xtask setup` installs \
                 postgresql)"
            ));
        }
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(_)) => None,
        _ => Some("no `postgres` user to run PostgreSQL as".into()),
    }
}

/// The two database hosts: which one is the primary, and the servers running on them.
struct Cluster<'t> {
    t: &'t TwoArm,
    dir: &'t Path,
    servers: [Option<Postgres>; 2],
    primary: usize,
    /// Servers made so far, for unique directory names.
    made: usize,
}

impl Cluster<'_> {
    fn addr(&self, host: usize) -> Ipv4Addr {
        self.t.backends[host].addr
    }

    fn primary(&self) -> Result<&Postgres> {
        self.servers[self.primary]
            .as_ref()
            .ok_or_else(|| anyhow!("no primary running"))
    }

    /// Makes the replica's host a streaming replica of the primary if it runs nothing,
    /// and waits until it streams.
    fn ensure_replica(&mut self) -> Result<()> {
        let host = 1 - self.primary;
        if self.servers[host].is_none() {
            self.made += 1;
            let name = format!("pg{host}-{}", self.made);
            let replica = Postgres::replica(
                &self.t.backends[host].ns,
                self.addr(host),
                self.dir,
                &name,
                self.primary()?,
            )?;
            self.servers[host] = Some(replica);
        }
        let primary = self.primary()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let streaming = primary
                .psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")?;
            if streaming == "1" {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the replica is not streaming from the primary ({streaming} streaming)"
            );
            checkpoint()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn measure(bench: &Bench<'_>, systems: &[Sys], results: &mut Results) -> Result<()> {
    let t = TwoArm::new(2)?;
    let dir = bench.scratch.join("postgres");
    fs::create_dir_all(&dir)?;
    let first = Postgres::primary(&t.backends[0].ns, t.backends[0].addr, &dir, "pg0-0")?;
    first.psql(&format!(
        "CREATE ROLE gerbang LOGIN PASSWORD '{MONITOR_PASSWORD}'; \
         CREATE TABLE writes (id bigserial PRIMARY KEY, writer int, \
         at timestamptz DEFAULT clock_timestamp())"
    ))?;
    let mut cluster = Cluster {
        t: &t,
        dir: &dir,
        servers: [Some(first), None],
        primary: 0,
        made: 0,
    };
    for &sys in systems {
        checkpoint()?;
        let (mut balancer, log) = start_gerbang(bench, &t, sys)?;
        for run in 1..=bench.params.failover_runs {
            checkpoint()?;
            cluster.ensure_replica()?;
            let outcome = promotion_run(&mut cluster, &mut balancer, &log)
                .with_context(|| format!("{}, run {run}", sys.label()))?;
            println!(
                "bench: PostgreSQL promotion, {} run {run}: first write on the new primary \
                 {:.0} ms after the promotion ({} writes failed meanwhile); {} writes reached \
                 the old primary once stopped, or back as a replica ({} between the promotion \
                 and its stop)",
                sys.label(),
                outcome.follow.as_secs_f64() * 1e3,
                outcome.refused,
                outcome.old_after_stop,
                outcome.split,
            );
            results.add(Metric::PgPromotion, sys, outcome.follow.as_secs_f64());
            results.add(Metric::PgRefused, sys, outcome.refused as f64);
            results.add(Metric::PgOldWrites, sys, outcome.old_after_stop as f64);
            results.add(Metric::PgSplitWrites, sys, outcome.split as f64);
        }
        balancer.terminate()?;
    }
    Ok(())
}

/// gerbang with the write service over both hosts, and its log.
fn start_gerbang(bench: &Bench<'_>, t: &TwoArm, sys: Sys) -> Result<(ChildGuard, PathBuf)> {
    let mode = if sys == Sys::Userspace {
        "userspace"
    } else {
        "native"
    };
    let dir = &bench.scratch;
    let job = Job {
        vip: t.vip,
        snat: t.snat,
        backends: &[],
        udp_backends: &[],
    };
    let interfaces = [t.lb_client_if.as_str(), t.lb_backend_if.as_str()];
    let tag = format!("pg-{mode}");
    let mut text = gerbang_conf(&job, &interfaces, mode, Checks::Off, dir, &tag);
    text += &format!(
        "\n[[service]]\nname = \"pg-write\"\nlisten = \"{}:{PG_WRITE}\"\nrole = \"primary\"\n\
         \x20 [service.check]\n  type = \"postgres\"\n  user = \"gerbang\"\n  \
         password = \"{MONITOR_PASSWORD}\"\n  interval = \"{}ms\"\n  timeout = \"{}ms\"\n  \
         fall = {FALL}\n  rise = {RISE}\n",
        t.vip,
        CHECK_INTERVAL.as_millis(),
        CHECK_INTERVAL.as_millis() * 9 / 10,
    );
    for (i, backend) in t.backends.iter().enumerate() {
        text += &format!(
            "  [[service.backend]]\n  name = \"pg{i}\"\n  address = \"{}\"\n",
            SocketAddrV4::new(backend.addr, Postgres::PORT)
        );
    }
    let conf = dir.join(format!("gerbang-{tag}.toml"));
    fs::write(&conf, text)?;
    let log = dir.join(format!("gerbang-{tag}.log"));
    let cmd = Cmd::new(&bench.gerbang)
        .args(["run", "--config"])
        .arg(&conf)
        .log_to(&log);
    Ok((t.lb.spawn(&cmd)?, log))
}

/// How a write ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Committed by the server at this address.
    By(Ipv4Addr),
    /// Refused by a read-only server (a standby): it reached a server that is not the
    /// primary.
    ReadOnly,
    /// Failed otherwise: refused by the balancer, connection cut, timed out.
    Failed,
}

/// One write: when it started and ended, and how.
#[derive(Clone, Copy)]
struct Write {
    start: Instant,
    end: Instant,
    answer: Answer,
}

/// Client threads writing through the write service until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<Write>>>,
    threads: Vec<NsThread<()>>,
}

impl Writers {
    fn start(t: &TwoArm) -> Result<Writers> {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let origin = Instant::now();
        let vip = t.vip;
        let threads = (0..WRITERS)
            .map(|k| {
                let (stop, writes) = (stop.clone(), writes.clone());
                t.client.spawn_thread(&format!("pg-writer-{k}"), move || {
                    let first = origin + PACE * k as u32 / WRITERS as u32;
                    if let Err(err) = write_loop(vip, k, first, &stop, &writes) {
                        println!("bench: PostgreSQL writer {k}: {err:#}");
                    }
                })
            })
            .collect::<Result<_>>()?;
        Ok(Writers {
            stop,
            writes,
            threads,
        })
    }

    fn writes(&self) -> Vec<Write> {
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until a write that started after `since` was committed by `server`; the end
    /// of the first.
    fn wait_for(&self, server: Ipv4Addr, since: Instant, what: &str) -> Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let first = self
                .writes()
                .iter()
                .filter(|w| w.answer == Answer::By(server) && w.start >= since)
                .map(|w| w.end)
                .min();
            if let Some(first) = first {
                return Ok(first);
            }
            ensure!(
                Instant::now() < deadline,
                "no write reached {what} {server} within 20 s"
            );
            checkpoint()?;
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(self) -> Result<Vec<Write>> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join_timeout(Duration::from_secs(5))?;
        }
        let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        Ok(writes.clone())
    }
}

/// One writer: a persistent connection through the VIP, a write every [`PACE`], a new
/// connection after any error.
fn write_loop(
    vip: Ipv4Addr,
    writer: usize,
    first: Instant,
    stop: &AtomicBool,
    writes: &Mutex<Vec<Write>>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sql =
        format!("INSERT INTO writes (writer) VALUES ({writer}) RETURNING host(inet_server_addr())");
    runtime.block_on(async {
        let mut client: Option<tokio_postgres::Client> = None;
        let mut next = first;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep_until(next.into()).await;
            next = (next + PACE).max(Instant::now());
            let start = Instant::now();
            let answer = tokio::time::timeout(WRITE_TIMEOUT, async {
                if client.is_none() {
                    client = Some(connect(vip).await?);
                }
                let Some(c) = client.as_ref() else {
                    return Err(None);
                };
                let rows = c.simple_query(&sql).await?;
                rows.iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(row) => row.get(0)?.parse::<Ipv4Addr>().ok(),
                        _ => None,
                    })
                    .ok_or(None)
            })
            .await;
            let answer = match answer {
                Ok(Ok(addr)) => Answer::By(addr),
                Ok(Err(Some(err))) if err.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => {
                    client = None;
                    Answer::ReadOnly
                }
                _ => {
                    client = None;
                    Answer::Failed
                }
            };
            let write = Write {
                start,
                end: Instant::now(),
                answer,
            };
            writes.lock().unwrap_or_else(|e| e.into_inner()).push(write);
        }
        Ok(())
    })
}

/// A connection to the write service as the superuser; its connection task runs on the
/// current runtime until the client is dropped.
async fn connect(vip: Ipv4Addr) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .hostaddr(IpAddr::V4(vip))
        .port(PG_WRITE)
        .user("postgres")
        .password(PG_PASSWORD)
        .dbname("postgres")
        .connect_timeout(WRITE_TIMEOUT);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// What one promotion showed.
struct Outcome {
    follow: Duration,
    refused: usize,
    old_after_stop: usize,
    split: usize,
}

/// Writes through gerbang until they land on the primary, promotes the replica, stops the
/// old primary and times the first write on the new one; then rebuilds the old primary's
/// host as a replica of the new one, still writing. The hosts have swapped roles after.
fn promotion_run(
    cluster: &mut Cluster<'_>,
    balancer: &mut ChildGuard,
    log: &Path,
) -> Result<Outcome> {
    let (old_host, new_host) = (cluster.primary, 1 - cluster.primary);
    let (old_addr, new_addr) = (cluster.addr(old_host), cluster.addr(new_host));
    let writers = Writers::start(cluster.t)?;
    let result = (|| {
        // The write service on the primary (gerbang may have just started), then long
        // enough for its checks to have seen the replica too.
        let started = Instant::now();
        if let Err(err) = writers.wait_for(old_addr, started, "the primary") {
            if let Some(status) = balancer.try_wait()? {
                bail!(
                    "gerbang exited ({status}):\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            return Err(err);
        }
        std::thread::sleep(CHECK_INTERVAL * (RISE + 1));
        let before = writers.writes();
        ensure!(
            before
                .iter()
                .rev()
                .take(WRITERS * 10)
                .all(|w| w.answer == Answer::By(old_addr)),
            "writes failed or went elsewhere before the promotion"
        );

        let replica = cluster.servers[new_host]
            .as_ref()
            .ok_or_else(|| anyhow!("no replica"))?;
        let promoted = Instant::now();
        replica.psql("SELECT pg_promote(wait => false)")?;
        let old = cluster.servers[old_host]
            .as_mut()
            .ok_or_else(|| anyhow!("no old primary"))?;
        old.stop();
        let down = Instant::now();
        let first = writers.wait_for(new_addr, promoted, "the new primary")?;

        // The demotion: the old primary's host comes back as a replica, and stays while
        // gerbang's checks see it up.
        if let Some(old) = cluster.servers[old_host].take() {
            let home = old.home().to_owned();
            drop(old);
            let _ = fs::remove_dir_all(home);
        }
        cluster.primary = new_host;
        cluster.ensure_replica()?;
        std::thread::sleep(CHECK_INTERVAL * (RISE + 1));
        Ok((promoted, down, first))
    })();
    let writes = writers.finish()?;
    let (promoted, down, first) = result?;
    let stray = writes
        .iter()
        .filter(|w| matches!(w.answer, Answer::By(s) if s != old_addr && s != new_addr))
        .count();
    ensure!(stray == 0, "{stray} writes answered by unknown servers");
    let reached_old = |w: &&Write| match w.answer {
        Answer::By(s) => s == old_addr,
        Answer::ReadOnly => true,
        Answer::Failed => false,
    };
    Ok(Outcome {
        follow: first - promoted,
        refused: writes
            .iter()
            .filter(|w| !matches!(w.answer, Answer::By(_)))
            .filter(|w| w.end >= promoted && w.start <= first)
            .count(),
        old_after_stop: writes
            .iter()
            .filter(reached_old)
            .filter(|w| w.start >= down)
            .count(),
        split: writes
            .iter()
            .filter(reached_old)
            .filter(|w| w.end >= promoted && w.start < down)
            .count(),
    })
}

//! MySQL and MariaDB: the primary is the node with `read_only` off (what MySQL Router,
//! ProxySQL and orchestrator go by); a replica's lag is `Seconds_Behind_Master` while both
//! replication threads run. Galera nodes are members while synced in the primary
//! component.
//!
//! The replica status comes from `SHOW REPLICA STATUS` (MySQL 8.0.22+, MariaDB 10.5.1+),
//! and from `SHOW SLAVE STATUS` on servers that do not know it. Only the default
//! replication connection is read (MariaDB's multi-source `SHOW ALL SLAVES STATUS` is not).
//! The check's user needs `REPLICATION CLIENT` (MySQL) or `SLAVE MONITOR` (MariaDB 10.5+).

use std::{net::SocketAddrV4, time::Duration};

use mysql_async::{Conn, OptsBuilder, Row, Value, prelude::Queryable};

use super::{Phase, Role, RoleReport, lag_words, shown};
use crate::{config::DbCheck, health::probe::io_reason};

/// MySQL's and MariaDB's code for a syntax error.
const ER_PARSE_ERROR: u16 = 1064;
/// Galera's `wsrep_local_state` while the node is in sync with the cluster.
const SYNCED: &str = "4";

/// What the server answered, as text (NULL: `None`).
#[derive(Debug, Default)]
pub(super) struct Answers {
    pub read_only: Option<String>,
    /// `wsrep_local_state` and `wsrep_cluster_status`, for Galera.
    pub wsrep_state: Option<String>,
    pub wsrep_cluster: Option<String>,
    /// `None`: the server is not a replica (no replica status row).
    pub replica: Option<ReplicaStatus>,
}

#[derive(Debug, Default)]
pub(super) struct ReplicaStatus {
    pub io_running: Option<String>,
    pub sql_running: Option<String>,
    pub seconds_behind: Option<String>,
}

pub(super) async fn exchange(
    target: SocketAddrV4,
    check: &DbCheck,
    galera: bool,
    phase: &mut Phase,
) -> Result<(String, RoleReport), String> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(target.ip().to_string())
        .tcp_port(target.port())
        .user(Some(check.user.as_str()))
        .pass(check.password.as_ref().map(|p| p.expose()))
        .db_name(check.database.as_deref())
        // Never switch to the server's Unix socket, and ask for no settings at login: a
        // check is one short exchange.
        .prefer_socket(false)
        .max_allowed_packet(Some(1024 * 1024))
        .wait_timeout(Some(60))
        .stmt_cache_size(0);
    *phase = Phase::LoggingIn;
    let mut conn = Conn::new(opts).await.map_err(|err| reason(&err))?;
    *phase = Phase::Querying;
    let answers = query(&mut conn, galera).await;
    // Leave cleanly (COM_QUIT), so the server does not count an aborted connection.
    let _ = conn.disconnect().await;
    judge(&answers?, galera, check.max_lag)
}

async fn query(conn: &mut Conn, galera: bool) -> Result<Answers, String> {
    let rows: Vec<Row> = conn
        .query("SELECT @@global.read_only")
        .await
        .map_err(|err| reason(&err))?;
    let mut answers = Answers {
        read_only: rows.first().and_then(|row| text(row.as_ref(0))),
        ..Answers::default()
    };
    if galera {
        let rows: Vec<Row> = conn
            .query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('wsrep_local_state', 'wsrep_cluster_status')",
            )
            .await
            .map_err(|err| reason(&err))?;
        for row in &rows {
            let value = text(row.as_ref(1));
            match text(row.as_ref(0))
                .map(|name| name.to_ascii_lowercase())
                .as_deref()
            {
                Some("wsrep_local_state") => answers.wsrep_state = value,
                Some("wsrep_cluster_status") => answers.wsrep_cluster = value,
                _ => {}
            }
        }
    }
    // A primary's replica status does not matter; a read-only node's lag does.
    if answers
        .read_only
        .as_deref()
        .is_some_and(|value| !is_off(value))
    {
        let rows = match conn.query::<Row, _>("SHOW REPLICA STATUS").await {
            Err(mysql_async::Error::Server(err)) if err.code == ER_PARSE_ERROR => {
                conn.query::<Row, _>("SHOW SLAVE STATUS").await
            }
            other => other,
        }
        .map_err(|err| reason(&err))?;
        answers.replica = rows.first().map(replica_status);
    }
    Ok(answers)
}

/// The columns the role needs, under MySQL's old and new names.
fn replica_status(row: &Row) -> ReplicaStatus {
    let column = |names: [&str; 2]| {
        let index = row
            .columns_ref()
            .iter()
            .position(|column| names.iter().any(|name| column.name_str() == *name))?;
        text(row.as_ref(index))
    };
    ReplicaStatus {
        io_running: column(["Slave_IO_Running", "Replica_IO_Running"]),
        sql_running: column(["Slave_SQL_Running", "Replica_SQL_Running"]),
        seconds_behind: column(["Seconds_Behind_Master", "Seconds_Behind_Source"]),
    }
}

/// A value of the text protocol as text; NULL and absent are `None`.
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::NULL => None,
        Value::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::Int(n) => Some(n.to_string()),
        Value::UInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn is_off(value: &str) -> bool {
    value == "0" || value.eq_ignore_ascii_case("OFF")
}

fn is_on(value: &str) -> bool {
    value == "1" || value.eq_ignore_ascii_case("ON")
}

/// The role from the server's answers.
pub(super) fn judge(
    answers: &Answers,
    galera: bool,
    max_lag: Duration,
) -> Result<(String, RoleReport), String> {
    let read_only = match answers.read_only.as_deref() {
        Some(value) if is_off(value) => false,
        Some(value) if is_on(value) => true,
        other => {
            return Err(format!(
                "unexpected answer for @@global.read_only: {}",
                other.map_or("NULL".to_owned(), |text| format!("{:?}", shown(text)))
            ));
        }
    };
    if galera {
        let state = answers.wsrep_state.as_deref();
        let cluster = answers.wsrep_cluster.as_deref();
        match (state, cluster) {
            (None, _) | (_, None) => {
                return Err("no wsrep status: not a Galera node (is wsrep_on OFF?)".to_owned());
            }
            (Some(state), _) if state != SYNCED => {
                return Err(format!(
                    "galera node not synced: wsrep_local_state {} ({}), not 4 (Synced)",
                    shown(state),
                    wsrep_state_name(state)
                ));
            }
            (_, Some(cluster)) if !cluster.eq_ignore_ascii_case("Primary") => {
                return Err(format!(
                    "galera node not in the primary component: wsrep_cluster_status {}",
                    shown(cluster)
                ));
            }
            _ => {}
        }
        // Galera replicates synchronously: a synced node is current.
        return Ok(if read_only {
            let report = RoleReport::replica(Some(Duration::ZERO), max_lag);
            (
                "galera node synced, read_only ON: a reader".to_owned(),
                report,
            )
        } else {
            let report = RoleReport::writer(Role::Member);
            ("galera node synced, writable".to_owned(), report)
        });
    }
    if !read_only {
        return Ok((
            "primary: read_only OFF".to_owned(),
            RoleReport::writer(Role::Primary),
        ));
    }
    let Some(replica) = &answers.replica else {
        let report = RoleReport::replica(None, max_lag);
        return Ok(("replica: read_only ON, not replicating".to_owned(), report));
    };
    let running = |state: &Option<String>| state.as_deref() == Some("Yes");
    if !running(&replica.io_running) || !running(&replica.sql_running) {
        let report = RoleReport::replica(None, max_lag);
        let state = |s: &Option<String>| s.as_deref().map_or("NULL".to_owned(), shown);
        let detail = format!(
            "replica: read_only ON, replication not running (IO thread {}, SQL thread {})",
            state(&replica.io_running),
            state(&replica.sql_running)
        );
        return Ok((detail, report));
    }
    let lag = replica
        .seconds_behind
        .as_deref()
        .and_then(|text| text.parse::<u64>().ok())
        .map(Duration::from_secs);
    let report = RoleReport::replica(lag, max_lag);
    let detail = format!("replica: read_only ON, {}", lag_words(&report, max_lag));
    Ok((detail, report))
}

/// Galera's names for `wsrep_local_state`.
fn wsrep_state_name(state: &str) -> &'static str {
    match state {
        "1" => "Joining",
        "2" => "Donor/Desynced",
        "3" => "Joined",
        "4" => "Synced",
        _ => "unknown",
    }
}

/// A client error as an operator reads it: the server's own message where it sent one.
fn reason(err: &mysql_async::Error) -> String {
    match err {
        mysql_async::Error::Server(err) => {
            format!("MySQL error {}: {}", err.code, shown(&err.message))
        }
        // The client's words for a greeting or packet it cannot parse (short ones end
        // "early").
        mysql_async::Error::Io(mysql_async::IoError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            format!(
                "not an answer of a MySQL or MariaDB server this client knows: {}",
                shown(&io.to_string())
            )
        }
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => io_reason(io),
        other => shown(&other.to_string()),
    }
}

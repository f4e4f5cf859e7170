//! PostgreSQL: primary or standby, and how far a standby's replay is behind.
//!
//! One connection per probe, one simple-protocol query (a single round trip), then a clean
//! `Terminate`. The lag is 0 while the standby has replayed all the WAL it received (an idle
//! primary sends none, and the age of the last replayed transaction would otherwise grow
//! without anything being behind); else it is the age of the last replayed transaction.
//! A standby whose WAL receiver has stopped shows lag 0 once it has replayed what it had:
//! PostgreSQL cannot tell it is behind a primary it no longer hears from.

use std::{net::SocketAddrV4, time::Duration};

use tokio::net::TcpStream;
use tokio_postgres::{NoTls, SimpleQueryMessage, error::SqlState};

use super::{Phase, RoleReport, lag_words, shown};
use crate::{
    config::DbCheck,
    health::{db::Role, probe::io_reason},
};

/// Role, lag in seconds (NULL: unknown), replay paused, and the server's version number.
/// The functions exist from PostgreSQL 10 on; any user may call them.
const QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN NOT pg_is_in_recovery() THEN NULL \
          WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
          ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END, \
     CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END, \
     current_setting('server_version_num')";

/// The oldest PostgreSQL whose answer the query understands.
const MIN_VERSION: u32 = 10_00_00;

pub(super) async fn exchange(
    target: SocketAddrV4,
    check: &DbCheck,
    phase: &mut Phase,
) -> Result<(String, RoleReport), String> {
    *phase = Phase::Connecting;
    let stream = TcpStream::connect(target)
        .await
        .map_err(|err| io_reason(&err))?;
    let mut config = tokio_postgres::Config::new();
    config.user(&check.user).application_name("gerbang-check");
    if let Some(password) = &check.password {
        config.password(password.expose());
    }
    if let Some(database) = &check.database {
        config.dbname(database);
    }
    *phase = Phase::LoggingIn;
    let (client, connection) = config
        .connect_raw(stream, NoTls)
        .await
        .map_err(|err| reason(&err))?;
    *phase = Phase::Querying;
    // The connection is driven here rather than spawned, so that nothing outlives the
    // probe's timeout.
    let mut connection = std::pin::pin!(connection);
    let messages = tokio::select! {
        messages = client.simple_query(QUERY) => messages.map_err(|err| reason(&err))?,
        ended = &mut connection => {
            return Err(match ended {
                Ok(()) => "the server closed the connection".to_owned(),
                Err(err) => reason(&err),
            });
        }
    };
    // Dropping the client makes the connection send Terminate and end.
    drop(client);
    let _ = connection.await;

    let row = messages
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or("no answer to the role query")?;
    let column = |index: usize| row.try_get(index).ok().flatten();
    judge(column(0), column(1), column(2), column(3), check.max_lag)
}

/// The role from the query's answer, as text: `"t"`/`"f"`, seconds, `"t"`/`"f"`, version.
pub(super) fn judge(
    in_recovery: Option<&str>,
    lag: Option<&str>,
    paused: Option<&str>,
    version: Option<&str>,
    max_lag: Duration,
) -> Result<(String, RoleReport), String> {
    let version = version.and_then(|v| v.parse::<u32>().ok());
    if version.is_some_and(|v| v < MIN_VERSION) {
        return Err(format!(
            "PostgreSQL server_version_num {} is too old: role checks need PostgreSQL 10 or later",
            version.unwrap_or_default()
        ));
    }
    match in_recovery {
        Some("f") => Ok(("primary".to_owned(), RoleReport::writer(Role::Primary))),
        Some("t") => {
            let lag = lag
                .and_then(|text| text.parse::<f64>().ok())
                .filter(|secs| secs.is_finite())
                // A standby whose clock is behind the primary's sees a negative age.
                .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 1e9)));
            let report = RoleReport::replica(lag, max_lag);
            let paused = if paused == Some("t") {
                ", replay paused"
            } else {
                ""
            };
            let detail = format!("replica{paused}: {}", lag_words(&report, max_lag));
            Ok((detail, report))
        }
        other => Err(format!(
            "unexpected answer to pg_is_in_recovery(): {}",
            other.map_or("NULL".to_owned(), |text| format!("{:?}", shown(text)))
        )),
    }
}

/// A client error as an operator reads it: the server's own message where it sent one.
fn reason(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let hint = if *db.code() == SqlState::UNDEFINED_FUNCTION {
            ": role checks need PostgreSQL 10 or later"
        } else {
            ""
        };
        return format!(
            "PostgreSQL {} {}: {}{hint}",
            db.severity(),
            db.code().code(),
            shown(db.message())
        );
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        match cause.downcast_ref::<std::io::Error>() {
            Some(io) => text = format!("{text}: {}", io_reason(io)),
            None => text = format!("{text}: {}", shown(&cause.to_string())),
        }
        source = cause.source();
    }
    text
}

//! Patroni-style role endpoints: `GET primary_path` answers 200 on the primary only,
//! `GET replica_path` 200 on a replica fit for reads (Patroni judges the lag itself, from
//! `?lag=` in the path). Any other status from both is a failed check: the node is neither.

use std::net::SocketAddrV4;

use super::{Phase, Role, RoleReport};
use crate::{config::HttpRoleCheck, health::probe::http_status};

pub(super) async fn exchange(
    target: SocketAddrV4,
    check: &HttpRoleCheck,
    phase: &mut Phase,
) -> Result<(String, RoleReport), String> {
    let primary = http_status(target, &check.primary_path, phase).await?;
    if primary == 200 {
        let detail = format!("primary (GET {}: 200)", check.primary_path);
        return Ok((detail, RoleReport::writer(Role::Primary)));
    }
    let replica = http_status(target, &check.replica_path, phase).await?;
    judge(check, primary, replica)
}

/// The role from the two statuses (the first was not 200).
pub(super) fn judge(
    check: &HttpRoleCheck,
    primary: u16,
    replica: u16,
) -> Result<(String, RoleReport), String> {
    if replica == 200 {
        let detail = format!("replica (GET {}: 200)", check.replica_path);
        // The endpoint judged the lag; gerbang's max_lag does not apply.
        let report = RoleReport {
            role: Role::Replica,
            lag: None,
            fresh: true,
        };
        return Ok((detail, report));
    }
    Err(format!(
        "neither primary nor replica: GET {} answered {primary}, GET {} answered {replica}",
        check.primary_path, check.replica_path
    ))
}

//! Replicated databases: `service.role`, `max_lag` and `replica_fallback`, and the rule that
//! a service choosing backends by role asks every backend for its role.

use std::time::Duration;

use super::{Checked, Checker};
use crate::config::{
    BackendConfig, DownPolicy, ReplicaFallback, ServiceConfig, ServiceRole, raw::RawService,
};

/// A service's role keys, checked.
pub(super) struct RoleDraft {
    pub role: Checked<ServiceRole>,
    pub replica_fallback: Checked<ReplicaFallback>,
    /// What the backends' database checks judge replicas by; the default when `max_lag` is
    /// invalid (and reported) or absent.
    pub max_lag: Duration,
}

impl Checker<'_> {
    pub(super) fn service_role(
        &mut self,
        raw: &RawService,
        path: &str,
        on_backend_down: &Checked<DownPolicy>,
    ) -> RoleDraft {
        let field = |key: &str| format!("{path}.{key}");
        let role = self.choice(
            &raw.role,
            &field("role"),
            &ServiceRole::ALL,
            ServiceRole::as_str,
        );
        let mut draft = RoleDraft {
            role,
            replica_fallback: Ok(ReplicaFallback::default()),
            max_lag: ServiceConfig::DEFAULT_MAX_LAG,
        };
        match role {
            Ok(ServiceRole::Replica) => {
                if let Some(value) = &raw.max_lag
                    && let Ok(max_lag) = self.duration_value(value, &field("max_lag"))
                {
                    draft.max_lag = max_lag;
                }
                draft.replica_fallback = self.choice(
                    &raw.replica_fallback,
                    &field("replica_fallback"),
                    &ReplicaFallback::ALL,
                    ReplicaFallback::as_str,
                );
            }
            Ok(role) => {
                for (key, leaf) in [
                    ("max_lag", &raw.max_lag),
                    ("replica_fallback", &raw.replica_fallback),
                ] {
                    if let Some(value) = leaf {
                        let message = format!(
                            "{key} applies to role = \"replica\" services only, and this \
                             service's role is {:?}: set role = \"replica\", or remove {key}",
                            role.as_str()
                        );
                        self.report(Some(value.span()), &field(key), message);
                    }
                }
            }
            Err(_) => {}
        }
        if let (Ok(ServiceRole::Primary), Ok(DownPolicy::Keep), Some(value)) =
            (role, on_backend_down, &raw.on_backend_down)
        {
            let message = "\"keep\" does not go with role = \"primary\": a backend that stops \
                           being the primary has its flows cut, so that no write lands on it; \
                           remove on_backend_down";
            self.report(Some(value.span()), &field("on_backend_down"), message);
        }
        draft
    }

    /// A service that picks backends by role needs to know every backend's role.
    pub(super) fn role_checks(
        &mut self,
        raw: &RawService,
        path: &str,
        role: &Checked<ServiceRole>,
        backends: &Checked<Vec<BackendConfig>>,
    ) {
        let (Ok(role @ (ServiceRole::Primary | ServiceRole::Replica)), Ok(backends)) =
            (role, backends)
        else {
            return;
        };
        let unchecked: Vec<String> = backends
            .iter()
            .filter(|b| !b.check.kind.is_role_check())
            .map(|b| format!("{} ({:?})", b.name, b.check.kind.as_str()))
            .collect();
        // A role other than "any" was written in the file.
        let (false, Some(value)) = (unchecked.is_empty(), &raw.role) else {
            return;
        };
        let message = format!(
            "role = {:?} needs a check that asks each backend for its role, and {} {} checked \
             otherwise: set check.type = \"postgres\", \"mysql\", \"galera\" or \"http-role\"",
            role.as_str(),
            unchecked.join(", "),
            if unchecked.len() == 1 { "is" } else { "are" },
        );
        self.report(Some(value.span()), &format!("{path}.role"), message);
    }
}

//! Role checks without servers: the judgement of each database's answers, the role
//! verdicts, the plans they lead to, and the configuration keys of replicated services.

use std::{collections::BTreeMap, time::Duration};

use super::{
    Role, RoleReport, RoleState, RoleVerdict, http_role,
    mysql::{self, Answers, ReplicaStatus},
    postgres,
};
use crate::{
    config::{CheckKind, Config, DownPolicy, HttpRoleCheck, ReplicaFallback, ServiceRole},
    dataplane::{AdminState, BackendKey, BackendState, BackendStatus, Plan},
};

const MAX_LAG: Duration = Duration::from_secs(10);

// ---- PostgreSQL ----

#[test]
fn postgres_primary_and_replicas() {
    let (detail, report) = postgres::judge(Some("f"), None, None, Some("150018"), MAX_LAG).unwrap();
    assert_eq!(
        (detail.as_str(), report),
        ("primary", RoleReport::writer(Role::Primary))
    );

    let (detail, report) =
        postgres::judge(Some("t"), Some("0"), Some("f"), Some("150018"), MAX_LAG).unwrap();
    assert_eq!(detail, "replica: 0.0s behind");
    assert_eq!(
        (report.role, report.lag, report.fresh),
        (Role::Replica, Some(Duration::ZERO), true)
    );

    let (detail, report) =
        postgres::judge(Some("t"), Some("12.5"), Some("t"), Some("150018"), MAX_LAG).unwrap();
    assert_eq!(
        detail,
        "replica, replay paused: lagging 12s behind (max_lag 10s)"
    );
    assert!(!report.fresh);

    // Nothing replayed yet and not streaming: the lag is unknown, so not fit for reads.
    let (detail, report) = postgres::judge(Some("t"), None, Some("f"), None, MAX_LAG).unwrap();
    assert_eq!(
        (detail.as_str(), report.lag, report.fresh),
        ("replica: lag unknown", None, false)
    );

    // A standby whose clock is behind the primary's.
    let (_, report) = postgres::judge(Some("t"), Some("-0.4"), None, None, MAX_LAG).unwrap();
    assert_eq!((report.lag, report.fresh), (Some(Duration::ZERO), true));
}

#[test]
fn postgres_odd_answers_are_failures() {
    for (in_recovery, lag, version, expected) in [
        (
            None,
            None,
            None,
            "unexpected answer to pg_is_in_recovery(): NULL",
        ),
        (
            Some("maybe"),
            None,
            None,
            "unexpected answer to pg_is_in_recovery(): \"maybe\"",
        ),
        (
            Some("t"),
            Some("NaN"),
            Some("90624"),
            "PostgreSQL server_version_num 90624 is too old",
        ),
    ] {
        let reason = postgres::judge(in_recovery, lag, None, version, MAX_LAG).unwrap_err();
        assert!(reason.starts_with(expected), "{reason}");
    }
    // Garbage where a number belongs is an unknown lag, not a panic.
    let (_, report) = postgres::judge(Some("t"), Some("1e999x"), None, Some("x"), MAX_LAG).unwrap();
    assert_eq!(report.lag, None);
}

// ---- MySQL, MariaDB, Galera ----

fn replica(io: &str, sql: &str, behind: Option<&str>) -> Option<ReplicaStatus> {
    Some(ReplicaStatus {
        io_running: Some(io.into()),
        sql_running: Some(sql.into()),
        seconds_behind: behind.map(Into::into),
    })
}

fn answers(read_only: &str, replica: Option<ReplicaStatus>) -> Answers {
    Answers {
        read_only: Some(read_only.into()),
        replica,
        ..Answers::default()
    }
}

#[test]
fn mysql_roles() {
    let judge = |answers: &Answers| mysql::judge(answers, false, MAX_LAG);
    let (detail, report) = judge(&answers("0", None)).unwrap();
    assert_eq!(
        (detail.as_str(), report.role),
        ("primary: read_only OFF", Role::Primary)
    );
    // read_only OFF wins over a replication channel: such a node takes writes.
    let (_, report) = judge(&answers("OFF", replica("Yes", "Yes", Some("0")))).unwrap();
    assert_eq!(report.role, Role::Primary);

    let (detail, report) = judge(&answers("1", replica("Yes", "Yes", Some("3")))).unwrap();
    assert_eq!(detail, "replica: read_only ON, 3.0s behind");
    assert_eq!(
        (report.lag, report.fresh),
        (Some(Duration::from_secs(3)), true)
    );

    let (detail, report) = judge(&answers("ON", replica("Yes", "Yes", Some("11")))).unwrap();
    assert_eq!(
        detail,
        "replica: read_only ON, lagging 11s behind (max_lag 10s)"
    );
    assert!(!report.fresh);

    let (detail, report) = judge(&answers("1", replica("Yes", "No", None))).unwrap();
    assert_eq!(
        detail,
        "replica: read_only ON, replication not running (IO thread Yes, SQL thread No)"
    );
    assert!(!report.fresh);
    let (_, report) = judge(&answers("1", replica("Connecting", "Yes", None))).unwrap();
    assert!(!report.fresh);
    let (detail, report) = judge(&answers("1", None)).unwrap();
    assert_eq!(
        (detail.as_str(), report.fresh),
        ("replica: read_only ON, not replicating", false)
    );

    let reason = judge(&answers("2", None)).unwrap_err();
    assert_eq!(reason, "unexpected answer for @@global.read_only: \"2\"");
    assert!(judge(&Answers::default()).is_err());
}

#[test]
fn galera_members() {
    let galera = |read_only: &str, state: Option<&str>, cluster: Option<&str>| {
        let answers = Answers {
            read_only: Some(read_only.into()),
            wsrep_state: state.map(Into::into),
            wsrep_cluster: cluster.map(Into::into),
            replica: None,
        };
        mysql::judge(&answers, true, MAX_LAG)
    };
    let (detail, report) = galera("0", Some("4"), Some("Primary")).unwrap();
    assert_eq!(
        (detail.as_str(), report),
        (
            "galera node synced, writable",
            RoleReport::writer(Role::Member)
        )
    );
    let (_, report) = galera("1", Some("4"), Some("Primary")).unwrap();
    assert_eq!((report.role, report.fresh), (Role::Replica, true));
    assert_eq!(
        galera("0", Some("2"), Some("Primary")).unwrap_err(),
        "galera node not synced: wsrep_local_state 2 (Donor/Desynced), not 4 (Synced)"
    );
    assert_eq!(
        galera("0", Some("4"), Some("non-Primary")).unwrap_err(),
        "galera node not in the primary component: wsrep_cluster_status non-Primary"
    );
    assert_eq!(
        galera("0", None, None).unwrap_err(),
        "no wsrep status: not a Galera node (is wsrep_on OFF?)"
    );
}

#[test]
fn http_role_statuses() {
    let check = HttpRoleCheck {
        primary_path: "/primary".into(),
        replica_path: "/replica?lag=16MB".into(),
    };
    let (detail, report) = http_role::judge(&check, 503, 200).unwrap();
    assert_eq!(detail, "replica (GET /replica?lag=16MB: 200)");
    assert_eq!((report.role, report.fresh), (Role::Replica, true));
    assert_eq!(
        http_role::judge(&check, 503, 503).unwrap_err(),
        "neither primary nor replica: GET /primary answered 503, GET /replica?lag=16MB answered 503"
    );
}

// ---- Role verdicts ----

fn report(role: Role, fresh: bool) -> RoleReport {
    RoleReport {
        role,
        lag: None,
        fresh,
    }
}

fn verdict(role: Role, fresh: bool, current: bool) -> Option<RoleVerdict> {
    Some(RoleVerdict {
        role,
        fresh,
        current,
    })
}

#[test]
fn first_report_decides_and_gains_need_rise() {
    let mut state = RoleState::new(2);
    assert!(state.record(Some(&report(Role::Replica, true))));
    assert_eq!(state.verdict(), verdict(Role::Replica, true, true));

    // Promoted: primary after two reports in a row, at the fast interval meanwhile.
    assert!(!state.record(Some(&report(Role::Primary, true))));
    assert!(state.pending());
    assert_eq!(state.verdict(), verdict(Role::Replica, true, true));
    assert!(state.record(Some(&report(Role::Primary, true))));
    assert!(!state.pending());
    assert_eq!(state.verdict(), verdict(Role::Primary, true, true));

    // Demoted: at once.
    assert!(state.record(Some(&report(Role::Replica, true))));
    assert_eq!(state.verdict(), verdict(Role::Replica, true, true));

    // A claim interrupted by another report starts over.
    state.record(Some(&report(Role::Primary, true)));
    state.record(Some(&report(Role::Replica, true)));
    assert!(!state.pending());
    assert!(!state.record(Some(&report(Role::Primary, true))));
    assert_eq!(state.verdict().unwrap().role, Role::Replica);
}

#[test]
fn falling_behind_counts_at_once_and_catching_up_needs_rise() {
    let mut state = RoleState::new(3);
    state.record(Some(&report(Role::Replica, true)));
    assert!(state.record(Some(&report(Role::Replica, false))));
    assert_eq!(state.verdict(), verdict(Role::Replica, false, true));
    assert!(!state.record(Some(&report(Role::Replica, true))));
    assert!(!state.record(Some(&report(Role::Replica, true))));
    assert!(state.record(Some(&report(Role::Replica, true))));
    assert_eq!(state.verdict(), verdict(Role::Replica, true, true));
}

#[test]
fn failed_probes_leave_a_stale_claim() {
    let mut state = RoleState::new(2);
    state.record(Some(&report(Role::Primary, true)));
    assert!(state.record(None));
    assert_eq!(state.verdict(), verdict(Role::Primary, true, false));
    assert!(!state.record(None));
    // Answering again with the same role confirms it at once.
    assert!(state.record(Some(&report(Role::Primary, true))));
    assert_eq!(state.verdict(), verdict(Role::Primary, true, true));
    let mut never = RoleState::new(2);
    assert!(!never.record(None));
    assert_eq!(never.verdict(), None);
}

// ---- Plans ----

const PAIR: &str = r#"
[dataplane]
interfaces = ["eth0"]
snat_address = "10.0.0.1"

[[service]]
name = "rw"
listen = "192.0.2.1:3306"
role = "primary"
check = { type = "mysql", password = "secret" }

  [[service.backend]]
  name = "db1"
  address = "10.0.1.1:3306"

  [[service.backend]]
  name = "db2"
  address = "10.0.1.2:3306"

  [[service.backend]]
  name = "db3"
  address = "10.0.1.3:3306"

[[service]]
name = "ro"
listen = "192.0.2.1:3307"
role = "replica"
on_backend_down = "keep"
check = { type = "mysql", password = "secret" }

  [[service.backend]]
  name = "db1"
  address = "10.0.1.1:3306"

  [[service.backend]]
  name = "db2"
  address = "10.0.1.2:3306"

  [[service.backend]]
  name = "db3"
  address = "10.0.1.3:3306"
"#;

const P: Option<RoleVerdict> = Some(RoleVerdict {
    role: Role::Primary,
    fresh: true,
    current: true,
});
const STALE_P: Option<RoleVerdict> = Some(RoleVerdict {
    role: Role::Primary,
    fresh: true,
    current: false,
});
const R: Option<RoleVerdict> = Some(RoleVerdict {
    role: Role::Replica,
    fresh: true,
    current: true,
});
const LAGGING: Option<RoleVerdict> = Some(RoleVerdict {
    role: Role::Replica,
    fresh: false,
    current: true,
});
const M: Option<RoleVerdict> = Some(RoleVerdict {
    role: Role::Member,
    fresh: true,
    current: true,
});

/// The states of `service`'s backends and its conflict, with each backend's role, and
/// `down` backends unhealthy.
fn plan(
    text: &str,
    service: &str,
    roles: [Option<RoleVerdict>; 3],
    down: &[&str],
) -> (Vec<BackendState>, Option<String>) {
    let config = Config::parse(text, "test.toml").unwrap();
    let mut all_roles = BTreeMap::new();
    let mut status = BTreeMap::new();
    for s in &config.services {
        for (backend, role) in s.backends.iter().zip(roles) {
            let key: BackendKey = (s.name.clone(), backend.name.clone());
            if let Some(role) = role {
                all_roles.insert(key.clone(), role);
            }
            let healthy = !down.contains(&backend.name.as_str());
            status.insert(
                key,
                BackendStatus {
                    healthy,
                    admin: AdminState::Ready,
                },
            );
        }
    }
    let plan = Plan::compute_with_roles(&config, &status, &all_roles);
    let service = plan.services.iter().find(|s| s.name == service).unwrap();
    (
        service.backends.iter().map(|b| b.state).collect(),
        service.conflict.clone(),
    )
}

use BackendState::{Active, Down, Standby};

#[test]
fn the_write_service_follows_the_one_primary() {
    assert_eq!(
        plan(PAIR, "rw", [P, R, R], &[]),
        (vec![Active, Down, Down], None)
    );
    // Promoted while the old primary's checks fail but it is not DOWN yet: the answering
    // claim wins, and the old primary's flows are cut.
    assert_eq!(
        plan(PAIR, "rw", [STALE_P, P, R], &[]),
        (vec![Down, Active, Down], None)
    );
    // A stale claim alone holds on until the backend is DOWN.
    assert_eq!(
        plan(PAIR, "rw", [STALE_P, R, R], &[]),
        (vec![Active, Down, Down], None)
    );
    assert_eq!(
        plan(PAIR, "rw", [P, R, R], &["db1"]),
        (vec![Down, Down, Down], None)
    );
    // No role known yet, or none a primary.
    assert_eq!(
        plan(PAIR, "rw", [None, R, LAGGING], &[]),
        (vec![Down, Down, Down], None)
    );
}

#[test]
fn two_primaries_stop_the_write_service() {
    let (states, conflict) = plan(PAIR, "rw", [P, R, P], &[]);
    assert_eq!(states, vec![Down, Down, Down]);
    assert_eq!(
        conflict.as_deref(),
        Some("db1, db3 claim to be the primary")
    );
    // Two stale claims are a conflict too, once nobody answering claims.
    let (_, conflict) = plan(PAIR, "rw", [STALE_P, STALE_P, R], &[]);
    assert!(conflict.is_some());
    // A claimant that is DOWN claims nothing.
    assert_eq!(
        plan(PAIR, "rw", [P, R, P], &["db3"]),
        (vec![Active, Down, Down], None)
    );
    // The read service is not the one that conflicts; it has no primary to fall back to.
    assert_eq!(
        plan(PAIR, "ro", [P, R, P], &[]),
        (vec![Standby, Active, Standby], None)
    );
}

#[test]
fn the_read_service_takes_fresh_replicas_then_the_primary() {
    assert_eq!(
        plan(PAIR, "ro", [P, R, R], &[]),
        (vec![Standby, Active, Active], None)
    );
    assert_eq!(
        plan(PAIR, "ro", [P, LAGGING, R], &[]),
        (vec![Standby, Down, Active], None)
    );
    // No fresh replica: the primary.
    assert_eq!(
        plan(PAIR, "ro", [P, LAGGING, None], &[]),
        (vec![Active, Down, Down], None)
    );
    assert_eq!(
        plan(PAIR, "ro", [P, R, R], &["db2", "db3"]).0,
        vec![Active, Down, Down]
    );
    let none = PAIR.replacen(
        "role = \"replica\"",
        "role = \"replica\"\nreplica_fallback = \"none\"",
        1,
    );
    assert_eq!(
        plan(&none, "ro", [P, LAGGING, LAGGING], &[]).0,
        vec![Standby, Down, Down]
    );
}

#[test]
fn galera_members_take_writes_one_at_a_time() {
    let galera = PAIR.replace("type = \"mysql\"", "type = \"galera\"");
    assert_eq!(
        plan(&galera, "rw", [M, M, M], &[]),
        (vec![Active, Standby, Standby], None)
    );
    assert_eq!(
        plan(&galera, "rw", [M, M, M], &["db1"]),
        (vec![Down, Active, Standby], None)
    );
    assert_eq!(
        plan(&galera, "ro", [M, M, M], &[]).0,
        vec![Active, Active, Active]
    );
}

#[test]
fn role_services_cut_flows_and_any_services_ignore_roles() {
    let config = Config::parse(PAIR, "test.toml").unwrap();
    let plan = Plan::compute(&config, &BTreeMap::new());
    assert_eq!(plan.services[0].on_backend_down, DownPolicy::Reset);
    assert_eq!(plan.services[1].on_backend_down, DownPolicy::Keep);
    assert_eq!(plan.services[0].role, ServiceRole::Primary);
    let any = PAIR
        .replace("role = \"primary\"\n", "")
        .replace("role = \"replica\"\n", "");
    let config = Config::parse(&any, "test.toml").unwrap();
    let roles = BTreeMap::from([(("rw".to_owned(), "db2".to_owned()), LAGGING.unwrap())]);
    let plan = Plan::compute_with_roles(&config, &BTreeMap::new(), &roles);
    assert!(
        plan.services[0]
            .backends
            .iter()
            .all(|b| b.state == Active && b.role.is_none())
    );
}

// ---- Configuration ----

fn problems(text: &str) -> Vec<String> {
    match Config::parse(text, "test.toml") {
        Ok(_) => Vec::new(),
        Err(error) => error.to_string().lines().map(str::to_owned).collect(),
    }
}

#[test]
fn database_check_keys() {
    let config = Config::parse(PAIR, "test.toml").unwrap();
    let rw = &config.services[0];
    assert_eq!(
        (rw.role, rw.replica_fallback),
        (ServiceRole::Primary, ReplicaFallback::Primary)
    );
    let CheckKind::Mysql(check) = &rw.backends[0].check.kind else {
        panic!("{:?}", rw.backends[0].check.kind)
    };
    assert_eq!(
        (check.user.as_str(), check.database.as_deref()),
        ("gerbang", None)
    );
    assert_eq!(
        (check.password.as_ref().unwrap().expose(), check.max_lag),
        ("secret", MAX_LAG)
    );
    // The password never shows, in the configuration's Debug either.
    assert!(!format!("{config:?}").contains("secret"));

    let text = PAIR
        .replacen(
            "role = \"replica\"",
            "role = \"replica\"\nmax_lag = \"2s\"\nreplica_fallback = \"none\"",
            1,
        )
        .replace(
            "check = { type = \"mysql\", password = \"secret\" }",
            "check = { type = \"postgres\", user = \"mon\", password = \"pw\" }",
        );
    let config = Config::parse(&text, "test.toml").unwrap();
    let ro = &config.services[1];
    assert_eq!(ro.replica_fallback, ReplicaFallback::None);
    let CheckKind::Postgres(check) = &ro.backends[2].check.kind else {
        panic!()
    };
    assert_eq!(
        (
            check.user.as_str(),
            check.database.as_deref(),
            check.max_lag
        ),
        ("mon", Some("postgres"), Duration::from_secs(2))
    );
}

#[test]
fn passwords_from_a_file_and_the_backend_overriding_the_service() {
    let dir = std::env::temp_dir().join(format!("gerbang-db-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pw");
    std::fs::write(&file, "from-file\n").unwrap();
    let text = PAIR.replacen(
        "  name = \"db2\"\n",
        &format!(
            "  name = \"db2\"\n  check = {{ password_file = \"{}\" }}\n",
            file.display()
        ),
        1,
    );
    let config = Config::parse(&text, "test.toml").unwrap();
    let CheckKind::Mysql(check) = &config.services[0].backends[1].check.kind else {
        panic!()
    };
    assert_eq!(check.password.as_ref().unwrap().expose(), "from-file");
    std::fs::write(&file, "").unwrap();
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with(&format!(
        "service[rw].backend[db2].check.password_file: {} is empty: put the password in it",
        file.display()
    )));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_role_keys_are_reported_together() {
    let text = PAIR
        .replacen("check = { type = \"mysql\", password = \"secret\" }", "max_lag = \"5s\"", 1)
        .replacen("role = \"primary\"", "role = \"primary\"\non_backend_down = \"keep\"", 1)
        .replacen(
            "check = { type = \"mysql\", password = \"secret\" }",
            "check = { type = \"mysql\", password = \"a\", password_env = \"GERBANG_TEST_UNSET_VARIABLE\", path = \"/\" }",
            1,
        );
    let found = problems(&text);
    let expected = [
        "test.toml:9:8: service[rw].role: role = \"primary\" needs a check that asks each \
         backend for its role, and db1 (\"tcp\"), db2 (\"tcp\"), db3 (\"tcp\") are checked \
         otherwise: set check.type = \"postgres\", \"mysql\", \"galera\" or \"http-role\"",
        "test.toml:10:19: service[rw].on_backend_down: \"keep\" does not go with role = \
         \"primary\": a backend that stops being the primary has its flows cut, so that no \
         write lands on it; remove on_backend_down",
        "test.toml:11:11: service[rw].max_lag: max_lag applies to role = \"replica\" services \
         only, and this service's role is \"primary\": set role = \"replica\", or remove max_lag",
    ];
    assert_eq!(found[..3], expected, "{found:#?}");
    assert!(found[3].contains(
        "service[ro].check.password_env: password is set on line 30 already: password, \
         password_env and password_file are alternatives, keep one"
    ));
    assert!(found[4].contains(
        "service[ro].check.path: path applies to http checks only, and this check's type is \
         \"mysql\""
    ));
    assert_eq!(found.len(), 5, "{found:#?}");

    let unset = PAIR.replacen(
        "password = \"secret\"",
        "password_env = \"GERBANG_TEST_UNSET_VARIABLE\"",
        1,
    );
    assert_eq!(
        problems(&unset),
        [
            "test.toml:10:42: service[rw].check.password_env: environment variable \
          GERBANG_TEST_UNSET_VARIABLE is not set: gerbang reads it when it loads this file (at \
          start and on reload)"
        ]
    );
    let misplaced = PAIR.replacen("role = \"primary\"\n", "", 1).replacen(
        "check = { type = \"mysql\", password = \"secret\" }",
        "check = { user = \"x\" }",
        1,
    );
    assert_eq!(
        problems(&misplaced),
        [
            "test.toml:9:18: service[rw].check.user: user applies to postgres, mysql and galera \
          checks only, and this check's type is \"tcp\" (the default): set type = \
          \"postgres\", \"mysql\" or \"galera\", or remove user"
        ]
    );
}

#[test]
fn example_files_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    for (file, secret) in [
        (
            "mariadb-pair.toml",
            "password_file = \"/etc/gerbang/mariadb-monitor.password\"",
        ),
        (
            "postgres-pair.toml",
            "password_env = \"GERBANG_PG_PASSWORD\"",
        ),
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        // The secrets are on the operator's machine, not here.
        let text = text.replace(secret, "password = \"x\"");
        let config = Config::parse(&text, file).unwrap_or_else(|error| panic!("{error}"));
        let roles: Vec<ServiceRole> = config.services.iter().map(|s| s.role).collect();
        assert_eq!(
            roles,
            [ServiceRole::Primary, ServiceRole::Replica],
            "{file}"
        );
        assert!(config.services.iter().all(|s| s.backends.len() == 2));
    }
}

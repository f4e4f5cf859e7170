//! Health checks: `[service.check]` and a backend's own `check`, each key checked where it
//! is written, then merged into one [`CheckConfig`] per backend: the backend's keys over the
//! service's over the defaults. Defaults that follow another key (`fast_interval`,
//! `down_interval` and `timeout` follow `interval`) follow the merged value, as HAProxy's
//! `fastinter` follows `inter`.
//!
//! Database role checks take credentials; a password given by `password_env` or
//! `password_file` is read here, when the file is loaded, so that a missing variable or an
//! unreadable file is reported with the rest, and never shown in a problem.

use std::{env, fs, io, net::Ipv4Addr, ops::RangeInclusive, path::Path, time::Duration};

use toml::{Spanned, Value};

use super::{Checked, Checker, describe};
use crate::config::{
    CheckConfig, CheckKind, DbCheck, HttpCheck, HttpRoleCheck, Protocol, Secret,
    raw::{Leaf, RawCheck, Table},
};

/// Consecutive results before a backend changes state.
pub(super) const FALLS_AND_RISES: RangeInclusive<u32> = 1..=100;
const MAX_HTTP_PATH_LEN: usize = 1024;
/// A DNS name's limit.
const MAX_HOST_LEN: usize = 255;
const MAX_EXPECT_BODY_LEN: usize = 1024;
const STATUSES: RangeInclusive<u32> = 100..=599;
/// Of a database user or database name (PostgreSQL allows 63 bytes, MySQL 64 characters).
const MAX_USER_LEN: usize = 128;
const MAX_DATABASE_LEN: usize = 64;
const MAX_PASSWORD_LEN: usize = 1024;
const STATUS_RULE: &str = "expected statuses or ranges of them separated by commas, each from \
                           100 to 599, such as \"200-399\" (the default), \"200\" or \
                           \"200,204,301-302\"";

/// `type`, without the settings [`CheckKind::Http`] carries. (The default is what
/// `choice` names in messages; [`resolve`] picks the real one by protocol.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum CheckType {
    None,
    #[default]
    Tcp,
    Http,
    Postgres,
    Mysql,
    Galera,
    HttpRole,
}

impl CheckType {
    const ALL: [Self; 7] = [
        Self::Tcp,
        Self::Http,
        Self::None,
        Self::Postgres,
        Self::Mysql,
        Self::Galera,
        Self::HttpRole,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Galera => "galera",
            Self::HttpRole => "http-role",
        }
    }
}

/// Keys that only some check types take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyGroup {
    Http,
    Db,
    HttpRole,
}

impl KeyGroup {
    fn takes(self, kind: CheckType) -> bool {
        match self {
            Self::Http => kind == CheckType::Http,
            Self::Db => matches!(
                kind,
                CheckType::Postgres | CheckType::Mysql | CheckType::Galera
            ),
            Self::HttpRole => kind == CheckType::HttpRole,
        }
    }

    /// The types that take the group's keys, and how to choose one.
    fn types(self) -> (&'static str, &'static str) {
        match self {
            Self::Http => ("http", "set type = \"http\""),
            Self::Db => (
                "postgres, mysql and galera",
                "set type = \"postgres\", \"mysql\" or \"galera\"",
            ),
            Self::HttpRole => ("http-role", "set type = \"http-role\""),
        }
    }
}

/// A `type` key as written, and where, for problems about keys that depend on it.
#[derive(Clone)]
struct TypeSet {
    kind: CheckType,
    field: String,
    line: usize,
}

/// One `check` table as written: each key checked on its own, `None` where it is absent.
#[derive(Default)]
pub(super) struct CheckLayer {
    kind: Option<Checked<TypeSet>>,
    interval: Option<Checked<Duration>>,
    fast_interval: Option<Checked<Duration>>,
    down_interval: Option<Checked<Duration>>,
    timeout: Option<Checked<Duration>>,
    fall: Option<Checked<u32>>,
    rise: Option<Checked<u32>>,
    port: Option<Checked<u16>>,
    address: Option<Checked<Ipv4Addr>>,
    path: Option<Checked<String>>,
    host: Option<Checked<String>>,
    expect_status: Option<Checked<Vec<(u16, u16)>>>,
    expect_body: Option<Checked<String>>,
    user: Option<Checked<String>>,
    /// Whichever of `password`, `password_env` and `password_file` the layer sets.
    password: Option<Checked<Secret>>,
    database: Option<Checked<String>>,
    primary_path: Option<Checked<String>>,
    replica_path: Option<Checked<String>>,
}

/// What a backend's check depends on besides its layers: the service's protocol and
/// `max_lag` (which database checks judge replicas by).
#[derive(Debug, Clone, Copy)]
pub(super) struct CheckContext {
    pub protocol: Protocol,
    pub max_lag: Duration,
}

/// Merges `layers`, the first that sets a key winning, over the defaults. Without a `type`,
/// a TCP service is checked with a TCP connect and a UDP service not at all (a TCP probe of
/// a UDP port would only ever fail).
pub(super) fn resolve(layers: &[&CheckLayer], context: CheckContext) -> Checked<CheckConfig> {
    let CheckContext { protocol, max_lag } = context;
    fn key<T: Clone>(
        layers: &[&CheckLayer],
        get: fn(&CheckLayer) -> &Option<Checked<T>>,
    ) -> Checked<Option<T>> {
        layers
            .iter()
            .find_map(|layer| get(layer).as_ref())
            .cloned()
            .transpose()
    }

    let default = match protocol {
        Protocol::Tcp => CheckType::Tcp,
        Protocol::Udp => CheckType::None,
    };
    let kind = key(layers, |layer| &layer.kind)?.map_or(default, |set| set.kind);
    let kind = match kind {
        CheckType::None => CheckKind::None,
        CheckType::Tcp => CheckKind::Tcp,
        CheckType::Http => {
            let default = HttpCheck::default();
            CheckKind::Http(HttpCheck {
                path: key(layers, |layer| &layer.path)?.unwrap_or(default.path),
                host: key(layers, |layer| &layer.host)?,
                expect_status: key(layers, |layer| &layer.expect_status)?
                    .unwrap_or(default.expect_status),
                expect_body: key(layers, |layer| &layer.expect_body)?,
            })
        }
        CheckType::Postgres | CheckType::Mysql | CheckType::Galera => {
            let database = key(layers, |layer| &layer.database)?.or_else(|| {
                (kind == CheckType::Postgres).then(|| DbCheck::DEFAULT_POSTGRES_DATABASE.to_owned())
            });
            let db = DbCheck {
                user: key(layers, |layer| &layer.user)?
                    .unwrap_or_else(|| DbCheck::DEFAULT_USER.to_owned()),
                password: key(layers, |layer| &layer.password)?,
                database,
                max_lag,
            };
            match kind {
                CheckType::Postgres => CheckKind::Postgres(db),
                CheckType::Mysql => CheckKind::Mysql(db),
                _ => CheckKind::Galera(db),
            }
        }
        CheckType::HttpRole => {
            let default = HttpRoleCheck::default();
            CheckKind::HttpRole(HttpRoleCheck {
                primary_path: key(layers, |layer| &layer.primary_path)?
                    .unwrap_or(default.primary_path),
                replica_path: key(layers, |layer| &layer.replica_path)?
                    .unwrap_or(default.replica_path),
            })
        }
    };
    let interval = key(layers, |layer| &layer.interval)?.unwrap_or(CheckConfig::DEFAULT_INTERVAL);
    Ok(CheckConfig {
        kind,
        interval,
        fast_interval: key(layers, |layer| &layer.fast_interval)?.unwrap_or(interval),
        down_interval: key(layers, |layer| &layer.down_interval)?.unwrap_or(interval),
        timeout: key(layers, |layer| &layer.timeout)?.unwrap_or(interval),
        fall: key(layers, |layer| &layer.fall)?.unwrap_or(CheckConfig::DEFAULT_FALL),
        rise: key(layers, |layer| &layer.rise)?.unwrap_or(CheckConfig::DEFAULT_RISE),
        port: key(layers, |layer| &layer.port)?,
        address: key(layers, |layer| &layer.address)?,
    })
}

impl Checker<'_> {
    /// Checks one `check` table, whose field path is `path`; `inherited` is the service's,
    /// for a backend's.
    pub(super) fn check_layer<'r>(
        &mut self,
        raw: Option<&'r Spanned<Table<RawCheck>>>,
        path: String,
        inherited: Option<&CheckLayer>,
    ) -> CheckLayer {
        let Some(raw) = raw else {
            return CheckLayer::default();
        };
        let raw: &RawCheck = raw.get_ref();
        let field = |key: &str| format!("{path}.{key}");

        let kind = raw.kind.as_ref().map(|value| {
            let kind = self.choice(
                &raw.kind,
                &field("type"),
                &CheckType::ALL,
                CheckType::as_str,
            )?;
            Ok(TypeSet {
                kind,
                field: field("type"),
                line: self.line(&value.span()),
            })
        });
        // Keys of some types only (HTTP, database, http-role) are checked only where the
        // check is of such a type; elsewhere they are reported as out of place, once,
        // whatever their value.
        let judged = match (&kind, inherited.and_then(|layer| layer.kind.as_ref())) {
            (Some(Err(_)), _) | (None, Some(Err(_))) => None,
            (Some(Ok(set)), _) => Some((set.kind, format!("set on line {}", set.line))),
            (None, Some(Ok(set))) => {
                Some((set.kind, format!("from {} on line {}", set.field, set.line)))
            }
            (None, None) => Some((CheckType::default(), "the default".to_owned())),
        };
        if let Some((kind, source)) = &judged {
            self.misplaced_keys(raw, &path, *kind, source);
        }
        let takes = |group: KeyGroup| judged.as_ref().is_some_and(|(kind, _)| group.takes(*kind));
        let (http, db, http_role) = (
            takes(KeyGroup::Http),
            takes(KeyGroup::Db),
            takes(KeyGroup::HttpRole),
        );
        let http_key = |leaf: &'r Leaf| leaf.as_ref().filter(|_| http);
        let db_key = |leaf: &'r Leaf| leaf.as_ref().filter(|_| db);
        let http_role_key = |leaf: &'r Leaf| leaf.as_ref().filter(|_| http_role);

        CheckLayer {
            kind,
            interval: (raw.interval.as_ref()).map(|v| self.duration_value(v, &field("interval"))),
            fast_interval: (raw.fast_interval.as_ref())
                .map(|v| self.duration_value(v, &field("fast_interval"))),
            down_interval: (raw.down_interval.as_ref())
                .map(|v| self.duration_value(v, &field("down_interval"))),
            timeout: (raw.timeout.as_ref()).map(|v| self.duration_value(v, &field("timeout"))),
            fall: (raw.fall.as_ref()).map(|v| {
                let default = Some(CheckConfig::DEFAULT_FALL);
                self.number(
                    v,
                    &field("fall"),
                    FALLS_AND_RISES,
                    "a number of checks",
                    default,
                )
            }),
            rise: (raw.rise.as_ref()).map(|v| {
                let default = Some(CheckConfig::DEFAULT_RISE);
                self.number(
                    v,
                    &field("rise"),
                    FALLS_AND_RISES,
                    "a number of checks",
                    default,
                )
            }),
            port: (raw.port.as_ref()).map(|v| {
                let what = "a port number (default: the backend's)";
                self.number(v, &field("port"), 1..=u16::MAX, what, None)
            }),
            address: (raw.address.as_ref()).map(|v| self.ipv4(v, &field("address"))),
            path: http_key(&raw.path).map(|v| self.http_path(v, &field("path"))),
            host: http_key(&raw.host).map(|v| self.http_host(v, &field("host"))),
            expect_status: http_key(&raw.expect_status)
                .map(|v| self.expect_status(v, &field("expect_status"))),
            expect_body: http_key(&raw.expect_body)
                .map(|v| self.expect_body(v, &field("expect_body"))),
            user: db_key(&raw.user).map(|v| {
                self.db_name(
                    v,
                    &field("user"),
                    "a user such as \"gerbang\"",
                    MAX_USER_LEN,
                )
            }),
            password: if db { self.password(raw, &path) } else { None },
            database: db_key(&raw.database).map(|v| {
                let what = "a database name such as \"postgres\"";
                self.db_name(v, &field("database"), what, MAX_DATABASE_LEN)
            }),
            primary_path: http_role_key(&raw.primary_path)
                .map(|v| self.http_path(v, &field("primary_path"))),
            replica_path: http_role_key(&raw.replica_path)
                .map(|v| self.http_path(v, &field("replica_path"))),
        }
    }

    /// Reports every key of `raw` that a check of type `kind` does not take.
    fn misplaced_keys(&mut self, raw: &RawCheck, path: &str, kind: CheckType, source: &str) {
        for (key, leaf, group) in [
            ("path", &raw.path, KeyGroup::Http),
            ("host", &raw.host, KeyGroup::Http),
            ("expect_status", &raw.expect_status, KeyGroup::Http),
            ("expect_body", &raw.expect_body, KeyGroup::Http),
            ("user", &raw.user, KeyGroup::Db),
            ("password", &raw.password, KeyGroup::Db),
            ("password_env", &raw.password_env, KeyGroup::Db),
            ("password_file", &raw.password_file, KeyGroup::Db),
            ("database", &raw.database, KeyGroup::Db),
            ("primary_path", &raw.primary_path, KeyGroup::HttpRole),
            ("replica_path", &raw.replica_path, KeyGroup::HttpRole),
        ] {
            if let Some(value) = leaf
                && !group.takes(kind)
            {
                let (types, choose) = group.types();
                let message = format!(
                    "{key} applies to {types} checks only, and this check's type is {:?} \
                     ({source}): {choose}, or remove {key}",
                    kind.as_str()
                );
                self.report(Some(value.span()), &format!("{path}.{key}"), message);
            }
        }
    }

    /// A database user or database name.
    fn db_name(
        &mut self,
        value: &Spanned<Value>,
        field: &str,
        what: &str,
        max_len: usize,
    ) -> Checked<String> {
        let text = self.string(value, field, what)?;
        let problem = if text.is_empty() {
            format!("empty: give {what}")
        } else if text.len() > max_len {
            format!("{} bytes long: at most {max_len}", text.len())
        } else if let Some(c) = text.chars().find(|c| c.is_control()) {
            format!("{text:?} contains {c:?}: control characters are not allowed")
        } else {
            return Ok(text.to_owned());
        };
        Err(self.report(Some(value.span()), field, problem))
    }

    /// The password a layer sets, from whichever of its three sources it uses. Problems
    /// never quote the password.
    fn password(&mut self, raw: &RawCheck, path: &str) -> Option<Checked<Secret>> {
        let sources = [
            ("password", &raw.password),
            ("password_env", &raw.password_env),
            ("password_file", &raw.password_file),
        ];
        let mut set = sources
            .into_iter()
            .filter_map(|(key, leaf)| Some((key, leaf.as_ref()?)));
        let (key, value) = set.next()?;
        let mut reported = None;
        for (other, again) in set {
            let message = format!(
                "{key} is set on line {} already: password, password_env and password_file \
                 are alternatives, keep one",
                self.line(&value.span())
            );
            reported = Some(self.report(Some(again.span()), &format!("{path}.{other}"), message));
        }
        if let Some(reported) = reported {
            return Some(Err(reported));
        }
        let field = format!("{path}.{key}");
        let text = match key {
            "password" => self.string(value, &field, "the password, as a string"),
            "password_env" => self.string(value, &field, "an environment variable's name"),
            _ => self.string(value, &field, "the absolute path of a file"),
        };
        let result = text.and_then(|text| {
            let secret = match key {
                "password" => Ok(text.to_owned()),
                "password_env" => password_from_env(text),
                _ => password_from_file(text),
            };
            secret
                .and_then(check_password)
                .map(Secret::new)
                .map_err(|message| self.report(Some(value.span()), &field, message))
        });
        Some(result)
    }

    fn http_path(&mut self, value: &Spanned<Value>, field: &str) -> Checked<String> {
        let text = self.string(value, field, "a request path such as \"/health\"")?;
        let problem = if !text.starts_with('/') {
            format!("invalid path {text:?}: it must start with '/', such as \"/health\"")
        } else if text.len() > MAX_HTTP_PATH_LEN {
            format!(
                "path is {} bytes long: at most {MAX_HTTP_PATH_LEN}",
                text.len()
            )
        } else if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            format!(
                "invalid path {text:?}: {c:?} is not allowed; use printable ASCII without spaces, \
                 and percent-encode anything else (a space is %20)"
            )
        } else {
            return Ok(text.to_owned());
        };
        Err(self.report(Some(value.span()), field, problem))
    }

    fn http_host(&mut self, value: &Spanned<Value>, field: &str) -> Checked<String> {
        let text = self.string(value, field, "a Host header such as \"www.example.com\"")?;
        let problem = if text.is_empty() {
            "empty: give the Host header to send, or remove host to send the checked address"
                .to_owned()
        } else if text.len() > MAX_HOST_LEN {
            format!("host is {} bytes long: at most {MAX_HOST_LEN}", text.len())
        } else if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            format!(
                "invalid host {text:?}: {c:?} is not allowed; use printable ASCII without spaces"
            )
        } else {
            return Ok(text.to_owned());
        };
        Err(self.report(Some(value.span()), field, problem))
    }

    fn expect_status(&mut self, value: &Spanned<Value>, field: &str) -> Checked<Vec<(u16, u16)>> {
        let result = match value.get_ref() {
            Value::String(text) => status_ranges(text),
            Value::Integer(n) => status_ranges(&n.to_string()),
            other => Err(format!("{STATUS_RULE}; found {}", describe(other))),
        };
        result.map_err(|message| self.report(Some(value.span()), field, message))
    }

    fn expect_body(&mut self, value: &Spanned<Value>, field: &str) -> Checked<String> {
        let text = self.string(value, field, "text the response body must contain")?;
        let problem = if text.is_empty() {
            "empty: give text the response body must contain, or remove expect_body".to_owned()
        } else if text.len() > MAX_EXPECT_BODY_LEN {
            format!(
                "expect_body is {} bytes long: at most {MAX_EXPECT_BODY_LEN}",
                text.len()
            )
        } else {
            return Ok(text.to_owned());
        };
        Err(self.report(Some(value.span()), field, problem))
    }
}

/// The value of the environment variable `name`.
fn password_from_env(name: &str) -> Result<String, String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(format!(
            "invalid variable name {name:?}: give the name of an environment variable, such as \
             \"GERBANG_DB_PASSWORD\""
        ));
    }
    match env::var(name) {
        Ok(value) => Ok(value),
        Err(env::VarError::NotPresent) => Err(format!(
            "environment variable {name} is not set: gerbang reads it when it loads this file \
             (at start and on reload)"
        )),
        Err(env::VarError::NotUnicode(_)) => {
            Err(format!("environment variable {name} is not UTF-8 text"))
        }
    }
}

/// The contents of the file at `path`, less one trailing newline.
fn password_from_file(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{path:?} is not an absolute path: give one such as \"/etc/gerbang/db.password\""
        ));
    }
    let bytes = fs::read(Path::new(path)).map_err(|error| {
        let reason = match error.kind() {
            io::ErrorKind::NotFound => "no such file".to_owned(),
            io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => error.to_string(),
        };
        format!("cannot read {path}: {reason}")
    })?;
    let mut text =
        String::from_utf8(bytes).map_err(|_| format!("{path} does not hold UTF-8 text"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("{path} is empty: put the password in it"));
    }
    Ok(text)
}

fn check_password(password: String) -> Result<String, String> {
    if password.is_empty() {
        Err("empty: give the password, or remove the key to log in without one".to_owned())
    } else if password.len() > MAX_PASSWORD_LEN {
        Err(format!(
            "the password is longer than {MAX_PASSWORD_LEN} bytes"
        ))
    } else if password.contains('\0') {
        Err("the password contains a NUL character, which no login can send".to_owned())
    } else {
        Ok(password)
    }
}

/// `"200-399"`, `"200"`, `"200,204,301-302"`: statuses and inclusive ranges of them.
pub(super) fn status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    if text.trim_matches(' ').is_empty() {
        return Err(format!("empty: {STATUS_RULE}"));
    }
    // Digits only: no signs. Too many digits is out of range, not malformed.
    let status = |part: &str| {
        let part = part.trim_matches(' ');
        (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u32>().unwrap_or(u32::MAX))
    };
    let mut ranges = Vec::new();
    for item in text.split(',') {
        let bounds = match item.split_once('-') {
            Some((min, max)) => (status(min), status(max)),
            None => (status(item), status(item)),
        };
        let (Some(min), Some(max)) = bounds else {
            let item = item.trim_matches(' ');
            return Err(format!(
                "invalid status list {text:?}: {item:?} is not a status or a range of them; \
                 {STATUS_RULE}"
            ));
        };
        if let Some(out) = [min, max].into_iter().find(|n| !STATUSES.contains(n)) {
            return Err(format!(
                "invalid status list {text:?}: {out} is not an HTTP status; {STATUS_RULE}"
            ));
        }
        if min > max {
            return Err(format!(
                "invalid status list {text:?}: the range {min}-{max} goes down; write the lower \
                 status first"
            ));
        }
        // Both are within 100..=599.
        let (Ok(min), Ok(max)) = (u16::try_from(min), u16::try_from(max)) else {
            return Err(format!("invalid status list {text:?}: {STATUS_RULE}"));
        };
        ranges.push((min, max));
    }
    Ok(ranges)
}

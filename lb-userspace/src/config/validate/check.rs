//! Health checks: `[service.check]` and a backend's own `check`, each key checked where it
//! is written, then merged into one [`CheckConfig`] per backend: the backend's keys over the
//! service's over the defaults. Defaults that follow another key (`fast_interval`,
//! `down_interval` and `timeout` follow `interval`) follow the merged value, as HAProxy's
//! `fastinter` follows `inter`.

use std::{net::Ipv4Addr, ops::RangeInclusive, time::Duration};

use toml::{Spanned, Value};

use super::{Checked, Checker, describe};
use crate::config::{
    CheckConfig, CheckKind, HttpCheck, Protocol,
    raw::{Leaf, RawCheck, Table},
};

/// Consecutive results before a backend changes state.
pub(super) const FALLS_AND_RISES: RangeInclusive<u32> = 1..=100;
const MAX_HTTP_PATH_LEN: usize = 1024;
/// A DNS name's limit.
const MAX_HOST_LEN: usize = 255;
const MAX_EXPECT_BODY_LEN: usize = 1024;
const STATUSES: RangeInclusive<u32> = 100..=599;
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
}

impl CheckType {
    const ALL: [Self; 3] = [Self::Tcp, Self::Http, Self::None];

    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Tcp => "tcp",
            Self::Http => "http",
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
}

/// Merges `layers`, the first that sets a key winning, over the defaults. Without a `type`,
/// a TCP service is checked with a TCP connect and a UDP service not at all (a TCP probe of
/// a UDP port would only ever fail).
pub(super) fn resolve(layers: &[&CheckLayer], protocol: Protocol) -> Checked<CheckConfig> {
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
        // HTTP keys are checked only where the check is an HTTP one; elsewhere they are
        // reported as out of place, once, whatever their value.
        let http = match (&kind, inherited.and_then(|layer| layer.kind.as_ref())) {
            (Some(Err(_)), _) | (None, Some(Err(_))) => false,
            (Some(Ok(set)), _) => {
                let source = format!("set on line {}", set.line);
                self.http_keys_need_http(raw, &path, set.kind, &source)
            }
            (None, Some(Ok(set))) => {
                let source = format!("from {} on line {}", set.field, set.line);
                self.http_keys_need_http(raw, &path, set.kind, &source)
            }
            (None, None) => {
                self.http_keys_need_http(raw, &path, CheckType::default(), "the default")
            }
        };
        let http_key = |leaf: &'r Leaf| leaf.as_ref().filter(|_| http);

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
        }
    }

    /// Reports every HTTP-only key of `raw` if `kind` is not http; returns whether it is.
    fn http_keys_need_http(
        &mut self,
        raw: &RawCheck,
        path: &str,
        kind: CheckType,
        source: &str,
    ) -> bool {
        if kind == CheckType::Http {
            return true;
        }
        for (key, leaf) in [
            ("path", &raw.path),
            ("host", &raw.host),
            ("expect_status", &raw.expect_status),
            ("expect_body", &raw.expect_body),
        ] {
            if let Some(value) = leaf {
                let message = format!(
                    "{key} applies to http checks only, and this check's type is {:?} \
                     ({source}): set type = \"http\", or remove {key}",
                    kind.as_str()
                );
                self.report(Some(value.span()), &format!("{path}.{key}"), message);
            }
        }
        false
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

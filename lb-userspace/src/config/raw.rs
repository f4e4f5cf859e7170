//! The file as serde reads it: the schema's shape (which tables, which keys) with every value
//! kept as a spanned [`toml::Value`]. Types and ranges are left to validation, which can then
//! report all of them at once and say what each field allows; serde itself only rejects what
//! has no place in the schema (syntax errors, unknown keys, a table where an array belongs).

use std::{fmt, marker::PhantomData, ops::Deref};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer},
};
use toml::{Spanned, Value, de::DeTable};

use super::{
    Problem,
    locate::{self, Lines},
};

/// A key that may be absent; its value of any type, with its place in the file.
pub(super) type Leaf = Option<Spanned<Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub dataplane: Option<Spanned<Table<RawDataplane>>>,
    pub timeouts: Option<Spanned<Table<RawTimeouts>>>,
    pub service: Option<Spanned<Tables<RawService>>>,
    pub control: Option<Spanned<Table<RawControl>>>,
    pub http: Option<Spanned<Table<RawHttp>>>,
    pub vrrp: Option<Spanned<Tables<RawVrrp>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataplane {
    pub mode: Leaf,
    pub interfaces: Leaf,
    pub attach: Leaf,
    pub snat_address: Leaf,
    pub snat_ports: Leaf,
    pub flow_table_size: Leaf,
    pub pin_path: Leaf,
    pub xdp_log_rate: Leaf,
    pub proxy_threads: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub socket: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub enabled: Leaf,
    pub listen: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub tcp_syn: Leaf,
    pub tcp_established: Leaf,
    pub tcp_closing: Leaf,
    pub udp: Leaf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: Leaf,
    pub listen: Leaf,
    pub protocol: Leaf,
    pub scheduler: Leaf,
    pub snat_address: Leaf,
    pub on_backend_down: Leaf,
    pub max_connections: Leaf,
    pub send_proxy_v2: Leaf,
    pub role: Leaf,
    pub max_lag: Leaf,
    pub replica_fallback: Leaf,
    pub check: Option<Spanned<Table<RawCheck>>>,
    pub backend: Option<Spanned<Tables<RawBackend>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub name: Leaf,
    pub address: Leaf,
    pub weight: Leaf,
    pub backup: Leaf,
    pub check: Option<Spanned<Table<RawCheck>>>,
}

/// `[service.check]`, or a backend's `check`: the same keys, the backend's over the
/// service's.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    #[serde(rename = "type")]
    pub kind: Leaf,
    pub interval: Leaf,
    pub fast_interval: Leaf,
    pub down_interval: Leaf,
    pub timeout: Leaf,
    pub fall: Leaf,
    pub rise: Leaf,
    pub port: Leaf,
    pub address: Leaf,
    pub path: Leaf,
    pub host: Leaf,
    pub expect_status: Leaf,
    pub expect_body: Leaf,
    pub user: Leaf,
    pub password: Leaf,
    pub password_env: Leaf,
    pub password_file: Leaf,
    pub database: Leaf,
    pub primary_path: Leaf,
    pub replica_path: Leaf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVrrp {
    pub name: Leaf,
    pub interface: Leaf,
    pub virtual_router_id: Leaf,
    pub priority: Leaf,
    pub version: Leaf,
    pub advert_interval: Leaf,
    pub preempt: Leaf,
    pub preempt_delay: Leaf,
    pub virtual_addresses: Leaf,
    pub unicast_source: Leaf,
    pub unicast_peers: Leaf,
    pub auth_password: Leaf,
    pub garp_count: Leaf,
    pub garp_interval: Leaf,
    pub track_services: Option<Spanned<Tables<RawTrackService>>>,
    pub track_interfaces: Option<Spanned<Tables<RawTrackInterface>>>,
    pub track_script: Option<Spanned<Tables<RawTrackScript>>>,
    pub notify: Option<Spanned<Table<RawNotify>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrackService {
    pub service: Leaf,
    pub weight: Leaf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrackInterface {
    pub interface: Leaf,
    pub weight: Leaf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrackScript {
    pub name: Leaf,
    pub command: Leaf,
    pub interval: Leaf,
    pub timeout: Leaf,
    pub fall: Leaf,
    pub rise: Leaf,
    pub weight: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub master: Leaf,
    pub backup: Leaf,
    pub fault: Leaf,
    pub stop: Leaf,
}

/// Parses `text` into the schema's shape. Fails with one problem: the parser stops at the
/// first syntax error, serde at the first key that has no place in the schema.
pub(super) fn parse(text: &str) -> Result<RawConfig, Problem> {
    let root = DeTable::parse(text).map_err(|error| {
        let offset = error.span().map(|span| span.start);
        let message = format!("invalid TOML: {}", operator_message(error.message()));
        Problem::at(&Lines::new(text.as_bytes()), offset, "", message)
    })?;
    RawConfig::deserialize(toml::de::Deserializer::from(root)).map_err(|error| {
        let offset = error.span().map(|span| span.start);
        // The tree was consumed by serde; parsing again only happens on this error path.
        let field = match (offset, DeTable::parse(text)) {
            (Some(offset), Ok(root)) => locate::field_at(root.get_ref(), offset),
            _ => String::new(),
        };
        Problem::at(
            &Lines::new(text.as_bytes()),
            offset,
            field,
            operator_message(error.message()),
        )
    })
}

/// serde's messages in TOML's words, on one line: they quote keys from the file, which may
/// contain newlines, and a problem is one line.
fn operator_message(message: &str) -> String {
    let message = message
        .replacen("invalid type: sequence", "invalid type: array", 1)
        .replacen("invalid type: map", "invalid type: table", 1);
    let mut line = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

/// A TOML table (`[name]` or an inline `{ ... }`) holding `T`.
///
/// serde's derived structs also accept arrays, as positional fields, which would quietly
/// take `[[dataplane]]` for `[dataplane]`; this accepts tables only.
pub(super) struct Table<T>(T);

impl<T> Deref for Table<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
            type Value = Table<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table: [name] with single brackets, or an inline { ... }")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Table<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Table)
            }
        }

        deserializer.deserialize_map(TableVisitor(PhantomData))
    }
}

/// A TOML array of tables (`[[name]]` once per element).
pub(super) struct Tables<T>(Vec<Spanned<Table<T>>>);

impl<T> Deref for Tables<T> {
    type Target = [Spanned<Table<T>>];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Tables<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TablesVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for TablesVisitor<T> {
            type Value = Tables<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of tables: [[name]] with double brackets, once per entry")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tables<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Tables(items))
            }
        }

        deserializer.deserialize_seq(TablesVisitor(PhantomData))
    }
}

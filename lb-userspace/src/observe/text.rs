//! `gerbang status`: the status page as tables in a terminal.

use std::fmt::Write as _;

use super::view::{BackendView, StatusView};

/// The status as plain-text tables: the node, its VRRP instances, its services, and every
/// backend with its state, last check and current sessions.
pub fn render(view: &StatusView) -> String {
    let mut out = String::new();
    let attachments: Vec<String> = view
        .dataplane
        .attachments
        .iter()
        .map(|a| format!("{} {}", a.interface, a.mode))
        .collect();
    let _ = writeln!(
        out,
        "gerbang {}, up {}, data plane {} ({}), flows {} of {} ({:.1}%)",
        view.version,
        duration(view.uptime_seconds),
        view.dataplane.mode,
        if attachments.is_empty() {
            "not attached".to_owned()
        } else {
            attachments.join(", ")
        },
        view.flows.live,
        view.flows.table_size,
        percent(view.flows.live, u64::from(view.flows.table_size)),
    );

    if !view.vrrp.is_empty() {
        let mut table = Table::new([
            "VRRP",
            "INTERFACE",
            "VRID",
            "STATE",
            "PRIORITY",
            "MASTER",
            "ADDRESSES",
        ]);
        for v in &view.vrrp {
            let priority = if v.effective_priority == v.priority {
                v.priority.to_string()
            } else {
                format!("{} (base {})", v.effective_priority, v.priority)
            };
            table.row([
                v.name.clone(),
                v.interface.clone(),
                v.virtual_router_id.to_string(),
                v.state.clone(),
                priority,
                v.master.map_or_else(|| "-".to_owned(), |m| m.to_string()),
                v.virtual_addresses.join(" "),
            ]);
        }
        out.push('\n');
        out += &table.render();
    }

    let mut services = Table::new([
        "SERVICE",
        "LISTEN",
        "LIVE",
        "VRRP",
        "ACTIVE",
        "SESSIONS",
        "NEW FLOWS",
        "DROPS",
    ]);
    for s in &view.services {
        services.row([
            s.name.clone(),
            format!("{}/{}", s.listen, s.protocol),
            if s.live { "yes" } else { "no" }.to_owned(),
            s.vrrp
                .as_ref()
                .map_or_else(|| "-".to_owned(), |v| format!("{} {}", v.instance, v.state)),
            format!("{} of {}", s.active_backends, s.backends.len()),
            s.current_sessions.to_string(),
            s.traffic.new_flows.to_string(),
            s.traffic.drops.to_string(),
        ]);
    }
    out.push('\n');
    out += &services.render();
    for s in &view.services {
        if let Some(conflict) = &s.primary_conflict {
            out += &format!(
                "{}: NO PRIMARY: {conflict}; new flows are refused\n",
                s.name
            );
        }
    }

    let mut backends = Table::new([
        "SERVICE",
        "BACKEND",
        "ADDRESS",
        "STATE",
        "ADMIN",
        "WEIGHT",
        "CHECK",
        "LAST RESULT",
        "SESSIONS",
        "NEW FLOWS",
        "DB ROLE",
        "LAG",
    ]);
    for s in &view.services {
        for b in &s.backends {
            backends.row([
                s.name.clone(),
                b.name.clone(),
                b.address.clone(),
                b.state.clone(),
                b.admin.clone(),
                b.weight.to_string(),
                b.check
                    .status
                    .clone()
                    .unwrap_or_else(|| b.check.kind.clone()),
                last_result(b),
                b.current_sessions.to_string(),
                b.traffic.new_flows.to_string(),
                b.db_role.clone().unwrap_or_else(|| "-".to_owned()),
                b.replication_lag_seconds
                    .map_or_else(|| "-".to_owned(), |lag| format!("{lag:.1}s")),
            ]);
        }
    }
    out.push('\n');
    out += &backends.render();
    if view.dataplane.mode == "xdp" {
        out += "\nSESSIONS: open flows at the last sweep of the connection table.\n";
    }
    out
}

fn last_result(backend: &BackendView) -> String {
    let check = &backend.check;
    match (&check.last_result, check.last_duration_seconds) {
        (Some(result), Some(took)) => format!("{result} ({:.1} ms)", took * 1000.0),
        (Some(result), None) => result.clone(),
        (None, _) => "-".to_owned(),
    }
}

fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Columns padded to their widest cell, two spaces apart.
struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    fn new(headers: [&str; N]) -> Self {
        Self {
            rows: vec![headers.map(str::to_owned)],
        }
    }

    fn row(&mut self, cells: [String; N]) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths = [0; N];
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(widths) {
                let _ = write!(line, "{cell:width$}  ");
            }
            out += line.trim_end();
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut table = Table::new(["A", "LONGER"]);
        table.row(["wide cell".into(), "x".into()]);
        assert_eq!(table.render(), "A          LONGER\nwide cell  x\n");
    }

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(3 * 60 + 7), "3m07s");
        assert_eq!(duration(2 * 3600 + 5 * 60), "2h05m");
        assert_eq!(duration(3 * 86400 + 3600), "3d01h");
    }
}

//! `results.png`: four bar charts of the medians: throughput relative to the direct path,
//! extra CPU per packet, memory under a thousand connections, and failover times against
//! their targets. Drawn with plotters' bitmap backend; text needs a TrueType font from
//! the system (Debian's `fonts-dejavu-core`).

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::{
    prelude::*,
    style::{
        FontStyle, register_font,
        text_anchor::{HPos, Pos, VPos},
    },
};

use super::results::{Metric, Results, Sys};

/// Fonts tried in turn for the chart's text.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

const BALANCERS: [Sys; 5] = [
    Sys::XdpNative,
    Sys::XdpGeneric,
    Sys::Userspace,
    Sys::Haproxy,
    Sys::Nginx,
];

fn color(sys: Sys) -> RGBColor {
    match sys {
        Sys::Direct => RGBColor(120, 120, 120),
        Sys::XdpNative => RGBColor(31, 84, 160),
        Sys::XdpGeneric => RGBColor(110, 160, 220),
        Sys::Userspace => RGBColor(40, 150, 140),
        Sys::Haproxy => RGBColor(215, 95, 40),
        Sys::Nginx => RGBColor(60, 150, 60),
        Sys::Keepalived => RGBColor(140, 80, 160),
    }
}

/// One chart: groups of bars, one bar per series, and reference lines.
struct Panel {
    title: &'static str,
    y_label: &'static str,
    groups: Vec<&'static str>,
    series: Vec<(Sys, &'static str, Vec<Option<f64>>)>,
    lines: Vec<(f64, &'static str)>,
    /// Per-group targets: (group, value).
    targets: Vec<(usize, f64)>,
}

pub fn draw(results: &Results, path: &Path) -> Result<()> {
    let font = FONTS
        .iter()
        .find_map(|f| std::fs::read(f).ok())
        .ok_or_else(|| {
            anyhow!("no TrueType font found for the chart (install fonts-dejavu-core)")
        })?;
    // plotters keeps the font for the life of the process.
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("the chart's font could not be loaded"))?;
    let med = |m: Metric, s: Sys| results.figure(m, s).map(|f| f.median);
    let ratio = |m: Metric, s: Sys| Some(med(m, s)? / med(m, Sys::Direct)?);
    let extra = |m: Metric, s: Sys| Some(med(m, s)? - med(m, Sys::Direct)?);

    let throughput = Panel {
        title: "Throughput relative to the direct path",
        y_label: "× direct",
        groups: vec![
            "UDP packets/s",
            "new TCP connections/s",
            "HTTP keep-alive req/s",
        ],
        series: BALANCERS
            .iter()
            .map(|&s| {
                (
                    s,
                    s.short(),
                    [Metric::UdpDelivered, Metric::ConnRate, Metric::HttpRps]
                        .iter()
                        .map(|&m| ratio(m, s))
                        .collect(),
                )
            })
            .collect(),
        lines: vec![(1.0, "direct"), (0.9, "target 0.9×")],
        targets: Vec::new(),
    };
    let cpu = Panel {
        title: "Extra CPU over the direct path",
        y_label: "CPU-µs per packet",
        groups: vec!["per UDP datagram", "per HTTP keep-alive packet"],
        series: BALANCERS
            .iter()
            .map(|&s| {
                (
                    s,
                    s.short(),
                    [Metric::UdpCpu, Metric::HttpCpu]
                        .iter()
                        .map(|&m| extra(m, s))
                        .collect(),
                )
            })
            .collect(),
        lines: Vec::new(),
        targets: Vec::new(),
    };
    let memory = Panel {
        title: "Balancer memory (PSS)",
        y_label: "MiB",
        groups: vec!["idle", "1,000 connections"],
        series: BALANCERS
            .iter()
            .map(|&s| {
                (
                    s,
                    s.short(),
                    [Metric::MemIdle, Metric::MemHeld]
                        .iter()
                        .map(|&m| med(m, s))
                        .collect(),
                )
            })
            .collect(),
        lines: Vec::new(),
        targets: Vec::new(),
    };
    let failover_of = |s: Sys| -> Vec<Option<f64>> {
        [
            Metric::BackendDeath,
            Metric::VrrpFast,
            Metric::VrrpSlow,
            Metric::PgPromotion,
        ]
        .iter()
        .map(|&m| med(m, s))
        .collect()
    };
    let failover = Panel {
        title: "Failover (black marks: targets)",
        y_label: "seconds",
        groups: vec![
            "backend death",
            "VRRP 100 ms adverts",
            "VRRP 1 s adverts",
            "PostgreSQL promotion",
        ],
        series: vec![
            (Sys::XdpNative, "gerbang", failover_of(Sys::XdpNative)),
            (Sys::Haproxy, "HAProxy", failover_of(Sys::Haproxy)),
            (
                Sys::Keepalived,
                "keepalived + HAProxy",
                failover_of(Sys::Keepalived),
            ),
        ],
        lines: Vec::new(),
        targets: vec![
            (0, 0.6),
            (1, 0.5),
            (2, 3.6),
            (3, super::promotion::target().as_secs_f64()),
        ],
    };

    let root = BitMapBackend::new(path, (1600, 1100)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let areas = root.split_evenly((2, 2));
    for (area, panel) in areas.iter().zip([throughput, cpu, memory, failover]) {
        draw_panel(area, &panel).map_err(|e| anyhow!("{e:?}"))?;
    }
    root.present()
        .map_err(|e| anyhow!("{e:?}"))
        .with_context(|| format!("writing {}", path.display()))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let values = panel.series.iter().flat_map(|(_, _, v)| v.iter().flatten());
    let top = values
        .clone()
        .copied()
        .chain(panel.lines.iter().map(|(y, _)| *y))
        .chain(panel.targets.iter().map(|(_, y)| *y))
        .fold(0.0_f64, f64::max);
    let bottom = values.copied().fold(0.0_f64, f64::min);
    // Headroom for the legend above the bars.
    let top = if top > 0.0 { top * 1.4 } else { 1.0 };
    let bottom = if bottom < 0.0 { bottom * 1.18 } else { 0.0 };
    let groups = panel.groups.len();
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 24))
        .margin(18)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..groups as f64, bottom..top)?;
    let names = panel.groups.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Labels at every half unit; only the group centres are named.
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&|x| {
            let centre = x - 0.5;
            if (centre - centre.round()).abs() < 1e-6 && centre >= 0.0 {
                names
                    .get(centre.round() as usize)
                    .map_or(String::new(), |n| (*n).to_owned())
            } else {
                String::new()
            }
        })
        .y_desc(panel.y_label)
        .label_style(("sans-serif", 16))
        .draw()?;
    let n = panel.series.len().max(1) as f64;
    let width = 0.8 / n;
    for (j, (sys, label, values)) in panel.series.iter().enumerate() {
        let style = color(*sys).filled();
        let bars = values.iter().enumerate().filter_map(|(g, v)| {
            let x0 = g as f64 + 0.1 + j as f64 * width;
            v.map(|v| Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], style))
        });
        let label = if values.iter().all(Option::is_none) {
            format!("{label} (not run)")
        } else {
            (*label).to_owned()
        };
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], style));
        let texts = values.iter().enumerate().filter_map(|(g, v)| {
            let x = g as f64 + 0.1 + (j as f64 + 0.45) * width;
            v.map(|v| {
                Text::new(
                    short(v),
                    (x, v.max(0.0)),
                    ("sans-serif", 13)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            })
        });
        chart.draw_series(texts)?;
    }
    for (y, label) in &panel.lines {
        let style = BLACK.mix(0.6).stroke_width(1);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, *y), (groups as f64, *y)],
            style,
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            (*label).to_owned(),
            (groups as f64 - 0.02, *y),
            ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Bottom)),
        )))?;
    }
    for &(group, y) in &panel.targets {
        let x = group as f64;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x + 0.05, y), (x + 0.95, y)],
            BLACK.stroke_width(3),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

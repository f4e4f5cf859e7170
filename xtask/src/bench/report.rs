//! `results.md`: the machine, the targets and how each fared, one table per workload with
//! every system's figure and its ratios to the direct path and to HAProxy, and how it
//! was all measured.

use std::{fmt::Write as _, fs, path::Path, process::Command, time::Duration};

use super::{
    Bench,
    measure::Figure,
    promotion,
    results::{Metric, Results, Sys},
    throughput::SYSTEMS,
};

/// Where and when the run happened.
pub struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    os: String,
    load_before: String,
    load_after: String,
    took: Duration,
    versions: Vec<(&'static str, String)>,
}

impl Machine {
    pub fn probe(
        load_before: String,
        load_after: String,
        took: Duration,
        gerbang: &Path,
    ) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown CPU".into());
        let os = fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| "unknown OS".into());
        let mut versions = vec![(
            "gerbang",
            first_line(Command::new(gerbang).arg("--version")),
        )];
        versions.extend(
            [
                ("HAProxy", "haproxy", "-v"),
                ("nginx", "nginx", "-v"),
                ("keepalived", "keepalived", "--version"),
                ("wrk", "wrk", "-v"),
            ]
            .into_iter()
            .map(|(name, program, flag)| (name, first_line(Command::new(program).arg(flag)))),
        );
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: first_line(Command::new("uname").arg("-r")),
            os,
            load_before,
            load_after,
            took,
            versions,
        }
    }
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "not installed".into())
}

/// A number with a unit-appropriate precision.
fn num(value: f64) -> String {
    let abs = value.abs();
    if abs >= 100_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if abs >= 10_000.0 {
        format!("{:.1}k", value / 1000.0)
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn figure(f: Figure) -> String {
    if f.runs > 1 {
        format!("{} ({}–{})", num(f.median), num(f.min), num(f.max))
    } else {
        num(f.median)
    }
}

fn ratio(a: Option<Figure>, b: Option<Figure>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median != 0.0 => format!("{:.2}×", a.median / b.median),
        _ => "—".into(),
    }
}

/// The cell of `metric` for `sys`: its figure, or why there is none.
fn cell(results: &Results, metric: Metric, sys: Sys) -> String {
    match results.figure(metric, sys) {
        Some(f) => figure(f),
        None => match results.reason(metric, sys) {
            Some(reason) => format!("not run: {reason}"),
            None => "—".into(),
        },
    }
}

/// A secondary column's cell: the reason a figure is missing is in the row's first cell.
fn more(results: &Results, metric: Metric, sys: Sys) -> String {
    results.figure(metric, sys).map_or("—".into(), figure)
}

/// A count (errors, failed requests): whole numbers.
fn count(results: &Results, metric: Metric, sys: Sys) -> String {
    results.figure(metric, sys).map_or("—".into(), |f| {
        if f.runs > 1 {
            format!("{:.0} ({:.0}–{:.0})", f.median, f.min, f.max)
        } else {
            format!("{:.0}", f.median)
        }
    })
}

/// `median(sys) - median(direct)` of a cost.
fn extra(results: &Results, metric: Metric, sys: Sys) -> Option<f64> {
    Some(results.figure(metric, sys)?.median - results.figure(metric, Sys::Direct)?.median)
}

fn extra_cell(results: &Results, metric: Metric, sys: Sys) -> String {
    if sys == Sys::Direct {
        return "—".into();
    }
    extra(results, metric, sys).map_or("—".into(), |e| format!("{e:+.2}"))
}

fn extra_ratio(results: &Results, metric: Metric, sys: Sys, peer: Sys) -> String {
    match (extra(results, metric, sys), extra(results, metric, peer)) {
        (Some(a), Some(b)) if sys != Sys::Direct && b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

/// A throughput table: `main` with its ratios, then more columns.
fn table(
    out: &mut String,
    results: &Results,
    main: (Metric, &str),
    more: &[(&str, &dyn Fn(Sys) -> String)],
) {
    let _ = write!(out, "| system | {} | × direct | × HAProxy |", main.1);
    for (title, _) in more {
        let _ = write!(out, " {title} |");
    }
    out.push_str("\n|---|---:|---:|---:|");
    for _ in more {
        out.push_str("---:|");
    }
    out.push('\n');
    for sys in SYSTEMS {
        let f = results.figure(main.0, sys);
        let _ = write!(
            out,
            "| {} | {} | {} | {} |",
            sys.label(),
            cell(results, main.0, sys),
            ratio(f, results.figure(main.0, Sys::Direct)),
            ratio(f, results.figure(main.0, Sys::Haproxy)),
        );
        for (_, column) in more {
            let _ = write!(out, " {} |", column(sys));
        }
        out.push('\n');
    }
    out.push('\n');
}

/// One target's verdict: `Ok(margin)` or the reason it could not be judged.
struct Verdict {
    target: String,
    measured: String,
    outcome: Result<(bool, String), String>,
}

fn verdict_cell(v: &Verdict) -> String {
    match &v.outcome {
        Ok((true, how)) => format!("**met** ({how})"),
        Ok((false, how)) => format!("**missed** ({how})"),
        Err(reason) => format!("not run: {reason}"),
    }
}

fn why(results: &Results, metric: Metric, sys: Sys) -> String {
    results
        .reason(metric, sys)
        .map_or_else(|| format!("no {} figure", sys.label()), str::to_owned)
}

fn targets(results: &Results) -> Vec<Verdict> {
    let med = |m: Metric, s: Sys| results.figure(m, s).map(|f| f.median);
    let mut verdicts = Vec::new();
    for (target, metric) in [
        (
            "XDP native UDP packets/s ≥ 0.9 × direct",
            Metric::UdpDelivered,
        ),
        (
            "XDP native new TCP connections/s ≥ 0.9 × direct",
            Metric::ConnRate,
        ),
    ] {
        let outcome = match (med(metric, Sys::XdpNative), med(metric, Sys::Direct)) {
            (Some(x), Some(d)) => {
                let r = x / d;
                Ok((
                    r >= 0.9,
                    if r >= 0.9 {
                        format!("{r:.2}×")
                    } else {
                        format!("{r:.2}×, {:.0}% short of 0.9×", (0.9 - r) / 0.9 * 100.0)
                    },
                ))
            }
            (None, _) => Err(why(results, metric, Sys::XdpNative)),
            (_, None) => Err(why(results, metric, Sys::Direct)),
        };
        verdicts.push(Verdict {
            target: target.into(),
            measured: format!(
                "{} vs {}",
                more(results, metric, Sys::XdpNative),
                more(results, metric, Sys::Direct)
            ),
            outcome,
        });
    }
    for (target, metric, peer) in [
        (
            "XDP native extra CPU per packet ≤ ⅕ of HAProxy's (HTTP keep-alive, per client packet)",
            Metric::HttpCpu,
            Sys::Haproxy,
        ),
        (
            "XDP native extra CPU per packet ≤ ⅕ of nginx's (HTTP keep-alive, per client packet)",
            Metric::HttpCpu,
            Sys::Nginx,
        ),
        (
            "XDP native extra CPU per packet ≤ ⅕ of nginx's (UDP at a fixed rate)",
            Metric::UdpCpu,
            Sys::Nginx,
        ),
    ] {
        let outcome = match (
            extra(results, metric, Sys::XdpNative),
            extra(results, metric, peer),
        ) {
            (Some(x), Some(p)) if p > 0.0 => {
                let r = x / p;
                Ok((
                    r <= 0.2,
                    if r <= 0.2 {
                        format!("{r:.2}× of {}'s", peer.short())
                    } else {
                        format!("{r:.2}× of {}'s, {:.1}× the allowed", peer.short(), r / 0.2)
                    },
                ))
            }
            (Some(_), Some(_)) => Err(format!("{} costs no more than direct", peer.short())),
            (None, _) => Err(why(results, metric, Sys::XdpNative)),
            (_, None) => Err(why(results, metric, peer)),
        };
        verdicts.push(Verdict {
            target: target.into(),
            measured: format!(
                "{} vs {} CPU-µs extra",
                extra(results, metric, Sys::XdpNative).map_or("—".into(), |e| format!("{e:+.2}")),
                extra(results, metric, peer).map_or("—".into(), |e| format!("{e:+.2}"))
            ),
            outcome,
        });
    }
    let outcome = match (
        med(Metric::LatP99, Sys::XdpNative),
        med(Metric::LatP99, Sys::Direct),
    ) {
        (Some(x), Some(d)) => {
            let over = x - d;
            Ok((
                over <= 50.0,
                if over <= 50.0 {
                    format!("{over:+.0} µs")
                } else {
                    format!("{over:+.0} µs, {:.0} µs over", over - 50.0)
                },
            ))
        }
        (None, _) => Err(why(results, Metric::LatP99, Sys::XdpNative)),
        (_, None) => Err(why(results, Metric::LatP99, Sys::Direct)),
    };
    verdicts.push(Verdict {
        target: "XDP native p99 latency within 50 µs of direct at a moderate rate".into(),
        measured: format!(
            "{} vs {} µs",
            more(results, Metric::LatP99, Sys::XdpNative),
            more(results, Metric::LatP99, Sys::Direct)
        ),
        outcome,
    });
    let outcome = match (
        med(Metric::HttpRps, Sys::Userspace),
        med(Metric::HttpRps, Sys::Haproxy),
        med(Metric::MemHeld, Sys::Userspace),
        med(Metric::MemHeld, Sys::Haproxy),
    ) {
        (Some(u), Some(h), Some(um), Some(hm)) => {
            let met = u >= h && um < hm;
            Ok((
                met,
                format!(
                    "{:.2}× HAProxy's requests/s, {:.2}× its memory",
                    u / h,
                    um / hm
                ),
            ))
        }
        _ => Err(why(results, Metric::HttpRps, Sys::Userspace)),
    };
    verdicts.push(Verdict {
        target: "userspace mode ≥ HAProxy's requests/s, with less memory (1,000 connections)"
            .into(),
        measured: match (
            results.figure(Metric::HttpRps, Sys::Userspace),
            results.figure(Metric::MemHeld, Sys::Userspace),
        ) {
            (Some(rps), Some(mem)) => format!(
                "{} req/s, {} MiB vs HAProxy {} req/s, {} MiB",
                figure(rps),
                figure(mem),
                more(results, Metric::HttpRps, Sys::Haproxy),
                more(results, Metric::MemHeld, Sys::Haproxy)
            ),
            _ => "—".into(),
        },
        outcome,
    });
    let pg_target = format!(
        "PostgreSQL promotion → first write on the new primary through the write service \
         within interval × rise + 1 s ({} ms × {} + 1 s = {:.1} s)",
        promotion::CHECK_INTERVAL.as_millis(),
        promotion::RISE,
        promotion::target().as_secs_f64()
    );
    for (target, metric, limit, peer) in [
        (
            "backend death → last failed request < 0.6 s (checks 200 ms, fall 2, rise 2)",
            Metric::BackendDeath,
            0.6,
            None,
        ),
        (
            "VRRP 100 ms adverts: master death → first answer via the backup < 0.5 s",
            Metric::VrrpFast,
            0.5,
            None,
        ),
        (
            "VRRP 1 s adverts: master death → first answer via the backup within ~3.6 s \
             (allowed: 3.7 s) and ≤ keepalived's (within keepalived's own run-to-run spread)",
            Metric::VrrpSlow,
            3.7,
            Some(Sys::Keepalived),
        ),
        (
            &pg_target,
            Metric::PgPromotion,
            promotion::target().as_secs_f64(),
            None,
        ),
    ] {
        let ours = med(metric, Sys::XdpNative);
        let outcome = match ours {
            None => Err(why(results, metric, Sys::XdpNative)),
            Some(x) => {
                let peer_figure = peer.and_then(|p| results.figure(metric, p));
                let mut met = x < limit;
                let mut how = if met {
                    format!("{x:.3} s")
                } else {
                    format!("{x:.3} s, {:.0} ms over", (x - limit) * 1e3)
                };
                if let Some(peer) = peer_figure {
                    let p = peer.median;
                    // keepalived's own runs spread over 10 to 20 ms (timer phase, ARP,
                    // scheduling): a difference inside that says neither is faster.
                    let spread = peer.max - peer.min;
                    met &= x <= p + spread;
                    if x <= p {
                        let _ = write!(how, "; keepalived {p:.3} s");
                    } else {
                        let _ = write!(
                            how,
                            "; {:.0} ms slower than keepalived's {p:.3} s, whose runs spread \
                             over {:.0} ms",
                            (x - p) * 1e3,
                            spread * 1e3
                        );
                    }
                }
                Ok((met, how))
            }
        };
        verdicts.push(Verdict {
            target: target.into(),
            measured: more(results, metric, Sys::XdpNative),
            outcome,
        });
    }
    verdicts.push(update_verdict(results));
    verdicts.push(old_primary_verdict(results));
    verdicts
}

/// A backend-set update reaches the data path in under 1 ms after the verdict, in every
/// gerbang data plane the backend-death runs measured.
fn update_verdict(results: &Results) -> Verdict {
    const LIMIT_MS: f64 = 1.0;
    let measured: Vec<(Sys, f64)> = [Sys::XdpNative, Sys::Userspace]
        .into_iter()
        .filter_map(|sys| Some((sys, results.figure(Metric::UpdateMax, sys)?.median * 1e3)))
        .collect();
    let outcome = if measured.is_empty() {
        Err(why(results, Metric::UpdateMax, Sys::XdpNative))
    } else {
        let worst = measured.iter().map(|(_, ms)| *ms).fold(0.0, f64::max);
        Ok((worst < LIMIT_MS, format!("longest {worst:.3} ms")))
    };
    Verdict {
        target: "a backend-set update reaches the data path < 1 ms after the verdict \
                 (longest update during the backend-death runs)"
            .into(),
        measured: measured
            .iter()
            .map(|&(sys, ms)| {
                let median = |metric| results.figure(metric, sys).map(|f| f.median);
                match (median(Metric::UpdateUnder1ms), median(Metric::UpdateCount)) {
                    (Some(under), Some(count)) => format!(
                        "{}: {ms:.3} ms ({under:.0} of {count:.0} updates within 1 ms)",
                        sys.label()
                    ),
                    _ => format!("{}: {ms:.3} ms", sys.label()),
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        outcome,
    }
}

/// Zero writes on the old primary after it stopped being primary, over every gerbang data
/// plane measured.
fn old_primary_verdict(results: &Results) -> Verdict {
    let measured: Vec<(Sys, Figure)> = PG_SYSTEMS
        .iter()
        .filter_map(|&s| Some((s, results.figure(Metric::PgOldWrites, s)?)))
        .collect();
    let outcome = if measured.is_empty() {
        Err(why(results, Metric::PgPromotion, Sys::XdpNative))
    } else {
        let worst = measured.iter().map(|(_, f)| f.max).fold(0.0, f64::max);
        let runs: usize = measured.iter().map(|(_, f)| f.runs).sum();
        Ok((
            worst == 0.0,
            if worst == 0.0 {
                format!("none in {runs} promotions")
            } else {
                format!("up to {worst:.0} in one promotion")
            },
        ))
    };
    Verdict {
        target: "PostgreSQL promotion: zero writes reach the old primary after it stops being \
                 primary (stopped, then back as a replica)"
            .into(),
        measured: measured
            .iter()
            .map(|&(s, f)| {
                format!(
                    "{} in {} run{} ({})",
                    if f.runs > 1 {
                        format!("{:.0}–{:.0}", f.min, f.max)
                    } else {
                        format!("{:.0}", f.median)
                    },
                    f.runs,
                    if f.runs == 1 { "" } else { "s" },
                    s.short()
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        outcome,
    }
}

/// The data planes the PostgreSQL promotion is measured with.
const PG_SYSTEMS: [Sys; 2] = [Sys::XdpNative, Sys::Userspace];
/// Share of the machine's busy time taken by other work from which the results say the
/// machine was busy.
const BUSY_OTHER_WORK: f64 = 0.1;

pub fn markdown(bench: &Bench<'_>, machine: &Machine, results: &Results) -> String {
    let p = &bench.params;
    let mut out = String::from("# gerbang benchmark results\n\n");
    let _ = write!(
        out,
        "Written by `cargo xtask bench{}`. Machine: {}, {} cores, kernel {}, {}. Load \
         average (1, 5, 15 min) {} at the start and {} at the end; the run took {:.0} s.",
        if bench.quick { " --quick" } else { "" },
        machine.cpu,
        machine.cores,
        machine.kernel,
        machine.os,
        machine.load_before,
        machine.load_after,
        machine.took.as_secs_f64()
    );
    // The load average at the start still counts the build `cargo xtask bench` just
    // ran, so what says whether others used the machine is the CPU time measured
    // during the runs that was not the benchmark's.
    if let Some(other) = results
        .other_work_share()
        .filter(|&share| share >= BUSY_OTHER_WORK)
    {
        let _ = write!(
            out,
            " **The machine was busy with other work** ({:.0}% of its busy time during the \
             measurements): every system had less CPU than it would alone, and the spread \
             between rounds is wider. Rerun on a quiet machine before comparing releases.",
            other * 100.0
        );
    }
    out.push_str("\n\n");
    out.push_str("Programs: ");
    let versions: Vec<String> = machine
        .versions
        .iter()
        .map(|(name, v)| format!("{name} `{v}`"))
        .collect();
    out.push_str(&versions.join(", "));
    let _ = writeln!(
        out,
        ".\n\nEach figure is the median of {} rounds with the range in brackets; a round \
         measures every system once, one after the other. ![chart](results.png)\n",
        p.rounds
    );

    out.push_str("## Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
    for v in targets(results) {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            v.target,
            v.measured,
            verdict_cell(&v)
        );
    }
    out.push('\n');

    let _ = writeln!(
        out,
        "## UDP, 18-byte datagrams\n\n{} gb-flood processes × {} flows each, as fast as they \
         go for {} s; delivered = datagrams that reached a backend's socket. CPU: the \
         machine's busy time per delivered datagram at a fixed {} datagrams/s, and the extra \
         over the direct path.\n",
        p.senders, p.flows_per_sender, p.seconds, p.udp_rate
    );
    table(
        &mut out,
        results,
        (Metric::UdpDelivered, "delivered packets/s"),
        &[
            ("offered packets/s", &|s| {
                more(results, Metric::UdpOffered, s)
            }),
            ("loss %", &|s| more(results, Metric::UdpLoss, s)),
            ("CPU-µs / packet", &|s| more(results, Metric::UdpCpu, s)),
            ("extra CPU-µs", &|s| extra_cell(results, Metric::UdpCpu, s)),
            ("loss % at fixed rate", &|s| {
                more(results, Metric::UdpCpuLoss, s)
            }),
        ],
    );

    let _ = writeln!(
        out,
        "## TCP, new connections\n\nwrk, {} threads, {} connections, `Connection: close`: every \
         request (a GET with a 3-byte answer) on a new connection, {} s. CPU: machine CPU-µs \
         per connection, which is also CPU-ms per thousand.\n",
        p.wrk_threads, p.connections, p.seconds
    );
    table(
        &mut out,
        results,
        (Metric::ConnRate, "connections/s"),
        &[
            ("errors", &|s| count(results, Metric::ConnErrors, s)),
            ("CPU-µs / connection", &|s| {
                more(results, Metric::ConnCpu, s)
            }),
            ("extra CPU-µs", &|s| {
                extra_cell(results, Metric::ConnCpu, s)
            }),
            ("extra × HAProxy's", &|s| {
                extra_ratio(results, Metric::ConnCpu, s, Sys::Haproxy)
            }),
        ],
    );

    let _ = writeln!(
        out,
        "## HTTP keep-alive\n\nwrk, {} threads, {} connections, {} s, as fast as it goes; \
         latency in µs. CPU: machine CPU-µs per packet crossing the client's interface (both \
         ways), and the extra over the direct path.\n",
        p.wrk_threads, p.connections, p.seconds
    );
    table(
        &mut out,
        results,
        (Metric::HttpRps, "requests/s"),
        &[
            ("p50 µs", &|s| more(results, Metric::HttpP50, s)),
            ("p99 µs", &|s| more(results, Metric::HttpP99, s)),
            ("CPU-µs / packet", &|s| more(results, Metric::HttpCpu, s)),
            ("extra CPU-µs", &|s| {
                extra_cell(results, Metric::HttpCpu, s)
            }),
            ("extra × HAProxy's", &|s| {
                extra_ratio(results, Metric::HttpCpu, s, Sys::Haproxy)
            }),
            ("extra × nginx's", &|s| {
                extra_ratio(results, Metric::HttpCpu, s, Sys::Nginx)
            }),
        ],
    );

    let _ = writeln!(
        out,
        "## Latency at a moderate rate\n\nwrk, {} threads, {} keep-alive connections, each \
         pausing 1 ms between requests (wrk's `delay()`), {} s; µs.\n",
        p.wrk_threads, p.paced_connections, p.seconds
    );
    table(
        &mut out,
        results,
        (Metric::LatP99, "p99 µs"),
        &[
            ("p50 µs", &|s| more(results, Metric::LatP50, s)),
            ("requests/s", &|s| more(results, Metric::LatRate, s)),
            ("p99 − direct µs", &|s| {
                extra_cell(results, Metric::LatP99, s)
            }),
        ],
    );

    let _ = writeln!(
        out,
        "## Memory of the balancer\n\nProportional set size (PSS, MiB) of every process in the \
         balancer's namespace, idle and holding {} client connections (each with one request \
         answered, so a proxy holds its backend side too). gerbang's XDP maps are kernel \
         memory outside PSS and listed apart.\n",
        p.held_connections
    );
    out.push_str(
        "| system | idle MiB | with connections MiB | × HAProxy | BPF maps MiB |\n|---|---:|---:|---:|---:|\n",
    );
    for sys in SYSTEMS.into_iter().filter(|&s| s != Sys::Direct) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            sys.label(),
            cell(results, Metric::MemIdle, sys),
            more(results, Metric::MemHeld, sys),
            ratio(
                results.figure(Metric::MemHeld, sys),
                results.figure(Metric::MemHeld, Sys::Haproxy)
            ),
            results
                .figure(Metric::MemBpf, sys)
                .map_or("—".into(), figure),
        );
    }
    out.push('\n');

    let _ = writeln!(
        out,
        "## Failover\n\nSeconds, {} runs each.\n",
        p.failover_runs
    );
    out.push_str(
        "| event | target | system | seconds | failed requests |\n|---|---|---|---:|---:|\n",
    );
    let pg_limit = format!(
        "≤ {:.1} s (interval × rise + 1 s)",
        promotion::target().as_secs_f64()
    );
    for (event, target, metric, systems) in [
        (
            "backend death → last failed request",
            "< 0.6 s",
            Metric::BackendDeath,
            &[Sys::XdpNative, Sys::Userspace, Sys::Haproxy][..],
        ),
        (
            "VRRP 100 ms adverts: master death → first answer via the backup",
            "< 0.5 s",
            Metric::VrrpFast,
            &[Sys::XdpNative, Sys::Keepalived][..],
        ),
        (
            "VRRP 1 s adverts: master death → first answer via the backup",
            "≤ ~3.6 s, ≤ keepalived",
            Metric::VrrpSlow,
            &[Sys::XdpNative, Sys::Keepalived][..],
        ),
        (
            "PostgreSQL promotion → first write on the new primary",
            pg_limit.as_str(),
            Metric::PgPromotion,
            &PG_SYSTEMS[..],
        ),
    ] {
        for &sys in systems {
            let label = match (metric, sys) {
                (Metric::BackendDeath | Metric::PgPromotion, Sys::XdpNative) => {
                    "gerbang XDP native"
                }
                (_, Sys::XdpNative) => "gerbang pair (XDP generic)",
                _ => sys.label(),
            };
            let failed = match metric {
                Metric::BackendDeath => count(results, Metric::BackendDeathFailed, sys),
                Metric::PgPromotion => count(results, Metric::PgRefused, sys),
                _ => "—".into(),
            };
            let _ = writeln!(
                out,
                "| {event} | {target} | {label} | {} | {failed} |",
                cell(results, metric, sys)
            );
        }
    }
    out.push('\n');
    let old_writes: Vec<String> = PG_SYSTEMS
        .iter()
        .filter(|&&s| results.figure(Metric::PgOldWrites, s).is_some())
        .map(|&s| {
            format!(
                "{} {} after its stop (target: none), {} between the promotion and the end \
                 of its shutdown",
                s.label(),
                count(results, Metric::PgOldWrites, s),
                count(results, Metric::PgSplitWrites, s)
            )
        })
        .collect();
    if !old_writes.is_empty() {
        let _ = writeln!(
            out,
            "Writes that reached the old PostgreSQL primary, per promotion: {}. Once its \
             shutdown is complete only the write service could take a write there (then \
             while it is rebuilt as a replica, and after: refused as read-only, or answered). \
             Between the promotion and the end of the shutdown both servers are primaries, \
             and the write service keeps the one it knows until its next check ({} ms) tells \
             it otherwise: an operator who needs none there stops (fences) the old primary \
             before promoting. The failed requests of the promotion are writes that failed \
             while the service moved.\n",
            old_writes.join("; "),
            promotion::CHECK_INTERVAL.as_millis()
        );
    }

    out.push_str("## Notes\n\n");
    if let Some(other) = results.other_work_share() {
        let _ = writeln!(
            out,
            "- CPU: over all CPU measurements the benchmark's own processes and the kernel's \
             threads used {:.0} CPU-s, the machine as a whole (`/proc/stat`) {:.0} CPU-s: \
             {:.0}% of the busy time was other work, which the figures leave out (see How it \
             is measured).",
            results.cpu_ours,
            results.cpu_machine,
            other * 100.0
        );
    }
    for note in &results.notes {
        let _ = writeln!(out, "- {note}");
    }
    out.push('\n');
    out.push_str(METHOD);
    out
}

/// How the figures are made, for whoever reads them.
const METHOD: &str = "## How it is measured

**Topology.** Network namespaces on this machine: a client, the balancer, a switch (a
bridge) and three backends, joined by veth pairs (`cargo xtask bench` builds them and
removes them at the end). Every system, the direct path included, carries the traffic
across the same three veth pairs (client ↔ balancer, balancer ↔ switch, switch ↔ backend)
and the bridge. The peers of the balancer's interfaces carry an `XDP_PASS` program and
have GRO on (what native XDP redirect and `XDP_TX` need on veth); the senders have TX
checksum offload off (XDP needs complete checksums) — the same for every system.

**Direct path.** No balancer: the balancer's namespace is a plain router (IP forwarding
on, no netfilter rules, no XDP) and the clients address the backends themselves, spread
as round-robin would spread them (wrk thread *i* and UDP flow *i* go to backend *i* mod
3). It crosses the same veths and the same namespaces as every balancer, so it is the
ceiling of this machine for this path, not of a bare link. Routing in the kernel costs
more per packet than a veth hop, so a balancer that skips the stack (XDP) can come close
to it or pass it.

**Balancers.** gerbang's release binary (`attach = \"native\"` or `\"generic\"`; health
checks off for the throughput runs so they add no load; SNAT to the balancer's backend
address), HAProxy 2.6 (`mode tcp`, `balance roundrobin`, `source` = the same address,
two threads), nginx 1.22 (`stream`, round-robin, `proxy_bind` to the same address,
two workers, `reuseport`; UDP sessions of 60 s like gerbang's UDP flows). HAProxy has no
UDP, so it has no UDP figures.

**Backends.** nginx with two workers each, answering every request with a fixed 3-byte
body, no logging, keep-alive without limit. The backends keep no TIME_WAIT sockets
(`net.ipv4.tcp_max_tw_buckets = 0`): every round restarts each balancer, and gerbang's
SNAT ports then start again from the bottom of the range; a reused port that meets the
backend's TIME_WAIT from the previous round is refused by its PAWS check whenever the
timestamps of the two unrelated client connections go backwards, which stalls about
half of the new connections (measured: new connections fell from ~5,000/s to ~110/s,
`TcpExtPAWSTimewait` counting the refusals). That is a finding about SNAT port reuse,
not a property of one round. UDP goes to a socket nobody reads: the kernel
counts every datagram that reaches it (`InDatagrams`, or `RcvbufErrors` once its buffer is
full) at no cost to a process, so the backends never limit a balancer. Datagrams with bad
checksums are not counted.

**Loads.** UDP: `gb-flood` (`tests/src/bin/gb-flood.rs`), 18-byte datagrams in
`sendmmsg` batches of 64 from its own sockets (one per flow). Loss = sent − delivered.
TCP and HTTP: wrk 4.1 with a Lua `setup()` that gives each thread its target.

**CPU.** Read around each run. XDP and the kernel's packet path run in softirq on
whatever core the packet lands on, so the balancer's own process time would miss most
of it. The machine's busy time from `/proc/stat` (user, system, irq, softirq, steal) has
it all, but on a shared machine also other people's work, some of it in processes this
machine's `/proc` cannot see. So the figures use the CPU time of everything the
benchmark runs (every process inside its namespaces, and the load generators xtask
reaps) plus the kernel's threads (ksoftirqd...): this kernel (tick-based accounting)
charges softirq work to the task it interrupts, which for this traffic is one of those.
On a quiet machine the two readings agree; the Notes give both totals. The figures
include the load generators and the backends, which do the same work for every system,
so the *extra* over the direct path is the balancer's cost.

**Memory.** PSS from `/proc/PID/smaps_rollup` summed over the balancer's processes;
BPF map memory from the `memlock` of the map descriptors gerbang holds.

**Failover.** Backend death: four client threads send requests back to back (new
connection each, 1 s timeout) through the balancer; one backend's nginx is SIGKILLed;
the figure is the time from the kill to the start of the last request that failed.
gerbang and HAProxy use the same checks (HTTP GET every 200 ms, fall 2, rise 2, timeout
200 ms) and cut the dead backend's sessions. VRRP: two balancers, a client and two
backends on one bridge; the master (priority 150) is killed the way a host loses power
(SIGKILL, link down, addresses gone); a request starts every 5 ms with a 100 ms
timeout; the figure is the time from the kill to the end of the first request answered
through the backup (priority 100). Both pairs speak VRRPv3 with the same interval; the
keepalived pair serves with HAProxy (the stack gerbang replaces), the gerbang pair with
XDP in generic mode.

**PostgreSQL promotion.** Two backends run PostgreSQL 15: a primary and its streaming
replica (`pg_basebackup -R`). gerbang serves them on the VIP's port 6432 as a `role =
\"primary\"` service with a `postgres` role check (`pg_is_in_recovery()` every 500 ms,
rise 2, fall 3). Two client threads write through the VIP, each on a persistent
connection that is reopened after an error (a connection pool's behaviour), one write
every 10 ms per thread: `INSERT ... RETURNING inet_server_addr()`, so each answer names
the server that took the write. A run promotes the replica (`pg_promote(wait => false)`,
what `pg_ctl promote` does) and at once stops the old primary (fast shutdown, waited
for); the writes go on while the old primary's host is rebuilt as a replica of the new
one (`pg_basebackup`: PostgreSQL's demotion) and until gerbang's checks have seen it
back. The figure is the time from the promotion to the end of the first write answered
by the new primary; the target is the replication issue's `interval × rise + 1 s`. The
writes that reached the old primary's host after its shutdown was complete, answered by
it or refused by it as read-only, must be none; those it took between the promotion and
the end of its shutdown are counted apart. The next run promotes that replica back.
";

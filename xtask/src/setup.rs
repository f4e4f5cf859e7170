//! `cargo xtask setup`: the toolchain bootstrap.
//!
//! Gives a fresh Debian 12 machine what building and testing gerbang needs: system packages
//! from apt, the nightly toolchain with `rust-src` (the XDP program is built with
//! `-Z build-std=core`), bpf-linker built against LLVM 22, the LLVM both installed rustc
//! toolchains use, and cargo-fuzz for the fuzz targets in `fuzz/`. Every check is a cheap
//! query, so on a ready machine this takes a few tens of milliseconds. Installing needs root
//! on a Debian-like system; anywhere else it says what is missing and what to run by hand.

use std::{
    collections::HashMap,
    env, fs,
    io::{self, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::context::{command_line, is_root, query, run_captured};

/// A system package the build or the tests need.
struct Package {
    /// Its Debian name.
    name: &'static str,
    /// A program it installs: how its presence is checked where there is no dpkg.
    program: &'static str,
}

/// The system packages, installed with apt. Features that need more peers add them here.
const PACKAGES: &[Package] = &[
    Package {
        name: "iproute2",
        program: "ip",
    },
    Package {
        name: "ethtool",
        program: "ethtool",
    },
    Package {
        name: "curl",
        program: "curl",
    },
    Package {
        name: "nftables",
        program: "nft",
    },
    Package {
        name: "keepalived",
        program: "keepalived",
    },
    // The replication tests' databases (tests/tests/database.rs). Debian keeps PostgreSQL's
    // server programs off PATH; psql is the one of its programs elsewhere too.
    Package {
        name: "postgresql",
        program: "psql",
    },
    Package {
        name: "mariadb-server",
        program: "mariadbd",
    },
    // `cargo xtask bench`: the peers it compares with, its backends and its HTTP load.
    Package {
        name: "haproxy",
        program: "haproxy",
    },
    Package {
        name: "nginx",
        program: "nginx",
    },
    Package {
        name: "libnginx-mod-stream",
        program: "nginx",
    },
    Package {
        name: "wrk",
        program: "wrk",
    },
    // The observability tests parse /metrics with the reference OpenMetrics parser...
    Package {
        name: "python3-prometheus-client",
        program: "python3",
    },
    // ...and look at the status page in a headless browser.
    Package {
        name: "chromium",
        program: "chromium",
    },
    // Cross builds for 32- and 64-bit ARM (Raspberry Pi), and running them here.
    Package {
        name: "gcc-arm-linux-gnueabihf",
        program: "arm-linux-gnueabihf-gcc",
    },
    Package {
        name: "gcc-aarch64-linux-gnu",
        program: "aarch64-linux-gnu-gcc",
    },
    // The C library to link against: the cross compilers only recommend it, and apt here
    // installs no recommends, so without these the link fails on `crti.o`.
    Package {
        name: "libc6-dev-armhf-cross",
        program: "arm-linux-gnueabihf-gcc",
    },
    Package {
        name: "libc6-dev-arm64-cross",
        program: "aarch64-linux-gnu-gcc",
    },
    Package {
        name: "qemu-user",
        program: "qemu-arm",
    },
];

/// Targets `cargo xtask build --target` builds for, and the test command checks under
/// qemu-user.
pub const CROSS_TARGETS: [&str; 2] = ["armv7-unknown-linux-gnueabihf", "aarch64-unknown-linux-gnu"];

/// LLVM's development files: wanted only while bpf-linker still has to be built.
const LLVM_DEV: &str = "llvm-22-dev";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// bpf-linker's default features want LLVM 23; rustc here uses LLVM 22.
const BPF_LINKER_FEATURE: &str = "llvm-22";
const NIGHTLY: &str = "nightly";

/// Something setup ensures, and what to do when it is missing.
struct Item {
    label: &'static str,
    missing: Option<Missing>,
}

struct Missing {
    /// One short paragraph: what is missing and how to get it.
    advice: String,
    /// Commands that install it, in order; shown when xtask cannot run them.
    commands: Vec<Command>,
    /// Set when xtask may run `commands` itself (root on a Debian-like system): what they
    /// do, for the progress line.
    installing: Option<String>,
}

/// Checks every item and installs what is missing, or explains how when it cannot.
pub fn ensure() -> Result<()> {
    let debian = is_debian_like();
    let can_install = debian && is_root();
    let linker = bpf_linker_installed();
    let items = [
        if debian {
            apt_packages(linker, can_install)?
        } else {
            other_packages()
        },
        nightly(can_install),
        bpf_linker(linker, debian, can_install),
        cross_targets(),
        cargo_fuzz(),
    ];

    let mut unresolved = Vec::new();
    for item in items {
        match item.missing {
            None => println!("setup: {}: ok", item.label),
            Some(Missing {
                installing: Some(installing),
                commands,
                ..
            }) => install(item.label, &installing, commands)?,
            Some(missing) => {
                println!("setup: {}: missing", item.label);
                unresolved.push(missing);
            }
        }
    }
    if unresolved.is_empty() {
        // cargo installs into $CARGO_HOME/bin, which the build finds only through PATH.
        if !linker && !bpf_linker_installed() {
            bail!(
                "bpf-linker was installed, but `bpf-linker --version` does not find it: \
                 add {} to PATH",
                cargo_home().unwrap_or_default().join("bin").display()
            );
        }
        return Ok(());
    }
    for missing in &unresolved {
        println!("\n{}", missing.advice);
        for cmd in &missing.commands {
            println!("    {}", command_line(cmd));
        }
    }
    println!();
    bail!(
        "{} setup item(s) missing; do the above, then run `cargo xtask setup` again",
        unresolved.len()
    )
}

/// Runs an item's commands with their output hidden unless they fail, and says how long it took.
fn install(label: &str, installing: &str, commands: Vec<Command>) -> Result<()> {
    print!("setup: {label}: {installing} ... ");
    io::stdout().flush()?;
    let start = Instant::now();
    let mut commands = commands.into_iter();
    if let Err(err) = commands.try_for_each(|mut cmd| run_captured(&mut cmd)) {
        println!("failed");
        return Err(err.context(format!("installing {label}")));
    }
    println!("done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

// ---- system packages ----

fn apt_packages(linker_ready: bool, can_install: bool) -> Result<Item> {
    let mut wanted: Vec<&str> = PACKAGES.iter().map(|p| p.name).collect();
    if !linker_ready {
        wanted.insert(0, LLVM_DEV);
    }
    let missing = dpkg_missing(&wanted)?;
    let label = "apt packages";
    if missing.is_empty() {
        return Ok(Item {
            label,
            missing: None,
        });
    }
    let mut commands = Vec::new();
    // A fresh machine's package lists can predate a package (llvm-22-dev comes from
    // bookworm-security); refreshing them is slow, so only when something has no candidate.
    if !apt_candidates_known(&missing) {
        commands.push(apt_get(["update"]));
    }
    commands.push(apt_get(
        ["install", "-y", "--no-install-recommends"]
            .into_iter()
            .chain(missing.iter().copied()),
    ));
    Ok(Item {
        label,
        missing: Some(Missing {
            advice: format!(
                "Missing system packages: {}. Run as root:",
                missing.join(", ")
            ),
            commands,
            installing: can_install
                .then(|| format!("installing {} with apt-get", missing.join(" "))),
        }),
    })
}

fn apt_get<'a>(args: impl IntoIterator<Item = &'a str>) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        // Wait for another apt (say unattended-upgrades on a fresh VM) instead of failing.
        .args(["-o", "DPkg::Lock::Timeout=300"])
        .args(args);
    cmd
}

/// The wanted packages dpkg does not report as installed.
fn dpkg_missing<'a>(wanted: &[&'a str]) -> Result<Vec<&'a str>> {
    // Exits non-zero if dpkg has never heard of one of them; the others are still listed.
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(wanted)
        .output()
        .context("could not run dpkg-query")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.strip_suffix(" install ok installed"))
        .collect();
    Ok(wanted
        .iter()
        .copied()
        .filter(|name| !installed.contains(name))
        .collect())
}

/// Whether `apt-cache policy` shows an install candidate for every package.
fn apt_candidates_known(packages: &[&str]) -> bool {
    let Some(policy) = query(Command::new("apt-cache").arg("policy").args(packages)) else {
        return false;
    };
    // Blocks of "name:" followed by indented "Candidate: <version>" lines; a package apt
    // does not know has no block at all.
    let mut candidates = HashMap::new();
    let mut current = None;
    for line in policy.lines() {
        if !line.starts_with(' ') {
            current = line.strip_suffix(':');
        } else if let (Some(name), Some(version)) =
            (current, line.trim().strip_prefix("Candidate:"))
        {
            candidates.insert(name, version.trim() != "(none)");
        }
    }
    packages
        .iter()
        .all(|name| candidates.get(name).copied().unwrap_or(false))
}

/// Off Debian, packages are checked by the programs they install and left to the operator.
fn other_packages() -> Item {
    let missing: Vec<_> = PACKAGES
        .iter()
        .filter(|p| !program_exists(p.program))
        .map(|p| format!("{} (`{}`)", p.name, p.program))
        .collect();
    Item {
        label: "system packages",
        missing: (!missing.is_empty()).then(|| Missing {
            advice: format!(
                "Missing system programs; install them with your package manager: {}.",
                missing.join(", ")
            ),
            commands: Vec::new(),
            installing: None,
        }),
    }
}

fn program_exists(name: &str) -> bool {
    // Non-root PATHs often lack the sbin directories where ip and ethtool live.
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .any(|dir| {
            fs::metadata(dir.join(name))
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

fn is_debian_like() -> bool {
    if Path::new("/etc/debian_version").exists() {
        return true;
    }
    let Ok(os_release) = fs::read_to_string("/etc/os-release")
        .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
    else {
        return false;
    };
    os_release
        .lines()
        .filter_map(|line| {
            line.strip_prefix("ID=")
                .or_else(|| line.strip_prefix("ID_LIKE="))
        })
        .flat_map(|value| value.trim_matches(['"', '\'']).split_whitespace())
        .any(|id| id == "debian")
}

// ---- nightly toolchain ----

fn nightly(can_install: bool) -> Item {
    let label = "nightly toolchain with rust-src";
    let rustup = |args: &[&str]| {
        let mut cmd = Command::new("rustup");
        cmd.args(args);
        cmd
    };
    let component_add = || rustup(&["component", "add", "rust-src", "--toolchain", NIGHTLY]);
    let toolchain_install = || {
        rustup(&[
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ])
    };
    let (installing, advice, command) = match nightly_state() {
        Nightly::Ready => {
            return Item {
                label,
                missing: None,
            };
        }
        Nightly::NoRustSrc => (
            can_install.then_some("adding rust-src to nightly"),
            "The nightly toolchain lacks rust-src, which building the XDP program with \
             -Z build-std=core needs. Run as the user who builds:",
            component_add(),
        ),
        Nightly::Missing => (
            can_install.then_some("installing nightly with rust-src"),
            "The nightly toolchain (with rust-src) that builds the XDP program is not \
             installed. Run as the user who builds:",
            toolchain_install(),
        ),
        Nightly::NoRustup => (
            None,
            "rustup is not on PATH. Install it (https://rustup.rs), then run as the user \
             who builds:",
            toolchain_install(),
        ),
    };
    Item {
        label,
        missing: Some(Missing {
            advice: advice.into(),
            commands: vec![command],
            installing: installing.map(String::from),
        }),
    }
}

enum Nightly {
    Ready,
    NoRustSrc,
    Missing,
    NoRustup,
}

fn nightly_state() -> Nightly {
    let rustup = || {
        let mut cmd = Command::new("rustup");
        // A query must not download a toolchain.
        cmd.env("RUSTUP_AUTO_INSTALL", "0");
        cmd
    };
    let installed =
        query(rustup().args(["component", "list", "--toolchain", NIGHTLY, "--installed"]));
    if let Some(components) = installed {
        return if components.lines().any(|c| c.trim() == "rust-src") {
            Nightly::Ready
        } else {
            Nightly::NoRustSrc
        };
    }
    // Only `toolchain install` for a nightly that is absent: on an installed one it would
    // update it, changing the compiler under everybody's feet.
    match query(rustup().args(["toolchain", "list"])) {
        None => Nightly::NoRustup,
        Some(list) if list.lines().any(|t| t.starts_with("nightly-")) => Nightly::NoRustSrc,
        Some(_) => Nightly::Missing,
    }
}

// ---- cross targets ----

/// The standard library of each cross target, for the toolchain that builds gerbang.
fn cross_targets() -> Item {
    let label = "Rust targets for ARM";
    let installed = query(
        Command::new("rustup")
            .env("RUSTUP_AUTO_INSTALL", "0")
            .args(["target", "list", "--installed"]),
    )
    .unwrap_or_default();
    let missing: Vec<&str> = CROSS_TARGETS
        .into_iter()
        .filter(|target| !installed.lines().any(|t| t.trim() == *target))
        .collect();
    if missing.is_empty() {
        return Item {
            label,
            missing: None,
        };
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add"]).args(&missing);
    Item {
        label,
        missing: Some(Missing {
            advice: "The Rust standard library for the ARM targets (Raspberry Pi builds) is \
                     missing. Run as the user who builds:"
                .into(),
            commands: vec![cmd],
            // rustup installs into the builder's home: no root needed.
            installing: Some(format!("adding {}", missing.join(", "))),
        }),
    }
}

// ---- cargo-fuzz ----

/// The version installed when none is: 0.13.2 builds with the stable toolchain here and
/// drives the nightly one (`rustup run nightly cargo fuzz`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// cargo-fuzz, which builds and runs the fuzz targets (`cargo xtask fuzz`, and the test
/// command's short runs). Any installed version is kept.
fn cargo_fuzz() -> Item {
    let label = "cargo-fuzz";
    if query(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Item {
            label,
            missing: None,
        };
    }
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]);
    Item {
        label,
        missing: Some(Missing {
            advice: "cargo-fuzz, which builds and runs the fuzz targets, is not installed. \
                     Run as the user who builds:"
                .into(),
            commands: vec![cmd],
            // cargo installs into the builder's home: no root needed.
            installing: Some(format!(
                "building cargo-fuzz {CARGO_FUZZ_VERSION} with cargo install (about two minutes)"
            )),
        }),
    }
}

// ---- bpf-linker ----

fn bpf_linker(installed: bool, debian: bool, can_install: bool) -> Item {
    let label = "bpf-linker 0.13.0 (LLVM 22)";
    if installed {
        return Item {
            label,
            missing: None,
        };
    }
    let mut cmd = Command::new("cargo");
    cmd.env(
        "LLVM_PREFIX",
        if debian {
            LLVM_PREFIX
        } else {
            "<LLVM 22 prefix>"
        },
    )
    .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
    .args(["--locked", "--no-default-features", "--features"])
    .arg(BPF_LINKER_FEATURE);
    let advice = if debian {
        format!(
            "bpf-linker {BPF_LINKER_VERSION} built against LLVM 22 is not installed. Build it \
             (about a minute; needs {LLVM_DEV}) as the user who builds:"
        )
    } else {
        format!(
            "bpf-linker {BPF_LINKER_VERSION} built against LLVM 22 is not installed. Install \
             LLVM 22's development files (llvm-config, headers, libLLVM), then build it as the \
             user who builds, with LLVM_PREFIX set to their prefix:"
        )
    };
    Item {
        label,
        missing: Some(Missing {
            advice,
            commands: vec![cmd],
            installing: can_install.then(|| {
                format!(
                    "building bpf-linker {BPF_LINKER_VERSION} with cargo install (about a minute)"
                )
            }),
        }),
    }
}

/// Whether `bpf-linker` on PATH is 0.13.0 and cargo recorded installing it for LLVM 22.
fn bpf_linker_installed() -> bool {
    let version = query(Command::new("bpf-linker").arg("--version"));
    version.is_some_and(|v| v.trim() == format!("bpf-linker {BPF_LINKER_VERSION}"))
        && installed_for_llvm_22()
}

fn installed_for_llvm_22() -> bool {
    let Some(home) = cargo_home() else {
        return false;
    };
    let Ok(text) = fs::read_to_string(home.join(".crates2.json")) else {
        return false;
    };
    let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let prefix = format!("bpf-linker {BPF_LINKER_VERSION} ");
    record["installs"].as_object().is_some_and(|installs| {
        installs.iter().any(|(package, install)| {
            package.starts_with(&prefix)
                && install["features"]
                    .as_array()
                    .is_some_and(|features| features.iter().any(|f| f == BPF_LINKER_FEATURE))
        })
    })
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
}

//! Builds the XDP program (`lb-ebpf`) for the BPF target and leaves the object in
//! `$OUT_DIR/lb-ebpf`, where `src/dataplane/xdp.rs` embeds it.
//!
//! We drive cargo ourselves rather than through aya-build because the program needs
//! `-C target-cpu=v3` (atomic fetch-and-add for exact round-robin across CPUs), and
//! aya-build 0.2 does not let a project add compiler flags. Needs the nightly toolchain with
//! rust-src and bpf-linker: `cargo xtask setup` installs both.
//!
//! Set `GERBANG_SKIP_EBPF=1` to build without the object (cross builds for hosts without
//! XDP); the binary then refuses XDP mode with a clear error.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const EBPF_PACKAGE: &str = "lb-ebpf";
const BPF_TARGET: &str = "bpfel-unknown-none";
const TOOLCHAIN: &str = "nightly";

fn main() {
    println!("cargo:rerun-if-env-changed=GERBANG_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join(EBPF_PACKAGE);

    if env::var_os("GERBANG_SKIP_EBPF").is_some_and(|v| v == "1") {
        fs::write(&object, []).expect("write empty eBPF object placeholder");
        return;
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest_dir
        .parent()
        .expect("lb-userspace sits in the workspace");
    for input in [
        "lb-ebpf/src",
        "lb-ebpf/Cargo.toml",
        "lb-common/src",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }

    // A separate target directory: cargo holds a lock on ours while build scripts run.
    let target_dir = out_dir.join("ebpf-target");
    let status = Command::new("rustup")
        .args([
            "run",
            TOOLCHAIN,
            "cargo",
            "build",
            "--package",
            EBPF_PACKAGE,
        ])
        .args(["--release", "--target", BPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags())
        // Let `rustup run` pick the toolchain, not the one running this build script.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(workspace)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!("building the XDP program failed ({status})")),
        Err(err) => fail(&format!(
            "could not run `rustup run {TOOLCHAIN} cargo`: {err}"
        )),
    }

    let built = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join(EBPF_PACKAGE);
    copy(&built, &object);
}

fn rustflags() -> String {
    // \x1f separates flags in CARGO_ENCODED_RUSTFLAGS.
    ["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"].join("\x1f")
}

fn copy(from: &Path, to: &Path) {
    if let Err(err) = fs::copy(from, to) {
        fail(&format!("copying {} failed: {err}", from.display()));
    }
}

fn fail(what: &str) -> ! {
    panic!(
        "{what}.\nThe XDP program needs the {TOOLCHAIN} toolchain with rust-src and bpf-linker; \
         `cargo xtask setup` installs them. To build without XDP support, set GERBANG_SKIP_EBPF=1."
    );
}

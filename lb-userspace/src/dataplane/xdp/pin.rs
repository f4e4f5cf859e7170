//! The pin directory: where the XDP program's maps and links live on bpffs, so that a
//! controller restart or upgrade neither detaches the program nor loses a flow.
//!
//! Layout: `<pin_path>/abi-<N>/maps/<MAP>` and `<pin_path>/abi-<N>/links/<interface>`. The
//! ABI directory means a controller only adopts maps whose layout it was built for; a
//! newer layout starts fresh beside the old one.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use lb_common::{ABI_VERSION, map_names};
use tracing::info;

/// Where distributions mount bpffs; gerbang mounts it there itself when nothing is.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Every map, pinned so that a new program instance shares its state with the old one.
pub const PINNED_MAPS: [&str; 15] = [
    map_names::SERVICES,
    map_names::LOCAL_ADDRS,
    map_names::RING_SELECT,
    map_names::RINGS,
    map_names::RR_CURSORS,
    map_names::BACKENDS,
    map_names::FLOWS,
    map_names::NAT_RETURN,
    map_names::NEXT_HOPS,
    map_names::DEVICES,
    map_names::TIMEOUTS,
    map_names::SNAT_CURSOR,
    map_names::SERVICE_STATS,
    map_names::BACKEND_STATS,
    map_names::EVENTS,
];

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Prepares `<pin_path>/abi-<N>` on bpffs, mounting bpffs on /sys/fs/bpf if the path is
    /// beneath it and nothing is mounted there yet.
    pub fn prepare(pin_path: &Path) -> Result<Self> {
        if !is_bpffs(pin_path.parent().unwrap_or(pin_path)) && pin_path.starts_with(DEFAULT_BPFFS) {
            let bpffs = Path::new(DEFAULT_BPFFS);
            if !is_bpffs(bpffs) {
                mount_bpffs(bpffs)?;
                info!(path = DEFAULT_BPFFS, "mounted bpffs");
            }
        }
        let root = pin_path.join(format!("abi-{ABI_VERSION}"));
        for dir in [root.join("maps"), root.join("links")] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if !is_bpffs(&root) {
            bail!(
                "{} (dataplane.pin_path) is not on a BPF filesystem, so the program's state \
                 could not survive a restart. Mount one there (`mount -t bpf bpf DIR`) or use \
                 a path under /sys/fs/bpf",
                pin_path.display()
            );
        }
        Ok(Self { root })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn link(&self, interface: &str) -> PathBuf {
        self.root.join("links").join(interface)
    }

    /// Interfaces with a pinned link, from a previous run.
    pub fn pinned_links(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.root.join("links"))? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Whether a previous run left its maps here.
    pub fn has_maps(&self) -> bool {
        self.map(map_names::FLOWS).exists()
    }

    /// Removes every pin: the next start is a cold one.
    pub fn remove_all(&self) -> Result<()> {
        for sub in ["links", "maps"] {
            let dir = self.root.join(sub);
            if dir.exists() {
                for entry in fs::read_dir(&dir)? {
                    fs::remove_file(entry?.path())?;
                }
                fs::remove_dir(&dir)?;
            }
        }
        let _ = fs::remove_dir(&self.root);
        Ok(())
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

fn mount_bpffs(target: &Path) -> Result<()> {
    let source = CString::new("bpf")?;
    nix::mount::mount(
        Some(source.as_c_str()),
        target,
        Some(source.as_c_str()),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs on {}", target.display()))
}

//! Attaching the XDP program to the configured interfaces, in the mode the config asks for,
//! or taking over the attachment a previous run left pinned.

use std::{ffi::CString, io};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{
    ProgramError, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::{XdpLink, XdpLinkId},
};
use tracing::{info, warn};

use super::pin::PinDir;
use crate::config::AttachMode;

/// One interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    /// How it was attached; `None` when taken over from a previous run.
    pub mode: Option<XdpMode>,
    link: Link,
}

/// Who keeps the attachment alive.
#[derive(Debug)]
enum Link {
    /// The program object: dropping it detaches.
    Owned,
    /// A pin on bpffs: the attachment outlives this process until unpinned.
    Pinned(PinnedLink),
}

impl Attachment {
    /// Lets go of the attachment. With `detach` false a pinned one keeps forwarding after
    /// this process exits (restart, upgrade).
    pub fn release(self, detach: bool) -> Result<()> {
        match self.link {
            Link::Pinned(pinned) if detach => {
                let link = pinned.unpin().context("unpinning the XDP link")?;
                drop(link);
            }
            Link::Pinned(pinned) => drop(pinned),
            Link::Owned => {}
        }
        Ok(())
    }
}

/// Attaches `program` to `interface`: takes over the link a previous run pinned there if
/// there is one (swapping in this program atomically, so no packet misses it), otherwise
/// attaches afresh in `mode` and, with `pins`, pins the new link.
pub fn attach(
    program: &mut Xdp,
    interface: &str,
    mode: AttachMode,
    pins: Option<&PinDir>,
) -> Result<Attachment> {
    let ifindex = interface_index(interface)?;
    let Some(pins) = pins else {
        let (mode, _) = attach_fresh(program, interface, ifindex, mode)?;
        return Ok(Attachment {
            interface: interface.to_string(),
            ifindex,
            mode: Some(mode),
            link: Link::Owned,
        });
    };
    let path = pins.link(interface);
    if path.exists() {
        match take_over(program, &path) {
            Ok(pinned) => {
                info!(
                    interface,
                    ifindex, "XDP attachment of the previous run taken over"
                );
                return Ok(Attachment {
                    interface: interface.to_string(),
                    ifindex,
                    mode: None,
                    link: Link::Pinned(pinned),
                });
            }
            Err(err) => {
                // The interface was recreated since: the old link points at nothing.
                warn!(
                    interface,
                    "stale pinned XDP link ({err:#}); attaching afresh"
                );
                std::fs::remove_file(&path).context("removing the stale link pin")?;
            }
        }
    }
    let (mode, id) = attach_fresh(program, interface, ifindex, mode)?;
    let link: FdLink = program.take_link(id)?.try_into().map_err(|err| {
        anyhow!("the kernel attached {interface} without a BPF link, which cannot be pinned: {err}")
    })?;
    let pinned = link
        .pin(&path)
        .with_context(|| format!("pinning the XDP link at {}", path.display()))?;
    Ok(Attachment {
        interface: interface.to_string(),
        ifindex,
        mode: Some(mode),
        link: Link::Pinned(pinned),
    })
}

/// Swaps `program` into the pinned link at `path` and returns a fresh handle on the pin.
fn take_over(program: &mut Xdp, path: &std::path::Path) -> Result<PinnedLink> {
    let link: FdLink = PinnedLink::from_pin(path)?.into();
    let link = XdpLink::try_from(link)?;
    let id = program.attach_to_link(link)?;
    // The pin keeps the attachment; this process holds it through a new handle.
    drop(program.take_link(id)?);
    Ok(PinnedLink::from_pin(path)?)
}

/// "native" or "generic", as the config and the logs call them.
pub fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "generic",
        XdpMode::Hardware => "offload",
        XdpMode::Default => "default",
    }
}

/// Attaches `program` to `interface` in `mode` (auto: native, else generic).
fn attach_fresh(
    program: &mut Xdp,
    interface: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<(XdpMode, XdpLinkId)> {
    let attached = match mode {
        AttachMode::Native => try_attach(program, interface, ifindex, XdpMode::Driver),
        AttachMode::Generic => try_attach(program, interface, ifindex, XdpMode::Skb),
        AttachMode::Auto => match try_attach(program, interface, ifindex, XdpMode::Driver) {
            Ok(attachment) => Ok(attachment),
            Err(native_error) => {
                warn!(
                    interface,
                    "native XDP is not available ({native_error:#}); using generic XDP, which \
                     works on any interface but costs more CPU per packet"
                );
                try_attach(program, interface, ifindex, XdpMode::Skb)
            }
        },
    }?;
    info!(
        interface,
        ifindex,
        mode = mode_name(attached.0),
        "XDP program attached"
    );
    Ok(attached)
}

fn try_attach(
    program: &mut Xdp,
    interface: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<(XdpMode, XdpLinkId)> {
    match program.attach_to_if_index(ifindex, mode) {
        Ok(link) => Ok((mode, link)),
        Err(err) => Err(explain_attach_error(interface, mode, err)),
    }
}

fn explain_attach_error(interface: &str, mode: XdpMode, err: ProgramError) -> anyhow::Error {
    let errno = std::error::Error::source(&err)
        .and_then(|source| source.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error);
    let mode = mode_name(mode);
    match errno {
        Some(libc::EBUSY) | Some(libc::EEXIST) => anyhow!(
            "interface {interface} already has an XDP program attached (another gerbang, or \
             another tool). `ip link show dev {interface}` shows it; if it is stale, remove it \
             with `ip link set dev {interface} xdp off` and start gerbang again"
        ),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => anyhow!(
            "the driver of {interface} does not support {mode} XDP ({err}); set \
             dataplane.attach = \"generic\" (or \"auto\") in the config"
        ),
        _ => anyhow!("attaching to {interface} in {mode} mode failed: {err}"),
    }
}

/// The index of `interface` in this network namespace, or an error listing the ones that
/// exist.
pub fn interface_index(interface: &str) -> Result<u32> {
    let name = CString::new(interface)
        .map_err(|_| anyhow!("interface name {interface:?} contains a NUL byte"))?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index != 0 {
        return Ok(index);
    }
    let existing: Vec<String> = nix::net::if_::if_nameindex()
        .map(|list| {
            list.iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    bail!(
        "interface {interface} (dataplane.interfaces) does not exist in this network namespace; \
         interfaces here: {}. Fix the name in the config, or run gerbang in the namespace that \
         owns the interface",
        existing.join(", ")
    )
}

//! Attaching the XDP program to the configured interfaces, in the mode the config asks for.

use std::{ffi::CString, io};

use anyhow::{Result, anyhow, bail};
use aya::programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId};
use tracing::{info, warn};

use crate::config::AttachMode;

/// One interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    pub mode: XdpMode,
    pub link: XdpLinkId,
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
pub fn attach_one(program: &mut Xdp, interface: &str, mode: AttachMode) -> Result<Attachment> {
    let ifindex = interface_index(interface)?;
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
        mode = mode_name(attached.mode),
        "XDP program attached"
    );
    Ok(attached)
}

fn try_attach(
    program: &mut Xdp,
    interface: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<Attachment> {
    match program.attach_to_if_index(ifindex, mode) {
        Ok(link) => Ok(Attachment {
            interface: interface.to_string(),
            ifindex,
            mode,
            link,
        }),
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
fn interface_index(interface: &str) -> Result<u32> {
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

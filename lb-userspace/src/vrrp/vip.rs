//! The instance's interface as the kernel knows it, and the virtual addresses a master
//! adds to it over rtnetlink.
//!
//! A virtual address belongs to its VRRP instance, as with keepalived: one found on the
//! interface at start was left there by a previous run (a hand-over or a crash) and is
//! removed like any other when the instance is not master. The address owner's own
//! address (priority 255) is the exception: it is the interface's real address and stays.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressHeaderFlags},
    link::LinkAttribute,
};
use rtnetlink::{AddressMessageBuilder, Handle};
use tracing::{info, warn};

use crate::config::VirtualAddress;

/// An interface: its index, Ethernet address and IPv4 addresses.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// IPv4 addresses with their prefix lengths, primary addresses first.
    pub addresses: Vec<(Ipv4Addr, u8)>,
}

impl Interface {
    /// Looks `name` up in the caller's network namespace.
    pub async fn lookup(netlink: &Handle, name: &str) -> Result<Interface> {
        let missing = || anyhow!("interface {name} does not exist in this network namespace");
        let link = match netlink
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
        {
            Ok(Some(link)) => link,
            Ok(None) => return Err(missing()),
            Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -libc::ENODEV => {
                return Err(missing());
            }
            Err(error) => return Err(anyhow!(error).context(format!("looking up {name}"))),
        };
        let index = link.header.index;
        let mac = link
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| anyhow!("interface {name} has no Ethernet address"))?;

        let mut stream = netlink
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut primaries = Vec::new();
        let mut secondaries = Vec::new();
        while let Some(message) = stream
            .try_next()
            .await
            .with_context(|| format!("listing the addresses of {name}"))?
        {
            if message.header.family != AddressFamily::Inet {
                continue;
            }
            let local = message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Local(IpAddr::V4(address)) => Some(*address),
                    _ => None,
                });
            let Some(address) = local else { continue };
            let entry = (address, message.header.prefix_len);
            if message.header.flags.contains(AddressHeaderFlags::Secondary) {
                secondaries.push(entry);
            } else {
                primaries.push(entry);
            }
        }
        primaries.extend(secondaries);
        Ok(Interface {
            name: name.to_owned(),
            index,
            mac,
            addresses: primaries,
        })
    }

    /// The address advertisements are sent from: the first that is not a virtual one.
    pub fn primary_address(&self, virtual_addresses: &[VirtualAddress]) -> Result<Ipv4Addr> {
        self.addresses
            .iter()
            .map(|&(address, _)| address)
            .find(|address| !virtual_addresses.iter().any(|v| v.address == *address))
            .ok_or_else(|| {
                anyhow!(
                    "interface {} has no IPv4 address of its own to send VRRP advertisements from",
                    self.name
                )
            })
    }

    /// A virtual address with a prefix shorter than /32 must share its subnet with an
    /// address of the interface: otherwise the kernel would route that subnet out of an
    /// interface that is not on it.
    pub fn check_subnet(&self, vip: &VirtualAddress) -> Result<()> {
        if vip.prefix_len >= 32 {
            return Ok(());
        }
        let shares = self
            .addresses
            .iter()
            .filter(|&&(address, _)| address != vip.address)
            .any(|&(address, _)| same_subnet(address, vip.address, vip.prefix_len));
        if !shares {
            let have: Vec<String> = self
                .addresses
                .iter()
                .map(|(address, prefix)| format!("{address}/{prefix}"))
                .collect();
            bail!(
                "virtual address {vip} is not on a subnet of interface {} (its addresses: {}); \
                 give it as /32 or use an address of the interface's subnet",
                self.name,
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            );
        }
        Ok(())
    }
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// The virtual addresses of one instance on its interface.
pub struct Vips {
    netlink: Handle,
    interface: String,
    index: u32,
    addresses: Vec<VirtualAddress>,
    /// Those this instance added, and so removes.
    added: BTreeSet<Ipv4Addr>,
}

impl Vips {
    /// Takes charge of the virtual addresses; those already on the interface (a previous
    /// run's) are taken as its own, unless `owner` (priority 255, where they are the
    /// interface's real addresses).
    pub fn new(
        netlink: Handle,
        interface: &Interface,
        addresses: &[VirtualAddress],
        owner: bool,
    ) -> Vips {
        let mut added = BTreeSet::new();
        if !owner {
            for vip in addresses {
                if interface.addresses.iter().any(|(a, _)| *a == vip.address) {
                    info!(
                        interface = %interface.name,
                        address = %vip.address,
                        "virtual address already on the interface (left by a previous run)"
                    );
                    added.insert(vip.address);
                }
            }
        }
        Vips {
            netlink,
            interface: interface.name.clone(),
            index: interface.index,
            addresses: addresses.to_vec(),
            added,
        }
    }

    /// Whether every virtual address is on the interface: a previous run was master and
    /// handed over (SIGUSR2) or crashed, and traffic still arrives here.
    pub fn all_present(&self) -> bool {
        !self.addresses.is_empty()
            && self
                .addresses
                .iter()
                .all(|vip| self.added.contains(&vip.address))
    }

    /// Adds every virtual address. Continues past failures and reports the first.
    pub async fn add_all(&mut self) -> Result<()> {
        let mut first_error = None;
        for vip in self.addresses.clone() {
            if self.added.contains(&vip.address) {
                continue;
            }
            let request =
                self.netlink
                    .address()
                    .add(self.index, IpAddr::V4(vip.address), vip.prefix_len);
            match request.execute().await {
                Ok(()) => {
                    self.added.insert(vip.address);
                    info!(interface = %self.interface, address = %vip, "virtual address added");
                }
                Err(rtnetlink::Error::NetlinkError(message))
                    if message.raw_code() == -libc::EEXIST => {}
                Err(error) => {
                    first_error.get_or_insert_with(|| {
                        anyhow!(error)
                            .context(format!("adding {vip} to interface {}", self.interface))
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the virtual addresses this instance added.
    pub async fn remove_all(&mut self) {
        for vip in self.addresses.clone() {
            if !self.added.remove(&vip.address) {
                continue;
            }
            let message = AddressMessageBuilder::<Ipv4Addr>::new()
                .index(self.index)
                .address(vip.address, vip.prefix_len)
                .build();
            match self.netlink.address().del(message).execute().await {
                Ok(()) => {
                    info!(interface = %self.interface, address = %vip, "virtual address removed")
                }
                // Someone removed it already.
                Err(rtnetlink::Error::NetlinkError(message))
                    if message.raw_code() == -libc::EADDRNOTAVAIL => {}
                Err(error) => {
                    let interface = &self.interface;
                    warn!(%interface, address = %vip, "removing virtual address: {error}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(addresses: &[(Ipv4Addr, u8)]) -> Interface {
        Interface {
            name: "eth0".into(),
            index: 2,
            mac: [2, 0, 0, 0, 0, 1],
            addresses: addresses.to_vec(),
        }
    }

    fn vip(address: [u8; 4], prefix_len: u8) -> VirtualAddress {
        VirtualAddress {
            address: Ipv4Addr::from(address),
            prefix_len,
        }
    }

    #[test]
    fn subnet_check() {
        let eth0 = interface(&[(Ipv4Addr::new(10, 200, 0, 1), 24)]);
        assert!(eth0.check_subnet(&vip([10, 200, 0, 100], 24)).is_ok());
        assert!(eth0.check_subnet(&vip([192, 0, 2, 1], 32)).is_ok());
        assert!(eth0.check_subnet(&vip([10, 200, 0, 100], 16)).is_ok());
        let error = eth0
            .check_subnet(&vip([10, 201, 0, 100], 24))
            .unwrap_err()
            .to_string();
        assert!(error.contains("10.201.0.100/24"), "{error}");
        assert!(error.contains("10.200.0.1/24"), "{error}");
        // The virtual address itself (left over on the interface) does not count.
        let leftover = interface(&[(Ipv4Addr::new(10, 201, 0, 100), 24)]);
        assert!(leftover.check_subnet(&vip([10, 201, 0, 100], 24)).is_err());
    }

    #[test]
    fn primary_address_skips_virtual_ones() {
        let vips = [vip([10, 200, 0, 100], 32)];
        let eth0 = interface(&[
            (Ipv4Addr::new(10, 200, 0, 100), 32),
            (Ipv4Addr::new(10, 200, 0, 1), 24),
        ]);
        assert_eq!(
            eth0.primary_address(&vips).unwrap(),
            Ipv4Addr::new(10, 200, 0, 1)
        );
        assert!(interface(&[]).primary_address(&vips).is_err());
    }
}

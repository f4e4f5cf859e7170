//! What the data plane should forward right now: services and the backends that may take
//! new flows. Built from the configuration; health checks will narrow the backend lists.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::config::{Config, PortRange, Protocol};

/// The complete forwarding state the controller wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub services: Vec<ServicePlan>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    pub name: String,
    pub listen: SocketAddrV4,
    pub protocol: Protocol,
    pub snat_address: Ipv4Addr,
    pub snat_ports: PortRange,
    /// Backends that may take new flows, in schedule order.
    pub backends: Vec<BackendPlan>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPlan {
    pub name: String,
    pub address: SocketAddrV4,
}

impl Plan {
    /// Every configured backend of every service.
    pub fn from_config(config: &Config) -> Self {
        let services = config
            .services
            .iter()
            .map(|service| ServicePlan {
                name: service.name.clone(),
                listen: service.listen,
                protocol: service.protocol,
                snat_address: service.snat_address,
                snat_ports: config.dataplane.snat_ports,
                backends: service
                    .backends
                    .iter()
                    .map(|backend| BackendPlan {
                        name: backend.name.clone(),
                        address: backend.address,
                    })
                    .collect(),
            })
            .collect();
        Self { services }
    }

    /// Addresses of every backend, each once.
    pub fn backend_addresses(&self) -> Vec<Ipv4Addr> {
        let mut addresses: Vec<Ipv4Addr> = self
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| *b.address.ip()))
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        addresses
    }
}

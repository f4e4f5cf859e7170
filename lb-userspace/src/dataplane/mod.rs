//! The data plane: whatever forwards client packets to backends.
//!
//! The controller decides *what* should be forwarded and hands it over as a [`Plan`];
//! a data plane makes it so. The XDP program ([`xdp`]) is the fast path; the userspace
//! proxy ([`proxy`]) serves where XDP cannot run. Both implement the same [`Dataplane`]
//! contract, so the two cannot drift apart.

pub mod plan;
pub mod proxy;
pub mod xdp;

pub use plan::{
    AdminState, BackendKey, BackendPlan, BackendState, BackendStatus, Plan, ServicePlan,
};

/// A data plane that forwards according to a [`Plan`].
pub trait Dataplane {
    /// Makes the data plane forward exactly what `plan` says. Services and backends absent
    /// from `plan` stop receiving new flows.
    fn apply(&mut self, plan: &Plan) -> anyhow::Result<()>;
}

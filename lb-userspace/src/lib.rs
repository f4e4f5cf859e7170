//! gerbang's controller: configuration, the XDP data plane and the tasks that keep it
//! current.
//!
//! The `gerbang` binary (`main.rs`) is a thin CLI over this library; integration tests use
//! the library directly where they need the data plane's counters in-process.

pub mod config;
pub mod control;
pub mod controller;
pub mod dataplane;
pub mod health;
pub mod observe;
pub mod privileges;
pub mod vrrp;

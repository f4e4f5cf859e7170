//! gerbang's controller: configuration, the XDP data plane and what keeps it current.
//!
//! The `gerbang` binary (`main.rs`) is a thin CLI over this library; integration tests use
//! the library directly where they need the data plane without a process around it.

pub mod config;

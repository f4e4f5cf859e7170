//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test binary uses its own subset

pub mod db;
pub mod frames;
pub mod gerbang;
pub mod proxy;
pub mod tempdir;
pub mod vrrp;

//! `cargo xtask demo`: placeholder until the demo is written.

use anyhow::{Result, bail};

use crate::context::Context;

pub fn run(_ctx: &Context) -> Result<()> {
    bail!("`cargo xtask demo` is not written yet")
}

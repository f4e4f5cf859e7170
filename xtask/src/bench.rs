//! `cargo xtask bench`: placeholder until the benchmarks are written.

use anyhow::{Result, bail};

use crate::context::Context;

pub fn run(_ctx: &Context, _quick: bool) -> Result<()> {
    bail!("`cargo xtask bench` is not written yet")
}

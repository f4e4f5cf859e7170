fn main() -> anyhow::Result<()> {
    let bytes = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
    let mut ebpf = aya::Ebpf::load(bytes)?;
    let prog: &mut aya::programs::Xdp = ebpf.program_mut("gerbang_xdp").unwrap().try_into()?;
    prog.load()?;
    println!("loaded");
    Ok(())
}

static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));
fn main() {
    let ebpf = aya::Ebpf::load(OBJ).unwrap();
    for (n, _) in ebpf.programs() { println!("{n}"); }
}

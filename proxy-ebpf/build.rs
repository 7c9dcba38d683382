//! Rebuild when bpf-linker changes (a new linker can change the object).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

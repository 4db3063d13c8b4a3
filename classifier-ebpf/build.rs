//! Rebuild the kernel object when the linker changes: bpf-linker is not a
//! cargo dependency, so cargo would not notice on its own.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask build`, which installs it"),
    }
}

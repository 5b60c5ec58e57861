//! Links the `hull` binary as a position-dependent executable (`-no-pie`) unless `HULL_PIE=1`.
//!
//! Why: a PIE is relocated when it is loaded, and those relocations (about 8,700, most of them pointers in
//! `.data.rel.ro`: vtables, string tables) dirty every page of the RELRO segment, about 145 KiB. Each hull
//! process then holds its own private copy, which is a third of an idle microVM's PSS. At a fixed address the
//! linker resolves them all, the segment stays clean file-backed memory, and every hull on the host shares
//! one copy (only the GOT's ~170 pointers into libc are still written at load time).
//!
//! The price: hull's own code and data no longer move with ASLR (its heap, stacks, libraries, guest memory
//! and mmaps still do). `HULL_PIE=1 cargo build ...` builds a PIE for whoever prefers that (see SECURITY.md).
//! Only the binaries of this package are affected; the objects stay position-independent code, which links
//! into either kind of executable.

fn main() {
    println!("cargo:rerun-if-env-changed=HULL_PIE");
    let pie = std::env::var("HULL_PIE").is_ok_and(|v| v == "1");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && !pie {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}

//! Links the `hull` binary as a PIE (the default) or, with `HULL_NO_PIE=1`, as a position-dependent
//! executable (`-no-pie`).
//!
//! Why the choice exists: a PIE is relocated when it is loaded, and those relocations (about 8,700, most of
//! them pointers in `.data.rel.ro`: vtables, string tables) dirty every page of the RELRO segment, about
//! 145 KiB. Each hull process then holds its own private copy, which is a third of an idle microVM's PSS. At a
//! fixed address the linker resolves them all, the segment stays clean file-backed memory, and every hull on
//! the host shares one copy (only the GOT's ~170 pointers into libc are still written at load time).
//!
//! Why PIE stays the default: hull parses what a hostile guest writes, and at a fixed address its own code
//! and data do not move with ASLR, which makes a memory-safety bug easier to turn into code execution. An
//! operator who packs hundreds of microVMs on a host and accepts that may build with `HULL_NO_PIE=1` (see
//! docs/SECURITY.md). Only the binaries of this package are affected; the objects stay position-independent
//! code, which links into either kind of executable.

fn main() {
    println!("cargo:rerun-if-env-changed=HULL_NO_PIE");
    let no_pie = std::env::var("HULL_NO_PIE").is_ok_and(|v| v == "1");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && no_pie {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}

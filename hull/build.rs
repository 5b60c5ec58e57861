//! Links the `hull` binary statically against glibc: as a static PIE by default, or, with `HULL_NO_PIE=1`,
//! as a static position-dependent executable. `HULL_DYNAMIC=1` keeps the dynamic PIE of earlier releases
//! (also the fallback when the C toolchain has no static glibc).
//!
//! Why static: a dynamically linked hull maps libc, libgcc_s and ld.so, whose relocated data, link maps and
//! TLS set-up are private pages in every microVM process, and the loader's symbol binding costs start-up
//! time before the API socket is bound. Statically linked, only the parts of libc hull calls are in the
//! binary (measured: RSS with a halted guest 5.8 → 5.0 MiB, private dirty 440 → 400 KiB, spawn → API socket
//! 2.7 → 2.2 ms; see README).
//!
//! Why PIE stays the default: a PIE is relocated when it is loaded, and those relocations (most of them
//! pointers in `.data.rel.ro`: vtables, string tables, panic locations) dirty every page of the RELRO
//! segment, a private copy in every microVM process. At a fixed address the linker resolves them all and
//! every hull on the host shares one copy (private dirty 400 → 212 KiB), but hull's own code and data, and
//! now also libc's, no longer move with ASLR, which makes a memory-safety bug easier to turn into code
//! execution; hull parses what a hostile guest writes. An operator who packs hundreds of microVMs on a host
//! and accepts that may build with `HULL_NO_PIE=1` (see docs/SECURITY.md).
//!
//! How, on stable cargo: `-C target-feature=+crt-static` cannot be given to one binary of a workspace
//! (set in RUSTFLAGS it also reaches proc-macro crates, which cannot be static). So rustc links hull as
//! it would a dynamic PIE, and this script makes that link static: it writes, for each library rustc names
//! (`-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc`), a linker script of that name that stands for glibc's and
//! libgcc's static archives, puts their directory first on the search path, and asks the compiler driver for
//! a static (PIE) executable. Only the `hull` binary is affected: `hull-uffd-handler` and the tests link as
//! before.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HULL_NO_PIE");
    println!("cargo:rerun-if-env-changed=HULL_DYNAMIC");
    let no_pie = std::env::var("HULL_NO_PIE").is_ok_and(|v| v == "1");
    let dynamic = std::env::var("HULL_DYNAMIC").is_ok_and(|v| v == "1");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    // Already static (RUSTFLAGS with +crt-static and an explicit --target): nothing to do.
    let crt_static = std::env::var("CARGO_CFG_TARGET_FEATURE").is_ok_and(|f| f.split(',').any(|f| f == "crt-static"));
    if !linux_gnu || crt_static {
        return;
    }
    if !dynamic {
        match write_static_scripts() {
            Ok(dir) => {
                println!("cargo:rustc-link-arg-bin=hull=-L{}", dir.display());
                println!(
                    "cargo:rustc-link-arg-bin=hull={}",
                    if no_pie { "-static" } else { "-static-pie" }
                );
                if no_pie {
                    println!("cargo:rustc-link-arg-bin=hull=-no-pie");
                } else {
                    // The PIE's ~12,000 relocations, nearly all relative, as a bitmap (DT_RELR, which
                    // glibc 2.36's static-PIE start-up applies) instead of 24 bytes each: about 280 KiB
                    // less to read, and keep mapped, at every start.
                    println!("cargo:rustc-link-arg-bin=hull=-Wl,-z,pack-relative-relocs");
                }
                return;
            }
            Err(e) => println!("cargo:warning=linking hull dynamically: {e}"),
        }
    }
    if no_pie {
        println!("cargo:rustc-link-arg-bin=hull=-no-pie");
    }
}

/// Writes `lib<name>.so` linker scripts for the libraries rustc asks for into `OUT_DIR/static-libs`, each
/// naming the static archives that replace it, and returns that directory.
fn write_static_scripts() -> Result<PathBuf, String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?).join("static-libs");
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let archive = |name: &str| static_archive(&cc, name);
    let libc = archive("libc.a")?;
    let gcc = archive("libgcc.a")?;
    let gcc_eh = archive("libgcc_eh.a")?;
    // libc, libgcc and the unwinder refer to each other: one group resolves them in any order.
    let core = format!("GROUP ( {} {} {} )\n", quoted(&libc), quoted(&gcc_eh), quoted(&gcc));
    write_script(&out, "libc.so", &core)?;
    write_script(&out, "libgcc_s.so", &core)?;
    // glibc 2.34 and later keep these as empty archives (their functions moved into libc.a); older
    // versions have the real ones.
    for name in ["m", "pthread", "rt", "util", "dl"] {
        let script = format!("INPUT ( {} )\n", quoted(&archive(&format!("lib{name}.a"))?));
        write_script(&out, &format!("lib{name}.so"), &script)?;
    }
    Ok(out)
}

/// The path of the static archive `file` as the C compiler driver finds it.
fn static_archive(cc: &str, file: &str) -> Result<PathBuf, String> {
    let output = Command::new(cc)
        .arg(format!("-print-file-name={file}"))
        .output()
        .map_err(|e| format!("running {cc}: {e}"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    // The driver echoes the bare name back when it finds nothing.
    if path.is_absolute() && path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{cc} finds no {file} (install the static C library, e.g. Debian's libc6-dev)"
        ))
    }
}

fn quoted(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

fn write_script(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

//! Builds the tiny test guests from the assembly sources in `guests/` with the system toolchain (`gcc` as the
//! assembler driver, so the sources go through the C preprocessor; `ld`; `objcopy`). The images land in
//! `OUT_DIR` and the harness finds them through `HULL_TINY_GUESTS_DIR`. It also builds the static C programs
//! of `programs/` that tests copy into a container's rootfs (`HULL_TEST_PROGRAMS_DIR`).
//!
//! The sources are trusted (they are ours), the toolchain is the host's: a missing tool fails the build with a
//! message naming it and how to install it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// ELF guests: (source, image). Each is linked at 1 MiB by `guests/elf.ld`.
const ELF_GUESTS: &[(&str, &str)] = &[
    ("pvh.S", "pvh.elf"),
    ("long64.S", "long64.elf"),
    ("triplefault.S", "triplefault.elf"),
    ("smp.S", "smp.elf"),
    ("counter.S", "counter.elf"),
    ("keyboard.S", "keyboard.elf"),
    ("flood.S", "flood.elf"),
    ("halt.S", "halt.elf"),
    ("snapcount.S", "snapcount.elf"),
    ("memtouch.S", "memtouch.elf"),
    ("devcfg.S", "devcfg.elf"),
    ("echo.S", "echo.elf"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = manifest.join("guests");
    println!("cargo:rerun-if-changed=guests");
    println!("cargo:rerun-if-changed=build.rs");

    for (source, image) in ELF_GUESTS {
        let obj = assemble(&src, source, &out);
        link(&[&obj], &src.join("elf.ld"), &out.join(image));
    }

    // The bzImage: a flat link at 0, then the raw bytes.
    let obj = assemble(&src, "bzimage.S", &out);
    let elf = out.join("bzimage.elf");
    link(&[&obj], &src.join("bzimage.ld"), &elf);
    run(Command::new("objcopy")
        .arg("-O")
        .arg("binary")
        .arg(&elf)
        .arg(out.join("tiny.bzImage")));

    println!("cargo:rustc-env=HULL_TINY_GUESTS_DIR={}", out.display());

    // Programs run inside containers: static, so any rootfs can run them.
    println!("cargo:rerun-if-changed=programs");
    run(Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(out.join("vsock-attack"))
        .arg(manifest.join("programs/vsock_attack.c")));
    // Stand-ins for two images of the CRI validation suite (critest), built by src/bin/critest_env.rs.
    for (source, program) in [
        ("programs/critest_nginx.c", "critest-nginx"),
        ("programs/critest_nonewprivs.c", "critest-nonewprivs"),
        ("programs/critest_tools.c", "critest-tools"),
    ] {
        run(Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
            .arg(out.join(program))
            .arg(manifest.join(source)));
    }
    println!("cargo:rustc-env=HULL_TEST_PROGRAMS_DIR={}", out.display());
}

/// `gcc -c` one source (preprocessed: `#include` and `#define` are used) into `OUT_DIR`.
fn assemble(src: &Path, source: &str, out: &Path) -> PathBuf {
    let obj = out.join(Path::new(source).with_extension("o"));
    run(Command::new("gcc")
        .args(["-c", "-nostdlib", "-ffreestanding", "-Wa,--fatal-warnings", "-I"])
        .arg(src)
        .arg("-o")
        .arg(&obj)
        .arg(src.join(source)));
    obj
}

/// Links objects with a linker script into a static image without any of the usual ELF extras.
fn link(objs: &[&Path], script: &Path, image: &Path) {
    run(Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "-nostdlib",
            "-static",
            "--build-id=none",
            "-z",
            "noexecstack",
        ])
        .args([
            "-z",
            "max-page-size=4096",
            "-z",
            "noseparate-code",
            "--no-warn-rwx-segments",
            "--fatal-warnings",
        ])
        .arg("-T")
        .arg(script)
        .arg("-o")
        .arg(image)
        .args(objs));
}

fn run(cmd: &mut Command) {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "building the tiny test guests: `{cmd:?}` failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "building the tiny test guests needs `{tool}` ({e}); install it with \
             `apt-get install gcc binutils` (scripts/test.sh does)"
        ),
    }
}

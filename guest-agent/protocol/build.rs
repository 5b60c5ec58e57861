//! Generates the agent protocol's Rust code from `proto/agent.proto` with ttrpc-codegen's pure-Rust
//! parser (no `protoc` needed). The output lands in `OUT_DIR` and is included by `src/lib.rs`.

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=proto/agent.proto");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            gen_mod: false,
            ..Default::default()
        })
        .run()
        .expect("generating the agent protocol from proto/agent.proto failed");
    // The generated files start with inner attributes and docs (`#![allow(...)]`, `//!`), which `include!` cannot take;
    // lib.rs puts the same allowances on the modules instead.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = out.join(name);
        let text = std::fs::read_to_string(&path).expect("reading generated code");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !t.starts_with("#![") && !t.starts_with("//!")
            })
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("writing generated code");
    }
}

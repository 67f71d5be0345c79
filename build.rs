//! Build script: regenerates include/nbdcpy.h from src/ffi with cbindgen.
//!
//! The header is checked in. `make check` regenerates it and fails when the
//! checked-in copy differs (see the Makefile's `check-header`).

use std::env;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let out = dir.join("include").join("nbdcpy.h");
    // Only the ffi module is the public API; parsing just it keeps internal
    // constants and types out of the header.
    match cbindgen::Builder::new()
        .with_src(dir.join("src/ffi/mod.rs"))
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(&out);
        }
        Err(e) => {
            // Never break the build over the header; `make check-header` catches it.
            println!("cargo:warning=cbindgen failed, include/nbdcpy.h not regenerated: {e}");
        }
    }
    // Only nbdcpy_* symbols leave the shared object.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!(
            "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
            dir.join("src/ffi/nbdcpy.map").display()
        );
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnbdcpy.so.0");
    }
    println!("cargo:rerun-if-changed=src/ffi/nbdcpy.map");
}

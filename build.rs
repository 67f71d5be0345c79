// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Build script: generates the C header from src/ffi with cbindgen into
//! OUT_DIR (never into the source tree, which may be read-only).
//!
//! The header is checked in as include/nbdcpy.h.  `make check-header`
//! compares it with this generated copy; `make header` replaces it.  The
//! version macros come from Cargo.toml, so a version bump shows up there.
//! The shared library itself is linked by the Makefile from the staticlib
//! with src/ffi/nbdcpy.map (rustc's own export list for a cdylib would
//! leave every symbol unversioned).

use std::env;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("nbdcpy.h");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let mut config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    config.after_includes = Some(version_macros());
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
            println!(
                "cargo:warning=cbindgen failed, {} not generated: {e}",
                out.display()
            );
        }
    }
}

/// NBDCPY_VERSION_* macros of the package version.
fn version_macros() -> String {
    let part = |k: &str| -> u64 { env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(0) };
    let (major, minor, patch) = (
        part("CARGO_PKG_VERSION_MAJOR"),
        part("CARGO_PKG_VERSION_MINOR"),
        part("CARGO_PKG_VERSION_PATCH"),
    );
    format!(
        "\n\
// The version of this header (nbdcpy_version() gives the library's).\n\
#define NBDCPY_VERSION_MAJOR {major}\n\
#define NBDCPY_VERSION_MINOR {minor}\n\
#define NBDCPY_VERSION_PATCH {patch}\n\
#define NBDCPY_VERSION_STRING \"{major}.{minor}.{patch}\"\n\
// MAJOR * 1000000 + MINOR * 1000 + PATCH, for #if comparisons with\n\
// NBDCPY_VERSION_CHECK(major, minor, patch).\n\
#define NBDCPY_VERSION_NUMBER {number}\n\
#define NBDCPY_VERSION_CHECK(major, minor, patch) \\\n  ((major) * 1000000 + (minor) * 1000 + (patch))",
        number = major * 1_000_000 + minor * 1000 + patch,
    )
}

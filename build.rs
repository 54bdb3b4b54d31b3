//! Lays out the release binary's code so that what a serving broker runs sits together.
//!
//! The kernel maps a program's code in 64 KiB windows around each page it first touches ("fault-around"),
//! and the linker otherwise scatters the functions that start the broker and answer its requests across
//! all of `.text`: about 80 of its 95 windows were mapped by an idle broker, 5 MiB of resident code of
//! which 1.7 MiB ran. `link/hot-functions.txt` lists those functions (startup, the first token, the token,
//! verify, health and metrics routes, hottest first); the linker (lld, Rust's default on x86_64 Linux
//! since 1.90) places them first, and the idle broker maps about 2 MiB of code. Nothing else changes:
//! the same code, in another order. `link/update-order.py` writes the list from a run under callgrind;
//! a name the build no longer has is skipped (its function lands after the listed ones), so a stale
//! list costs memory, never correctness. bench/README.md, "Memory", has the figures.
//!
//! Only for release builds of the `aa-token-broker` binary on x86_64 Linux (glibc) with the default
//! linker; `AA_BROKER_LINK_ORDER=0` turns it off. The image's static musl build links without it.

use std::env;
use std::path::Path;
use std::process::Command;

const ORDER_FILE: &str = "link/hot-functions.txt";

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-env-changed=AA_BROKER_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    println!("cargo:rerun-if-env-changed=RUSTFLAGS");
    println!("cargo:rerun-if-env-changed=AA_BROKER_LINK_MAP");
    let Ok(dir) = env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = Path::new(&dir).join(ORDER_FILE);
    if let Some(reason) = why_not(&order) {
        // Shown with `cargo build -vv`.
        println!("link order not applied: {reason}");
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=aa-token-broker=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // Names from another build of the code are expected; they are skipped.
    println!("cargo:rustc-link-arg-bin=aa-token-broker=-Wl,--no-warn-symbol-ordering");
    // link/update-order.py reads where each function of the (stripped) binary went from the link map: a
    // build with its symbols kept would be another build, with other names.
    if let Some(map) = env::var_os("AA_BROKER_LINK_MAP") {
        println!(
            "cargo:rustc-link-arg-bin=aa-token-broker=-Wl,-Map={}",
            Path::new(&map).display()
        );
        // The names as the ordering file spells them.
        println!("cargo:rustc-link-arg-bin=aa-token-broker=-Wl,--no-demangle");
    }
}

/// Why the order is not applied to this build, if it is not.
fn why_not(order: &Path) -> Option<String> {
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("AA_BROKER_LINK_ORDER") == "0" {
        return Some("AA_BROKER_LINK_ORDER=0".into());
    }
    if var("PROFILE") != "release" {
        return Some("not a release build".into());
    }
    let target = (
        var("CARGO_CFG_TARGET_ARCH"),
        var("CARGO_CFG_TARGET_OS"),
        var("CARGO_CFG_TARGET_ENV"),
    );
    if target != ("x86_64".into(), "linux".into(), "gnu".into()) {
        return Some("not x86_64 Linux with glibc".into());
    }
    // Another linker (GNU ld, gold) does not take an ordering file: leave its choice alone.
    if env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || ["linker", "fuse-ld"]
            .iter()
            .any(|flag| var("CARGO_ENCODED_RUSTFLAGS").contains(flag))
    {
        return Some("a linker or link flags were chosen".into());
    }
    if !order.is_file() {
        return Some(format!("{} is missing", order.display()));
    }
    match rustc_minor() {
        Some(minor) if minor >= 90 => None,
        _ => Some("rustc before 1.90 links with GNU ld by default".into()),
    }
}

/// The minor version of the compiler building this crate (`1.95.0` gives 95).
fn rustc_minor() -> Option<u32> {
    let rustc = env::var_os("RUSTC")?;
    let output = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}

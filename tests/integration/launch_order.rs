//! The linker wrapper `.cargo/link-in-launch-order` (ECP-0128): with lld
//! it places the listed functions first, found by their demangled names
//! without hashes; with any other linker it links as plain `cc` does.
//! Real `cc`, `nm` and rustc's own lld, on a small C program whose symbols
//! include one mangled as Rust's legacy scheme mangles.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::testenv::text;

const WRAPPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.cargo/link-in-launch-order");

/// `ec::launch::hot` as rustc's legacy mangling writes it, with a hash
/// that the order file does not name.
const MANGLED_HOT: &str = "_ZN2ec6launch3hot17h0123456789abcdefE";

/// A copy of the wrapper beside an order file of its own (it reads the
/// list beside itself), and an object with three functions in source order
/// `cold`, `warm`, then the Rust-mangled `hot`, each in its own section.
struct Link {
    dir: tempfile::TempDir,
}

impl Link {
    fn new(order: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        fs::copy(WRAPPER, path("link")).unwrap();
        fs::write(path("launch-order.txt"), order).unwrap();
        let source = format!(
            "void cold(void) {{ __asm__ volatile(\"\"); }}\n\
             void warm(void) {{ __asm__ volatile(\"\"); }}\n\
             void {MANGLED_HOT}(void) {{ __asm__ volatile(\"\"); }}\n\
             int main(void) {{ cold(); warm(); {MANGLED_HOT}(); return 0; }}\n"
        );
        fs::write(path("program.c"), source).unwrap();
        let compiled = Command::new("cc")
            .args(["-c", "-O0", "-ffunction-sections", "-o"])
            .arg(path("program.o"))
            .arg(path("program.c"))
            .status()
            .expect("cc (apt-get install gcc)");
        assert!(compiled.success());
        Self { dir }
    }

    /// Links `program.o` into `out` through the wrapper, with `extra`
    /// arguments, and returns its functions in address order.
    fn link(&self, out: &str, extra: &[&std::ffi::OsStr]) -> Vec<String> {
        let linked = Command::new(self.dir.path().join("link"))
            .arg(self.dir.path().join("program.o"))
            .arg("-o")
            .arg(self.dir.path().join(out))
            .args(extra)
            .output()
            .unwrap();
        assert!(linked.status.success(), "{}", text(&linked.stderr));
        functions_in_address_order(&self.dir.path().join(out))
    }
}

/// The program's own functions (not the C runtime's), lowest address first.
fn functions_in_address_order(binary: &Path) -> Vec<String> {
    let listed = Command::new("nm").arg("-n").arg(binary).output().unwrap();
    text(&listed.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|name| ["cold", "warm", MANGLED_HOT, "main"].contains(name))
        .map(str::to_owned)
        .collect()
}

/// rustc's own lld, as rustc itself passes it to `cc` (`-B` its `gcc-ld`).
fn rust_lld() -> PathBuf {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let version = Command::new("rustc").arg("-vV").output().unwrap();
    let host = text(&version.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .unwrap();
    let dir = Path::new(text(&sysroot.stdout).trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/gcc-ld");
    assert!(
        dir.join("ld.lld").exists(),
        "no rust-lld at {}",
        dir.display()
    );
    dir
}

#[test]
fn with_lld_the_listed_functions_come_first_whatever_their_hash() {
    let link = Link::new("ec::launch::hot\nwarm\nnot_in_this_build\n");
    let b_flag = format!("-B{}", rust_lld().display());
    let order = link.link("ordered", &[b_flag.as_ref(), "-fuse-ld=lld".as_ref()]);
    assert_eq!(
        &order[..2],
        [MANGLED_HOT, "warm"],
        "the listed functions, in the list's order, first: {order:?}"
    );
}

#[test]
fn with_another_linker_it_links_as_plain_cc() {
    let link = Link::new("ec::launch::hot\nwarm\n");
    let through_wrapper = link.link("wrapped", &[]);
    let plain = Command::new("cc")
        .arg(link.dir.path().join("program.o"))
        .arg("-o")
        .arg(link.dir.path().join("plain"))
        .status()
        .unwrap();
    assert!(plain.success());
    assert_eq!(
        through_wrapper,
        functions_in_address_order(&link.dir.path().join("plain"))
    );
    assert_eq!(&through_wrapper[..3], ["cold", "warm", MANGLED_HOT]);
}

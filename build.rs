//! Tells the test suites whether their root-only tests can run here, so a
//! non-root run lists them as ignored (with the reason) instead of passing
//! them. `ec_test_support::privilege` keeps the same rule at run time, for a
//! build made under another user than the run (then a skip says so).
//! And relinks the executables when the order the linker wrapper places the
//! launch path's functions in changes (ECP-0128): cargo does not know the
//! linker reads it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ec_tests_without_root)");
    // sudo and su change these: a build reused under another user is redone.
    for variable in ["EC_LAUNCH_TEST_REQUIRE_ROOT", "USER", "HOME", "SUDO_UID"] {
        println!("cargo::rerun-if-env-changed={variable}");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=.cargo/launch-order.txt");
    println!("cargo::rerun-if-changed=.cargo/link-in-launch-order");
    let required =
        std::env::var("EC_LAUNCH_TEST_REQUIRE_ROOT").is_ok_and(|v| !v.is_empty() && v != "0");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc_geteuid() } == 0;
    if !root && !required {
        println!("cargo::rustc-cfg=ec_tests_without_root");
    }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

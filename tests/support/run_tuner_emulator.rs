//! The tuner emulator as a program of its own (`cargo run --example
//! tuner-emulator -- --listen 127.0.0.1:5004 --tuners 1`), for the NixOS VM
//! test and anyone who wants a device to point a publisher at.

use std::process::ExitCode;

use ec_test_support::tuner_emulator;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    tuner_emulator::main(&args)
}

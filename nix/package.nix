# ec-launch as a Nix package. Name, version and description come from
# Cargo.toml so there is one place to bump them.
{
  lib,
  stdenv,
  glibc,
  rustPlatform,
  installShellFiles,
  etcd,
}:

let
  manifest = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).package;
  # Only what the build reads, so editing the module or the Nix tests does
  # not rebuild the package. The workspace (ECP-0138): the root package
  # (library and `ec-launch`) and its members under crates/, whose build
  # installs both executables, `ec-launch` and `ec-launch-cluster` (which
  # `ec-launch run --etcd` execs from the same bin/). Cargo wants every
  # [[test]] target it is told about to exist, hence the Rust files under
  # tests/. The JSON files are the module's and the launcher's one source of
  # truth (`include_str!`), and docs/exit-codes.md's table is checked by a
  # unit test. The linker wrapper and its order are under .cargo/.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../build.rs
      ../.cargo/link-in-launch-order
      ../.cargo/launch-order.txt
      ../clippy.toml
      ../src
      ../crates
      (lib.fileset.fileFilter (file: file.hasExt "rs") ../tests)
      ../benches
      ../README.md
      ../docs/exit-codes.md
      ../nixos/secret-params.json
      ../nixos/cluster-timing.json
    ];
  };
in
rustPlatform.buildRustPackage {
  pname = manifest.name;
  inherit (manifest) version;

  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ installShellFiles ];

  # Statically linked against glibc: a launch then does no dynamic-loader
  # work, which is what brings ec-launch under flock(1)'s launch time
  # (evolution/ECP-0128-launch-cost.md; bench/launch.sh builds it the same
  # way). buildRustPackage passes an explicit --target, so the flag does not
  # reach proc-macro crates, which cannot be linked statically.
  buildInputs = lib.optionals stdenv.hostPlatform.isGnu [ glibc.static ];
  # At a fixed address too (no static PIE, which relocates itself at every
  # start): the same flags as .cargo/config.toml (ECP-0138).
  # And SHA-256 in software on x86, as .cargo/config.toml has it: no CPUID
  # probe (a trap to the hypervisor in a VM) at every launch (ECP-0128).
  env.RUSTFLAGS = lib.concatStringsSep " " (
    lib.optional stdenv.hostPlatform.isGnu "-C target-feature=+crt-static -C relocation-model=static"
    ++ lib.optional stdenv.hostPlatform.isx86 "--cfg sha2_backend=\"soft\""
  );

  # Linked through the wrapper .cargo/config.toml names, which places the
  # launch path's functions together (.cargo/launch-order.txt, ECP-0128).
  # It orders only when rustc links with lld; with another linker it is
  # plain cc, so the build never depends on it. build.rs relinks when the
  # order changes.
  env."CARGO_TARGET_${stdenv.hostPlatform.rust.cargoEnvVarTarget}_LINKER" =
    "${src}/.cargo/link-in-launch-order";

  # The unit tests only (the library's and each executable's). The
  # integration and acceptance suites need flock(1), root, systemd and
  # nix-instantiate, none of which the build sandbox has; CI (.ci/run) runs
  # them. The etcd client's unit tests start a real etcd on loopback, which
  # the sandbox allows: etcd is put on PATH.
  cargoTestFlags = [
    "--lib"
    "--bins"
  ];
  nativeCheckInputs = [ etcd ];

  # Completions and the man page are rendered by the binary from the same
  # clap definition it parses with, so they cannot drift from the flags.
  postInstall = lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd ec-launch \
      --bash <($out/bin/ec-launch completions bash) \
      --fish <($out/bin/ec-launch completions fish) \
      --zsh <($out/bin/ec-launch completions zsh)
    $out/bin/ec-launch man > ec-launch.1
    installManPage ec-launch.1
  '';

  meta = {
    inherit (manifest) description;
    homepage = manifest.repository;
    license = [
      lib.licenses.mit
      lib.licenses.asl20
    ];
    mainProgram = "ec-launch";
    platforms = lib.platforms.linux;
  };
}

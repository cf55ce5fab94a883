# ec-launch as a Nix package. Name, version and description come from
# Cargo.toml so there is one place to bump them.
{
  lib,
  rustPlatform,
  installShellFiles,
}:

let
  manifest = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).package;
in
rustPlatform.buildRustPackage {
  pname = manifest.name;
  inherit (manifest) version;

  # Only what the build reads, so editing the README, the module or the Nix
  # tests does not rebuild the package. Cargo wants every [[test]] target it
  # is told about to exist, hence the Rust files under tests/.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../clippy.toml
      ../src
      (lib.fileset.fileFilter (file: file.hasExt "rs") ../tests)
      ../doc/ec-launch.1
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ installShellFiles ];

  # The unit tests only. The integration and acceptance suites need
  # flock(1), root, systemd and nix-instantiate, none of which the build
  # sandbox has; CI (.ci/run) runs them.
  cargoTestFlags = [ "--bins" ];

  # Shell completions are not installed: ec-launch has no `completions`
  # subcommand to generate them yet. The man page is written by hand.
  postInstall = ''
    installManPage doc/ec-launch.1
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

{
  description = "ec-launch, the per-source lock-and-exec launcher, and the NixOS module that runs every-channel publishers with it";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # Linux only: the launcher relies on flock(2), /proc/locks and systemd.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forEachSystem = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      launcherOf = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system}.ec-launch;
    in
    {
      packages = forEachSystem (pkgs: {
        ec-launch = pkgs.callPackage ./nix/package.nix { };
        default = launcherOf pkgs;
      });

      overlays.default = final: _prev: {
        ec-launch = final.callPackage ./nix/package.nix { };
      };

      # The module proper has no default launcher (it cannot know where one
      # comes from); importing it from the flake supplies this flake's, as a
      # default, so no overlay is needed and an operator can still override.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos/module.nix ];
          services.every-channel.launcherPackage = lib.mkDefault (launcherOf pkgs);
        };

      checks = forEachSystem (
        pkgs:
        let
          package = launcherOf pkgs;
        in
        {
          ec-launch = package;

          # The same lint gate as .ci/run, on the same vendored dependencies.
          clippy = package.overrideAttrs (old: {
            pname = "${old.pname}-clippy";
            # No static linking here: clippy runs without an explicit
            # --target, where the flag would reach proc-macro crates.
            env = (old.env or { }) // {
              RUSTFLAGS = "";
            };
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              cargo clippy --all-targets --locked --offline -- -D warnings
              runHook postBuild
            '';
            doCheck = false;
            installPhase = ''
              runHook preInstall
              touch "$out"
              runHook postInstall
            '';
            postInstall = "";
          });

          vm-test = pkgs.testers.runNixOSTest (import ./tests/nix/vm-test.nix { inherit self pkgs; });
        }
      );

      devShells = forEachSystem (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ (launcherOf pkgs) ];
          packages = [
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            # flock(1) for the interop tests, nix-instantiate for tests/nix.
            pkgs.util-linux
            pkgs.nix
          ];
        };
      });

      formatter = forEachSystem (pkgs: pkgs.nixfmt-tree);
    };
}

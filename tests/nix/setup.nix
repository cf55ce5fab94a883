# What the Nix tests here start from: nixpkgs.lib, NixOS's own modules
# (./nixos.nix), fake ec-node and ec-launch packages, and the flake's
# nixosModules.default as shipped.
#
#   EC_NIXPKGS_LIB    a checkout of nix-community/nixpkgs.lib, or its lib/
#   EC_NIXOS_MODULES  a folder with NixOS's module files under nixos/
#                     (CI: ../shared/nixos-modules)
#
# Both must be absolute paths; `cargo test --locked --test nix` passes them
# on and says how to get them when they are unset.
let
  directory =
    variable: what:
    let
      dir = builtins.getEnv variable;
    in
    if dir == "" then
      throw "set ${variable} to ${what}"
    else if builtins.substring 0 1 dir != "/" then
      throw "${variable} must be an absolute path, not ${dir}"
    else
      /. + dir;

  lib =
    let
      dir = directory "EC_NIXPKGS_LIB" "a checkout of github.com/nix-community/nixpkgs.lib (or its lib/ directory)";
    in
    if builtins.pathExists (dir + "/lib/default.nix") then import (dir + "/lib") else import dir;

  nixos = import ./nixos.nix {
    inherit lib;
    nixosModules = directory "EC_NIXOS_MODULES" "a folder holding NixOS's module files under nixos/ (CI has ../shared/nixos-modules)";
  };

  ecNode = nixos.fakePackage "ec-node-0.1" { };
  ecLaunch = nixos.fakePackage "ec-launch-0.1.0" { };
  system = "x86_64-linux";

  # The flake's own nixosModules.default, so the launcherPackage default is
  # tested as shipped; nixpkgs is replaced by lib and the fake packages.
  flake =
    let
      outputs = (import ../../flake.nix).outputs {
        self = outputs // {
          packages.${system}.ec-launch = ecLaunch;
        };
        nixpkgs = {
          inherit lib;
          legacyPackages = throw "tests/nix: the module must not need nixpkgs";
        };
      };
    in
    outputs;
in
{
  inherit
    lib
    nixos
    ecNode
    ecLaunch
    flake
    ;
  inherit (nixos) pkgs;

  # NixOS with the module and `configuration`.
  evalModule = configuration: nixos.eval [ flake.nixosModules.default configuration ];
}

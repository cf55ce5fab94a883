# NixOS as far as a test can have it without nixpkgs: `lib.evalModules`
# over NixOS's own module files, so nixos/module.nix meets the real
# `systemd.services` option types and merges, the real unit-file text
# (nixos/lib/systemd-lib.nix), `utils.escapeSystemdExecArgs`, the real
# tmpfiles rendering and the real users and groups with their assertions.
#
#   import ./nixos.nix { inherit lib; nixosModules = /path/to/nixos-modules; }
#
# `nixosModules` is a folder holding NixOS's files verbatim under `nixos/`
# (CI: ../shared/nixos-modules; see its SOURCE.md). Nothing is copied from
# it into this repository.
#
# Loaded from NixOS, unchanged:
#   modules/system/boot/systemd.nix          systemd.services/units/…, unit text
#   modules/system/boot/systemd/tmpfiles.nix systemd.tmpfiles.*, 00-nixos.conf
#   modules/config/users-groups.nix          users.users/groups and assertions
#   modules/misc/ids.nix                     ids.uids/gids
#   modules/misc/assertions.nix              assertions, warnings
#   modules/misc/extra-arguments.nix         the `utils` module argument
#   modules/misc/lib.nix                     the `lib` option
#   top-level.nix, system-path.nix           the declarations of system.checks
#                                            and environment.systemPackages
#                                            only (their config needs the
#                                            whole of NixOS)
#
# Stubbed, because it does not matter here (this list is the one in
# evolution/ECP-0137-the-module-checked-against-nixos.md):
#   - pkgs: every package is a derivation-shaped attribute set with a fake
#     store path (nothing is built; Nix 2.8 could not), and the builders
#     the loaded modules call (runCommand, writeText, writeTextFile,
#     writeTextDir, symlinkJoin, linkFarm, buildEnv, formats.json,
#     writeShellScriptBin, perl.withPackages) return such a set that keeps
#     its arguments, so the rendered text can be read back; pkgs.systemd
#     carries the `with*` feature flags systemd.nix asks about, all false.
#   - options of modules that are not here, as far as the loaded ones read
#     or write them: declared with NixOS's defaults where they are read,
#     free-form where they are only written:
#       boot.{isContainer, extraSystemdUnitPaths, kernel.sysctl,
#         initrd.enable, initrd.systemd.{enable, storePaths, contents,
#         additionalUpstreamUnits, services}}
#       networking.{hostName ("nixos"), proxy.envVars}
#       systemd.additionalUpstreamUserUnits (systemd/user.nix)
#       users.defaultUserShell (programs/shells-environment.nix)
#       i18n.imperativeLocale, time.timeZone
#       security.{polkit.enable, pam.services, googleOsLogin.enable}
#       services.{dbus.enable, openssh.{enable, package}, userborn.enable,
#         logrotate}
#       programs.{zsh, fish, xonsh}.enable
#       environment.{etc, variables, profiles, pathsToLink,
#         extraOutputsToInstall}
#       system.{path, fsPackages, nssModules, nssDatabases,
#         requiredKernelConfig, activationScripts, build,
#         etc.overlay.enable, nixos-init.package}
#     and the value lib.kernelConfig.isEnabled (the kernel module's).
{ lib, nixosModules }:

let
  inherit (lib) mkOption types;

  nixos = nixosModules + "/nixos";

  # A package as far as NixOS's modules and ours can tell: a derivation
  # with a store path. `extra` keeps what a builder was given (a unit's
  # text, a tmpfiles file's text), so a test can read it back.
  fakePackage =
    name: extra:
    lib.fix (
      self:
      {
        type = "derivation";
        inherit name;
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
        outputs = [ "out" ];
        out = self;
        meta = { };
        overrideAttrs = _: self;
      }
      // extra
    );
  plain = name: fakePackage name { };

  pkgs = {
    stdenv.hostPlatform = {
      system = "x86_64-linux";
      is64bit = true;
      isLinux = true;
    };
    buildPackages.lndir = plain "lndir";
    systemd = fakePackage "systemd" {
      util-linux = plain "util-linux";
      withCryptsetup = false;
      withBootloader = false;
      withEfi = false;
      withUtmp = false;
      withTpm2Units = false;
      withImportd = false;
      withMachined = false;
      withNspawn = false;
      withTimedated = false;
      withLocaled = false;
      withHostnamed = false;
      withPortabled = false;
      withRepart = false;
    };
    runCommand = name: env: buildCommand: fakePackage name (env // { inherit buildCommand; });
    writeText = name: text: fakePackage name { inherit text; };
    writeTextFile = args: fakePackage args.name args;
    writeTextDir = path: text: fakePackage (baseNameOf path) { inherit path text; };
    writeShellScriptBin =
      name: text:
      fakePackage name {
        inherit text;
        meta.mainProgram = name;
      };
    symlinkJoin = args: fakePackage args.name args;
    linkFarm = name: entries: fakePackage name { inherit entries; };
    buildEnv = args: fakePackage args.name args;
    formats.json = _: {
      type = types.anything;
      generate = name: value: fakePackage name { inherit value; };
    };
    perl = plain "perl" // {
      withPackages = _: plain "perl-with-packages";
    };
    libxcrypt.enabledCryptSchemeIds = [ "y" "gy" "7" "2b" "2y" "2a" "6" "5" ];
    shadow = plain "shadow" // {
      shellPath = "/bin/nologin";
    };
    bashInteractive = plain "bash-interactive" // {
      shellPath = "/bin/bash";
    };
    zsh = plain "zsh";
    fish = plain "fish";
    xonsh = plain "xonsh";
    coreutils = plain "coreutils";
    findutils = plain "findutils";
    gnugrep = plain "gnugrep";
    gnused = plain "gnused";
    util-linux = plain "util-linux";
    kmod = plain "kmod";
    gnupgMinimal = plain "gnupg";
  };

  # One option of a module whose config would need the whole of NixOS.
  declarationOf =
    file: path:
    let
      module = import file {
        inherit lib pkgs;
        config = throw "${toString file}: only its option declarations are used";
        options = throw "${toString file}: only its option declarations are used";
      };
    in
    {
      options = lib.setAttrByPath path (lib.getAttrFromPath path module.options);
    };

  free = mkOption {
    type = types.attrsOf types.anything;
    default = { };
  };
  unused = default: mkOption {
    type = types.anything;
    inherit default;
  };

  # Options of NixOS modules that are not loaded here, as far as the
  # loaded ones read or write them. Read ones get NixOS's defaults.
  absentModules = {
    options = {
      boot = {
        isContainer = unused false;
        extraSystemdUnitPaths = unused [ ];
        kernel.sysctl = free;
        initrd = {
          enable = unused true;
          systemd = {
            enable = unused false;
            storePaths = unused [ ];
            contents = free;
            additionalUpstreamUnits = unused [ ];
            services = free;
          };
        };
      };
      networking = {
        hostName = mkOption {
          type = types.str;
          default = "nixos";
        };
        proxy.envVars = unused { };
      };
      # systemd/user.nix: user units.
      systemd.additionalUpstreamUserUnits = unused [ ];
      # programs/shells-environment.nix.
      users.defaultUserShell = unused pkgs.bashInteractive;
      i18n.imperativeLocale = unused false;
      time.timeZone = unused null;
      security = {
        polkit.enable = unused false;
        pam.services = free;
        googleOsLogin.enable = unused false;
      };
      services = {
        dbus.enable = unused false;
        openssh = {
          enable = unused false;
          package = unused (plain "openssh");
        };
        userborn.enable = unused false;
        logrotate = free;
      };
      programs = {
        zsh.enable = unused false;
        fish.enable = unused false;
        xonsh.enable = unused false;
      };
      environment = {
        etc = free;
        variables = free;
        profiles = unused [ ];
        pathsToLink = unused [ ];
        extraOutputsToInstall = unused [ ];
      };
      system = {
        path = unused {
          ignoreCollisions = true;
          postBuild = "";
        };
        fsPackages = unused [ ];
        nssModules = unused [ ];
        nssDatabases = free;
        requiredKernelConfig = unused [ ];
        activationScripts = free;
        build = free;
        etc.overlay.enable = unused false;
        nixos-init.package = unused (plain "nixos-init");
      };
    };
    # systemd.nix asks which kernel options it needs; the kernel module that
    # answers is not here.
    config.lib.kernelConfig.isEnabled = name: { inherit name; };
  };

  modules = [
    (nixos + "/modules/system/boot/systemd.nix")
    (nixos + "/modules/system/boot/systemd/tmpfiles.nix")
    (nixos + "/modules/config/users-groups.nix")
    (nixos + "/modules/misc/ids.nix")
    (nixos + "/modules/misc/assertions.nix")
    (nixos + "/modules/misc/extra-arguments.nix")
    (nixos + "/modules/misc/lib.nix")
    (declarationOf (nixos + "/modules/system/activation/top-level.nix") [ "system" "checks" ])
    (declarationOf (nixos + "/modules/config/system-path.nix") [ "environment" "systemPackages" ])
    absentModules
    { _module.args.pkgs = pkgs; }
  ];
in
{
  inherit pkgs fakePackage;

  # The configuration `extra` modules make of NixOS and ours.
  eval = extra: lib.evalModules { modules = modules ++ extra; };
}

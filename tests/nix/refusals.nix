# Values systemd has no way to read back, one per kind of option that
# refuses them (evolution/ECP-0137-the-module-checked-against-nixos.md), for
# tests/nix/main.rs: evaluated through NixOS, each must fail with the type
# error that names its option.
#
#   nix-instantiate … --eval --strict --json tests/nix/refusals.nix --argstr case ""
#     { <case> = <option>; … }
#   nix-instantiate … --eval --strict --json tests/nix/refusals.nix --argstr case lock-dir-newline
#     the type error
{ case }:

let
  setup = import ./setup.nix;
  inherit (setup) lib ecNode evalModule;

  publisher = settings: {
    publishers.a = {
      source = "http://10.0.0.5:5004/auto/v5.1";
    }
    // settings;
  };
  cluster = settings: {
    cluster = {
      enable = true;
      endpoints = [ "https://etcd-1.lan:2379" ];
      caFile = "/etc/every-channel/etcd-ca.pem";
    }
    // settings;
  };

  # name → the option named in the error, and the settings under
  # services.every-channel.
  cases = {
    lock-dir-newline = {
      option = "services.every-channel.sourceLockDir";
      settings.sourceLockDir = "/run/every-channel\nlocks";
    };
    lock-dir-not-normalised = {
      option = "services.every-channel.sourceLockDir";
      settings.sourceLockDir = "/run/../run/every-channel";
    };
    source-file-trailing-backslash = {
      option = "services.every-channel.publishers.b.sourceFile";
      settings = {
        publishers.b.sourceFile = "/run/keys/url\\";
      };
    };
    environment-file-trailing-space = {
      option = "services.every-channel.publishers.a.environmentFile";
      settings = publisher { environmentFile = "/run/keys/a.env "; };
    };
    key-file-newline = {
      option = "services.every-channel.cluster.keyFile";
      settings = publisher { } // cluster {
        certFile = "/etc/every-channel/cert.pem";
        keyFile = "/run/keys/key\n.pem";
      };
    };
    source-tab = {
      option = "services.every-channel.publishers.a.source";
      settings = publisher { source = "/dev/video\t0"; };
    };
    user-with-space = {
      option = "services.every-channel.user";
      settings = publisher { } // {
        user = "every channel";
      };
    };
    restart-sec-injection = {
      option = "services.every-channel.publishers.a.restartSec";
      settings = publisher { restartSec = "5s\nExecStartPre=/bin/sh"; };
    };
    stop-timeout-injection = {
      option = "services.every-channel.stopTimeout";
      settings = publisher { } // {
        stopTimeout = "10s\nKillMode=process";
      };
    };
  };

  # What NixOS would write: every unit of the module and the tmpfiles rules.
  written =
    settings:
    let
      inherit
        (evalModule {
          services.every-channel = {
            enable = true;
            package = ecNode;
          }
          // settings;
        })
        config
        ;
      ours = lib.filterAttrs (name: _: lib.hasPrefix "every-channel-" name) config.systemd.units;
    in
    {
      units = lib.mapAttrs (_: unit: unit.text) ours;
      inherit (config.systemd.tmpfiles) rules;
    };
in
if case == "" then lib.mapAttrs (_: c: c.option) cases else written cases.${case}.settings

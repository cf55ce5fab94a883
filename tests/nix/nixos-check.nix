# The module as NixOS itself renders it, for tests/nix/nixos_check.rs:
# every scenario is evaluated with NixOS's own modules (./nixos.nix), and
# this prints what NixOS would write for it: the text of each unit the
# module defines or changes, the tmpfiles.d file (00-nixos.conf), /etc/passwd
# and /etc/group, the failing assertions and the warnings. The Rust side
# writes them into a scratch root and asks systemd (`systemd-analyze verify`
# and `security`, `systemd-tmpfiles`, `systemd --test`) what it makes of
# them.
#
#   EC_NIXPKGS_LIB=… EC_NIXOS_MODULES=… nix-instantiate --store dummy:// \
#     --eval --strict --json tests/nix/nixos-check.nix --argstr readmeDir DIR
#
# DIR holds the README's node flake as flake.nix (the test copies it out of
# README.md, so the quick start that is tested is the one operators read)
# and a configuration.nix standing in for "your existing configuration"
# (empty: the quick start must not depend on anything it does not define).
{ readmeDir }:

let
  setup = import ./setup.nix;
  inherit (setup)
    lib
    nixos
    ecNode
    flake
    ;

  # What NixOS would write for `modules`, and what is expected of it.
  render =
    name:
    {
      modules,
      # Substrings, one per warning the scenario must give; any other
      # warning fails the check.
      expectedWarnings ? [ ],
      # Per unit: what systemd must read from it (tests/nix/nixos_check.rs,
      # `Expect`), written out here rather than derived from the module.
      expect ? { },
      # Per unit: the highest `systemd-analyze security` exposure allowed,
      # when not `defaultExposure`.
      exposure ? { },
    }:
    let
      inherit ((nixos.eval modules)) config;
      cfg = config.services.every-channel;
      extraUnitNames = map (lib.removeSuffix ".service") cfg.extraUnits;
      serviceNames = lib.filter (
        name: lib.hasPrefix "every-channel-" name || lib.elem name extraUnitNames
      ) (builtins.attrNames config.systemd.services);
      units = lib.genAttrs (map (name: "${name}.service") serviceNames) (
        unit: config.systemd.units.${unit}.text
      );
      tmpfiles =
        (lib.findFirst (package: package.name == "nixos-tmpfiles.d")
          (throw "NixOS wrote no nixos-tmpfiles.d")
          config.systemd.tmpfiles.packages
        ).text;

      # Ids as NixOS's update-users-groups.pl gives them: a declared one, or
      # the next free system id counting down from 999.
      withIds =
        set: idOf:
        let
          declared = lib.filter (entry: idOf entry != null) (builtins.attrValues set);
          taken = map idOf declared;
          free = lib.filter (id: !(lib.elem id taken)) (lib.reverseList (lib.range 400 999));
          undeclared = lib.filter (entry: idOf entry == null) (builtins.attrValues set);
        in
        map (entry: {
          inherit (entry) name;
          id = idOf entry;
        }) declared
        ++ lib.imap0 (index: entry: {
          inherit (entry) name;
          id = builtins.elemAt free index;
        }) undeclared;
      groups = withIds config.users.groups (group: group.gid);
      gidOf = name: (lib.findFirst (group: group.name == name) (throw "no group ${name}") groups).id;
      users = withIds (lib.filterAttrs (_: user: user.enable) config.users.users) (user: user.uid);
      userOf = name: config.users.users.${name};
      passwd = lib.concatMapStrings (
        user:
        let
          u = userOf user.name;
        in
        "${user.name}:x:${toString user.id}:${toString (gidOf u.group)}::${u.home}:/run/current-system/sw/bin/nologin\n"
      ) users;
      group = lib.concatMapStrings (group: "${group.name}:x:${toString group.id}:\n") groups;
    in
    {
      inherit
        name
        units
        tmpfiles
        passwd
        group
        expectedWarnings
        expect
        ;
      assertions = map (assertion: assertion.message) (lib.filter (a: !a.assertion) config.assertions);
      inherit (config) warnings;
      # The module's own units; extraUnits are hardened elsewhere, if at all.
      exposure = lib.genAttrs (lib.filter (lib.hasPrefix "every-channel-") (builtins.attrNames units)) (
        unit: exposure.${unit} or defaultExposure
      );
      lockDir = cfg.sourceLockDir;
      lockGroup = cfg.group;
    };

  # The exposure every unit of the module had when this check was written
  # (nixos/unit-hardening.json): a unit may not get worse.
  defaultExposure = 1.6;

  withModule = configuration: [
    flake.nixosModules.default
    configuration
  ];
  enabled = {
    services.every-channel = {
      enable = true;
      package = ecNode;
    };
  };

  # The README's node flake, with its inputs replaced: nixpkgs by lib (whose
  # nixosSystem hands back its arguments), ec-launch by this flake, ec-node
  # by a fake package.
  readme =
    let
      outputs = (import (/. + readmeDir + "/flake.nix")).outputs {
        self = outputs;
        nixpkgs.lib = lib // {
          nixosSystem = arguments: arguments;
        };
        ec-launch = flake;
        ec-node.packages.x86_64-linux.default = ecNode;
      };
      node = outputs.nixosConfigurations.node;
    in
    assert node.system == "x86_64-linux";
    node.modules;

  clusterNode =
    hostName:
    withModule {
      imports = [
        ./cluster-example.nix
        enabled
      ];
      networking.hostName = hostName;
    };

  # Characters systemd reads specially somewhere: a space (a separator in
  # ReadWritePaths=, DeviceAllow= and tmpfiles.d), `%` (a specifier: `%u`
  # expands silently to a user name, `%Z` is refused with a warning), a
  # double quote, a backslash (an escape, or at the end of a line a line
  # continuation) and non-ASCII text. Newlines and tabs go where systemd
  # can express them (ExecStart=, Environment=); elsewhere the options
  # refuse them (tests/nix/main.rs).
  awkward = "a b %u 100%Z \"q\" \\ é";
  awkwardLockDir = "/run/every channel/${awkward}/locks";
  # A lock directory is never the last word of a line: it may end in a
  # backslash or a space.
  endingLockDir = "/run/every-channel/locks \\ ";

  scenarios = {
    readme-quick-start.modules = readme;

    devices-example.modules = withModule {
      imports = [
        ./devices-example.nix
        enabled
      ];
    };

    priority-example.modules = withModule {
      imports = [
        ./priority-example.nix
        enabled
      ];
    };

    cluster-example-node-a.modules = clusterNode "node-a";
    cluster-example-node-b.modules = clusterNode "node-b";

    # A URL with a token in a root-only file, and etcd with mutual TLS and
    # a password: every secret through LoadCredential.
    credentials.modules = withModule {
      imports = [ enabled ];
      services.every-channel = {
        cluster = {
          enable = true;
          endpoints = [
            "https://etcd-1.lan:2379"
            "https://etcd-2.lan:2379"
          ];
          caFile = "/etc/every-channel/etcd-ca.pem";
          certFile = "/etc/every-channel/etcd-client.pem";
          keyFile = "/run/keys/etcd-client-key.pem";
          userFile = "/run/keys/etcd-user";
        };
        publishers.premium = {
          sourceFile = "/run/keys/premium-url";
          args = [ "publish" ];
        };
        archiveWorkers.nightly = {
          environmentFile = "/run/keys/archive.env";
          args = [
            "archive"
            "--to"
            "/var/lib/every-channel-archive"
          ];
          serviceConfig.StateDirectory = "every-channel-archive";
        };
      };
    };

    # Every directive the module writes, with awkward values.
    escaping = {
      modules = withModule {
        imports = [ enabled ];
        services.every-channel = {
          sourceLockDir = awkwardLockDir;
          publishers.awkward = {
            source = "http://10.0.0.5:5004/auto/v5.1?name=${awkward}";
            lockKey = "key ${awkward}";
            args = [
              awkward
              "line\nbreak"
              "tab\there"
              "$HOME"
              "%d/source"
            ];
            environment.EC_AWKWARD = "${awkward} $HOME\nsecond line\tend";
            environmentFile = "/run/keys/${awkward}.env";
          };
          publishers.awkward-file = {
            sourceFile = "/run/keys/${awkward}/url";
            devices = [ "/dev/video ${awkward}" ];
          };
          publishers.awkward-device.source = "/dev/v4l/by-id/${awkward}";
        };
      };
      expect = {
        "every-channel-publisher-awkward.service" = {
          argv = [
            "/nix/store/00000000000000000000000000000000-ec-launch-0.1.0/bin/ec-launch"
            "run"
            "--lock-dir"
            awkwardLockDir
            "--on-busy"
            "skip"
            "--reclaim-escaped"
            "--key"
            "key ${awkward}"
            "--source"
            "http://10.0.0.5:5004/auto/v5.1?name=${awkward}"
            "--"
            "/nix/store/00000000000000000000000000000000-ec-node-0.1/bin/ec-node"
            awkward
            "line\nbreak"
            "tab\there"
            # `$$` is a literal `$` when systemd runs the command.
            "$$HOME"
            "%d/source"
          ];
          environment = [ "EC_AWKWARD=${awkward} $HOME\nsecond line\tend" ];
          environmentFiles = [ "/run/keys/${awkward}.env" ];
          readWritePaths = [ awkwardLockDir ];
        };
        "every-channel-publisher-awkward-file.service" = {
          deviceAllow = [ "/dev/video ${awkward} rw" ];
          readWritePaths = [ awkwardLockDir ];
        };
        "every-channel-publisher-awkward-device.service" = {
          argv = [
            "/nix/store/00000000000000000000000000000000-ec-launch-0.1.0/bin/ec-launch"
            "run"
            "--lock-dir"
            awkwardLockDir
            "--on-busy"
            "skip"
            "--reclaim-escaped"
            "--source"
            "/dev/v4l/by-id/${awkward}"
            "--"
            "/nix/store/00000000000000000000000000000000-ec-node-0.1/bin/ec-node"
          ];
          deviceAllow = [ "/dev/v4l/by-id/${awkward} rw" ];
        };
      };
      exposure."every-channel-publisher-awkward-file.service" = 1.8;
      exposure."every-channel-publisher-awkward-device.service" = 1.8;
    };

    # Cluster mode's words and credentials, with awkward values.
    escaping-cluster = {
      modules = withModule {
        imports = [ enabled ];
        services.every-channel = {
          sourceLockDir = endingLockDir;
          cluster = {
            enable = true;
            endpoints = [ "https://etcd-1.lan:2379" ];
            node = "rack 2/${awkward}";
            caFile = "/etc/every-channel/${awkward}/ca.pem";
            certFile = "/etc/every-channel/${awkward}/cert.pem";
            keyFile = "/run/keys/${awkward}/key.pem";
            userFile = "/run/keys/${awkward}/user";
          };
          publishers.awkward.sourceFile = "/run/keys/${awkward}/url";
        };
      };
      expect."every-channel-publisher-awkward.service".readWritePaths = [ endingLockDir ];
      expect."every-channel-publisher-awkward.service".argv = [
        "/nix/store/00000000000000000000000000000000-ec-launch-0.1.0/bin/ec-launch"
        "run"
        "--lock-dir"
        endingLockDir
        "--on-busy"
        "skip"
        "--reclaim-escaped"
        "--etcd"
        "https://etcd-1.lan:2379"
        "--etcd-ttl"
        "10"
        "--etcd-stop-grace"
        "2"
        "--etcd-ca"
        "/run/credentials/every-channel-publisher-awkward.service/etcd-ca"
        "--etcd-cert"
        "/run/credentials/every-channel-publisher-awkward.service/etcd-cert"
        "--etcd-key"
        "/run/credentials/every-channel-publisher-awkward.service/etcd-key"
        "--etcd-user-file"
        "/run/credentials/every-channel-publisher-awkward.service/etcd-user"
        "--node"
        "rack 2/${awkward}"
        "--source-file"
        "/run/credentials/every-channel-publisher-awkward.service/source"
        "--"
        "/nix/store/00000000000000000000000000000000-ec-node-0.1/bin/ec-node"
      ];
    };

    eval-tests-base = {
      modules = withModule ((import ./base-example.nix).module ecNode);
      expectedWarnings = [
        "services.every-channel.publishers.leaky.source looks like it contains credentials"
        "services.every-channel.publishers.tokened.source looks like it contains credentials"
      ];
      expect = {
        "every-channel-publisher-tuner-a.service" = {
          argv = [
            "/nix/store/00000000000000000000000000000000-ec-launch-0.1.0/bin/ec-launch"
            "run"
            "--lock-dir"
            "/run/every-channel/source-locks"
            "--on-busy"
            "skip"
            "--reclaim-escaped"
            "--source"
            "http://10.0.0.5:5004/auto/v5.1"
            "--"
            "/nix/store/00000000000000000000000000000000-ec-node-0.1/bin/ec-node"
            "publish"
            "--name"
            "tuner a"
            "--bitrate-share=50%"
            "$$HOME"
          ];
          environment = [ "EC_NODE_LOG=info" ];
          readWritePaths = [ "/run/every-channel/source-locks" ];
        };
        "every-channel-publisher-webcam.service".deviceAllow = [ "/dev/video0 rw" ];
        "every-channel-archive-nightly.service" = {
          environmentFiles = [ "/run/keys/archive.env" ];
          readWritePaths = [ "/var/lib/every-channel" ];
        };
      };
      exposure = {
        # A device source: PrivateDevices=false, with DevicePolicy=closed.
        "every-channel-publisher-webcam.service" = 1.8;
        # The configuration relaxes ProtectHome to read-only.
        "every-channel-archive-nightly.service" = 1.7;
      };
    };
  };
in
{
  scenarios = lib.mapAttrsToList render scenarios;
}

# Evaluates the NixOS module against NixOS's own modules (./nixos.nix: the
# real systemd.services types and merges, users, tmpfiles; what is stubbed
# is listed there), and checks the unit contract of issue 4:
# the kill policy from nixos/unit-policy.json on every unit, credential
# handling, readable failures for misconfigurations, no PartOf/BindsTo; and
# issue 9's items: the launcher on PATH, `program`, the kill-only policy of
# extraUnits, hardening from nixos/unit-hardening.json, escaping as nixpkgs'
# utils.escapeSystemdExecArg, and the inputs of the build-time source check;
# and issue 10's tuner devices: `--tuners`/`--device` for units on a declared
# host or naming the device, the assertions on contradictions, the warning
# for skipping units on too few tuners, and docs/nixos-module.md's
# example (./devices-example.nix); and issue 12's cluster mode: the etcd flags,
# credentials through LoadCredential, the launcher's watchdog, one readable
# assertion per misconfiguration, and docs/cluster.md's two-node
# example (./cluster-example.nix).
#
#   EC_NIXPKGS_LIB=/abs/nixpkgs-lib EC_NIXOS_MODULES=/abs/nixos-modules \
#     nix-instantiate --store dummy:// --eval --strict --json tests/nix/eval.nix
#
# (./setup.nix says what the two variables name; `cargo test --locked --test
# nix` runs this.) On success this prints the evaluated serviceConfig of one
# publisher and one archive worker; on failure it throws with the list of
# failed checks.
let
  setup = import ./setup.nix;
  inherit (setup)
    lib
    pkgs
    ecNode
    ecLaunch
    evalModule
    ;

  # The two halves of the policy: `kill` for every unit, extraUnits too;
  # `restart` for the module's own units only.
  policyFile = builtins.fromJSON (builtins.readFile ../../nixos/unit-policy.json);
  killPolicy = policyFile.kill or { };
  restartPolicy = policyFile.restart or { };
  policy = killPolicy // restartPolicy;

  hardeningFile = ../../nixos/unit-hardening.json;

  evalConfig = configuration: (evalModule configuration).config;

  baseExample = import ./base-example.nix;
  inherit (baseExample) tunerUrl secretPassword secretToken;
  base = baseExample.module ecNode;

  config = evalConfig base;
  services = config.systemd.services;
  ours = lib.filterAttrs (name: _: lib.hasPrefix "every-channel-" name) services;
  sc = name: services.${name}.serviceConfig;
  publisher = sc "every-channel-publisher-tuner-a";
  archiveWorker = sc "every-channel-archive-proof";

  failingAssertions = cfg: map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
  # The check that exactly `expected` fail, in order, showing what did.
  assertionsAre =
    cfg: expected:
    let
      failing = failingAssertions cfg;
    in
    check (failing == expected) (builtins.toJSON failing);
  # An evaluation that must fail (type error, merge conflict, throw). Of a
  # set of NixOS services, what their unit files are made of is forced:
  # NixOS's unit options without a default (startLimitBurst, …) throw when
  # read, as they are meant to.
  fails =
    value:
    let
      isServices = builtins.isAttrs value && lib.all (unit: unit ? serviceConfig) (builtins.attrValues value);
      forced =
        if isServices then
          lib.mapAttrs (_: unit: { inherit (unit) serviceConfig environment unitConfig; }) value
        else
          value;
    in
    !(builtins.tryEval (builtins.deepSeq forced forced)).success;
  # The module's own part of NixOS's lists and sets, which hold NixOS's too.
  ourRules = cfg: lib.filter (lib.hasInfix "every-channel") cfg.systemd.tmpfiles.rules;
  ourServices = cfg: lib.filter (lib.hasPrefix "every-channel-") (builtins.attrNames cfg.systemd.services);

  withEveryChannel = settings: evalConfig (lib.recursiveUpdate base { services.every-channel = settings; });
  onePublisher =
    publisher:
    evalConfig {
      services.every-channel = {
        enable = true;
        package = ecNode;
        publishers.broken = publisher;
      };
    };

  # Issue 11: one publisher `wd` with a watchdog.
  watchdogEval =
    publisher:
    evalConfig {
      services.every-channel = {
        enable = true;
        package = ecNode;
        publishers.wd = publisher;
      };
    };
  watchdogUnit = publisher: (watchdogEval publisher).systemd.services.every-channel-publisher-wd.serviceConfig;

  bothSources = onePublisher {
    source = tunerUrl;
    sourceFile = "/run/keys/tuner-url";
  };
  neitherSource = onePublisher { args = [ "publish" ]; };
  noPackage = evalConfig {
    services.every-channel = {
      enable = true;
      publishers.a.source = tunerUrl;
    };
  };

  # Issue 10: one publisher `probe` beside `devices`, and the flags a unit
  # on a device gets.
  probe =
    devices: publisher:
    evalConfig {
      services.every-channel = {
        enable = true;
        package = ecNode;
        inherit devices;
        publishers.probe = publisher;
      };
    };
  probeExec = devices: publisher: (probe devices publisher).systemd.services.every-channel-publisher-probe.serviceConfig.ExecStart;
  tunerFlags = tuners: device: ''"--tuners" "${toString tuners}" "--device" "${device}"'';
  hdhr = {
    host = "10.0.0.5";
    tuners = 2;
  };

  # Issue 12: cluster mode on etcd. `clusterOn` is the base configuration
  # with the cluster on (two plain-HTTP endpoints, defaults otherwise).
  etcdEndpoints = [
    "http://10.0.0.1:2379"
    "http://10.0.0.2:2379"
  ];
  clusterOn = cluster: withEveryChannel { cluster = { enable = true; endpoints = etcdEndpoints; } // cluster; };
  clusterUnit = cfg: name: cfg.systemd.services.${name};
  clusterSc = cfg: name: (clusterUnit cfg name).serviceConfig;
  etcdFlags = ''"--etcd" "http://10.0.0.1:2379,http://10.0.0.2:2379" "--etcd-ttl" "10" "--etcd-stop-grace" "2"'';
  # The locked units of `base` (a source or sourceFile), and the one without.
  lockedUnitNames = [
    "every-channel-archive-proof"
    "every-channel-publisher-leaky"
    "every-channel-publisher-secret"
    "every-channel-publisher-tokened"
    "every-channel-publisher-tuner-a"
    "every-channel-publisher-webcam"
  ];
  tlsFiles = {
    caFile = "/etc/every-channel/etcd-ca.pem";
    certFile = "/run/keys/etcd-cert.pem";
    keyFile = "/run/keys/etcd-key.pem";
    userFile = "/run/keys/etcd-user";
  };
  etcdPassword = "etcd-hunter3";

  # A missing attribute is not something tryEval catches; a throw is.
  clusterOptions =
    (evalModule base).options.services.every-channel.cluster or (throw "no services.every-channel.cluster options");
  clusterDefaults = config.services.every-channel.cluster or (throw "no services.every-channel.cluster");

  clusterChecks = {
    "the cluster is off by default: no etcd flag, credential or cluster watchdog" =
      let
        options = clusterOptions;
      in
      check (
        !clusterDefaults.enable
        && clusterDefaults.endpoints == [ ]
        && clusterDefaults.ttl == 10
        && clusterDefaults.stopGrace == 2
        && lib.all (f: clusterDefaults.${f} == null) [ "caFile" "certFile" "keyFile" "userFile" ]
        && clusterDefaults.node == "nixos"
        && options.node.defaultText.text or null == "config.networking.hostName"
        && lib.all (
          name:
          let
            s = sc name;
          in
          !(has "--etcd" s.ExecStart) && !(has "--node" s.ExecStart) && !(s ? WatchdogSec) && !(s ? TimeoutAbortSec)
          && !(lib.any (lib.hasPrefix "etcd-") (s.LoadCredential or [ ]))
        ) (builtins.attrNames ours)
      ) (builtins.toJSON clusterDefaults);

    "cluster mode gives every locked unit the etcd flags, and the unlocked worker none" =
      let
        cfg = clusterOn { };
        s = clusterSc cfg;
      in
      check (
        (s "every-channel-publisher-tuner-a").ExecStart == lib.concatStringsSep " " [
          ''"${ecLaunch}/bin/ec-launch" "run" "--lock-dir" "/run/every-channel/source-locks"''
          ''"--on-busy" "skip" "--reclaim-escaped" ${etcdFlags} "--node" "nixos" "--source" "${tunerUrl}" --''
          ''"${ecNode}/bin/ec-node" "publish" "--name" "tuner a" "--bitrate-share=50%%" "$$HOME"''
        ]
        && lib.all (name: has ''${etcdFlags} "--node" "nixos" '' (s name).ExecStart) lockedUnitNames
        && has ''"--node" "nixos" --source-file %d/source -- '' (s "every-channel-publisher-secret").ExecStart
        && (s "every-channel-archive-nightly").ExecStart == ''"${ecNode}/bin/ec-node" "archive" "--to" "/var/lib/every-channel"''
        && !((s "every-channel-archive-nightly") ? WatchdogSec)
        && failingAssertions cfg == [ ]
        && cfg.warnings == config.warnings
      ) (builtins.toJSON (map (name: (s name).ExecStart) (lockedUnitNames ++ [ "every-channel-archive-nightly" ])));

    "ttl, stopGrace and node reach the flags; node follows networking.hostName" =
      let
        named = clusterOn { ttl = 30; stopGrace = 5; };
        host = evalConfig (lib.recursiveUpdate base {
          networking.hostName = "tuner-node-b";
          services.every-channel.cluster = { enable = true; endpoints = etcdEndpoints; };
        });
        explicit = clusterOn { node = "rack 2/slot 5%"; };
        exec = c: (clusterSc c "every-channel-publisher-tuner-a").ExecStart;
      in
      check (
        has ''"--etcd-ttl" "30" "--etcd-stop-grace" "5" "--node" "nixos"'' (exec named)
        && has ''"--node" "tuner-node-b" "--source"'' (exec host)
        && has ''"--node" "rack 2/slot 5%%" "--source"'' (exec explicit)
      ) (builtins.toJSON (map exec [ named host explicit ]));

    "weight and placement reach the flags only when they differ from the launcher's defaults" =
      let
        exec = c: (clusterSc c "every-channel-publisher-tuner-a").ExecStart;
        plain = clusterOn { };
        weighted = clusterOn { weight = 3; };
        first = clusterOn { placement = "first"; };
        options = clusterOptions;
      in
      check (
        clusterDefaults.weight == 1
        && clusterDefaults.placement == "spread"
        && options.weight.type.description or "" != ""
        && !(has "--node-weight" (exec plain)) && !(has "--placement" (exec plain))
        && has ''"--node" "nixos" "--node-weight" "3" "--source"'' (exec weighted)
        && has ''"--node" "nixos" "--placement" "first" "--source"'' (exec first)
        && failingAssertions weighted == [ ]
        && failingAssertions first == [ ]
      ) (builtins.toJSON (map exec [ plain weighted first ]));

    "a weight outside 1..1000 or an unknown placement is refused by the option types" =
      let
        bad = cluster: !(builtins.tryEval (builtins.deepSeq (exec (clusterOn cluster)) true)).success;
        exec = c: (clusterSc c "every-channel-publisher-tuner-a").ExecStart;
      in
      check (bad { weight = 0; } && bad { weight = 1001; } && bad { placement = "random"; }) "";

    "TLS and user files go through LoadCredential; the flags point at %d, never at the files" =
      let
        cfg = withEveryChannel {
          cluster = tlsFiles // { enable = true; endpoints = [ "https://etcd-1.lan:2379" "https://etcd-2.lan:2379" ]; };
        };
        s = clusterSc cfg;
        want = [
          "etcd-ca:/etc/every-channel/etcd-ca.pem"
          "etcd-cert:/run/keys/etcd-cert.pem"
          "etcd-key:/run/keys/etcd-key.pem"
          "etcd-user:/run/keys/etcd-user"
        ];
        flags = ''"--etcd-stop-grace" "2" "--etcd-ca" %d/etcd-ca "--etcd-cert" %d/etcd-cert "--etcd-key" %d/etcd-key "--etcd-user-file" %d/etcd-user "--node" "nixos"'';
      in
      check (
        lib.all (
          name:
          lib.all (line: lib.elem line ((s name).LoadCredential or [ ])) want
          && has flags (s name).ExecStart
          && !(lib.any (file: has file (s name).ExecStart) (builtins.attrValues tlsFiles))
        ) lockedUnitNames
        && (s "every-channel-publisher-secret").LoadCredential == [ "source:/run/keys/tuner-url" ] ++ want
        && !((s "every-channel-archive-nightly") ? LoadCredential)
        && failingAssertions cfg == [ ]
      ) (builtins.toJSON (map (name: { inherit ((s name)) ExecStart; LoadCredential = (s name).LoadCredential or null; }) [ "every-channel-publisher-tuner-a" "every-channel-publisher-secret" ]));

    "a CA or certificate from the store is loaded too, and stays off the command line" =
      let
        ca = "/nix/store/00000000000000000000000000000000-etcd-ca.pem";
        cert = "/nix/store/00000000000000000000000000000000-etcd-cert.pem";
        cfg = clusterOn { endpoints = [ "https://etcd-1.lan:2379" ]; caFile = ca; certFile = cert; keyFile = "/run/keys/etcd-key.pem"; };
        s = clusterSc cfg "every-channel-publisher-tuner-a";
        pathCa = clusterSc (clusterOn { endpoints = [ "https://etcd-1.lan:2379" ]; caFile = ./cluster-example.nix; }) "every-channel-publisher-tuner-a";
      in
      check (
        lib.elem "etcd-ca:${ca}" s.LoadCredential
        && lib.elem "etcd-cert:${cert}" s.LoadCredential
        && !(has "/nix/store/00000000000000000000000000000000-etcd" s.ExecStart)
        && failingAssertions cfg == [ ]
        # A Nix path is copied to the store (not its source path, which is
        # not on the node), and the command line still has only %d.
        && lib.hasPrefix "etcd-ca:/nix/store/" (lib.head pathCa.LoadCredential)
        && lib.hasSuffix "-cluster-example.nix" (lib.head pathCa.LoadCredential)
        && has ''"--etcd-ca" %d/etcd-ca "--node"'' pathCa.ExecStart
        && !(has "cluster-example.nix" pathCa.ExecStart)
      ) (builtins.toJSON [ s pathCa ]);

    "keyFile and userFile refuse Nix paths and store paths" =
      let
        cfg = cluster: (clusterOn cluster).systemd.services;
      in
      check (
        !fails (cfg { userFile = "/run/keys/etcd-user"; })
        && fails (cfg { userFile = ./eval.nix; })
        && fails (cfg { userFile = "/nix/store/00000000000000000000000000000000-etcd-user"; })
        && fails (cfg { keyFile = ./eval.nix; certFile = "/run/keys/c.pem"; })
        && fails (cfg { keyFile = "/nix/store/00000000000000000000000000000000-etcd-key"; certFile = "/run/keys/c.pem"; })
        && fails (cfg { userFile = "etcd-user"; })
      ) "a Nix path, a /nix/store string or a relative path as keyFile/userFile must not evaluate";

    "cluster units wait for the network and keep Type=exec, with the launcher as the watchdog's main process" =
      let
        cfg = clusterOn { };
        unit = clusterUnit cfg "every-channel-publisher-tuner-a";
        s = unit.serviceConfig;
      in
      check (
        lib.all (
          name:
          let
            u = clusterUnit cfg name;
          in
          lib.elem "network-online.target" u.after
          && lib.elem "network-online.target" u.wants
          && u.serviceConfig.Type == "exec"
          && u.serviceConfig.WatchdogSec == 3
          && u.serviceConfig.NotifyAccess == "main"
          && u.serviceConfig.TimeoutAbortSec == 2
        ) lockedUnitNames
      ) (builtins.toJSON s);

    "WatchdogSec is half of what the TTL leaves after stopGrace and the margin, at least 1 s" =
      let
        watchdog =
          ttl: stopGrace:
          (clusterSc (clusterOn { inherit ttl stopGrace; }) "every-channel-publisher-tuner-a").WatchdogSec;
        cases = [
          { ttl = 10; stopGrace = 2; want = 3; }
          { ttl = 30; stopGrace = 5; want = 12; }
          { ttl = 7; stopGrace = 2; want = 2; }
          { ttl = 5; stopGrace = 1; want = 1; }
          { ttl = 60; stopGrace = 2; want = 28; }
        ];
        wrong = lib.filter (c: watchdog c.ttl c.stopGrace != c.want) cases;
      in
      check (wrong == [ ]) (builtins.toJSON (map (c: c // { got = watchdog c.ttl c.stopGrace; }) wrong));

    # A launcher frozen while its renewals are on time last renewed at most
    # ttl/3 ago, so its lease lasts at least 2/3 ttl more; systemd must
    # have killed the cgroup by then (WatchdogSec + stopGrace) with the
    # launcher's 1 s margin to spare, or the operator is told.
    "a ttl too short for the watchdog to beat the lease of a frozen launcher warns, naming the fix" =
      let
        warned =
          ttl: stopGrace:
          lib.filter (has "frozen") (evalConfig (lib.recursiveUpdate base {
            services.every-channel = {
              stopTimeout = "60s";
              cluster = { enable = true; endpoints = etcdEndpoints; inherit ttl stopGrace; };
            };
          })).warnings;
      in
      check (
        warned 7 2 == [
          "services.every-channel.cluster.ttl: with ttl = 7 and stopGrace = 2, systemd kills a frozen ec-launch up to WatchdogSec (2 s) + stopGrace after its last ping, which may leave less than a 1 s margin before its lease expires on the server (2/3 of ttl after its last renewal); set ttl to at least 9 (3 × (stopGrace + 1)), or lower stopGrace."
        ]
        && warned 8 2 == [ ]
        && warned 10 2 == [ ]
        && warned 9 3 == [ ]
        && lib.length (warned 10 3) == 1
        && lib.all (ttl: warned ttl 10 != [ ]) [ 23 27 31 ]
        && lib.all (ttl: warned ttl 10 == [ ]) [ 32 33 40 120 ]
        && lib.all (has "at least 33") (warned 23 10)
      ) (builtins.toJSON (warned 7 2 ++ warned 10 3 ++ warned 23 10));

    "a watchdog abort kills the unit within stopGrace (TimeoutAbortSec), not stopTimeout" =
      let
        s = clusterSc (clusterOn { ttl = 30; stopGrace = 5; }) "every-channel-publisher-tuner-a";
      in
      check (s.TimeoutAbortSec == 5 && s.TimeoutStopSec == "6s") (builtins.toJSON s);

    # Issue 16 item 3: the progress watchdog used to replace the cluster
    # watchdog with NotifyAccess=all, so its monitor fed systemd for a
    # frozen launcher. Only the launcher vouches now.
    "a cluster unit with a progress watchdog keeps the cluster watchdog with NotifyAccess=main and passes the span as --progress-window" =
      let
        progress = evalConfig (lib.recursiveUpdate base {
          services.every-channel = {
            cluster = { enable = true; endpoints = etcdEndpoints; };
            publishers.tuner-a.watchdogSec = "30s";
          };
        });
        s = clusterSc progress "every-channel-publisher-tuner-a";
      in
      check (
        s.WatchdogSec == 3
        && s.NotifyAccess == "main"
        && s.TimeoutAbortSec == 2
        && has ''"--progress-watchdog" "--progress-window" "30" ${etcdFlags} "--node" "nixos" "--source"'' s.ExecStart
        && failingAssertions progress == [ ]
      ) (builtins.toJSON s);

    # Issue 16 item 2: with the launcher SIGKILLed, systemd's cgroup kill is
    # what ends a SIGTERM-ignoring helper; it must come within stopGrace +
    # margin, before another node may start.
    "a cluster unit's TimeoutStopSec is stopGrace + margin, whatever stopTimeout says" =
      let
        s = grace: stopTimeout: clusterSc (withEveryChannel {
          inherit stopTimeout;
          cluster = { enable = true; endpoints = etcdEndpoints; stopGrace = grace; ttl = 30; };
        }) "every-channel-publisher-tuner-a";
        plain = withEveryChannel { stopTimeout = "60s"; };
      in
      check (
        (s 2 "10s").TimeoutStopSec == "3s"
        && (s 5 "60s").TimeoutStopSec == "6s"
        && (clusterSc plain "every-channel-publisher-tuner-a").TimeoutStopSec == "60s"
      ) (builtins.toJSON (s 2 "10s"));

    "a cluster unit's own TimeoutStopSec beyond stopGrace + margin fails with a readable assertion" =
      let
        failing = extra: failingAssertions (evalConfig (lib.recursiveUpdate base {
          services.every-channel = {
            cluster = { enable = true; endpoints = etcdEndpoints; };
            publishers.tuner-a.serviceConfig = extra;
          };
        }));
        forced = failingAssertions (evalConfig (lib.recursiveUpdate base {
          services.every-channel.cluster = { enable = true; endpoints = etcdEndpoints; };
          systemd.services.every-channel-publisher-tuner-a.serviceConfig.TimeoutStopSec = lib.mkForce "90s";
        }));
        message = value: "services.every-channel.publishers.tuner-a.serviceConfig.TimeoutStopSec (or systemd.services.every-channel-publisher-tuner-a.serviceConfig.TimeoutStopSec): ${value} is more than cluster.stopGrace + 1 s (3 s), or not a time span this module can read: when ec-launch itself is killed, systemd's kill of the unit's cgroup must end every reader before another node may start (the lease's expiry plus the lock delay); remove the override (cluster mode sets 3s), or raise cluster.stopGrace.";
      in
      check (
        failing { TimeoutStopSec = "30s"; } == [ (message "30s") ]
        && failing { TimeoutStopSec = "4"; } == [ (message "4") ]
        && failing { TimeoutStopSec = "3s"; } == [ ]
        && failing { TimeoutStopSec = "2500ms"; } == [ ]
        && forced == [ (message "90s") ]
      ) (builtins.toJSON (failing { TimeoutStopSec = "30s"; } ++ forced));

    "a fenced launcher (exit 76) is restarted: RestartPreventExitStatus is 75 only" =
      let
        cfg = clusterOn { };
      in
      check (lib.all (
        name:
        let
          s = clusterSc cfg name;
        in
        s.Restart == "always"
        && s.RestartPreventExitStatus == [ 75 ]
        && !(lib.elem 76 s.SuccessExitStatus)
        && s.KillMode == "control-group"
      ) lockedUnitNames) "RestartPreventExitStatus";

    # The supervising launcher exits 143 when a stop's SIGTERM ended the
    # program; without this every `systemctl stop` left the unit failed.
    "a cluster unit stopped by SIGTERM ends clean: SuccessExitStatus is 75 and 143" =
      let
        on = clusterSc (clusterOn { }) "every-channel-publisher-tuner-a";
        off = sc "every-channel-publisher-tuner-a";
      in
      check (
        on.SuccessExitStatus == [ 75 143 ]
        && off.SuccessExitStatus == [ 75 ]
      ) (builtins.toJSON [ on.SuccessExitStatus off.SuccessExitStatus ]);

    "cluster mode without endpoints fails with a readable assertion" =
      let
        cfg = withEveryChannel { cluster.enable = true; };
      in
      assertionsAre cfg [
        "services.every-channel.cluster.endpoints: cluster mode is enabled but no etcd endpoint is given; list the cluster's client URLs, e.g. [ \"https://etcd-1.lan:2379\" ]."
      ];

    "a TTL the launcher would refuse fails with a readable assertion naming the minimum" =
      let
        messages = ttl: stopGrace: failingAssertions (clusterOn { inherit ttl stopGrace; });
      in
      check (
        messages 6 2 == [
          "services.every-channel.cluster.ttl: 6 s leaves no time to renew the lease before the fence (renewal every ttl/3, each call up to ttl/6, then stopGrace = 2 s and a 1 s margin); ec-launch refuses a ttl of 2 × (stopGrace + 1) s or less: set ttl to at least 7, or lower stopGrace."
        ]
        && messages 7 2 == [ ]
        && lib.length (messages 12 5) == 1
        && messages 13 5 == [ ]
        && messages 4 1 != [ ]
        && messages 5 1 == [ ]
      ) (builtins.toJSON (messages 6 2 ++ messages 12 5 ++ messages 4 1));

    "ttl and stopGrace must be whole positive seconds" =
      let
        services = cluster: (clusterOn cluster).systemd.services;
      in
      check (
        !fails (services { ttl = 10; stopGrace = 2; })
        && fails (services { ttl = 0; })
        && fails (services { ttl = "10s"; })
        && fails (services { stopGrace = 0; })
        && fails (services { stopGrace = 1.5; })
      ) "ttl = 0, ttl = \"10s\", stopGrace = 0 and stopGrace = 1.5 must not evaluate";

    "an endpoint with a user or password fails, without echoing it" =
      let
        cfg = clusterOn { endpoints = [ "http://10.0.0.1:2379" "https://etcdadmin:${etcdPassword}@etcd-2.lan:2379" ]; caFile = tlsFiles.caFile; };
        messages = failingAssertions cfg;
      in
      check (
        messages == [
          "services.every-channel.cluster.endpoints: entry 2 has a user name or password in it (`user:password@`); the Nix store is world-readable and ec-launch refuses such URLs: remove it from the URL and put `user:password` in a root-only file named by services.every-channel.cluster.userFile."
        ]
        && !(lib.any (m: has etcdPassword m || has "etcdadmin" m) (messages ++ cfg.warnings))
      ) (builtins.toJSON messages);

    "an endpoint that is not an http or https URL, or holds a comma, fails with a readable assertion" =
      let
        message = index: "services.every-channel.cluster.endpoints: entry ${toString index} is not an etcd client URL; give `http://host:port` or `https://host:port` (one URL per entry, no comma or space).";
        bad = [
          "10.0.0.1:2379"
          "etcd-1.lan"
          "unix:///run/etcd.sock"
          "grpc://10.0.0.1:2379"
          "http://"
          "http://10.0.0.1:2379,http://10.0.0.2:2379"
          "http://10.0.0.1:2379 "
        ];
        wrong = lib.filter (
          endpoint: failingAssertions (clusterOn { endpoints = [ "http://10.0.0.9:2379" endpoint ]; }) != [ (message 2) ]
        ) bad;
        good = [
          "HTTP://10.0.0.1:2379"
          "http://[fd00::1]:2379"
          "http://etcd-1.lan"
        ];
        refused = lib.filter (endpoint: failingAssertions (clusterOn { endpoints = [ endpoint ]; }) != [ ]) good;
      in
      check (wrong == [ ] && refused == [ ]) (builtins.toJSON { inherit wrong refused; });

    "certFile without keyFile, or keyFile without certFile, fails with a readable assertion" =
      let
        https = { endpoints = [ "https://etcd-1.lan:2379" ]; inherit (tlsFiles) caFile; };
        certOnly = failingAssertions (clusterOn (https // { inherit (tlsFiles) certFile; }));
        keyOnly = failingAssertions (clusterOn (https // { inherit (tlsFiles) keyFile; }));
        message = "services.every-channel.cluster: certFile and keyFile go together (a client certificate and its key); set both, or neither.";
      in
      check (certOnly == [ message ] && keyOnly == [ message ]) (builtins.toJSON (certOnly ++ keyOnly));

    "an https endpoint without caFile fails with a readable assertion" =
      let
        cfg = clusterOn { endpoints = [ "https://etcd-1.lan:2379" ]; };
      in
      assertionsAre cfg [
        "services.every-channel.cluster.caFile: an endpoint is https, and ec-launch trusts only the CA it is given (not the system's roots); set caFile to the CA that signed the etcd servers' certificates."
      ];

    "a password over plain http, or TLS files with no https endpoint, warn" =
      let
        userOverHttp = clusterOn { userFile = tlsFiles.userFile; };
        unusedTls = clusterOn { inherit (tlsFiles) caFile certFile keyFile; };
        mixed = clusterOn { endpoints = [ "https://etcd-1.lan:2379" "http://10.0.0.2:2379" ]; inherit (tlsFiles) caFile userFile; };
        about = cfg: lib.filter (has "services.every-channel.cluster") cfg.warnings;
        tls = clusterOn { endpoints = [ "https://etcd-1.lan:2379" ]; inherit (tlsFiles) caFile userFile; };
      in
      check (
        about userOverHttp == [
          "services.every-channel.cluster.userFile: an endpoint is plain http, so the etcd password from userFile crosses the network in clear text; use https endpoints (with caFile)."
        ]
        && about unusedTls == [
          "services.every-channel.cluster: caFile, certFile or keyFile is set but no endpoint is https, so they are not used; use https endpoints or remove them."
        ]
        && lib.length (about mixed) == 1
        && about tls == [ ]
        && failingAssertions userOverHttp == [ ]
        && failingAssertions unusedTls == [ ]
      ) (builtins.toJSON (about userOverHttp ++ about unusedTls ++ about mixed ++ about tls));

    "an empty node name fails with a readable assertion" =
      let
        cfg = evalConfig (lib.recursiveUpdate base {
          networking.hostName = "";
          services.every-channel.cluster = { enable = true; endpoints = etcdEndpoints; };
        });
      in
      assertionsAre cfg [
        "services.every-channel.cluster.node: empty (networking.hostName is empty, e.g. taken from DHCP); set node to a name that is unique among the cluster's nodes."
      ];

    "a stopTimeout within stopGrace and the margin fails with a readable assertion" =
      let
        at = stopTimeout: cluster: failingAssertions (evalConfig (lib.recursiveUpdate base {
          services.every-channel = {
            inherit stopTimeout;
            cluster = { enable = true; endpoints = etcdEndpoints; } // cluster;
          };
        }));
        message = "services.every-channel.stopTimeout: 3s is not more than cluster.stopGrace (2 s) + 1 s: systemd would SIGKILL the launcher before it has stopped the program and revoked the lease, so a standby on another node would wait a whole ttl; raise stopTimeout or lower stopGrace.";
        ok = [ "10s" "3500ms" "4" "1min" "1m 30s" "2min30s" "infinity" " 5 s" "0.5min" ];
        refused = lib.filter (t: at t { } != [ ]) ok;
      in
      check (
        at "3s" { } == [ message ]
        && at "3" { } != [ ]
        && at "2900ms" { } != [ ]
        && at "10s" { stopGrace = 9; } != [ ]
        && at "10s" { stopGrace = 8; ttl = 19; } == [ ]
        && refused == [ ]
      ) (builtins.toJSON { three = at "3s" { }; inherit refused; });

    # The option's type refuses what systemd cannot read (ECP-0137), so the
    # module's own assertion on an unreadable stopTimeout is never reached.
    "a stopTimeout systemd cannot read is refused by its type, with or without cluster mode" =
      let
        services = enable: (evalConfig (lib.recursiveUpdate base {
          services.every-channel = {
            stopTimeout = "soon";
            cluster = { inherit enable; endpoints = etcdEndpoints; };
          };
        })).systemd.services;
      in
      check (fails (services true) && fails (services false)) "stopTimeout = \"soon\" must not evaluate";

    "a unit's own WatchdogSec, NotifyAccess or TimeoutAbortSec in cluster mode fails with a readable assertion" =
      let
        cfg = extra: failingAssertions (evalConfig (lib.recursiveUpdate base {
          services.every-channel = {
            cluster = { enable = true; endpoints = etcdEndpoints; };
            publishers.tuner-a.serviceConfig = extra;
          };
        }));
        message = "services.every-channel.publishers.tuner-a.serviceConfig: WatchdogSec, NotifyAccess and TimeoutAbortSec are set by cluster mode (the launcher pings systemd's watchdog, so a frozen launcher is killed within stopGrace, before its lease lapses); remove them, or use watchdogSec for the progress watchdog.";
      in
      check (
        cfg { WatchdogSec = "30s"; } == [ message ]
        && cfg { NotifyAccess = "all"; } == [ message ]
        && cfg { TimeoutAbortSec = "30s"; } == [ message ]
        && cfg { ReadWritePaths = [ "/var/lib/x" ]; } == [ ]
      ) (builtins.toJSON (cfg { WatchdogSec = "30s"; }));

    "the documented two-node example gives both nodes the same flags but their own --node" =
      let
        node =
          hostName:
          evalConfig {
            imports = [ ./cluster-example.nix ];
            networking.hostName = hostName;
            services.every-channel = {
              enable = true;
              package = ecNode;
            };
          };
        a = node "node-a";
        b = node "node-b";
        exec = cfg: cfg.systemd.services.every-channel-publisher-wxyz.serviceConfig.ExecStart;
        flags = hostName: ''"--on-busy" "wait" "--reclaim-escaped" "--tuners" "2" "--device" "192.168.1.20" "--etcd" "https://etcd-1.lan:2379,https://etcd-2.lan:2379,https://etcd-3.lan:2379" "--etcd-ttl" "10" "--etcd-stop-grace" "2" "--etcd-ca" %d/etcd-ca "--etcd-user-file" %d/etcd-user "--node" "${hostName}" "--source" "http://192.168.1.20:5004/auto/v5.1" -- '';
        s = a.systemd.services.every-channel-publisher-wxyz.serviceConfig;
      in
      check (
        has (flags "node-a") (exec a)
        && has (flags "node-b") (exec b)
        && s.LoadCredential == [ "etcd-ca:/etc/every-channel/etcd-ca.pem" "etcd-user:/run/keys/etcd-user" ]
        && failingAssertions a == [ ]
        && a.warnings == [ ]
      ) (builtins.toJSON [ (exec a) (exec b) a.warnings ]);

    "the cluster options are documented" =
      let
        options = clusterOptions;
        d = name: options.${name}.description or "";
      in
      check (
        lib.all (name: d name != "") [ "enable" "endpoints" "ttl" "stopGrace" "caFile" "certFile" "keyFile" "userFile" "node" ]
        && has "LoadCredential" (d "userFile")
        && has "user:password" (d "userFile")
        && has "WatchdogSec" (d "ttl")
        && has "76" (d "ttl")
        && has "networking.hostName" (d "node")
        && options.endpoints ? example
      ) (builtins.toJSON (map d [ "endpoints" "ttl" "userFile" ]));
  };

  # name → { ok; detail }: every check, so a failure report lists them all.
  # A check whose evaluation throws (an option that does not exist yet, a
  # missing attribute) fails with the reason instead of ending the run.
  check = ok: detail: {
    ok =
      let
        result = builtins.tryEval ok;
      in
      result.success && result.value;
    detail =
      let
        result = builtins.tryEval detail;
      in
      if result.success then result.value else "(evaluation failed; rerun with --show-trace)";
  };
  has = needle: haystack: lib.hasInfix needle haystack;

  policyChecks = lib.concatMap (
    { unit, half }:
    lib.mapAttrsToList (
      key: want:
      let
        got = (sc unit).${key} or null;
        expected = if key == "TimeoutStopSec" then config.services.every-channel.stopTimeout else want;
      in
      lib.nameValuePair "policy ${key} on ${unit}" (
        check (
          if lib.isList expected then
            lib.isList got && lib.all (x: lib.elem x got) expected
          else
            got == expected
        ) "got ${builtins.toJSON got}, want ${builtins.toJSON expected}"
      )
    ) half
  ) (map (unit: { inherit unit; half = policy; }) (builtins.attrNames ours) ++ [ { unit = "wt-publish"; half = killPolicy; } ]);

  checks = lib.listToAttrs policyChecks // {
    "units exist for enabled publishers and workers only" =
      let
        want = [
          "every-channel-archive-nightly"
          "every-channel-archive-proof"
          "every-channel-publisher-leaky"
          "every-channel-publisher-secret"
          "every-channel-publisher-tokened"
          "every-channel-publisher-tuner-a"
          "every-channel-publisher-webcam"
        ];
      in
      check (builtins.attrNames ours == want) (builtins.toJSON (builtins.attrNames ours));

    "units start at boot after the network" = check (lib.all (
      unit:
      unit.wantedBy == [ "multi-user.target" ]
      && lib.elem "network-online.target" unit.after
      && lib.elem "network-online.target" unit.wants
    ) (builtins.attrValues ours)) "wantedBy/after/wants";

    "no unit is PartOf or BindsTo anything" = check (lib.all (
      unit:
      unit.partOf == [ ]
      && unit.bindsTo == [ ]
      && !(unit.unitConfig ? PartOf)
      && !(unit.unitConfig ? BindsTo)
    ) (builtins.attrValues ours)) "partOf/bindsTo";

    "the policy reaches a unit defined elsewhere without replacing it" =
      check ((sc "wt-publish").ExecStart == "/run/current-system/sw/bin/wt-publish")
        (builtins.toJSON (sc "wt-publish"));

    "publisher ExecStart runs ec-node through the launcher" =
      check
        (
          publisher.ExecStart == lib.concatStringsSep " " [
            ''"${ecLaunch}/bin/ec-launch" "run" "--lock-dir" "/run/every-channel/source-locks"''
            ''"--on-busy" "skip" "--reclaim-escaped" "--source" "${tunerUrl}" --''
            ''"${ecNode}/bin/ec-node" "publish" "--name" "tuner a" "--bitrate-share=50%%" "$$HOME"''
          ]
        )
        publisher.ExecStart;

    "the flake has the outputs issue 4 lists, for every Linux system" =
      let
        shape = {
          packages = [
            "default"
            "ec-launch"
          ];
          checks = [
            "clippy"
            "ec-launch"
            "vm-test"
          ];
          devShells = [ "default" ];
        };
        systems = [
          "aarch64-linux"
          "x86_64-linux"
        ];
        real = (import ../../flake.nix).outputs {
          self = real;
          nixpkgs = {
            inherit lib;
            legacyPackages = lib.genAttrs systems (_: throw "eval.nix: nixpkgs is not available");
          };
        };
      in
      check (
        lib.all (
          output:
          builtins.attrNames real.${output} == systems
          && lib.all (system: builtins.attrNames real.${output}.${system} == shape.${output}) systems
        ) (builtins.attrNames shape)
        && builtins.attrNames real.formatter == systems
        && real.overlays ? default
        && real.nixosModules ? default
      ) (builtins.toJSON (lib.mapAttrs (_: builtins.attrNames) real));

    "launcherPackage defaults to the flake's package" =
      check (config.services.every-channel.launcherPackage == ecLaunch) "launcherPackage";

    "a worker with a source takes the lock with its key and policy" =
      check (
        has ''"--on-busy" "wait" "--reclaim-escaped" "--key" "tuner-a" "--source" "${tunerUrl}" -- "${ecNode}/bin/ec-node" "proof"'' archiveWorker.ExecStart
      ) archiveWorker.ExecStart;

    "a worker without a source runs ec-node directly" =
      let
        s = sc "every-channel-archive-nightly";
      in
      check (
        s.ExecStart == ''"${ecNode}/bin/ec-node" "archive" "--to" "/var/lib/every-channel"''
        && s.ReadWritePaths == [ "/var/lib/every-channel" ]
        && s.EnvironmentFile == "/run/keys/archive.env"
        && s.ProtectHome == "read-only"
      ) (builtins.toJSON s);

    "sourceFile goes through LoadCredential and stays off the command line" =
      let
        s = sc "every-channel-publisher-secret";
      in
      check (
        s.LoadCredential == [ "source:/run/keys/tuner-url" ]
        && has " --source-file %d/source -- " s.ExecStart
        && !(has "/run/keys/tuner-url" s.ExecStart)
        && !(has "--source\"" s.ExecStart)
      ) s.ExecStart;

    "a Nix path or store path as sourceFile is rejected" =
      check (
        fails (onePublisher { sourceFile = ./eval.nix; }).systemd.services
        && fails (onePublisher { sourceFile = "/nix/store/00000000000000000000000000000000-url"; }).systemd.services
      ) "sourceFile = ./eval.nix and a /nix/store string must not evaluate";

    "credentials in source warn without echoing them" =
      let
        inherit (config) warnings;
        about = name: lib.filter (has "publishers.${name}.source") warnings;
      in
      check (
        lib.length (about "leaky") == 1
        && lib.length (about "tokened") == 1
        && about "tuner-a" == [ ]
        && !(lib.any (w: has secretPassword w || has secretToken w || has "admin" w) warnings)
      ) (builtins.toJSON warnings);

    # The warning reads nixos/secret-params.json, the list the redactor and
    # the key rules use: exact names and suffix rules, never a substring.
    "the credential warning follows the shared secret-parameter list" =
      let
        warnsFor =
          source:
          lib.any (has "publishers.probe.source") (withEveryChannel { publishers.probe = { inherit source; }; })
          .warnings;
        secret = [
          "http://h/x?a=1;token=${secretToken}"
          "rtsp://cam/s?${secretToken}"
          "admin:${secretPassword}@cam/stream"
          "rtsp:admin:${secretPassword}@cam/s"
          "rtsp://admin:pa/ss@cam/s"
          "https://b.s3.amazonaws.com/x.ts?X-Amz-Signature=${secretToken}"
          "https://d.cloudfront.net/x.m3u8?Expires=1&Policy=p&Key-Pair-Id=K"
          "https://e.akamaized.net/x.m3u8?hdnts=exp=1~hmac=${secretToken}"
          "https://h/x?jwt=${secretToken}"
          "https://h/x?accessToken=${secretToken}"
          "https://h/x?x_api_key=${secretToken}"
          "https://h/x?wmsAuthSign=${secretToken}"
          "https://h/live;jsessionid=${secretToken}/x.ts"
        ];
        harmless = [
          "http://h/x?channel_key=5"
          "http://h/x?keyframe=1&author=me"
          "http://h/x?expires=5&se=1"
          "udp://@239.0.0.1:1234"
        ];
        wrong = lib.filter (s: !warnsFor s) secret ++ lib.filter warnsFor harmless;
      in
      check (wrong == [ ]) (builtins.toJSON wrong);

    "{source} with a sourceFile warns" =
      let
        cfg = withEveryChannel { publishers.secret.args = [ "--input={source}" ]; };
      in
      check (lib.any (has "publishers.secret.args contains `{source}`") cfg.warnings) (
        builtins.toJSON cfg.warnings
      );

    "both source and sourceFile fail with a readable assertion" =
      assertionsAre bothSources [
        "services.every-channel.publishers.broken: set only one of `source` and `sourceFile`, not both."
      ];

    "neither source nor sourceFile fails with a readable assertion" =
      assertionsAre neitherSource [
        "services.every-channel.publishers.broken: set `source` (a URL) or `sourceFile` (a file holding the URL); neither is set."
      ];

    "a name systemd would have to escape fails with a readable assertion" =
      let
        cfg = withEveryChannel { publishers."channel 5" = { source = tunerUrl; }; };
      in
      assertionsAre cfg [
        "services.every-channel.publishers.channel 5: the name may only contain letters, digits, `:`, `_`, `.` and `-`."
      ];

    "publishers without a package fail with a readable assertion" =
      assertionsAre noPackage [
        "services.every-channel.package is not set, but publishers or archive workers are defined: set it to the package that provides bin/ec-node."
      ];

    "the base configuration passes every assertion" =
      assertionsAre config [ ];

    "the kill policy cannot be overridden through serviceConfig" =
      check (fails (withEveryChannel { publishers.tuner-a.serviceConfig.KillMode = "process"; }).systemd.services.every-channel-publisher-tuner-a.serviceConfig) "KillMode = process must conflict";

    "stopTimeout sets TimeoutStopSec everywhere" =
      let
        cfg = withEveryChannel { stopTimeout = "30s"; };
      in
      check (lib.all (
        name: cfg.systemd.services.${name}.serviceConfig.TimeoutStopSec or null == "30s"
      ) (builtins.attrNames ours ++ [ "wt-publish" ])) "TimeoutStopSec";

    "the lock directory comes from tmpfiles, group-writable, not world-writable" =
      check (ourRules config == [ "d /run/every-channel/source-locks 2775 root every-channel - -" ])
        (builtins.toJSON config.systemd.tmpfiles.rules);

    "hardening keeps the lock directory writable and devices private" =
      check (
        publisher.ProtectSystem == "strict"
        && publisher.ReadWritePaths == [ "/run/every-channel/source-locks" ]
        && publisher.PrivateDevices
        && publisher.NoNewPrivileges
        && lib.elem "@system-service" publisher.SystemCallFilter
        && has "AF_INET" publisher.RestrictAddressFamilies
        && !(publisher ? RemoveIPC)
        && !(publisher ? ProcSubset)
      ) (builtins.toJSON publisher);

    "a /dev/video source gets its device and nothing else" =
      let
        s = sc "every-channel-publisher-webcam";
      in
      check (
        !s.PrivateDevices
        && s.DevicePolicy == "closed"
        && s.DeviceAllow == [ "/dev/video0 rw" ]
        && s.SupplementaryGroups == [ "video" ]
      ) (builtins.toJSON s);

    "the default user and group are created as system accounts" =
      check (
        config.users.users.every-channel.isSystemUser
        && config.users.users.every-channel.group == "every-channel"
        && config.users.groups ? every-channel
      ) "users";

    "a custom user is used but not created" =
      let
        cfg = withEveryChannel {
          user = "tv";
          group = "video";
        };
      in
      check (
        !(cfg.users.users ? tv)
        && !(cfg.users.users ? every-channel)
        && !(cfg.users.groups ? every-channel)
        && cfg.systemd.services.every-channel-publisher-tuner-a.serviceConfig.User == "tv"
        && lib.elem "d /run/every-channel/source-locks 2775 root video - -" cfg.systemd.tmpfiles.rules
      ) "users";

    # Issue 9, item 1: the launcher on the node's PATH, with its man page
    # and completions.
    "the launcher package is installed system-wide" =
      check (
        lib.filter (p: p == ecLaunch) config.environment.systemPackages == [ ecLaunch ]
        && (config.services.every-channel.installLauncher or false)
      ) (builtins.toJSON config.environment.systemPackages);

    "installLauncher = false keeps the launcher off the PATH" =
      let
        cfg = withEveryChannel { installLauncher = false; };
      in
      check (!(lib.elem ecLaunch cfg.environment.systemPackages)) (builtins.toJSON cfg.environment.systemPackages);

    "a disabled module installs nothing" =
      let
        cfg = withEveryChannel { enable = false; };
      in
      check (!(lib.elem ecLaunch cfg.environment.systemPackages) && cfg.system.checks == [ ]) "systemPackages/checks";

    # Item 5: another program of the package.
    "program defaults to ec-node" =
      check (lib.all (u: (u.program or null) == "ec-node") (
        builtins.attrValues config.services.every-channel.publishers
        ++ builtins.attrValues config.services.every-channel.archiveWorkers
      )) "program";

    "program runs another binary of the package, with or without a lock" =
      let
        cfg = withEveryChannel {
          publishers.tuner-a.program = "ec-relay";
          archiveWorkers.nightly.program = "ec-archive";
        };
        s = name: cfg.systemd.services.${name}.serviceConfig.ExecStart;
      in
      check (
        has '' -- "${ecNode}/bin/ec-relay" "publish" '' (s "every-channel-publisher-tuner-a")
        && lib.hasPrefix ''"${ecNode}/bin/ec-archive" "archive"'' (s "every-channel-archive-nightly")
      ) (builtins.toJSON [ (s "every-channel-publisher-tuner-a") (s "every-channel-archive-nightly") ]);

    "a program with a slash is a type error" =
      check (fails (withEveryChannel { publishers.tuner-a.program = "../bin/sh"; }).systemd.services) "program = ../bin/sh must not evaluate";

    # Issue 20: every value the module writes into a unit file or a
    # tmpfiles.d line is escaped for its directive (tests/nix/main.rs asks
    # systemd what it read) or refused by its option type where systemd
    # has no way to say it (ECP-0137). Here: what each type refuses and
    # what it still takes; the type error names the option (main.rs).
    "values systemd cannot read back are refused by their option types" =
      let
        options = (evalModule base).options.services.every-channel;
        unit = options.publishers.type.getSubOptions [ ];
        cluster = options.cluster;
        # option → [ refused values ] and [ accepted values ]
        cases = [
          {
            name = "sourceLockDir";
            type = options.sourceLockDir.type;
            refused = [ "/run/every-channel\nlocks" "run/every-channel" "/run/../tmp/x" "/run//x" "/run/x/" "/run/./x" "/" "" ];
            accepted = [ "/run/every channel/%u \"q\" \\ é/locks" "/run/x\\" "/run/x " "/var/lib/every-channel/locks" ];
          }
          {
            name = "sourceFile";
            type = unit.sourceFile.type;
            refused = [ "/run/keys/url\\" "/run/keys/url " "/run/keys/a\tb" "/run/keys/a\nb" "/run/keys/../url" "/run/keys//url" ];
            accepted = [ null "/run/keys/a b %u \"q\" \\ é/url" ];
          }
          {
            name = "environmentFile";
            type = unit.environmentFile.type;
            refused = [ "/run/keys/env\\" "/run/keys/env\n" "/run/keys/./env" ];
            accepted = [ null "/run/keys/a b %u.env" ./eval.nix ];
          }
          {
            name = "cluster.caFile";
            type = cluster.caFile.type;
            refused = [ "/etc/ca.pem\\" "/etc/x/../ca.pem" ];
            accepted = [ "/etc/every channel/%u/ca.pem" ./eval.nix ];
          }
          {
            name = "cluster.certFile";
            type = cluster.certFile.type;
            refused = [ "/etc/cert.pem " ];
            accepted = [ "/etc/cert.pem" ];
          }
          {
            name = "cluster.keyFile";
            type = cluster.keyFile.type;
            refused = [ "/run/keys/key\n" "/run/keys/key\\" ];
            accepted = [ "/run/keys/k%ey" ];
          }
          {
            name = "cluster.userFile";
            type = cluster.userFile.type;
            refused = [ "/run/keys/./user" "/run/keys/user " ];
            accepted = [ "/run/keys/us er" ];
          }
          {
            name = "devices (each)";
            type = unit.devices.type.nestedTypes.elemType;
            refused = [ "/dev/video\n0" ];
            accepted = [ "/dev/video 0" "/dev/v%u\"\\é" ];
          }
          {
            name = "source";
            type = unit.source.type;
            refused = [ "http://h/x\ny" "/dev/video\t0" ];
            accepted = [ "http://h/x?a=%41&b=\"q\"" "/dev/video 0" ];
          }
          {
            name = "user";
            type = options.user.type;
            refused = [ "ev il" "%n" "tv:video" "-tv" "" ];
            accepted = [ "every-channel" "tv" "_svc.1" "1000" ];
          }
          {
            name = "group";
            type = options.group.type;
            refused = [ "every channel" "video\n" ];
            accepted = [ "video" ];
          }
          {
            name = "stopTimeout";
            type = options.stopTimeout.type;
            refused = [ "10s\nKillMode=process" "soon" "10 s x" "" ];
            accepted = [ "10s" "1min 30s" "2min30s" "infinity" "3500ms" "4" ];
          }
          {
            name = "restartSec";
            type = unit.restartSec.type;
            refused = [ "5s\nExecStartPre=/bin/sh" "5 parsecs" ];
            accepted = [ "5s" 0 7 "100ms" ];
          }
          {
            name = "watchdogSec";
            type = unit.watchdogSec.type;
            refused = [ "30s\nNotifyAccess=all" "soon" 0 ];
            accepted = [ null "30s" 20 "1min" ];
          }
        ];
        wrong = lib.concatMap (
          case:
          map (value: "${case.name} takes ${builtins.toJSON value}") (lib.filter case.type.check case.refused)
          ++ map (value: "${case.name} refuses ${builtins.toJSON value}") (
            lib.filter (value: !(case.type.check value)) case.accepted
          )
        ) cases;
      in
      check (wrong == [ ]) (builtins.toJSON wrong);

    "a sourceLockDir under /tmp or /var/tmp fails with a readable assertion naming the option" =
      let
        at = sourceLockDir: failingAssertions (withEveryChannel { inherit sourceLockDir; });
        message = dir: "services.every-channel.sourceLockDir: ${dir} is under /tmp or /var/tmp, which every unit sees privately (PrivateTmp=true): each unit would lock in a directory of its own and two units could read one source; use a directory under /run, such as the default /run/every-channel/source-locks.";
        refused = [ "/tmp" "/tmp/every-channel" "/var/tmp/locks" "/var/tmp" ];
        allowed = [ "/tmpfs/locks" "/run/tmp/locks" "/var/tmpx" "/var/lib/tmp" ];
        wrong =
          lib.filter (dir: at dir != [ (message dir) ]) refused ++ lib.filter (dir: at dir != [ ]) allowed;
      in
      check (wrong == [ ]) (builtins.toJSON (map (dir: { inherit dir; messages = at dir; }) wrong));

    "environment names systemd would ignore fail with a readable assertion naming the option" =
      let
        at = environment: failingAssertions (withEveryChannel { publishers.tuner-a = { inherit environment; }; });
      in
      check (
        at { "1X" = "a"; "X Y" = "b"; OK = "c"; } == [
          "services.every-channel.publishers.tuner-a.environment: `1X`, `X Y` is not a variable name systemd accepts; use letters, digits and `_`, not starting with a digit."
        ]
        && at { _OK = "a"; ok1 = "%u $HOME"; } == [ ]
      ) (builtins.toJSON (at { "1X" = "a"; "X Y" = "b"; }));

    "environment values keep their `%`: systemd reads `%%` as one" =
      let
        cfg = withEveryChannel { publishers.tuner-a.environment.EC_X = "100% %u $HOME"; };
      in
      check (cfg.systemd.services.every-channel-publisher-tuner-a.environment.EC_X == "100%% %%u $HOME") (
        cfg.systemd.services.every-channel-publisher-tuner-a.environment.EC_X
      );

    "lock directory, device and credential paths are quoted only when systemd would split them" =
      let
        cfg = withEveryChannel {
          sourceLockDir = "/run/every channel/100%";
          publishers.webcam.devices = [ "/dev/video %u" ];
          publishers.secret.sourceFile = "/run/keys/a b %u \"q\"";
          archiveWorkers.nightly.environmentFile = "/run/keys/100%.env";
        };
        s = name: cfg.systemd.services.${name}.serviceConfig;
      in
      check (
        lib.elem ''d "/run/every channel/100%%" 2775 root every-channel - -'' cfg.systemd.tmpfiles.rules
        && (s "every-channel-publisher-tuner-a").ReadWritePaths == [ ''"/run/every channel/100%%"'' ]
        && (s "every-channel-publisher-webcam").DeviceAllow == [ ''"/dev/video %%u" rw'' "/dev/video0 rw" ]
        && (s "every-channel-publisher-secret").LoadCredential == [ ''source:/run/keys/a b %%u "q"'' ]
        && (s "every-channel-archive-nightly").EnvironmentFile == "/run/keys/100%%.env"
        # Paths with nothing to quote are written as before.
        && publisher.ReadWritePaths == [ "/run/every-channel/source-locks" ]
      ) (builtins.toJSON (map s [ "every-channel-publisher-tuner-a" "every-channel-publisher-webcam" "every-channel-publisher-secret" "every-channel-archive-nightly" ]));

    # Item 5b: units defined elsewhere get the kill policy and nothing else.
    "the policy file is split into kill and restart halves" =
      check (
        builtins.attrNames killPolicy == [ "KillMode" "SendSIGKILL" "TimeoutStopSec" ]
        && builtins.attrNames restartPolicy == [ "Restart" "RestartPreventExitStatus" "SuccessExitStatus" ]
      ) (builtins.toJSON policyFile);

    "extraUnits get KillMode, SendSIGKILL and TimeoutStopSec only" =
      let
        s = sc "wt-publish";
      in
      check (
        builtins.attrNames s == [ "ExecStart" "KillMode" "SendSIGKILL" "TimeoutStopSec" ]
        && s.KillMode == "control-group"
        && s.SendSIGKILL
        && s.TimeoutStopSec == "10s"
      ) (builtins.toJSON s);

    "the module's own units keep every policy value they had" =
      check (lib.all (
        name:
        let
          s = sc name;
        in
        s.KillMode == "control-group"
        && s.SendSIGKILL
        && s.TimeoutStopSec == "10s"
        && s.Restart == "always"
        && s.SuccessExitStatus == [ 75 ]
        && s.RestartPreventExitStatus == [ 75 ]
      ) (builtins.attrNames ours)) "policy values";

    "a mistyped extraUnits name warns" =
      let
        cfg = withEveryChannel { extraUnits = [ "wt-publish.service" "wt-pubish" ]; };
        about = lib.filter (has "extraUnits") cfg.warnings;
      in
      check (
        lib.length about == 1
        && has "`wt-pubish`" (lib.head about)
        && !(lib.any (has "extraUnits") config.warnings)
      ) (builtins.toJSON cfg.warnings);

    # Item 14b: hardening defaults from a data file, values unchanged.
    "hardening defaults come from unit-hardening.json, values unchanged" =
      let
        file = builtins.fromJSON (builtins.readFile hardeningFile);
        # Every value the module set before the file existed.
        pinned = {
          NoNewPrivileges = true;
          PrivateTmp = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectProc = "invisible";
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          CapabilityBoundingSet = "";
          RestrictAddressFamilies = "AF_UNIX AF_INET AF_INET6 AF_NETLINK";
          SystemCallArchitectures = "native";
          SystemCallErrorNumber = "EPERM";
          UMask = "0022";
        };
        pinnedLists.SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
      in
      check (
        builtins.pathExists hardeningFile
        && (file.defaults or null) == pinned
        && (file.lists or null) == pinnedLists
        && lib.all (unit: lib.all (key: ((sc unit).${key} or null) == pinned.${key}) (builtins.attrNames pinned)) [
          "every-channel-publisher-tuner-a"
          "every-channel-archive-proof"
        ]
        && (publisher.SystemCallFilter or null) == pinnedLists.SystemCallFilter
        && (sc "every-channel-archive-nightly").ProtectHome == "read-only"
      ) (if builtins.pathExists hardeningFile then builtins.toJSON file else "nixos/unit-hardening.json is missing");

    # Item 15: the module's escaping behaves as nixpkgs'
    # utils.escapeSystemdExecArg (nixos/lib/utils.nix): toJSON of the
    # string, then `%` and `$` doubled. The expected words were produced by
    # that function (evaluated with nixpkgs.lib outside this repository) and
    # are written out here, so the check runs without nixpkgs.
    "arguments are escaped exactly as utils.escapeSystemdExecArg does" =
      let
        vectors = [
          { arg = "plain"; want = ''"plain"''; }
          { arg = "two words"; want = ''"two words"''; }
          { arg = ""; want = ''""''; }
          { arg = ''say "hi"''; want = ''"say \"hi\""''; }
          { arg = ''back\slash''; want = ''"back\\slash"''; }
          { arg = "100%"; want = ''"100%%"''; }
          { arg = "%n"; want = ''"%%n"''; }
          { arg = "$HOME"; want = ''"$$HOME"''; }
          { arg = "\${X}"; want = ''"$''${X}"''; }
          { arg = "$$"; want = ''"$$$$"''; }
          { arg = ";"; want = ''";"''; }
          { arg = "tab\there"; want = ''"tab\there"''; }
          { arg = "line\nbreak"; want = ''"line\nbreak"''; }
          { arg = "cr\rx"; want = ''"cr\rx"''; }
          { arg = "é ü 日本"; want = ''"é ü 日本"''; }
          { arg = "'single'"; want = ''"'single'"''; }
          { arg = "--x=%d/source"; want = ''"--x=%%d/source"''; }
          { arg = ''\"''; want = ''"\\\""''; }
        ];
        cfg = withEveryChannel { archiveWorkers.nightly.args = map (v: v.arg) vectors; };
        got = cfg.systemd.services.every-channel-archive-nightly.serviceConfig.ExecStart;
        want = lib.concatStringsSep " " ([ ''"${ecNode}/bin/ec-node"'' ] ++ map (v: v.want) vectors);
      in
      check (got == want) "got ${got}\nwant ${want}";

    # Item 4: duplicates caught at build time. The check derivation's
    # inputs: every enabled unit that takes a lock, in unit order.
    "the source check compares every locked unit's option path, source, lockKey and onBusy" =
      let
        checks = config.system.checks;
        sourceCheck = lib.head checks;
        unit = kind: name: source: lockKey: onBusy: {
          option = "services.every-channel.${kind}.${name}";
          inherit source lockKey onBusy;
        };
        want = [
          (unit "publishers" "leaky" "http://admin:${secretPassword}@10.0.0.6:5004/auto/v7.1" null "skip")
          (unit "publishers" "secret" null null "skip")
          (unit "publishers" "tokened" "https://cdn.example/live?channel=5&access_token=${secretToken}" null "skip")
          (unit "publishers" "tuner-a" tunerUrl null "skip")
          (unit "publishers" "webcam" "/dev/video0" null "skip")
          (unit "archiveWorkers" "proof" tunerUrl "tuner-a" "wait")
        ];
        args = lib.concatMap (u: [
          u.option
          u.onBusy
          (if u.source == null then "" else u.source)
          (if u.lockKey == null then "" else u.lockKey)
        ]) want;
      in
      check (
        lib.length checks == 1
        && (sourceCheck.name or null) == "every-channel-source-check"
        && builtins.fromJSON (sourceCheck.sourceUnits or "null") == want
        && builtins.fromJSON (sourceCheck.checkArgs or "null") == [ "${ecLaunch}/bin/ec-launch" "/run/every-channel/source-locks" ] ++ args
        && has "-check-sources.sh" (sourceCheck.buildCommand or "")
      ) (if checks == [ ] then "system.checks is empty" else builtins.toJSON (removeAttrs sourceCheck [ "buildCommand" ]));

    "checkSources = false adds no check" =
      let
        cfg = withEveryChannel { checkSources = false; };
      in
      check (cfg.system.checks == [ ]) (builtins.toJSON (map (c: c.name) cfg.system.checks));

    "a disabled module defines nothing" =
      let
        cfg = withEveryChannel { enable = false; };
      in
      check (ourServices cfg == [ ] && !(cfg.systemd.services.wt-publish.serviceConfig ? KillMode)) (
        builtins.toJSON (builtins.attrNames cfg.systemd.services)
      );

    # Issue 10: tuner capacity. A box is declared once in `devices`; every
    # unit whose source is on its host runs `ec-launch run --tuners N
    # --device HOST`, so at most N of them read it at once.
    "a declared device gives every unit on its host --tuners and --device" =
      let
        cfg = withEveryChannel { devices = { inherit hdhr; }; };
        s = name: cfg.systemd.services.${name}.serviceConfig.ExecStart;
        others = [
          "every-channel-publisher-leaky"
          "every-channel-publisher-tokened"
          "every-channel-publisher-webcam"
          "every-channel-publisher-secret"
          "every-channel-archive-nightly"
        ];
      in
      check (
        s "every-channel-publisher-tuner-a" == lib.concatStringsSep " " [
          ''"${ecLaunch}/bin/ec-launch" "run" "--lock-dir" "/run/every-channel/source-locks"''
          ''"--on-busy" "skip" "--reclaim-escaped" "--tuners" "2" "--device" "10.0.0.5" "--source" "${tunerUrl}" --''
          ''"${ecNode}/bin/ec-node" "publish" "--name" "tuner a" "--bitrate-share=50%%" "$$HOME"''
        ]
        && has ''"--on-busy" "wait" "--reclaim-escaped" "--key" "tuner-a" ${tunerFlags 2 "10.0.0.5"} "--source" "${tunerUrl}" -- '' (s "every-channel-archive-proof")
        && lib.all (name: !(has "--tuners" (s name)) && !(has "--device" (s name))) others
        && failingAssertions cfg == [ ]
      ) (builtins.toJSON (map s ([ "every-channel-publisher-tuner-a" "every-channel-archive-proof" ] ++ others)));

    "a source is on a device when its URL's host is the device's host, in any case" =
      let
        devices = {
          inherit hdhr;
          named = {
            host = "Tuner.Local";
            tuners = 3;
          };
          v6 = {
            host = "fe80::1";
            tuners = 4;
          };
        };
        on = [
          { source = "http://10.0.0.5:5004/auto/v5.1"; want = tunerFlags 2 "10.0.0.5"; }
          { source = "hdhomerun://10.0.0.5/v5.1"; want = tunerFlags 2 "10.0.0.5"; }
          { source = "HTTP://10.0.0.5/auto/v2.1"; want = tunerFlags 2 "10.0.0.5"; }
          { source = "rtsp://viewer@10.0.0.5:554/s"; want = tunerFlags 2 "10.0.0.5"; }
          { source = "http://10.0.0.5"; want = tunerFlags 2 "10.0.0.5"; }
          { source = "http://10.0.0.5?program=3"; want = tunerFlags 2 "10.0.0.5"; }
          { source = "udp://@10.0.0.5:1234"; want = tunerFlags 2 "10.0.0.5"; }
          { source = "http://tuner.local:5004/auto/v5.1"; want = tunerFlags 3 "tuner.local"; }
          { source = "http://TUNER.LOCAL./auto/v5.1"; want = tunerFlags 3 "tuner.local"; }
          { source = "http://[FE80::1]:5004/auto/v5.1"; want = tunerFlags 4 "[fe80::1]"; }
        ];
        off = [
          "http://10.0.0.50:5004/auto/v5.1"
          "http://10.0.0.5.example/auto/v5.1"
          "http://x10.0.0.5/x"
          "http://cam/10.0.0.5/x"
          "http://cam/x?host=10.0.0.5"
          "http://cam/x#10.0.0.5"
          "http://[fe80::10]/x"
          "http://tuner.local.example/x"
          "/dev/video0"
        ];
        wrong =
          map (u: u.source) (lib.filter (u: !(has "${u.want} \"--source\"" (probeExec devices { inherit (u) source; }))) on)
          ++ lib.filter (source: has "--tuners" (probeExec devices { inherit source; })) off;
      in
      check (wrong == [ ]) (builtins.toJSON wrong);

    "--device is the declared host as ec-launch keys it: lower case, no trailing dot, IPv6 in brackets" =
      let
        device = host: source: probeExec { box = { inherit host; tuners = 2; }; } { inherit source; };
      in
      check (
        has (tunerFlags 2 "tuner.local") (device "Tuner.Local." "http://tuner.local/x")
        && has (tunerFlags 2 "[fe80::1]") (device "[FE80::1]" "http://[fe80::1]/x")
        && has (tunerFlags 2 "[fe80::1]") (device "fe80::1" "http://[fe80::1]/x")
      ) (device "[FE80::1]" "http://[fe80::1]/x");

    "tuners = \"auto\" asks the device" =
      check (has ''${tunerFlags "auto" "10.0.0.5"} "--source"'' (
        probeExec { hdhr = hdhr // { tuners = "auto"; }; } { source = tunerUrl; }
      )) (probeExec { hdhr = hdhr // { tuners = "auto"; }; } { source = tunerUrl; });

    "a sourceFile unit joins a device with `device`" =
      let
        cfg = withEveryChannel {
          devices = { inherit hdhr; };
          publishers.secret.device = "hdhr";
        };
        s = cfg.systemd.services.every-channel-publisher-secret.serviceConfig.ExecStart;
      in
      check (
        has ''"--on-busy" "skip" "--reclaim-escaped" ${tunerFlags 2 "10.0.0.5"} --source-file %d/source -- '' s
        && failingAssertions cfg == [ ]
      ) s;

    "another spelling of the box joins it with `device`" =
      let
        cfg = probe { inherit hdhr; } {
          source = "http://hdhr-living-room.lan:5004/auto/v5.1";
          device = "hdhr";
        };
        s = cfg.systemd.services.every-channel-publisher-probe.serviceConfig.ExecStart;
      in
      check (has "${tunerFlags 2 "10.0.0.5"} \"--source\"" s && failingAssertions cfg == [ ]) s;

    "`device` naming the device its source is on anyway is allowed" =
      let
        cfg = probe { inherit hdhr; } {
          source = tunerUrl;
          device = "hdhr";
        };
      in
      assertionsAre cfg [ ];

    "`device` naming no declared device fails with a readable assertion" =
      let
        cfg = withEveryChannel {
          devices = { inherit hdhr; };
          publishers.secret.device = "hdhrr";
        };
        none = withEveryChannel { publishers.secret.device = "hdhr"; };
      in
      check (
        failingAssertions cfg == [
          "services.every-channel.publishers.secret.device: no device `hdhrr` in services.every-channel.devices (declared: `hdhr`); declare it there or fix the name."
        ]
        && failingAssertions none == [
          "services.every-channel.publishers.secret.device: no device `hdhr` in services.every-channel.devices (none declared); declare it there or fix the name."
        ]
      ) (builtins.toJSON (failingAssertions cfg ++ failingAssertions none));

    "`device` contradicting the device of the source's host fails with a readable assertion" =
      let
        cfg = withEveryChannel {
          devices = {
            inherit hdhr;
            attic = {
              host = "10.0.0.6";
              tuners = 4;
            };
          };
          archiveWorkers.proof.device = "attic";
        };
      in
      assertionsAre cfg [
        "services.every-channel.archiveWorkers.proof.device: `attic` is services.every-channel.devices.attic, but the source's host 10.0.0.5 is services.every-channel.devices.hdhr; remove `device` (the host picks the device) or fix the source."
      ];

    "`device` on a unit without a source fails with a readable assertion" =
      let
        cfg = withEveryChannel {
          devices = { inherit hdhr; };
          archiveWorkers.nightly.device = "hdhr";
        };
      in
      assertionsAre cfg [
        "services.every-channel.archiveWorkers.nightly.device: `device` only applies with `source` or `sourceFile`."
      ];

    "fewer than one tuner fails with a readable assertion" =
      let
        cfg = tuners: withEveryChannel { devices.hdhr = hdhr // { inherit tuners; }; };
        message = tuners: "services.every-channel.devices.hdhr.tuners: ${toString tuners} is not a number of tuners; give how many the device has (1 or more), or \"auto\" to ask it.";
      in
      check (
        failingAssertions (cfg 0) == [ (message 0) ] && failingAssertions (cfg (-1)) == [ (message (-1)) ]
      ) (builtins.toJSON (failingAssertions (cfg 0) ++ failingAssertions (cfg (-1))));

    "tuners other than a number or \"auto\" is a type error" =
      check (
        !fails (withEveryChannel { devices = { inherit hdhr; }; }).systemd.services
        && fails (withEveryChannel { devices.hdhr = hdhr // { tuners = "2"; }; }).systemd.services
        && fails (withEveryChannel { devices.hdhr = hdhr // { tuners = "Auto"; }; }).systemd.services
        && fails (withEveryChannel { devices.hdhr = { host = "10.0.0.5"; }; }).systemd.services
      ) "tuners = \"2\", \"Auto\" and a missing tuners must not evaluate";

    "two devices on one host fail with a readable assertion" =
      let
        cfg = withEveryChannel {
          devices = {
            inherit hdhr;
            den = {
              host = "Tuner.local";
              tuners = 2;
            };
            loft = {
              host = "tuner.local.";
              tuners = 4;
            };
          };
        };
      in
      assertionsAre cfg [
        "services.every-channel.devices.den, services.every-channel.devices.loft: one host `tuner.local`, declared more than once; declare each box once (a unit that spells it differently takes `device`)."
      ];

    "a host with a scheme, port, path or space fails with a readable assertion" =
      let
        bad = [
          "http://10.0.0.5"
          "10.0.0.5:5004"
          "10.0.0.5/auto"
          "admin@10.0.0.5"
          "tuner local"
          "[fe80::1]:80"
        ];
        message = host: "services.every-channel.devices.hdhr.host: `${host}` is not a host name or address; give it alone, without scheme, user, port or path (e.g. \"10.0.0.5\" or \"fe80::1\").";
        wrong = lib.filter (
          host: failingAssertions (withEveryChannel { devices.hdhr = hdhr // { inherit host; }; }) != [ (message host) ]
        ) bad;
      in
      check (wrong == [ ]) (builtins.toJSON wrong);

    # docs/nixos-module.md's example (quoted verbatim, tests/nix/main.rs checks):
    # more channels than tuners, every publisher a standby for a tuner.
    "three waiting publishers share a two-tuner box without warnings" =
      let
        cfg = evalConfig {
          imports = [ ./devices-example.nix ];
          services.every-channel = {
            enable = true;
            package = ecNode;
          };
        };
        exec = map (name: cfg.systemd.services."every-channel-publisher-${name}".serviceConfig.ExecStart) [
          "wxyz"
          "wabc"
          "wdef"
        ];
      in
      check (
        lib.all (has ''"--on-busy" "wait" "--reclaim-escaped" ${tunerFlags 2 "192.168.1.20"} "--source" "http://192.168.1.20:5004/auto/v'') exec
        && lib.length exec == 3
        && failingAssertions cfg == [ ]
        && cfg.warnings == [ ]
      ) (builtins.toJSON (exec ++ cfg.warnings));

    # The README's priority example (quoted verbatim, tests/nix/main.rs
    # checks): a recording at 300 and background channels at 10 on one box.
    "a recording at 300 and background channels at 10 pass their priorities" =
      let
        cfg = evalConfig {
          imports = [ ./priority-example.nix ];
          services.every-channel = {
            enable = true;
            package = ecNode;
          };
        };
        exec = name: cfg.systemd.services.${name}.serviceConfig.ExecStart;
        background = exec "every-channel-publisher-weather";
        recording = exec "every-channel-archive-news";
        quiet = withEveryChannel {
          reclaimEscaped = false;
          publishers.q = {
            source = "http://10.0.0.5:5004/auto/v77.1";
            reclaimEscaped = null;
          };
          publishers.r = {
            source = "http://10.0.0.5:5004/auto/v78.1";
            reclaimEscaped = true;
            priority = 100;
            preemptGrace = 5;
          };
        };
        q = quiet.systemd.services.every-channel-publisher-q.serviceConfig.ExecStart;
        r = quiet.systemd.services.every-channel-publisher-r.serviceConfig.ExecStart;
        outOfRange = (withEveryChannel {
          publishers.x = {
            source = tunerUrl;
            priority = 1001;
          };
        }).systemd.services;
      in
      check (
        has ''"--on-busy" "wait" "--reclaim-escaped" "--priority" "10" "--tuners" "2"'' background
        && has ''"--on-busy" "wait" "--reclaim-escaped" "--priority" "300" "--preempt-grace" "3" "--tuners" "2"'' recording
        && !(has "--reclaim-escaped" q)
        && has ''"--on-busy" "skip" "--reclaim-escaped" "--source"'' r
        && !(has "--priority" r)
        && !(has "--preempt-grace" r)
        && fails outOfRange
        && failingAssertions cfg == [ ]
        && cfg.warnings == [ ]
      ) (builtins.toJSON [ background recording q r ]);

    "more sources than tuners with onBusy = skip warn, naming the units" =
      let
        channels = onBusy: lib.genAttrs [ "a" "b" "c" ] (name: {
          source = "http://10.0.0.5:5004/auto/v${name}";
          inherit onBusy;
        });
        skipping = withEveryChannel { devices = { inherit hdhr; }; publishers = channels "skip"; };
        about = cfg: lib.filter (has "services.every-channel.devices.hdhr") cfg.warnings;
        waiting = evalConfig {
          services.every-channel = {
            enable = true;
            package = ecNode;
            devices = { inherit hdhr; };
            publishers = channels "wait";
          };
        };
        # Two sources, one of them with a standby: two tuners are enough.
        standbyCfg = evalConfig {
          services.every-channel = {
            enable = true;
            package = ecNode;
            devices = { inherit hdhr; };
            publishers = {
              a.source = tunerUrl;
              a-standby = {
                source = tunerUrl;
                onBusy = "wait";
              };
              b.source = "http://10.0.0.5:5004/auto/v7.1";
            };
          };
        };
        auto = evalConfig {
          services.every-channel = {
            enable = true;
            package = ecNode;
            devices.hdhr = hdhr // { tuners = "auto"; };
            publishers = channels "skip";
          };
        };
      in
      check (
        lib.length (about skipping) == 1
        && lib.all (name: has "publishers.${name}" (lib.head (about skipping))) [ "a" "b" "c" "tuner-a" ]
        && has "onBusy = \"wait\"" (lib.head (about skipping))
        && waiting.warnings == [ ]
        && standbyCfg.warnings == [ ]
        && auto.warnings == [ ]
      ) (builtins.toJSON (skipping.warnings ++ waiting.warnings ++ standbyCfg.warnings ++ auto.warnings));

    "device assertions and warnings never echo a credential" =
      let
        cfg = withEveryChannel {
          devices = {
            inherit hdhr;
            attic = {
              host = "10.0.0.6";
              tuners = 1;
            };
          };
          # leaky's source (admin:hunter2@10.0.0.6) is on attic by its
          # host; naming hdhr contradicts that, and puts a third source
          # (with tuner-a skipping) on hdhr's two tuners: a warning.
          publishers.leaky.device = "hdhr";
        };
        messages = failingAssertions cfg ++ lib.filter (has "devices.") cfg.warnings;
      in
      check (
        lib.any (has "publishers.leaky.device") messages
        && lib.any (has "services.every-channel.devices.hdhr: 3 sources on 2 tuners") messages
        && !(lib.any (m: has secretPassword m || has "admin" m) messages)
      ) (builtins.toJSON messages);

    "devices leave the build-time source check's inputs alone" =
      let
        cfg = withEveryChannel {
          devices = { inherit hdhr; };
          publishers.secret.device = "hdhr";
        };
        inputs = c: map (check: { inherit (check) sourceUnits checkArgs; }) c.system.checks;
      in
      check (inputs cfg == inputs config) (builtins.toJSON (inputs cfg));

    "onBusy says wait is for more channels than tuners; devices and device are documented" =
      let
        options = (evalModule base).options.services.every-channel;
        unitOptions = options.publishers.type.getSubOptions [ ];
        deviceOptions = options.devices.type.getSubOptions [ ];
      in
      check (
        has "more channels than tuners" unitOptions.onBusy.description
        && has "services.every-channel.devices" unitOptions.device.description
        && unitOptions.device.default == null
        && options.devices.default == { }
        && options.devices ? example
        && has "auto" deviceOptions.tuners.description
        && has "discover.json" deviceOptions.tuners.description
        && deviceOptions.host ? description
      ) (unitOptions.onBusy.description);

    # Issue 11: the progress watchdog.
    "watchdogSec sets WatchdogSec, NotifyAccess=all and --progress-watchdog, keeping Restart=always" =
      let
        s = watchdogUnit { source = tunerUrl; watchdogSec = "30s"; };
      in
      check (
        s.WatchdogSec == "30s"
        && s.NotifyAccess == "all"
        && s.Restart == "always"
        && has ''"--on-busy" "skip" "--reclaim-escaped" "--progress-watchdog" "--source" "${tunerUrl}" --'' s.ExecStart
      ) (builtins.toJSON s);

    "watchdogSec works with a sourceFile and takes seconds as a number" =
      let
        s = watchdogUnit { sourceFile = "/run/keys/tuner-url"; watchdogSec = 20; };
      in
      check (
        s.WatchdogSec == 20
        && s.NotifyAccess == "all"
        && has ''"--progress-watchdog" --source-file %d/source --'' s.ExecStart
      ) (builtins.toJSON s);

    "without watchdogSec a unit has no watchdog, no NotifyAccess and no --progress-watchdog" = check (
      lib.all (
        s: !(s ? WatchdogSec) && !(s ? NotifyAccess) && !(has "--progress-watchdog" s.ExecStart)
      ) (map (name: sc name) (builtins.attrNames ours))
      && ((evalModule base).options.services.every-channel.publishers.type.getSubOptions [ ]).watchdogSec.default == null
    ) (builtins.toJSON publisher);

    "watchdogSec on a source without TCP bytes to count is an assertion naming the option" =
      let
        messages = map (
          source: failingAssertions (watchdogEval { inherit source; watchdogSec = "30s"; })
        ) [
          "/dev/video0"
          "udp://239.0.0.1:1234"
          "RTP://239.0.0.1:5004"
          "srt://10.0.0.9:9000"
        ];
        healthy = failingAssertions (watchdogEval {
          source = "rtsp://10.0.0.7/stream1";
          watchdogSec = "30s";
        });
      in
      check (
        lib.all (
          m: lib.length m == 1 && has "services.every-channel.publishers.wd.watchdogSec: the source" (lib.head m)
        ) messages
        && healthy == [ ]
      ) (builtins.toJSON (messages ++ [ healthy ]));

    "the watchdogSec description says what restarts a stalled publisher" =
      let
        d = ((evalModule base).options.services.every-channel.publishers.type.getSubOptions [ ]).watchdogSec.description;
      in
      check (
        has "Restart=always" d && has "NotifyAccess=all" d && has "--progress-watchdog" d && has "udp://" d
      ) d;
  }
  // clusterChecks;

  failed = lib.filterAttrs (_: c: !c.ok) checks;
in
if failed != { } then
  throw (
    "tests/nix/eval.nix: ${toString (lib.length (builtins.attrNames failed))} of ${toString (lib.length (builtins.attrNames checks))} checks failed:\n"
    + lib.concatStringsSep "\n" (lib.mapAttrsToList (name: c: "  - ${name}: ${c.detail}") failed)
  )
else
  {
    passed = lib.length (builtins.attrNames checks);
    nixpkgsLibVersion = lib.version;
    publisherServiceConfig = publisher;
    archiveWorkerServiceConfig = archiveWorker;
    assertionMessages = {
      bothSources = failingAssertions bothSources;
      neitherSource = failingAssertions neitherSource;
      noPackage = failingAssertions noPackage;
    };
    inherit (config) warnings;
  }

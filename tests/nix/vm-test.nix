# The incident, replayed in a VM: a one-tuner HDHomeRun emulator, two
# publishers configured on the same channel, and an ec-node stand-in whose
# helper child ignores SIGTERM and holds the tuner stream, like the ffmpeg
# children that outlived their publishers.
#
# It checks that exactly one publisher reads the source while the other
# stops cleanly with the busy code 75 (and is not restarted), and that
# `systemctl restart` of the running one leaves no process of the old
# instance behind and the new instance gets the tuner.
#
# Run with `nix build .#checks.x86_64-linux.vm-test` (needs nixpkgs and KVM;
# it cannot run under Debian's Nix 2.8).
{ self, pkgs }:

let
  inherit (pkgs) lib;
  tunerPort = 5004;
  source = "http://127.0.0.1:${toString tunerPort}/auto/v5.1";

  # The tuner emulator the systemd suite runs too (one emulator, in Rust:
  # crates/ec-test-support/src/tuner_emulator.rs), built as this crate's `tuner-emulator`
  # example from the same source and vendored dependencies as the package.
  # With one tuner, a second concurrent stream gets 503 (805 All Tuners In
  # Use), as from a busy HDHomeRun; /stats reports the open streams, the
  # refusals and the streams served.
  tunerEmulator = self.packages.${pkgs.stdenv.hostPlatform.system}.ec-launch.overrideAttrs (old: {
    pname = "ec-launch-tuner-emulator";
    cargoBuildFlags = [
      "--example"
      "tuner-emulator"
    ];
    doCheck = false;
    installPhase = ''
      runHook preInstall
      install -Dm755 "$(find target -path '*/release/examples/tuner-emulator' -type f)" \
        "$out/bin/tuner-emulator"
      runHook postInstall
    '';
    postInstall = "";
    meta = old.meta // {
      mainProgram = "tuner-emulator";
    };
  });

  # The helper ec-node starts: it ignores SIGTERM, so only SIGKILL (from
  # the unit's kill policy) ends it, and it holds the tuner stream. It
  # inherits the source lock's descriptor from ec-node, so the lock is held
  # for as long as it lives.
  helper = pkgs.writeText "stale-helper.py" ''
    import os, signal, sys, time, urllib.error, urllib.request

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    url = os.environ["EC_SOURCE_URL"]
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url) as stream:
                while stream.read(65536):
                    pass
            sys.exit("the tuner ended the stream")
        except urllib.error.HTTPError as refused:
            sys.exit(f"the tuner refused the stream: {refused.code}")
        except OSError:
            # The tuner stand-in may still be starting.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
  '';

  fakeEcNode = pkgs.writeShellScriptBin "ec-node" ''
    ${pkgs.python3.interpreter} ${helper} &
    # The shell dies on SIGTERM; its helper does not.
    wait "$!"
  '';

  publisherUnits = [
    "every-channel-publisher-first.service"
    "every-channel-publisher-second.service"
  ];
in
{
  name = "ec-launch-kill-policy";

  nodes.machine = {
    imports = [ self.nixosModules.default ];

    services.every-channel = {
      enable = true;
      package = fakeEcNode;
      publishers = {
        first.source = source;
        second.source = source;
      };
      # Two publishers on one source with onBusy = "skip" is the mistake
      # the build-time source check refuses; here it is the point.
      checkSources = false;
    };

    systemd.services.tuner-emulator = {
      wantedBy = [ "multi-user.target" ];
      before = publisherUnits;
      serviceConfig.ExecStart = "${lib.getExe tunerEmulator} --listen 127.0.0.1:${toString tunerPort} --tuners 1";
    };

    environment.systemPackages = [ pkgs.curl ];
  };

  testScript = ''
    import json

    publishers = ${builtins.toJSON publisherUnits}

    def tuner():
        return json.loads(machine.succeed("curl -sf http://127.0.0.1:${toString tunerPort}/stats"))

    def show(unit, prop):
        return machine.succeed(f"systemctl show -P {prop} {unit}").strip()

    start_all()
    machine.wait_for_unit("tuner-emulator.service")
    machine.wait_for_open_port(${toString tunerPort}, "127.0.0.1")

    with subtest("one publisher reads the source, the other skips with 75"):
        def settled(_):
            states = sorted(show(u, "ActiveState") for u in publishers)
            return states == ["active", "inactive"] and tuner()["open_streams"] == 1
        retry(settled)
        running = next(u for u in publishers if show(u, "ActiveState") == "active")
        skipped = next(u for u in publishers if u != running)
        assert show(skipped, "ExecMainStatus") == "75", show(skipped, "ExecMainStatus")
        assert show(skipped, "Result") == "success", show(skipped, "Result")
        assert show(skipped, "NRestarts") == "0", show(skipped, "NRestarts")
        machine.succeed(f"journalctl -u {skipped} | grep 'source busy: held by'")

    with subtest("restart leaves no process of the old instance"):
        cgroup = show(running, "ControlGroup")
        old = machine.succeed(f"cat /sys/fs/cgroup{cgroup}/cgroup.procs").split()
        # ec-launch exec'd into ec-node's shell, which started the helper.
        assert len(old) >= 2, old
        machine.succeed(f"systemctl restart {running}")
        for pid in old:
            machine.fail(f"test -d /proc/{pid}")
        machine.wait_until_succeeds(f"systemctl is-active {running}")
        retry(lambda _: tuner()["open_streams"] == 1 and tuner()["streams_served"] == 2)
        assert tuner()["busy_503"] == 0, tuner()
        assert show(skipped, "ActiveState") == "inactive"
  '';
}

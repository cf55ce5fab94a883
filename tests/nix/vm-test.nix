# The incident, replayed in a VM: a one-tuner HDHomeRun stand-in, two
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
  tunerPort = 5004;
  source = "http://127.0.0.1:${toString tunerPort}/auto/v5.1";

  # One tuner: a second concurrent stream gets 503, as from a busy
  # HDHomeRun. /status reports the open streams and the refusals.
  fakeTuner = pkgs.writeText "fake-tuner.py" ''
    import json, select, socket, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    TUNERS = 1
    lock = threading.Lock()
    state = {"active": 0, "refused": 0, "served": 0}

    class Tuner(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/status":
                with lock:
                    body = json.dumps(state).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path != "/auto/v5.1":
                self.send_error(404)
                return
            with lock:
                busy = state["active"] >= TUNERS
                if busy:
                    state["refused"] += 1
                else:
                    state["active"] += 1
                    state["served"] += 1
            if busy:
                self.send_error(503, "All tuners busy")
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                while True:
                    self.wfile.write(b"\x47" * 188 * 7)
                    self.wfile.flush()
                    # A closed client socket reads as EOF: notice a killed
                    # reader at once instead of at the next failed write.
                    readable, _, _ = select.select([self.connection], [], [], 0.05)
                    if readable and not self.connection.recv(1, socket.MSG_DONTWAIT):
                        break
            except OSError:
                pass
            finally:
                with lock:
                    state["active"] -= 1

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", ${toString tunerPort}), Tuner).serve_forever()
  '';

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

    systemd.services.fake-tuner = {
      wantedBy = [ "multi-user.target" ];
      before = publisherUnits;
      serviceConfig.ExecStart = "${pkgs.python3.interpreter} ${fakeTuner}";
    };

    environment.systemPackages = [ pkgs.curl ];
  };

  testScript = ''
    import json

    publishers = ${builtins.toJSON publisherUnits}

    def tuner():
        return json.loads(machine.succeed("curl -sf http://127.0.0.1:${toString tunerPort}/status"))

    def show(unit, prop):
        return machine.succeed(f"systemctl show -P {prop} {unit}").strip()

    start_all()
    machine.wait_for_unit("fake-tuner.service")
    machine.wait_for_open_port(${toString tunerPort}, "127.0.0.1")

    with subtest("one publisher reads the source, the other skips with 75"):
        def settled(_):
            states = sorted(show(u, "ActiveState") for u in publishers)
            return states == ["active", "inactive"] and tuner()["active"] == 1
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
        retry(lambda _: tuner()["active"] == 1 and tuner()["served"] == 2)
        assert tuner()["refused"] == 0, tuner()
        assert show(skipped, "ActiveState") == "inactive"
  '';
}

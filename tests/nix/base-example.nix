# The eval tests' base configuration (tests/nix/eval.nix): every kind of
# unit the module writes, with arguments systemd must not expand, credentials
# in a source (warned about), a sourceFile, a device, a standby, a worker
# without a source and a unit defined elsewhere. tests/nix/nixos-check.nix
# renders it through NixOS and systemd too.
rec {
  tunerUrl = "http://10.0.0.5:5004/auto/v5.1";
  secretPassword = "hunter2";
  secretToken = "sekrit99";

  module =
    ecNode:
    {
      services.every-channel = {
        enable = true;
        package = ecNode;
        publishers = {
          tuner-a = {
            source = tunerUrl;
            args = [
              "publish"
              "--name"
              "tuner a"
              "--bitrate-share=50%"
              "$HOME"
            ];
            environment.EC_NODE_LOG = "info";
          };
          secret = {
            sourceFile = "/run/keys/tuner-url";
          };
          leaky.source = "http://admin:${secretPassword}@10.0.0.6:5004/auto/v7.1";
          tokened.source = "https://cdn.example/live?channel=5&access_token=${secretToken}";
          webcam.source = "/dev/video0";
          # Disabled: neither source is set, and that must not matter.
          off.enable = false;
        };
        archiveWorkers = {
          nightly = {
            args = [
              "archive"
              "--to"
              "/var/lib/every-channel"
            ];
            environmentFile = "/run/keys/archive.env";
            serviceConfig.ReadWritePaths = [ "/var/lib/every-channel" ];
            serviceConfig.ProtectHome = "read-only";
          };
          proof = {
            source = tunerUrl;
            onBusy = "wait";
            lockKey = "tuner-a";
            args = [ "proof" ];
          };
        };
        extraUnits = [ "wt-publish.service" ];
      };
      # Defined by some other module; the kill policy is added to it.
      systemd.services.wt-publish.serviceConfig.ExecStart = "/run/current-system/sw/bin/wt-publish";
    };
}

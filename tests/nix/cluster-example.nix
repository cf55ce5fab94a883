# Two nodes on one tuner LAN, one etcd cluster: node-a and node-b both
# import this file, each with its own networking.hostName. One of them
# streams channel 5.1; the other waits, and takes over when the first stops
# or its node dies. At most two units cluster-wide read the two-tuner box.
{
  services.every-channel = {
    cluster = {
      enable = true;
      endpoints = [
        "https://etcd-1.lan:2379"
        "https://etcd-2.lan:2379"
        "https://etcd-3.lan:2379"
      ];
      caFile = "/etc/every-channel/etcd-ca.pem";
      userFile = "/run/keys/etcd-user"; # `user:password`, root-only
    };

    devices.living-room = {
      host = "192.168.1.20";
      tuners = 2;
    };

    publishers.wxyz = {
      source = "http://192.168.1.20:5004/auto/v5.1";
      onBusy = "wait";
      args = [ "publish" "--channel" "5.1" ];
    };
  };
}

# A two-tuner box shared by a recording and background channels: the
# recording (priority 300) takes a tuner from a background channel (10).
{
  services.every-channel = {
    devices.den = { host = "192.168.1.30"; tuners = 2; };

    # Background channels: standbys for a tuner, the first to go.
    publishers.weather = {
      source = "http://192.168.1.30:5004/auto/v2.1";
      onBusy = "wait"; priority = 10;
      args = [ "publish" "--channel" "2.1" ];
    };
    publishers.traffic = {
      source = "http://192.168.1.30:5004/auto/v4.1";
      onBusy = "wait"; priority = 10;
      args = [ "publish" "--channel" "4.1" ];
    };

    # The evening news, recorded: preempts a background channel.
    archiveWorkers.news = {
      source = "http://192.168.1.30:5004/auto/v5.1";
      onBusy = "wait"; priority = 300; preemptGrace = 3;
      args = [ "record" "--channel" "5.1" ];
    };
  };
}

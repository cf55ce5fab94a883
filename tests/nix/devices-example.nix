# Three channels, one two-tuner HDHomeRun: every publisher waits for a tuner.
{
  services.every-channel = {
    devices.living-room = {
      host = "192.168.1.20";
      tuners = 2;
    };

    publishers = {
      wxyz = {
        source = "http://192.168.1.20:5004/auto/v5.1";
        onBusy = "wait";
        args = [ "publish" "--channel" "5.1" ];
      };
      wabc = {
        source = "http://192.168.1.20:5004/auto/v7.1";
        onBusy = "wait";
        args = [ "publish" "--channel" "7.1" ];
      };
      wdef = {
        source = "http://192.168.1.20:5004/auto/v9.1";
        onBusy = "wait";
        args = [ "publish" "--channel" "9.1" ];
      };
    };
  };
}

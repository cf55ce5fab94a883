# The every-channel publisher and archive-worker units.
#
# Why this module exists: in the 503 incident, publishers restarted while
# their helper children (ffmpeg, proof and archive helpers) survived and kept
# the tuner streams open. Two things prevent that together:
#   - every unit with a source runs through `ec-launch run`, which takes a
#     per-source flock(2) lock and execs ec-node, so two units never read one
#     source at once;
#   - every unit gets the kill policy from ./unit-policy.json (KillMode,
#     SendSIGKILL, TimeoutStopSec), so stopping or restarting a unit kills
#     its whole cgroup within a bounded time; units defined elsewhere
#     (extraUnits) get that half only, the module's own units also the
#     restart half (Restart=always, exit 75 a clean stop).
# A unit on a tuner box declared in `devices` also takes one of the box's
# tuner slots (`--tuners`/`--device`, evolution/ECP-0132-tuner-slots.md),
# so the node never has more readers on a box than it has tuners.
# ./unit-policy.json is shared with the systemd acceptance suite; this module
# applies every key of both halves and never restates the values.
# With `cluster.enable`, the same locks are also taken on etcd, so the
# guarantee holds across nodes (evolution/ECP-0134-cluster-locks-on-etcd.md):
# `ec-launch` then stays the unit's main process, renews its lease and stops
# the program before the lease can lapse; the module passes the etcd flags
# and credentials and sets the watchdog that catches a frozen launcher.
{
  config,
  options,
  lib,
  pkgs,
  utils,
  ...
}:

let
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    mkMerge
    mkDefault
    types
    ;

  cfg = config.services.every-channel;

  # Both halves are systemd serviceConfig, applied as is: `kill` to every
  # unit including extraUnits, `restart` (Restart=always, 75 a clean stop)
  # only to the units this module starts. stopTimeout is the only knob: the
  # file's TimeoutStopSec is its default.
  unitPolicy = builtins.fromJSON (builtins.readFile ./unit-policy.json);
  killPolicy = unitPolicy.kill // {
    TimeoutStopSec = cfg.stopTimeout;
  };
  ownUnitPolicy = killPolicy // unitPolicy.restart;

  # The hardening of the module's own units; a data file so the systemd
  # acceptance suite can boot units hardened as the nodes' are.
  hardening = builtins.fromJSON (builtins.readFile ./unit-hardening.json);

  # Every value the module writes into a unit file or a tmpfiles.d line is
  # escaped the way systemd reads that directive, or refused by its option
  # type where systemd has no way to say it
  # (evolution/ECP-0137-the-module-checked-against-nixos.md has the table).
  #
  # ExecStart=: each word as NixOS's utils.escapeSystemdExecArg writes it (a
  # C-style quoted string, `%` and `$` doubled: systemd.service(5),
  # "Command lines"). `credentialPath name` is the one exception:
  # `%d/<name>`, the file `LoadCredential=<name>:…` put in the unit's
  # credentials directory (`%d` is systemd's specifier for
  # $CREDENTIALS_DIRECTORY), written unescaped so systemd expands it.
  execWord =
    arg:
    if builtins.isAttrs arg && arg ? credential then
      "%d/${arg.credential}"
    else
      utils.escapeSystemdExecArg (toString arg);
  credentialPath = name: { credential = name; };
  execLine = args: lib.concatMapStringsSep " " execWord args;

  # `%` starts a specifier in every directive the module writes and in
  # tmpfiles.d; `%%` is a `%` (systemd.unit(5), tmpfiles.d(5), "Specifiers").
  escapeSpecifiers = lib.replaceStrings [ "%" ] [ "%%" ];
  # A path in a directive that splits its value into words and unquotes them
  # (ReadWritePaths=, DeviceAllow=, a tmpfiles.d line): as it is when there
  # is nothing to quote, so the usual paths read as before; otherwise in
  # double quotes with `"` and `\` backslash-escaped, which every such
  # directive reads back. None of them turns `\n` back into a newline
  # (ReadWritePaths= does not C-unescape), so the option types refuse
  # control characters.
  pathWord =
    path:
    escapeSpecifiers (
      if builtins.match "[^[:space:]\"'\\\\]*" path != null then path else builtins.toJSON path
    );
  # A path systemd takes as the rest of the line, unquoted
  # (EnvironmentFile=, the file of LoadCredential=): quotes would be part of
  # the path, so only specifiers are escaped; `unitPath` refuses what the
  # line cannot hold.
  literalPath = path: escapeSpecifiers (toString path);

  # What a path must be for a unit file to name it: absolute and normalised
  # (EnvironmentFile= and LoadCredential= ignore a path with `.` or `..`, and
  # LoadCredential= one with `//`), without control characters (a unit file
  # line holds none that every directive reads back). `atLineEnd` also
  # refuses a trailing space or backslash, for the directives that take the
  # rest of the line: systemd strips trailing space, and reads a trailing
  # backslash as a line continuation that swallows the next directive.
  isUnitPath =
    atLineEnd: path:
    builtins.match "(/[^/]+)+" path != null
    && !(lib.any (part: part == "." || part == "..") (lib.splitString "/" path))
    && builtins.match ".*[[:cntrl:]].*" path == null
    && !(atLineEnd && builtins.match ".*[[:space:]\\\\]" path != null);
  # `type`, narrowed to what a unit file can name (a Nix path becomes a store
  # path, which always can).
  unitPath =
    atLineEnd: type:
    type
    // {
      description = "${type.description} that a unit file can name (normalised: no `.`, `..` or `//`; no control character${
        lib.optionalString atLineEnd "; not ending in a space or backslash"
      })";
      check = value: type.check value && (builtins.isPath value || isUnitPath atLineEnd (toString value));
    };
  # A string a unit file line can hold: no control characters.
  lineString =
    type:
    lib.types.addCheck type (value: builtins.match ".*[[:cntrl:]].*" value == null)
    // {
      description = "${type.description} without control characters";
    };
  # A time span as systemd.time(7) reads it: the only values a time option
  # writes, so no other text can reach the unit file.
  timeSpan = lib.mkOptionType {
    name = "timeSpan";
    description = "systemd time span (e.g. \"10s\", \"1min 30s\", \"infinity\")";
    descriptionClass = "noun";
    check = value: builtins.isString value && timeSpanSeconds value != null;
    merge = lib.mergeEqualOption;
  };
  # User and group names as NixOS's users module and shadow accept them
  # (users-groups.nix); systemd reads them in User=, Group= and tmpfiles.d.
  accountName = types.strMatching "[a-zA-Z0-9_.][a-zA-Z0-9_.-]*";
  # Environment variable names systemd accepts in Environment= (others are
  # ignored with a warning).
  isEnvironmentName = name: builtins.match "[A-Za-z_][A-Za-z0-9_]*" name != null;

  isDevice = source: source != null && lib.hasPrefix "/dev/" source;

  # Sources the progress watchdog cannot count bytes of (ECP-0133): device
  # paths and UDP schemes. `ec-launch run --progress-watchdog` refuses
  # them too (exit 64); this says so at evaluation, naming the option.
  unwatchableSource =
    source:
    let
      scheme = builtins.match "([A-Za-z][A-Za-z0-9+.-]*):.*" source;
    in
    source != null
    && (
      lib.hasPrefix "/" source
      || (scheme != null && lib.elem (lib.toLower (builtins.head scheme)) [
        "udp"
        "rtp"
        "srt"
        "file"
      ])
    );

  # Tuner devices (issue #10, evolution/ECP-0132-tuner-slots.md). A unit is
  # on a device when its source URL's host is the device's host, as far as
  # Nix can tell without resolving names: `scheme://[userinfo@]host[:port]`
  # followed by a path, query or fragment, IPv6 in brackets. Compared
  # lower-cased, without one trailing dot, brackets or an IPv4-mapped
  # IPv6 prefix (so far ec-launch's key rules, ECP-0130); other spellings of
  # one box (a name and its address, `010.0.0.5`, `fe80:0::1`) are not
  # folded, and a unit that uses one names the device with `device`.
  sourceHost =
    source:
    let
      parts = builtins.match "[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*@)?([[][.0-9A-Fa-f:]*[]]|[-A-Za-z0-9._~%!$&'()*+,;=]*)(:[0-9]*)?([/?#].*)?" source;
      host = builtins.elemAt parts 1;
    in
    if source == null || parts == null || host == "" then null else normaliseHost host;
  normaliseHost =
    host:
    let
      lower = lib.toLower host;
      bracketed = builtins.match "[[](.*)[]]" lower;
      bare = if bracketed == null then lower else builtins.head bracketed;
      mapped = builtins.match "::ffff:([0-9]+[.][0-9]+[.][0-9]+[.][0-9]+)" bare;
    in
    if mapped != null then
      builtins.head mapped
    else if lib.hasInfix ":" bare then
      bare
    else
      lib.removeSuffix "." bare;
  # `--device`: the host as ec-launch writes a host in a key, so a launcher
  # started by hand on the same source finds the same slots.
  deviceKey =
    host:
    let
      normal = normaliseHost host;
    in
    if lib.hasInfix ":" normal then "[${normal}]" else normal;
  # A name or IPv4 address, or an IPv6 address (at least two colons) with or
  # without brackets; no scheme, userinfo, port or path.
  isHost =
    host:
    let
      ipv6 = "[.0-9A-Fa-f]*:[.0-9A-Fa-f]*:[.0-9A-Fa-f:]*";
    in
    builtins.match "[A-Za-z0-9._-]+|${ipv6}|[[]${ipv6}[]]" host != null;
  optionOfDevice = name: "services.every-channel.devices.${name}";
  # The declared device a unit's source host is, or null.
  deviceOfHost =
    host:
    let
      names = lib.filter (name: normaliseHost cfg.devices.${name}.host == host) (
        builtins.attrNames cfg.devices
      );
    in
    if host == null || names == [ ] then null else builtins.head names;
  # The device a unit is on: its `device`, else the one its source's host is.
  deviceOfUnit =
    unit: if unit.device != null then unit.device else deviceOfHost (sourceHost unit.source);
  # `ec-launch run` flags of a unit on a device, before `--`.
  tunerArgs =
    unit:
    let
      name = deviceOfUnit unit;
      device = cfg.devices.${name};
    in
    lib.optionals (name != null && cfg.devices ? ${name}) [
      "--tuners"
      (toString device.tuners)
      "--device"
      (deviceKey device.host)
    ];

  # Cluster mode (issue #12, evolution/ECP-0134-cluster-locks-on-etcd.md).
  # The timing rules are the launcher's (./cluster-timing.json): the module
  # checks them at evaluation so a unit never starts only to exit 64.
  clusterTiming = builtins.fromJSON (builtins.readFile ./cluster-timing.json);
  # The launcher's priority bounds and defaults (./priority.json, ECP-0139).
  priorities = builtins.fromJSON (builtins.readFile ./priority.json);
  cluster = cfg.cluster;
  clusterOption = name: "services.every-channel.cluster.${name}";
  # The smallest TTL `ec-launch run` accepts for a stop grace: renewal every
  # TTL/3 and a call timeout of TTL/6 must leave the grace and the margin.
  minimumTtl = stopGrace: 2 * (stopGrace + clusterTiming.margin) + 1;

  # Files passed with LoadCredential=, by credential name: systemd reads
  # them as root and hands the unit a copy in its credentials directory, so
  # a root-only key or password file works for the service user and no
  # path of one is on the command line.
  clusterFiles = lib.filter (file: file.path != null) [
    { name = "etcd-ca"; flag = "--etcd-ca"; path = cluster.caFile; }
    { name = "etcd-cert"; flag = "--etcd-cert"; path = cluster.certFile; }
    { name = "etcd-key"; flag = "--etcd-key"; path = cluster.keyFile; }
    { name = "etcd-user"; flag = "--etcd-user-file"; path = cluster.userFile; }
  ];
  # A Nix path (a CA or certificate kept in the configuration) is copied to
  # the store, which is fine for those; keyFile and userFile refuse them.
  credentialSource = path: if builtins.isPath path then "${path}" else toString path;

  # `ec-launch run` flags of a locked unit in cluster mode, before `--`.
  clusterArgs = lib.optionals cluster.enable (
    [
      "--etcd"
      (lib.concatStringsSep "," cluster.endpoints)
      "--etcd-ttl"
      (toString cluster.ttl)
      "--etcd-stop-grace"
      (toString cluster.stopGrace)
    ]
    ++ lib.concatMap (file: [
      file.flag
      (credentialPath file.name)
    ]) clusterFiles
    ++ [
      "--node"
      cluster.node
    ]
    # Placement (evolution/ECP-0140-balanced-placement.md): only what
    # differs from the launcher's defaults, so a unit that leaves them
    # keeps the command line it had.
    ++ lib.optionals (cluster.weight != 1) [
      "--node-weight"
      (toString cluster.weight)
    ]
    ++ lib.optionals (cluster.placement == "first") [
      "--placement"
      "first"
    ]
  );

  # The launcher pings systemd's watchdog from its renewal thread, so PID 1
  # kills a launcher that froze (and so cannot fence): the watchdog fires at
  # most WatchdogSec after the last ping, and the abort (TimeoutAbortSec =
  # stopGrace) ends the cgroup. A mitigation, not the guarantee
  # (ECP-0134): it beats the lease when the freeze comes while renewals are
  # on time, the last at most ttl/3 old, so the lease lasts at least 2/3 ttl
  # more; the kill must come a margin before that, which holds for every
  # ttl >= 3 × (stopGrace + margin) and is warned about otherwise. A
  # launcher that freezes while renewals already fail is past what any
  # watchdog can catch in time.
  clusterWatchdogSec = lib.max 1 ((cluster.ttl - cluster.stopGrace - clusterTiming.margin) / 2);

  # A cluster unit's TimeoutStopSec (ECP-0135 section 3): when the launcher
  # itself is SIGKILLed, systemd's control-group kill is all that stops a
  # helper that ignores SIGTERM, and it must be done before another node
  # may start. That node starts no earlier than the lease's expiry plus the
  # lock delay (stopGrace + margin); the launcher may die as late as the end
  # of its own fence's grace, when the lease has only the margin left. So
  # the kill, TimeoutStopSec after the death, must come within stopGrace +
  # margin, leaving the margin. A clean stop still has stopGrace for the
  # program and its helpers and the margin to release the keys.
  clusterStopTimeout = cluster.stopGrace + clusterTiming.margin;
  # A unit's watchdogSec (seconds, or a time span) in whole seconds, up.
  progressWindowSeconds =
    span:
    let
      seconds = if builtins.isInt span then span else timeSpanSeconds span;
    in
    lib.max 1 (
      if builtins.isInt seconds then seconds else builtins.ceil seconds
    );
  clusterStopTimeoutFits =
    value:
    let
      seconds = timeSpanSeconds (toString value);
    in
    seconds != null && seconds <= clusterStopTimeout;
  watchdogBeatsLease =
    3 * (clusterWatchdogSec + cluster.stopGrace + clusterTiming.margin) <= 2 * cluster.ttl;

  # A systemd time span (systemd.time(7)) in seconds, or null when it is not
  # one this module reads: numbers (a bare one is seconds) with the units
  # systemd knows, separated by spaces or not, or "infinity".
  timeSpanUnits =
    let
      per = seconds: names: lib.genAttrs names (_: seconds);
    in
    per 1.0e-6 [ "us" "usec" "µs" ]
    // per 1.0e-3 [ "ms" "msec" ]
    // per 1 [ "" "s" "sec" "second" "seconds" ]
    // per 60 [ "m" "min" "minute" "minutes" ]
    // per 3600 [ "h" "hr" "hour" "hours" ]
    // per 86400 [ "d" "day" "days" ]
    // per 604800 [ "w" "week" "weeks" ]
    // per 2629800 [ "M" "month" "months" ]
    // per 31557600 [ "y" "year" "years" ];
  timeSpanSeconds =
    text:
    let
      parts = builtins.split "([0-9]+[.]?[0-9]*|[.][0-9]+)[[:space:]]*([A-Za-zµ]*)" text;
      gaps = builtins.filter builtins.isString parts;
      terms = builtins.filter builtins.isList parts;
      number =
        digits:
        builtins.fromJSON (
          (if lib.hasPrefix "." digits then "0" else "")
          + digits
          + (if lib.hasSuffix "." digits then "0" else "")
        );
    in
    if builtins.match "[[:space:]]*infinity[[:space:]]*" text != null then
      1.0e18
    else if
      terms == [ ]
      || !(lib.all (gap: builtins.match "[[:space:]]*" gap != null) gaps)
      || !(lib.all (term: timeSpanUnits ? ${builtins.elemAt term 1}) terms)
    then
      null
    else
      lib.foldl' (sum: term: sum + number (builtins.head term) * timeSpanUnits.${builtins.elemAt term 1}) 0 terms;

  # An endpoint's parts, or null when it is not `scheme://authority…`.
  endpointParts = builtins.match "([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)";
  endpointScheme =
    endpoint:
    let
      parts = endpointParts endpoint;
    in
    if parts == null then null else lib.toLower (builtins.head parts);
  endpointHasUserinfo =
    endpoint:
    let
      parts = endpointParts endpoint;
    in
    parts != null && lib.hasInfix "@" (builtins.elemAt parts 1);
  isEndpoint =
    endpoint:
    let
      parts = endpointParts endpoint;
    in
    parts != null
    && lib.elem (endpointScheme endpoint) [ "http" "https" ]
    && builtins.match "[^:].*" (builtins.elemAt parts 1) != null
    && builtins.match ".*[,[:space:]].*" endpoint == null;
  anyEndpoint = scheme: lib.any (endpoint: endpointScheme endpoint == scheme) cluster.endpoints;
  stopTimeoutSeconds = timeSpanSeconds cfg.stopTimeout;

  # Messages name the option and, for an endpoint, its position: an
  # endpoint may carry a password, and a message is output.
  clusterAssertions =
    lib.optionals cluster.enable (
      [
        {
          assertion = cluster.endpoints != [ ];
          message = "${clusterOption "endpoints"}: cluster mode is enabled but no etcd endpoint is given; list the cluster's client URLs, e.g. [ \"https://etcd-1.lan:2379\" ].";
        }
        {
          assertion = cluster.ttl >= minimumTtl cluster.stopGrace;
          message = "${clusterOption "ttl"}: ${toString cluster.ttl} s leaves no time to renew the lease before the fence (renewal every ttl/3, each call up to ttl/6, then stopGrace = ${toString cluster.stopGrace} s and a ${toString clusterTiming.margin} s margin); ec-launch refuses a ttl of 2 × (stopGrace + ${toString clusterTiming.margin}) s or less: set ttl to at least ${toString (minimumTtl cluster.stopGrace)}, or lower stopGrace.";
        }
        {
          assertion = (cluster.certFile == null) == (cluster.keyFile == null);
          message = "services.every-channel.cluster: certFile and keyFile go together (a client certificate and its key); set both, or neither.";
        }
        {
          assertion = !(anyEndpoint "https") || cluster.caFile != null;
          message = "${clusterOption "caFile"}: an endpoint is https, and ec-launch trusts only the CA it is given (not the system's roots); set caFile to the CA that signed the etcd servers' certificates.";
        }
        {
          assertion = cluster.node != "";
          message = "${clusterOption "node"}: empty (networking.hostName is empty, e.g. taken from DHCP); set node to a name that is unique among the cluster's nodes.";
        }
        {
          assertion = stopTimeoutSeconds != null;
          message = "services.every-channel.stopTimeout: `${cfg.stopTimeout}` is not a time span this module can read (seconds, or numbers with us, ms, s, min, h: \"10s\", \"1min 30s\"); cluster mode needs it to check that stopTimeout exceeds cluster.stopGrace + ${toString clusterTiming.margin} s.";
        }
        {
          assertion = stopTimeoutSeconds == null || stopTimeoutSeconds > cluster.stopGrace + clusterTiming.margin;
          message = "services.every-channel.stopTimeout: ${cfg.stopTimeout} is not more than cluster.stopGrace (${toString cluster.stopGrace} s) + ${toString clusterTiming.margin} s: systemd would SIGKILL the launcher before it has stopped the program and revoked the lease, so a standby on another node would wait a whole ttl; raise stopTimeout or lower stopGrace.";
        }
      ]
      ++ lib.imap1 (
        index: endpoint:
        if endpointHasUserinfo endpoint then
          {
            assertion = false;
            message = "${clusterOption "endpoints"}: entry ${toString index} has a user name or password in it (`user:password@`); the Nix store is world-readable and ec-launch refuses such URLs: remove it from the URL and put `user:password` in a root-only file named by ${clusterOption "userFile"}.";
          }
        else
          {
            assertion = isEndpoint endpoint;
            message = "${clusterOption "endpoints"}: entry ${toString index} is not an etcd client URL; give `http://host:port` or `https://host:port` (one URL per entry, no comma or space).";
          }
      ) cluster.endpoints
    );
  clusterWarnings = lib.optionals cluster.enable (
    lib.optional (cluster.ttl >= minimumTtl cluster.stopGrace && !watchdogBeatsLease)
      "${clusterOption "ttl"}: with ttl = ${toString cluster.ttl} and stopGrace = ${toString cluster.stopGrace}, systemd kills a frozen ec-launch up to WatchdogSec (${toString clusterWatchdogSec} s) + stopGrace after its last ping, which may leave less than a ${toString clusterTiming.margin} s margin before its lease expires on the server (2/3 of ttl after its last renewal); set ttl to at least ${toString (3 * (cluster.stopGrace + clusterTiming.margin))} (3 × (stopGrace + ${toString clusterTiming.margin})), or lower stopGrace."
    ++ lib.optional (cluster.userFile != null && anyEndpoint "http")
      "${clusterOption "userFile"}: an endpoint is plain http, so the etcd password from userFile crosses the network in clear text; use https endpoints (with caFile)."
    ++
      lib.optional
        (
          cluster.endpoints != [ ]
          && !(anyEndpoint "https")
          && lib.any (file: file != null) [
            cluster.caFile
            cluster.certFile
            cluster.keyFile
          ]
        )
        "services.every-channel.cluster: caFile, certFile or keyFile is set but no endpoint is https, so they are not used; use https endpoints or remove them."
  );

  # Credentials in a source: userinfo (anything up to an `@` before the
  # query, with or without `//`), or a parameter (query, or `;name=value`
  # in the path, `&` or `;` between them) that nixos/secret-params.json
  # calls a credential: the one list ec-launch's redactor and key rules
  # read too (evolution/ECP-0130-key-normalisation-and-secret-parameters.md).
  # Names are compared lower-cased but, unlike ec-launch, not
  # percent-decoded. Only the fact is reported, never the value.
  secretParams = builtins.fromJSON (builtins.readFile ./secret-params.json);
  # `x_api_key`, `auth-token`, `my.secret`, `accessToken`: the word at the
  # end after a separator, or capitalised after a lower-case letter or digit.
  endsWithWord =
    name: word:
    let
      headLength = builtins.stringLength name - builtins.stringLength word;
      before = builtins.substring (headLength - 1) 1 name;
      first = builtins.substring headLength 1 name;
    in
    lib.hasSuffix word (lib.toLower name)
    && (
      headLength == 0
      || lib.elem before [
        "_"
        "-"
        "."
      ]
      || (builtins.match "[a-z0-9]" before != null && builtins.match "[A-Z]" first != null)
    );
  isSecretName =
    name:
    let
      lower = lib.toLower name;
    in
    lib.elem lower secretParams.names
    || lib.any (prefix: lib.hasPrefix prefix lower) secretParams.prefixes
    || lib.any (endsWithWord name) secretParams.suffixes;
  sourceParams =
    source:
    let
      parts = lib.splitString "?" (builtins.head (lib.splitString "#" source));
      path = builtins.head parts;
      query = lib.concatStringsSep "?" (builtins.tail parts);
      pathItems = lib.concatMap (segment: builtins.tail (lib.splitString ";" segment)) (
        lib.splitString "/" path
      );
      queryItems = lib.optionals (builtins.length parts > 1) (
        builtins.filter builtins.isString (builtins.split "[&;]" query)
      );
    in
    builtins.filter (item: item != "") (pathItems ++ queryItems);
  hasCredentials =
    source:
    let
      items = sourceParams source;
      names = map (item: builtins.head (lib.splitString "=" item)) (builtins.filter (lib.hasInfix "=") items);
      lowerNames = map lib.toLower names;
      # Up to the last `@` before the query; empty in ffmpeg's multicast
      # spelling `udp://@239.0.0.1:1234`, which hides nothing.
      userinfo = builtins.match "([a-zA-Z][a-zA-Z0-9+.-]*://)?([^?#]*)@.*" source;
      envelopeSigned = lib.any (
        envelope:
        lib.any (marker: lib.elem marker lowerNames) envelope.when
        && lib.any (param: lib.elem param lowerNames) envelope.params
      ) secretParams.envelopes;
    in
    userinfo != null && builtins.elemAt userinfo 1 != ""
    || lib.any (item: !(lib.hasInfix "=" item)) items
    || lib.any isSecretName names
    || envelopeSigned;

  programOf =
    unit:
    if cfg.package != null then
      lib.getExe' cfg.package unit.program
    else
      throw "services.every-channel.package is not set; see the assertion message";

  ecLaunch =
    if cfg.launcherPackage != null then
      lib.getExe' cfg.launcherPackage "ec-launch"
    else
      throw "services.every-channel.launcherPackage is not set; see the assertion message";

  # Options shared by publishers and archive workers. `sourceRequired`
  # decides only the documentation; the assertions enforce the rule.
  unitOptions =
    { kind, sourceRequired }:
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "Whether to run this ${kind}.";
        };

        source = mkOption {
          type = types.nullOr (lineString types.nonEmptyStr);
          default = null;
          example = "http://192.168.1.20:5004/auto/v5.1";
          description = ''
            The source URL (or `/dev/video*` device) ${
              if sourceRequired then "this publisher reads" else "this worker reads, if any"
            }. It ends up in the unit file in the world-readable Nix store:
            a URL with credentials belongs in `sourceFile`.
            ${
              if sourceRequired then
                "Set exactly one of `source` and `sourceFile`."
              else
                "With a source, the worker runs under the source lock like a publisher."
            }
          '';
        };

        sourceFile = mkOption {
          type = types.nullOr (
            unitPath true (
              types.pathWith {
                absolute = true;
                inStore = false;
              }
            )
          );
          default = null;
          example = "/run/keys/tuner-url";
          description = ''
            A file holding the source URL, for URLs with credentials. systemd
            passes it with `LoadCredential=` (it may be readable by root
            only), and `ec-launch` reads it with `--source-file`; it is never
            copied into the Nix store. Give it as a string, not a Nix path.
            The program sees the URL in `EC_SOURCE_URL`; a `{source}` in
            `args` would put it on the command line.
          '';
        };

        lockKey = mkOption {
          type = types.nullOr types.nonEmptyStr;
          default = null;
          description = ''
            Use this as the source's lock identity instead of the key
            `ec-launch` derives from the source (`ec-launch key SOURCE`).
          '';
        };

        onBusy = mkOption {
          type = types.enum [
            "skip"
            "wait"
          ];
          default = "skip";
          description = ''
            What to do when another unit holds the source, or, on a device
            in `services.every-channel.devices`, when every tuner is taken:
            `skip` exits with 75, a clean stop that is not restarted (the
            unit stays inactive until the next switch or a manual start);
            `wait` blocks, without asking the device, until the holder lets
            go or a tuner frees, and starts the program then.

            With more channels than tuners, `wait` is what you want: every
            publisher of the box is a standby for a tuner, the ones that
            start first stream, and the others take a tuner the moment one
            frees. With `skip`, whichever finds the tuners taken at boot
            stays off.
          '';
        };

        device = mkOption {
          type = types.nullOr types.nonEmptyStr;
          default = null;
          example = "living-room";
          description = ''
            The name of the tuner device in `services.every-channel.devices`
            this unit reads from, for a source the module cannot match to
            the device's `host`: a `sourceFile` (read only on the node), or
            a `source` spelling the box differently (a name where the device
            is declared by address). A unit whose `source` URL has the
            device's host needs nothing here. Not to be confused with
            `devices`, the device nodes the unit may open.
          '';
        };

        devices = mkOption {
          type = types.listOf (lineString types.str);
          default = [ ];
          example = [ "/dev/video0" ];
          description = ''
            Device nodes the unit may open. A `/dev/…` `source` is added
            automatically; list the device here when it comes from
            `sourceFile`.
          '';
        };

        program = mkOption {
          # A name in the package's bin/, not a path: the unit runs what the
          # package provides, nothing else.
          type = types.strMatching "[^/]+";
          default = "ec-node";
          example = "ec-archive";
          description = ''
            The program of `package` this unit runs (`bin/<program>`),
            through `ec-launch run` when the unit has a source.
          '';
        };

        args = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [
            "publish"
            "--channel"
            "5.1"
          ];
          description = "Arguments passed to `program`, escaped for systemd.";
        };

        environment = mkOption {
          type = types.attrsOf types.str;
          default = { };
          description = "Environment variables for `ec-node`.";
        };

        environmentFile = mkOption {
          type = types.nullOr (unitPath true types.path);
          default = null;
          example = "/run/keys/every-channel.env";
          description = ''
            An `EnvironmentFile=` for secrets that must not be in the Nix
            store; give it as a string so it is not copied there.
          '';
        };

        watchdogSec = mkOption {
          type = types.nullOr (types.either types.ints.positive timeSpan);
          default = null;
          example = "30s";
          description = ''
            Restart the unit when its source stops delivering bytes
            (`evolution/ECP-0133-stale-readers-and-progress-watchdog.md`):
            sets `WatchdogSec=` to this, `NotifyAccess=all` and
            `ec-launch run --progress-watchdog`, whose monitor pings
            systemd's watchdog every half of it only while bytes arrive on
            the program's TCP connections to the source's host and port.
            With no ping for this long, systemd kills the unit (its
            `WatchdogSignal=`, SIGABRT by default) and `Restart=always`
            starts it again. Leave time to connect and receive the first
            bytes: the first ping after the start needs them within half of
            it. Only for network sources over TCP (HTTP, RTSP with RTP over
            TCP, RTMP); not for `/dev/…`, `udp://`, `rtp://` or `srt://`.
            A program that sends `WATCHDOG=1` itself may ping as well.
            In cluster mode the unit keeps the cluster watchdog
            (`WatchdogSec=` from `cluster.ttl`, `NotifyAccess=main`) and this
            becomes `--progress-window`: the launcher pings only while its
            lease is renewed and bytes arrived within this span, so neither
            the monitor nor the program can keep a frozen launcher's unit
            alive.
          '';
        };

        priority = mkOption {
          type = types.ints.between 0 priorities.max;
          default = priorities.default;
          example = 300;
          description = ''
            How much this unit matters when its device's tuners are short
            (`ec-launch run --priority`, 0 to ${toString priorities.max}): waiting
            units are served by priority, then by how long they waited, and
            a unit that finds every tuner taken preempts the holder of the
            lowest priority *strictly below* its own (SIGTERM, SIGKILL after
            `preemptGrace`), which is logged with both sides and shown by
            `ec-launch status`. Equal or higher priorities are never
            preempted. A preempted unit was killed by a signal, so systemd
            restarts it, and with `onBusy = "wait"` it waits in line. Only
            units on a device (`--tuners`) compete. Suggested scale:
            background channels 1-7, live viewing 10-99, recordings
            100-500.
          '';
        };

        preemptGrace = mkOption {
          type = types.ints.unsigned;
          default = priorities.preemptGrace;
          description = ''
            Seconds between SIGTERM and SIGKILL when this unit makes a
            holder let go (preemption, or reclaiming an escaped holder).
          '';
        };

        reclaimEscaped = mkOption {
          type = types.nullOr types.bool;
          default = null;
          description = ''
            Override of `services.every-channel.reclaimEscaped` for this
            unit; `null` follows it.
          '';
        };

        restartSec = mkOption {
          type = types.either timeSpan types.ints.unsigned;
          default = "5s";
          description = "`RestartSec=`: the pause before systemd restarts the unit.";
        };

        serviceConfig = mkOption {
          type = types.attrsOf types.anything;
          default = { };
          example = {
            ReadWritePaths = [ "/var/lib/every-channel" ];
          };
          description = ''
            Extra `[Service]` settings. They override the hardening defaults
            and add to lists; a value contradicting the kill policy is an
            evaluation error (use `lib.mkForce` on
            `systemd.services.<unit>.serviceConfig` if you really mean it).
          '';
        };
      };
    };

  # extraUnits names as systemd.services keys.
  extraUnitNames = map (lib.removeSuffix ".service") cfg.extraUnits;

  # Service names some module other than this one defines. This module
  # defines every extraUnits entry itself (to add the kill policy), so the
  # merged config cannot tell a mistyped name from a real one; the
  # definitions can. Read from `options`, not `config`, so no cycle.
  servicesDefinedElsewhere = lib.concatMap (def: builtins.attrNames def.value) (
    lib.filter (def: def.file != toString ./module.nix) options.systemd.services.definitionsWithLocations
  );

  enabled = lib.filterAttrs (_: unit: unit.enable);
  publishers = enabled cfg.publishers;
  archiveWorkers = enabled cfg.archiveWorkers;

  # Every enabled publisher and archive worker, with what the unit builder
  # and the checks need to know about it.
  units =
    lib.mapAttrsToList (name: unit: {
      inherit name;
      serviceName = "every-channel-publisher-${name}";
      optionPath = "services.every-channel.publishers.${name}";
      description = "every-channel publisher ${name}";
      sourceRequired = true;
      inherit unit;
    }) publishers
    ++ lib.mapAttrsToList (name: unit: {
      inherit name;
      serviceName = "every-channel-archive-${name}";
      optionPath = "services.every-channel.archiveWorkers.${name}";
      description = "every-channel archive worker ${name}";
      sourceRequired = false;
      inherit unit;
    }) archiveWorkers;

  # The build-time source check (./check-sources.sh): every enabled unit
  # that takes a lock, as (option path, source, lockKey, onBusy). Keys are
  # derived by the launcher at build time, not here, so the check and
  # `ec-launch run` cannot disagree; the script says what the sandbox
  # cannot key (sourceFile, devices).
  lockedUnits = map (
    { optionPath, unit, ... }:
    {
      option = optionPath;
      inherit (unit) source lockKey onBusy;
    }
  ) (lib.filter ({ unit, ... }: unit.source != null || unit.sourceFile != null) units);

  sourceCheckArgs = [
    ecLaunch
    cfg.sourceLockDir
  ]
  ++ lib.concatMap (u: [
    u.option
    u.onBusy
    (if u.source == null then "" else u.source)
    (if u.lockKey == null then "" else u.lockKey)
  ]) lockedUnits;

  # Built with the system (system.checks): a duplicate fails the build
  # before deploy. It runs the launcher, never a device or a tuner. The
  # report (notes on standbys and on what was not compared) is its output.
  sourceCheck =
    pkgs.runCommand "every-channel-source-check"
      {
        # For people and tests/nix/eval.nix: what is compared.
        sourceUnits = builtins.toJSON lockedUnits;
        checkArgs = builtins.toJSON sourceCheckArgs;
      }
      ''
        if sh ${./check-sources.sh} ${lib.escapeShellArgs sourceCheckArgs} > report; then
          cat report
          mv report "$out"
        else
          cat report >&2
          exit 1
        fi
      '';

  # What is asserted and warned about, per unit, with the option path as the
  # subject so the message points at the line to change.
  unitChecks =
    {
      name,
      optionPath,
      unit,
      sourceRequired,
      serviceName,
      ...
    }:
    let
      both = unit.source != null && unit.sourceFile != null;
      neither = unit.source == null && unit.sourceFile == null;
      hostDevice = deviceOfHost (sourceHost unit.source);
    in
    {
      assertions = [
        {
          # The name becomes part of a unit name; keep it to characters
          # systemd takes without escaping.
          assertion = builtins.match "[A-Za-z0-9:_.-]+" name != null;
          message = "${optionPath}: the name may only contain letters, digits, `:`, `_`, `.` and `-`.";
        }
        {
          # systemd ignores other names in Environment=, with a warning.
          assertion = lib.all isEnvironmentName (builtins.attrNames unit.environment);
          message = "${optionPath}.environment: ${
            lib.concatMapStringsSep ", " (name: "`${name}`") (
              lib.filter (name: !(isEnvironmentName name)) (builtins.attrNames unit.environment)
            )
          } is not a variable name systemd accepts; use letters, digits and `_`, not starting with a digit.";
        }
        {
          assertion = !both;
          message = "${optionPath}: set only one of `source` and `sourceFile`, not both.";
        }
        {
          assertion = !(sourceRequired && neither);
          message = "${optionPath}: set `source` (a URL) or `sourceFile` (a file holding the URL); neither is set.";
        }
        {
          assertion = unit.source != null || unit.sourceFile != null || unit.lockKey == null;
          message = "${optionPath}: `lockKey` only applies with `source` or `sourceFile`.";
        }
        {
          assertion = unit.source != null || unit.sourceFile != null || unit.device == null;
          message = "${optionPath}.device: `device` only applies with `source` or `sourceFile`.";
        }
        {
          assertion = unit.watchdogSec == null || unit.source != null || unit.sourceFile != null;
          message = "${optionPath}.watchdogSec: the progress watchdog counts the bytes of the unit's source; set `source` or `sourceFile`, or remove `watchdogSec`.";
        }
        {
          assertion = unit.watchdogSec == null || !unwatchableSource unit.source;
          message = "${optionPath}.watchdogSec: the source (a device path or a UDP stream: udp, rtp, srt) has no TCP connection whose bytes ec-launch can count, so the unit would be restarted while healthy; remove `watchdogSec`, or set `serviceConfig.WatchdogSec` if the program pings the watchdog itself.";
        }
        {
          assertion =
            !(cluster.enable && (unit.source != null || unit.sourceFile != null))
            || !(lib.any (setting: unit.serviceConfig ? ${setting}) [
              "WatchdogSec"
              "NotifyAccess"
              "TimeoutAbortSec"
            ]);
          message = "${optionPath}.serviceConfig: WatchdogSec, NotifyAccess and TimeoutAbortSec are set by cluster mode (the launcher pings systemd's watchdog, so a frozen launcher is killed within stopGrace, before its lease lapses); remove them, or use watchdogSec for the progress watchdog.";
        }
        {
          assertion =
            !(cluster.enable && (unit.source != null || unit.sourceFile != null))
            || clusterStopTimeoutFits (
              config.systemd.services.${serviceName}.serviceConfig.TimeoutStopSec or clusterStopTimeout
            );
          message = "${optionPath}.serviceConfig.TimeoutStopSec (or systemd.services.${serviceName}.serviceConfig.TimeoutStopSec): ${
            toString (config.systemd.services.${serviceName}.serviceConfig.TimeoutStopSec or "")
          } is more than cluster.stopGrace + ${toString clusterTiming.margin} s (${toString clusterStopTimeout} s), or not a time span this module can read: when ec-launch itself is killed, systemd's kill of the unit's cgroup must end every reader before another node may start (the lease's expiry plus the lock delay); remove the override (cluster mode sets ${toString clusterStopTimeout}s), or raise cluster.stopGrace.";
        }
        {
          assertion = unit.device == null || cfg.devices ? ${unit.device};
          message =
            let
              declared = builtins.attrNames cfg.devices;
            in
            "${optionPath}.device: no device `${unit.device}` in services.every-channel.devices (${
              if declared == [ ] then
                "none declared"
              else
                "declared: ${lib.concatMapStringsSep ", " (name: "`${name}`") declared}"
            }); declare it there or fix the name.";
        }
        {
          assertion = unit.device == null || hostDevice == null || hostDevice == unit.device;
          message = "${optionPath}.device: `${unit.device}` is ${optionOfDevice unit.device}, but the source's host ${
            deviceKey (sourceHost unit.source)
          } is ${optionOfDevice hostDevice}; remove `device` (the host picks the device) or fix the source.";
        }
      ];
      warnings =
        lib.optional (unit.source != null && !isDevice unit.source && hasCredentials unit.source)
          "${optionPath}.source looks like it contains credentials (userinfo, or a parameter nixos/secret-params.json calls a credential); the Nix store is world-readable, so put the URL in a root-only file and use `sourceFile` instead."
        ++
          lib.optional (unit.sourceFile != null && lib.any (lib.hasInfix "{source}") unit.args)
            "${optionPath}.args contains `{source}`, which puts the URL from `sourceFile` on ec-node's command line where every user can read it; have ec-node read EC_SOURCE_URL instead.";
    };

  # Per device: contradictions are assertions, with the option to change;
  # more sources than tuners with a unit that skips is a warning (it may
  # be meant, but it is the 503 incident's shape with a quieter ending).
  deviceNames = builtins.attrNames cfg.devices;
  unitsOnDevice =
    name:
    lib.filter (
      { unit, ... }: (unit.source != null || unit.sourceFile != null) && deviceOfUnit unit == name
    ) units;
  hostGroups = lib.groupBy (name: normaliseHost cfg.devices.${name}.host) (
    lib.filter (name: isHost cfg.devices.${name}.host) deviceNames
  );
  deviceAssertions =
    lib.concatMap (
      name:
      let
        device = cfg.devices.${name};
      in
      [
        {
          assertion = isHost device.host;
          message = "${optionOfDevice name}.host: `${device.host}` is not a host name or address; give it alone, without scheme, user, port or path (e.g. \"10.0.0.5\" or \"fe80::1\").";
        }
        {
          assertion = device.tuners == "auto" || device.tuners >= 1;
          message = "${optionOfDevice name}.tuners: ${toString device.tuners} is not a number of tuners; give how many the device has (1 or more), or \"auto\" to ask it.";
        }
      ]
    ) deviceNames
    ++ lib.mapAttrsToList (host: names: {
      assertion = lib.length names == 1;
      message = "${lib.concatMapStringsSep ", " optionOfDevice names}: one host `${deviceKey host}`, declared more than once; declare each box once (a unit that spells it differently takes `device`).";
    }) hostGroups;
  deviceWarnings = lib.concatMap (
    name:
    let
      inherit (cfg.devices.${name}) tuners;
      on = unitsOnDevice name;
      # Units on one source share a tuner (a standby waits on the source
      # lock and never takes a slot); the spelling stands in for the key.
      sources = lib.unique (
        map (
          { unit, ... }:
          if unit.lockKey != null then
            unit.lockKey
          else if unit.source != null then
            unit.source
          else
            toString unit.sourceFile
        ) on
      );
      skipping = lib.filter ({ unit, ... }: unit.onBusy == "skip") on;
    in
    lib.optional (builtins.isInt tuners && lib.length sources > tuners && skipping != [ ])
      "${optionOfDevice name}: ${toString (lib.length sources)} sources on ${toString tuners} tuners, and ${
        lib.concatMapStringsSep ", " (u: u.optionPath) skipping
      } ${
        if lib.length skipping == 1 then "has" else "have"
      } onBusy = \"skip\": a unit that finds every tuner taken exits 75 and is not restarted, so its channel stays off. Set onBusy = \"wait\" on them: a waiting unit takes the next tuner that frees."
  ) deviceNames;

  # The systemd service for one publisher or archive worker.
  mkUnit =
    { description, unit, ... }:
    let
      hasSource = unit.source != null || unit.sourceFile != null;
      devices = unit.devices ++ lib.optional (isDevice unit.source) unit.source;
      launcher =
        [
          ecLaunch
          "run"
          "--lock-dir"
          cfg.sourceLockDir
          "--on-busy"
          unit.onBusy
        ]
        ++ lib.optional (
          if unit.reclaimEscaped == null then cfg.reclaimEscaped else unit.reclaimEscaped
        ) "--reclaim-escaped"
        ++ lib.optionals (unit.priority != priorities.default) [
          "--priority"
          (toString unit.priority)
        ]
        ++ lib.optionals (unit.preemptGrace != priorities.preemptGrace) [
          "--preempt-grace"
          (toString unit.preemptGrace)
        ]
        ++ lib.optionals (unit.lockKey != null) [
          "--key"
          unit.lockKey
        ]
        ++ tunerArgs unit
        ++ lib.optional (unit.watchdogSec != null) "--progress-watchdog"
        # In cluster mode the unit's WatchdogSec is the launcher's; the
        # progress watchdog's span becomes the window within which the
        # launcher needs progress to vouch.
        ++ lib.optionals (unit.watchdogSec != null && cluster.enable) [
          "--progress-window"
          (toString (progressWindowSeconds unit.watchdogSec))
        ]
        ++ clusterArgs
        ++ lib.optionals (unit.source != null) [
          "--source"
          unit.source
        ];
      # `%d` is systemd's specifier for $CREDENTIALS_DIRECTORY, so it stays
      # outside execWord, which would escape it.
      sourceFileArgs = lib.optionalString (unit.sourceFile != null) " --source-file %d/source";
      program = execLine ([ (programOf unit) ] ++ unit.args);
    in
    {
      inherit description;
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # Environment= is C-unquoted by systemd (NixOS writes each as a JSON
      # string), but `%` would still be a specifier.
      environment = lib.mapAttrs (_: escapeSpecifiers) unit.environment;

      serviceConfig = mkMerge [
        # The policy: plain definitions, so a contradicting one elsewhere is
        # an evaluation error instead of a silent override. In cluster mode
        # the launcher supervises: a stop's SIGTERM, forwarded, ends the
        # program, and the launcher exits 143 (128+SIGTERM, like a shell)
        # where the exec'd program would have died of the signal, which
        # systemd counts as clean; 143 is clean here too.
        (ownUnitPolicy
          // lib.optionalAttrs (hasSource && cluster.enable) {
            SuccessExitStatus = unitPolicy.restart.SuccessExitStatus ++ [ 143 ];
            TimeoutStopSec = "${toString clusterStopTimeout}s";
          }
          # A unit's own TimeoutStopSec is checked (an assertion) instead of
          # clashing with the derived one.
          // lib.optionalAttrs (hasSource && cluster.enable && unit.serviceConfig ? TimeoutStopSec) {
            TimeoutStopSec = unit.serviceConfig.TimeoutStopSec;
          })
        {
          Type = "exec";
          ExecStart =
            if hasSource then "${execLine launcher}${sourceFileArgs} -- ${program}" else program;
          RestartSec = unit.restartSec;
          User = cfg.user;
          Group = cfg.group;
        }
        (mkIf (unit.sourceFile != null) {
          LoadCredential = [ "source:${literalPath unit.sourceFile}" ];
        })
        (mkIf (unit.environmentFile != null) {
          EnvironmentFile = literalPath unit.environmentFile;
        })
        # The progress watchdog: its monitor is not the main process, so
        # systemd must accept notifications from the whole cgroup. Not in
        # cluster mode, where only the launcher vouches (below).
        (mkIf (hasSource && unit.watchdogSec != null && !cluster.enable) {
          WatchdogSec = unit.watchdogSec;
          NotifyAccess = "all";
        })
        # Cluster mode: etcd's credentials, and the watchdog on the
        # launcher, which stays the main process (so `Type=exec` still
        # holds, and only the main PID may notify) and pings from its
        # renewal thread (ECP-0135 section 4): always, with the progress
        # watchdog too, whose monitor then reports to the launcher, never to
        # systemd, so neither it nor the program can keep a frozen launcher's
        # unit alive. A watchdog abort ends the cgroup within stopGrace, as
        # the launcher's own fence would.
        (mkIf (hasSource && cluster.enable && clusterFiles != [ ]) {
          LoadCredential = map (file: "${file.name}:${literalPath (credentialSource file.path)}") clusterFiles;
        })
        (mkIf (hasSource && cluster.enable) {
          TimeoutAbortSec = cluster.stopGrace;
        })
        (mkIf (hasSource && cluster.enable) {
          WatchdogSec = clusterWatchdogSec;
          NotifyAccess = "main";
        })
        # Hardening from ./unit-hardening.json (the reasons are in its
        # `why`): defaults the per-unit serviceConfig can override …
        (lib.mapAttrs (_: mkDefault) hardening.defaults)
        {
          PrivateDevices = mkDefault (devices == [ ]);
        }
        # … and lists at normal priority, so the per-unit serviceConfig adds
        # to them; a mkDefault list would be dropped by any definition.
        hardening.lists
        {
          # ProtectSystem=strict leaves /run read-only; the lock directory is
          # the one place every unit writes to.
          ReadWritePaths = lib.optional hasSource (pathWord cfg.sourceLockDir);
        }
        (mkIf (devices != [ ]) {
          DevicePolicy = mkDefault "closed";
          DeviceAllow = map (device: "${pathWord device} rw") devices;
          # Video4Linux nodes are group `video`.
          SupplementaryGroups = [ "video" ];
        })
        unit.serviceConfig
      ];
    };
in
{
  options.services.every-channel = {
    enable = mkEnableOption "every-channel publishers and archive workers";

    package = mkOption {
      type = types.nullOr types.package;
      default = null;
      description = ''
        The package providing `bin/ec-node` (and any other `program` a
        unit runs). It is not in nixpkgs, so there is no default; it is
        required once a publisher or archive worker is defined.
      '';
    };

    launcherPackage = mkOption {
      type = types.nullOr types.package;
      default = null;
      defaultText = lib.literalMD "this flake's `ec-launch` package, when the module is imported as `nixosModules.default`";
      description = "The package providing `bin/ec-launch`.";
    };

    installLauncher = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Whether to put `launcherPackage` in `environment.systemPackages`,
        so the `ec-launch status` that every busy journal line points to,
        its man page (`man ec-launch`) and its shell completions are on
        the node.
      '';
    };

    publishers = mkOption {
      type = types.attrsOf (
        types.submodule (unitOptions {
          kind = "publisher";
          sourceRequired = true;
        })
      );
      default = { };
      description = ''
        Publishers, each `every-channel-publisher-<name>.service`: ec-node
        reading one source, started through `ec-launch run` under that
        source's lock.
      '';
    };

    archiveWorkers = mkOption {
      type = types.attrsOf (
        types.submodule (unitOptions {
          kind = "archive worker";
          sourceRequired = false;
        })
      );
      default = { };
      description = ''
        Archive workers, each `every-channel-archive-<name>.service`: ec-node
        with the same kill policy; with a `source` or `sourceFile` it also
        runs under that source's lock.
      '';
    };

    devices = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            host = mkOption {
              type = types.nonEmptyStr;
              example = "192.168.1.20";
              description = ''
                The device's host name or address as its sources' URLs spell
                it (`http://<host>:5004/auto/v5.1`), alone: no scheme, port
                or path; an IPv6 address with or without brackets. Every
                publisher and archive worker whose `source` has this host
                (compared case-insensitively) is on the device. One box, one
                entry: a unit that spells the box differently (its name
                where this is its address) or reads a `sourceFile` takes
                `device = "<name>"`. Passed to `ec-launch run` as
                `--device`, the device's identity in the lock directory.
              '';
            };
            tuners = mkOption {
              type = types.either types.int (types.enum [ "auto" ]);
              example = "auto";
              description = ''
                How many tuners the device has: at most that many of its
                units read at once (`ec-launch run --tuners`); the others
                wait or skip by their `onBusy`, without asking the device.
                `"auto"` asks the device at every start
                (`GET http://<host>/discover.json`, its `TunerCount`); a
                device that cannot be asked fails the start, which systemd
                retries, and one without `discover.json` (older HDHomeRun
                models answer 404) needs a number.
              '';
            };
          };
        }
      );
      default = { };
      example = lib.literalExpression ''
        {
          living-room = { host = "192.168.1.20"; tuners = 2; };
          attic = { host = "hdhr-attic.lan"; tuners = "auto"; };
        }
      '';
      description = ''
        Tuner devices (an HDHomeRun has 2 to 4 tuners, and every open stream
        takes one), each declared once. Every publisher and archive worker
        whose source is on a device's `host` (or that names it with
        `device`) runs `ec-launch run --tuners <tuners> --device <host>`:
        it takes one of the device's tuner slots after its source lock, so
        at most `tuners` units on this node read the device at once and
        none asks a full device. Readers on other nodes or outside these
        units are not counted (`ec-launch status --device` shows them).
      '';
    };

    extraUnits = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "wt-publish" ];
      description = ''
        Names of services defined elsewhere (with or without `.service`)
        that get the kill policy of the publishers (`KillMode`,
        `SendSIGKILL`, `TimeoutStopSec`) and nothing else: the restart
        policy and exit status 75 belong to programs `ec-launch` starts. A
        name no other module defines in `systemd.services` is warned about.
      '';
    };

    checkSources = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Whether to check at build time (in `system.checks`) that no two
        enabled units lock one source with `onBusy = "skip"`; only the
        first to start would run. Keys are derived with
        `launcherPackage`'s `ec-launch key --json`; a unit that waits on
        another's source is a standby and only noted. The build has no
        devices and no network: device sources are compared by path, and
        `sourceFile` units only by their `lockKey`.
      '';
    };

    reclaimEscaped = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether the module's units reclaim a lock or tuner held by an
        escaped holder (`ec-launch run --reclaim-escaped`): a process whose
        record names one of the node's services, whose run of that service
        is over (its cgroup is empty, or the unit was restarted), and which
        no service holds (a helper moved to a scope or a session). Such a
        holder would keep the channel dark: every start would find its
        source busy. A holder started by hand (its record names no service)
        or one inside a running service is never touched. `false` leaves
        them to the operator; `ec-launch status` marks them `ESCAPED`.
      '';
    };

    sourceLockDir = mkOption {
      type = unitPath false types.str;
      default = "/run/every-channel/source-locks";
      description = ''
        Where `ec-launch` keeps the per-source lock files. Created by
        systemd-tmpfiles, writable by `group`, shared by every unit.
      '';
    };

    stopTimeout = mkOption {
      type = timeSpan;
      default = unitPolicy.kill.TimeoutStopSec;
      example = "30s";
      description = ''
        `TimeoutStopSec=`: how long systemd waits after SIGTERM before it
        SIGKILLs whatever is left in a unit's cgroup. In cluster mode the
        units with a source get `cluster.stopGrace` + 1 s instead.
      '';
    };

    user = mkOption {
      type = accountName;
      default = "every-channel";
      description = "The user every unit runs as; created as a system user when left at the default.";
    };

    group = mkOption {
      type = accountName;
      default = "every-channel";
      description = "The group every unit runs as; created when left at the default.";
    };

    cluster = {
      enable = mkEnableOption ''
        cluster mode: every unit with a source also takes its source lock
        (and, on a device, its tuner slot) on etcd, so the guarantee holds
        across the nodes that share the cluster, not only on this one. The
        local lock comes first as before; `ec-launch` then stays the unit's
        main process, renews its lease and stops the program before the
        lease can lapse (evolution/ECP-0134-cluster-locks-on-etcd.md)'';

      endpoints = mkOption {
        type = types.listOf types.nonEmptyStr;
        default = [ ];
        example = [
          "https://etcd-1.lan:2379"
          "https://etcd-2.lan:2379"
          "https://etcd-3.lan:2379"
        ];
        description = ''
          The etcd cluster's client URLs (`http://` or `https://`, one per
          entry), passed as `ec-launch run --etcd`. Required with `enable`.
          No `user:password@` in them: they end up in the world-readable
          Nix store; use `userFile`. With an `https` endpoint, `caFile` is
          required: `ec-launch` does not use the system's trusted roots.
        '';
      };

      ttl = mkOption {
        type = types.ints.positive;
        default = clusterTiming.ttl;
        description = ''
          The lease TTL in seconds (`--etcd-ttl`): how long a node that died
          or was cut off keeps its sources locked, so the longest a standby
          on another node waits. The launcher renews every ttl/3 and, when
          renewal fails for ttl - stopGrace - 1 s, stops the program
          (SIGTERM, SIGKILL after `stopGrace`) and exits 76, which systemd
          restarts. Must be more than 2 × (stopGrace + 1); an assertion
          names the minimum. Also sets the unit's `WatchdogSec=` to
          (ttl - stopGrace - 1) / 2 seconds (rounded down, at least 1) with
          `NotifyAccess=main`, with or without the unit's `watchdogSec`; below
          3 × (stopGrace + 1) that watchdog may kill a frozen launcher
          after its lease expired (warned about).
        '';
      };

      stopGrace = mkOption {
        type = types.ints.positive;
        default = clusterTiming.stopGrace;
        description = ''
          Seconds between SIGTERM and SIGKILL when the launcher stops the
          program because its lease is at risk (`--etcd-stop-grace`), and
          a helper still holding the program's lock after it exited; also
          the unit's `TimeoutAbortSec=`, so a watchdog abort is as quick,
          and, plus 1 s, its `TimeoutStopSec=` (in place of `stopTimeout`):
          when `ec-launch` itself is killed, systemd's kill of the cgroup
          must end every reader before another node may start. A unit's
          own `TimeoutStopSec` above that fails an assertion.
          `stopTimeout` must exceed it by more than 1 s.
        '';
      };

      caFile = mkOption {
        type = types.nullOr (unitPath true (types.pathWith { absolute = true; }));
        default = null;
        example = "/etc/every-channel/etcd-ca.pem";
        description = ''
          The CA that signed the etcd servers' certificates
          (`--etcd-ca`); required when an endpoint is `https`. Passed with
          `LoadCredential=etcd-ca:…`. Not a secret: a Nix path is copied to
          the store.
        '';
      };

      certFile = mkOption {
        type = types.nullOr (unitPath true (types.pathWith { absolute = true; }));
        default = null;
        example = "/etc/every-channel/etcd-client.pem";
        description = ''
          A client certificate for etcd's `--client-cert-auth`
          (`--etcd-cert`), with `keyFile`. Passed with
          `LoadCredential=etcd-cert:…`.
        '';
      };

      keyFile = mkOption {
        type = types.nullOr (
          unitPath true (
            types.pathWith {
              absolute = true;
              inStore = false;
            }
          )
        );
        default = null;
        example = "/run/keys/etcd-client-key.pem";
        description = ''
          The key of `certFile` (`--etcd-key`). A secret: give a string
          naming a file outside the Nix store (it may be root-only);
          systemd passes it with `LoadCredential=etcd-key:…`, so only
          `%d/etcd-key` is on the command line.
        '';
      };

      userFile = mkOption {
        type = types.nullOr (
          unitPath true (
            types.pathWith {
              absolute = true;
              inStore = false;
            }
          )
        );
        default = null;
        example = "/run/keys/etcd-user";
        description = ''
          A file holding `user:password` for etcd's authentication
          (`--etcd-user-file`). A secret: give a string naming a file
          outside the Nix store (it may be root-only); systemd passes it
          with `LoadCredential=etcd-user:…`, so only `%d/etcd-user` is on
          the command line. Over `http` endpoints the password crosses the
          network in clear text (warned about).
        '';
      };

      node = mkOption {
        type = types.str;
        default = config.networking.hostName;
        defaultText = lib.literalExpression "config.networking.hostName";
        example = "tuner-node-a";
        description = ''
          This node's name in the cluster (`--node`), shown by
          `ec-launch status --etcd` as the holder's node. Unique among the
          nodes; defaults to `networking.hostName`.
        '';
      };

      weight = mkOption {
        type = types.ints.between 1 1000;
        default = 1;
        example = 2;
        description = ''
          This node's capacity relative to the other nodes' (`--node-weight`):
          with placement `spread`, the sources its units wait for are shared
          out so that each node runs about `weight / (sum of the live nodes'
          weights)` of them (evolution/ECP-0140-balanced-placement.md).
        '';
      };

      placement = mkOption {
        type = types.enum [
          "spread"
          "first"
        ];
        default = "spread";
        description = ''
          How the nodes share the sources their units wait for
          (`onBusy = "wait"`): `spread` (by `weight`; a lost node's sources
          go to the least loaded survivors; nothing running is ever moved)
          or `first` (whichever node finds a source free takes it, the
          behaviour before placement existed). Units with `onBusy = "skip"`
          always take a free source at once.
        '';
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = units == [ ] || cfg.package != null;
          message = "services.every-channel.package is not set, but publishers or archive workers are defined: set it to the package that provides bin/ec-node.";
        }
        {
          assertion = units == [ ] || cfg.launcherPackage != null;
          message = "services.every-channel.launcherPackage is not set: import the module as this flake's nixosModules.default, which sets it, or set it to an ec-launch package.";
        }
        {
          # Every unit has PrivateTmp= (./unit-hardening.json): each would
          # see a /tmp or /var/tmp of its own, lock in a directory no other
          # unit sees, and two of them could read one source.
          assertion = !(lib.any (tmp: cfg.sourceLockDir == tmp || lib.hasPrefix "${tmp}/" cfg.sourceLockDir) [
            "/tmp"
            "/var/tmp"
          ]);
          message = "services.every-channel.sourceLockDir: ${cfg.sourceLockDir} is under /tmp or /var/tmp, which every unit sees privately (PrivateTmp=true): each unit would lock in a directory of its own and two units could read one source; use a directory under /run, such as the default /run/every-channel/source-locks.";
        }
      ]
      ++ lib.concatMap (unit: (unitChecks unit).assertions) units
      ++ deviceAssertions
      ++ clusterAssertions;
      warnings =
        lib.concatMap (unit: (unitChecks unit).warnings) units
        ++ deviceWarnings
        ++ clusterWarnings
        ++ map (
          name:
          "services.every-channel.extraUnits: `${name}` is not defined in systemd.services by any other module, so the kill policy would create a unit with nothing to run; check the spelling (a unit that only comes from a package in systemd.packages is fine)."
        ) (lib.filter (name: !(lib.elem name servicesDefinedElsewhere)) extraUnitNames);

      system.checks = lib.optional (cfg.checkSources && lockedUnits != [ ]) sourceCheck;

      # The launcher every busy journal line tells the operator to run.
      environment.systemPackages = lib.optional (
        cfg.installLauncher && cfg.launcherPackage != null
      ) cfg.launcherPackage;

      systemd.services = mkMerge [
        (lib.listToAttrs (map (unit: lib.nameValuePair unit.serviceName (mkUnit unit)) units))
        (lib.genAttrs extraUnitNames (_: {
          serviceConfig = killPolicy;
        }))
      ];

      # Not a RuntimeDirectory: systemd removes that when its one unit stops,
      # taking lock files other units still hold. Group-writable for the
      # service's group, never world-writable (ec-launch's trust rule,
      # ECP-0129). Setgid, so a lock file root creates during a manual run
      # belongs to the group and stays usable by the service user.
      systemd.tmpfiles.rules = [ "d ${pathWord cfg.sourceLockDir} 2775 root ${cfg.group} - -" ];
    }

    (mkIf (cfg.user == "every-channel") {
      users.users.every-channel = {
        isSystemUser = true;
        inherit (cfg) group;
        description = "every-channel publishers";
      };
    })
    (mkIf (cfg.group == "every-channel") {
      users.groups.every-channel = { };
    })
  ]);
}

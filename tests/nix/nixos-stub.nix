# A small stand-in for the NixOS options nixos/module.nix touches, so the
# module can be evaluated with nixpkgs.lib alone (no nixpkgs, which Nix 2.8
# cannot evaluate). It keeps NixOS's option names and, where the module's
# correctness depends on them, NixOS's merge rules:
#   - `serviceConfig` values merge like NixOS's unit options: definitions
#     that are lists concatenate, anything else must be equal, so two
#     contradicting definitions of KillMode are an evaluation error;
#   - overrides (mkDefault, mkForce) are resolved by the module system
#     before that merge, as in NixOS.
# Options the module does not touch are left out on purpose: setting one by
# mistake then fails here as it would not in a freeform stand-in.
{ lib, ... }:

let
  inherit (lib) mkOption types;

  unitSetting = lib.mkOptionType {
    name = "systemd setting (stand-in)";
    description = "systemd unit setting";
    merge =
      loc: defs:
      if lib.any (def: lib.isList def.value) defs then
        lib.concatMap (def: lib.toList def.value) defs
      else
        lib.mergeEqualOption loc defs;
  };

  unitList = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  service = {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = unitList;
      requiredBy = unitList;
      upheldBy = unitList;
      wants = unitList;
      requires = unitList;
      requisite = unitList;
      upholds = unitList;
      after = unitList;
      before = unitList;
      partOf = unitList;
      bindsTo = unitList;
      conflicts = unitList;
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitSetting;
        default = { };
      };
      unitConfig = mkOption {
        type = types.attrsOf unitSetting;
        default = { };
      };
    };
  };
in
{
  options = {
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule service);
      default = { };
    };

    # NixOS's `environment.systemPackages` and `system.checks` are lists of
    # packages; `types.package` accepts any derivation-shaped attribute set.
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };

    system.checks = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };

    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    users.users = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            isSystemUser = mkOption {
              type = types.bool;
              default = false;
            };
            group = mkOption {
              type = types.str;
              default = "";
            };
            description = mkOption {
              type = types.str;
              default = "";
            };
          };
        }
      );
      default = { };
    };

    users.groups = mkOption {
      type = types.attrsOf (
        types.submodule {
          options.gid = mkOption {
            type = types.nullOr types.int;
            default = null;
          };
        }
      );
      default = { };
    };

    assertions = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            assertion = mkOption { type = types.bool; };
            message = mkOption { type = types.str; };
          };
        }
      );
      default = [ ];
    };

    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    # NixOS's default; the cluster's `node` defaults to it.
    networking.hostName = mkOption {
      type = types.str;
      default = "nixos";
    };
  };
}

# docs/nixos-options.md, generated from the module's option declarations
# (their types, defaults, examples and descriptions) with nixpkgs.lib's
# `optionAttrSetToDocList`, so the reference cannot drift from the module.
#
#   EC_NIXPKGS_LIB=… EC_NIXOS_MODULES=… nix-instantiate --store dummy:// \
#     --eval --strict --json tests/nix/options-doc.nix
#
# prints the file as a JSON string; `cargo test --test nix` compares it with
# the committed copy and, with EC_BLESS=1, rewrites the copy.
let
  setup = import ./setup.nix;
  inherit (setup) lib;
  inherit (lib) concatMapStrings concatStringsSep filter;

  options = (setup.evalModule { }).options.services.every-channel;
  documented = filter (o: o.visible && !o.internal) (lib.optionAttrSetToDocList options);

  # A rendered default or example: literal Nix code, or Markdown.
  shown =
    value:
    if value._type or null == "literalMD" then
      " ${value.text}"
    else
      let
        text = value.text or (builtins.toJSON value);
      in
      if lib.hasInfix "\n" text then "\n\n```nix\n${text}\n```" else " `${text}`";

  entry =
    o:
    ''

      ## `${o.name}`

      ${if o.description == null then "(no description)" else lib.trim o.description}

      *Type:* ${o.type}
    ''
    + lib.optionalString (o ? default) "\n*Default:*${shown o.default}\n"
    + lib.optionalString (o ? example) "\n*Example:*${shown o.example}\n"
    + lib.optionalString o.readOnly "\n*Read-only.*\n";
in
''
  <!-- Generated from nixos/module.nix by tests/nix/options-doc.nix; do not edit.
       Regenerate: EC_BLESS=1 cargo test --locked --test nix the_generated_options_reference
       (with EC_NIXPKGS_LIB and EC_NIXOS_MODULES set, docs/testing.md). -->
  # NixOS options: `services.every-channel.*`

  Every option of the NixOS module (`nixos/module.nix`), generated from its
  declarations. How they fit together, with examples:
  [nixos-module.md](nixos-module.md) and, for `cluster.*`,
  [cluster.md](cluster.md#nixos-module).
''
+ concatMapStrings entry documented

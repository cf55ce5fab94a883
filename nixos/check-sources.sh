# Build-time check of services.every-channel: two enabled units that would
# lock one source with onBusy = "skip" are a configuration mistake (only the
# first to start runs; the other exits 75 at every boot), caught here before
# deploy. One that waits on another's source is a standby: a note only.
#
#   sh check-sources.sh EC_LAUNCH LOCK_DIR [OPTION ON_BUSY SOURCE LOCK_KEY]...
#
# One group of four arguments per enabled unit that takes a lock; SOURCE and
# LOCK_KEY are empty when unset. Keys come from the launcher itself
# (`ec-launch key --json`), so this check and `ec-launch run` cannot
# disagree; a LOCK_KEY is the key as given (ec-launch run --key trims it).
# The build sandbox has no devices and no network, so:
#   - a path source (/dev/…, file:…) cannot be resolved and is compared by
#     its path as written;
#   - a sourceFile unit (SOURCE empty) has no URL at build time and is not
#     compared unless it has a LOCK_KEY.
# Nothing here opens a device or a URL. A source is never printed (it may
# carry credentials); units are named by option path, sources by key.
#
# Prints notes and errors on stdout. Exit status: 0 no errors, 1 errors,
# 2 bad arguments. POSIX sh and sed only.

if [ "$#" -lt 2 ] || [ $((($# - 2) % 4)) -ne 0 ]; then
    echo "usage: check-sources.sh EC_LAUNCH LOCK_DIR [OPTION ON_BUSY SOURCE LOCK_KEY]..." >&2
    exit 2
fi
ec_launch=$1
lock_dir=$2
shift 2

errors=0
count=0

# The key inside `{"key":<JSON string>,"lock_file":<JSON string>}`, decoded.
# ec-launch keys hold no control characters, so the only escapes are \" and
# \\; each `\x` becomes `x`.
key_of_json() {
    json=${1#'{"key":"'}
    json=${json%'","lock_file":'*}
    printf '%s\n' "$json" | sed 's/\\\(.\)/\1/g'
}

# One report line. printf, not echo: some sh's echo expands backslash
# escapes, and keys and option paths may contain backslashes.
say() {
    printf '%s\n' "$*"
}

trim() {
    printf '%s\n' "$1" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'
}

while [ "$#" -gt 0 ]; do
    option=$1
    on_busy=$2
    source=$3
    lock_key=$4
    shift 4
    case $on_busy in
    skip | wait) ;;
    *)
        say "usage: $option: onBusy must be skip or wait, not '$on_busy'" >&2
        exit 2
        ;;
    esac
    how=key
    if [ -n "$lock_key" ]; then
        identity=$(trim "$lock_key")
    elif [ -z "$source" ]; then
        say "note: $option: sourceFile: the URL is read on the node, so its key cannot be derived at build time and it is not compared with the others; set lockKey to have it compared"
        continue
    else
        case $source in
        /* | file:*)
            # ec-launch key would resolve the path to its device node,
            # which the sandbox does not have.
            how=path
            identity=${source#file://}
            identity=${identity#file:}
            say "note: $option: a device source, compared by its path $identity: the build has no devices, so a /dev/v4l/by-id/… link and the /dev/videoN it names are not recognised as one source here"
            ;;
        *)
            if ! json=$("$ec_launch" key --json --lock-dir "$lock_dir" -- "$source" 2>&1); then
                say "error: $option.source: ec-launch cannot derive its key, and ec-launch run would refuse it too: ${json#error: }"
                errors=$((errors + 1))
                continue
            fi
            identity=$(key_of_json "$json")
            ;;
        esac
    fi
    count=$((count + 1))
    # Numbered variables: assigned through eval, but the values are never
    # part of the evaluated text.
    eval "option_$count=\$option on_busy_$count=\$on_busy identity_$count=\$identity how_$count=\$how grouped_$count="
done

i=1
while [ "$i" -le "$count" ]; do
    eval "grouped=\$grouped_$i identity=\$identity_$i how=\$how_$i"
    if [ -n "$grouped" ]; then
        i=$((i + 1))
        continue
    fi
    skipping=""
    skips=0
    waiting=""
    waits=0
    members=0
    j=$i
    while [ "$j" -le "$count" ]; do
        eval "other=\$identity_$j"
        if [ "$other" = "$identity" ]; then
            eval "grouped_$j=yes member=\$option_$j member_on_busy=\$on_busy_$j"
            members=$((members + 1))
            if [ "$member_on_busy" = skip ]; then
                skipping="${skipping:+$skipping and }$member"
                skips=$((skips + 1))
            else
                waiting="${waiting:+$waiting and }$member"
                waits=$((waits + 1))
            fi
        fi
        j=$((j + 1))
    done
    if [ "$skips" -ge 2 ]; then
        all=all
        [ "$skips" -eq 2 ] && all=both
        say "error: $skipping $all have onBusy = \"skip\" on one source ($how $identity): only the first to start would run, the others would exit 75 at every boot; give each its own source, or make all but one a standby with onBusy = \"wait\""
        errors=$((errors + 1))
    elif [ "$members" -ge 2 ]; then
        if [ -n "$skipping" ]; then
            standby="waits as a standby"
            [ "$waits" -gt 1 ] && standby="wait as standbys"
            say "note: one source ($how $identity): $skipping runs it, $waiting $standby"
        else
            say "note: one source ($how $identity): $waiting wait for it; the first to start runs it, the others are standbys"
        fi
    fi
    i=$((i + 1))
done

if [ "$errors" -gt 0 ]; then
    say "$errors error(s) in services.every-channel; fix them, or set services.every-channel.checkSources = false if this is deliberate"
    exit 1
fi
say "ok: $count locked unit(s) compared, no two on one source with onBusy = \"skip\""

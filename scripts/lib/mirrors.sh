# shellcheck shell=bash
# Where this machine fetches Debian packages and crates from, read from its own configuration
# (sourced by debian-guest.sh and fresh-check.sh, and by tests/setup_host.rs): the repository
# names no mirror or registry host of its own. Files are read whole by awk or bash, never piped
# into a reader that may stop early (see qemu-pin.sh).

# apt_mirror SUITE [ETC_APT]: the first URI apt fetches SUITE (`bookworm`, `bookworm-security`)
# from, in apt's order: ETC_APT/sources.list (one-line form), then ETC_APT/sources.list.d/*.list
# (one-line) and *.sources (deb822) by name. Only `deb` sources count (not `deb-src`), and not a
# deb822 stanza with `Enabled: no`; files of other names (`*.disabled`, `*.save`) apt ignores,
# and so does this. Prints the URI without its trailing slash, or nothing when no source has
# SUITE. ETC_APT defaults to /etc/apt.
apt_mirror() {
    local suite=$1 etc=${2:-/etc/apt} f files=()
    local LC_ALL=C # apt reads sources.list.d in byte order
    [ ! -f "$etc/sources.list" ] || files+=("$etc/sources.list")
    for f in "$etc"/sources.list.d/*; do
        case $f in *.list | *.sources) [ ! -f "$f" ] || files+=("$f") ;; esac
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v suite="$suite" '
        # has(LIST, WORD): whether WORD is one of the words of LIST (no leading blanks).
        function has(list, word,    n, i, w) {
            n = split(list, w, /[ \t]+/)
            for (i = 1; i <= n; i++) if (w[i] == word) return 1
            return 0
        }
        function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
        function found(uri) { sub(/\/+$/, "", uri); print uri; done = 1; exit }
        # The deb822 stanza read so far, judged at its end (a blank line, the end of its file).
        function stanza_end() {
            if (has(f["types"], "deb") && has(f["suites"], suite) && tolower(f["enabled"]) != "no") {
                split(f["uris"], u, /[ \t]+/)
                found(u[1])
            }
            delete f
            key = ""
        }
        FNR == 1 { if (deb822) stanza_end(); deb822 = (FILENAME ~ /\.sources$/) }
        deb822 && /^[ \t]*#/ { next }
        deb822 && /^[ \t]*$/ { stanza_end(); next }
        # A continuation line of a folded field.
        deb822 && /^[ \t]/ {
            if (key != "") f[key] = trim(f[key] " " $0)
            next
        }
        deb822 {
            colon = index($0, ":")
            if (colon == 0) next
            key = tolower(substr($0, 1, colon - 1))
            f[key] = trim(substr($0, colon + 1))
            next
        }
        # One-line form: deb [ options ] URI SUITE COMPONENT...
        {
            sub(/#.*/, "")
            if ($1 != "deb") next
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) found($i)
        }
        END { if (!done && deb822) stanza_end() }
    ' "${files[@]}"
}

# url_host_port URL: `HOST:PORT` of an http:// or https:// URL (the port from the URL, else 80
# or 443); fails for other schemes.
url_host_port() {
    local scheme=${1%%://*} rest=${1#*://} host
    [ "$scheme" != "$1" ] || return 1
    host=${rest%%/*}
    host=${host##*@}
    case $host in
    *:*) echo "$host" ;;
    *) case $scheme in http) echo "$host:80" ;; https) echo "$host:443" ;; *) return 1 ;; esac ;;
    esac
}

# cargo_registry_hosts [CARGO_HOME]: `HOST:PORT` of each crate registry cargo has used on this
# machine, one a line, each once: the index of each registry/index/HOST-HASH folder (HTTPS), and
# the download (`dl`) and API (`api`) URLs its config.json gives. Cargo's default registry is
# built into cargo, not written in any configuration: this is what cargo itself found there
# (behind source replacement or a proxying index, the hosts it really reaches). Prints nothing
# when cargo has fetched no crate yet. CARGO_HOME defaults to $CARGO_HOME, then ~/.cargo.
cargo_registry_hosts() {
    local home=${1:-${CARGO_HOME:-$HOME/.cargo}} d name cfg url hp
    local -A seen=()
    for d in "$home"/registry/index/*/; do
        [ -d "$d" ] || continue
        name=$(basename "$d")
        hp="${name%-*}:443"
        [ -n "${seen[$hp]:-}" ] || { seen[$hp]=1; echo "$hp"; }
        [ -f "$d/config.json" ] || continue
        cfg=$(cat "$d/config.json")
        # "dl": "URL" and "api": "URL", wherever they sit in the JSON.
        while [[ $cfg =~ \"(dl|api)\"[[:space:]]*:[[:space:]]*\"([^\"]*)\" ]]; do
            url=${BASH_REMATCH[2]}
            cfg=${cfg#*"${BASH_REMATCH[0]}"}
            hp=$(url_host_port "$url") || continue
            [ -n "${seen[$hp]:-}" ] || { seen[$hp]=1; echo "$hp"; }
        done
    done
}

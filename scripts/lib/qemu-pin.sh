# Which qemu-utils to ask apt for, decided from `apt-cache policy qemu-utils` (sourced by
# setup-host.sh and by tests/setup_host.rs).
#
# bookworm's qemu-system-x86 cannot be installed beside a newer qemu-utils from
# bookworm-backports ("qemu-utils : Breaks: qemu-system-common (< 1:8.0+dfsg-5~)"), and apt
# never downgrades by itself: when the installed qemu-utils is not a version that a bookworm
# source offers, ask for bookworm's newest version explicitly. The policy text is passed as an
# argument, never piped into a reader that may stop early (under pipefail a writer killed by
# SIGPIPE fails the whole pipeline).

# qemu_utils_request POLICY_TEXT: prints `qemu-utils` or `qemu-utils=VERSION`.
qemu_utils_request() {
    awk '
        $1 == "Installed:" { installed = $2 }
        # A version line: " *** VER PRIO" (the installed one) or "     VER PRIO".
        /^ (\*\*\*|   ) [^ ]+ -?[0-9]+$/ { ver = ($1 == "***") ? $2 : $1; next }
        # A source line under it: "        PRIO URL SUITE/COMPONENT ARCH Packages".
        ver != "" && / bookworm(-security|-updates)?\// {
            if (best == "") best = ver
            if (ver == installed) kept = 1
        }
        END {
            if (kept || best == "" || installed == best) print "qemu-utils"
            else print "qemu-utils=" best
        }
    ' <<<"$1"
}

#!/usr/bin/env bash
# Install virt-vmdkimport: the binary, its man pages and its bash, zsh and fish completions
# (generated from the command line into doc/; tests/doc.rs keeps them in step).
#
#   scripts/install.sh                  build (cargo build --release) and install under /usr/local
#   scripts/install.sh --prefix /usr    another prefix
#   scripts/install.sh --destdir DIR    stage under DIR (packaging, tests); also DESTDIR=DIR
#   scripts/install.sh --bin PATH       install this binary instead of building one
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr/local
destdir=${DESTDIR:-}
bin=
while [ $# -gt 0 ]; do
    case $1 in
    --prefix) prefix=$2; shift ;;
    --destdir) destdir=$2; shift ;;
    --bin) bin=$2; shift ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$bin" ]; then
    (cd "$here" && cargo build --release --locked --bin virt-vmdkimport) >&2
    bin=$here/target/release/virt-vmdkimport
fi
root=$destdir$prefix
install -D -m 755 "$bin" "$root/bin/virt-vmdkimport"
install -d "$root/share/man/man1"
install -m 644 "$here"/doc/*.1 "$root/share/man/man1/"
install -D -m 644 "$here/doc/completions/virt-vmdkimport.bash" "$root/share/bash-completion/completions/virt-vmdkimport"
install -D -m 644 "$here/doc/completions/_virt-vmdkimport" "$root/share/zsh/site-functions/_virt-vmdkimport"
install -D -m 644 "$here/doc/completions/virt-vmdkimport.fish" "$root/share/fish/vendor_completions.d/virt-vmdkimport.fish"
echo "installed virt-vmdkimport, its man pages and completions under $root"

#!/usr/bin/env bash
# The shape of the code, checked the same way by anyone (issue 19): functions longer than a
# limit, and import cycles between the crate's modules (between module files, and rolled up to
# the top-level modules). Nothing to install: bash and Python 3's standard library.
#
#   scripts/check-shape.sh               src/ of this repository; fails on either finding
#   scripts/check-shape.sh --report      print the same, exit 0
#   scripts/check-shape.sh --top 15      also list the 15 longest functions
#   scripts/check-shape.sh --limit 60    another limit (default 80 lines, from the `fn` line
#                                        to the closing brace, comments included)
#   scripts/check-shape.sh DIR           another source tree (tests/shape.rs runs it on
#                                        tests/fixtures/shape/src)
#
# How each is counted is in scripts/lib/shape.py's opening comment. Exit status: 1 when a
# function is over the limit or there is a cycle (0 with --report), 2 on a usage error.
set -euo pipefail
exec python3 "$(dirname "$0")/lib/shape.py" "$@"

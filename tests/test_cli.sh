#!/bin/sh
# The `ldmc` command line: usage and exit codes, `ldmc info`, and a quick `ldmc bench ops` run.
# Usage: tests/test_cli.sh path/to/ldmc
set -u
ldmc=${1:?usage: test_cli.sh path/to/ldmc}
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

expect_status() {  # expect_status STATUS command...
    want=$1; shift
    "$@" >/tmp/ldmc_cli_out.$$ 2>&1
    got=$?
    [ "$got" -eq "$want" ] || fail "'$*' exited $got, want $want: $(head -3 /tmp/ldmc_cli_out.$$)"
}

expect_status 2 "$ldmc"
grep -q "usage: ldmc" /tmp/ldmc_cli_out.$$ || fail "no usage without arguments"
expect_status 0 "$ldmc" --help
expect_status 2 "$ldmc" frobnicate
grep -q "unknown command 'frobnicate'" /tmp/ldmc_cli_out.$$ || fail "unknown command not named"

expect_status 0 "$ldmc" info
for field in "build:" "threads:" "OpenBLAS:" "libraries:" "libjpeg-turbo" "HDF5" "libyaml" "cJSON"; do
    grep -q "$field" /tmp/ldmc_cli_out.$$ || fail "ldmc info lacks '$field'"
done
LDMC_THREADS=1 "$ldmc" info | grep -q "threads:     1 " || fail "LDMC_THREADS=1 not honoured"
expect_status 2 "$ldmc" info unexpected-argument

expect_status 0 "$ldmc" bench ops --reps 1 --filter group_norm --json
lines=$(grep -c '"op": "group_norm".*"ms_forward_backward": [0-9.]*}' /tmp/ldmc_cli_out.$$)
[ "$lines" -eq 2 ] || fail "bench ops --json printed $lines group_norm lines, want 2"
expect_status 2 "$ldmc" bench ops --reps 0
expect_status 2 "$ldmc" bench nothing

rm -f /tmp/ldmc_cli_out.$$
if [ "$failures" -ne 0 ]; then
    echo "$failures CLI check(s) failed" >&2
    exit 1
fi
echo "all CLI checks passed"

#!/bin/sh
# Runs an asymcache-sim command line and checks its exit status and output.
# Usage: cli_expect.sh EXPECTED_STATUS EXPECTED_SUBSTRING BINARY [ARGS...]
expected_status="$1"; expected_text="$2"; shift 2
output=$("$@" 2>&1)
status=$?
printf '%s\n' "$output"
if [ "$status" -ne "$expected_status" ]; then
  echo "FAIL: exit status $status, expected $expected_status" >&2
  exit 1
fi
case "$output" in
  *"$expected_text"*) exit 0 ;;
  *) echo "FAIL: output lacks '$expected_text'" >&2; exit 1 ;;
esac

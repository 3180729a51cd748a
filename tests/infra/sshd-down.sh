#!/usr/bin/env bash
# Stops the sshd sshd-up.sh started.
infra=${FLOTILLA_TEST_INFRA:-/tmp/flotilla-test-infra}
pidfile=$infra/sshd/sshd.pid
[ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
rm -f "$pidfile"
exit 0

#!/usr/bin/env bash
# The test's sender for examples/worker.c (--sender command:...), as
# sender.py is for worker.py: a JSON line per message on stdin, a reply
# line each on stdout. It refuses a message whose title says "refuse" for
# good, fails one whose title says "flaky" at its first attempt (to be
# retried), and "sends" the others by appending them to $SENDER_OUT.
set -uo pipefail
while IFS= read -r line; do
	case $line in
	*'"title": "refuse '*) echo "dead Refused: device token unregistered" ;;
	*'"attempt": 1,'*'"title": "flaky '*) echo "retry Flaky: try again" ;;
	*)
		printf '%s\n' "$line" >>"$SENDER_OUT"
		echo ok
		;;
	esac
done

"""The test's sender: prints like the default one, refuses a message whose
title says "refuse" for good, and fails one whose title says "flaky" at its
first attempt (to be retried): the errors the worker reports with
persona_fail. test/worker/sender.sh is the same for examples/worker.c."""

import json


class Refused(Exception):
    retry = False


class Flaky(Exception):
    pass


def send(message):
    title = message["content"].get("title", "")
    if "refuse" in title:
        raise Refused("device token unregistered")
    if "flaky" in title and message["attempt"] == 1:
        raise Flaky("try again")
    print(json.dumps(message, default=str, sort_keys=True), flush=True)

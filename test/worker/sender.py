"""The test's sender: prints like the default one, and refuses a message
whose title says so (the error the worker reports with persona_fail)."""

import json


class Refused(Exception):
    retry = False


def send(message):
    if "refuse" in message["content"].get("title", ""):
        raise Refused("device token unregistered")
    print(json.dumps(message, default=str, sort_keys=True), flush=True)

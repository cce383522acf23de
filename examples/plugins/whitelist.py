#!/usr/bin/env python3
"""Whitelist write-policy plugin for nostr-relayd (and strfry).

Accepts events whose author (pubkey) is in WHITELIST below and rejects every
other one with "blocked: not on the whitelist". It speaks strfry's plugin
protocol, so the same file also works as a strfry writePolicy plugin.

Enable it in relay.toml (the path must name this file, executable):

    [plugin]
    command = "/path/to/examples/plugins/whitelist.py"

The relay restarts the plugin when this file changes, so an edited list takes
effect within a second or two. Save it in one step (write a copy, then rename
it over this file) so the relay never starts a half-written script.

The protocol: one JSON request per line on stdin,
  {"type": "new", "event": {...}, "receivedAt": <unix seconds>,
   "sourceType": "IP4" | "IP6" | "Import", "sourceInfo": "<address>"}
and one JSON answer per line on stdout,
  {"id": "<event id>", "action": "accept" | "reject" | "shadowReject",
   "msg": "<reason sent to the client on reject>"}.
Flush after every answer: the relay waits for it. Anything written to stderr
goes to the relay's log.
"""

import json
import sys

# Hex pubkeys allowed to publish: 64 lowercase hex characters each.
WHITELIST = {
    "003ba9b2c5bd8afeed41a4ce362a8b7fc3ab59c25b6a1359cae9093f296dac01",
}


def decide(event):
    if event.get("pubkey") in WHITELIST:
        return "accept", ""
    return "reject", "blocked: not on the whitelist"


def main():
    for line in sys.stdin:
        try:
            request = json.loads(line)
            event = request["event"]
            event_id = event["id"]
        except (ValueError, KeyError, TypeError):
            print(f"whitelist: ignoring a malformed request: {line[:200]!r}", file=sys.stderr)
            continue
        if request.get("type") != "new":
            # strfry's "lookback" messages expect no answer.
            continue
        action, msg = decide(event)
        print(json.dumps({"id": event_id, "action": action, "msg": msg}), flush=True)


if __name__ == "__main__":
    main()

"""Interoperability probe: the real third-party client `loxwebsocket` (PyPI) against the
loxone-exporter Miniserver simulator.

Usage: python loxwebsocket_probe.py http://127.0.0.1:PORT USER PASSWORD [MIN_EVENTS] [TIMEOUT_S]

It connects the way loxwebsocket always does (HTTP getPublicKey, WebSocket with the
`remotecontrol` subprotocol, RSA key exchange, every command AES-encrypted with `jdev/sys/enc`,
getkey2 + getjwt, enablebinstatusupdate), downloads the structure file through the library's
own encrypted command path, switches one Switch control through `jdev/sps/io`, collects value
events, and prints ONE line of JSON on stdout. Exit code 0 even on failure: the Rust test
asserts on the summary (errors are reported in it).
"""

import asyncio
import json
import logging
import sys
import time

from structure_walk import count_controls, find_switch


async def main():
    url, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
    min_events = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    timeout_s = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from loxwebsocket import LoxWs
    from loxwebsocket import __version__ as lw_version

    summary = {
        "library_version": lw_version,
        "login_ok": False,
        "token_acquired": False,
        "structure_controls": None,
        "structure_last_modified": None,
        "value_events": 0,
        "text_events": 0,
        "distinct_value_uuids": 0,
        "sample_uuids": [],
        "io_state_uuid": None,
        "io_value_seen": None,
        "io_answer_decoded": False,
        "errors": [],
    }
    values = {}
    texts = {}
    events = {"value": 0}

    async def on_message(data, message_type):
        if not isinstance(data, dict):
            return
        if message_type == 0:
            # loxwebsocket keys answers of unsolicited commands by the uuid it finds in the
            # DECRYPTED control (it assumes the cipher-form echo)
            state = summary.get("io_action")
            if state and state.encode() in data:
                summary["io_answer_decoded"] = True
        elif message_type == 2:
            for k, v in data.items():
                key = k.decode() if isinstance(k, bytes) else str(k)
                values[key] = v
                events["value"] += 1
        elif message_type == 3:
            for k, v in data.items():
                key = k.decode() if isinstance(k, bytes) else str(k)
                texts[key] = v

    lox = LoxWs()
    lox.add_message_callback(on_message, [0, 2, 3])
    try:
        await asyncio.wait_for(lox.connect(user, password, url), timeout=timeout_s)
        summary["login_ok"] = lox.state == "CONNECTED"
        summary["token_acquired"] = bool(lox._token.token)

        raw = await asyncio.wait_for(lox.send_command("data/LoxAPP3.json"), timeout=timeout_s)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        structure = json.loads(raw)
        summary["structure_controls"] = count_controls(structure.get("controls"))
        summary["structure_last_modified"] = structure.get("lastModified")

        switch = find_switch(structure.get("controls"))
        if switch:
            action, state = switch
            summary["io_state_uuid"] = state
            summary["io_action"] = action
            # wait until the initial table told us the current value, then flip it
            deadline = time.monotonic() + timeout_s
            while state not in values and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            target = 0.0 if values.get(state, 0.0) >= 0.5 else 1.0
            await lox.send_websocket_command(action, "on" if target == 1.0 else "off")
            while time.monotonic() < deadline:
                if values.get(state) == target:
                    summary["io_value_seen"] = target
                    break
                await asyncio.sleep(0.05)

        deadline = time.monotonic() + timeout_s
        while events["value"] < min_events and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    except Exception as e:  # reported, not raised: the Rust test asserts on the summary
        summary["errors"].append(f"{type(e).__name__}: {e}")
    finally:
        try:
            await lox.stop()
        except Exception as e:
            summary["errors"].append(f"stop: {e}")
        for t in list(lox.background_tasks):
            t.cancel()

    summary["value_events"] = events["value"]
    summary["text_events"] = len(texts)
    summary["distinct_value_uuids"] = len(values)
    summary["sample_uuids"] = sorted(values)[:2000]
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())

"""Interoperability probe: the real third-party client `pyloxone-api` (PyPI, JoDehli, the
"PYAPI" of the protocol doc) against the loxone-exporter Miniserver simulator.

Usage: python pyloxone_probe.py HOST:PORT USER PASSWORD [TIMEOUT_S] [tls]

With `tls` it speaks https and wss and checks the certificate and its host name with
Python's own TLS stack (the test points SSL_CERT_FILE at the simulator's certificate).

Two sessions, the way the library connects:
1. HTTP with Basic auth: `jdev/cfg/apiKey`, `data/LoxAPP3.json`, `jdev/sys/getPublicKey`;
   WebSocket: RSA key exchange (blob sent raw), encrypted getkey2 + getjwt (ciphers with
   PKCS#7 padding after a NUL, base64 `/` left unencoded), the token saved to a file,
   encrypted enablebinstatusupdate; then the initial tables, one Switch flipped through a
   plain `jdev/sps/io`, `checktoken` and a `keepalive`.
2. A new socket that logs in with the saved token (encrypted `getkey`, then `authwithtoken/`
   without the `jdev/sys/` prefix), then `refreshjwt`.

The library's own `start()` passes coroutines to `asyncio.wait`, which Python 3.11 refuses,
so the probe runs its message loop (`_async_process_message`) and its token calls directly.
It prints ONE line of JSON on stdout and exits 0 even on failure: the Rust test asserts on
the summary (errors are reported in it).
"""

import asyncio
import json
import logging
import os
import sys
import tempfile
import time

from structure_walk import count_controls, find_switch


class Listener:
    """Runs the library's message loop and sorts what its callback receives."""

    def __init__(self, api):
        self.api = api
        self.values = {}
        self.texts = {}
        self.value_events = 0
        self.last_message = time.monotonic()
        api.message_call_back = self.on_message
        self.task = None

    async def on_message(self, data):
        self.last_message = time.monotonic()
        for k, v in data.items():
            if isinstance(v, float):
                self.values[k] = v
                self.value_events += 1
            elif isinstance(v, str) and k != "keep_alive":
                self.texts[k] = v

    async def run(self):
        while True:
            await self.api._async_process_message()

    def start(self):
        self.task = asyncio.ensure_future(self.run())

    async def quiet(self, quiet_s, deadline):
        """Until the value and the text table are in and nothing arrived for quiet_s."""
        while time.monotonic() < deadline:
            tables_in = self.values and self.texts
            if tables_in and time.monotonic() - self.last_message > quiet_s:
                return True
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.05)
        return False

    async def stop(self):
        # cancelled while it waits for a header: the socket stays in step
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    user, password = sys.argv[2], sys.argv[3]
    timeout_s = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
    use_tls = len(sys.argv) > 5 and sys.argv[5] == "tls"

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from pyloxone_api import LoxAPI

    token_dir = tempfile.mkdtemp(prefix="pyloxone-probe-")
    summary = {
        "structure_controls": None,
        "structure_last_modified": None,
        "miniserver_version": None,
        "login_ok": False,
        "token_saved": False,
        "value_events": 0,
        "distinct_value_uuids": 0,
        "text_events": 0,
        "sample_uuids": [],
        "io_state_uuid": None,
        "io_value_seen": None,
        "checktoken_ok": False,
        "keepalive_header_type": None,
        "token_login_ok": False,
        "token_reused": False,
        "refreshed_valid_until": None,
        "errors": [],
    }

    def new_api():
        api = LoxAPI(host=host, port=int(port), user=user, password=password, use_tls=use_tls)
        api.config_dir = token_dir
        return api

    deadline = time.monotonic() + timeout_s
    first_token = []

    async def password_session(api):
        # session 1: password login
        await asyncio.wait_for(api.getJson(), timeout=timeout_s)
        summary["structure_controls"] = count_controls(api.json.get("controls"))
        summary["structure_last_modified"] = api.json.get("lastModified")
        summary["miniserver_version"] = api.version
        summary["login_ok"] = await asyncio.wait_for(api.async_init(), timeout=timeout_s)
        summary["token_saved"] = os.path.exists(os.path.join(token_dir, "lox_token.cfg"))
        first_token.append(api._token.token)

        listener = Listener(api)
        listener.start()
        await listener.quiet(0.5, deadline)
        switch = find_switch(api.json.get("controls"))
        if switch:
            action, state = switch
            summary["io_state_uuid"] = state
            target = 0.0 if listener.values.get(state, 0.0) >= 0.5 else 1.0
            await api.send_websocket_command(action, "on" if target == 1.0 else "off")
            while time.monotonic() < deadline:
                if listener.values.get(state) == target:
                    summary["io_value_seen"] = target
                    break
                await asyncio.sleep(0.05)
            await listener.quiet(0.3, deadline)
        await listener.stop()
        summary["value_events"] = listener.value_events
        summary["distinct_value_uuids"] = len(listener.values)
        summary["text_events"] = len(listener.texts)
        summary["sample_uuids"] = sorted(listener.values)[:2000]

        # raises unless the answer is 200 (477 would make it refresh)
        await asyncio.wait_for(api._check_token_still_valid(), timeout=timeout_s)
        summary["checktoken_ok"] = True
        await api._ws.send("keepalive")
        header = await asyncio.wait_for(api._ws.recv(), timeout=timeout_s)
        if isinstance(header, bytes) and len(header) == 8:
            summary["keepalive_header_type"] = header[1]

    async def token_session(api):
        # session 2: the saved token
        await asyncio.wait_for(api.getJson(), timeout=timeout_s)
        summary["token_login_ok"] = await asyncio.wait_for(api.async_init(), timeout=timeout_s)
        # the saved token, not a new one from a password login
        summary["token_reused"] = first_token == [api._token.token] and bool(first_token[0])
        listener = Listener(api)
        listener.start()
        await listener.quiet(0.5, deadline)
        await listener.stop()
        api._token.valid_until = 0
        await asyncio.wait_for(api._refresh(), timeout=timeout_s)
        summary["refreshed_valid_until"] = api._token.valid_until

    async def run_session(name, session):
        """Runs session on a new client: what fails is reported, and the socket closed."""
        api = new_api()
        try:
            await session(api)
        except Exception as e:  # reported, not raised: the Rust test asserts on the summary
            summary["errors"].append(f"{name}: {type(e).__name__}: {e}")
        finally:
            try:
                await api.stop()
            except Exception as e:
                summary["errors"].append(f"{name} stop: {type(e).__name__}: {e}")

    await run_session("session 1", password_session)
    await run_session("session 2", token_session)

    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())

"""The KVS signaling WebSocket protocol, as the benchmark peers speak it to the local service.

Client frames: {"action", "recipientClientId", "messagePayload", "correlationId"}, the payload
base64 of JSON. Service frames: {"senderClientId", "messageType", "messagePayload"}. Viewers
join with ?X-Amz-ChannelARN=…&X-Amz-ClientId=…, the master without a client id.
"""

import asyncio
import base64
import json
import sys
import time
import urllib.parse

import websockets


def url(signaling: str, arn: str, client_id: str | None = None) -> str:
    q = {"X-Amz-ChannelARN": arn}
    if client_id:
        q["X-Amz-ClientId"] = client_id
    return signaling + ("&" if "?" in signaling else "?") + urllib.parse.urlencode(q)


def frame(action: str, payload: dict, recipient: str | None = None) -> str:
    msg = {
        "action": action,
        "messagePayload": base64.b64encode(json.dumps(payload).encode()).decode(),
        "correlationId": f"{action}-{time.monotonic_ns()}",
    }
    if recipient:
        msg["recipientClientId"] = recipient
    return json.dumps(msg)


def parse(raw: str):
    """(messageType, senderClientId, payload dict) or None for frames without a payload."""
    try:
        msg = json.loads(raw)
    except ValueError:
        return None
    body = msg.get("messagePayload")
    if not body:
        return None
    try:
        payload = json.loads(base64.b64decode(body))
    except ValueError:
        return None
    return msg.get("messageType"), msg.get("senderClientId"), payload


async def connect(signaling: str, arn: str, client_id: str | None = None):
    return await websockets.connect(url(signaling, arn, client_id), max_size=None, ping_interval=None)


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def args(argv: list[str]) -> dict:
    out = {}
    for i in range(0, len(argv) - 1, 2):
        out[argv[i].lstrip("-").replace("-", "_")] = argv[i + 1]
    return out


async def messages_until_stdin_closes(ws):
    """Yield (messageType, senderClientId, payload) from the service until stdin closes (the
    benchmark's way of stopping a peer) or the connection ends."""
    loop = asyncio.get_running_loop()
    stop = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.read))
    while not stop.done():
        recv = asyncio.ensure_future(ws.recv())
        done, _ = await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
        if recv not in done:
            recv.cancel()
            return
        m = parse(recv.result())
        if m:
            yield m

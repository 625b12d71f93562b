"""Benchmark peer: aiortc (PyPI), talking the KVS signaling protocol to the local service.

  python aiortc_peer.py sender --signaling ws://… --arn ARN
      the channel's master: answers every viewer's offer with a live 640x480 30 fps H.264
      picture (aiortc's libx264 encoder via PyAV); prints {"type":"ready"} once connected and
      runs until stdin closes.
  python aiortc_peer.py dc --signaling ws://… --arn ARN --bytes B --message-size S --window W
                        --pings P --runs N
      a viewer of our device: data-channel echo, prints {"type":"dc","throughput_mbps","rtt_ms"}
      per run, then {"type":"done"}.
"""

import asyncio
import fractions
import os
import sys
import time

import numpy
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack
from aiortc.sdp import candidate_from_sdp
from av import VideoFrame

import kvs_ws

WIDTH, HEIGHT, FPS = 640, 480, 30


class MovingPattern(VideoStreamTrack):
    """Scrolling bars with a noisy corner, like our test pattern, at 30 fps."""

    def __init__(self):
        super().__init__()
        self.index = 0
        self.bars = numpy.repeat(numpy.linspace(16, 235, 8, dtype=numpy.uint8), WIDTH // 8)
        self.start = None

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.index / FPS
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        y = numpy.empty((HEIGHT, WIDTH), dtype=numpy.uint8)
        y[:] = numpy.roll(self.bars, -4 * self.index)
        y[-60:, -80:] = numpy.random.randint(16, 235, (60, 80), dtype=numpy.uint8)
        uv = numpy.full((HEIGHT // 2, WIDTH), 128, dtype=numpy.uint8)
        frame = VideoFrame.from_ndarray(numpy.vstack([y, uv]), format="yuv420p")
        frame.pts = self.index * (90000 // FPS)
        frame.time_base = fractions.Fraction(1, 90000)
        self.index += 1
        return frame


def h264_only(transceiver):
    caps = RTCRtpSender.getCapabilities("video").codecs
    h264 = [c for c in caps if c.mimeType.lower() == "video/h264"]
    transceiver.setCodecPreferences(h264)


async def add_candidate(pc, payload):
    c = payload.get("candidate") or ""
    if not c:
        return
    cand = candidate_from_sdp(c.split(":", 1)[1] if c.startswith("candidate:") else c)
    cand.sdpMid = payload.get("sdpMid")
    cand.sdpMLineIndex = payload.get("sdpMLineIndex")
    try:
        await pc.addIceCandidate(cand)
    except Exception:  # a candidate for a section we rejected
        pass


async def sender(a):
    ws = await kvs_ws.connect(a["signaling"], a["arn"])
    peers = {}
    kvs_ws.emit({"type": "ready"})

    async def answer(viewer, sdp):
        old = peers.pop(viewer, None)
        if old:
            await old.close()
        pc = RTCPeerConnection()
        peers[viewer] = pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        track = MovingPattern()
        for t in pc.getTransceivers():
            if t.kind == "video":
                h264_only(t)
                t.direction = "sendonly"
                t.sender.replaceTrack(track)
        await pc.setLocalDescription(await pc.createAnswer())
        await ws.send(kvs_ws.frame("SDP_ANSWER", {"type": "answer", "sdp": pc.localDescription.sdp}, viewer))

    try:
        async for kind, viewer, payload in kvs_ws.messages_until_stdin_closes(ws):
            if kind == "SDP_OFFER":
                asyncio.ensure_future(answer(viewer, payload["sdp"]))
            elif kind == "ICE_CANDIDATE" and viewer in peers:
                await add_candidate(peers[viewer], payload)
    finally:
        for pc in peers.values():
            await pc.close()
        await ws.close()


async def dc_run(a, run):
    client_id = f"aiortc-dc-{run}-{os.getpid()}"
    ws = await kvs_ws.connect(a["signaling"], a["arn"], client_id)
    pc = RTCPeerConnection()
    channel = pc.createDataChannel("kvsDataChannel")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    inbox: asyncio.Queue = asyncio.Queue()
    channel.on("message", inbox.put_nowait)
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send(kvs_ws.frame("SDP_OFFER", {"type": "offer", "sdp": pc.localDescription.sdp}))

    async def signaling():
        async for raw in ws:
            m = kvs_ws.parse(raw)
            if not m:
                continue
            kind, _, payload = m
            if kind == "SDP_ANSWER" and payload.get("sdp"):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=payload["sdp"], type="answer"))
            elif kind == "ICE_CANDIDATE":
                await add_candidate(pc, payload)

    sig = asyncio.ensure_future(signaling())
    await asyncio.wait_for(opened.wait(), 20)
    pings = int(a.get("pings", 100))
    rtts = []
    for i in range(pings):
        ping = f"ping {i:08d}"
        start = time.perf_counter()
        channel.send(ping)
        while True:
            msg = await asyncio.wait_for(inbox.get(), 20)
            if msg == ping:
                break
        rtts.append((time.perf_counter() - start) * 1000)
    total, size, window = int(a["bytes"]), int(a["message_size"]), int(a["window"])
    payload = b"\x5a" * size
    sent = echoed = 0
    start = time.perf_counter()
    while echoed < total:
        while sent < total and sent - echoed + size <= window:
            channel.send(payload)
            sent += size
        msg = await asyncio.wait_for(inbox.get(), 60)
        if isinstance(msg, bytes):
            echoed += len(msg)
    secs = time.perf_counter() - start
    rtts.sort()
    kvs_ws.emit({"type": "dc", "run": run, "throughput_mbps": echoed * 8 / secs / 1e6, "rtt_ms": rtts[len(rtts) // 2]})
    sig.cancel()
    await pc.close()
    await ws.close()


async def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("sender", "dc"):
        raise SystemExit("usage: aiortc_peer.py sender|dc --signaling URL --arn ARN …")
    a = kvs_ws.args(sys.argv[2:])
    if sys.argv[1] == "sender":
        await sender(a)
        return
    for run in range(int(a.get("runs", 1))):
        try:
            await dc_run(a, run)
        except Exception as e:  # report and go on with the next run
            print(f"run {run}: {e!r}", file=sys.stderr)
    kvs_ws.emit({"type": "done"})


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:
        kvs_ws.emit({"type": "error", "message": repr(e)})
        sys.exit(1)

"""Benchmark peer: a GStreamer webrtcbin sender (Debian's GStreamer 1.22) as a channel's master
on the local signaling service, answering every viewer's offer with a live 640x480 30 fps
H.264 picture (videotestsrc → x264enc, constrained baseline, packetization-mode 1).

  python gst_sender.py --signaling ws://… --arn ARN

Prints {"type":"ready"} once connected; runs until stdin closes.
"""

import asyncio
import re
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

import kvs_ws  # noqa: E402

PIPELINE = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=480,framerate=30/1 "
    "! videoconvert ! queue max-size-buffers=1 leaky=downstream "
    "! x264enc tune=zerolatency speed-preset=ultrafast bitrate=1000 key-int-max=30 "
    "! video/x-h264,profile=constrained-baseline "
    "! rtph264pay config-interval=-1 aggregate-mode=zero-latency "
    "! application/x-rtp,media=video,encoding-name=H264,payload={pt},clock-rate=90000 "
    "! webrtcbin name=webrtc bundle-policy=max-bundle latency=0"
)


def h264_payload_type(sdp: str) -> int:
    """The offer's H.264 payload type with packetization-mode=1 (constrained baseline first)."""
    pts = []
    for m in re.finditer(r"a=rtpmap:(\d+) H264/90000", sdp):
        pt = m.group(1)
        fmtp = re.search(rf"a=fmtp:{pt} ([^\r\n]*)", sdp)
        params = fmtp.group(1) if fmtp else ""
        if "packetization-mode=1" in params:
            pts.append((0 if "42e01f" in params else 1, int(pt)))
    if not pts:
        raise ValueError("the offer has no H.264 with packetization-mode=1")
    return sorted(pts)[0][1]


class Session:
    def __init__(self, viewer, offer_sdp, send):
        self.viewer = viewer
        self.send = send
        self.pipe = Gst.parse_launch(PIPELINE.format(pt=h264_payload_type(offer_sdp)))
        self.webrtc = self.pipe.get_by_name("webrtc")
        # libnice leaves loopback out of its host candidates; the benchmark runs on loopback
        # only, so give it 127.0.0.1 as its one local address.
        loopback = Nice.Address.new()
        loopback.set_from_string("127.0.0.1")
        # (Both objects are kept: PyGObject drops a reference it never took when its wrapper
        # of the ICE object goes away, which would leave webrtcbin without one.)
        self.ice = self.webrtc.get_property("ice-agent")
        self.nice = self.ice.get_property("agent")
        self.nice.add_local_address(loopback)
        self.webrtc.connect("on-ice-candidate", self.on_candidate)
        self.pipe.set_state(Gst.State.PLAYING)
        _, msg = GstSdp.SDPMessage.new_from_text(offer_sdp)
        offer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, msg)
        self.webrtc.emit(
            "set-remote-description", offer, Gst.Promise.new_with_change_func(self.on_remote_set, None)
        )

    def on_remote_set(self, promise, _):
        promise.wait()
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            print(f"set-remote-description: {reply.get_value('error')}", file=sys.stderr)
        self.webrtc.emit("create-answer", None, Gst.Promise.new_with_change_func(self.on_answer, None))

    def on_answer(self, promise, _):
        promise.wait()
        reply = promise.get_reply()
        answer = reply.get_value("answer") if reply is not None and reply.has_field("answer") else None
        if answer is None:
            error = reply.get_value("error") if reply is not None and reply.has_field("error") else "no answer"
            print(f"create-answer for {self.viewer} failed: {error}", file=sys.stderr)
            return
        self.webrtc.emit("set-local-description", answer, Gst.Promise.new())
        if "KVS_BENCH_DEBUG" in __import__("os").environ:
            print(answer.sdp.as_text(), file=sys.stderr)
        self.send(kvs_ws.frame("SDP_ANSWER", {"type": "answer", "sdp": answer.sdp.as_text()}, self.viewer))

    def on_candidate(self, _, mline, candidate):
        self.send(kvs_ws.frame("ICE_CANDIDATE", {"candidate": candidate, "sdpMLineIndex": mline}, self.viewer))

    def add_candidate(self, payload):
        c = payload.get("candidate")
        if c:
            self.webrtc.emit("add-ice-candidate", int(payload.get("sdpMLineIndex") or 0), c)

    def close(self):
        self.pipe.set_state(Gst.State.NULL)


async def main():
    a = kvs_ws.args(sys.argv[1:])
    Gst.init(None)
    missing = [e for e in ("webrtcbin", "x264enc", "rtph264pay", "videotestsrc", "nicesrc") if not Gst.ElementFactory.find(e)]
    if missing:
        raise RuntimeError(f"GStreamer elements missing: {missing}")
    glib_loop = GLib.MainLoop()
    threading.Thread(target=glib_loop.run, daemon=True).start()
    ws = await kvs_ws.connect(a["signaling"], a["arn"])
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue = asyncio.Queue()

    def send(text):  # called from GStreamer's threads
        loop.call_soon_threadsafe(outbox.put_nowait, text)

    async def writer():
        while True:
            await ws.send(await outbox.get())

    sessions = {}
    asyncio.ensure_future(writer())
    kvs_ws.emit({"type": "ready"})
    stop = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.read))
    try:
        while True:
            recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                break
            m = kvs_ws.parse(recv.result())
            if not m:
                continue
            kind, viewer, payload = m
            if kind == "SDP_OFFER":
                old = sessions.pop(viewer, None)
                if old:
                    old.close()
                try:
                    sessions[viewer] = Session(viewer, payload["sdp"], send)
                except ValueError as e:
                    print(f"offer from {viewer}: {e}", file=sys.stderr)
            elif kind == "ICE_CANDIDATE" and viewer in sessions:
                sessions[viewer].add_candidate(payload)
    finally:
        for s in sessions.values():
            s.close()
        glib_loop.quit()
        await ws.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:
        kvs_ws.emit({"type": "error", "message": repr(e)})
        sys.exit(1)

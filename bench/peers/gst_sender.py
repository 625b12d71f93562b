"""Benchmark peer: a GStreamer webrtcbin sender (Debian's GStreamer 1.22) as a channel's master
on the local signaling service, answering every viewer's offer with a live 640x480 30 fps
H.264 picture (videotestsrc → x264enc, constrained baseline, packetization-mode 1).

  python gst_sender.py --signaling ws://… --arn ARN

Prints {"type":"ready"} once connected; runs until stdin closes.

Two things GStreamer 1.22 does by default that keep viewers from decoding, and what we do:

- SSRC: webrtcbin writes `a=ssrc` into the answer only if it already knows the stream's SSRC,
  i.e. if the payloader's caps have reached webrtcbin when `create-answer` runs. That is a race
  with the per-viewer pipeline starting up (the first session of a process usually wins it
  because loading plugins is slow; later ones lose it). Without `a=ssrc`, and with no MID header
  extension, Chromium and str0m cannot tell which m-line the packets belong to and drop them
  (Chromium shows bytes arriving but no inbound-rtp stream). We choose the SSRC ourselves and
  put it in the caps in front of webrtcbin, so the answer always carries it.
- DTLS certificate: GStreamer's generated certificate is RSA 2048; str0m's DTLS stack (dimpl)
  speaks ECDSA only, so the handshake fails and the Rust viewer closes right after ICE. We give
  every DTLS transport an ECDSA P-256 certificate, as browsers, aiortc and our device use, and
  put its true fingerprint in the answer (webrtcbin's own is wrong for such a certificate, see
  DtlsIdentity).
"""

import asyncio
import datetime
import os
import random
import re
import sys
import threading

from cryptography import x509  # installed with aiortc (requirements.txt)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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
    "! rtph264pay config-interval=-1 aggregate-mode=zero-latency ssrc={ssrc} "
    "! application/x-rtp,media=video,encoding-name=H264,payload={pt},clock-rate=90000,ssrc=(uint){ssrc} "
    "! webrtcbin name=webrtc bundle-policy=max-bundle latency=0"
)


class DtlsIdentity:
    """A self-signed ECDSA P-256 certificate for webrtcbin's DTLS, made once per process.

    `pem` is certificate + private key, the form GStreamer's DTLS elements take. `fingerprint`
    is the SHA-256 of the certificate alone: webrtcbin 1.22 computes its `a=fingerprint` over
    every base64 line of that PEM, private key included, so its own value is wrong for a PEM
    that holds a key, and the answer needs this one instead.
    """

    def __init__(self):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvs-bench-gstreamer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        self.pem = (
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        ).decode()
        self.fingerprint = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))

    def fix_answer(self, sdp: str) -> str:
        """The answer with webrtcbin's fingerprint lines replaced by the certificate's own."""
        return re.sub(r"a=fingerprint:[^\r\n]*", f"a=fingerprint:sha-256 {self.fingerprint}", sdp)


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
    def __init__(self, viewer, offer_sdp, send, identity):
        self.viewer = viewer
        self.send = send
        self.identity = identity
        # Our own SSRC, in the caps webrtcbin sees before any buffer flows (see the module doc).
        ssrc = random.randint(1, 0xFFFFFFFF)
        self.pipe = Gst.parse_launch(PIPELINE.format(pt=h264_payload_type(offer_sdp), ssrc=ssrc))
        self.webrtc = self.pipe.get_by_name("webrtc")
        # webrtcbin makes its DTLS elements while applying the offer and starts them right after
        # adding them to itself; the certificate must be in place before they start (the
        # encoder side picks up the decoder side's DTLS connection when it goes to READY).
        self.webrtc.connect("deep-element-added", self.on_element_added)
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

    def on_element_added(self, _bin, _sub_bin, element):
        factory = element.get_factory()
        if factory is not None and factory.get_name() == "dtlssrtpdec":
            element.set_property("pem", self.identity.pem)

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
        sdp = self.identity.fix_answer(answer.sdp.as_text())
        if "KVS_BENCH_DEBUG" in os.environ:
            print(sdp, file=sys.stderr)
        self.send(kvs_ws.frame("SDP_ANSWER", {"type": "answer", "sdp": sdp}, self.viewer))

    def on_candidate(self, _, mline, candidate):
        self.send(kvs_ws.frame("ICE_CANDIDATE", {"candidate": candidate, "sdpMLineIndex": mline}, self.viewer))

    def add_candidate(self, payload):
        c = payload.get("candidate")
        if c:
            self.webrtc.emit("add-ice-candidate", int(payload.get("sdpMLineIndex") or 0), c)

    def close(self):
        self.pipe.set_state(Gst.State.NULL)


def warm_up():
    """Pay GStreamer's one-time start-up costs before announcing ready, as our device does.

    Every DTLS decoder element takes GStreamer's process-wide generated certificate when it is
    made (before we hand it ours), and the first one generates it: an RSA 2048 key, ~130 ms.
    Building the pipeline once also loads its plugins. Without this the first viewer of the
    process waits for both.
    """
    Gst.ElementFactory.make("dtlssrtpdec", None)
    Gst.parse_launch(PIPELINE.format(pt=96, ssrc=1)).set_state(Gst.State.NULL)


async def main():
    a = kvs_ws.args(sys.argv[1:])
    Gst.init(None)
    missing = [e for e in ("webrtcbin", "x264enc", "rtph264pay", "videotestsrc", "nicesrc") if not Gst.ElementFactory.find(e)]
    if missing:
        raise RuntimeError(f"GStreamer elements missing: {missing}")
    identity = DtlsIdentity()
    warm_up()
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
    try:
        async for kind, viewer, payload in kvs_ws.messages_until_stdin_closes(ws):
            if kind == "SDP_OFFER":
                old = sessions.pop(viewer, None)
                if old:
                    old.close()
                try:
                    sessions[viewer] = Session(viewer, payload["sdp"], send, identity)
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

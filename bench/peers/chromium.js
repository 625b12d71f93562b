#!/usr/bin/env node
// Benchmark peer: headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) as a
// KVS viewer of a channel on the local signaling service.
//
//   node chromium.js ttff --signaling ws://… --arn ARN --runs N [--label L]
//       per run: a fresh RTCPeerConnection offers recvonly video + audio and a data channel;
//       prints {"type":"ttff","decoded_ms","presented_ms","connected_ms"} measured from the
//       moment the offer went out on the WebSocket.
//   node chromium.js dc --signaling ws://… --arn ARN --bytes B --message-size S --window W
//                      --pings P --runs N
//       data-channel echo against the device: prints {"type":"dc","throughput_mbps","rtt_ms"}.
// Ends with {"type":"done"}. Errors: {"type":"error","message"} and exit status 1.
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
  '--allow-loopback-in-peer-connection',
  // Chromium's Local Network Access checks refuse a WebSocket to 127.0.0.1 from a page that
  // was not itself served from a local address (our page is synthesised by playwright).
  '--disable-features=LocalNetworkAccessChecks',
];

function parseArgs(argv) {
  const out = { mode: argv[0] };
  for (let i = 1; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  return out;
}

const emit = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

// Runs inside the page: join the channel as a viewer, the KVS WebSocket protocol
// (JSON frames, base64 JSON payloads, X-Amz-ChannelARN / X-Amz-ClientId in the query).
async function pageJoin(cfg) {
  const t = () => performance.now();
  const url = `${cfg.signaling}?X-Amz-ChannelARN=${encodeURIComponent(cfg.arn)}&X-Amz-ClientId=${cfg.clientId}`;
  const ws = new WebSocket(url);
  await new Promise((res, rej) => {
    ws.onopen = res;
    ws.onerror = () => rej(new Error('signaling WebSocket failed'));
  });
  const pc = new RTCPeerConnection({ iceServers: [] });
  const send = (action, payload) =>
    ws.send(JSON.stringify({ action, messagePayload: btoa(JSON.stringify(payload)), correlationId: `${cfg.clientId}-${Date.now()}` }));
  let offerSent = null;
  const early = [];
  pc.onicecandidate = (e) => {
    if (!e.candidate) return;
    const c = { candidate: e.candidate.candidate, sdpMid: e.candidate.sdpMid, sdpMLineIndex: e.candidate.sdpMLineIndex };
    if (offerSent === null) early.push(c);
    else send('ICE_CANDIDATE', c);
  };
  ws.onmessage = async (m) => {
    let msg;
    try {
      msg = JSON.parse(m.data);
    } catch (_) {
      return;
    }
    if (!msg.messagePayload) return;
    const payload = JSON.parse(atob(msg.messagePayload));
    if (msg.messageType === 'SDP_ANSWER' && payload.sdp) {
      await pc.setRemoteDescription({ type: 'answer', sdp: payload.sdp });
    } else if (msg.messageType === 'ICE_CANDIDATE' && payload.candidate) {
      await pc.addIceCandidate(payload).catch(() => {});
    }
  };
  return { ws, pc, t, send, early, setSent: (v) => (offerSent = v) };
}

async function pageTtff(cfg) {
  const j = await pageJoin(cfg);
  const { pc, t } = j;
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.createDataChannel('kvsDataChannel');
  const video = document.createElement('video');
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  document.body.appendChild(video);
  const result = { connected_ms: null, decoded_ms: null, presented_ms: null };
  let t0 = 0;
  pc.ontrack = (e) => {
    if (e.track.kind !== 'video') return;
    video.srcObject = new MediaStream([e.track]);
    video.play().catch(() => {});
    video.requestVideoFrameCallback((now) => {
      result.presented_ms = now - t0;
    });
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === 'connected' && result.connected_ms === null) result.connected_ms = t() - t0;
  };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  j.send('SDP_OFFER', { type: 'offer', sdp: pc.localDescription.sdp });
  t0 = t();
  j.setSent(t0);
  for (const c of j.early) j.send('ICE_CANDIDATE', c);
  // Poll getStats for the first decoded frame.
  const deadline = t0 + 20000;
  while (result.decoded_ms === null && t() < deadline) {
    const report = await pc.getStats();
    const now = t();
    report.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video' && (r.framesDecoded || 0) > 0 && result.decoded_ms === null) {
        result.decoded_ms = now - t0;
      }
    });
    if (result.decoded_ms === null) await new Promise((r) => setTimeout(r, 2));
  }
  // The presentation callback may come a little after the decode.
  const until = t() + 2000;
  while (result.presented_ms === null && t() < until) await new Promise((r) => setTimeout(r, 5));
  pc.close();
  j.ws.close();
  video.remove();
  if (result.decoded_ms === null) throw new Error(`no decoded frame within 20 s (connection ${pc.connectionState})`);
  return result;
}

async function pageDc(cfg) {
  const j = await pageJoin(cfg);
  const { pc, t } = j;
  const dc = pc.createDataChannel('kvsDataChannel');
  dc.binaryType = 'arraybuffer';
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  j.send('SDP_OFFER', { type: 'offer', sdp: pc.localDescription.sdp });
  j.setSent(t());
  for (const c of j.early) j.send('ICE_CANDIDATE', c);
  await new Promise((res, rej) => {
    dc.onopen = res;
    setTimeout(() => rej(new Error('data channel did not open in 20 s')), 20000);
  });
  let onMessage = () => {};
  dc.onmessage = (e) => onMessage(e.data);
  const rtts = [];
  for (let i = 0; i < cfg.pings; i++) {
    const ping = `ping ${String(i).padStart(8, '0')}`;
    const start = t();
    await new Promise((res) => {
      onMessage = (d) => {
        if (d === ping) res();
      };
      dc.send(ping);
    });
    rtts.push(t() - start);
  }
  const payload = new Uint8Array(cfg.messageSize).fill(0x5a);
  let sent = 0;
  let echoed = 0;
  const start = t();
  await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`echo stalled at ${echoed} of ${cfg.bytes} bytes`)), 300000);
    const pump = () => {
      while (sent < cfg.bytes && sent - echoed + cfg.messageSize <= cfg.window && dc.bufferedAmount < cfg.window) {
        dc.send(payload);
        sent += cfg.messageSize;
      }
    };
    onMessage = (d) => {
      if (typeof d === 'string') return;
      echoed += d.byteLength;
      if (echoed >= cfg.bytes) {
        clearTimeout(timer);
        res();
      } else pump();
    };
    dc.bufferedAmountLowThreshold = cfg.window / 2;
    dc.onbufferedamountlow = pump;
    pump();
  });
  const secs = (t() - start) / 1000;
  pc.close();
  j.ws.close();
  rtts.sort((a, b) => a - b);
  return { throughput_mbps: (echoed * 8) / secs / 1e6, rtt_ms: rtts[Math.floor(rtts.length / 2)] };
}

// The page-side functions, declared inside one expression the page evaluates.
const inPage = (fn, cfg) =>
  `(async () => {\n${pageJoin.toString()}\n${fn.toString()}\nreturn await ${fn.name}(${JSON.stringify(cfg)});\n})()`;

async function main() {
  const a = parseArgs(process.argv.slice(2));
  if (!['ttff', 'dc'].includes(a.mode)) throw new Error('usage: chromium.js ttff|dc --signaling URL --arn ARN …');
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-bench-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    args: ARGS,
    headless: true,
  });
  try {
    const runs = Number(a.runs || 1);
    for (let i = 0; i < runs; i++) {
      const page = await context.newPage();
      // A page on the service's own origin (served here, not by the service): Chromium keeps
      // an opaque about:blank page from opening WebSockets to a loopback address.
      const pageUrl = `${a.signaling.replace(/^ws/, 'http').replace(/\/$/, '')}/__kvs_bench__`;
      await page.route(pageUrl, (route) =>
        route.fulfill({ status: 200, contentType: 'text/html', body: '<!doctype html><title>kvs-bench</title><body></body>' }),
      );
      await page.goto(pageUrl);
      const cfg = {
        signaling: a.signaling,
        arn: a.arn,
        clientId: `chromium-${a.mode}-${a.label || 'x'}-${i}-${process.pid}`,
        pings: Number(a.pings || 100),
        bytes: Number(a.bytes || 0),
        messageSize: Number(a['message-size'] || 16384),
        window: Number(a.window || 524288),
      };
      try {
        if (a.mode === 'ttff') {
          const r = await page.evaluate(inPage(pageTtff, cfg));
          emit({ type: 'ttff', run: i, ...r });
        } else {
          const r = await page.evaluate(inPage(pageDc, cfg));
          emit({ type: 'dc', run: i, ...r });
        }
      } catch (e) {
        process.stderr.write(`run ${i}: ${e.message}\n`);
      }
      await page.close();
      await new Promise((r) => setTimeout(r, 300));
    }
    emit({ type: 'done' });
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  emit({ type: 'error', message: e.message });
  process.exit(1);
});

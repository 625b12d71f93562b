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
//   node chromium.js page --url URL --runs N [--sync 1] [--gap MS]
//       the real viewer page a program serves (`kvs-webrtc`'s "Viewer page:" address), opened
//       as a person would: one browser, and per run a NEW browser context and tab that goes to
//       URL. The page measures itself (window.kvsViewer.timeToFirstFrameMs: offer sent → first
//       frame presented, requestVideoFrameCallback; clientId); an observing init script adds
//       the page's own clock for navigation → offer sent and the steps after it. Prints
//       {"type":"page","run","client_id","ttff_ms",…} (times in ms, see coldPageReport), then
//       closes the tab as a person does (beforeunload runs) and the context; with --sync it waits for a line on stdin ("next") before the next
//       run (the caller waits until the device saw the viewer leave), else --gap ms (1000).
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

// Runs in each document of a cold-page context before the page's own scripts. It only
// observes, on the page's clock (performance.now(), 0 = navigation start): when the signaling
// WebSocket was created and opened, when the SDP offer went out and the answer came back, and
// when the peer connection's ICE, then ICE+DTLS, reached "connected".
function coldPageProbe() {
  const probe = {
    wsCreated: null,
    wsOpen: null,
    pcCreated: null,
    offerSent: null,
    answerReceived: null,
    answerApplied: null,
    firstLocalCandidate: null,
    iceConnected: null,
    connected: null,
  };
  Object.defineProperty(window, '__kvsBenchProbe', { value: probe });
  const now = () => performance.now();
  const WS = window.WebSocket;
  const send = WS.prototype.send;
  WS.prototype.send = function (data) {
    if (probe.offerSent === null && typeof data === 'string' && data.includes('"SDP_OFFER"')) probe.offerSent = now();
    return send.call(this, data);
  };
  window.WebSocket = new Proxy(WS, {
    construct(target, args, newTarget) {
      const ws = Reflect.construct(target, args, newTarget);
      if (probe.wsCreated === null) probe.wsCreated = now();
      ws.addEventListener('open', () => {
        if (probe.wsOpen === null) probe.wsOpen = now();
      });
      ws.addEventListener('message', (e) => {
        if (probe.answerReceived === null && typeof e.data === 'string' && e.data.includes('SDP_ANSWER')) probe.answerReceived = now();
      });
      return ws;
    },
  });
  const PC = window.RTCPeerConnection;
  window.RTCPeerConnection = new Proxy(PC, {
    construct(target, args, newTarget) {
      const pc = Reflect.construct(target, args, newTarget);
      if (probe.pcCreated === null) probe.pcCreated = now();
      pc.addEventListener('icecandidate', (e) => {
        if (probe.firstLocalCandidate === null && e.candidate && e.candidate.candidate) probe.firstLocalCandidate = now();
      });
      // When the browser has applied the device's answer (its ICE checks can start then).
      const setRemote = pc.setRemoteDescription.bind(pc);
      pc.setRemoteDescription = (d) =>
        setRemote(d).then((v) => {
          if (probe.answerApplied === null && d && d.type === 'answer') probe.answerApplied = now();
          return v;
        });
      pc.addEventListener('iceconnectionstatechange', () => {
        const s = pc.iceConnectionState;
        if (probe.iceConnected === null && (s === 'connected' || s === 'completed')) probe.iceConnected = now();
      });
      pc.addEventListener('connectionstatechange', () => {
        if (probe.connected === null && pc.connectionState === 'connected') probe.connected = now();
      });
      return pc;
    },
  });
}

// Read in the page once it has measured its first frame. Page-clock times (ms since
// navigation start) end in _at_ms; the rest are spans.
function coldPageReport() {
  const hook = window.kvsViewer;
  const p = window.__kvsBenchProbe || {};
  const nav = performance.getEntriesByType('navigation')[0] || {};
  const resource = (part) => performance.getEntriesByType('resource').find((r) => r.name.includes(part));
  const config = resource('/config.json');
  const since = (a, b) => (a == null || b == null ? null : a - b);
  // The first frame on the page's clock: the page's figure counts from its own offer time,
  // taken just before the probe's (the offer is base64-encoded in between).
  const firstFrameAt = p.offerSent == null || hook.timeToFirstFrameMs == null ? null : p.offerSent + hook.timeToFirstFrameMs;
  return {
    client_id: hook.clientId,
    ttff_ms: hook.timeToFirstFrameMs,
    via: hook.firstFrameVia,
    state: hook.state,
    html_at_ms: nav.responseEnd ?? null,
    dom_ready_at_ms: nav.domContentLoadedEventEnd || null,
    config_at_ms: config ? config.responseEnd : null,
    ws_created_at_ms: p.wsCreated,
    ws_open_at_ms: p.wsOpen,
    pc_created_at_ms: p.pcCreated,
    offer_sent_at_ms: p.offerSent,
    first_frame_at_ms: firstFrameAt,
    answer_ms: since(p.answerReceived, p.offerSent),
    answer_applied_ms: since(p.answerApplied, p.offerSent),
    first_local_candidate_ms: since(p.firstLocalCandidate, p.offerSent),
    ice_connected_ms: since(p.iceConnected, p.offerSent),
    connected_ms: since(p.connected, p.offerSent),
  };
}

// A cold page per run: a new context (no cache, no cookies, nothing kept from the last run)
// and tab, going to the page's address, as a person opening the printed link would.
async function coldPages(browser, a) {
  const runs = Number(a.runs || 1);
  const gap = Number(a.gap || 1000);
  const lines = a.sync ? stdinLines() : null;
  for (let i = 0; i < runs; i++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const log = [];
    let page = null;
    try {
      await context.addInitScript(coldPageProbe);
      page = await context.newPage();
      page.on('console', (m) => log.push(`[${m.type()}] ${m.text()}`));
      page.on('pageerror', (e) => log.push(`[pageerror] ${e.message}`));
      const started = Date.now();
      await page.goto(a.url, { waitUntil: 'load', timeout: 20000 });
      const gotoMs = Date.now() - started;
      // The page times itself; polling only says when to read it (rarely, to stay out of its way).
      await page.waitForFunction(() => window.kvsViewer && window.kvsViewer.timeToFirstFrameMs != null, null, {
        polling: 50,
        timeout: 20000,
      });
      const r = await page.evaluate(coldPageReport);
      emit({ type: 'page', run: i, goto_ms: gotoMs, ...r });
    } catch (e) {
      process.stderr.write(`run ${i}: ${e.message}\n${log.slice(-20).join('\n')}\n`);
      emit({ type: 'page', run: i, error: e.message.split('\n')[0] });
    }
    // Closed as a person closes a tab: the page's beforeunload handler closes its session
    // (its RTCPeerConnection says goodbye, so the device sees the viewer leave). Closing the
    // context alone tears the page down without that, and the device keeps the session until
    // ICE gives up.
    if (page) {
      const closed = new Promise((r) => page.once('close', r));
      await page.close({ runBeforeUnload: true }).catch(() => {});
      await Promise.race([closed, new Promise((r) => setTimeout(r, 5000))]);
    }
    await context.close().catch(() => {});
    if (i + 1 < runs) {
      if (lines) {
        const line = await lines.next(30000);
        if (line === null || line.trim() === 'quit') break;
      } else {
        await new Promise((r) => setTimeout(r, gap));
      }
    }
  }
}

/** Lines from stdin, one `next(timeoutMs)` at a time (null at the end or on timeout). */
function stdinLines() {
  const rl = require('node:readline').createInterface({ input: process.stdin });
  const queue = [];
  const waiters = [];
  let ended = false;
  rl.on('line', (l) => (waiters.length ? waiters.shift()(l) : queue.push(l)));
  rl.on('close', () => {
    ended = true;
    while (waiters.length) waiters.shift()(null);
  });
  return {
    next(timeoutMs) {
      if (queue.length) return Promise.resolve(queue.shift());
      if (ended) return Promise.resolve(null);
      return new Promise((res) => {
        const timer = setTimeout(() => {
          const k = waiters.indexOf(done);
          if (k >= 0) waiters.splice(k, 1);
          res(null);
        }, timeoutMs);
        const done = (l) => {
          clearTimeout(timer);
          res(l);
        };
        waiters.push(done);
      });
    },
    close: () => rl.close(),
  };
}

// The page-side functions, declared inside one expression the page evaluates.
const inPage = (fn, cfg) =>
  `(async () => {\n${pageJoin.toString()}\n${fn.toString()}\nreturn await ${fn.name}(${JSON.stringify(cfg)});\n})()`;

async function main() {
  const a = parseArgs(process.argv.slice(2));
  if (a.mode === 'page') {
    if (!a.url) throw new Error('usage: chromium.js page --url URL --runs N [--sync 1] [--gap MS]');
    // The test suite's browser (tests/browser/lib/harness.js): the page is served from a
    // loopback origin of its own, so no Local Network Access exception is needed.
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ARGS.filter((x) => !x.startsWith('--disable-features=')),
      headless: true,
    });
    try {
      await coldPages(browser, a);
      emit({ type: 'done' });
    } finally {
      await browser.close();
    }
    process.exit(0);
  }
  if (!['ttff', 'dc'].includes(a.mode)) throw new Error('usage: chromium.js ttff|dc --signaling URL --arn ARN … | page --url URL …');
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

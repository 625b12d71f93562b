#!/usr/bin/env node
// Benchmark reference: node-datachannel (libdatachannel) ↔ node-datachannel on this machine,
// the same data-channel echo test the device runs against its peers, so the device's figures
// can be read against a mature native stack measured in the same run.
//
//   node ndc_reference.js --bytes B --message-size S --window W --pings P --runs N
//       per run: a client process and an echo process (forked, so each side has its own event
//       loop, as the device and its peer do) connect over loopback with signaling on the fork's
//       IPC channel; prints {"type":"dc","throughput_mbps","rtt_ms"}; ends with {"type":"done"}.
//
// Errors: {"type":"error","message"} and exit status 1.
'use strict';

const { fork } = require('node:child_process');
const ndc = require('node-datachannel');

const LABEL = 'kvsDataChannel';
const emit = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  return out;
}

// The echo side (a forked process): answer the offer, echo every message as it came.
function echoSide() {
  const pc = new ndc.PeerConnection('echo', { iceServers: [], bindAddress: '127.0.0.1' });
  pc.onLocalDescription((sdp, type) => process.send({ sdp, type }));
  pc.onLocalCandidate((candidate, mid) => process.send({ candidate, mid }));
  pc.onDataChannel((dc) => {
    dc.onMessage((msg) => {
      if (typeof msg === 'string') dc.sendMessage(msg);
      else dc.sendMessageBinary(msg);
    });
  });
  process.on('message', (m) => {
    if (m.sdp) pc.setRemoteDescription(m.sdp, m.type);
    else if (m.candidate) pc.addRemoteCandidate(m.candidate, m.mid);
    else if (m.quit) {
      pc.close();
      ndc.cleanup();
      process.exit(0);
    }
  });
}

async function oneRun(cfg) {
  const child = fork(__filename, ['--echo'], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const pc = new ndc.PeerConnection('client', { iceServers: [], bindAddress: '127.0.0.1' });
  pc.onLocalDescription((sdp, type) => child.send({ sdp, type }));
  pc.onLocalCandidate((candidate, mid) => child.send({ candidate, mid }));
  child.on('message', (m) => {
    if (m.sdp) pc.setRemoteDescription(m.sdp, m.type);
    else if (m.candidate) pc.addRemoteCandidate(m.candidate, m.mid);
  });
  const dc = pc.createDataChannel(LABEL);
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('data channel did not open in 20 s')), 20_000);
      dc.onOpen(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    let onMessage = () => {};
    dc.onMessage((m) => onMessage(m));
    const rtts = [];
    for (let i = 0; i < cfg.pings; i++) {
      const ping = `ping ${String(i).padStart(8, '0')}`;
      const start = performance.now();
      await new Promise((resolve) => {
        onMessage = (m) => {
          if (m === ping) resolve();
        };
        dc.sendMessage(ping);
      });
      rtts.push(performance.now() - start);
    }
    const payload = Buffer.alloc(cfg.messageSize, 0x5a);
    let sent = 0;
    let echoed = 0;
    const start = performance.now();
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`echo stalled at ${echoed} of ${cfg.bytes} bytes`)), 300_000);
      const pump = () => {
        while (sent < cfg.bytes && sent - echoed + cfg.messageSize <= cfg.window) {
          if (!dc.sendMessageBinary(payload)) break;
          sent += cfg.messageSize;
        }
      };
      onMessage = (m) => {
        if (typeof m === 'string') return;
        echoed += m.length;
        if (echoed >= cfg.bytes) {
          clearTimeout(timer);
          resolve();
        } else pump();
      };
      dc.setBufferedAmountLowThreshold(cfg.window / 2);
      dc.onBufferedAmountLow(pump);
      pump();
    });
    const secs = (performance.now() - start) / 1000;
    rtts.sort((a, b) => a - b);
    return { throughput_mbps: (echoed * 8) / secs / 1e6, rtt_ms: rtts[Math.floor(rtts.length / 2)] };
  } finally {
    dc.close();
    pc.close();
    child.send({ quit: true });
    await new Promise((resolve) => child.once('exit', resolve));
  }
}

async function main() {
  if (process.argv[2] === '--echo') {
    echoSide();
    return;
  }
  const a = parseArgs(process.argv.slice(2));
  const cfg = {
    bytes: Number(a.bytes || 8 << 20),
    messageSize: Number(a['message-size'] || 16384),
    window: Number(a.window || 524288),
    pings: Number(a.pings || 100),
  };
  const runs = Number(a.runs || 1);
  for (let i = 0; i < runs; i++) {
    try {
      emit({ type: 'dc', run: i, ...(await oneRun(cfg)) });
    } catch (e) {
      process.stderr.write(`run ${i}: ${e.message}\n`);
    }
  }
  emit({ type: 'done' });
  ndc.cleanup();
}

main().catch((e) => {
  emit({ type: 'error', message: e.message });
  process.exit(1);
});

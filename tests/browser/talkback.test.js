// Talk-back and G.711, end to end: the real `kvs-webrtc` program and real headless Chromium
// with its fake microphone (`--use-fake-device-for-media-stream` plays a beep;
// `--use-fake-ui-for-media-stream` grants the permission). What a user cares about:
// - holding the viewer page's push-to-talk button is heard on the device: its WAV speaker
//   holds audio at the microphone's beep frequency (found with an FFT), and silence once
//   released;
// - a viewer whose offer has only PCMU (Opus edited out of the SDP in the page) receives PCMU
//   audio that its decoder plays;
// - a viewer offering only PCMA is heard on the device (PCMA decoded into the WAV).
//
// Run: `node --test tests/browser/talkback.test.js` after `cargo build --release -p kvs-webrtc`.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startProgram, openViewer, waitInPage, waitForDecodedVideo, withDiagnostics, sleep } = require('./lib/harness');

const TEST_TIMEOUT = { timeout: 180_000 };
const MIC_ARGS = ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'];
/** How long the button is held, and how long we listen after releasing it. */
const TALK_MS = 3000;
const AFTER_MS = 3000;

const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-talkback-'));
cleanups.push(async () => fs.rmSync(tmp, { recursive: true, force: true }));

async function start(args) {
  const program = await startProgram(args);
  cleanups.push(() => program.stop(2000));
  return program;
}

async function viewer(url, name, initScript) {
  const v = await openViewer(url, name, { browserArgs: MIC_ARGS, initScript });
  cleanups.push(() => v.close());
  return v;
}

/**
 * An init script that edits every offer the page makes so its audio m-line keeps only `codec`
 * (e.g. 'PCMU'): the payload types of other codecs leave the m-line with their rtpmap, fmtp
 * and rtcp-fb lines.
 */
function onlyAudioCodec(codec) {
  const body = (wanted) => {
    const edit = (sdp) => {
      const lines = sdp.split('\r\n');
      const out = [];
      let inAudio = false;
      let keep = null;
      for (const line of lines) {
        if (line.startsWith('m=')) {
          inAudio = line.startsWith('m=audio');
          if (inAudio) {
            // The payload types of the wanted codec, from this section's rtpmap lines.
            const start = lines.indexOf(line);
            keep = new Set();
            for (let i = start + 1; i < lines.length && !lines[i].startsWith('m='); i++) {
              const m = /^a=rtpmap:(\d+) ([^/]+)\//.exec(lines[i]);
              if (m && m[2].toUpperCase() === wanted) keep.add(m[1]);
            }
            const parts = line.split(' ');
            out.push([...parts.slice(0, 3), ...parts.slice(3).filter((pt) => keep.has(pt))].join(' '));
            continue;
          }
        }
        if (inAudio) {
          const m = /^a=(rtpmap|fmtp|rtcp-fb):(\d+)[ ]/.exec(line);
          if (m && !keep.has(m[2])) continue;
        }
        out.push(line);
      }
      return out.join('\r\n');
    };
    const original = RTCPeerConnection.prototype.createOffer;
    RTCPeerConnection.prototype.createOffer = async function (...args) {
      const offer = await original.apply(this, args);
      window.__editedOffer = edit(offer.sdp);
      return { type: offer.type, sdp: window.__editedOffer };
    };
  };
  return { content: `(${body.toString()})(${JSON.stringify(codec)});` };
}

/** Parse a PCM WAV file: checks the RIFF header; returns {sampleRate, channels, samples}. */
function readWav(file) {
  const b = fs.readFileSync(file);
  assert.ok(b.length >= 44, `${file}: ${b.length} bytes, shorter than a WAV header`);
  assert.equal(b.toString('ascii', 0, 4), 'RIFF');
  assert.equal(b.toString('ascii', 8, 16), 'WAVEfmt ');
  assert.equal(b.readUInt16LE(20), 1, 'PCM');
  assert.equal(b.readUInt16LE(34), 16, '16-bit');
  assert.equal(b.toString('ascii', 36, 40), 'data');
  const dataBytes = b.readUInt32LE(40);
  assert.equal(b.readUInt32LE(4), dataBytes + 36, 'RIFF size = data size + 36');
  assert.ok(44 + dataBytes <= b.length, `header's data size ${dataBytes} within the file (${b.length} bytes)`);
  const samples = new Int16Array(dataBytes / 2);
  for (let i = 0; i < samples.length; i++) samples[i] = b.readInt16LE(44 + 2 * i);
  return { sampleRate: b.readUInt32LE(24), channels: b.readUInt16LE(22), samples, fileBytes: b.length, dataBytes };
}

/** Frequency (Hz) of the strongest component of `x` (radix-2 FFT, Hann window, zero-padded). */
function dominantFrequency(x, sampleRate) {
  let n = 1;
  while (n < x.length) n <<= 1;
  const re = new Float64Array(n);
  const im = new Float64Array(n);
  for (let i = 0; i < x.length; i++) re[i] = x[i] * (0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (x.length - 1)));
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const ang = (-2 * Math.PI) / len;
    for (let i = 0; i < n; i += len) {
      for (let k = 0; k < len / 2; k++) {
        const wr = Math.cos(ang * k);
        const wi = Math.sin(ang * k);
        const ar = re[i + k + len / 2];
        const ai = im[i + k + len / 2];
        const tr = ar * wr - ai * wi;
        const ti = ar * wi + ai * wr;
        re[i + k + len / 2] = re[i + k] - tr;
        im[i + k + len / 2] = im[i + k] - ti;
        re[i + k] += tr;
        im[i + k] += ti;
      }
    }
  }
  let best = 1;
  let bestPower = 0;
  // 50 Hz .. 8 kHz.
  for (let k = Math.ceil((50 * n) / sampleRate); k < (8000 * n) / sampleRate; k++) {
    const p = re[k] * re[k] + im[k] * im[k];
    if (p > bestPower) {
      bestPower = p;
      best = k;
    }
  }
  return (best * sampleRate) / n;
}

function rms(x) {
  let e = 0;
  for (const s of x) e += s * s;
  return Math.sqrt(e / Math.max(1, x.length));
}

function peak(x) {
  let m = 0;
  for (const s of x) m = Math.max(m, Math.abs(s));
  return m;
}

/**
 * The frequency of the browser's fake microphone, measured in the page from the same
 * getUserMedia source (WebAudio, before any codec), so the device's WAV is compared with what
 * the microphone really played.
 */
async function microphoneFrequency(v) {
  return v.page.evaluate(async () => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const ctx = new AudioContext();
    const src = ctx.createMediaStreamSource(stream);
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 32768;
    src.connect(analyser);
    const bins = new Float32Array(analyser.frequencyBinCount);
    let best = { hz: 0, db: -Infinity };
    // The beep may come in bursts: keep the strongest bin over 2 s.
    for (let i = 0; i < 40; i++) {
      await new Promise((r) => setTimeout(r, 50));
      analyser.getFloatFrequencyData(bins);
      for (let k = 2; k < bins.length; k++) {
        if (bins[k] > best.db) best = { hz: (k * ctx.sampleRate) / analyser.fftSize, db: bins[k] };
      }
    }
    stream.getTracks().forEach((t) => t.stop());
    await ctx.close();
    return best.hz;
  });
}

/** Hold push-to-talk for TALK_MS, release, listen AFTER_MS; returns the WAV's analysis. */
async function talkAndAnalyse(v, wavPath, what, read = readWav) {
  // The button, pressed and held with the mouse as a user does.
  const box = await v.page.locator('#talk-btn').boundingBox();
  assert.ok(box, 'the page has a push-to-talk button');
  await v.page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await v.page.mouse.down();
  await waitInPage(v, 'the microphone to be on', () => window.kvsViewer.talking === true);
  const pressed = Date.now();
  await sleep(TALK_MS);
  await v.page.mouse.up();
  const released = Date.now();
  await waitInPage(v, 'the microphone to be off', () => window.kvsViewer.talking === false);
  await sleep(AFTER_MS);

  const wav = read(wavPath);
  assert.equal(wav.sampleRate, 48000);
  assert.equal(wav.channels, 1);
  const sec = (s) => Math.round(s * wav.sampleRate);
  // The WAV starts at the first talk-back packet (≈ the press); talk lasted until `released`.
  const talkSec = (released - pressed) / 1000;
  const talk = wav.samples.subarray(sec(0.3), sec(talkSec - 0.2));
  const quiet = wav.samples.subarray(sec(talkSec + 0.5), wav.samples.length);
  const found = dominantFrequency(talk, wav.sampleRate);
  const result = {
    what,
    wavSeconds: +(wav.samples.length / wav.sampleRate).toFixed(2),
    talkRms: +rms(talk).toFixed(1),
    talkPeak: peak(talk),
    frequencyHz: +found.toFixed(1),
    releasedSeconds: +(quiet.length / wav.sampleRate).toFixed(2),
    releasedPeak: peak(quiet),
  };
  console.log(`talk-back ${what}: ${JSON.stringify(result)}`);
  return result;
}

test('push-to-talk (Opus): the device WAV holds the microphone beep while held, silence after', TEST_TIMEOUT, async () => {
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    const wavPath = path.join(tmp, 'opus.wav');
    program = await start(['--speaker-wav', wavPath]);
    v = await viewer(program.url, 'talker');
    await waitForDecodedVideo(v, 5);
    const offer = await v.page.evaluate(() => window.kvsViewer.pc.localDescription.sdp);
    assert.match(offer, /m=audio[^]*a=sendrecv/, 'the page offers audio sendrecv');
    const answer = await v.page.evaluate(() => window.kvsViewer.pc.remoteDescription.sdp);
    assert.match(answer.split('m=audio')[1] || '', /a=sendrecv/, 'the device answers audio sendrecv');
    // Nothing is sent before the button is pressed: the WAV is still empty.
    await sleep(1000);
    assert.equal(readWav(wavPath).dataBytes, 0, 'no talk-back audio before push-to-talk');

    const micHz = await microphoneFrequency(v);
    console.log(`fake microphone measured in the page: ${micHz.toFixed(1)} Hz`);
    const r = await talkAndAnalyse(v, wavPath, 'opus');
    assert.ok(r.talkPeak > 1000 && r.talkRms > 100, `audible while held: ${JSON.stringify(r)}`);
    assert.ok(Math.abs(r.frequencyHz - micHz) < Math.max(10, micHz * 0.03), `WAV at the microphone's ${micHz.toFixed(1)} Hz: ${JSON.stringify(r)}`);
    assert.ok(r.releasedSeconds > 2, `the WAV goes on after the release: ${JSON.stringify(r)}`);
    assert.ok(r.releasedPeak < 50, `silence after the release: ${JSON.stringify(r)}`);

    const codec = await v.page.evaluate(async () => {
      const report = await window.kvsViewer.pc.getStats();
      let mime = null;
      report.forEach((s) => {
        if (s.type === 'outbound-rtp' && s.kind === 'audio' && s.codecId) mime = report.get(s.codecId).mimeType;
      });
      return mime;
    });
    console.log(`viewer's outbound audio codec: ${codec}`);
    assert.equal(codec, 'audio/opus');

    // Stopped: the header's sizes match the file.
    await program.stop(5000);
    const final = readWav(wavPath);
    assert.equal(final.fileBytes, 44 + final.dataBytes, 'final header sizes');
  });
});

/** Raw S16LE mono 48 kHz, as `--speaker-cmd` gets it on stdin. */
function readRaw(file) {
  const b = fs.readFileSync(file);
  const samples = new Int16Array(Math.floor(b.length / 2));
  for (let i = 0; i < samples.length; i++) samples[i] = b.readInt16LE(2 * i);
  return { sampleRate: 48000, channels: 1, samples };
}

test('--speaker-cmd: a command gets the talk-back PCM on its stdin', TEST_TIMEOUT, async () => {
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    const rawPath = path.join(tmp, 'speaker.raw');
    program = await start(['--speaker-cmd', `cat > '${rawPath}'`]);
    v = await viewer(program.url, 'cmd');
    await waitForDecodedVideo(v, 5);
    const micHz = await microphoneFrequency(v);
    const r = await talkAndAnalyse(v, rawPath, 'speaker-cmd', readRaw);
    assert.ok(r.talkPeak > 1000 && r.talkRms > 100, `audible while held: ${JSON.stringify(r)}`);
    assert.ok(Math.abs(r.frequencyHz - micHz) < Math.max(10, micHz * 0.03), `PCM at the microphone's ${micHz.toFixed(1)} Hz: ${JSON.stringify(r)}`);
    assert.ok(r.releasedPeak < 50, `silence after the release: ${JSON.stringify(r)}`);
  });
});

test('a viewer offering only PCMU receives PCMU audio that decodes', TEST_TIMEOUT, async () => {
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    program = await start([]);
    v = await viewer(program.url, 'pcmu', onlyAudioCodec('PCMU'));
    await waitForDecodedVideo(v, 5);
    const offer = await v.page.evaluate(() => window.__editedOffer);
    assert.doesNotMatch(offer, /opus/i, 'the edited offer has no Opus');
    assert.match(offer, /a=rtpmap:0 PCMU\/8000/, 'the edited offer has PCMU');
    const audio = async () =>
      v.page.evaluate(async () => {
        const report = await window.kvsViewer.pc.getStats();
        let out = null;
        report.forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'audio') {
            out = {
              packetsReceived: s.packetsReceived,
              totalSamplesReceived: s.totalSamplesReceived,
              concealedSamples: s.concealedSamples,
              mimeType: s.codecId ? report.get(s.codecId).mimeType : null,
              clockRate: s.codecId ? report.get(s.codecId).clockRate : null,
            };
          }
        });
        return out;
      });
    await waitInPage(v, 'PCMU packets', async () => {
      const report = await window.kvsViewer.pc.getStats();
      let ok = false;
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio' && s.packetsReceived > 50) ok = true;
      });
      return ok;
    });
    const first = await audio();
    await sleep(2000);
    const second = await audio();
    console.log(`PCMU viewer inbound audio: ${JSON.stringify(first)} then ${JSON.stringify(second)}`);
    assert.equal(second.mimeType, 'audio/PCMU');
    assert.equal(second.clockRate, 8000);
    assert.ok(second.packetsReceived >= first.packetsReceived + 80, 'about 50 packets a second');
    const decoded = second.totalSamplesReceived - first.totalSamplesReceived;
    // totalSamplesReceived counts samples at the codec's rate (8 kHz for PCMU).
    assert.ok(decoded > 8000 * 1.5, `samples decoded in 2 s: ${decoded}`);
    // Decoded from packets, not concealed.
    assert.ok(second.concealedSamples - first.concealedSamples < decoded / 10, 'little concealment');
  });
});

test('a viewer offering only PCMA is heard on the device (PCMA decoded into the WAV)', TEST_TIMEOUT, async () => {
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    const wavPath = path.join(tmp, 'pcma.wav');
    program = await start(['--speaker-wav', wavPath]);
    v = await viewer(program.url, 'pcma', onlyAudioCodec('PCMA'));
    await waitForDecodedVideo(v, 5);
    const micHz = await microphoneFrequency(v);
    const r = await talkAndAnalyse(v, wavPath, 'pcma');
    const codecs = await v.page.evaluate(async () => {
      const report = await window.kvsViewer.pc.getStats();
      const out = {};
      report.forEach((s) => {
        if ((s.type === 'outbound-rtp' || s.type === 'inbound-rtp') && s.kind === 'audio' && s.codecId) out[s.type] = report.get(s.codecId).mimeType;
      });
      return out;
    });
    console.log(`PCMA viewer audio codecs: ${JSON.stringify(codecs)}`);
    assert.equal(codecs['outbound-rtp'], 'audio/PCMA', 'the viewer sends PCMA');
    assert.equal(codecs['inbound-rtp'], 'audio/PCMA', 'and receives PCMA');
    assert.ok(r.talkPeak > 1000 && r.talkRms > 100, `audible while held: ${JSON.stringify(r)}`);
    // G.711 carries up to 4 kHz; the beep is well below.
    assert.ok(Math.abs(r.frequencyHz - micHz) < Math.max(10, micHz * 0.03), `WAV at the microphone's ${micHz.toFixed(1)} Hz: ${JSON.stringify(r)}`);
    assert.ok(r.releasedPeak < 50, `silence after the release: ${JSON.stringify(r)}`);
  });
});

// Live capture from a command, end to end: the real `kvs-webrtc` program reads raw I420 from
// Debian's `ffmpeg` (`-f lavfi -i testsrc`, what a `-f v4l2 -i /dev/video0` camera would write)
// through `--raw-video-cmd`, and S16LE PCM (`-f lavfi -i sine`) through `--raw-audio-cmd`, and
// encodes both itself; real headless Chromium views it. What a user cares about:
// - the camera's pictures arrive: Chromium decodes H.264 frames at the command's size
//   (320x240), and the microphone's tone: Opus audio decodes, at 440 Hz (FFT in the page);
// - a keyframe request is honoured at once: with a GOP so long that the camera never makes a
//   keyframe by itself, the page asks for one (RTCRtpScriptTransformer.sendKeyFrameRequest, a
//   PLI from Chromium's receiver: its pliCount goes up) and exactly one more keyframe is
//   decoded, each time it asks.
//
// Run: `node --test tests/browser/raw_capture.test.js` after `cargo build --release -p kvs-webrtc`.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startProgram, openViewer, waitInPage, waitForDecodedVideo, inboundStats, withDiagnostics, sleep } = require('./lib/harness');

const TEST_TIMEOUT = { timeout: 180_000 };
const FFMPEG = 'ffmpeg -hide_banner -loglevel error -nostdin';
/** No `-re`: the camera paces itself and the pipe holds ffmpeg back. */
const CAMERA = `${FFMPEG} -f lavfi -i testsrc=size=320x240:rate=15 -f rawvideo -pix_fmt yuv420p -`;
const MICROPHONE = `${FFMPEG} -f lavfi -i sine=frequency=440:sample_rate=48000 -f s16le -ac 1 -ar 48000 -`;

const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-raw-capture-'));
cleanups.push(async () => fs.rmSync(tmp, { recursive: true, force: true }));

async function start(args) {
  const program = await startProgram(args);
  cleanups.push(() => program.stop(5000));
  return program;
}

async function viewer(url, name) {
  const v = await openViewer(url, name);
  cleanups.push(() => v.close());
  return v;
}

/** The video receiver's keyframe and PLI counters (straight from getStats). */
async function videoCounters(v) {
  return v.page.evaluate(async () => {
    const report = await window.kvsViewer.pc.getStats();
    let out = null;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        out = { keyFramesDecoded: s.keyFramesDecoded || 0, framesDecoded: s.framesDecoded || 0, pliCount: s.pliCount || 0, firCount: s.firCount || 0 };
      }
    });
    return out;
  });
}

test('raw I420 from --raw-video-cmd and S16LE from --raw-audio-cmd reach Chromium and decode', TEST_TIMEOUT, async () => {
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    program = await start(['--raw-video-cmd', CAMERA, '--size', '320x240', '--fps', '15', '--raw-audio-cmd', MICROPHONE]);
    v = await viewer(program.url, 'raw');
    await waitForDecodedVideo(v, 10);
    const first = await inboundStats(v);
    await sleep(2000);
    const second = await inboundStats(v);
    console.log(`raw capture inbound: ${JSON.stringify(first)} then ${JSON.stringify(second)}`);
    assert.equal(second.video.mimeType, 'video/H264');
    assert.equal(second.video.frameWidth, 320);
    assert.equal(second.video.frameHeight, 240);
    // 15 fps for 2 s: about 30 frames (a loaded machine may lose a few).
    const frames = second.video.framesDecoded - first.video.framesDecoded;
    assert.ok(frames >= 20 && frames <= 40, `frames decoded in 2 s: ${frames}`);
    assert.equal(second.audio.mimeType, 'audio/opus');

    // The tone: decoded samples grow, and the page hears 440 Hz (the FFT's loudest bin).
    const audio = await v.page.evaluate(async () => {
      const pc = window.kvsViewer.pc;
      const track = pc.getReceivers().find((r) => r.track.kind === 'audio').track;
      const samples = async () => {
        const report = await pc.getStats();
        let n = 0;
        report.forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'audio') n = s.totalSamplesReceived || 0;
        });
        return n;
      };
      const before = await samples();
      const ctx = new AudioContext();
      // Chromium feeds a remote track to Web Audio only while a media element plays it.
      const el = new Audio();
      el.srcObject = new MediaStream([track]);
      el.muted = true;
      await el.play().catch(() => {});
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 8192;
      ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
      await ctx.resume();
      await new Promise((r) => setTimeout(r, 1500));
      const bins = new Float32Array(analyser.frequencyBinCount);
      analyser.getFloatFrequencyData(bins);
      let peak = 0;
      for (let i = 1; i < bins.length; i++) if (bins[i] > bins[peak]) peak = i;
      const after = await samples();
      return { peakHz: (peak * ctx.sampleRate) / analyser.fftSize, peakDb: bins[peak], samples: after - before, rate: ctx.sampleRate };
    });
    console.log(`raw capture audio in the page: ${JSON.stringify(audio)}`);
    // 1.5 s at 48 kHz.
    assert.ok(audio.samples > 48000, `samples decoded in 1.5 s: ${audio.samples}`);
    // One FFT bin is the context rate / 8192: ~5.4 Hz at 44.1 kHz, ~5.9 Hz at 48 kHz.
    assert.ok(Math.abs(audio.peakHz - 440) < 15, `the loudest frequency: ${audio.peakHz} Hz (${audio.peakDb} dB)`);
  });
});

test('a PLI from Chromium yields a keyframe from the raw-capture camera', TEST_TIMEOUT, async () => {
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    // A GOP of 100000 frames (two hours at 15 fps): every keyframe after the first is a
    // requested one.
    const config = path.join(tmp, 'raw.toml');
    fs.writeFileSync(
      config,
      ['[video]', 'source = "raw-command"', `command = ${JSON.stringify(CAMERA)}`, 'width = 320', 'height = 240', 'fps = 15', 'gop = 100000', '[audio]', 'source = "none"', ''].join('\n'),
    );
    program = await start(['--config', config]);
    v = await viewer(program.url, 'pli');
    await waitForDecodedVideo(v, 10);
    // The page's own transform on the video receiver: frames pass through untouched; the
    // test asks it for keyframe requests.
    await v.page.evaluate(async () => {
      const src = `onrtctransform = (e) => {
        const t = e.transformer;
        t.readable.pipeTo(t.writable);
        onmessage = async () => {
          try { await t.sendKeyFrameRequest(); postMessage('sent'); } catch (err) { postMessage('error: ' + err); }
        };
        postMessage('ready');
      };`;
      const worker = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })));
      const receiver = window.kvsViewer.pc.getReceivers().find((r) => r.track.kind === 'video');
      const ready = new Promise((resolve) => { worker.onmessage = (m) => resolve(m.data); });
      receiver.transform = new RTCRtpScriptTransform(worker, {});
      window.__keyframeWorker = worker;
      if ((await ready) !== 'ready') throw new Error('the transform did not start');
    });
    // Let whatever the new transform caused settle, then make sure no keyframe comes by
    // itself.
    await sleep(2000);
    const settled = await videoCounters(v);
    await sleep(2000);
    const quiet = await videoCounters(v);
    assert.equal(quiet.keyFramesDecoded, settled.keyFramesDecoded, `no keyframe without a request: ${JSON.stringify([settled, quiet])}`);
    assert.ok(quiet.framesDecoded >= settled.framesDecoded + 20, 'frames keep coming meanwhile');

    const waits = [];
    for (let round = 0; round < 3; round++) {
      const before = await videoCounters(v);
      const r = await v.page.evaluate(async (keyFramesBefore) => {
        const pc = window.kvsViewer.pc;
        const counters = async () => {
          const report = await pc.getStats();
          let out = null;
          report.forEach((s) => {
            if (s.type === 'inbound-rtp' && s.kind === 'video') out = s;
          });
          return out;
        };
        const worker = window.__keyframeWorker;
        const sent = new Promise((resolve) => { worker.onmessage = (m) => resolve(m.data); });
        const t0 = performance.now();
        worker.postMessage('request');
        const answer = await sent;
        if (answer !== 'sent') return { answer };
        // Poll for the keyframe (generous bound: 5 s; the GOP would take two hours).
        for (;;) {
          const s = await counters();
          if ((s.keyFramesDecoded || 0) > keyFramesBefore) return { answer, ms: performance.now() - t0 };
          if (performance.now() - t0 > 5000) return { answer, ms: null };
          await new Promise((res) => setTimeout(res, 10));
        }
      }, before.keyFramesDecoded);
      assert.equal(r.answer, 'sent', 'sendKeyFrameRequest resolved');
      assert.ok(r.ms !== null, `round ${round}: no keyframe decoded within 5 s of the request`);
      // Stats settle: exactly one more keyframe, and the request went out as a PLI (or FIR).
      await sleep(1500);
      const afterRound = await videoCounters(v);
      assert.equal(afterRound.keyFramesDecoded, before.keyFramesDecoded + 1, `round ${round}: ${JSON.stringify([before, afterRound])}`);
      assert.ok(afterRound.pliCount + afterRound.firCount > before.pliCount + before.firCount, `round ${round}: Chromium sent a PLI/FIR: ${JSON.stringify([before, afterRound])}`);
      waits.push(Math.round(r.ms));
    }
    console.log(`keyframe request (page) -> keyframe decoded (page), ms: ${JSON.stringify(waits)}`);
  });
});

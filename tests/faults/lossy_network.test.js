// A lossy, jittery network between the device and a viewer. The device (embedded default)
// runs in one network namespace, Chromium in another; every frame between them crosses a
// userspace impairment bridge in a third (lib/impair.py: this machine's kernel has no
// sch_netem), 50 ms ± 20 ms each way, order kept except for 1 % of the packets.
//   - 0 % loss, then 5 % loss both ways: the viewer keeps decoding (NACK/RTX, PLI); figures
//     from getStats inbound-rtp for both runs side by side.
//   - 20 % loss for 5 s, then no loss: video recovers (framesDecoded advancing at >= 20 fps
//     over half a second) within 2 s of the link becoming clean.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {
  startProcess, openViewer, waitForDecodedVideo, inboundStats, withDiagnostics, chromiumWrapper, sleep,
} = require('../browser/lib/harness');
const { createPath, unavailableReason } = require('./lib/netns');

// 50 ± 20 ms each way with packet order kept except 1 % of packets (drawn freely, they overtake
// or fall behind): "some reordering".
const JITTERY = { delay_ms: 50, jitter_ms: 20, reorder: 0.01, jitter_mode: 'fifo' };
// netem's own jitter: every packet drawn freely; at video packet rates most packets arrive out of
// order. Measured and printed, not asserted (see the figures).
const SCRAMBLED = { delay_ms: 50, jitter_ms: 20, jitter_mode: 'independent' };
const RECOVERY_BOUND_MS = 2000;
const MIN_FPS_AT_5 = 10;

const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

/** Inbound video figures over `ms`: deltas of getStats counters and the decode rate. */
async function measure(viewer, ms) {
  const a = (await inboundStats(viewer)).video;
  const t0 = Date.now();
  await sleep(ms);
  const b = (await inboundStats(viewer)).video;
  const secs = (Date.now() - t0) / 1000;
  const d = (k) => b[k] - a[k];
  return {
    seconds: Number(secs.toFixed(1)),
    framesDecoded: d('framesDecoded'),
    fps: Number((d('framesDecoded') / secs).toFixed(1)),
    packetsReceived: d('packetsReceived'),
    packetsLost: d('packetsLost'),
    nackCount: d('nackCount'),
    retransmittedPacketsReceived: d('retransmittedPacketsReceived'),
    pliCount: d('pliCount'),
    freezeCount: d('freezeCount'),
    totalFreezesDuration: Number(d('totalFreezesDuration').toFixed(2)),
  };
}

const skip = unavailableReason();
if (skip) console.log(`# lossy network test skipped: ${skip}`);

test('lossy network: decoding continues at 5 % loss, video recovers within 2 s after a 20 % burst', { timeout: 180_000, skip: skip || false }, async () => {
  const parts = { viewers: [] };
  await withDiagnostics(() => parts, async () => {
    const net = await createPath(`kvf${process.pid % 100000}`);
    cleanups.push(async () => net.remove());
    await net.impair({ loss: 0, ...JITTERY });

    const program = await startProcess(
      ['--listen', `${net.device.addr}:8080`, '--media-bind', net.device.addr],
      { ready: /Viewer page:\s*(https?:\/\/\S+)/, prefix: ['ip', 'netns', 'exec', net.device.ns] },
    );
    program.url = program.ready[1];
    parts.program = program;
    cleanups.push(() => program.stop(3000));

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-faults-lossy-'));
    cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
    const wrapper = chromiumWrapper(dir, { netns: net.viewer.ns });
    const viewer = await openViewer(program.url, 'lossy', { executablePath: wrapper.path });
    parts.viewers.push(viewer);
    cleanups.push(async () => {
      await viewer.close();
      try { process.kill(-wrapper.pid(), 'SIGKILL'); } catch { /* gone */ }
    });
    await waitForDecodedVideo(viewer, 30);
    await sleep(2000); // past the start-up keyframe

    const clean = await measure(viewer, 10_000);
    console.log(`# 0 % loss, 50±20 ms, 1 % reordered: ${JSON.stringify(clean)}`);
    await net.impair({ loss: 0.05, ...JITTERY });
    const lossy = await measure(viewer, 15_000);
    const counters5 = await net.impair({ loss: 0.05, ...JITTERY });
    console.log(`# 5 % loss, 50±20 ms, 1 % reordered: ${JSON.stringify(lossy)}`);
    console.log(`# bridge so far: ${JSON.stringify(counters5)}`);
    assert.ok(clean.fps > MIN_FPS_AT_5, `decoding on the clean link: ${clean.fps} fps`);
    assert.ok(lossy.fps > MIN_FPS_AT_5, `at 5 % loss the viewer decoded ${lossy.fps} fps, expected > ${MIN_FPS_AT_5}`);
    assert.ok(lossy.nackCount > 0, 'at 5 % loss the viewer asked for retransmissions (NACK)');

    await net.impair({ loss: 0.05, ...SCRAMBLED });
    const scrambled = await measure(viewer, 10_000);
    console.log(`# 5 % loss, 50±20 ms drawn per packet (netem-style, heavy reordering; not asserted): ${JSON.stringify(scrambled)}`);
    await net.impair({ loss: 0, ...JITTERY });
    await sleep(2000);

    await net.impair({ loss: 0.2, ...JITTERY });
    const burst = await measure(viewer, 5000);
    const cleanAt = Date.now();
    await net.impair({ loss: 0, ...JITTERY });
    console.log(`# 20 % loss for 5 s: ${JSON.stringify(burst)}`);
    // framesDecoded every ~100 ms from the moment the link is clean again.
    const samples = [];
    let recoveredMs = null;
    while (Date.now() - cleanAt < 6000) {
      const s = await inboundStats(viewer);
      const t = Date.now() - cleanAt;
      samples.push({ t, frames: s.video.framesDecoded });
      const ref = samples.filter((x) => x.t <= t - 500).pop();
      if (ref && recoveredMs === null && samples[samples.length - 1].frames - ref.frames >= 10) {
        recoveredMs = t;
        break;
      }
      await sleep(100);
    }
    const after = await measure(viewer, 3000);
    console.log(`# after the burst, clean link: recovered (>= 10 frames in 0.5 s) ${recoveredMs === null ? 'never' : `${recoveredMs} ms`} after the link became clean; next 3 s: ${JSON.stringify(after)}`);
    assert.ok(recoveredMs !== null && recoveredMs <= RECOVERY_BOUND_MS,
      `video recovered within ${RECOVERY_BOUND_MS} ms of the link becoming clean (got ${recoveredMs}); samples ${JSON.stringify(samples.slice(-25))}`);
    assert.ok(after.fps > MIN_FPS_AT_5, `decoding after recovery: ${after.fps} fps`);
  });
});

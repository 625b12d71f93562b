// Split mode end to end: `kvs-webrtc split` (the local service and page, the signaling-only side
// in that process) and a streaming-only process on a link, viewed by real headless Chromium.
//
// - exec wake over a real serial line (a pty pair made by socat, raw mode): no streaming process
//   before the first offer; the first viewer wakes one and decodes 640x480; a second viewer does
//   not wake a second one; after the last viewer leaves the process is gone within the idle time;
//   a JPEG snapshot wakes it again and decodes in the browser at 640x480; garbage written into
//   the line does not break the next session; killing the streaming process mid-session ends
//   that viewer's session and the next viewer wakes a new process.
// - signal wake: a resident streaming process idles (same pid) between viewers and is woken by
//   SIGUSR1 for each.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { spawn, execFileSync } = require('node:child_process');
const {
  startProcess, openViewer, waitForDecodedVideo, inboundStats, withDiagnostics, waitForLine, waitInPage, sleep,
} = require('./lib/harness');

const TEST_TIMEOUT = { timeout: 240_000 };
const IDLE_AFTER_LAST_VIEWER_S = 3;
// Sleep after the last viewer (3 s) + viewer-count polling + process exit, with room for a slow CI.
const SLEEP_WITHIN_MS = 20_000;

const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

/** Pids of streaming-only processes whose command line contains `marker`. */
function streamingPids(marker) {
  try {
    const out = execFileSync('pgrep', ['-f', `streaming-only --link [^ ]*${marker}`], { encoding: 'utf8' });
    return out.split('\n').filter(Boolean).map(Number);
  } catch (e) {
    if (e.status === 1) return []; // pgrep: nothing matched
    throw e;
  }
}

async function waitFor(what, fn, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await sleep(200);
  }
}

/**
 * A serial line: a pty pair from socat (raw, no echo). The test holds each end open too, so the
 * line survives a streaming process that exits (a pty master reads EIO once no one holds the
 * slave) and so it can write garbage into the line from either end.
 */
async function serialLine(dir) {
  const a = path.join(dir, 'tty-signaling');
  const b = path.join(dir, 'tty-media');
  const socat = spawn('socat', [`pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`], { stdio: 'ignore' });
  cleanups.push(async () => socat.kill('SIGKILL'));
  await waitFor('socat to create the pty pair', () => fs.existsSync(a) && fs.existsSync(b), 10_000);
  const flags = fs.constants.O_RDWR | fs.constants.O_NOCTTY | fs.constants.O_NONBLOCK;
  const fdA = fs.openSync(a, flags);
  const fdB = fs.openSync(b, flags);
  cleanups.push(async () => { fs.closeSync(fdA); fs.closeSync(fdB); });
  return {
    a,
    b,
    /** Writes `n` random bytes into the line in both directions. */
    garbage(n) {
      fs.writeSync(fdA, crypto.randomBytes(n));
      fs.writeSync(fdB, crypto.randomBytes(n));
    },
  };
}

async function startSplit(args) {
  const program = await startProcess(
    ['split', '--listen', '127.0.0.1:0', '--media-bind', '127.0.0.1', ...args],
    { ready: /Viewer page:\s*(https?:\/\/\S+)/, name: 'kvs-webrtc split' },
  );
  program.url = program.ready[1];
  cleanups.push(() => program.stop(5000));
  return program;
}

async function viewer(url, name) {
  const v = await openViewer(url, name);
  cleanups.push(() => v.close());
  return v;
}

/** The viewer hangs up as a user closing the tab does (RTCPeerConnection.close: DTLS close). */
async function leave(v) {
  await v.page.evaluate(() => window.kvsViewer.pc && window.kvsViewer.pc.close()).catch(() => {});
  await sleep(300);
  await v.close();
}

async function assert640x480(v, what) {
  const stats = await waitForDecodedVideo(v, 10);
  assert.equal(stats.video.frameWidth, 640, `${what}: decoded width`);
  assert.equal(stats.video.frameHeight, 480, `${what}: decoded height`);
  return stats;
}

test('split mode, exec wake over a pty serial line: wakes per viewer, sleeps after, snapshots, survives garbage and a killed streaming process', TEST_TIMEOUT, async () => {
  const parts = { viewers: [] };
  await withDiagnostics(() => parts, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-split-'));
    cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
    const line = await serialLine(dir);
    const marker = path.basename(dir);
    const program = await startSplit([
      '--link', `serial:${line.a},115200`,
      '--media-link', `serial:${line.b},115200`,
      '--idle-after-last-viewer', String(IDLE_AFTER_LAST_VIEWER_S),
      '--wake-budget-ms', '15000',
      '--snapshot-http', '127.0.0.1:0',
    ]);
    parts.program = program;
    const snapshotUrl = (await waitForLine(program, /Snapshots:\s*(http:\/\/\S+)/)).text.match(/(http:\/\/[^?\s]+)/)[1];

    // Asleep before any viewer: no streaming process at all.
    await sleep(1000);
    assert.deepEqual(streamingPids(marker), [], 'no streaming process before the first offer');

    // The first viewer wakes one; a second viewer while awake does not wake another.
    const first = await viewer(program.url, 'first');
    parts.viewers.push(first);
    await assert640x480(first, 'first viewer');
    const pids = streamingPids(marker);
    assert.equal(pids.length, 1, `one streaming process while a viewer watches (got ${pids})`);
    const second = await viewer(program.url, 'second');
    parts.viewers.push(second);
    await assert640x480(second, 'second viewer');
    assert.deepEqual(streamingPids(marker), pids, 'the second viewer did not wake a second process');

    // Both leave: the streaming process sleeps (exits) after the idle time.
    await leave(first);
    await leave(second);
    await waitFor('the streaming process to exit after the last viewer left', () => streamingPids(marker).length === 0, SLEEP_WITHIN_MS);

    // A snapshot wakes it (no viewer involved) and decodes in a browser at the camera's size.
    assert.deepEqual(streamingPids(marker), [], 'asleep before the snapshot');
    const res = await fetch(`${snapshotUrl}?quality=80`);
    const jpeg = Buffer.from(await res.arrayBuffer());
    assert.equal(res.status, 200, `snapshot: HTTP ${res.status} ${jpeg.toString().slice(0, 200)}`);
    assert.equal(res.headers.get('content-type'), 'image/jpeg');
    assert.equal(streamingPids(marker).length, 1, 'the snapshot woke a streaming process');
    const snapViewer = await viewer(program.url, 'snapshot-check');
    parts.viewers.push(snapViewer);
    // Decoded by the browser's own JPEG decoder.
    const decoded = await snapViewer.page.evaluate(async (b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/jpeg' }));
      return { width: bitmap.width, height: bitmap.height };
    }, jpeg.toString('base64'));
    assert.equal(decoded.width, 640, `snapshot ${JSON.stringify(decoded)}`);
    assert.equal(decoded.height, 480);
    console.log(`snapshot: ${jpeg.length} bytes at quality 80, decoded ${decoded.width}x${decoded.height}`);
    await assert640x480(snapViewer, 'viewer after the snapshot');
    await leave(snapViewer);
    await waitFor('the streaming process to exit again', () => streamingPids(marker).length === 0, SLEEP_WITHIN_MS);

    // Garbage on the line while asleep, then a new session works.
    line.garbage(3000);
    await sleep(300);
    line.garbage(500);
    const third = await viewer(program.url, 'after-garbage');
    parts.viewers.push(third);
    await assert640x480(third, 'viewer after garbage on the line');

    // The streaming process killed mid-session: that session ends, the next viewer wakes a new one.
    const [doomed] = streamingPids(marker);
    assert.ok(doomed, 'a streaming process serves the third viewer');
    process.kill(doomed, 'SIGKILL');
    await waitInPage(third, 'the killed session to stop decoding or disconnect', async () => {
      const pc = window.kvsViewer && window.kvsViewer.pc;
      if (!pc) return true;
      if (['disconnected', 'failed', 'closed'].includes(pc.connectionState)) return true;
      const a = await pc.getStats();
      let frames = 0;
      a.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') frames = r.framesDecoded; });
      window.__lastFrames = window.__lastFrames === undefined ? -1 : window.__lastFrames;
      const stalled = frames === window.__lastFrames;
      window.__lastFrames = frames;
      return stalled;
    }, undefined, 30_000);
    await third.close();
    const fourth = await viewer(program.url, 'after-kill');
    parts.viewers.push(fourth);
    await assert640x480(fourth, 'viewer after the streaming process was killed');
    const fresh = streamingPids(marker);
    assert.equal(fresh.length, 1, `one new streaming process (got ${fresh})`);
    assert.notEqual(fresh[0], doomed, 'a new streaming process, not the killed one');
    await leave(fourth);
  });
});

test('split mode, signal wake: a resident streaming process idles between viewers and is woken by SIGUSR1', TEST_TIMEOUT, async () => {
  const parts = { viewers: [] };
  await withDiagnostics(() => parts, async () => {
    const program = await startSplit([
      '--wake', 'signal',
      '--idle-after-wake', '3',
      '--idle-after-last-viewer', String(IDLE_AFTER_LAST_VIEWER_S),
      '--wake-budget-ms', '15000',
    ]);
    parts.program = program;
    const asleep = /no viewer: going to sleep/;
    await waitForLine(program, asleep, { timeoutMs: SLEEP_WITHIN_MS });
    const splitLine = (await waitForLine(program, /Split mode:.*unix:\S+link\.sock/)).text;
    const marker = splitLine.match(/\/(kvs-webrtc-split-[^/\s]+)\/link\.sock/)[1];
    const [resident] = streamingPids(marker);
    assert.ok(resident, 'the resident streaming process is running while asleep');

    // SIGUSR1 alone (no viewer, nothing on the link) wakes it; with no viewer it sleeps again.
    let since = Date.now();
    process.kill(resident, 'SIGUSR1');
    await waitForLine(program, /woken by SIGUSR1/, { since, timeoutMs: 5000 });
    await waitForLine(program, /media side presence=Awake|presence.*Awake/, { since, timeoutMs: 5000 });
    await waitForLine(program, asleep, { since: Date.now(), timeoutMs: SLEEP_WITHIN_MS });

    for (const round of [1, 2]) {
      since = Date.now();
      const v = await viewer(program.url, `viewer-${round}`);
      parts.viewers.push(v);
      await assert640x480(v, `viewer ${round}`);
      // The signal and the ReadyQuery on the link race; either wakes it.
      await waitForLine(program, /woken by (SIGUSR1|the link)/, { since, timeoutMs: 5000 });
      await leave(v);
      await waitForLine(program, asleep, { since: Date.now(), timeoutMs: SLEEP_WITHIN_MS });
      assert.deepEqual(streamingPids(marker), [resident], `round ${round}: the same resident process, idle again`);
    }
  });
});

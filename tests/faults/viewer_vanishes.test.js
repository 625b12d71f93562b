// A viewer that vanishes without a word: its whole browser killed with SIGKILL (no DTLS close
// alert, no signaling message, no ICE goodbye). The device must notice through its ICE
// consent / disconnect timeouts and free the session (its "session closed" line naming the
// peer, and "no viewers left"), within 45 s; a new viewer can then join and decode.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {
  startProgram, openViewer, waitForDecodedVideo, withDiagnostics, waitForLine, linesMatching, chromiumWrapper,
} = require('../browser/lib/harness');

const FREE_WITHIN_MS = 45_000;
const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

test('browser killed with SIGKILL: the device frees the session within its timeouts, a new viewer joins', { timeout: 150_000 }, async () => {
  const parts = { viewers: [] };
  await withDiagnostics(() => parts, async () => {
    const program = await startProgram();
    parts.program = program;
    cleanups.push(() => program.stop(3000));

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-faults-vanish-'));
    cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
    const wrapper = chromiumWrapper(dir);
    const doomed = await openViewer(program.url, 'doomed', { executablePath: wrapper.path });
    parts.viewers.push(doomed);
    cleanups.push(() => doomed.close());
    const stats = await waitForDecodedVideo(doomed, 30);
    const peer = await doomed.page.evaluate(() => window.kvsViewer.clientId);
    assert.ok(peer, 'the page has a client id');
    await waitForLine(program, new RegExp(`PeerConnected \\[${escape(peer)}\\]`), { timeoutMs: 10_000 });
    console.log(`# viewer ${peer} decoded ${stats.video.framesDecoded} frames; killing its browser (pid ${wrapper.pid()}) with SIGKILL`);

    const pid = wrapper.pid();
    const killedAt = Date.now();
    process.kill(-pid, 'SIGKILL'); // the browser's whole process group: no goodbye of any kind
    cleanups.push(async () => { try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ } });
    parts.viewers = [];

    const closed = await waitForLine(program, new RegExp(`PeerDisconnected \\[${escape(peer)}\\]: session closed`), {
      since: killedAt, timeoutMs: FREE_WITHIN_MS, what: `the session of ${peer} closed`,
    });
    const freedMs = closed.t - killedAt;
    const steps = linesMatching(program, new RegExp(`\\[${escape(peer)}\\]|StreamingStopped`), killedAt)
      .filter((l) => l.stream === 'stdout')
      .map((l) => `+${l.t - killedAt} ms ${l.text.trim()}`);
    console.log(`# device after the kill:\n#   ${steps.join('\n#   ')}`);
    console.log(`# session freed ${freedMs} ms after SIGKILL (bound ${FREE_WITHIN_MS} ms)`);
    await waitForLine(program, /StreamingStopped: no viewers left/, { since: killedAt, timeoutMs: 5_000 });

    const fresh = await openViewer(program.url, 'next');
    parts.viewers.push(fresh);
    cleanups.push(() => fresh.close());
    const joinedAt = Date.now();
    const next = await waitForDecodedVideo(fresh, 30);
    console.log(`# new viewer decoded ${next.video.framesDecoded} frames ${next.video.frameWidth}x${next.video.frameHeight} within ${Date.now() - joinedAt} ms`);
    assert.equal(next.video.frameWidth, 640);
    await fresh.close();
  });
});

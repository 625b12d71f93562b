// Faults in the signaling service while a viewer watches:
//   - `kvs-webrtc service` killed with SIGKILL (no GO_AWAY, connections just drop): media keeps
//     flowing peer to peer; the service restarted on the same port and state directory keeps
//     the channel (same ARN); the device reconnects on its backoff; a new viewer joins.
//   - the service stopped gracefully (SIGTERM: GO_AWAY to every connection) and started again:
//     the device reconnects without touching the live session.
// The service runs plain with --no-auth so the program's own viewer page (served here with a
// /config.json naming the service) can speak to it; the device reaches it through --endpoint
// exactly as it reaches Amazon KVS (it still signs; the service does not check).
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {
  startProcess, openViewer, waitForDecodedVideo, inboundStats, withDiagnostics, waitForLine, linesMatching,
  serveViewerPage, freePort, sleep,
} = require('../browser/lib/harness');

const TEST_TIMEOUT = { timeout: 150_000 };
const REGION = 'us-west-2';
const DEVICE_ENV = {
  AWS_ACCESS_KEY_ID: 'AKIDFAULTSTEST000001',
  AWS_SECRET_ACCESS_KEY: 'faults/test/secret0123456789',
  AWS_SESSION_TOKEN: '',
  AWS_PROFILE: '',
};

const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

async function startService(port, stateDir, channel) {
  const service = await startProcess(
    ['service', '--plain', '--no-auth', '--listen', `127.0.0.1:${port}`, '--state-dir', stateDir, '--region', REGION, '--channel', channel],
    { name: 'kvs-webrtc service', ready: /Data plane:\s*(ws\S+)/ },
  );
  cleanups.push(() => service.stop(3000));
  const arn = /Channel:\s+\S+\s+(arn:\S+)/.exec(service.stdout.text);
  assert.ok(arn, `the service printed no Channel line:\n${service.stdout.text}`);
  return { service, arn: arn[1], dataPlane: service.ready[1] };
}

/** framesDecoded every second in the background until stop(), which resolves with [{t, frames}]. */
function startSampler(viewer) {
  const samples = [];
  const start = Date.now();
  let running = true;
  const loop = (async () => {
    while (running) {
      const s = await inboundStats(viewer).catch(() => null);
      samples.push({ t: Date.now() - start, frames: s && s.video ? s.video.framesDecoded : 0 });
      await sleep(1000);
    }
  })();
  const stop = async () => { running = false; await loop; return samples; };
  // A test that fails before stopping it must not leave the loop keeping the process alive.
  cleanups.push(stop);
  return { stop };
}

/** framesDecoded every second for `ms`; returns the samples [{t, frames}]. */
async function sampleFrames(viewer, ms) {
  const sampler = startSampler(viewer);
  await sleep(ms);
  return sampler.stop();
}

/** Assert every 2 s window of `samples` saw new frames, and the mean rate is above `minFps`. */
function assertKeptDecoding(samples, minFps, label) {
  const first = samples[0];
  const last = samples[samples.length - 1];
  const fps = (last.frames - first.frames) / ((last.t - first.t) / 1000);
  console.log(`# ${label}: framesDecoded ${first.frames} -> ${last.frames} over ${((last.t - first.t) / 1000).toFixed(1)} s (${fps.toFixed(1)} fps)`);
  for (let i = 2; i < samples.length; i++) {
    assert.ok(samples[i].frames > samples[i - 2].frames,
      `${label}: no frame decoded between ${samples[i - 2].t} ms and ${samples[i].t} ms: ${JSON.stringify(samples)}`);
  }
  assert.ok(fps > minFps, `${label}: decoded ${fps.toFixed(1)} fps, expected > ${minFps}`);
}

async function setUp(parts, channel) {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-faults-service-'));
  cleanups.push(async () => fs.rmSync(stateDir, { recursive: true, force: true }));
  const port = await freePort();
  const first = await startService(port, stateDir, channel);
  parts.service = first.service;
  const device = await startProcess(
    ['--endpoint', `http://127.0.0.1:${port}`, '--region', REGION, '--channel', channel, '--media-bind', '127.0.0.1'],
    { name: 'kvs-webrtc device', ready: /SignalingConnected/, env: DEVICE_ENV },
  );
  parts.device = device;
  cleanups.push(() => device.stop(3000));
  const page = await serveViewerPage({
    signalingUrl: first.dataPlane, channelArn: first.arn, channelName: channel, region: REGION, iceServers: [],
  });
  cleanups.push(page.close);
  return { stateDir, port, first, device, page };
}

/** withDiagnostics, printing the (latest) service's output besides the device's. */
async function run(parts, body) {
  return withDiagnostics(() => {
    if (parts.service) console.error(parts.service.dump('kvs-webrtc service (latest)'));
    return { program: parts.device, viewers: parts.viewers };
  }, body);
}

test('service killed with SIGKILL and restarted: media keeps flowing, the device reconnects, the channel survives, a new viewer joins', TEST_TIMEOUT, async () => {
  const parts = { viewers: [] };
  await run(parts, async () => {
    const channel = 'faults-kill9';
    const { stateDir, port, first, device, page } = await setUp(parts, channel);
    const viewer = await openViewer(page.url, 'before-kill');
    parts.viewers.push(viewer);
    cleanups.push(() => viewer.close());
    await waitForDecodedVideo(viewer, 30);

    const killedAt = Date.now();
    first.service.child.kill('SIGKILL');
    await first.service.exited;
    // The device notices (its WebSocket drops) and schedules a retry on its backoff.
    const disc = await waitForLine(device, /SignalingDisconnected/, { since: killedAt, stream: 'stdout', timeoutMs: 20_000 });
    const sched = await waitForLine(device, /SignalingReconnectScheduled/, { since: killedAt, stream: 'stdout', timeoutMs: 20_000 });
    console.log(`# device: SignalingDisconnected ${disc.t - killedAt} ms after SIGKILL; "${sched.text.trim()}" after ${sched.t - killedAt} ms`);
    assert.match(sched.text, /retrying signaling in 5 s/, 'the first retry waits the initial 5 s backoff');

    // Media is peer to peer: the viewer keeps decoding with no service at all.
    const during = await sampleFrames(viewer, 8000);
    assertKeptDecoding(during, 10, 'viewer while the service is dead');

    const restartedAt = Date.now();
    const second = await startService(port, stateDir, channel);
    parts.service = second.service;
    console.log(`# channel ARN before ${first.arn}, after restart ${second.arn}`);
    assert.equal(second.arn, first.arn, 'the channel (and its ARN) survived the restart');
    const reconnected = await waitForLine(device, /SignalingConnected/, { since: restartedAt, timeoutMs: 70_000 });
    const tries = linesMatching(device, /SignalingConnecting/, killedAt).map((l) => `+${l.t - killedAt} ms`);
    console.log(`# device connect attempts after the kill at: ${tries.join(', ')}`);
    const attempts = linesMatching(device, /SignalingReconnectScheduled/, killedAt).filter((l) => l.stream === 'stdout').map((l) => `+${l.t - killedAt} ms ${l.text.trim()}`);
    console.log(`# device retries since the kill:\n#   ${attempts.join('\n#   ')}`);
    console.log(`# device reconnected ${reconnected.t - restartedAt} ms after the restart (${reconnected.t - killedAt} ms after the kill)`);

    const after = await sampleFrames(viewer, 3000);
    assertKeptDecoding(after, 10, 'first viewer after the restart');
    assert.equal(linesMatching(device, /PeerDisconnected|PeerFailed/, killedAt).length, 0,
      'the live session was not touched by the signaling outage');

    const fresh = await openViewer(page.url, 'after-restart');
    parts.viewers.push(fresh);
    cleanups.push(() => fresh.close());
    const joinedAt = Date.now();
    const stats = await waitForDecodedVideo(fresh, 30);
    console.log(`# new viewer decoded ${stats.video.framesDecoded} frames ${stats.video.frameWidth}x${stats.video.frameHeight} within ${Date.now() - joinedAt} ms of opening`);
    assert.equal(stats.video.frameWidth, 640);
    await fresh.close();
    await viewer.close();
  });
});

test('service stopped gracefully (GO_AWAY) and restarted: the device reconnects, the live session keeps decoding', TEST_TIMEOUT, async () => {
  const parts = { viewers: [] };
  await run(parts, async () => {
    const channel = 'faults-goaway';
    const { stateDir, port, first, device, page } = await setUp(parts, channel);
    const viewer = await openViewer(page.url, 'across-go-away');
    parts.viewers.push(viewer);
    cleanups.push(() => viewer.close());
    await waitForDecodedVideo(viewer, 30);
    const sampler = startSampler(viewer);
    await sleep(2000);

    const stoppedAt = Date.now();
    const exit = await first.service.stop(10_000);
    assert.equal(exit.killed, false, 'the service stopped on SIGTERM within 10 s');
    const goAway = await waitForLine(device, /GO_AWAY/, { since: stoppedAt, stream: 'stdout', timeoutMs: 10_000 });
    console.log(`# device: "${goAway.text.trim()}" ${goAway.t - stoppedAt} ms after SIGTERM`);
    // GO_AWAY means "reconnect now": the first attempt goes out at once, not after the 5 s backoff
    // a lost connection waits (it fails here — the service is gone — and then backs off).
    // Ordered within one pipe: stdout and stderr arrive separately, so the attempt is looked for
    // after the GO_AWAY line of the same stream (the log on stderr carries both).
    const goAwayLogged = await waitForLine(device, /GO_AWAY from signaling/, { since: stoppedAt, stream: 'stderr', timeoutMs: 10_000 });
    const attempt = await waitForLine(device, /SignalingConnecting/, {
      since: goAwayLogged.t, stream: 'stderr', timeoutMs: 2000, what: 'a reconnect attempt right after GO_AWAY (no backoff)',
    });
    console.log(`# device: first reconnect attempt ${attempt.t - goAwayLogged.t} ms after GO_AWAY`);
    const seen = await viewer.page.evaluate(() => window.kvsViewer.messages.slice(-5));
    console.log(`# viewer's last signaling messages: ${JSON.stringify(seen)}`);

    const restartedAt = Date.now();
    const second = await startService(port, stateDir, channel);
    parts.service = second.service;
    assert.equal(second.arn, first.arn, 'same channel ARN after the restart');
    const reconnected = await waitForLine(device, /SignalingConnected/, { since: restartedAt, timeoutMs: 70_000 });
    const events = linesMatching(device, /SignalingReconnectScheduled|SignalingDisconnected|SignalingError|SignalingConnected/, stoppedAt)
      .filter((l) => l.stream === 'stdout')
      .map((l) => `+${l.t - stoppedAt} ms ${l.text.trim()}`);
    console.log(`# device since SIGTERM:\n#   ${events.join('\n#   ')}`);
    console.log(`# device reconnected ${reconnected.t - stoppedAt} ms after SIGTERM (${reconnected.t - restartedAt} ms after the restart)`);
    await sleep(3000);
    const samples = await sampler.stop();
    assertKeptDecoding(samples, 10, 'viewer from 2 s before SIGTERM to 3 s after the reconnect');
    assert.equal(linesMatching(device, /PeerDisconnected|PeerFailed/, stoppedAt).length, 0,
      'the live session was not touched by GO_AWAY');
    await viewer.close();
  });
});

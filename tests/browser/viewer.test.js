// End-to-end: the real `kvs-webrtc` program (embedded signaling + device + viewer page) viewed by
// real headless Chromium. Every assertion is about what a user gets: frames decoded at the
// device's resolution, audio arriving, data-channel bytes echoed intact, a refusal explained.
//
// Run: `node --test tests/browser/` after `cargo build --release -p kvs-webrtc`
// (scripts/test.sh does both). KVS_WEBRTC_BIN points at another build of the program.
'use strict';

const { test, after } = require('node:test');

// Upper bound per test, so a hang cannot eat the CI budget; the waits inside are 30 s each.
const TEST_TIMEOUT = { timeout: 180_000 };
const assert = require('node:assert/strict');
const {
  startProgram,
  openViewer,
  waitInPage,
  inboundStats,
  waitForDecodedVideo,
  withDiagnostics,
  sleep,
} = require('./lib/harness');

// Anything left running by a failed test is stopped before the runner exits.
const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});
function track(closeable, stop) {
  cleanups.push(stop);
  return closeable;
}

async function start(extraArgs) {
  const program = await startProgram(extraArgs);
  return track(program, () => program.stop(2000));
}

async function viewer(url, name) {
  const v = await openViewer(url, name);
  return track(v, () => v.close());
}

/** Frames decoded now and a little later; asserts decoding is still progressing. */
async function assertStillDecoding(v, what) {
  const before = (await inboundStats(v)).video;
  assert.ok(before, `${what}: no inbound video in getStats()`);
  await waitInPage(
    v,
    `${what}: framesDecoded to grow past ${before.framesDecoded}`,
    async (n) => {
      const report = await window.kvsViewer.pc.getStats();
      let grew = false;
      report.forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'video' && r.framesDecoded > n + 15) grew = true;
      });
      return grew;
    },
    before.framesDecoded,
  );
}

test('one viewer: 640x480 H.264 video decodes, audio arrives, data channel echoes bytes intact', TEST_TIMEOUT, async () => {
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    program = await start([]);
    const config = await (await fetch(new URL('/config.json', program.url))).json();
    assert.match(config.signalingUrl, /^wss?:\/\//, '/config.json names a WebSocket signaling URL');
    assert.ok(config.channelArn, '/config.json names a channel ARN');

    v = await viewer(program.url, 'A');
    const stats = await waitForDecodedVideo(v, 10);
    assert.equal(stats.video.frameWidth, 640, 'decoded frame width');
    assert.equal(stats.video.frameHeight, 480, 'decoded frame height');
    assert.match(stats.video.mimeType || '', /H264/i, 'negotiated video codec');

    await waitInPage(v, 'audio inbound-rtp packetsReceived > 0', async () => {
      const report = await window.kvsViewer.pc.getStats();
      let n = 0;
      report.forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') n = r.packetsReceived || 0;
      });
      return n > 0;
    });

    // The <video> element really plays the stream (what the user sees), not just the stats.
    await waitInPage(v, 'the <video> element to play at 640x480', () => {
      const el = document.getElementById('remote-video');
      return el.videoWidth === 640 && el.videoHeight === 480 && el.currentTime > 0 && !el.paused;
    });

    // Muted autoplay, and the unmute button turns the sound on.
    assert.equal(await v.page.evaluate(() => document.getElementById('remote-video').muted), true, 'starts muted (autoplay)');
    await v.page.click('#unmute-btn');
    assert.equal(await v.page.evaluate(() => document.getElementById('remote-video').muted), false, 'unmuted after the click');

    const ttff = await waitInPage(v, 'the page to measure time to first frame', () => window.kvsViewer.timeToFirstFrameMs);
    const via = await v.page.evaluate(() => window.kvsViewer.firstFrameVia);
    console.log(`time to first frame (offer sent -> first frame rendered): ${ttff} ms (via ${via})`);

    // Data channel: binary bytes (every byte value) and UTF-8 text come back unchanged.
    await waitInPage(v, 'the data channel to open', () => window.kvsViewer.dataChannel && window.kvsViewer.dataChannel.readyState === 'open');
    const sentBytes = Array.from({ length: 1024 }, (_, i) => (i * 7 + (i >> 8)) & 0xff);
    const binaryEcho = await v.page.evaluate(async (bytes) => {
      const echo = await Promise.race([
        window.kvsViewer.sendData(new Uint8Array(bytes)),
        new Promise((_, reject) => setTimeout(() => reject(new Error('no echo within 10 s')), 10000)),
      ]);
      return echo;
    }, sentBytes);
    assert.equal(binaryEcho.binary, true, 'binary message echoed as binary');
    assert.deepEqual(binaryEcho.bytes, sentBytes, 'echoed bytes equal the sent bytes');
    assert.ok(binaryEcho.rttMs >= 0, 'round trip measured');

    const text = 'héllo from the browser ✓ 🎥';
    const textEcho = await v.page.evaluate(async (t) => {
      return Promise.race([
        window.kvsViewer.sendData(t),
        new Promise((_, reject) => setTimeout(() => reject(new Error('no echo within 10 s')), 10000)),
      ]);
    }, text);
    assert.equal(textEcho.binary, false, 'text message echoed as text');
    assert.equal(textEcho.text, text, 'echoed text equals the sent text');
    console.log(`data-channel round trip: ${binaryEcho.rttMs} ms (1 KiB binary), ${textEcho.rttMs} ms (text)`);

    // The same through the page's own console form, as a user would.
    await v.page.fill('#dc-input', 'typed by a user');
    await v.page.click('#dc-send');
    await waitInPage(v, 'the typed message to be echoed into the data-channel log', () => {
      return Array.from(document.querySelectorAll('#dc-log li.dc-echo .msg')).some((e) => e.textContent === 'typed by a user');
    });

    // The stats panel shows live figures.
    await waitInPage(v, 'the stats panel to show 640 × 480 and an RTT', () => {
      const res = document.getElementById('stat-resolution').textContent;
      const rtt = document.getElementById('stat-rtt').textContent;
      return res.includes('640') && res.includes('480') && /ms/.test(rtt);
    });

    await v.close();
    const exit = await program.stop(10_000);
    assert.equal(exit.killed, false, 'kvs-webrtc stopped by itself within 10 s of SIGTERM');
    assert.equal(exit.code, 0, `kvs-webrtc exit status after SIGTERM (${JSON.stringify(exit)})`);
  });
});

test('two viewers at once both decode video', TEST_TIMEOUT, async () => {
  let program;
  let a;
  let b;
  await withDiagnostics(() => ({ program, viewers: [a, b] }), async () => {
    program = await start([]);
    [a, b] = await Promise.all([viewer(program.url, 'A'), viewer(program.url, 'B')]);
    const [sa, sb] = await Promise.all([waitForDecodedVideo(a, 10), waitForDecodedVideo(b, 10)]);
    for (const [name, s] of [['A', sa], ['B', sb]]) {
      assert.equal(s.video.frameWidth, 640, `viewer ${name} frame width`);
      assert.equal(s.video.frameHeight, 480, `viewer ${name} frame height`);
    }
    const ids = await Promise.all([a, b].map((v) => v.page.evaluate(() => window.kvsViewer.clientId)));
    assert.notEqual(ids[0], ids[1], 'viewers use distinct client ids');
    // Both keep decoding while the other is connected.
    await Promise.all([assertStillDecoding(a, 'viewer A'), assertStillDecoding(b, 'viewer B')]);
    await Promise.all([a.close(), b.close()]);
    await program.stop();
  });
});

test('with --max-viewers 1 a second viewer is refused with a visible reason; the first keeps decoding', TEST_TIMEOUT, async () => {
  let program;
  let first;
  let second;
  await withDiagnostics(() => ({ program, viewers: [first, second] }), async () => {
    program = await start(['--max-viewers', '1']);
    first = await viewer(program.url, 'first');
    await waitForDecodedVideo(first, 5);

    second = await viewer(program.url, 'second');
    await waitInPage(second, 'the page to report the refusal (state "refused")', () => window.kvsViewer.state === 'refused');
    const banner = second.page.locator('#banner');
    assert.ok(await banner.isVisible(), 'the refusal banner is visible');
    const bannerText = (await banner.textContent()).trim();
    const reason = await second.page.evaluate(() => window.kvsViewer.error && window.kvsViewer.error.reason);
    assert.ok(reason && reason.length > 0, 'the refusal carries a reason');
    assert.ok(bannerText.includes(reason), `the banner shows the reason (banner: "${bannerText}", reason: "${reason}")`);
    console.log(`refusal shown to the second viewer: ${bannerText.replace(/\s+/g, " ")}`);
    const secondVideo = (await inboundStats(second)) || { video: null };
    assert.ok(!secondVideo.video || secondVideo.video.framesDecoded === 0, 'the refused viewer decodes nothing');

    await assertStillDecoding(first, 'the first viewer after the refusal');
    assert.equal(await first.page.evaluate(() => window.kvsViewer.state), 'connected', 'first viewer still connected');
    await Promise.all([first.close(), second.close()]);
    await program.stop();
  });
});

test('the page explains when the signaling service is unreachable', TEST_TIMEOUT, async () => {
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    program = await start([]);
    v = await viewer(program.url, 'A');
    await waitInPage(v, 'the viewer to connect', () => window.kvsViewer.state === 'connected');
    await program.stop();
    await v.page.click('#reconnect-btn');
    await waitInPage(v, 'the page to report signaling as unreachable', () => window.kvsViewer.state === 'signaling-error');
    const banner = v.page.locator('#banner');
    assert.ok(await banner.isVisible(), 'an error banner is visible');
    assert.match(await banner.textContent(), /kvs-webrtc/, 'the banner hints at starting kvs-webrtc');
    await sleep(100);
    await v.close();
  });
});

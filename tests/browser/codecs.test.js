// End-to-end codecs: the real `kvs-webrtc` program streaming a VP8 IVF file and an H.265
// Annex-B file (both made here by Debian's ffmpeg) to real headless Chromium.
//
// - VP8: Chromium decodes it at the file's size, with the codec getStats() names video/VP8,
//   and keeps decoding across the file's loop.
// - H.265: the device declares only H.265. Debian's Chromium cannot receive H.265 (its
//   receiver capabilities list no video/H265; checked and printed here), so its offer must be
//   refused with the reason shown on the page — not answered into a black picture. Should a
//   Chromium that can receive H.265 run this test, it asserts the picture decodes instead.
//
// Run: `node --test --test-concurrency=1 tests/browser/codecs.test.js` after
// `cargo build --release -p kvs-webrtc`.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {
  startProgram,
  openViewer,
  waitInPage,
  waitForLine,
  inboundStats,
  waitForDecodedVideo,
  withDiagnostics,
} = require('./lib/harness');

const TEST_TIMEOUT = { timeout: 180_000 };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-codecs-'));

const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
  fs.rmSync(tmp, { recursive: true, force: true });
});
function track(closeable, stop) {
  cleanups.push(stop);
  return closeable;
}

function ffmpeg(args) {
  execFileSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
}

/** The video codecs this Chromium can receive (RTCRtpReceiver.getCapabilities). */
async function receivableVideoCodecs(v) {
  return v.page.evaluate(() => [...new Set(RTCRtpReceiver.getCapabilities('video').codecs.map((c) => c.mimeType))]);
}

test('VP8: Chromium decodes a VP8 IVF source at its size (352x288, video/VP8) and across its loop', TEST_TIMEOUT, async () => {
  const ivf = path.join(tmp, 'testsrc.ivf');
  ffmpeg(['-f', 'lavfi', '-i', 'testsrc=size=352x288:rate=15', '-c:v', 'libvpx', '-t', '4', '-f', 'ivf', ivf]);
  const probe = execFileSync('ffprobe', ['-v', 'error', '-count_frames', '-show_entries', 'stream=codec_name,nb_read_frames', '-of', 'csv=p=0', ivf]).toString().trim();
  assert.equal(probe, 'vp8,60', 'the source is 60 VP8 frames (4 s at 15 fps)');
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    program = track(await startProgram(['--vp8-file', ivf]), () => program.stop(2000));
    v = track(await openViewer(program.url, 'vp8'), () => v.close());
    const stats = await waitForDecodedVideo(v, 10);
    assert.equal(stats.video.frameWidth, 352, 'decoded frame width');
    assert.equal(stats.video.frameHeight, 288, 'decoded frame height');
    assert.equal(stats.video.mimeType, 'video/VP8', 'negotiated video codec');
    // Past the end of the 60-frame file: the loop keeps the decoder fed.
    const looped = await waitForDecodedVideo(v, 75);
    console.log(`VP8: ${looped.video.framesDecoded} frames decoded at ${looped.video.frameWidth}x${looped.video.frameHeight} (${looped.video.mimeType}), ${looped.video.packetsReceived} packets, ${looped.video.packetsLost} lost, ${looped.video.freezeCount} freezes`);
    assert.equal(looped.video.frameWidth, 352);
    await v.close();
    await program.stop();
  });
});

test('H.265: a Chromium that cannot receive H.265 is refused with the reason on the page', TEST_TIMEOUT, async () => {
  const hevc = path.join(tmp, 'testsrc.h265');
  ffmpeg(['-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=15', '-t', '2', '-c:v', 'libx265', '-preset', 'ultrafast',
    '-x265-params', 'keyint=15:repeat-headers=1:log-level=error', '-pix_fmt', 'yuv420p', '-f', 'hevc', hevc]);
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    program = track(await startProgram(['--h265-file', hevc, '--fps', '15']), () => program.stop(2000));
    v = track(await openViewer(program.url, 'hevc'), () => v.close());
    const codecs = await receivableVideoCodecs(v);
    console.log(`Chromium ${await v.browser.version()} can receive: ${codecs.join(', ')}`);
    if (codecs.includes('video/H265')) {
      // This Chromium has an H.265 decoder: then it must get the picture.
      const stats = await waitForDecodedVideo(v, 10);
      assert.equal(stats.video.mimeType, 'video/H265');
      assert.equal(stats.video.frameWidth, 320);
      console.log(`H.265 decoded: ${stats.video.framesDecoded} frames at ${stats.video.frameWidth}x${stats.video.frameHeight}`);
      return;
    }
    await waitInPage(v, 'the page to report the refusal (state "refused")', () => window.kvsViewer.state === 'refused');
    const error = await v.page.evaluate(() => window.kvsViewer.error);
    assert.equal(error.code, 'CODEC_UNSUPPORTED', 'the refusal code');
    assert.match(error.reason, /sends H265 video and the viewer cannot receive H265/, 'the reason names the codec');
    const banner = v.page.locator('#banner');
    assert.ok(await banner.isVisible(), 'the refusal banner is visible');
    const bannerText = (await banner.textContent()).trim().replace(/\s+/g, ' ');
    assert.ok(bannerText.includes(error.reason), `the banner shows the reason (banner: "${bannerText}")`);
    console.log(`refusal shown: ${bannerText}`);
    // The device says so too, as an event line and a log line.
    await waitForLine(program, /refus/i, { what: 'the device to report the refusal' });
    const stats = (await inboundStats(v)) || { video: null };
    assert.ok(!stats.video || stats.video.framesDecoded === 0, 'the refused viewer decodes nothing');
    await v.close();
    await program.stop();
  });
});

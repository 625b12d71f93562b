// Receive video, end to end: the real `kvs-webrtc` program and real headless Chromium sending
// its fake camera and microphone (`--use-fake-device-for-media-stream`;
// `--use-fake-ui-for-media-stream` grants the permission) through the viewer page's "Send my
// camera" (`?camera=1`). What a user cares about:
// - `--record-dir`: the session's recording opens in ffprobe (Debian ffmpeg) with H.264 video of
//   the fake camera's size, an Opus audio stream, and a duration close to the sending time;
// - `--video-player-cmd`: the device decodes the camera and its command receives whole I420
//   frames of that size;
// - meanwhile the viewer still plays the device's own video.
//
// Run: `node --test tests/browser/record.test.js` after `cargo build --release -p kvs-webrtc`.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { startProgram, openViewer, waitInPage, waitForDecodedVideo, withDiagnostics, sleep, waitForLine } = require('./lib/harness');

const TEST_TIMEOUT = { timeout: 180_000 };
const CAMERA_ARGS = ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'];
/** How long the camera is sent. */
const SEND_MS = 5000;
/** Allowed difference between the recording's duration and the sending time (the spec's bound). */
const DURATION_SLACK_S = 1.5;

const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-record-'));
cleanups.push(async () => fs.rmSync(tmp, { recursive: true, force: true }));

/** The page's outbound video stats: codec, size, frames sent. */
async function outboundVideo(v) {
  return v.page.evaluate(async () => {
    const report = await window.kvsViewer.pc.getStats();
    let out = null;
    report.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') out = { ...s };
    });
    if (!out) return null;
    const codec = out.codecId && report.get(out.codecId);
    return {
      mimeType: codec ? codec.mimeType : null,
      frameWidth: out.frameWidth,
      frameHeight: out.frameHeight,
      framesSent: out.framesSent || 0,
      framesEncoded: out.framesEncoded || 0,
      bytesSent: out.bytesSent || 0,
      qualityLimitationReason: out.qualityLimitationReason,
      pliCount: out.pliCount || 0,
    };
  });
}

function ffprobe(file) {
  const json = execFileSync('ffprobe', ['-v', 'error', '-show_streams', '-show_format', '-of', 'json', file], { encoding: 'utf8' });
  return JSON.parse(json);
}

test('send my camera: the device records it (ffprobe: h264 at the camera size, opus, duration) and decodes it for its video player', TEST_TIMEOUT, async () => {
  let program;
  let v;
  await withDiagnostics(() => ({ program, viewers: [v] }), async () => {
    const recDir = path.join(tmp, 'recordings');
    const yuv = path.join(tmp, 'player.yuv');
    program = await startProgram(['--record-dir', recDir, '--video-player-cmd', `cat >> '${yuv}'`]);
    cleanups.push(() => program.stop(5000));
    const url = `${program.url}${program.url.includes('?') ? '&' : '?'}camera=1`;
    v = await openViewer(url, 'camera', { browserArgs: CAMERA_ARGS });
    cleanups.push(() => v.close());

    // The device's own video still plays.
    await waitForDecodedVideo(v, 5);
    const answer = await v.page.evaluate(() => window.kvsViewer.pc.remoteDescription.sdp);
    assert.match(answer.split('m=video')[1].split('m=')[0], /a=sendrecv/, 'the device answers video sendrecv');
    assert.match(answer.split('m=audio')[1].split('m=')[0], /a=sendrecv/, 'the device answers audio sendrecv');

    // Sending starts with the first frame out.
    const first = await waitInPage(v, 'the camera to be sent', async () => {
      if (!window.kvsViewer.sendingCamera) return null;
      const report = await window.kvsViewer.pc.getStats();
      let sent = 0;
      report.forEach((s) => {
        if (s.type === 'outbound-rtp' && s.kind === 'video') sent = s.framesSent || 0;
      });
      return sent > 0 ? sent : null;
    });
    const sendStart = Date.now();
    const camera = await v.page.evaluate(() => {
      const s = window.kvsViewer.pc.getSenders().find((x) => x.track && x.track.kind === 'video');
      const { width, height } = s.track.getSettings();
      return { width, height };
    });
    await sleep(SEND_MS);
    const sent = await outboundVideo(v);
    await v.page.evaluate(() => window.kvsViewer.pc.close());
    const sendEnd = Date.now();
    const sendingSeconds = (sendEnd - sendStart) / 1000;
    console.log(`camera ${camera.width}x${camera.height}; sent for ${sendingSeconds.toFixed(2)} s (first poll saw ${first} frames): ${JSON.stringify(sent)}`);
    assert.match(sent.mimeType || '', /H264/i, 'the page sends H.264');
    assert.ok(sent.framesSent > 30, `frames sent: ${JSON.stringify(sent)}`);

    // The session ends; the recording is finished.
    const done = await waitForLine(program, /recording finished/, { timeoutMs: 45_000, what: 'a finished recording' });
    console.log(`device: ${done.text.trim()}`);
    const files = fs.readdirSync(recDir).filter((f) => f.endsWith('.mp4'));
    assert.equal(files.length, 1, `one recording: ${files}`);
    assert.match(files[0], /^\d{8}T\d{6}Z-[A-Za-z0-9_-]+\.mp4$/, 'named <UTC time>-<peer id>.mp4');
    const file = path.join(recDir, files[0]);
    const probe = ffprobe(file);
    const video = probe.streams.find((s) => s.codec_type === 'video');
    const audio = probe.streams.find((s) => s.codec_type === 'audio');
    const duration = Number(probe.format.duration);
    const summary = {
      bytes: fs.statSync(file).size,
      format: probe.format.format_name,
      duration,
      video: video && { codec: video.codec_name, width: video.width, height: video.height, profile: video.profile },
      audio: audio && { codec: audio.codec_name, sampleRate: audio.sample_rate, channels: audio.channels },
    };
    console.log(`recording ${files[0]}: ${JSON.stringify(summary)}`);
    assert.ok(video, 'a video stream');
    assert.equal(video.codec_name, 'h264');
    assert.deepEqual([video.width, video.height], [camera.width, camera.height], 'the fake camera size');
    assert.ok(audio, 'an audio stream');
    assert.equal(audio.codec_name, 'opus');
    assert.ok(Math.abs(duration - sendingSeconds) <= DURATION_SLACK_S, `duration ${duration} s vs ${sendingSeconds.toFixed(2)} s sent`);

    // Every frame of the recording decodes (ffmpeg reads the whole file).
    const decoded = Number(execFileSync('ffprobe', ['-v', 'error', '-count_frames', '-select_streams', 'v:0', '-show_entries', 'stream=nb_read_frames', '-of', 'csv=p=0', file], { encoding: 'utf8' }).trim());
    console.log(`ffprobe decoded ${decoded} video frames (${(decoded / duration).toFixed(1)} fps)`);
    assert.ok(decoded >= 2 * duration, `frames decoded: ${decoded} in ${duration} s`);

    // The video player got whole I420 frames of the camera size.
    // Stopped, the device closes the player's input and waits for the command: the file is whole.
    const exit = await program.stop(10_000);
    assert.ok(!exit.killed, 'the device stops on SIGTERM');
    const frameBytes = (camera.width * camera.height * 3) / 2;
    const yuvBytes = fs.existsSync(yuv) ? fs.statSync(yuv).size : 0;
    console.log(`video player: ${yuvBytes} bytes = ${yuvBytes / frameBytes} frames of ${camera.width}x${camera.height}`);
    assert.ok(yuvBytes > 0, 'the player received frames');
    assert.equal(yuvBytes % frameBytes, 0, `whole ${camera.width}x${camera.height} I420 frames (${yuvBytes} bytes)`);
  });
});

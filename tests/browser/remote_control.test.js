// Remote control end to end: the real program (`kvs-webrtc --rainmaker-config …`, the embedded
// default plus a RainMaker node) against Debian's mosquitto (mutual TLS, the certificate's CN as
// the user name, `pattern readwrite node/%u/#`), an independent MQTT client (mqtt.js from npm)
// as the cloud, and headless Chromium watching. Asserts what a viewer sees: `Resolution`
// changes the decoded frame size of the live session without reconnecting; `Bitrate` is
// followed by the received bitrate; `Stream` false ends the session with a visible reason
// within 1 s and refuses a new viewer; true lets a new viewer decode again. Prints the time from
// each write to its effect.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, execFileSync } = require('node:child_process');
const mqtt = require('mqtt');
const {
  startProcess, openViewer, waitForDecodedVideo, inboundStats, withDiagnostics, waitInPage, freePort, sleep,
} = require('./lib/harness');

const NODE_ID = 'rcnode01';
const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

function openssl(...args) {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

/** A CA, the broker's certificate (127.0.0.1) and client certificates (CN = MQTT user). */
function makeCerts(dir) {
  const p = (f) => path.join(dir, f);
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', p('ca.key'), '-out', p('ca.pem'), '-days', '2', '-subj', '/CN=rc-test-ca',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const issue = (name, ext) => {
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', p(`${name}.key`), '-out', p(`${name}.csr`), '-subj', `/CN=${name}`);
    fs.writeFileSync(p(`${name}.ext`), ext);
    openssl('x509', '-req', '-in', p(`${name}.csr`), '-CA', p('ca.pem'), '-CAkey', p('ca.key'),
      '-CAcreateserial', '-out', p(`${name}.pem`), '-days', '2', '-extfile', p(`${name}.ext`));
  };
  issue('broker', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  issue(NODE_ID, 'extendedKeyUsage=clientAuth\n');
  issue('cloud', 'extendedKeyUsage=clientAuth\n');
}

async function startBroker(dir, fixedPort) {
  const port = fixedPort || (await freePort());
  const p = (f) => path.join(dir, f);
  fs.writeFileSync(p('acl'), 'pattern readwrite node/%u/#\nuser cloud\ntopic readwrite node/#\n');
  fs.writeFileSync(p('mosquitto.conf'), [
    'per_listener_settings false',
    'allow_anonymous false',
    `listener ${port} 127.0.0.1`,
    `cafile ${p('ca.pem')}`,
    `certfile ${p('broker.pem')}`,
    `keyfile ${p('broker.key')}`,
    'require_certificate true',
    'use_identity_as_username true',
    `acl_file ${p('acl')}`,
    // As root mosquitto drops to the `mosquitto` user, which cannot read these keys.
    ...(process.getuid && process.getuid() === 0 ? ['user root'] : []),
    '',
  ].join('\n'));
  const broker = spawn('mosquitto', ['-c', p('mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  broker.stderr.on('data', (d) => { log += d; });
  const exited = new Promise((resolve) => broker.on('exit', resolve));
  cleanups.push(async () => broker.kill('SIGKILL'));
  const net = require('node:net');
  const deadline = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port}: ${log}`);
    await sleep(100);
  }
  return { port, async kill() { broker.kill('SIGKILL'); await exited; } };
}

async function cloudClient(dir, port) {
  const p = (f) => path.join(dir, f);
  const client = await mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, {
    clientId: 'cloud',
    ca: fs.readFileSync(p('ca.pem')),
    cert: fs.readFileSync(p('cloud.pem')),
    key: fs.readFileSync(p('cloud.key')),
    protocolVersion: 4,
    reconnectPeriod: 500,
  });
  cleanups.push(() => client.endAsync(true));
  const messages = [];
  client.on('message', (topic, payload) => messages.push({ t: Date.now(), topic, json: safeJson(payload) }));
  await client.subscribeAsync(`node/${NODE_ID}/#`, { qos: 1 });
  return {
    messages,
    async write(params) {
      const at = Date.now();
      await client.publishAsync(`node/${NODE_ID}/params/remote`, JSON.stringify({ Camera: params }), { qos: 1 });
      return at;
    },
    /** Waits for a `params/local` report containing `param` with `value`. */
    async reported(param, value, since) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const m = messages.find((x) => x.t >= since && x.topic === `node/${NODE_ID}/params/local`
          && x.json && x.json.Camera && x.json.Camera[param] === value);
        if (m) return m.t;
        if (Date.now() > deadline) throw new Error(`no report of ${param}=${value}; saw ${JSON.stringify(messages.slice(-5))}`);
        await sleep(50);
      }
    },
  };
}

function safeJson(buf) {
  try {
    return JSON.parse(buf.toString());
  } catch (e) {
    return null;
  }
}

async function frameSize(v) {
  const s = await inboundStats(v);
  return s && s.video ? `${s.video.frameWidth}x${s.video.frameHeight}` : null;
}

test('remote control over MQTT drives the live device: broker restart, resolution, bitrate, audio, viewer limit, name, stream off with a visible reason, on again', { timeout: 180_000 }, async () => {
  const parts = { viewers: [] };
  await withDiagnostics(() => parts, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-remote-'));
    cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
    makeCerts(dir);
    const broker = await startBroker(dir);
    const { port } = broker;
    const nodeToml = path.join(dir, 'node.toml');
    fs.writeFileSync(nodeToml, [
      '[rainmaker]',
      `broker = "mqtts://127.0.0.1:${port}"`,
      `node_id = "${NODE_ID}"`,
      `cert_file = "${path.join(dir, `${NODE_ID}.pem`)}"`,
      `key_file = "${path.join(dir, `${NODE_ID}.key`)}"`,
      `ca_file = "${path.join(dir, 'ca.pem')}"`,
      '',
    ].join('\n'));
    const cloud = await cloudClient(dir, port);
    const program = await startProcess(
      ['--listen', '127.0.0.1:0', '--media-bind', '127.0.0.1', '--rainmaker-config', nodeToml],
      { ready: /Viewer page:\s*(https?:\/\/\S+)/ },
    );
    program.url = program.ready[1];
    parts.program = program;
    cleanups.push(() => program.stop(3000));
    // The node announces itself: config and the initial state.
    const init = await (async () => {
      const deadline = Date.now() + 15_000;
      for (;;) {
        const m = cloud.messages.find((x) => x.topic === `node/${NODE_ID}/params/local/init`);
        if (m) return m.json;
        if (Date.now() > deadline) throw new Error('no init state from the node');
        await sleep(100);
      }
    })();
    assert.equal(init.Camera.Resolution, '640x480');
    assert.equal(init.Camera.Stream, true);

    const v = await openViewer(program.url, 'watcher');
    parts.viewers.push(v);
    cleanups.push(() => v.close());
    await waitForDecodedVideo(v, 10);
    assert.equal(await frameSize(v), '640x480');
    const clientId = await v.page.evaluate(() => window.kvsViewer.clientId);
    // The read-only Viewers param follows the live sessions.
    await cloud.reported('Viewers', 1, 0);

    // The broker restarts under a live session: video never stops, the node comes back and
    // republishes its state.
    const framesBefore = (await inboundStats(v)).video.framesDecoded;
    const killedAt = Date.now();
    await broker.kill();
    await sleep(1500);
    await startBroker(dir, port);
    const republished = await (async () => {
      const deadline = Date.now() + 30_000;
      for (;;) {
        const m = cloud.messages.find((x) => x.t > killedAt && x.topic === `node/${NODE_ID}/params/local/init`);
        if (m) return m.t;
        if (Date.now() > deadline) throw new Error('the node did not republish its init state after the broker restart');
        await sleep(100);
      }
    })();
    const framesAfter = (await inboundStats(v)).video.framesDecoded;
    const seconds = (Date.now() - killedAt) / 1000;
    console.log(`broker restart: init republished ${republished - killedAt} ms after the kill; ${framesAfter - framesBefore} frames decoded in ${seconds.toFixed(1)} s meanwhile`);
    assert.ok(framesAfter - framesBefore >= seconds * 20, `video kept playing: ${framesAfter - framesBefore} frames in ${seconds} s`);
    assert.equal(await v.page.evaluate(() => window.kvsViewer.pc.connectionState), 'connected');

    // Resolution: the same session's decoded frames change size; no reconnect.
    let at = await cloud.write({ Resolution: '320x240' });
    await waitInPage(v, 'decoded frames at 320x240', async () => {
      const report = await window.kvsViewer.pc.getStats();
      let ok = false;
      report.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video' && r.frameWidth === 320 && r.frameHeight === 240) ok = true; });
      return ok;
    }, undefined, 10_000);
    console.log(`write Resolution → 320x240 decoded in the live session: ${Date.now() - at} ms`);
    await cloud.reported('Resolution', '320x240', at);
    assert.equal(await v.page.evaluate(() => window.kvsViewer.clientId), clientId, 'same session');
    assert.equal(await v.page.evaluate(() => window.kvsViewer.pc.connectionState), 'connected');

    // Bitrate: the received bitrate follows (down to 200 kbit/s from ~1 Mbit/s).
    const rate = async (ms) => {
      const a = (await inboundStats(v)).video.bytesReceived;
      await sleep(ms);
      return (((await inboundStats(v)).video.bytesReceived - a) * 8) / (ms / 1000);
    };
    const before = await rate(2000);
    at = await cloud.write({ Bitrate: 200 });
    await cloud.reported('Bitrate', 200, at);
    let after;
    const deadline = Date.now() + 15_000;
    do {
      after = await rate(2000);
    } while (after > 300_000 && Date.now() < deadline);
    console.log(`write Bitrate 200 → received ${Math.round(before / 1000)} → ${Math.round(after / 1000)} kbit/s after ${Date.now() - at} ms`);
    assert.ok(after < 300_000 && after < before * 0.7, `received bitrate ${after} (was ${before})`);

    // Audio off: the live session's audio stops arriving; on: it comes back.
    const audioPackets = async () => (await inboundStats(v)).audio.packetsReceived;
    at = await cloud.write({ Audio: false });
    await cloud.reported('Audio', false, at);
    let last = await audioPackets();
    for (;;) {
      await sleep(200);
      const now = await audioPackets();
      if (now === last) break; // nothing new for 200 ms
      last = now;
      assert.ok(Date.now() - at < 5000, 'audio still arriving 5 s after Audio false');
    }
    console.log(`write Audio false → audio stops arriving after ≤ ${Date.now() - at} ms`);
    await sleep(1000);
    assert.ok((await audioPackets()) - last <= 2, 'no audio while Audio is false');
    at = await cloud.write({ Audio: true });
    await cloud.reported('Audio', true, at);
    const silentAt = await audioPackets();
    await waitInPage(v, 'audio again', async (n) => {
      const r = await window.kvsViewer.pc.getStats();
      let more = false;
      r.forEach((x) => { if (x.type === 'inbound-rtp' && x.kind === 'audio' && x.packetsReceived > n + 10) more = true; });
      return more;
    }, silentAt, 5000);
    console.log(`write Audio true → audio arriving again after ${Date.now() - at} ms`);

    // Max Viewers 1 with one viewer live: it keeps playing, a second page is refused.
    at = await cloud.write({ 'Max Viewers': 1 });
    await cloud.reported('Max Viewers', 1, at);
    console.log(`write Max Viewers 1 → reported applied after ${Date.now() - at} ms`);
    const second = await openViewer(program.url, 'second');
    parts.viewers.push(second);
    cleanups.push(() => second.close());
    await waitInPage(second, 'the second viewer refused', () => window.kvsViewer.state === 'refused'
      && /SESSION_LIMIT/.test(window.kvsViewer.error.message), undefined, 10_000);
    await second.close();
    assert.equal(await v.page.evaluate(() => window.kvsViewer.pc.connectionState), 'connected');
    at = await cloud.write({ 'Max Viewers': 10, Name: 'Porch' });
    await cloud.reported('Name', 'Porch', at);
    console.log(`write Name → reported after ${Date.now() - at} ms`);

    // Stream off: the live session ends with a visible reason within 1 s.
    at = await cloud.write({ Stream: false });
    const shown = await waitInPage(v, 'the page to show why the session ended', () => {
      const h = window.kvsViewer;
      return h.state === 'refused' && h.error && /STREAM_OFF/.test(h.error.message) ? h.error.message : null;
    }, undefined, 5_000);
    const endedMs = Date.now() - at;
    console.log(`write Stream false → the page shows "${shown}" after ${endedMs} ms`);
    assert.ok(endedMs <= 1000 + 250 /* polling */, `reason shown after ${endedMs} ms`);
    await cloud.reported('Stream', false, at);
    const refused = await openViewer(program.url, 'while-off');
    parts.viewers.push(refused);
    cleanups.push(() => refused.close());
    await waitInPage(refused, 'a refusal while streaming is off', () => window.kvsViewer.state === 'refused', undefined, 10_000);
    await refused.close();
    await v.close();

    // Stream on: a new viewer decodes again (at the size set earlier).
    at = await cloud.write({ Stream: true });
    await cloud.reported('Stream', true, at);
    const again = await openViewer(program.url, 'after-on');
    parts.viewers.push(again);
    cleanups.push(() => again.close());
    await waitForDecodedVideo(again, 10);
    assert.equal(await frameSize(again), '320x240');
    console.log(`write Stream true → a new viewer decodes ${Date.now() - at} ms later (page load included)`);
  });
});

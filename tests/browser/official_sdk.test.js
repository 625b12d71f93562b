// Interoperability with software we did not write, end to end over TLS and SigV4:
//   - `kvs-webrtc service` (the local KVS-compatible service) on HTTPS/WSS with a key,
//   - our device joining it exactly as it would join Amazon KVS (`--endpoint`, `--ca-file`,
//     credentials from the standard AWS_* variables),
//   - headless Chromium running a viewer page built only from the official KVS WebRTC SDK for
//     JavaScript (its npm dist bundle) and the AWS SDK for JavaScript v3 (bundled here with
//     esbuild), trusting the service's certificate by its public-key hash.
// It asserts what a user of those SDKs sees: the channel found, the video decoded at 640x480,
// audio arriving.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const tls = require('node:tls');
const { spawn } = require('node:child_process');
const esbuild = require('esbuild');
const { startProcess, launchBrowser, waitInPage, withDiagnostics, TailBuffer } = require('./lib/harness');

const TEST_TIMEOUT = { timeout: 180_000 };
const REGION = 'us-west-2';
const CREDENTIALS = {
  accessKeyId: 'AKIDOFFICIALSDK0001',
  secretAccessKey: 'official/sdk+browser/secret0123456789',
};
const PAGE_DIR = path.join(__dirname, 'official-sdk');
const KVS_SDK_BUNDLE = require.resolve('amazon-kinesis-video-streams-webrtc/dist/kvs-webrtc.min.js');

const cleanups = [];
after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

/** Bundle the AWS SDK v3 clients for the browser; returns the file's path. */
function bundleAwsSdk(dir) {
  const outfile = path.join(dir, 'aws-sdk.js');
  esbuild.buildSync({
    entryPoints: [path.join(PAGE_DIR, 'entry.js')],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'es2020',
    minify: true,
    logLevel: 'error',
    outfile,
  });
  return outfile;
}

/** Serve the page, its script, the official SDK's bundle and the AWS SDK bundle. */
async function servePage(awsSdkPath) {
  const files = {
    '/': [path.join(PAGE_DIR, 'index.html'), 'text/html'],
    '/viewer.js': [path.join(PAGE_DIR, 'viewer.js'), 'text/javascript'],
    '/kvs-webrtc.min.js': [KVS_SDK_BUNDLE, 'text/javascript'],
    '/aws-sdk.js': [awsSdkPath, 'text/javascript'],
  };
  const server = http.createServer((req, res) => {
    const entry = files[req.url.split('?')[0]];
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': entry[1] });
    fs.createReadStream(entry[0]).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}/`, close: () => new Promise((r) => server.close(r)) };
}

/** base64(SHA-256(SubjectPublicKeyInfo)) of the certificate the TLS endpoint presents. */
async function spkiHash(host, port) {
  const socket = await new Promise((resolve, reject) => {
    const s = tls.connect({ host, port, rejectUnauthorized: false, servername: 'localhost' }, () => resolve(s));
    s.on('error', reject);
  });
  const cert = socket.getPeerX509Certificate();
  socket.end();
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  return crypto.createHash('sha256').update(spki).digest('base64');
}

/** A free local port (TCP and UDP are both free in practice on this loopback). */
async function freePort() {
  const server = http.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * coturn with the TURN REST API scheme (`use-auth-secret`), relaying on loopback; with `tls`,
 * also TURN over TLS with a certificate for 127.0.0.1 made here (`certFile` to trust it).
 */
async function startCoturn(secret, dir, { tls = false } = {}) {
  const port = await freePort();
  const tlsPort = await freePort();
  const certFile = path.join(dir, 'turn-cert.pem');
  const tlsArgs = ['--no-tls'];
  if (tls) {
    const keyFile = path.join(dir, 'turn-key.pem');
    require('node:child_process').execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
      '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-addext', 'basicConstraints=critical,CA:FALSE'], { stdio: 'pipe' });
    tlsArgs.splice(0, 1, `--tls-listening-port=${tlsPort}`, `--cert=${certFile}`, `--pkey=${keyFile}`);
  }
  const args = ['-n', '--listening-ip=127.0.0.1', `--listening-port=${port}`, '--relay-ip=127.0.0.1',
    '--min-port=49160', '--max-port=49400', '--use-auth-secret', `--static-auth-secret=${secret}`,
    '--realm=kvs-webrtc.local', '--allow-loopback-peers', '--no-cli', ...tlsArgs, '--no-dtls', '--fingerprint',
    '--log-file=stdout', '--simple-log', `--pidfile=${path.join(dir, 'turnserver.pid')}`, `--userdb=${path.join(dir, 'turndb')}`];
  const child = spawn('turnserver', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = new TailBuffer(64 * 1024);
  child.stderr.on('data', (d) => log.push(d));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`coturn did not start:\n${log.text}`)), 15_000);
    child.on('error', (e) => reject(new Error(`cannot start turnserver (Debian package coturn): ${e.message}`)));
    child.stdout.on('data', (d) => {
      log.push(d);
      if (/Total General servers/.test(log.text)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return {
    uri: `turn:127.0.0.1:${port}?transport=udp`,
    tcpUri: `turn:127.0.0.1:${port}?transport=tcp`,
    tlsUri: `turns:127.0.0.1:${tlsPort}?transport=tcp`,
    certFile,
    log,
    stop: () => new Promise((resolve) => {
      child.once('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

/**
 * The local service (TLS + SigV4, extra `serviceArgs`), our device pointed at it like at KVS,
 * the official-SDK page, and a Chromium trusting the service's certificate.
 */
async function startStack(parts, stateDir, channel, serviceArgs = [], deviceArgs = []) {
  const service = await startProcess(
    ['service', '--listen', '127.0.0.1:0', '--state-dir', stateDir, '--region', REGION, '--channel', channel, ...serviceArgs],
    {
      name: 'kvs-webrtc service',
      ready: /Control plane: (https:\/\/\S+)/,
      env: { KVS_SERVICE_ACCESS_KEY_ID: CREDENTIALS.accessKeyId, KVS_SERVICE_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey },
    },
  );
  parts.service = service;
  cleanups.push(() => service.stop(3000));
  const controlPlane = service.ready[1];
  const { hostname, port } = new URL(controlPlane);

  const device = await startProcess(
    ['--endpoint', controlPlane, '--ca-file', path.join(stateDir, 'ca.pem'), '--region', REGION,
      '--channel', channel, '--media-bind', '127.0.0.1', ...deviceArgs],
    {
      name: 'kvs-webrtc device',
      ready: /SignalingConnected/,
      env: {
        AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
        AWS_SESSION_TOKEN: '',
        AWS_PROFILE: '',
      },
    },
  );
  parts.device = device;
  cleanups.push(() => device.stop(3000));

  // The page, served from another origin than the service (CORS on the way).
  const page = await servePage(bundleAwsSdk(stateDir));
  cleanups.push(page.close);
  const hash = await spkiHash(hostname, Number(port));
  const browser = await launchBrowser([`--ignore-certificate-errors-spki-list=${hash}`]);
  cleanups.push(() => browser.close());
  const tab = await (await browser.newContext()).newPage();
  const consoleLog = new TailBuffer(64 * 1024);
  tab.on('console', (m) => consoleLog.push(`[${m.type()}] ${m.text()}\n`));
  tab.on('pageerror', (e) => consoleLog.push(`[pageerror] ${e.stack || e.message}\n`));
  await tab.goto(page.url, { waitUntil: 'load' });
  const viewer = {
    name: 'official-sdk',
    page: tab,
    async describe() {
      return tab.evaluate(() => JSON.stringify({ state: window.sdkViewer.state, error: window.sdkViewer.error, log: window.sdkViewer.log.slice(-30) }))
        .catch((e) => `(page not readable: ${e.message})`)
        .then((s) => `${s}\n----- console -----\n${consoleLog.text}`);
    },
  };
  return { controlPlane, device, viewer };
}

/** Start the page's viewer and wait for decoded video and audio; returns what getStats says. */
async function viewAndDecode(stack, channel, clientId, extra = {}) {
  await stack.viewer.page.evaluate((config) => window.startViewer(config), {
    region: REGION,
    endpoint: stack.controlPlane,
    credentials: CREDENTIALS,
    channelName: channel,
    clientId,
    ...extra,
  });
  return waitInPage(stack.viewer, 'getStats() to show 10 decoded 640x480 frames and audio packets', async () => {
    const v = window.sdkViewer;
    if (v.error) throw new Error(v.error);
    if (!v.pc) return false;
    const report = await v.pc.getStats();
    let video = null;
    let audio = null;
    let pair = null;
    report.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') video = r;
      if (r.type === 'inbound-rtp' && r.kind === 'audio') audio = r;
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = report.get(r.selectedCandidatePairId);
    });
    if (!video || !audio || video.framesDecoded < 10 || audio.packetsReceived < 10) return false;
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    return {
      remoteCandidateType: remote ? remote.candidateType : null,
      remoteAddress: remote ? `${remote.address}:${remote.port}` : null,
      framesDecoded: video.framesDecoded,
      width: video.frameWidth,
      height: video.frameHeight,
      audioPackets: audio.packetsReceived,
      localCandidateType: local ? local.candidateType : null,
      log: v.log,
    };
  }, undefined, 45_000);
}

function freshDir(tag) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `kvs-${tag}-`));
  cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('a viewer page made of the official KVS JS SDK and AWS SDK v3 decodes our device over TLS + SigV4', TEST_TIMEOUT, async () => {
  const stateDir = freshDir('official-sdk');
  const parts = {};
  await withDiagnostics(() => ({ program: parts.device || parts.service, viewers: [] }), async () => {
    const stack = await startStack(parts, stateDir, 'official-sdk-cam');
    const stats = await viewAndDecode(stack, 'official-sdk-cam', 'official-sdk-viewer');
    assert.equal(stats.width, 640);
    assert.equal(stats.height, 480);
    assert.ok(stats.log.some((l) => /channel arn:aws:kinesisvideo:us-west-2:\d{12}:channel\/official-sdk-cam\/\d+/.test(l)), stats.log.join('\n'));
    assert.ok(stats.log.some((l) => /endpoints .*"WSS":"wss:\/\//.test(l)), stats.log.join('\n'));
    // The device saw a viewer through signaling, with the client id the SDK sent.
    assert.match(stack.device.stdout.text, /PeerConnected \[official-sdk-viewer\]/);
  });
});

for (const transport of ['udp', 'tcp', 'tls']) {
  test(`a relay-only device streams through its own TURN allocation over ${transport} (coturn, credentials minted by the service)`, TEST_TIMEOUT, async () => {
    const stateDir = freshDir(`device-relay-${transport}`);
    const secret = crypto.randomBytes(16).toString('hex');
    const coturn = await startCoturn(secret, stateDir, { tls: transport === 'tls' });
    cleanups.push(coturn.stop);
    const uri = { udp: coturn.uri, tcp: coturn.tcpUri, tls: coturn.tlsUri }[transport];
    // The service hands out the one URI under test. The viewer asks coturn for its
    // server-reflexive address only: Chromium hides its host candidates behind mDNS names, and
    // the device needs one real address of the viewer to give it a TURN permission.
    const serviceArgs = ['--turn-uri', uri, '--turn-secret', secret];
    const deviceArgs = ['--relay-only', ...(transport === 'tls' ? ['--turn-ca-file', coturn.certFile] : [])];
    const parts = {};
    await withDiagnostics(() => ({ program: parts.device || parts.service, viewers: [] }), async () => {
      const stack = await startStack(parts, stateDir, `device-relay-${transport}`, serviceArgs, deviceArgs);
      const stun = coturn.uri.replace(/^turn:/, 'stun:').replace(/\?.*$/, '');
      const stats = await viewAndDecode(stack, `device-relay-${transport}`, 'direct-viewer', { iceServers: [{ urls: stun }] });
      assert.equal(stats.width, 640);
      const out = stack.device.stdout.text;
      // The device gathered a relayed address on coturn and its media goes from it, carried to
      // coturn over the transport asked for.
      const escaped = uri.replace(/[?.]/g, (c) => `\\${c}`);
      const gathered = out.match(new RegExp(`IceCandidateGathered: relay (127\\.0\\.0\\.1:\\d+) via ${escaped}`));
      assert.ok(gathered, out);
      assert.match(out, new RegExp(`IcePairSelected \\[direct-viewer\\]: local=relay/${transport} remote=\\w+ ${gathered[1]} -> `));
      // The browser's selected pair has the device's relayed address as its remote end.
      assert.equal(stats.remoteAddress, gathered[1], JSON.stringify(stats));
      assert.equal(stats.remoteCandidateType, 'relay', JSON.stringify(stats));
    });
  });
}

test('a relay-only viewer reaches our device through coturn with TURN credentials minted by the service', TEST_TIMEOUT, async () => {
  const stateDir = freshDir('turn-relay');
  const secret = crypto.randomBytes(16).toString('hex');
  const coturn = await startCoturn(secret, stateDir);
  cleanups.push(coturn.stop);
  const parts = {};
  await withDiagnostics(() => ({ program: parts.device || parts.service, viewers: [] }), async () => {
    const stack = await startStack(parts, stateDir, 'turn-cam', ['--turn-uri', coturn.uri, '--turn-secret', secret]);
    const stats = await viewAndDecode(stack, 'turn-cam', 'relay-viewer', { iceTransportPolicy: 'relay' });
    assert.equal(stats.width, 640);
    // The browser used only its TURN allocation: coturn accepted the minted credentials.
    assert.equal(stats.localCandidateType, 'relay', stats.log.join('\n'));
    assert.ok(stats.log.some((l) => /1 ICE servers/.test(l)), stats.log.join('\n'));
    assert.ok(stats.log.some((l) => /local candidate relay/.test(l)), stats.log.join('\n'));
    // Gathering alone, with the minted credentials and with a tampered password: coturn
    // allocates for the first and refuses the second.
    const probes = await stack.viewer.page.evaluate(async () => {
      const gather = async (server) => {
        const pc = new RTCPeerConnection({ iceServers: [server], iceTransportPolicy: 'relay' });
        const types = [];
        pc.onicecandidate = ({ candidate }) => { if (candidate) types.push(candidate.type); };
        const done = new Promise((resolve) => {
          pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') resolve(); };
        });
        pc.createDataChannel('probe');
        await pc.setLocalDescription(await pc.createOffer());
        await Promise.race([done, new Promise((r) => setTimeout(r, 15000))]);
        pc.close();
        return types;
      };
      const [server] = window.sdkViewer.iceServers;
      return { minted: await gather(server), tampered: await gather({ ...server, credential: `x${server.credential}` }) };
    });
    assert.deepEqual(probes.minted, ['relay'], JSON.stringify(probes));
    assert.deepEqual(probes.tampered, [], JSON.stringify(probes));
  }).catch((e) => {
    console.error(`----- coturn -----\n${coturn.log.text}`);
    throw e;
  });
});

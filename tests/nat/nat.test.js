// NAT traversal end to end (root only; run: node --test --test-concurrency=1 tests/nat/).
//
// A small Internet in network namespaces (lib/topology.js): the local KVS-compatible service and
// coturn on 203.0.113.1, the device behind one NAT router (192.0.2.2), headless Chromium running
// a viewer page made of the official KVS WebRTC JS SDK behind another (198.51.100.2). Each case
// builds its own topology, service, coturn, device and browser, and tears them down after.
//
// Cases (the matrix is printed at the end):
//   0  baseline: device LAN routed (no NAT), viewer behind a symmetric NAT (checks the set-up)
//   1  both behind endpoint-independent NATs -> connects without relay (srflx somewhere)
//   2  both behind symmetric NATs -> connects through a relay
//   3  device --relay-only -> the device's selected local candidate is relay
//   4a device --relay-only, UDP to the TURN server blocked from the device LAN -> TURN over TCP
//   4b ... and TCP 3478 blocked too -> TURN over TLS (turns:5349)
//   5  the service mints credentials coturn refuses -> TurnError from the device, srflx still works
//   6  the device's NAT (symmetric) is flushed (conntrack -F) mid-session -> video resumes within 3 s
//   6b the same with only the UDP mappings lost (conntrack -D -p udp; signaling stays up)
//   7  the viewer re-offers (restartIce, then a plain renegotiation) -> same RTCPeerConnection, frames go on
// Every case also fails if the device panicked (in any thread).
//
// What the device is expected to print (stdout, one event per line):
//   IcePairSelected [<peer>]: local=<host|srflx|prflx|relay>/<udp|tcp|tls> remote=<type> <local addr> -> <remote addr>
//   IceCandidateGathered: srflx <addr> from <stun uri>
//   IceCandidateGathered: relay <addr> via <turn uri>
//   TurnError (status N): <turn uri>: <reason with 401 or "refused the credentials">  ("(status N)" optional)
//   IceRestart [<peer>]: <why>
//
// Environment:
//   KVS_WEBRTC_BIN            the program (default target/release/kvs-webrtc)
//   NAT_DEVICE_EVENTS=0       report the device-side checks in the matrix instead of failing on
//                             them (for a device that does not print the lines above yet)
//   NAT_CASES=1,2,6           run only these cases
//   NAT_FORCE_DEVICE_NAT=none put every case's device behind this NAT kind instead (to try the
//                             viewer side against a device that cannot traverse NATs yet)
//   NAT_FORCE_VIEWER_NAT=…    likewise for the viewer's NAT
//   NAT_FLUSH_SIDE=viewer     case 6 flushes the viewer's router instead of the device's
//   NAT_DEVICE_ARGS="--x y"   extra arguments for every device (space-separated)
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, execFileSync } = require('node:child_process');

const BROWSER_DIR = path.join(__dirname, '..', 'browser');
const haveModules = fs.existsSync(path.join(BROWSER_DIR, 'node_modules', 'playwright-core'));
const harness = haveModules ? require('../browser/lib/harness') : null;
const { createTopology, unavailableReason, PUBLIC_ADDR } = require('./lib/topology');

const REGION = 'us-west-2';
const CREDENTIALS = { accessKeyId: 'AKIDNATTRAVERSAL0001', secretAccessKey: 'nat/traversal+secret0123456789abcdef' };
const ENDPOINT = `https://${PUBLIC_ADDR}:8443`;
const STUN_URI = `stun:${PUBLIC_ADDR}:3478`;
const TURN_URIS = [
  `turn:${PUBLIC_ADDR}:3478?transport=udp`,
  `turn:${PUBLIC_ADDR}:3478?transport=tcp`,
  `turns:${PUBLIC_ADDR}:5349?transport=tcp`,
];
const PAGE_DIR = path.join(__dirname, 'page');
const PAGE_ORIGIN = 'http://127.0.0.1:9';
const CONNECT_TIMEOUT_MS = 30_000;
const RECOVERY_BOUND_MS = 3000;
const EXPECT_DEVICE_EVENTS = process.env.NAT_DEVICE_EVENTS !== '0';
const ONLY = process.env.NAT_CASES ? new Set(process.env.NAT_CASES.split(',').map((s) => s.trim())) : null;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Skipped where they cannot run at all (not root, no coturn/iptables/conntrack); a missing build,
// browser or npm install is a failure that says what to do.
const SKIP = unavailableReason();
if (SKIP) console.log(`# NAT traversal tests skipped: ${SKIP}`);
function setupError() {
  if (!haveModules) return 'npm packages missing: run `cd tests/browser && npm ci`';
  if (!fs.existsSync(harness.PROGRAM)) return `${harness.PROGRAM} does not exist: build it (cargo build --release -p kvs-webrtc) or set KVS_WEBRTC_BIN`;
  return null;
}

// ---------------------------------------------------------------------------------------------
// The observed matrix, printed once at the end.

const matrix = [];
function fmtCand(c) {
  if (!c) return '-';
  const proto = c.relayProtocol ? `${c.protocol}(relay ${c.relayProtocol})` : c.protocol;
  return `${c.type}/${proto}`;
}
after(() => {
  if (!matrix.length) return;
  const rows = [['case', 'NATs (device/viewer)', 'viewer local', 'viewer remote', 'device local', 'device remote', 'first frame (from start)', 'notes']];
  for (const m of matrix) rows.push([m.case, m.nats, m.viewerLocal, m.viewerRemote, m.deviceLocal, m.deviceRemote, m.firstFrame, m.notes]);
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
  const lines = rows.map((r) => r.map((c, i) => String(c).padEnd(widths[i])).join(' | '));
  console.log(`\n# NAT traversal matrix (binary ${harness ? harness.PROGRAM : '?'}):\n${lines.map((l) => `#   ${l}`).join('\n')}\n`);
});

// ---------------------------------------------------------------------------------------------
// Processes in namespaces.

/** Run `file args` inside `ns`, collecting its output; resolves with {child, log, stop()}. */
function spawnInNs(ns, file, args, { ready, readyTimeoutMs = 15_000, name = file } = {}) {
  const child = spawn('ip', ['netns', 'exec', ns, file, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = new harness.TailBuffer(256 * 1024);
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => log.push(d));
  child.stderr.on('data', (d) => log.push(d));
  const proc = {
    child,
    log,
    exited: new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal }))),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await proc.exited;
      clearTimeout(t);
    },
  };
  if (!ready) return Promise.resolve(proc);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name} did not get ready (${ready}) within ${readyTimeoutMs / 1000} s:\n${log.text}`));
    }, readyTimeoutMs);
    const check = () => {
      if (ready.test(log.text)) {
        clearTimeout(timer);
        resolve(proc);
      }
    };
    child.stdout.on('data', check);
    child.stderr.on('data', check);
    child.on('error', (e) => { clearTimeout(timer); reject(new Error(`cannot start ${file}: ${e.message}`)); });
    proc.exited.then((x) => { clearTimeout(timer); reject(new Error(`${name} exited (${JSON.stringify(x)}) before getting ready:\n${log.text}`)); });
  });
}

/** A certificate for coturn's TLS listener, issued by the service's CA (the device trusts it via --ca-file). */
function makeTurnCert(dir, stateDir) {
  const key = path.join(dir, 'turn.key');
  const csr = path.join(dir, 'turn.csr');
  const cert = path.join(dir, 'turn.pem');
  const ext = path.join(dir, 'turn.ext');
  const ossl = (...args) => execFileSync('openssl', args, { stdio: 'pipe' });
  ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', '/CN=203.0.113.1');
  fs.writeFileSync(ext, `subjectAltName=IP:${PUBLIC_ADDR}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n`);
  ossl('x509', '-req', '-in', csr, '-CA', path.join(stateDir, 'ca.pem'), '-CAkey', path.join(stateDir, 'ca.key'), '-CAcreateserial',
    '-days', '2', '-extfile', ext, '-out', cert);
  // Full chain: the server certificate, then the CA.
  fs.writeFileSync(path.join(dir, 'turn-chain.pem'), fs.readFileSync(cert, 'utf8') + fs.readFileSync(path.join(stateDir, 'ca.pem'), 'utf8'));
  return { cert: path.join(dir, 'turn-chain.pem'), key };
}

/** coturn on 203.0.113.1: 3478 udp+tcp, 5349 TLS, relaying on 203.0.113.1, use-auth-secret. */
function startCoturn(ns, dir, secret, tlsFiles) {
  const args = ['-n', `--listening-ip=${PUBLIC_ADDR}`, '--listening-port=3478', '--tls-listening-port=5349',
    `--relay-ip=${PUBLIC_ADDR}`, '--min-port=49160', '--max-port=49900',
    '--use-auth-secret', `--static-auth-secret=${secret}`, '--realm=kvs-webrtc.local',
    `--cert=${tlsFiles.cert}`, `--pkey=${tlsFiles.key}`, '--no-dtls', '--no-cli', '--fingerprint', '--verbose',
    '--allowed-peer-ip=203.0.113.0-203.0.113.255', '--allowed-peer-ip=192.0.2.0-192.0.2.255', '--allowed-peer-ip=198.51.100.0-198.51.100.255',
    '--log-file=stdout', '--simple-log', `--pidfile=${path.join(dir, 'turnserver.pid')}`, `--userdb=${path.join(dir, 'turndb')}`];
  return spawnInNs(ns, 'turnserver', args, { ready: /Total General servers/, name: 'coturn' });
}

/** base64(SHA-256(SPKI)) of the service's certificate, fetched from inside `ns`. */
function serviceSpkiHash(ns) {
  const script = `
    const tls = require('tls'), crypto = require('crypto');
    const s = tls.connect({ host: '${PUBLIC_ADDR}', port: 8443, rejectUnauthorized: false }, () => {
      const spki = s.getPeerX509Certificate().publicKey.export({ type: 'spki', format: 'der' });
      process.stdout.write(crypto.createHash('sha256').update(spki).digest('base64'));
      s.end();
    });
    s.on('error', (e) => { console.error(e.message); process.exit(1); });`;
  return execFileSync('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { encoding: 'utf8', timeout: 10_000 }).trim();
}

let awsBundle = null;
/** The AWS SDK v3 clients for the browser, bundled once per run. */
function awsSdkBundle() {
  if (awsBundle) return awsBundle;
  const esbuild = require(require.resolve('esbuild', { paths: [BROWSER_DIR] }));
  const out = esbuild.buildSync({
    entryPoints: [path.join(BROWSER_DIR, 'official-sdk', 'entry.js')],
    bundle: true, format: 'iife', platform: 'browser', target: 'es2020', minify: true, logLevel: 'error', write: false,
  });
  awsBundle = out.outputFiles[0].text;
  return awsBundle;
}

const PAGE_FILES = {
  '/': () => [fs.readFileSync(path.join(PAGE_DIR, 'index.html')), 'text/html'],
  '/viewer.js': () => [fs.readFileSync(path.join(PAGE_DIR, 'viewer.js')), 'text/javascript'],
  '/kvs-webrtc.min.js': () => [fs.readFileSync(require.resolve('amazon-kinesis-video-streams-webrtc/dist/kvs-webrtc.min.js', { paths: [BROWSER_DIR] })), 'text/javascript'],
  '/aws-sdk.js': () => [awsSdkBundle(), 'text/javascript'],
};

// ---------------------------------------------------------------------------------------------
// One case's whole stack.

let caseCounter = 0;

let helpText = null;
/** Whether the program under test has `flag` (its --help lists it): newer flags are passed only then. */
function deviceSupports(flag) {
  if (helpText === null) {
    try {
      helpText = execFileSync(harness.PROGRAM, ['--help'], { encoding: 'utf8', timeout: 10_000 });
    } catch (e) {
      helpText = String(e.stdout || '');
    }
  }
  return new RegExp(`(^|\\s)${flag}(\\s|=|,|$)`, 'm').test(helpText);
}

/**
 * Topology + service + coturn + device + Chromium with the page loaded. `opts`:
 * {device: NAT kind, viewer: NAT kind, deviceArgs: [], serviceTurnSecret: bool (false: a secret
 * coturn does not know), before(stack): runs after the topology is up, before the device starts}.
 */
async function startStack(stack, caseName, opts, cleanups) {
  const tag = `kn${process.pid % 1000}${(caseCounter += 1)}`;
  Object.assign(stack, { caseName, tag, clientId: `nat-viewer-${caseName}` });
  const topo = createTopology(tag, { device: opts.device, viewer: opts.viewer });
  stack.topo = topo;
  cleanups.push(async () => topo.remove());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `kvs-nat-${caseName}-`));
  cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
  const stateDir = path.join(dir, 'state');
  const channel = `nat-cam-${caseName}`;
  stack.channel = channel;
  const secret = crypto.randomBytes(16).toString('hex');
  const serviceSecret = opts.serviceTurnSecret === false ? crypto.randomBytes(16).toString('hex') : secret;

  const service = await harness.startProcess(
    ['service', '--listen', `${PUBLIC_ADDR}:8443`, '--host-name', PUBLIC_ADDR, '--state-dir', stateDir, '--region', REGION,
      '--channel', channel, '--turn-secret', serviceSecret, ...TURN_URIS.flatMap((u) => ['--turn-uri', u])],
    {
      name: 'kvs-webrtc service',
      ready: /Data plane:/,
      prefix: ['ip', 'netns', 'exec', topo.public.ns],
      env: { KVS_SERVICE_ACCESS_KEY_ID: CREDENTIALS.accessKeyId, KVS_SERVICE_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey },
    },
  );
  stack.service = service;
  cleanups.push(() => service.stop(3000));

  const coturn = await startCoturn(topo.public.ns, dir, secret, makeTurnCert(dir, stateDir));
  stack.coturn = coturn;
  cleanups.push(() => coturn.stop());

  if (opts.before) await opts.before(stack);

  const device = await harness.startProcess(
    ['--endpoint', ENDPOINT, '--ca-file', path.join(stateDir, 'ca.pem'), '--region', REGION, '--channel', channel,
      '--media-bind', topo.device.addr,
      // Our STUN server, and trust in coturn's TLS certificate (issued by the service's CA).
      ...(deviceSupports('--stun-uri') ? ['--stun-uri', STUN_URI] : []),
      ...(deviceSupports('--turn-ca-file') ? ['--turn-ca-file', path.join(stateDir, 'ca.pem')] : []),
      ...(opts.deviceArgs || []),
      ...(process.env.NAT_DEVICE_ARGS || '').split(/\s+/).filter(Boolean)],
    {
      name: 'kvs-webrtc device',
      ready: /SignalingConnected/,
      prefix: ['ip', 'netns', 'exec', topo.device.lan],
      env: {
        AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
        AWS_REGION: REGION,
        // The program's default filter, less turn-client-proto's INFO-level trace of every poll
        // (thousands of lines a second, which would push the events out of the recorded lines).
        RUST_LOG: process.env.NAT_DEVICE_RUST_LOG || 'info,str0m=warn,dimpl=warn,turn_client_proto=warn,turn_client_rustls=warn',
        AWS_SESSION_TOKEN: '',
        AWS_PROFILE: '',
      },
    },
  );
  stack.device = device;
  cleanups.push(() => device.stop(3000));

  const hash = serviceSpkiHash(topo.viewer.lan);
  const wrapper = harness.chromiumWrapper(dir, { netns: topo.viewer.lan });
  const browser = await harness.launchBrowser([`--ignore-certificate-errors-spki-list=${hash}`], { executablePath: wrapper.path });
  stack.browser = browser;
  cleanups.push(async () => {
    await browser.close().catch(() => {});
    try { process.kill(-wrapper.pid(), 'SIGKILL'); } catch { /* gone */ }
  });
  const context = await browser.newContext();
  // The page never touches the network: Playwright answers its requests (127.0.0.1 is a secure
  // origin, which the SDK's SigV4 signing with crypto.subtle needs).
  await context.route(`${PAGE_ORIGIN}/**`, (route) => {
    const p = new URL(route.request().url()).pathname;
    const entry = PAGE_FILES[p];
    if (!entry) return route.fulfill({ status: 404, body: '' });
    const [body, contentType] = entry();
    return route.fulfill({ status: 200, body, contentType });
  });
  const page = await context.newPage();
  const consoleLog = new harness.TailBuffer(64 * 1024);
  page.on('console', (m) => consoleLog.push(`[${m.type()}] ${m.text()}\n`));
  page.on('pageerror', (e) => consoleLog.push(`[pageerror] ${e.stack || e.message}\n`));
  await page.goto(`${PAGE_ORIGIN}/`, { waitUntil: 'load', timeout: 30_000 });
  stack.viewer = {
    name: caseName,
    page,
    consoleLog,
    async describe() {
      return page.evaluate(async () => JSON.stringify({
        state: window.natViewer.state,
        error: window.natViewer.error,
        summary: await window.natViewer.summary(),
        log: window.natViewer.log.slice(-60),
      }, null, 1)).catch((e) => `(page not readable: ${e.message})`);
    },
    async dump() {
      return `----- viewer ${caseName} -----\n${await this.describe()}\n----- viewer console -----\n${consoleLog.text || '(empty)'}`;
    },
  };
  return stack;
}

/** A program's output for a failure message: stdout, then stderr without colours. */
function programDump(label, p) {
  const plain = (t) => t.replace(/\x1b\[[0-9;]*m/g, '');
  const out = p.lines.filter((l) => l.stream === 'stdout').map((l) => plain(l.text));
  const err = p.lines.filter((l) => l.stream === 'stderr').map((l) => plain(l.text));
  return [
    `----- ${label}: ${harness.PROGRAM} ${p.args.join(' ')} -----`,
    `----- ${label} stdout (last 200 lines) -----`, ...out.slice(-200),
    `----- ${label} stderr (last 150 lines) -----`, ...err.slice(-150),
    `----- ${label} exit: ${p.exit ? JSON.stringify(p.exit) : 'still running'} -----`,
  ].join('\n');
}

/** Everything a failure needs to explain itself. */
async function dumpStack(stack) {
  const parts = [];
  if (stack.viewer) parts.push(await stack.viewer.dump());
  if (stack.device) parts.push(programDump('device', stack.device));
  if (stack.service) parts.push(programDump('service', stack.service));
  if (stack.coturn) parts.push(`----- coturn log (tail) -----\n${stack.coturn.log.text.split('\n').slice(-80).join('\n')}`);
  if (stack.topo) {
    parts.push(stack.topo.describe());
    parts.push(`--- device router conntrack ---\n${stack.topo.natTable('device')}`);
    parts.push(`--- viewer router conntrack ---\n${stack.topo.natTable('viewer')}`);
  }
  return parts.join('\n');
}

/** Start the page's viewer; wait for >= 10 decoded frames; return the summary and time to first frame. */
async function viewAndDecode(stack, { iceTransportPolicy = 'all' } = {}) {
  const started = Date.now();
  await stack.viewer.page.evaluate((config) => window.startViewer(config), {
    region: REGION,
    endpoint: ENDPOINT,
    credentials: CREDENTIALS,
    channelName: stack.channel,
    clientId: stack.clientId,
    iceTransportPolicy,
    stunUris: [STUN_URI],
  });
  const summary = await harness.waitInPage(stack.viewer, 'a connected RTCPeerConnection with >= 10 decoded video frames', async () => {
    const v = window.natViewer;
    if (v.state === 'failed') throw new Error(v.error);
    const s = await v.summary();
    if (!s || !s.video || s.video.framesDecoded < 10 || !s.pair) return false;
    return s;
  }, undefined, CONNECT_TIMEOUT_MS);
  const t = summary.timings;
  summary.firstFrameMs = t.firstFrame ? Math.round(t.firstFrame - t.start) : Date.now() - started;
  summary.firstFrameFromOfferMs = t.firstFrame && t.offerSent ? Math.round(t.firstFrame - t.offerSent) : null;
  return summary;
}

const summaryNow = (stack) => stack.viewer.page.evaluate(() => window.natViewer.summary());

// ---------------------------------------------------------------------------------------------
// The device's lines.

// `Kind [peer] (status N): message`: the peer and status parts optional where the brief has none.
const EV = (kind) => `${kind}(?: \\[[^\\]]*\\])?(?: \\(status \\d+\\))?: `;
const SRFLX_RE = new RegExp(`${EV('IceCandidateGathered')}srflx \\S+ from (stuns?|turns?):`);
const RELAY_RE = (via) => new RegExp(`${EV('IceCandidateGathered')}relay \\S+ via ${via}`);
const TURN_REFUSED_RE = new RegExp(`${EV('TurnError')}turns?:\\S+: .*(401|refused the credentials)`, 'i');
const PAIR_RE = /IcePairSelected \[([^\]]+)\](?: \(status \d+\))?: local=(host|srflx|prflx|relay)\/(udp|tcp|tls) remote=(host|srflx|prflx|relay) (\S+) -> (\S+)/;

/** The device's stdout lines (its events; its logs on stderr repeat them) matching `re` since `since`. */
function deviceOut(stack, re, since = 0) {
  return harness.linesMatching(stack.device, re, since).filter((l) => l.stream === 'stdout');
}

/** Every IcePairSelected line the device printed for `peer` since `since`. */
function devicePairs(stack, since = 0) {
  if (!stack.device) return [];
  return deviceOut(stack, PAIR_RE, since)
    .map((l) => {
      const m = PAIR_RE.exec(l.text);
      return { t: l.t, peer: m[1], local: m[2], proto: m[3], remote: m[4], localAddr: m[5], remoteAddr: m[6], text: l.text };
    })
    .filter((p) => p.peer === stack.clientId);
}

/** The device's pair now (its last IcePairSelected for this viewer), or null. */
function devicePair(stack, since = 0) {
  const all = devicePairs(stack, since);
  return all.length ? all[all.length - 1] : null;
}

/**
 * Device-side checks: with NAT_DEVICE_EVENTS=0 a failure is noted in the matrix instead of
 * failing the test (a device that does not print the events yet).
 */
function deviceCheck(row, what, fn) {
  try {
    fn();
  } catch (e) {
    if (EXPECT_DEVICE_EVENTS) throw new Error(`device: ${what}: ${e.message}`);
    row.notes.push(`DEVICE CHECK FAILED (${what})`);
    console.log(`# device check not met (NAT_DEVICE_EVENTS=0): ${what}: ${e.message.split('\n')[0]}`);
  }
}

function record(caseName, stack, summary, extraNotes = []) {
  const dp = devicePair(stack);
  const row = {
    case: caseName,
    nats: `${stack.topo.device.nat}/${stack.topo.viewer.nat}`,
    viewerLocal: summary && summary.pair ? fmtCand(summary.pair.local) : '-',
    viewerRemote: summary && summary.pair ? fmtCand(summary.pair.remote) : '-',
    deviceLocal: dp ? `${dp.local}/${dp.proto}` : '(no IcePairSelected)',
    deviceRemote: dp ? dp.remote : '-',
    firstFrame: summary && summary.firstFrameMs != null ? `${summary.firstFrameMs} ms (${summary.firstFrameFromOfferMs} after offer)` : '-',
    notes: [...extraNotes],
  };
  matrix.push(row);
  return row;
}

/** The device's columns, if it printed its pair only after the viewer first decoded. */
function finishRow(row, stack) {
  const dp = devicePair(stack);
  if (dp && row.deviceLocal === '(no IcePairSelected)') {
    row.deviceLocal = `${dp.local}/${dp.proto}`;
    row.deviceRemote = dp.remote;
  }
  row.notes = row.notes.join('; ') || '';
}

/** A panic in any of the device's threads is a failure, even when the session survived it. */
function assertNoPanic(stack) {
  if (!stack.device) return;
  const lines = stack.device.lines;
  const i = lines.findIndex((l) => /panicked at/.test(l.text));
  if (i >= 0) {
    const what = lines.slice(i, i + 2).map((l) => l.text.replace(/\x1b\[[0-9;]*m/g, '')).join(' ');
    throw new Error(`the device panicked: ${what}`);
  }
}

/**
 * One test: build the stack, run `body(stack, row)`; print everything on failure; clean up.
 */
function natCase(id, title, caseOpts, body) {
  const opts = {
    ...caseOpts,
    device: process.env.NAT_FORCE_DEVICE_NAT || caseOpts.device,
    viewer: process.env.NAT_FORCE_VIEWER_NAT || caseOpts.viewer,
  };
  const skip = SKIP || (ONLY && !ONLY.has(id) ? 'not in NAT_CASES' : false);
  test(`NAT ${id}: ${title}`, { timeout: 120_000, skip }, async () => {
    const missing = setupError();
    if (missing) throw new Error(missing);
    const cleanups = [];
    const stack = {};
    let row = null;
    try {
      await startStack(stack, id, opts, cleanups);
      await body(stack, (summary, notes) => {
        row = record(id, stack, summary, notes);
        return row;
      });
      assertNoPanic(stack);
    } catch (e) {
      if (!row) {
        // What the viewer had selected, if anything, when the case failed.
        const now = stack.viewer ? await summaryNow(stack).catch(() => null) : null;
        row = record(id, stack.topo ? stack : { ...stack, topo: { device: { nat: opts.device }, viewer: { nat: opts.viewer } } }, now);
      }
      row.notes.push(`FAILED: ${e.message.split('\n')[0].slice(0, 140)}`);
      const diag = await dumpStack(stack).catch((x) => `(diagnostics failed: ${x.message})`);
      console.error(`\n===== NAT ${id} diagnostics: ${e.message.split('\n')[0]} =====\n${diag}\n===== end of NAT ${id} diagnostics =====`);
      throw e;
    } finally {
      if (stack.device) {
        const ev = deviceOut(stack, /^(Ice|Turn)\w+/).map((l) => `#   ${l.text}`);
        console.log(`# NAT ${id}: the device's NAT events (stdout):\n${ev.join('\n') || '#   (none)'}`);
      }
      if (row) finishRow(row, stack);
      for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
    }
  });
}

const isRelay = (c) => c && c.type === 'relay';
const isReflexive = (c) => c && (c.type === 'srflx' || c.type === 'prflx');

/** Every device line of a kind, for messages. */
const deviceLines = (stack, re) => deviceOut(stack, re).map((l) => l.text).join('\n') || '(none)';

/** Frames decoded over `ms`: {before, after, delta}. */
async function framesOver(stack, ms) {
  const a = await summaryNow(stack);
  await sleep(ms);
  const b = await summaryNow(stack);
  return { a, b, delta: (b.video ? b.video.framesDecoded : 0) - (a.video ? a.video.framesDecoded : 0) };
}

// ---------------------------------------------------------------------------------------------
// The cases.

natCase('0', 'baseline: device LAN routed (no NAT), viewer behind a symmetric NAT', { device: 'none', viewer: 'symmetric' }, async (stack, rec) => {
  const s = await viewAndDecode(stack);
  const row = rec(s);
  assert.equal(s.video.frameWidth, 640, JSON.stringify(s.video));
  assert.equal(s.connectionState, 'connected');
  deviceCheck(row, 'an IcePairSelected line for the viewer', () => {
    assert.ok(devicePair(stack), `no IcePairSelected [${stack.clientId}] line; device printed:\n${deviceLines(stack, /Ice|Turn|Peer/)}`);
  });
});

natCase('1', 'both behind endpoint-independent NATs connect without a relay', { device: 'eim', viewer: 'eim' }, async (stack, rec) => {
  const s = await viewAndDecode(stack);
  const row = rec(s);
  assert.equal(s.video.frameWidth, 640);
  assert.ok(!isRelay(s.pair.local) && !isRelay(s.pair.remote), `viewer's selected pair uses a relay: ${JSON.stringify(s.pair)}`);
  assert.ok(isReflexive(s.pair.local) || isReflexive(s.pair.remote), `neither side of the viewer's pair is server/peer reflexive: ${JSON.stringify(s.pair)}`);
  deviceCheck(row, 'srflx gathered, pair without relay', () => {
    assert.match(stack.device.stdout.text, SRFLX_RE, `no srflx gathered; device printed:\n${deviceLines(stack, /Ice|Turn/)}`);
    const dp = devicePair(stack);
    assert.ok(dp, `no IcePairSelected [${stack.clientId}] line; device printed:\n${deviceLines(stack, /Ice|Turn|Peer/)}`);
    assert.ok(dp.local !== 'relay' && dp.remote !== 'relay', `device pair uses a relay: ${dp.text}`);
  });
});

natCase('2', 'both behind symmetric NATs connect through a relay', { device: 'symmetric', viewer: 'symmetric' }, async (stack, rec) => {
  const s = await viewAndDecode(stack);
  const row = rec(s);
  assert.equal(s.video.frameWidth, 640);
  assert.ok(isRelay(s.pair.local) || isRelay(s.pair.remote), `viewer's selected pair has no relay candidate: ${JSON.stringify(s.pair)}`);
  row.notes.push(isRelay(s.pair.local) ? "viewer's relay" : "device's relay");
  deviceCheck(row, 'a pair with a relay', () => {
    const dp = devicePair(stack);
    assert.ok(dp, `no IcePairSelected [${stack.clientId}] line; device printed:\n${deviceLines(stack, /Ice|Turn|Peer/)}`);
    assert.ok(dp.local === 'relay' || dp.remote === 'relay', `device pair has no relay: ${dp.text}`);
  });
});

natCase('3', 'device --relay-only: its selected local candidate is relay', { device: 'eim', viewer: 'eim', deviceArgs: ['--relay-only'] }, async (stack, rec) => {
  const s = await viewAndDecode(stack);
  const row = rec(s);
  assert.equal(s.video.frameWidth, 640);
  // The device offers relay candidates only: the viewer sees no host or srflx candidate of it.
  const offered = s.remoteCandidates.map((c) => c.type);
  assert.ok(!offered.includes('host') && !offered.includes('srflx'), `a --relay-only device's candidates as the viewer saw them: ${JSON.stringify(s.remoteCandidates)}`);
  const signaled = await stack.viewer.page.evaluate(() => [
    ...((window.natViewer.pc.remoteDescription && window.natViewer.pc.remoteDescription.sdp) || '').split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')),
    ...window.natViewer.remoteCandidates,
  ]);
  assert.ok(signaled.length && signaled.every((c) => / typ relay( |$)/.test(c)), `a --relay-only device signaled:\n${signaled.join('\n')}`);
  assert.equal(s.pair.remote.type, 'relay', `viewer's remote candidate: ${JSON.stringify(s.pair)}`);
  deviceCheck(row, 'local=relay', () => {
    const dp = devicePair(stack);
    assert.ok(dp, `no IcePairSelected [${stack.clientId}] line; device printed:\n${deviceLines(stack, /Ice|Turn|Peer/)}`);
    assert.equal(dp.local, 'relay', dp.text);
    assert.match(stack.device.stdout.text, RELAY_RE('turns?:'));
  });
});

const blockUdp = (stack) => stack.topo.blockToTurn('device', 'udp', 3478);
natCase('4a', 'device --relay-only, UDP to TURN blocked: TURN over TCP', {
  device: 'eim', viewer: 'symmetric', deviceArgs: ['--relay-only'], before: blockUdp,
}, async (stack, rec) => {
  const s = await viewAndDecode(stack);
  const row = rec(s);
  assert.equal(s.video.frameWidth, 640);
  assert.equal(s.pair.remote.type, 'relay', `viewer's remote candidate: ${JSON.stringify(s.pair)}`);
  deviceCheck(row, 'local=relay/tcp via turn:...transport=tcp', () => {
    const dp = devicePair(stack);
    assert.ok(dp, `no IcePairSelected [${stack.clientId}] line; device printed:\n${deviceLines(stack, /Ice|Turn|Peer/)}`);
    assert.equal(`${dp.local}/${dp.proto}`, 'relay/tcp', dp.text);
    assert.match(stack.device.stdout.text, RELAY_RE('turn:203\\.0\\.113\\.1:3478\\?transport=tcp'));
  });
});

natCase('4b', 'device --relay-only, UDP and TCP 3478 blocked: TURN over TLS', {
  device: 'eim', viewer: 'symmetric', deviceArgs: ['--relay-only'],
  before: (stack) => { blockUdp(stack); stack.topo.blockToTurn('device', 'tcp', 3478); },
}, async (stack, rec) => {
  const s = await viewAndDecode(stack);
  const row = rec(s);
  assert.equal(s.video.frameWidth, 640);
  assert.equal(s.pair.remote.type, 'relay', `viewer's remote candidate: ${JSON.stringify(s.pair)}`);
  deviceCheck(row, 'local=relay/tls via turns:', () => {
    const dp = devicePair(stack);
    assert.ok(dp, `no IcePairSelected [${stack.clientId}] line; device printed:\n${deviceLines(stack, /Ice|Turn|Peer/)}`);
    assert.equal(`${dp.local}/${dp.proto}`, 'relay/tls', dp.text);
    assert.match(stack.device.stdout.text, RELAY_RE('turns:203\\.0\\.113\\.1:5349'));
  });
});

natCase('5', 'TURN refuses the credentials: a clear error, srflx still connects', {
  device: 'eim', viewer: 'eim', serviceTurnSecret: false,
}, async (stack, rec) => {
  const s = await viewAndDecode(stack);
  const row = rec(s);
  assert.equal(s.video.frameWidth, 640);
  assert.ok(!isRelay(s.pair.local) && !isRelay(s.pair.remote), `no relay can be allocated, yet: ${JSON.stringify(s.pair)}`);
  deviceCheck(row, 'TurnError about refused credentials', () => {
    const line = deviceOut(stack, TURN_REFUSED_RE)[0];
    assert.ok(line, `no TurnError line about refused credentials; device printed:\n${deviceLines(stack, /Ice|Turn|Error/)}`);
    row.notes.push(line.text.slice(0, 100));
  });
});

/**
 * Flush the NAT of the device's router (symmetric: new mappings get new ports) and time how
 * long the video takes to come back, on the same RTCPeerConnection.
 */
async function flushAndRecover(id, stack, rec, { udpOnly }) {
  const s = await viewAndDecode(stack);
  const row = rec(s);
  await sleep(2000);
  const before = await summaryNow(stack);
  const pairBefore = before.pair;
  const flushAt = Date.now();
  const flushSide = process.env.NAT_FLUSH_SIDE || 'device';
  stack.topo.flushNat(flushSide, { udpOnly });
  const how = udpOnly ? 'conntrack -D -p udp' : 'conntrack -F';
  // framesDecoded every 100 ms from the flush. Stalled: no new frame for 300 ms. Resumed: the
  // first sample after the stall with a new frame, confirmed by >= 10 frames in the 500 ms after.
  const samples = [];
  let stall = null; // the sample at which frames stopped (again, after a trickle)
  let firstStall = null;
  let resumed = null; // the first sample after the stall with a new frame
  let sustainedMs = null;
  while (Date.now() - flushAt < OBSERVE_MS) {
    const x = await summaryNow(stack);
    const t = Date.now() - flushAt;
    const cur = { t, frames: x.video ? x.video.framesDecoded : 0, state: x.iceConnectionState, pair: x.pair ? `${fmtCand(x.pair.local)}->${fmtCand(x.pair.remote)} ${x.pair.remote.address}:${x.pair.remote.port}` : null };
    samples.push(cur);
    if (!stall) {
      const ref = samples.filter((p) => p.t <= t - 300).pop();
      if (ref && cur.frames === ref.frames) {
        stall = ref;
        firstStall = ref;
      }
      else if (t > 2500) break; // never stalled
    } else {
      if (!resumed && cur.frames > stall.frames) resumed = cur;
      if (resumed && t - resumed.t >= 500) {
        if (cur.frames - resumed.frames >= 10) {
          sustainedMs = t;
          break;
        }
        resumed = null; // a trickle, not resumed video: look again
        stall = samples.filter((p) => p.t <= t - 300).pop();
      }
    }
    await sleep(100);
  }
  const recoveredMs = !stall ? 0 : (resumed && sustainedMs !== null ? resumed.t : null);
  const after = await framesOver(stack, 1500);
  const text = recoveredMs === null ? `never (within ${OBSERVE_MS / 1000} s)` : !stall ? 'no interruption' : `${recoveredMs} ms (video stopped at ${firstStall.t} ms${stall !== firstStall ? `, a trickle, stopped again at ${stall.t} ms` : ''})`;
  console.log(`# NAT ${id}: recovery after ${how} on the ${flushSide}'s router: ${text}; pair before ${fmtCand(pairBefore.local)}->${fmtCand(pairBefore.remote)}, after ${after.b.pair ? `${fmtCand(after.b.pair.local)}->${fmtCand(after.b.pair.remote)}` : '-'}`);
  row.notes.push(`recovery ${text}`);
  const restarts = deviceOut(stack, new RegExp(`IceRestart \\[${stack.clientId}\\]`), flushAt).map((l) => l.text);
  if (restarts.length) row.notes.push(restarts[0].slice(0, 80));
  const dpAfter = devicePair(stack, flushAt);
  row.notes.push(dpAfter ? `device pair after the flush: ${dpAfter.local}/${dpAfter.proto} -> ${dpAfter.remote} (+${dpAfter.t - flushAt} ms)` : 'no IcePairSelected after the flush');
  if (after.b.pair) row.notes.push(`viewer pair after: ${fmtCand(after.b.pair.local)} -> ${fmtCand(after.b.pair.remote)}`);
  assert.equal(after.b.pcId, before.pcId, 'the same RTCPeerConnection (no reload)');
  assert.equal(after.b.pcCount, 1, 'no second RTCPeerConnection');
  assert.ok(recoveredMs !== null && recoveredMs <= RECOVERY_BOUND_MS,
    `video resumed within ${RECOVERY_BOUND_MS} ms of the flush (got ${text}); every 5th sample: ${JSON.stringify(samples.filter((_, i) => i % 5 === 0))}`);
  assert.ok(after.delta >= 15, `decoding after recovery: ${after.delta} frames in 1.5 s`);
  // Only a path the flush broke needs an ICE restart, and only one still broken when the
  // device's silence threshold (2 s without a packet from the viewer on its path) runs out: a
  // flush only moves the device's NAT mapping, and the viewer mends that by itself once the
  // device's next check arrives from the new mapping (a peer-reflexive candidate to it), often
  // before the device would restart; a restart then is not owed (it would only be slower).
  const mendedFirst = recoveredMs !== null && recoveredMs < DEVICE_RESTART_AFTER_MS;
  if (stall && mendedFirst && !restarts.length) row.notes.push('mended without an ICE restart');
  if (stall && !mendedFirst) deviceCheck(row, 'IceRestart and a new IcePairSelected after the flush', () => {
    assert.ok(restarts.length, `no IceRestart [${stack.clientId}] line after the flush; device printed:\n${deviceLines(stack, /Ice|Turn|Peer/)}`);
    assert.ok(devicePair(stack, flushAt), `no IcePairSelected after the flush; device printed:\n${deviceLines(stack, /Ice|Turn|Peer/)}`);
  });
}

const OBSERVE_MS = 15_000;
/** The device restarts ICE after this long without a packet from the viewer on its path. */
const DEVICE_RESTART_AFTER_MS = 2000;
natCase('6', "the device's symmetric NAT is flushed (conntrack -F) mid-session: video resumes within 3 s", { device: 'symmetric', viewer: 'eim' },
  (stack, rec) => flushAndRecover('6', stack, rec, { udpOnly: false }));
// conntrack -F also breaks the device's signaling connection (its TCP mapping is gone); with only
// the UDP mappings gone, signaling stays up and an ICE restart can go out at once. TURN over
// TCP/TLS is blocked from the device here so that its media path is UDP (which the flush breaks).
natCase('6b', "the device's symmetric NAT loses its UDP mappings mid-session: video resumes within 3 s", {
  device: 'symmetric', viewer: 'eim',
  before: (stack) => { stack.topo.blockToTurn('device', 'tcp', 3478); stack.topo.blockToTurn('device', 'tcp', 5349); },
},
  (stack, rec) => flushAndRecover('6b', stack, rec, { udpOnly: true }));

natCase('7', 'the viewer re-offers on a live session: it stays up', { device: 'eim', viewer: 'eim' }, async (stack, rec) => {
  const s = await viewAndDecode(stack);
  const row = rec(s);
  await sleep(1000);
  for (const iceRestart of [true, false]) {
    const what = iceRestart ? 're-offer with restartIce()' : 'plain re-offer (renegotiation)';
    const at = Date.now();
    try {
      await stack.viewer.page.evaluate((o) => window.natViewer.reoffer(o), { iceRestart });
    } catch (e) {
      throw new Error(`${what}: ${e.message.split('\n')[0]}`);
    }
    const answeredMs = Date.now() - at;
    const f = await framesOver(stack, 3000);
    console.log(`# NAT 7: ${what}: answered in ${answeredMs} ms; ${f.delta} frames in the next 3 s; pair ${f.b.pair ? `${fmtCand(f.b.pair.local)}->${fmtCand(f.b.pair.remote)}` : '-'}; ${f.b.connectionState}`);
    if (f.delta < 30) {
      // For the failure message: does it come back at all, and when?
      const timeline = [];
      for (let i = 0; i < 20; i += 1) {
        const x = await summaryNow(stack);
        timeline.push({ t: Date.now() - at, frames: x.video && x.video.framesDecoded, ice: x.iceConnectionState, pair: x.pair ? `${fmtCand(x.pair.local)}->${fmtCand(x.pair.remote)}` : null });
        await sleep(250);
      }
      f.timeline = timeline;
      console.log(`# NAT 7: after the ${what}, ms since the offer -> framesDecoded: ${JSON.stringify(timeline)}`);
    }
    row.notes.push(`${iceRestart ? 'restartIce' : 'renegotiation'}: answer ${answeredMs} ms, ${f.delta} frames/3 s`);
    assert.equal(f.b.pcId, s.pcId, `${what}: the same RTCPeerConnection`);
    assert.equal(f.b.pcCount, 1);
    assert.equal(f.b.connectionState, 'connected', `${what}: connection ${f.b.connectionState}`);
    assert.ok(f.delta >= 30, `${what}: frames kept decoding (${f.delta} in 3 s; then ${JSON.stringify(f.timeline)})`);
    if (iceRestart) {
      deviceCheck(row, 'IceRestart accepted', () => {
        const line = deviceOut(stack, new RegExp(`IceRestart \\[${stack.clientId}\\]`), at)[0];
        assert.ok(line, `no IceRestart [${stack.clientId}] line after the viewer's restartIce; device printed:\n${deviceLines(stack, /Ice|Turn|Peer/)}`);
      });
    }
  }
  assert.ok(!deviceOut(stack, /PeerDisconnected|PeerFailed/).length,
    `the device dropped the session:\n${deviceLines(stack, /Peer/)}`);
});

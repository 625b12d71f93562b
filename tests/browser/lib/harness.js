// Shared helpers for the browser tests: start the real `kvs-webrtc` program on its embedded
// default, drive Debian's Chromium through playwright-core, and wait with bounded timeouts that
// fail with a message saying what was being waited for and what the page showed instead.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const TARGET_DIR = process.env.CARGO_TARGET_DIR
  ? path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR)
  : path.join(REPO_ROOT, 'target');
/** The program under test; KVS_WEBRTC_BIN overrides (e.g. a debug build). */
const PROGRAM = process.env.KVS_WEBRTC_BIN || path.join(TARGET_DIR, 'release', 'kvs-webrtc');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
  '--allow-loopback-in-peer-connection',
];

const STARTUP_TIMEOUT_MS = 60_000;
const WAIT_TIMEOUT_MS = 30_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const MAX_CAPTURED_OUTPUT = 256 * 1024; // keep the tail of the program's output for diagnostics

/** Keeps the last `max` characters written to it. */
class TailBuffer {
  constructor(max) {
    this.max = max;
    this.text = '';
  }
  push(chunk) {
    this.text += chunk;
    if (this.text.length > this.max) this.text = this.text.slice(this.text.length - this.max);
  }
}

const MAX_RECORDED_LINES = 20_000;

/** Split `stream` into lines and keep each in `program.lines` with its arrival time. */
function recordLines(program, stream, name) {
  let partial = '';
  stream.on('data', (d) => {
    partial += d;
    const parts = partial.split('\n');
    partial = parts.pop();
    const t = Date.now();
    for (const text of parts) program.lines.push({ t, stream: name, text });
    if (program.lines.length > MAX_RECORDED_LINES) program.lines.splice(0, program.lines.length - MAX_RECORDED_LINES);
  });
}

/**
 * Wait until `program` printed (stdout or stderr) a line matching `re` at or after time `since`
 * (Date.now() value; default: any time), on `stream` ('stdout' or 'stderr') if given; resolves
 * with the line ({t, stream, text}). Fails after `timeoutMs` saying what was awaited.
 */
async function waitForLine(program, re, { since = 0, timeoutMs = WAIT_TIMEOUT_MS, what = String(re), stream = null } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = program.lines.find((l) => l.t >= since && (!stream || l.stream === stream) && re.test(l.text));
    if (line) return line;
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs / 1000} s waiting for the program to log ${what}`);
    }
    await sleep(100);
  }
}

/** The lines `program` printed matching `re` at or after `since`. */
function linesMatching(program, re, since = 0) {
  return program.lines.filter((l) => l.t >= since && re.test(l.text));
}

/**
 * Start the program with `args` (and `env` added to ours) and resolve once its stdout matches
 * `ready`; the match is kept as `program.ready`. `name` labels diagnostics; `prefix` is a
 * command line the program runs under (it must exec it, as `ip netns exec NS` does).
 */
async function startProcess(args, { ready, env = {}, name = 'kvs-webrtc', prefix = [] }) {
  if (!fs.existsSync(PROGRAM)) {
    throw new Error(`${PROGRAM} does not exist: build it first with \`cargo build --release -p kvs-webrtc\` (or run scripts/test.sh)`);
  }
  // `prefix` runs the program through another command that execs it (e.g. `ip netns exec NS`).
  const [file, ...argv] = [...prefix, PROGRAM, ...args];
  // KVS_WEBRTC_BIN is ours: the program would read it as a KVS_WEBRTC_<SECTION>__<KEY> override.
  const { KVS_WEBRTC_BIN: _ours, ...inherited } = process.env;
  const child = spawn(file, argv, {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...inherited, RUST_BACKTRACE: '1', ...env },
  });
  const stdout = new TailBuffer(MAX_CAPTURED_OUTPUT);
  const stderr = new TailBuffer(MAX_CAPTURED_OUTPUT);
  const program = {
    child,
    args,
    stdout,
    stderr,
    ready: null,
    url: null,
    exit: null, // {code, signal} once it exited
    exited: null,
    /** Every output line with the time it arrived: {t (Date.now()), stream, text}; see waitForLine. */
    lines: [],
    /** Stop with SIGTERM; SIGKILL after `graceMs`. Resolves with {code, signal, killed}. */
    async stop(graceMs = 10_000) {
      if (program.exit) return { ...program.exit, killed: false };
      child.kill('SIGTERM');
      let timer;
      const forced = new Promise((resolve) => {
        timer = setTimeout(() => {
          child.kill('SIGKILL');
          resolve(true);
        }, graceMs);
      });
      const killed = await Promise.race([program.exited.then(() => false), forced]);
      clearTimeout(timer);
      await program.exited;
      return { ...program.exit, killed };
    },
    dump(label = name) {
      const cmd = `${PROGRAM} ${args.join(' ')}`;
      return [
        `----- ${label}: ${cmd} -----`,
        `----- stdout (tail) -----`,
        stdout.text || '(empty)',
        `----- stderr (tail) -----`,
        stderr.text || '(empty)',
        `----- exit: ${program.exit ? JSON.stringify(program.exit) : 'still running'} -----`,
      ].join('\n');
    },
  };
  program.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      program.exit = { code, signal };
      resolve(program.exit);
    });
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => stderr.push(d));
  child.stdout.setEncoding('utf8');
  recordLines(program, child.stdout, 'stdout');
  recordLines(program, child.stderr, 'stderr');

  const started = new Promise((resolve, reject) => {
    let text = '';
    child.stdout.on('data', (d) => {
      stdout.push(d);
      text += d;
      const m = ready.exec(text);
      if (m && !program.ready) {
        program.ready = m;
        resolve();
      }
      if (text.length > 65536) text = text.slice(-1024);
    });
    child.on('error', (e) => reject(new Error(`could not start ${PROGRAM}: ${e.message}`)));
    program.exited.then((exit) => reject(new Error(`${name} exited before printing ${ready} (${JSON.stringify(exit)})\n${program.dump()}`)));
  });
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${name} printed nothing matching ${ready} within ${STARTUP_TIMEOUT_MS / 1000} s\n${program.dump()}`)), STARTUP_TIMEOUT_MS);
  });
  try {
    await Promise.race([started, timeout]);
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  } finally {
    clearTimeout(timer);
  }
  return program;
}

/**
 * Start `kvs-webrtc --listen 127.0.0.1:0 --media-bind 127.0.0.1 ...extraArgs` and resolve once it
 * prints its `Viewer page:` line (the page's URL is `program.url`).
 */
async function startProgram(extraArgs = []) {
  const args = ['--listen', '127.0.0.1:0', '--media-bind', '127.0.0.1', ...extraArgs];
  const program = await startProcess(args, { ready: /Viewer page:\s*(https?:\/\/\S+)/ });
  program.url = program.ready[1];
  return program;
}

/**
 * A fresh headless Chromium (playwright gives each launch its own temporary profile).
 * `executablePath` replaces Chromium itself (e.g. a wrapper that runs it in a network namespace).
 */
async function launchBrowser(extraArgs = [], { executablePath = CHROMIUM } = {}) {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's chromium package (scripts/test.sh does)`);
  }
  return chromium.launch({ executablePath, args: [...CHROMIUM_ARGS, ...extraArgs], headless: true });
}

/**
 * Open the viewer page in a new browser; collects the page's console for diagnostics.
 * `initScript` ({content} or a function, as playwright's addInitScript takes) runs before the page's scripts.
 */
async function openViewer(url, name, { browserArgs = [], executablePath, initScript } = {}) {
  const browser = await launchBrowser(browserArgs, { executablePath });
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  // Runs in the page before its own scripts (e.g. to edit the offers it makes).
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  const consoleLog = new TailBuffer(64 * 1024);
  page.on('console', (m) => consoleLog.push(`[${m.type()}] ${m.text()}\n`));
  page.on('pageerror', (e) => consoleLog.push(`[pageerror] ${e.stack || e.message}\n`));
  try {
    await page.goto(url, { waitUntil: 'load', timeout: WAIT_TIMEOUT_MS });
  } catch (e) {
    await browser.close().catch(() => {}); // no browser left running behind a failed open
    throw e;
  }
  const viewer = {
    name,
    browser,
    page,
    consoleLog,
    async close() {
      await browser.close().catch(() => {});
    },
    /** What the page shows, for failure messages. */
    async describe() {
      try {
        return await page.evaluate(() => {
          const v = window.kvsViewer;
          const banner = document.getElementById('banner');
          return JSON.stringify({
            state: v && v.state,
            error: v && v.error,
            stats: v && v.stats && v.stats(),
            signalingMessages: v && v.messages && v.messages.slice(-20),
            banner: banner && !banner.hidden ? banner.textContent.trim().replace(/\s+/g, ' ') : null,
          });
        });
      } catch (e) {
        return `(page not readable: ${e.message})`;
      }
    },
    async dump() {
      return `----- viewer ${name}: ${await viewer.describe()} -----\n----- viewer ${name} console -----\n${consoleLog.text || '(empty)'}`;
    },
  };
  return viewer;
}

/**
 * Poll `fn(arg)` in the page until it returns a truthy value; return that value. On timeout,
 * fail with `what` and a snapshot of the page.
 */
async function waitInPage(viewer, what, fn, arg, timeoutMs = WAIT_TIMEOUT_MS) {
  // Our own loop around page.evaluate (which awaits async predicates) rather than
  // waitForFunction, whose predicate must be synchronous.
  const deadline = Date.now() + timeoutMs;
  let lastError = null;
  for (;;) {
    try {
      const value = await viewer.page.evaluate(fn, arg);
      if (value) return value;
      lastError = null;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) break;
    await sleep(250);
  }
  const cause = lastError ? `\n(last evaluation error: ${lastError.message.split('\n')[0]})` : '';
  throw new Error(`viewer ${viewer.name}: timed out after ${timeoutMs / 1000} s waiting for ${what}; page shows ${await viewer.describe()}${cause}`);
}

/** Inbound RTP figures straight from RTCPeerConnection.getStats() (not the page's own summary). */
async function inboundStats(viewer) {
  return viewer.page.evaluate(async () => {
    const pc = window.kvsViewer && window.kvsViewer.pc;
    if (!pc) return null;
    const report = await pc.getStats();
    const out = { video: null, audio: null };
    report.forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      const codec = r.codecId ? report.get(r.codecId) : null;
      out[r.kind] = {
        packetsReceived: r.packetsReceived || 0,
        bytesReceived: r.bytesReceived || 0,
        framesDecoded: r.framesDecoded || 0,
        packetsLost: r.packetsLost || 0,
        nackCount: r.nackCount || 0,
        pliCount: r.pliCount || 0,
        retransmittedPacketsReceived: r.retransmittedPacketsReceived || 0,
        freezeCount: r.freezeCount || 0,
        totalFreezesDuration: r.totalFreezesDuration || 0,
        frameWidth: r.frameWidth || 0,
        frameHeight: r.frameHeight || 0,
        mimeType: codec ? codec.mimeType : null,
      };
    });
    return out;
  });
}

/** Wait until getStats shows at least `minFrames` decoded video frames; returns the stats. */
async function waitForDecodedVideo(viewer, minFrames = 1) {
  await waitInPage(
    viewer,
    `getStats() to show at least ${minFrames} decoded video frames`,
    async (min) => {
      const pc = window.kvsViewer && window.kvsViewer.pc;
      if (!pc) return false;
      const report = await pc.getStats();
      let ok = false;
      report.forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'video' && (r.framesDecoded || 0) >= min) ok = true;
      });
      return ok;
    },
    minFrames,
  );
  return inboundStats(viewer);
}

/**
 * Serve the program's own viewer page (programs/kvs-webrtc/web) from a local HTTP server with
 * `config` as its /config.json (e.g. {signalingUrl, channelArn, channelName, region, iceServers}
 * for a separately run `kvs-webrtc service --plain --no-auth`). Resolves with {url, close}.
 */
async function serveViewerPage(config, host = '127.0.0.1') {
  const http = require('node:http');
  const web = path.join(REPO_ROOT, 'programs', 'kvs-webrtc', 'web');
  const files = {
    '/': ['index.html', 'text/html; charset=utf-8'],
    '/index.html': ['index.html', 'text/html; charset=utf-8'],
    '/viewer.js': ['viewer.js', 'text/javascript; charset=utf-8'],
    '/style.css': ['style.css', 'text/css; charset=utf-8'],
  };
  const server = http.createServer((req, res) => {
    const p = req.url.split('?')[0];
    if (p === '/config.json') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(config));
      return;
    }
    const entry = files[p];
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': entry[1] });
    fs.createReadStream(path.join(web, entry[0])).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, host, resolve));
  return {
    url: `http://${host}:${server.address().port}/`,
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

/**
 * A script to give launchBrowser/openViewer as `executablePath`: it writes its process id (which
 * stays Chromium's: it execs) to `<dir>/chromium.pid`, then runs Chromium, inside network
 * namespace `netns` if given (`ip netns exec`, root only). Playwright starts the browser as its
 * own process group, so `process.kill(-pid, 'SIGKILL')` kills the whole browser at once.
 * Returns {path, pid()} where pid() reads the recorded id.
 */
function chromiumWrapper(dir, { netns } = {}) {
  const file = path.join(dir, netns ? `chromium-in-${netns}.sh` : 'chromium.sh');
  const pidFile = path.join(dir, 'chromium.pid');
  const run = netns ? `exec ip netns exec ${netns} ${CHROMIUM} "$@"` : `exec ${CHROMIUM} "$@"`;
  fs.writeFileSync(file, `#!/bin/sh\necho $$ > '${pidFile}'\n${run}\n`, { mode: 0o755 });
  return { path: file, pid: () => Number(fs.readFileSync(pidFile, 'utf8').trim()) };
}

/** A TCP port that was free a moment ago on `host`. */
async function freePort(host = '127.0.0.1') {
  const net = require('node:net');
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, host, resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Run `body`; if it throws, print the program's output and every viewer's page state and console
 * before rethrowing, so a failure in CI explains itself.
 */
async function withDiagnostics(getParts, body) {
  try {
    return await body();
  } catch (e) {
    const { program, viewers = [] } = getParts();
    const parts = [];
    for (const v of viewers) if (v) parts.push(await v.dump());
    if (program) parts.push(program.dump());
    console.error(`\n===== diagnostics for: ${e.message.split('\n')[0]} =====\n${parts.join('\n')}\n===== end of diagnostics =====`);
    throw e;
  }
}

module.exports = {
  PROGRAM,
  WAIT_TIMEOUT_MS,
  TailBuffer,
  startProcess,
  startProgram,
  launchBrowser,
  openViewer,
  waitInPage,
  inboundStats,
  waitForDecodedVideo,
  withDiagnostics,
  sleep,
  waitForLine,
  linesMatching,
  serveViewerPage,
  freePort,
  chromiumWrapper,
};

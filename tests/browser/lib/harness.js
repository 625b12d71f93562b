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

/**
 * Start the program with `args` (and `env` added to ours) and resolve once its stdout matches
 * `ready`; the match is kept as `program.ready`. `name` labels diagnostics.
 */
async function startProcess(args, { ready, env = {}, name = 'kvs-webrtc' }) {
  if (!fs.existsSync(PROGRAM)) {
    throw new Error(`${PROGRAM} does not exist: build it first with \`cargo build --release -p kvs-webrtc\` (or run scripts/test.sh)`);
  }
  const child = spawn(PROGRAM, args, {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: '1', ...env },
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

/** A fresh headless Chromium (playwright gives each launch its own temporary profile). */
async function launchBrowser(extraArgs = []) {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's chromium package (scripts/test.sh does)`);
  }
  return chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, ...extraArgs], headless: true });
}

/** Open the viewer page in a new browser; collects the page's console for diagnostics. */
async function openViewer(url, name) {
  const browser = await launchBrowser();
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const consoleLog = new TailBuffer(64 * 1024);
  page.on('console', (m) => consoleLog.push(`[${m.type()}] ${m.text()}\n`));
  page.on('pageerror', (e) => consoleLog.push(`[pageerror] ${e.stack || e.message}\n`));
  await page.goto(url, { waitUntil: 'load', timeout: WAIT_TIMEOUT_MS });
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
};

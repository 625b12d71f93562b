// Start the real `kvs-webrtc service` program for the conformance tests, and the trust and
// credentials the official clients need to talk to it.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const TARGET_DIR = process.env.CARGO_TARGET_DIR
  ? path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR)
  : path.join(REPO_ROOT, 'target');
const PROGRAM = process.env.KVS_WEBRTC_BIN || path.join(TARGET_DIR, 'release', 'kvs-webrtc');

const REGION = 'us-west-2';
const CREDENTIALS = {
  accessKeyId: 'AKIDCONFORMANCE0001',
  secretAccessKey: 'conformance/secret+key/0123456789abcdefghij',
};
const STARTUP_TIMEOUT_MS = 30_000;

/**
 * Resolve once `output()` matches `pattern`, or reject with the output after `timeoutMs`.
 * A child's log line and the network answer it precedes travel on different pipes, so the
 * answer can reach a test before the line does: wait for the line, don't just look once.
 */
async function waitForOutput(output, pattern, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!pattern.test(output())) {
    if (Date.now() > deadline) {
      throw new Error(`no output matching ${pattern} within ${timeoutMs} ms:\n${output()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function freshStateDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'kvs-conformance-'));
}

/**
 * Start `kvs-webrtc service` on a free loopback port with TLS and SigV4 (CREDENTIALS).
 * Resolves with { controlPlane, dataPlane, caPath, ca, stateDir, stop() }.
 */
async function startService({ stateDir = freshStateDir(), extraArgs = [], sessionToken } = {}) {
  if (!fs.existsSync(PROGRAM)) {
    throw new Error(`${PROGRAM} does not exist: build it first (cargo build --release -p kvs-webrtc)`);
  }
  const args = ['service', '--listen', '127.0.0.1:0', '--state-dir', stateDir, '--region', REGION, ...extraArgs];
  const env = {
    ...process.env,
    KVS_SERVICE_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
    KVS_SERVICE_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
  };
  if (sessionToken) env.KVS_SERVICE_SESSION_TOKEN = sessionToken;
  const child = spawn(PROGRAM, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => { stderr = (stderr + d).slice(-64 * 1024); });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`service did not start within ${STARTUP_TIMEOUT_MS} ms\n${stdout}\n${stderr}`)), STARTUP_TIMEOUT_MS);
    child.stdout.on('data', (d) => {
      stdout += d;
      const cp = /Control plane: (\S+)/.exec(stdout);
      const dp = /Data plane:\s+(\S+)/.exec(stdout);
      if (cp && dp) {
        clearTimeout(timer);
        resolve({ controlPlane: cp[1], dataPlane: dp[1] });
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`service exited early (code ${code}, signal ${signal})\n${stdout}\n${stderr}`));
    });
  });
  const { controlPlane, dataPlane } = await ready;
  const caPath = path.join(stateDir, 'ca.pem');
  return {
    controlPlane,
    dataPlane,
    caPath,
    ca: fs.readFileSync(caPath),
    stateDir,
    output: () => `${stdout}\n${stderr}`,
    async stop() {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

module.exports = { PROGRAM, REGION, CREDENTIALS, startService, freshStateDir, waitForOutput };

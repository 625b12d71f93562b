// Two network namespaces, the device's and the viewer's, joined through a third in which a
// userspace impairment bridge (impair.py: loss, delay, jitter — this kernel has no sch_netem)
// forwards every frame. Root only. Addresses from the documentation range 198.51.100.0/24.
// `remove()` stops the bridge and deletes the namespaces (with them the veth pairs); it is safe
// to call more than once and after a partial set-up.
'use strict';

const { execFileSync, spawn } = require('node:child_process');
const path = require('node:path');

const IMPAIR = path.join(__dirname, 'impair.py');

function ip(...args) {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Why this machine cannot run the namespace tests, or null if it can. */
function unavailableReason() {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root (ip netns, raw sockets)';
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
    execFileSync('python3', ['-c', 'import socket; socket.AF_PACKET'], { stdio: 'ignore' });
  } catch (e) {
    return `ip or python3 not usable: ${e.message}`;
  }
  return null;
}

/**
 * Create namespaces `<tag>d` (device, 198.51.100.1), `<tag>v` (viewer, 198.51.100.2) and
 * `<tag>m` (the bridge). Resolves with {device: {ns, addr}, viewer: {ns, addr},
 * impair({loss, delay_ms, jitter_ms}) -> counters, remove()}.
 */
async function createPath(tag) {
  const device = { ns: `${tag}d`, dev: `${tag}d0`, addr: '198.51.100.1' };
  const viewer = { ns: `${tag}v`, dev: `${tag}v0`, addr: '198.51.100.2' };
  const mid = { ns: `${tag}m`, a: `${tag}m0`, b: `${tag}m1` };
  let bridge = null;
  const pair = {
    device,
    viewer,
    remove() {
      if (bridge && bridge.exitCode === null) bridge.kill('SIGKILL');
      for (const ns of [device.ns, viewer.ns, mid.ns]) {
        try {
          ip('netns', 'del', ns);
        } catch {
          /* not there */
        }
      }
    },
  };
  try {
    pair.remove(); // leftovers of a crashed run with the same tag
    for (const ns of [device.ns, viewer.ns, mid.ns]) {
      ip('netns', 'add', ns);
      // IPv4 only: no IPv6 addresses appearing after DAD (Chromium reports ERR_NETWORK_CHANGED
      // for them), no neighbour discovery through the bridge.
      for (const key of ['all', 'default']) {
        execFileSync('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', `net.ipv6.conf.${key}.disable_ipv6=1`], { stdio: 'pipe' });
      }
      ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
    ip('link', 'add', device.dev, 'netns', device.ns, 'type', 'veth', 'peer', 'name', mid.a, 'netns', mid.ns);
    ip('link', 'add', viewer.dev, 'netns', viewer.ns, 'type', 'veth', 'peer', 'name', mid.b, 'netns', mid.ns);
    for (const side of [device, viewer]) {
      ip('-n', side.ns, 'addr', 'add', `${side.addr}/24`, 'dev', side.dev);
      ip('-n', side.ns, 'link', 'set', side.dev, 'up');
      execFileSync('ip', ['netns', 'exec', side.ns, 'python3', IMPAIR, 'offload-off', side.dev], { stdio: 'pipe' });
    }
    for (const dev of [mid.a, mid.b]) {
      ip('-n', mid.ns, 'link', 'set', dev, 'promisc', 'on');
      ip('-n', mid.ns, 'link', 'set', dev, 'up');
      execFileSync('ip', ['netns', 'exec', mid.ns, 'python3', IMPAIR, 'offload-off', dev], { stdio: 'pipe' });
    }
    bridge = spawn('ip', ['netns', 'exec', mid.ns, 'python3', '-u', IMPAIR, mid.a, mid.b], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    bridge.stderr.setEncoding('utf8');
    bridge.stderr.on('data', (d) => { stderr += d; });
    const replies = [];
    const waiters = [];
    let partial = '';
    bridge.stdout.setEncoding('utf8');
    bridge.stdout.on('data', (d) => {
      partial += d;
      const lines = partial.split('\n');
      partial = lines.pop();
      for (const l of lines) {
        const w = waiters.shift();
        if (w) w.resolve(JSON.parse(l));
        else replies.push(JSON.parse(l));
      }
    });
    bridge.on('exit', (code, signal) => {
      for (const w of waiters.splice(0)) w.reject(new Error(`impair.py exited (${code ?? signal}): ${stderr}`));
    });
    const next = () => new Promise((resolve, reject) => {
      if (replies.length) resolve(replies.shift());
      else if (bridge.exitCode !== null) reject(new Error(`impair.py exited: ${stderr}`));
      else waiters.push({ resolve, reject });
    });
    let timer;
    await Promise.race([next(), new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`impair.py did not start: ${stderr}`)), 10_000); })]);
    clearTimeout(timer);
    /** Set the impairment on both directions; resolves with the settings and counters. */
    pair.impair = (settings) => {
      bridge.stdin.write(`${JSON.stringify(settings)}\n`);
      return next();
    };
  } catch (e) {
    pair.remove();
    throw e;
  }
  return pair;
}

module.exports = { createPath, unavailableReason };

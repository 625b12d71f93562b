// A small Internet in network namespaces for the NAT traversal tests (root only). Documentation
// address ranges only; everything is created here and deleted by `remove()` (idempotent, safe
// after a partial set-up, and run first to clear leftovers of a crashed run with the same tag).
//
//                    public namespace <tag>p ("the Internet", ip_forward=1)
//                    203.0.113.1: kvs-webrtc service :8443, coturn :3478 udp+tcp, :5349 tls
//                   /                                         \
//     203.0.113.2 (WAN)                                     203.0.113.3 (WAN)
//   device router <tag>dr                                 viewer router <tag>vr
//   NAT: MASQUERADE (endpoint-independent mapping,        same choices
//        Linux keeps the source port; address-and-port
//        dependent filtering), or --random
//        (symmetric: a new port per destination), or none (the LAN is routed)
//     192.0.2.1 (LAN)                                       198.51.100.1 (LAN)
//        |                                                     |
//   device LAN <tag>dl: the device at 192.0.2.2            viewer LAN <tag>vl: Chromium at 198.51.100.2
//
// The links between the public namespace and the routers are point-to-point (/32 peers), so
// every packet between the two sides is routed through the public namespace.
//
// The device resolves KVS's regional STUN host (stun:stun.kinesisvideo.<region>.amazonaws.com:443)
// when it is pointed at an endpoint override; /etc/netns/<device LAN>/hosts maps that name to
// 203.0.113.1, and the public namespace forwards UDP and TCP 443 on 203.0.113.1 to coturn's 3478
// (DNAT, so coturn sees the real mapped address).
'use strict';

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const PUBLIC_ADDR = '203.0.113.1';
const REGIONAL_STUN_HOSTS = ['stun.kinesisvideo.us-west-2.amazonaws.com', 'stun.kinesisvideo.us-west-2.api.aws'];

function run(file, args, { allowFail = false } = {}) {
  try {
    return execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    if (allowFail) return null;
    const stderr = e.stderr ? String(e.stderr).trim() : '';
    throw new Error(`${file} ${args.join(' ')} failed: ${stderr || e.message}`);
  }
}
const ip = (...args) => run('ip', args);
const inNs = (ns, file, ...args) => run('ip', ['netns', 'exec', ns, file, ...args]);

/** Why this machine cannot run the NAT tests, or null if it can. */
function unavailableReason() {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root (ip netns, iptables)';
  for (const [tool, args] of [['ip', ['-V']], ['iptables', ['--version']], ['conntrack', ['--version']], ['turnserver', ['-h']], ['openssl', ['version']]]) {
    try {
      execFileSync(tool, args, { stdio: 'ignore' });
    } catch (e) {
      // turnserver -h exits non-zero; only a missing program counts.
      if (e.code === 'ENOENT') return `${tool} not installed (Debian packages iproute2, iptables, conntrack, coturn, openssl)`;
    }
  }
  return null;
}

const NAT_KINDS = ['eim', 'symmetric', 'none'];

/**
 * Build the topology. `device` and `viewer` are the NAT kinds of each side's router:
 * 'eim' (MASQUERADE: endpoint-independent mapping), 'symmetric' (MASQUERADE --random) or
 * 'none' (the LAN is routed from the public namespace, no translation).
 * Returns {public, device, viewer, remove(), flushNat(side), blockToTurn(side, proto, port),
 * unblockToTurn(...), natTable(side), describe()}; each side is {lan, router, addr, wan, nat}.
 */
function createTopology(tag, { device = 'eim', viewer = 'eim' } = {}) {
  for (const k of [device, viewer]) if (!NAT_KINDS.includes(k)) throw new Error(`unknown NAT kind ${k}`);
  const pub = { ns: `${tag}p`, addr: PUBLIC_ADDR };
  const sides = {
    device: { name: 'device', nat: device, router: `${tag}dr`, lan: `${tag}dl`, wan: '203.0.113.2', gw: '192.0.2.1', addr: '192.0.2.2', net: '192.0.2.0/24', p: 'd' },
    viewer: { name: 'viewer', nat: viewer, router: `${tag}vr`, lan: `${tag}vl`, wan: '203.0.113.3', gw: '198.51.100.1', addr: '198.51.100.2', net: '198.51.100.0/24', p: 'v' },
  };
  const all = [pub.ns, ...Object.values(sides).flatMap((s) => [s.router, s.lan])];
  const netnsEtc = (ns) => path.join('/etc/netns', ns);
  const topo = {
    tag,
    public: pub,
    device: sides.device,
    viewer: sides.viewer,
    remove() {
      for (const ns of all) {
        run('ip', ['netns', 'del', ns], { allowFail: true });
        fs.rmSync(netnsEtc(ns), { recursive: true, force: true });
      }
    },
    /**
     * Forget every NAT mapping of `side`'s router (`conntrack -F`: TCP connections through it
     * break too), or with `udpOnly` only the UDP ones (`conntrack -D -p udp`).
     */
    flushNat(side, { udpOnly = false } = {}) {
      const args = udpOnly ? ['-D', '-p', 'udp'] : ['-F'];
      return run('ip', ['netns', 'exec', sides[side].router, 'conntrack', ...args], { allowFail: true });
    },
    /** The router's connection tracking table (for diagnostics). */
    natTable(side) {
      return run('ip', ['netns', 'exec', sides[side].router, 'conntrack', '-L'], { allowFail: true }) || '(conntrack -L failed)';
    },
    /** Drop `proto` (udp/tcp) from `side`'s LAN to the TURN server's `port` on its router. */
    blockToTurn(side, proto, port) {
      inNs(sides[side].router, 'iptables', '-I', 'FORWARD', '-p', proto, '-d', PUBLIC_ADDR, '--dport', String(port), '-j', 'DROP');
    },
    unblockToTurn(side, proto, port) {
      run('ip', ['netns', 'exec', sides[side].router, 'iptables', '-D', 'FORWARD', '-p', proto, '-d', PUBLIC_ADDR, '--dport', String(port), '-j', 'DROP'], { allowFail: true });
    },
    /** Packet counters of the routers' filter and nat rules (for diagnostics). */
    describe() {
      const out = [];
      for (const s of Object.values(sides)) {
        out.push(`--- ${s.name} router ${s.router} (NAT ${s.nat}) ---`);
        out.push(run('ip', ['netns', 'exec', s.router, 'iptables', '-v', '-n', '-L', 'FORWARD'], { allowFail: true }) || '');
        out.push(run('ip', ['netns', 'exec', s.router, 'iptables', '-v', '-n', '-t', 'nat', '-L', 'POSTROUTING'], { allowFail: true }) || '');
      }
      return out.join('\n');
    },
  };
  try {
    topo.remove();
    for (const ns of all) {
      ip('netns', 'add', ns);
      // IPv4 only (Chromium reports ERR_NETWORK_CHANGED for IPv6 addresses appearing after DAD).
      for (const key of ['all', 'default']) inNs(ns, 'sysctl', '-q', '-w', `net.ipv6.conf.${key}.disable_ipv6=1`);
      ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
    inNs(pub.ns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1');
    for (const s of Object.values(sides)) {
      // public <-> router: point-to-point, 203.0.113.1 on the public side of each link.
      const pubDev = `${tag}p${s.p}`;
      const wanDev = `${tag}${s.p}w`;
      ip('link', 'add', pubDev, 'netns', pub.ns, 'type', 'veth', 'peer', 'name', wanDev, 'netns', s.router);
      ip('-n', pub.ns, 'addr', 'add', PUBLIC_ADDR, 'peer', `${s.wan}/32`, 'dev', pubDev);
      ip('-n', s.router, 'addr', 'add', s.wan, 'peer', `${PUBLIC_ADDR}/32`, 'dev', wanDev);
      ip('-n', pub.ns, 'link', 'set', pubDev, 'up');
      ip('-n', s.router, 'link', 'set', wanDev, 'up');
      ip('-n', s.router, 'route', 'add', 'default', 'via', PUBLIC_ADDR, 'dev', wanDev);
      // router <-> LAN.
      const gwDev = `${tag}${s.p}g`;
      const hostDev = `${tag}${s.p}h`;
      ip('link', 'add', gwDev, 'netns', s.router, 'type', 'veth', 'peer', 'name', hostDev, 'netns', s.lan);
      ip('-n', s.router, 'addr', 'add', `${s.gw}/24`, 'dev', gwDev);
      ip('-n', s.lan, 'addr', 'add', `${s.addr}/24`, 'dev', hostDev);
      ip('-n', s.router, 'link', 'set', gwDev, 'up');
      ip('-n', s.lan, 'link', 'set', hostDev, 'up');
      ip('-n', s.lan, 'route', 'add', 'default', 'via', s.gw, 'dev', hostDev);
      inNs(s.router, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1');
      if (s.nat === 'none') {
        ip('-n', pub.ns, 'route', 'add', s.net, 'via', s.wan, 'dev', pubDev);
      } else {
        // The LAN behind the NAT is not routed from the public side, but what is sent to it
        // must vanish as it does on the Internet, not fail: a relay whose send fails with
        // ENETUNREACH (the viewer's TURN allocation checking the device's private host
        // candidate) is torn down by coturn, and with it the viewer's working relayed path,
        // half a second into every session. A route through a veth whose far end drops the
        // frames (a next hop with a fixed MAC no interface has) is that sink.
        const sinkDev = `${tag}x${s.p}`;
        const sinkPeer = `${tag}y${s.p}`;
        const n = s.p === 'd' ? 1 : 2;
        ip('-n', pub.ns, 'link', 'add', sinkDev, 'type', 'veth', 'peer', 'name', sinkPeer);
        ip('-n', pub.ns, 'addr', 'add', `10.99.${n}.1/30`, 'dev', sinkDev);
        ip('-n', pub.ns, 'link', 'set', sinkDev, 'up');
        ip('-n', pub.ns, 'link', 'set', sinkPeer, 'up');
        ip('-n', pub.ns, 'neigh', 'add', `10.99.${n}.2`, 'lladdr', `02:00:00:00:99:0${n}`, 'dev', sinkDev, 'nud', 'permanent');
        ip('-n', pub.ns, 'route', 'add', s.net, 'via', `10.99.${n}.2`, 'dev', sinkDev);
        const rule = ['-t', 'nat', '-A', 'POSTROUTING', '-s', s.net, '-o', wanDev, '-j', 'MASQUERADE'];
        if (s.nat === 'symmetric') rule.push('--random');
        inNs(s.router, 'iptables', ...rule);
        // A home router's firewall: unsolicited packets from the WAN are dropped. Besides
        // realism this matters to hole punching: a packet that reaches the router before the
        // LAN host's own packet to that peer would otherwise leave a conntrack entry (and an
        // ICMP port unreachable) behind, and the host's packet would then clash with it and be
        // given another port, so a NAT that maps endpoint-independently would not seem to.
        // A packet dropped before conntrack confirms it leaves no entry.
        inNs(s.router, 'iptables', '-A', 'INPUT', '-i', wanDev, '-m', 'conntrack', '--ctstate', 'NEW,INVALID', '-j', 'DROP');
        inNs(s.router, 'iptables', '-A', 'FORWARD', '-i', wanDev, '-m', 'conntrack', '--ctstate', 'NEW,INVALID', '-j', 'DROP');
      }
      s.wanDev = wanDev;
      s.hostDev = hostDev;
    }
    // KVS's regional STUN name -> coturn, for a device that derives its STUN server from the region.
    inNs(pub.ns, 'iptables', '-t', 'nat', '-A', 'PREROUTING', '-d', PUBLIC_ADDR, '-p', 'udp', '--dport', '443', '-j', 'DNAT', '--to-destination', `${PUBLIC_ADDR}:3478`);
    inNs(pub.ns, 'iptables', '-t', 'nat', '-A', 'PREROUTING', '-d', PUBLIC_ADDR, '-p', 'tcp', '--dport', '443', '-j', 'DNAT', '--to-destination', `${PUBLIC_ADDR}:3478`);
    for (const s of Object.values(sides)) {
      fs.mkdirSync(netnsEtc(s.lan), { recursive: true });
      const hosts = `127.0.0.1 localhost\n${REGIONAL_STUN_HOSTS.map((h) => `${PUBLIC_ADDR} ${h}`).join('\n')}\n`;
      fs.writeFileSync(path.join(netnsEtc(s.lan), 'hosts'), hosts);
    }
  } catch (e) {
    topo.remove();
    throw e;
  }
  return topo;
}

module.exports = { createTopology, unavailableReason, PUBLIC_ADDR, NAT_KINDS };

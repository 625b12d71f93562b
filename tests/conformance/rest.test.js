// The AWS SDK for JavaScript v3 calls every control-plane operation of the local service, with an
// endpoint override, over TLS, signing with its own SigV4 signer.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const https = require('node:https');
const {
  KinesisVideoClient,
  CreateSignalingChannelCommand,
  DescribeSignalingChannelCommand,
  ListSignalingChannelsCommand,
  DeleteSignalingChannelCommand,
  GetSignalingChannelEndpointCommand,
} = require('@aws-sdk/client-kinesis-video');
const {
  KinesisVideoSignalingClient,
  GetIceServerConfigCommand,
} = require('@aws-sdk/client-kinesis-video-signaling');
const { NodeHttpHandler } = require('@smithy/node-http-handler');
const { REGION, CREDENTIALS, startService } = require('./lib/service');

const TIMEOUT = { timeout: 120_000 };
const TURN_SECRET = 'conformance-turn-secret';

function clients(service, { credentials = { ...CREDENTIALS }, systemClockOffset } = {}) {
  const requestHandler = new NodeHttpHandler({ httpsAgent: new https.Agent({ ca: service.ca }) });
  const kv = new KinesisVideoClient({
    region: REGION,
    endpoint: service.controlPlane,
    credentials,
    requestHandler,
    maxAttempts: 2,
  });
  if (systemClockOffset !== undefined) kv.config.systemClockOffset = systemClockOffset;
  return { kv, requestHandler };
}

async function rejects(promise, name, status) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.name, name, `expected ${name}, got ${e.name}: ${e.message}`);
    if (status) assert.equal(e.$metadata.httpStatusCode, status);
    return e;
  }
  assert.fail(`expected ${name}, but the call succeeded`);
}

test('every REST operation through the AWS SDK for JavaScript v3', TIMEOUT, async (t) => {
  const service = await startService({ extraArgs: ['--turn-uri', 'turn:127.0.0.1:3478?transport=udp', '--turn-secret', TURN_SECRET] });
  t.after(() => service.stop());
  const { kv, requestHandler } = clients(service);

  const created = await kv.send(new CreateSignalingChannelCommand({
    ChannelName: 'sdk-v3-channel',
    ChannelType: 'SINGLE_MASTER',
    SingleMasterConfiguration: { MessageTtlSeconds: 30 },
    Tags: [{ Key: 'owner', Value: 'conformance' }],
  }));
  assert.match(created.ChannelARN, /^arn:aws:kinesisvideo:us-west-2:\d{12}:channel\/sdk-v3-channel\/\d{13}$/);

  await rejects(kv.send(new CreateSignalingChannelCommand({ ChannelName: 'sdk-v3-channel' })), 'ResourceInUseException', 400);
  await rejects(kv.send(new CreateSignalingChannelCommand({ ChannelName: 'bad name!' })), 'InvalidArgumentException', 400);
  await rejects(kv.send(new CreateSignalingChannelCommand({
    ChannelName: 'ttl-too-long', SingleMasterConfiguration: { MessageTtlSeconds: 500 },
  })), 'InvalidArgumentException', 400);

  const byName = await kv.send(new DescribeSignalingChannelCommand({ ChannelName: 'sdk-v3-channel' }));
  const info = byName.ChannelInfo;
  assert.equal(info.ChannelARN, created.ChannelARN);
  assert.equal(info.ChannelStatus, 'ACTIVE');
  assert.equal(info.ChannelType, 'SINGLE_MASTER');
  assert.equal(info.SingleMasterConfiguration.MessageTtlSeconds, 30);
  assert.ok(info.CreationTime instanceof Date && Math.abs(info.CreationTime - Date.now()) < 60_000, `CreationTime ${info.CreationTime}`);
  assert.ok(info.Version);
  const byArn = await kv.send(new DescribeSignalingChannelCommand({ ChannelARN: created.ChannelARN }));
  assert.equal(byArn.ChannelInfo.ChannelName, 'sdk-v3-channel');
  await rejects(kv.send(new DescribeSignalingChannelCommand({ ChannelName: 'no-such-channel' })), 'ResourceNotFoundException', 404);

  // Listing pages through every channel.
  for (const n of ['list-a', 'list-b', 'list-c']) await kv.send(new CreateSignalingChannelCommand({ ChannelName: n }));
  const seen = [];
  let NextToken;
  let pages = 0;
  do {
    const page = await kv.send(new ListSignalingChannelsCommand({ MaxResults: 2, NextToken }));
    seen.push(...page.ChannelInfoList.map((c) => c.ChannelName));
    NextToken = page.NextToken;
    pages += 1;
  } while (NextToken && pages < 10);
  assert.deepEqual(seen, ['list-a', 'list-b', 'list-c', 'sdk-v3-channel']);
  assert.equal(pages, 2);
  const filtered = await kv.send(new ListSignalingChannelsCommand({
    ChannelNameCondition: { ComparisonOperator: 'BEGINS_WITH', ComparisonValue: 'list-' },
  }));
  assert.equal(filtered.ChannelInfoList.length, 3);

  for (const Role of ['MASTER', 'VIEWER']) {
    const ep = await kv.send(new GetSignalingChannelEndpointCommand({
      ChannelARN: created.ChannelARN,
      SingleMasterChannelEndpointConfiguration: { Protocols: ['WSS', 'HTTPS'], Role },
    }));
    const byProtocol = Object.fromEntries(ep.ResourceEndpointList.map((e) => [e.Protocol, e.ResourceEndpoint]));
    assert.equal(byProtocol.WSS, service.dataPlane.replace(/\/$/, ''));
    assert.equal(byProtocol.HTTPS, service.controlPlane);
  }

  // GetIceServerConfig on the HTTPS endpoint, with the signaling client.
  const signaling = new KinesisVideoSignalingClient({
    region: REGION, endpoint: service.controlPlane, credentials: { ...CREDENTIALS }, requestHandler,
  });
  const ice = await signaling.send(new GetIceServerConfigCommand({ ChannelARN: created.ChannelARN, ClientId: 'viewer-1' }));
  assert.equal(ice.IceServerList.length, 1);
  const server = ice.IceServerList[0];
  assert.deepEqual(server.Uris, ['turn:127.0.0.1:3478?transport=udp']);
  assert.equal(server.Ttl, 300);
  const [expiry, name] = server.Username.split(':');
  assert.equal(name, 'viewer-1');
  assert.ok(Number(expiry) > Date.now() / 1000 + 200, `expiry ${expiry}`);
  // The coturn use-auth-secret password: base64(HMAC-SHA1(secret, username)).
  const expected = require('node:crypto').createHmac('sha1', TURN_SECRET).update(server.Username).digest('base64');
  assert.equal(server.Password, expected);

  // Delete: a stale version is refused, the right one deletes.
  await rejects(kv.send(new DeleteSignalingChannelCommand({ ChannelARN: created.ChannelARN, CurrentVersion: 'stale' })), 'VersionMismatchException', 400);
  await kv.send(new DeleteSignalingChannelCommand({ ChannelARN: created.ChannelARN, CurrentVersion: info.Version }));
  await rejects(kv.send(new DescribeSignalingChannelCommand({ ChannelARN: created.ChannelARN })), 'ResourceNotFoundException', 404);
  await rejects(kv.send(new DeleteSignalingChannelCommand({ ChannelARN: created.ChannelARN })), 'ResourceNotFoundException', 404);
});

test('bad credentials are refused the way KVS refuses them; a skewed clock is corrected by the SDK', TIMEOUT, async (t) => {
  const service = await startService();
  t.after(() => service.stop());

  const wrongSecret = clients(service, { credentials: { ...CREDENTIALS, secretAccessKey: 'not-the-secret' } }).kv;
  const e1 = await rejects(wrongSecret.send(new ListSignalingChannelsCommand({})), 'InvalidSignatureException', 403);
  assert.match(e1.message, /signature we calculated does not match/);

  const unknownKey = clients(service, { credentials: { ...CREDENTIALS, accessKeyId: 'AKIDUNKNOWN' } }).kv;
  await rejects(unknownKey.send(new ListSignalingChannelsCommand({})), 'UnrecognizedClientException', 403);

  const withToken = clients(service, { credentials: { ...CREDENTIALS, sessionToken: 'unexpected-token' } }).kv;
  await rejects(withToken.send(new ListSignalingChannelsCommand({})), 'UnrecognizedClientException', 403);

  // A client whose clock is an hour behind: the first attempt is refused as "Signature
  // expired"; the SDK reads our Date header, corrects its offset and the retry succeeds.
  const { kv: skewed } = clients(service, { systemClockOffset: -3600_000 });
  const listed = await skewed.send(new ListSignalingChannelsCommand({}));
  assert.deepEqual(listed.ChannelInfoList, []);
  assert.ok(Math.abs(skewed.config.systemClockOffset) < 60_000, `offset after correction: ${skewed.config.systemClockOffset}`);
});

test('channels survive a restart of the service', TIMEOUT, async () => {
  const first = await startService();
  const { kv } = clients(first);
  const { ChannelARN } = await kv.send(new CreateSignalingChannelCommand({ ChannelName: 'persistent' }));
  await first.stop();

  const second = await startService({ stateDir: first.stateDir });
  try {
    const { kv: kv2 } = clients(second);
    const described = await kv2.send(new DescribeSignalingChannelCommand({ ChannelName: 'persistent' }));
    assert.equal(described.ChannelInfo.ChannelARN, ChannelARN);
    // The CA is reused: clients that trusted it before still do.
    assert.deepEqual(second.ca, first.ca);
  } finally {
    await second.stop();
  }
});

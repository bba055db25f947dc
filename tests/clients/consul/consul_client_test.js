#!/usr/bin/env node
// Real-client test: the npm `consul` package (unchanged) against a real haven server.
//
// Usage: HAVEN_BINARY=/path/to/haven node consul_client_test.js   (or pass the path as argv[2])
//
// Starts `haven server` on an ephemeral port with a temporary data dir, drives it with the consul
// client (agent service + TTL check, health, KV set/get/cas, a blocking-query watch), and always
// kills the server by PID at the end. Exits non-zero on any failure; the whole run is bounded in
// time.
'use strict';

const assert = require('node:assert/strict');
const {EventEmitter} = require('node:events');

const {HavenServer, havenBinary} = require('../lib/haven_server.js');
const Consul = require('consul');

const OVERALL_TIMEOUT_MS = 60_000;
const STEP_DEADLINE_MS = 10_000;
const NODE_NAME = 't';

const LISTENING_RE = /event=listening\b.*\bhttp=127\.0\.0\.1:(\d+)/;

let passed = 0;

function log(msg) {
  process.stdout.write(`${msg}\n`);
}

const havenServer = new HavenServer({portRe: LISTENING_RE, log, nodeName: NODE_NAME});



function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

async function step(name, fn) {
  await withDeadline(fn(), STEP_DEADLINE_MS, name);
  passed += 1;
  log(`ok ${passed} - ${name}`);
}

// A papi request context that makes the client resolve [response, body] instead of the body alone.
function withResponse() {
  const ctx = new EventEmitter();
  ctx.includeResponse = true;
  return ctx;
}

function serviceCheck(entry, serviceId) {
  return (entry.Checks || []).find((c) => c.CheckID === `service:${serviceId}`);
}

async function testAgentAndHealth(consul) {
  const service = {
    name: 'web',
    id: 'web-1',
    address: '127.0.0.1',
    port: 8080,
    tags: ['v1'],
    check: {ttl: '30s'}
  };

  await step('agent.service.register with a TTL check', async () => {
    await consul.agent.service.register(service);
  });

  await step('agent.service.list shows the service', async () => {
    const services = await consul.agent.service.list();
    assert.ok(services['web-1'], `web-1 missing from ${JSON.stringify(services)}`);
    assert.equal(services['web-1'].Service, 'web');
    assert.equal(services['web-1'].Port, 8080);
  });

  await step('health.service: a new TTL check is critical, passing=true hides it', async () => {
    const all = await consul.health.service('web');
    assert.equal(all.length, 1, JSON.stringify(all));
    assert.equal(serviceCheck(all[0], 'web-1')?.Status, 'critical', JSON.stringify(all[0].Checks));
    const passing = await consul.health.service({service: 'web', passing: true});
    assert.deepEqual(passing, []);
  });

  await step('agent.check.pass on service:web-1', async () => {
    await consul.agent.check.pass({id: 'service:web-1', note: 'all good'});
  });

  await step('health.service passing=true returns the instance', async () => {
    const passing = await consul.health.service({service: 'web', passing: true});
    assert.equal(passing.length, 1, JSON.stringify(passing));
    const entry = passing[0];
    assert.equal(entry.Node.Node, NODE_NAME);
    assert.equal(entry.Service.ID, 'web-1');
    assert.equal(entry.Service.Service, 'web');
    assert.equal(entry.Service.Port, 8080);
    assert.equal(serviceCheck(entry, 'web-1')?.Status, 'passing', JSON.stringify(entry.Checks));
    const serf = entry.Checks.find((c) => c.CheckID === 'serfHealth');
    assert.equal(serf?.Status, 'passing', JSON.stringify(entry.Checks));
  });
}

async function testKv(consul) {
  let firstIndex = 0;

  await step('kv.set returns true', async () => {
    assert.equal(await consul.kv.set('cfg/a', 'v1'), true);
  });

  await step('kv.get returns the value and a ModifyIndex', async () => {
    const item = await consul.kv.get('cfg/a');
    assert.equal(item?.Key, 'cfg/a');
    assert.equal(item.Value, 'v1');
    assert.ok(item.ModifyIndex > 0, JSON.stringify(item));
    firstIndex = item.ModifyIndex;
  });

  await step('kv.get of a missing key resolves undefined', async () => {
    assert.equal(await consul.kv.get('cfg/missing'), undefined);
  });

  await step('kv.set with the current ModifyIndex as cas succeeds', async () => {
    assert.equal(await consul.kv.set({key: 'cfg/a', value: 'v2', cas: firstIndex}), true);
    const item = await consul.kv.get('cfg/a');
    assert.equal(item.Value, 'v2');
    assert.ok(item.ModifyIndex > firstIndex, JSON.stringify(item));
  });

  await step('kv.set with a stale cas fails and leaves the value', async () => {
    // consul@2 resolves a plain `false` body as undefined, so read the decoded body via the
    // response.
    const [res, body] =
        await consul.kv.set({key: 'cfg/a', value: 'v3', cas: firstIndex, ctx: withResponse()});
    assert.equal(res.statusCode, 200);
    assert.equal(body, false);
    assert.equal((await consul.kv.get('cfg/a')).Value, 'v2');
  });

  await step('kv.get recurse lists the prefix', async () => {
    assert.equal(await consul.kv.set('cfg/b', 'vb'), true);
    const items = await consul.kv.get({key: 'cfg/', recurse: true});
    assert.deepEqual(items.map((i) => i.Key).sort(), ['cfg/a', 'cfg/b']);
  });
}

// A blocking query with the current index must park until the wait ends when nothing changes.
async function testBlockingQueryParks(consul) {
  await step('kv.get with index=current and wait=1s blocks about 1s', async () => {
    const [res] = await consul.kv.get({key: 'cfg/a', ctx: withResponse()});
    const index = res.headers['x-consul-index'];
    assert.ok(Number(index) > 0, `X-Consul-Index missing or zero: ${index}`);
    const started = Date.now();
    await consul.kv.get({key: 'cfg/a', index, wait: '1s'});
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 800, `blocking query returned after ${elapsed} ms, expected about 1000`);
  });
}

// Waits for the next `change` event of a watch whose data satisfies pred.
function nextChange(watch, pred, what) {
  return withDeadline(
      new Promise((resolve, reject) => {
        const onChange = (data) => {
          if (!pred(data)) return;
          watch.removeListener('change', onChange);
          watch.removeListener('error', onError);
          resolve(data);
        };
        const onError = (err) => {
          watch.removeListener('change', onChange);
          watch.removeListener('error', onError);
          reject(err);
        };
        watch.on('change', onChange);
        watch.on('error', onError);
      }),
      STEP_DEADLINE_MS, what);
}

async function testWatch(consul) {
  assert.equal(await consul.kv.set('watch/k', 'one'), true);
  const watch = consul.watch({method: consul.kv.get, options: {key: 'watch/k', wait: '5s'}});
  try {
    await step('watch delivers the current value', async () => {
      await nextChange(watch, (d) => d?.Value === 'one', 'initial watch value');
    });
    await step('watch delivers a change made after it started', async () => {
      const arrived = nextChange(watch, (d) => d?.Value === 'two', 'changed watch value');
      const started = Date.now();
      assert.equal(await consul.kv.set('watch/k', 'two'), true);
      await arrived;
      const elapsed = Date.now() - started;
      // The watch waits 5s per request: a change must wake the parked query, not wait it out.
      assert.ok(elapsed < 4000, `change arrived after ${elapsed} ms; blocking query not woken`);
    });
  } finally {
    watch.end();
  }
}

async function runTests() {
  const port = await havenServer.start(havenBinary());
  log(`# server listening on 127.0.0.1:${port}`);
  const consul = new Consul({host: '127.0.0.1', port});
  try {
    await step('status.leader names a leader', async () => {
      const leader = await consul.status.leader();
      assert.ok(
          typeof leader === 'string' && leader.length > 0, `leader=${JSON.stringify(leader)}`);
    });
    await testAgentAndHealth(consul);
    await testKv(consul);
    await testBlockingQueryParks(consul);
    await testWatch(consul);
  } finally {
    consul.destroy();
  }
}

function describe(err) {
  if (!err) return String(err);
  let text = err.stack || String(err);
  if (err.response) {
    const body = typeof err.response.body === 'string' ? err.response.body :
                                                         JSON.stringify(err.response.body);
    text += `\nHTTP ${err.response.statusCode}: ${body}`;
  }
  return text;
}

async function main() {
  const overall = setTimeout(() => {
    log(`not ok - overall timeout of ${OVERALL_TIMEOUT_MS} ms exceeded`);
    process.exit(1);  // the exit hook kills the server
  }, OVERALL_TIMEOUT_MS);
  let failure = null;
  try {
    await runTests();
  } catch (err) {
    failure = err;
  }
  await havenServer.stop().catch((err) => log(`# stopping the server failed: ${err}`));
  clearTimeout(overall);
  if (failure) {
    log(`not ok - ${describe(failure)}`);
    log(`# server stderr (tail):\n${havenServer.stderrTail(40)}`);
    log(`${passed} passed, 1 failed`);
    process.exit(1);
  }
  log(`${passed} passed, 0 failed`);
  process.exit(0);
}

main();

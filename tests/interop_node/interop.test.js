'use strict';
// Interop test: a real runnel server, driven by @grpc/grpc-js (gRPC's Node implementation, with Node's own TLS
// and HTTP/2) over mutual TLS. A second client stack, independent of the grpcio suite in tests/interop/.
//
// Run through tests/interop_node/run.sh BINARY, which installs the pinned packages and sets RUNNEL_BIN.
// Only node:test and node:assert/strict features that Node 18 (Debian 12) and Node 20 both have.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const TIMEOUT_MS = 10_000; // deadline of every call that is expected to answer promptly
const TEST_TIMEOUT_MS = 30_000; // each test, end to end
const SERVICE = 'runnel.v1.JobService';
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const SIGTERM = os.constants.signals.SIGTERM;

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const packageDefinition = protoLoader.loadSync(
  ['runnel/v1/runnel.proto', 'grpc/health/v1/health.proto'],
  { includeDirs: [PROTO_DIR], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const loaded = grpc.loadPackageDefinition(packageDefinition);
const JobService = loaded.runnel.v1.JobService;
const Health = loaded.grpc.health.v1.Health;

// ---------------------------------------------------------------------------------------------------------
// the server, one for the whole file

let tmp; // the temporary directory: pki/, state/, server.log
let pki;
let logPath;
let serverProc;
let serverExit; // a promise of { code, signal }
let address;
const clients = []; // every client made, closed before the server is stopped
let alice;
let bob;
let admin;

function serverLog() {
  try {
    return fs.readFileSync(logPath, 'utf8');
  } catch {
    return '';
  }
}

function certs(...args) {
  execFileSync(process.env.RUNNEL_BIN, ['certs', ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// A client of `service` with the identity `name` (pki/NAME.{crt,key}), trusting `caName` (pki/CA.crt) for the
// server. Each client has a channel of its own (no subchannel shared with another client).
function makeClient(Service, name, caName = 'ca') {
  const read = (file) => fs.readFileSync(path.join(pki, file));
  const creds = grpc.credentials.createSsl(read(`${caName}.crt`), read(`${name}.key`), read(`${name}.crt`));
  const client = new Service(address, creds, {
    'grpc.ssl_target_name_override': 'localhost',
    'grpc.use_local_subchannel_pool': 1,
  });
  clients.push(client);
  return client;
}

before(async () => {
  const binary = process.env.RUNNEL_BIN;
  assert.ok(binary, 'RUNNEL_BIN must name the runnel binary (run tests/interop_node/run.sh BINARY)');
  fs.accessSync(binary, fs.constants.X_OK);

  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'runnel-interop-node-'));
  // Jobs run as an unprivileged user (as root, the server isolates them): they must pass through to their
  // working directories under the state dir.
  fs.chmodSync(tmp, 0o711);
  pki = path.join(tmp, 'pki');
  fs.mkdirSync(pki);
  const p = (name) => path.join(pki, name);
  certs('ca', '--out', p('ca'));
  certs('server', '--ca', p('ca'), '--out', p('server'), '--dns', 'localhost', '--ip', '127.0.0.1');
  for (const name of ['alice', 'bob', 'admin']) {
    certs('client', '--ca', p('ca'), '--name', name, '--out', p(name));
  }
  // A CA the server does not know, and a client it signed.
  certs('ca', '--out', p('rogue-ca'));
  certs('client', '--ca', p('rogue-ca'), '--name', 'mallory', '--out', p('mallory'));

  logPath = path.join(tmp, 'server.log');
  const logFd = fs.openSync(logPath, 'w');
  serverProc = spawn(binary, [
    'server', '--listen', '127.0.0.1:0',
    '--cert', p('server.crt'), '--key', p('server.key'), '--client-ca', p('ca.crt'),
    '--state-dir', path.join(tmp, 'state'), '--admin', 'admin',
  ], { stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  serverExit = new Promise((resolve) => serverProc.on('exit', (code, signal) => resolve({ code, signal })));
  let exited = null;
  serverExit.then((e) => { exited = e; });

  const deadline = Date.now() + 15_000;
  while (address === undefined) {
    const m = /runnel server listening on (\S+)/.exec(serverLog());
    if (m) {
      address = m[1];
    } else if (exited) {
      assert.fail(`server exited (${JSON.stringify(exited)}) before listening:\n${serverLog()}`);
    } else if (Date.now() > deadline) {
      assert.fail(`server did not report its address within 15 s:\n${serverLog()}`);
    } else {
      await sleep(50);
    }
  }
  alice = makeClient(JobService, 'alice');
  bob = makeClient(JobService, 'bob');
  admin = makeClient(JobService, 'admin');
}, { timeout: 60_000 });

// Should this process end without the after hook (killed by run.sh's timeout, a crash), take the server along.
process.on('exit', () => {
  if (serverProc && serverProc.exitCode === null && serverProc.signalCode === null) {
    serverProc.kill('SIGKILL');
  }
});

after(async () => {
  for (const client of clients) {
    client.close();
  }
  if (!serverProc) {
    return;
  }
  let result;
  if (serverProc.exitCode === null && serverProc.signalCode === null) {
    serverProc.kill('SIGTERM');
    let timer;
    const timedOut = new Promise((resolve) => { timer = setTimeout(() => resolve(null), 30_000); });
    result = await Promise.race([serverExit, timedOut]);
    clearTimeout(timer);
    if (result === null) {
      serverProc.kill('SIGKILL');
      await serverExit;
    }
  } else {
    result = await serverExit;
  }
  const log = serverLog();
  fs.rmSync(tmp, { recursive: true, force: true });
  assert.deepEqual(result, { code: 0, signal: null }, `server did not exit 0 on SIGTERM; log:\n${log}`);
}, { timeout: 60_000 });

// ---------------------------------------------------------------------------------------------------------
// helpers

function unary(client, method, request, deadlineMs = TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + deadlineMs }, (err, response) => {
      if (err) {
        reject(err);
      } else {
        resolve(response);
      }
    });
  });
}

// Every message of a server-streaming call, once it ended with OK.
function collect(call) {
  return new Promise((resolve, reject) => {
    const messages = [];
    call.on('data', (m) => messages.push(m));
    call.on('error', reject);
    call.on('end', () => resolve(messages));
  });
}

function readOutput(client, jobId, { offset = 0, follow = false } = {}) {
  const call = client.StreamOutput({ job_id: jobId, offset: String(offset), follow },
    { deadline: Date.now() + TIMEOUT_MS });
  return collect(call);
}

// `promise` fails with status `code` (a name: 'NOT_FOUND') and a message that is non-empty and contains
// `detailPart`. Returns the error.
async function expectError(promise, code, detailPart = '') {
  let err;
  try {
    const value = await promise;
    assert.fail(`expected ${code}, got a success: ${JSON.stringify(value)}`);
  } catch (e) {
    if (e instanceof assert.AssertionError) {
      throw e;
    }
    err = e;
  }
  assert.equal(typeof err.code, 'number', `not a gRPC status: ${err}`);
  assert.equal(grpc.status[err.code], code, `expected ${code}, got ${grpc.status[err.code]}: ${err.details}`);
  assert.equal(typeof err.details, 'string');
  assert.ok(err.details.length > 0, `${code} without a message`);
  assert.ok(err.details.includes(detailPart), `${JSON.stringify(detailPart)} not in ${JSON.stringify(err.details)}`);
  return err;
}

function start(client, command, args = [], fields = {}) {
  return unary(client, 'StartJob', { command, args, ...fields });
}

function stop(client, jobId, graceMs) {
  const request = { job_id: jobId };
  if (graceMs !== undefined) {
    request.grace_period = { seconds: String(Math.floor(graceMs / 1000)), nanos: (graceMs % 1000) * 1e6 };
  }
  return unary(client, 'StopJob', request);
}

// Every job ListJobs gives, following next_page_token.
async function listAll(client, fields = {}) {
  const jobs = [];
  let token = '';
  for (;;) {
    const page = await unary(client, 'ListJobs', { ...fields, page_token: token });
    jobs.push(...page.jobs);
    if (page.next_page_token === '') {
      return jobs;
    }
    token = page.next_page_token;
  }
}

// The chunks are contiguous from `first` (each non-empty, of a real stream, data a Buffer); returns the end.
function checkContiguous(chunks, first) {
  let offset = first;
  for (const c of chunks) {
    assert.equal(c.offset, String(offset), `chunk at ${c.offset}, expected ${offset}`);
    assert.ok(Buffer.isBuffer(c.data), 'bytes arrive as a Buffer');
    assert.ok(c.data.length > 0, 'an empty chunk');
    assert.ok(['OUTPUT_STREAM_STDOUT', 'OUTPUT_STREAM_STDERR'].includes(c.stream), `stream ${c.stream}`);
    offset += c.data.length;
  }
  return offset;
}

function byStream(chunks, stream) {
  return Buffer.concat(chunks.filter((c) => c.stream === stream).map((c) => c.data));
}

function nanos(ts) {
  return BigInt(ts.seconds) * 1_000_000_000n + BigInt(ts.nanos);
}

// ---------------------------------------------------------------------------------------------------------
// grpc.health.v1.Health

test('Health.Check: SERVING for the server and for JobService, NOT_FOUND for an unknown service',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const health = makeClient(Health, 'alice');
    for (const service of ['', SERVICE]) {
      const resp = await unary(health, 'Check', { service });
      assert.equal(resp.status, 'SERVING', `service ${JSON.stringify(service)}`);
    }
    await expectError(unary(health, 'Check', { service: 'no.such.Service' }), 'NOT_FOUND', 'no.such.Service');
  });

test('Health.Watch: the first message is SERVING; cancelling it leaves the channel usable',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const health = makeClient(Health, 'bob');
    const call = health.Watch({ service: SERVICE }, { deadline: Date.now() + TIMEOUT_MS });
    const first = await new Promise((resolve, reject) => {
      call.once('data', resolve);
      call.once('error', reject);
      call.once('end', () => reject(new Error('Watch ended without a message')));
    });
    assert.equal(first.status, 'SERVING');
    const ended = new Promise((resolve) => call.on('error', resolve));
    call.cancel();
    assert.equal((await ended).code, grpc.status.CANCELLED);
    const resp = await unary(health, 'Check', {});
    assert.equal(resp.status, 'SERVING');
  });

// ---------------------------------------------------------------------------------------------------------
// the JobService RPCs

test('StartJob: returns the running job, with the caller as owner', { timeout: TEST_TIMEOUT_MS }, async () => {
  const job = await start(alice, 'sleep', ['30']);
  try {
    assert.match(job.id, UUID_V4);
    assert.equal(job.owner, 'alice');
    assert.equal(job.command, 'sleep');
    assert.deepEqual(job.args, ['30']);
    assert.equal(job.state, 'JOB_STATE_RUNNING');
    assert.equal(job.end_reason, 'END_REASON_UNSPECIFIED');
    assert.equal(job.exit_code, undefined, 'exit_code is unset while the job runs');
    assert.equal(job.signal, undefined, 'signal is unset while the job runs');
    assert.ok(job.pid > 0, `pid ${job.pid}`);
    assert.ok(BigInt(job.started_at.seconds) > 0n, 'started_at is set');
    const now = BigInt(Date.now()) * 1_000_000n;
    assert.ok(nanos(job.started_at) <= now + 1_000_000_000n && nanos(job.started_at) > now - 60_000_000_000n,
      `started_at ${JSON.stringify(job.started_at)} is not about now`);
    assert.equal(job.ended_at, null, 'ended_at is unset while the job runs');
  } finally {
    await stop(alice, job.id, 5000);
  }
});

test('WaitJob: answers once the job has exited, with its exit code', { timeout: TEST_TIMEOUT_MS }, async () => {
  const t0 = Date.now();
  const job = await start(alice, 'sh', ['-c', 'sleep 0.5; exit 3']);
  const done = await unary(alice, 'WaitJob', { job_id: job.id });
  assert.ok(Date.now() - t0 >= 450, `WaitJob answered after ${Date.now() - t0} ms, before the job could end`);
  assert.equal(done.id, job.id);
  assert.equal(done.state, 'JOB_STATE_EXITED');
  assert.equal(done.end_reason, 'END_REASON_EXITED');
  assert.equal(done.exit_code, 3);
  assert.equal(done._exit_code, 'exit_code', 'exit_code is present');
  assert.equal(done.signal, undefined);
  assert.ok(nanos(done.ended_at) >= nanos(done.started_at) + 400_000_000n,
    `ended_at ${JSON.stringify(done.ended_at)} not >= 0.4 s after started_at ${JSON.stringify(done.started_at)}`);
  // On an ended job it answers at once, the same.
  const again = await unary(alice, 'WaitJob', { job_id: job.id });
  assert.deepEqual(again, done);
});

test('GetJob: the record of a running job, then of the ended job', { timeout: TEST_TIMEOUT_MS }, async () => {
  const job = await start(alice, 'sh', ['-c', 'printf hello; sleep 0.5; exit 7']);
  const running = await unary(alice, 'GetJob', { job_id: job.id });
  assert.equal(running.id, job.id);
  assert.equal(running.owner, 'alice');
  assert.equal(running.pid, job.pid);
  assert.equal(running.state, 'JOB_STATE_RUNNING');
  const done = await unary(alice, 'WaitJob', { job_id: job.id });
  const got = await unary(alice, 'GetJob', { job_id: job.id });
  assert.equal(got.state, 'JOB_STATE_EXITED');
  assert.equal(got.exit_code, 7);
  assert.equal(got.output_bytes, '5');
  assert.equal(got.output_start, '0');
  assert.deepEqual(got.ended_at, done.ended_at);
  assert.deepEqual(got.args, ['-c', 'printf hello; sleep 0.5; exit 7']);
});

test('StreamOutput: stdout and stderr byte-exact (NUL and non-UTF-8 bytes), from any offset',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const script = 'printf "a\\0b\\377"; printf err >&2';
    const job = await start(alice, 'sh', ['-c', script]);
    assert.deepEqual(job.args, ['-c', script]);
    const done = await unary(alice, 'WaitJob', { job_id: job.id });
    assert.equal(done.exit_code, 0);
    assert.equal(done.output_bytes, '7');

    for (const follow of [false, true]) {
      const chunks = await readOutput(alice, job.id, { follow });
      assert.equal(checkContiguous(chunks, 0), 7, `follow=${follow}`);
      assert.deepEqual(byStream(chunks, 'OUTPUT_STREAM_STDOUT'), Buffer.from([0x61, 0x00, 0x62, 0xff]));
      assert.deepEqual(byStream(chunks, 'OUTPUT_STREAM_STDERR'), Buffer.from('err'));
    }
    // The job wrote stdout before stderr: the combined output is in that order.
    const all = Buffer.concat((await readOutput(alice, job.id)).map((c) => c.data));
    assert.deepEqual(all, Buffer.from([0x61, 0x00, 0x62, 0xff, 0x65, 0x72, 0x72]));

    const tail = await readOutput(alice, job.id, { offset: 2 });
    assert.equal(checkContiguous(tail, 2), 7);
    assert.deepEqual(Buffer.concat(tail.map((c) => c.data)), all.subarray(2));

    assert.deepEqual(await readOutput(alice, job.id, { offset: 7 }), [], 'at the end: no chunk, OK');
    await expectError(readOutput(alice, job.id, { offset: 100 }), 'OUT_OF_RANGE', '100');
  });

test('StreamOutput with follow: the output of a running job as it is written, until it ends',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const job = await start(alice, 'sh', ['-c', 'for i in 1 2 3; do echo "tick $i"; sleep 0.2; done']);
    const chunks = await readOutput(alice, job.id, { follow: true });
    const end = checkContiguous(chunks, 0);
    assert.equal(Buffer.concat(chunks.map((c) => c.data)).toString(), 'tick 1\ntick 2\ntick 3\n');
    assert.equal(end, 21);
    // follow ends only once the job has ended.
    const got = await unary(alice, 'GetJob', { job_id: job.id });
    assert.equal(got.state, 'JOB_STATE_EXITED');
  });

test('ListJobs: pages of page_size in start order, next_page_token until the last page',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const started = [];
    for (let i = 0; i < 5; i++) {
      started.push((await start(alice, 'true')).id);
    }
    const ids = [];
    const sizes = [];
    let token = '';
    for (;;) {
      const page = await unary(alice, 'ListJobs', { page_size: 2, page_token: token });
      assert.ok(page.jobs.length <= 2, `a page of ${page.jobs.length} jobs, page_size 2`);
      sizes.push(page.jobs.length);
      ids.push(...page.jobs.map((j) => j.id));
      if (page.next_page_token === '') {
        break;
      }
      assert.notEqual(page.next_page_token, token, 'the same token twice');
      token = page.next_page_token;
      assert.ok(sizes.length < 1000, 'ListJobs pages never end');
    }
    assert.deepEqual(ids.slice(-5), started, 'pages continue in start order');
    assert.equal(new Set(ids).size, ids.length, 'a job on two pages');
    assert.ok(sizes.length >= 3, `5 jobs in pages of 2 came in ${sizes.length} pages`);
    assert.ok(sizes.slice(0, -1).every((n) => n === 2), `short page before the last: ${sizes}`);
    // Unpaged (page_size 0: the server's default of 100) the same jobs in the same order.
    const whole = await unary(alice, 'ListJobs', {});
    if (whole.next_page_token === '') {
      assert.deepEqual(whole.jobs.map((j) => j.id), ids);
    }
    await expectError(unary(alice, 'ListJobs', { page_token: 'garbage' }), 'INVALID_ARGUMENT', 'page_token');
  });

test('ListJobs: the states filter', { timeout: TEST_TIMEOUT_MS }, async () => {
  const ended = await start(alice, 'true');
  await unary(alice, 'WaitJob', { job_id: ended.id });
  const running = await start(alice, 'sleep', ['60']);
  try {
    const all = await listAll(alice);
    const ids = all.map((j) => j.id);
    assert.ok(ids.includes(ended.id) && ids.includes(running.id));
    assert.ok(ids.indexOf(ended.id) < ids.indexOf(running.id), 'start order');
    assert.ok(all.every((j) => j.owner === 'alice'), 'alice sees only her jobs');

    const onlyRunning = await listAll(alice, { states: ['JOB_STATE_RUNNING'] });
    assert.ok(onlyRunning.some((j) => j.id === running.id));
    assert.ok(!onlyRunning.some((j) => j.id === ended.id));
    assert.ok(onlyRunning.every((j) => j.state === 'JOB_STATE_RUNNING'));

    const onlyExited = await listAll(alice, { states: ['JOB_STATE_EXITED'] });
    assert.ok(onlyExited.some((j) => j.id === ended.id));
    assert.ok(!onlyExited.some((j) => j.id === running.id));
    assert.ok(onlyExited.every((j) => j.state === 'JOB_STATE_EXITED'));
  } finally {
    await stop(alice, running.id, 5000);
  }
});

test('StopJob: a sleep ends KILLED by SIGTERM, reason STOPPED; a second StopJob gives the same record',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const job = await start(alice, 'sleep', ['100']);
    assert.equal(job.state, 'JOB_STATE_RUNNING');
    const t0 = Date.now();
    const stopped = await stop(alice, job.id);
    assert.ok(Date.now() - t0 < 5000, `StopJob took ${Date.now() - t0} ms for a job that dies on SIGTERM`);
    assert.equal(stopped.id, job.id);
    assert.equal(stopped.state, 'JOB_STATE_KILLED');
    assert.equal(stopped.end_reason, 'END_REASON_STOPPED');
    assert.equal(stopped.signal, SIGTERM);
    assert.equal(stopped._signal, 'signal');
    assert.equal(stopped.exit_code, undefined);
    assert.ok(stopped.ended_at !== null);

    const again = await stop(alice, job.id);
    assert.deepEqual(again, stopped, 'StopJob is idempotent');
    const waited = await unary(alice, 'WaitJob', { job_id: job.id });
    assert.equal(waited.state, 'JOB_STATE_KILLED');
    assert.equal(waited.end_reason, 'END_REASON_STOPPED');
  });

test('RemoveJob: an ended job is removed, returning its last record; then it is NOT_FOUND',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const job = await start(alice, 'sh', ['-c', 'echo bye; exit 4']);
    const done = await unary(alice, 'WaitJob', { job_id: job.id });
    const removed = await unary(alice, 'RemoveJob', { job_id: job.id });
    assert.equal(removed.id, job.id);
    assert.equal(removed.state, 'JOB_STATE_EXITED');
    assert.equal(removed.exit_code, 4);
    assert.deepEqual(removed.ended_at, done.ended_at);

    await expectError(unary(alice, 'GetJob', { job_id: job.id }), 'NOT_FOUND', job.id);
    await expectError(unary(alice, 'WaitJob', { job_id: job.id }), 'NOT_FOUND', job.id);
    await expectError(readOutput(alice, job.id), 'NOT_FOUND', job.id);
    await expectError(unary(alice, 'RemoveJob', { job_id: job.id }), 'NOT_FOUND', job.id);
    assert.ok(!(await listAll(alice)).some((j) => j.id === job.id), 'a removed job is still listed');
  });

test('RemoveJob on a running job: FAILED_PRECONDITION, and the job runs on', { timeout: TEST_TIMEOUT_MS }, async () => {
  const job = await start(alice, 'sleep', ['100']);
  try {
    await expectError(unary(alice, 'RemoveJob', { job_id: job.id }), 'FAILED_PRECONDITION', 'still running');
    const got = await unary(alice, 'GetJob', { job_id: job.id });
    assert.equal(got.state, 'JOB_STATE_RUNNING');
  } finally {
    await stop(alice, job.id, 5000);
  }
  // Once stopped it can be removed.
  const removed = await unary(alice, 'RemoveJob', { job_id: job.id });
  assert.equal(removed.state, 'JOB_STATE_KILLED');
});

// ---------------------------------------------------------------------------------------------------------
// error codes

test('NOT_FOUND for an unknown job id, on every RPC that takes one', { timeout: TEST_TIMEOUT_MS }, async () => {
  const missing = crypto.randomUUID();
  for (const method of ['GetJob', 'WaitJob', 'StopJob', 'RemoveJob']) {
    await expectError(unary(alice, method, { job_id: missing }), 'NOT_FOUND', missing);
  }
  await expectError(readOutput(alice, missing), 'NOT_FOUND', missing);
});

test('INVALID_ARGUMENT for a malformed job id, on every RPC that takes one', { timeout: TEST_TIMEOUT_MS }, async () => {
  for (const method of ['GetJob', 'WaitJob', 'StopJob', 'RemoveJob']) {
    await expectError(unary(alice, method, { job_id: 'not-a-uuid' }), 'INVALID_ARGUMENT', 'not a UUID');
    await expectError(unary(alice, method, { job_id: '' }), 'INVALID_ARGUMENT');
  }
  await expectError(readOutput(alice, 'not-a-uuid'), 'INVALID_ARGUMENT', 'not a UUID');
});

test('INVALID_ARGUMENT for an empty command or a malformed env entry', { timeout: TEST_TIMEOUT_MS }, async () => {
  await expectError(start(alice, ''), 'INVALID_ARGUMENT', 'command');
  await expectError(start(alice, 'true', [], { env: ['NOEQUALS'] }), 'INVALID_ARGUMENT', 'NOEQUALS');
  await expectError(start(alice, 'no-such-command-xyz'), 'NOT_FOUND', 'no-such-command-xyz');
});

test("another client's job is NOT_FOUND, exactly like a job that does not exist", { timeout: TEST_TIMEOUT_MS },
  async () => {
    const job = await start(alice, 'sleep', ['60']);
    try {
      for (const method of ['GetJob', 'WaitJob', 'StopJob', 'RemoveJob']) {
        const err = await expectError(unary(bob, method, { job_id: job.id }), 'NOT_FOUND', job.id);
        // Never told apart from an unknown job: the same message, but for the id.
        const missing = crypto.randomUUID();
        const other = await expectError(unary(bob, method, { job_id: missing }), 'NOT_FOUND', missing);
        assert.equal(err.details.replace(job.id, 'ID'), other.details.replace(missing, 'ID'), method);
      }
      await expectError(readOutput(bob, job.id), 'NOT_FOUND', job.id);

      const bobs = await start(bob, 'true');
      const bobList = await listAll(bob);
      assert.ok(bobList.some((j) => j.id === bobs.id));
      assert.ok(!bobList.some((j) => j.id === job.id), "bob's list shows alice's job");
      assert.ok(bobList.every((j) => j.owner === 'bob'));
      assert.ok(!(await listAll(alice)).some((j) => j.id === bobs.id), "alice's list shows bob's job");

      // bob's StopJob and RemoveJob left it alone.
      assert.equal((await unary(alice, 'GetJob', { job_id: job.id })).state, 'JOB_STATE_RUNNING');
    } finally {
      await stop(alice, job.id, 5000);
    }
  });

test("admin sees alice's job, lists everyone's, and may stop it", { timeout: TEST_TIMEOUT_MS }, async () => {
  const job = await start(alice, 'sleep', ['60']);
  try {
    const seen = await unary(admin, 'GetJob', { job_id: job.id });
    assert.equal(seen.id, job.id);
    assert.equal(seen.owner, 'alice');
    assert.equal(seen.state, 'JOB_STATE_RUNNING');
    const bobs = await start(bob, 'true');
    const ids = (await listAll(admin)).map((j) => j.id);
    assert.ok(ids.includes(job.id) && ids.includes(bobs.id), 'admin lists every owner\'s jobs');
    const stopped = await stop(admin, job.id);
    assert.equal(stopped.state, 'JOB_STATE_KILLED');
    assert.equal(stopped.end_reason, 'END_REASON_STOPPED');
    assert.equal(stopped.owner, 'alice', 'the owner stays alice');
  } finally {
    await stop(alice, job.id, 5000);
  }
});

// ---------------------------------------------------------------------------------------------------------
// deadlines, cancellation, TLS

test('WaitJob with a 300 ms deadline: DEADLINE_EXCEEDED promptly, and the job runs on',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const job = await start(alice, 'sleep', ['30']);
    try {
      const t0 = Date.now();
      await expectError(unary(alice, 'WaitJob', { job_id: job.id }, 300), 'DEADLINE_EXCEEDED');
      const elapsed = Date.now() - t0;
      assert.ok(elapsed >= 250 && elapsed < 5000, `DEADLINE_EXCEEDED after ${elapsed} ms`);
      const got = await unary(alice, 'GetJob', { job_id: job.id });
      assert.equal(got.state, 'JOB_STATE_RUNNING');
    } finally {
      const stopped = await stop(alice, job.id, 5000);
      assert.equal(stopped.state, 'JOB_STATE_KILLED');
    }
  });

test('StreamOutput cancelled mid-stream: CANCELLED; the channel, the server and the job carry on',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const job = await start(alice, 'sh', ['-c', 'i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done']);
    try {
      const call = alice.StreamOutput({ job_id: job.id, offset: '0', follow: true },
        { deadline: Date.now() + 20_000 });
      const chunks = [];
      const outcome = new Promise((resolve) => {
        call.on('error', (err) => resolve({ err }));
        call.on('end', () => resolve({ end: true }));
      });
      await new Promise((resolve, reject) => {
        call.on('data', (c) => {
          chunks.push(c);
          if (Buffer.concat(chunks.map((x) => x.data)).length >= 12) {
            resolve();
          }
        });
        call.once('error', reject);
      });
      call.cancel();
      const result = await outcome;
      assert.ok(result.err, 'the cancelled call ended without an error');
      assert.equal(grpc.status[result.err.code], 'CANCELLED');

      checkContiguous(chunks, 0);
      assert.ok(chunks.every((c) => c.stream === 'OUTPUT_STREAM_STDOUT'));
      const received = Buffer.concat(chunks.map((c) => c.data));
      assert.ok(received.toString().startsWith('line0\nline1\n'), JSON.stringify(received.toString()));

      // The same channel: the server still answers, and the job still runs and writes.
      const got = await unary(alice, 'GetJob', { job_id: job.id });
      assert.equal(got.state, 'JOB_STATE_RUNNING');
      await sleep(200);
      const later = await unary(alice, 'GetJob', { job_id: job.id });
      assert.equal(later.state, 'JOB_STATE_RUNNING');
      assert.ok(BigInt(later.output_bytes) > BigInt(got.output_bytes), 'the job stopped writing');

      // A new StreamOutput from offset 0 gives the same first bytes.
      const again = await readOutput(alice, job.id, { offset: 0 });
      const replay = Buffer.concat(again.map((c) => c.data));
      assert.ok(replay.length >= received.length);
      assert.deepEqual(replay.subarray(0, received.length), received);
    } finally {
      const stopped = await stop(alice, job.id, 5000);
      assert.equal(stopped.state, 'JOB_STATE_KILLED');
      assert.equal(stopped.end_reason, 'END_REASON_STOPPED');
    }
  });

test('a client certificate from a CA the server does not trust: UNAVAILABLE, and the server serves on',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const mallory = makeClient(JobService, 'mallory');
    const t0 = Date.now();
    const err = await expectError(unary(mallory, 'ListJobs', {}, 5000), 'UNAVAILABLE');
    assert.ok(Date.now() - t0 < 5000, 'UNAVAILABLE only at the deadline');
    // A second call on that channel fails the same (grpc-js may answer it from the channel's failed state).
    await expectError(start(mallory, 'true', [], {}), 'UNAVAILABLE');
    assert.ok(!/DEADLINE/i.test(err.details), err.details);
    mallory.close();

    // The server serves alice's existing channel and a new one.
    await unary(alice, 'ListJobs', { page_size: 1 });
    const fresh = makeClient(JobService, 'alice');
    const job = await start(fresh, 'true');
    assert.equal(job.owner, 'alice');
    const health = makeClient(Health, 'bob');
    assert.equal((await unary(health, 'Check', {})).status, 'SERVING');
    // No job was started for mallory.
    assert.ok(!(await listAll(admin)).some((j) => j.owner === 'mallory'));
  });

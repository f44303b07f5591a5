// test_serve.js - kdrank-serve called by the Node gRPC client @grpc/grpc-js (installed by
// deploy/setup.sh with npm): scores equal `kdrank-ckpt score` bit for bit, errors carry their
// status code and message, health, metadata, unknown method. Exit 0 pass, 1 fail, 77 skip.
// Usage: node test_serve.js --serve BIN --ckpt BIN --proto-dir DIR
'use strict';
const { spawn, execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

let grpc, protoLoader;
try {
  grpc = require('@grpc/grpc-js');
  protoLoader = require('@grpc/proto-loader');
} catch (e) {
  console.log('SKIP: @grpc/grpc-js not installed (run deploy/setup.sh, which runs npm install in tests/interop/node)');
  process.exit(77);
}

const args = {};
for (let i = 2; i + 1 < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const k of ['serve', 'ckpt', 'proto-dir']) {
  if (!args[k]) { console.error('usage: node test_serve.js --serve BIN --ckpt BIN --proto-dir DIR'); process.exit(2); }
}

let failures = 0, passes = 0;
function check(cond, what) {
  if (cond) { passes++; } else { failures++; console.error('FAIL: ' + what); }
}

const ckpt = (...a) => execFileSync(args.ckpt, a.map(String), { encoding: 'utf8', timeout: 120000 });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kdnode-'));
const repo = path.join(tmp, 'repo');
const modelFile = path.join(repo, 'tiny', '5', 'model.kdr');
fs.mkdirSync(path.dirname(modelFile), { recursive: true });
ckpt('random', '--preset', 'tiny', '--seed', 41, '--name', 'tiny', '-o', modelFile);

const pkgOpts = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true };
const kd = grpc.loadPackageDefinition(protoLoader.loadSync(path.join(args['proto-dir'], 'kdrank.proto'), pkgOpts)).kdrank.v1;
const hv = grpc.loadPackageDefinition(protoLoader.loadSync(path.join(args['proto-dir'], 'health.proto'), pkgOpts)).grpc.health.v1;

function startServer() {
  return new Promise((resolve, reject) => {
    const proc = spawn(args.serve, ['--model-repo', repo, '--listen', '127.0.0.1:0', '--metrics-listen', '', '--threads', '2'],
      { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error('server did not start:\n' + log)); }, 60000);
    proc.stderr.on('data', (d) => {
      log += d;
      const m = /event=listening .*port=(\d+)/.exec(log);
      if (m && !proc.port) { proc.port = Number(m[1]); clearTimeout(timer); resolve(proc); }
    });
    proc.on('exit', (code) => { proc.exitCode_ = code; if (!proc.port) { clearTimeout(timer); reject(new Error('server exited ' + code + ':\n' + log)); } });
  });
}

const call = (client, method, req, ms = 10000) => new Promise((resolve) => {
  client[method](req, { deadline: Date.now() + ms }, (err, res) => resolve({ err, res }));
});

async function main() {
  const proc = await startServer();
  const target = '127.0.0.1:' + proc.port;
  const ranker = new kd.Ranker(target, grpc.credentials.createInsecure());
  const health = new hv.Health(target, grpc.credentials.createInsecure());

  // Scores: bit-exact against kdrank-ckpt score on the same request.
  for (const [n, seed, k] of [[1, 1, 1], [13, 2, 2], [200, 3, 1]]) {
    const reqPath = path.join(tmp, `req${seed}.json`);
    ckpt('request', '--model', modelFile, '--candidates', n, '--seed', seed, '--k', k, '-o', reqPath);
    const req = JSON.parse(fs.readFileSync(reqPath, 'utf8'));
    const want = JSON.parse(ckpt('score', modelFile, '--request', reqPath));
    const { err, res } = await call(ranker, 'Score', req);
    check(!err, `Score n=${n}: ${err && err.details}`);
    if (err) continue;
    check(res.model === 'tiny' && res.version === '5' && res.versionLabel === 'stable', `Score n=${n} model/version ${res.model}/${res.version}`);
    check(JSON.stringify(res.tasks) === JSON.stringify(want.tasks), `Score n=${n} tasks ${res.tasks}`);
    check(res.scores.length === want.scores.length, `Score n=${n} length ${res.scores.length} vs ${want.scores.length}`);
    let same = true;
    for (let i = 0; i < want.scores.length; i++) if (res.scores[i] !== Math.fround(want.scores[i])) { same = false; console.error(`  score ${i}: ${res.scores[i]} vs ${want.scores[i]}`); break; }
    check(same, `Score n=${n} scores bit-exact`);
  }

  // Errors: code and message.
  const bad = JSON.parse(fs.readFileSync(path.join(tmp, 'req2.json'), 'utf8'));
  bad.candidates.columns = bad.candidates.columns.filter((c) => c.name !== 'item_dense');
  let r = await call(ranker, 'Score', bad);
  check(r.err && r.err.code === grpc.status.INVALID_ARGUMENT && /candidates: missing feature "item_dense"/.test(r.err.details),
    `missing feature: ${r.err && r.err.code} ${r.err && r.err.details}`);
  r = await call(ranker, 'Score', { model: 'nope' });
  check(r.err && r.err.code === grpc.status.NOT_FOUND && /model "nope" not found/.test(r.err.details), `unknown model: ${r.err && r.err.details}`);
  r = await call(ranker, 'Score', { model: 'tiny', version: '4' });
  check(r.err && r.err.code === grpc.status.NOT_FOUND && /version 4 of model "tiny" is not loaded \(loaded: 5\)/.test(r.err.details),
    `pinned version: ${r.err && r.err.details}`);

  // Health and metadata.
  r = await call(health, 'Check', { service: '' });
  check(!r.err && r.res.status === 'SERVING', `health: ${r.err ? r.err.details : r.res.status}`);
  r = await call(health, 'Check', { service: 'tiny' });
  check(!r.err && r.res.status === 'SERVING', 'health tiny');
  r = await call(health, 'Check', { service: 'nope' });
  check(r.err && r.err.code === grpc.status.NOT_FOUND, 'health unknown service');
  r = await call(ranker, 'GetModelMetadata', {});
  check(!r.err && r.res.model === 'tiny' && r.res.version === '5' && r.res.features.length === 5 && r.res.tasks.length === 4,
    `metadata: ${r.err ? r.err.details : JSON.stringify(r.res).slice(0, 200)}`);

  // Unknown method.
  const generic = new grpc.Client(target, grpc.credentials.createInsecure());
  r = await new Promise((resolve) => generic.makeUnaryRequest('/kdrank.v1.Ranker/Nope', (x) => x, (x) => x, Buffer.alloc(0),
    { deadline: Date.now() + 10000 }, (err, res) => resolve({ err, res })));
  check(r.err && r.err.code === grpc.status.UNIMPLEMENTED && /unknown method \/kdrank.v1.Ranker\/Nope/.test(r.err.details),
    `unknown method: ${r.err && r.err.code}`);

  ranker.close(); health.close(); generic.close();
  const exited = new Promise((resolve) => { if (proc.exitCode_ !== undefined) resolve(proc.exitCode_); else proc.on('exit', (c) => resolve(c)); });
  proc.kill('SIGTERM');
  const code = await Promise.race([exited, new Promise((res) => setTimeout(() => res('timeout'), 30000))]);
  check(code === 0, `server exit code ${code}`);
  if (code === 'timeout') proc.kill('SIGKILL');
}

main().catch((e) => { failures++; console.error('FAIL: ' + (e.stack || e)); }).finally(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
  console.log(`checks: ${passes} passed, ${failures} failed`);
  process.exit(failures ? 1 : 0);
});

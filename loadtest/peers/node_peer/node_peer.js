// node_peer.js - a peer kdrank is compared with: a Node @grpc/grpc-js server implementing
// kdrank.v1.Ranker (Score, GetModelMetadata) that scores with onnxruntime-node, on the ONNX graph
// export_onnx.py made from the weights of a kdrank checkpoint. Sparse ids are hashed to embedding
// rows here with kd_hash_row (splitmix64 finaliser, mod rows) and the graph gathers and mean-pools.
// Prints "PORT <n>" once serving. Usage: node node_peer.js MODEL.onnx PROTO_DIR [PORT]
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const ort = require('onnxruntime-node');

const M64 = (1n << 64n) - 1n;
function hashRow(id, rows) {
  let z = (BigInt.asUintN(64, BigInt(id)) + 0x9E3779B97F4A7C15n) & M64;
  z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & M64;
  z ^= z >> 31n;
  return z % rows;
}

async function main() {
  const [onnxPath, protoDir, portArg] = process.argv.slice(2);
  const arch = require(path.resolve(onnxPath.replace(/\.onnx$/, '.json')));
  const session = await ort.InferenceSession.create(onnxPath, {intraOpNumThreads: 1, interOpNumThreads: 1});
  const def = protoLoader.loadSync(path.join(protoDir, 'kdrank.proto'),
                                   {longs: String, enums: Number, defaults: true, oneofs: true});
  const pkg = grpc.loadPackageDefinition(def).kdrank.v1;
  const served = arch.tasks.filter((t) => t.served).map((t) => t.name);

  function invalid(cb, msg) { cb({code: grpc.status.INVALID_ARGUMENT, details: msg}); }

  async function score(call, cb) {
    const req = call.request;
    try {
      const n = req.candidates ? req.candidates.count : 0;
      if (!req.context || req.context.count !== 1) return invalid(cb, 'context.count must be 1');
      if (n < 1) return invalid(cb, 'candidates.count must be >= 1');
      const feeds = {};
      for (const f of arch.features) {
        const batch = f.group === 'context' ? req.context : req.candidates;
        const rows = f.group === 'context' ? 1 : n;
        const col = batch.columns.find((c) => c.name === f.name);
        if (!col) return invalid(cb, `feature ${f.name}: missing`);
        if (f.kind === 'dense') {
          if (col.floats.length !== rows * f.dim)
            return invalid(cb, `feature ${f.name}: expected ${rows * f.dim} floats, found ${col.floats.length}`);
          feeds[f.name] = new ort.Tensor('float32', Float32Array.from(col.floats), [rows, f.dim]);
        } else {
          const k = col.ids.length / rows;
          if (!Number.isInteger(k) || k < 1)
            return invalid(cb, `feature ${f.name}: expected a multiple of ${rows} ids, found ${col.ids.length}`);
          const r = new BigInt64Array(col.ids.length), nrows = BigInt(f.rows);
          for (let i = 0; i < col.ids.length; i++) r[i] = hashRow(col.ids[i], nrows);
          feeds[f.name] = new ort.Tensor('int64', r, [rows, k]);
        }
      }
      const out = (await session.run(feeds)).scores.data;
      const tasks = req.tasks.length ? req.tasks : served;
      const idx = tasks.map((t) => served.indexOf(t));
      if (idx.some((i) => i < 0)) return invalid(cb, 'a requested task is not served');
      const scores = new Array(n * tasks.length);
      for (let c = 0; c < n; c++)
        for (let t = 0; t < tasks.length; t++) scores[c * tasks.length + t] = out[c * served.length + idx[t]];
      cb(null, {model: arch.model, version: '1', version_label: 'stable', tasks, scores});
    } catch (e) {
      cb({code: grpc.status.INTERNAL, details: String(e)});
    }
  }

  function metadata(call, cb) {
    cb(null, {
      model: arch.model, version: '1', version_label: 'stable', architecture: arch.architecture,
      features: arch.features.map((f) => ({name: f.name, kind: f.kind === 'dense' ? 0 : 1,
                                           group: f.group === 'context' ? 0 : 1, dim: f.dim, rows: String(f.rows)})),
      tasks: arch.tasks.map((t) => ({name: t.name, type: t.type === 'binary' ? 0 : 1, served: t.served,
                                     transform: t.transform})),
      max_candidates: 10000,
    });
  }

  const server = new grpc.Server({'grpc.so_reuseport': 0, 'grpc.max_receive_message_length': 4 << 20});
  server.addService(pkg.Ranker.service, {Score: score, GetModelMetadata: metadata});
  server.bindAsync(`127.0.0.1:${portArg || 0}`, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) { console.error(`node_peer: bind failed: ${err.message}`); process.exit(1); }
    console.log(`PORT ${port}`);
  });
  const stop = () => server.tryShutdown(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => { console.error(e); process.exit(1); });

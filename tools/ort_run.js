#!/usr/bin/env node
// Runs an ONNX model with ONNX Runtime (onnxruntime-node, CPU EP) on .npy inputs and writes each
// output as OUT_DIR/<output name>.npy: the independent reference the runtime tests compare to.
//
// Usage: node tools/ort_run.js MODEL.onnx OUT_DIR NAME=FILE.npy ...
//        node tools/ort_run.js --batch JOBS.txt
// Batch mode runs many models in one process (starting node and loading ORT costs far more than a
// tiny model's run): each line of JOBS.txt holds one job's arguments, tab-separated, in the order
// above. A failing job writes its message to OUT_DIR/error.txt and the others still run.
// onnxruntime-node is looked up in $QC_ORT_NODE_MODULES (a node_modules directory), then through
// the usual NODE_PATH/require resolution.
// Exit codes: 0 success, 1 bad input (usage, unreadable .npy, ORT rejected the model or feeds;
// in batch mode: any job failed), 3 onnxruntime-node not found (callers treat this as "ORT
// unavailable" and skip).
'use strict';

const fs = require('fs');
const path = require('path');

function loadOrt() {
  const candidates = [];
  if (process.env.QC_ORT_NODE_MODULES) {
    candidates.push(path.join(process.env.QC_ORT_NODE_MODULES, 'onnxruntime-node'));
  }
  candidates.push('onnxruntime-node');
  for (const c of candidates) {
    try {
      return require(c);
    } catch (e) {
      if (e.code !== 'MODULE_NOT_FOUND') throw e;
    }
  }
  return null;
}

// .npy descr <-> ORT tensor type and typed array. Only little-endian / byte-sized types are
// listed: the C++ side writes those (formats/npy.h) and ORT's CPU EP takes nothing else here.
const kNpyTypes = {
  '<f4': {ort: 'float32', array: Float32Array},
  '<f2': {ort: 'float16', array: Uint16Array},  // IEEE half bits, as ONNX Runtime hands them over
  '<f8': {ort: 'float64', array: Float64Array},
  '<i8': {ort: 'int64', array: BigInt64Array},
  '<u8': {ort: 'uint64', array: BigUint64Array},
  '<i4': {ort: 'int32', array: Int32Array},
  '<u4': {ort: 'uint32', array: Uint32Array},
  '<i2': {ort: 'int16', array: Int16Array},
  '<u2': {ort: 'uint16', array: Uint16Array},
  '|i1': {ort: 'int8', array: Int8Array},
  '|u1': {ort: 'uint8', array: Uint8Array},
  '|b1': {ort: 'bool', array: Uint8Array},
};

function readNpy(ort, file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 10 || buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const headerStart = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', headerStart, headerStart + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw new Error(`${file}: malformed .npy header: ${header}`);
  if (fortran[1] === 'True') throw new Error(`${file}: Fortran-order arrays are not supported`);
  const type = kNpyTypes[descr[1]];
  if (!type) throw new Error(`${file}: unsupported dtype ${descr[1]}`);
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  const count = dims.reduce((a, b) => a * b, 1);
  const dataStart = headerStart + headerLen;
  const bytes = count * type.array.BYTES_PER_ELEMENT;
  if (buf.length < dataStart + bytes) throw new Error(`${file}: truncated data (${buf.length - dataStart} of ${bytes} bytes)`);
  // Copy into a fresh, aligned buffer: the file buffer's offset need not be a multiple of 8.
  const data = new type.array(count);
  new Uint8Array(data.buffer).set(buf.subarray(dataStart, dataStart + bytes));
  if (type.ort === 'bool') return new ort.Tensor('bool', data, dims);
  return new ort.Tensor(type.ort, data, dims);
}

function writeNpy(tensor, file) {
  const entry = Object.entries(kNpyTypes).find(([, t]) => t.ort === tensor.type);
  if (!entry) throw new Error(`output type ${tensor.type} cannot be written as .npy`);
  const [descr] = entry;
  const dims = tensor.dims;
  const shape = dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  // Pad so the data starts on a 64-byte boundary, as NumPy does; the header ends with '\n'.
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const pre = Buffer.alloc(10);
  pre.write('\x93NUMPY', 0, 'latin1');
  pre[6] = 1;
  pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  const data = tensor.data;
  const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const tmp = `${file}.tmp${process.pid}`;
  fs.writeFileSync(tmp, Buffer.concat([pre, Buffer.from(header, 'latin1'), body]));
  fs.renameSync(tmp, file);
}

async function runJob(ort, args) {
  const [modelPath, outDir, ...feedArgs] = args;
  const feeds = {};
  for (const a of feedArgs) {
    const eq = a.indexOf('=');
    if (eq <= 0) throw new Error(`feed '${a}' is not NAME=FILE.npy`);
    feeds[a.slice(0, eq)] = readNpy(ort, a.slice(eq + 1));
  }
  // Full graph optimisations would let ORT fuse and reorder float math; basic ones keep its
  // result a faithful reading of the graph as written.
  const session = await ort.InferenceSession.create(modelPath, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'basic',
    intraOpNumThreads: 1,
  });
  const results = await session.run(feeds);
  fs.mkdirSync(outDir, {recursive: true});
  for (const name of session.outputNames) writeNpy(results[name], path.join(outDir, `${name}.npy`));
  await session.release();
}

async function main() {
  const args = process.argv.slice(2);
  const batch = args[0] === '--batch';
  if ((batch && args.length !== 2) || (!batch && args.length < 2)) {
    process.stderr.write('usage: node tools/ort_run.js MODEL.onnx OUT_DIR NAME=FILE.npy ...\n' +
                         '       node tools/ort_run.js --batch JOBS.txt\n');
    return 1;
  }
  const ort = loadOrt();
  if (ort === null) {
    process.stderr.write('onnxruntime-node not found (set QC_ORT_NODE_MODULES to a node_modules directory)\n');
    return 3;
  }
  if (!batch) {
    await runJob(ort, args);
    return 0;
  }
  const jobs = fs.readFileSync(args[1], 'utf8').split('\n').filter((l) => l.trim().length > 0).map((l) => l.split('\t'));
  let failed = 0;
  for (const job of jobs) {
    try {
      if (job.length < 2) throw new Error(`job '${job.join(' ')}' needs MODEL and OUT_DIR`);
      await runJob(ort, job);
    } catch (err) {
      failed++;
      const message = err && err.message ? err.message : String(err);
      process.stderr.write(`ort_run: ${job[0]}: ${message}\n`);
      if (job.length >= 2) {
        fs.mkdirSync(job[1], {recursive: true});
        fs.writeFileSync(path.join(job[1], 'error.txt'), message + '\n');
      }
    }
  }
  return failed === 0 ? 0 : 1;
}

main().then((code) => process.exit(code), (err) => {
  process.stderr.write(`ort_run: ${err && err.message ? err.message : err}\n`);
  process.exit(1);
});

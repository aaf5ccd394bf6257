// Perplexity with ONNX Runtime (npm onnxruntime-node, CPU EP) under the same protocol as
// `qconvert eval`: non-overlapping windows, every position but the first scored.
// Usage: node tools/ort_eval.js MODEL.onnx IDS.npy SEQLEN MAX_WINDOWS THREADS
// Prints one JSON object: {ppl, windows, tokens_scored, seconds, tokens_per_second}.
'use strict';
const path = require('path');
const fs = require('fs');
const ort = require(path.resolve(process.env.QC_ORT_NODE_MODULES || 'node_modules', 'onnxruntime-node'));

function loadIds(file) {
  const b = fs.readFileSync(file);
  if (b.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(file + ': not a .npy file');
  const major = b[6];
  const hlen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12);
  const header = b.toString('latin1', start, start + hlen);
  const off = start + hlen;
  const i64 = header.includes("'<i8'");
  if (!i64 && !header.includes("'<i4'")) throw new Error(file + ': ids must be int32 or int64');
  const n = (b.length - off) / (i64 ? 8 : 4);
  const ids = new BigInt64Array(n);
  for (let i = 0; i < n; i++) ids[i] = i64 ? b.readBigInt64LE(off + 8 * i) : BigInt(b.readInt32LE(off + 4 * i));
  return ids;
}

// IEEE half (as ONNX Runtime hands float16 tensors to JavaScript: raw uint16 bits) to a number.
function halfToNumber(h) {
  const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

// Logits of any float type as numbers (float16 models give float16 logits).
function asFloats(tensor) {
  if (tensor.type === 'float32') return tensor.data;
  if (tensor.type === 'float16') return Float64Array.from(tensor.data, halfToNumber);
  if (tensor.type === 'bfloat16') return Float64Array.from(tensor.data, (b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0]);
  throw new Error('logits of type ' + tensor.type + ' cannot be scored');
}

// Feeds for a prefill: ids, ones for attention_mask, 0..S-1 for position_ids.
function feedsFor(session, window, seqlen) {
  const feeds = {};
  for (const name of session.inputNames) {
    if (name.includes('input_ids')) feeds[name] = new ort.Tensor('int64', window, [1, seqlen]);
    else if (name.includes('attention_mask')) feeds[name] = new ort.Tensor('int64', new BigInt64Array(seqlen).fill(1n), [1, seqlen]);
    else if (name.includes('position_ids')) feeds[name] = new ort.Tensor('int64', BigInt64Array.from({length: seqlen}, (_, i) => BigInt(i)), [1, seqlen]);
    else throw new Error('cannot fill input ' + name);
  }
  return feeds;
}

async function main() {
  const [model, idsFile, seqlenArg, maxArg, threadsArg] = process.argv.slice(2);
  const seqlen = Number(seqlenArg), threads = Number(threadsArg || 0);
  const ids = loadIds(idsFile);
  const windows = Math.min(Math.floor(ids.length / seqlen), Number(maxArg));
  const session = await ort.InferenceSession.create(model, {intraOpNumThreads: threads, interOpNumThreads: 1});
  const out = session.outputNames.includes('logits') ? 'logits' : session.outputNames[0];
  let nll = 0, scored = 0;
  // Only session.run is timed (scoring in JavaScript would penalise ONNX Runtime unfairly).
  let runNs = 0n;
  for (let w = 0; w < windows; w++) {
    const win = ids.slice(w * seqlen, (w + 1) * seqlen);
    const t0 = process.hrtime.bigint();
    const result = await session.run(feedsFor(session, win, seqlen));
    runNs += process.hrtime.bigint() - t0;
    const logits = asFloats(result[out]), vocab = result[out].dims[2];
    for (let t = 0; t < seqlen - 1; t++) {
      let max = -Infinity;
      for (let v = 0; v < vocab; v++) max = Math.max(max, logits[t * vocab + v]);
      let sum = 0;
      for (let v = 0; v < vocab; v++) sum += Math.exp(logits[t * vocab + v] - max);
      nll += Math.log(sum) + max - logits[t * vocab + Number(win[t + 1])];
      scored++;
    }
  }
  const seconds = Number(runNs) / 1e9;
  console.log(JSON.stringify({ppl: Math.exp(nll / scored), windows, tokens_scored: scored, seconds,
                              tokens_per_second: windows * seqlen / seconds}));
}

main().catch((e) => { console.error('ort_eval: ' + e.message); process.exit(1); });

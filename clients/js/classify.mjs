// Classify MNIST digits with a published CapsNet ONNX file in Node.js (onnxruntime-node, CPU).
//
//   node classify.mjs <model.onnx> <digits.f32>           -> {"labels": [...], "lengths": [[...10]...]}
//   node classify.mjs <model.onnx> <digits.f32> --speed   -> {"images_per_s": {"1": ..., "64": ...}}
//
// digits.f32: N x 28 x 28 float32 little-endian, pixels in [0, 1], MNIST-style (white digit on black).
import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-node";

const [modelPath, digitsPath, mode] = process.argv.slice(2);
if (!modelPath || !digitsPath) {
  console.error("usage: node classify.mjs <model.onnx> <digits.f32> [--speed]");
  process.exit(2);
}
const pixels = new Float32Array(new Uint8Array(readFileSync(digitsPath)).buffer);
const count = pixels.length / 784;
const session = await ort.InferenceSession.create(modelPath, { executionProviders: ["cpu"] });

async function lengthsOf(start, n) {
  const image = new ort.Tensor("float32", pixels.subarray(start * 784, (start + n) * 784), [n, 1, 28, 28]);
  const { lengths } = await session.run({ image }, ["lengths"]);
  return lengths.data;
}

if (mode === "--speed") {
  const rates = {};
  for (const batch of [1, 64]) {
    await lengthsOf(0, batch);  // warm-up
    let images = 0;
    const started = performance.now();
    while (performance.now() - started < 3000) {
      await lengthsOf(0, batch);
      images += batch;
    }
    rates[batch] = Math.round(images / ((performance.now() - started) / 1000));
  }
  console.log(JSON.stringify({ images_per_s: rates }));
} else {
  const data = await lengthsOf(0, count);
  const lengths = [];
  const labels = [];
  for (let i = 0; i < count; i++) {
    const row = Array.from(data.subarray(i * 10, i * 10 + 10));
    lengths.push(row);
    labels.push(row.indexOf(Math.max(...row)));
  }
  console.log(JSON.stringify({ labels, lengths }));
}

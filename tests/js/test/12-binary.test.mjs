// 12. V2 binary frames: client binary push (kind 0) -> binary broadcast (kind 2);
//     API payload_base64 -> binary broadcast.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import {
  apiBroadcast,
  apiBroadcastOk,
  bytesOf,
  collect,
  connectSocket,
  joinOk,
  makeV1Codec,
  rawConnect,
  rawWaitFor,
  replyOf,
  sleep,
  uniqueTopic,
  waitUntil,
} from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

function sampleBytes(n) {
  const b = randomBytes(n);
  // Make sure the edge values are in there.
  b[0] = 0x00;
  b[1] = 0xff;
  b[2] = 0x7b; // '{'
  b[3] = 0x5b; // '['
  return b;
}

function toArrayBuffer(buf) {
  return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
}

test("binary push on room:* gets ok; every subscriber gets an ArrayBuffer with identical bytes", T, async () => {
  const topic = uniqueTopic("room", "bin");
  const sockets = [];
  for (let i = 0; i < 4; i++) sockets.push(await connectSocket(ctx.server));
  const channels = await Promise.all(sockets.map((s) => joinOk(s, topic)));
  const got = channels.map((c) => collect(c, "blob"));

  const bytes = sampleBytes(300);
  const payload = toArrayBuffer(bytes);
  assert.equal(payload.constructor, ArrayBuffer);
  const r = await replyOf(channels[0].push("blob", payload), 5000, "reply to binary push");
  assert.equal(r.status, "ok", `binary push reply: ${JSON.stringify(r)}`);

  await waitUntil(() => got.every((g) => g.length >= 1), 5000, () => `binary broadcast at every subscriber (counts ${got.map((g) => g.length)})`);
  await sleep(200);
  got.forEach((g, i) => {
    assert.equal(g.length, 1, `socket ${i} count`);
    assert.ok(g[0] instanceof ArrayBuffer, `socket ${i}: payload is an ArrayBuffer`);
    assert.deepEqual(bytesOf(g[0]), Array.from(bytes), `socket ${i}: identical bytes`);
  });
  // Broadcast shape: kind 2 decodes to null join_ref and ref.
  const frame = sockets[1].rec.messages.find((m) => m.event === "blob");
  assert.equal(frame.join_ref, null);
  assert.equal(frame.ref, null);
  assert.equal(frame.topic, topic);
});

test("empty binary payload round-trips", T, async () => {
  const topic = uniqueTopic("room", "bin-empty");
  const a = await connectSocket(ctx.server);
  const b = await connectSocket(ctx.server);
  const ca = await joinOk(a, topic);
  const cb = await joinOk(b, topic);
  const got = collect(cb, "empty");
  const r = await replyOf(ca.push("empty", new ArrayBuffer(0)), 5000, "reply");
  assert.equal(r.status, "ok");
  await waitUntil(() => got.length >= 1, 5000, "empty binary broadcast");
  assert.ok(got[0] instanceof ArrayBuffer);
  assert.equal(got[0].byteLength, 0);
});

test("raw check: a kind-0 push is rebroadcast as the exact kind-2 frame", T, async () => {
  const topic = uniqueTopic("room", "bin-raw");
  const ws = await rawConnect(ctx.server, "?vsn=2.0.0");
  ws.send(JSON.stringify(["1", "1", topic, "phx_join", {}]));
  await rawWaitFor(ws, (m) => Array.isArray(m) && m[1] === "1", 5000, "join reply");
  const enc = (s) => Buffer.from(s, "utf8");
  const [jr, ref, tp, ev, pl] = [enc("1"), enc("7"), enc(topic), enc("up"), Buffer.from([1, 2, 3])];
  ws.send(Buffer.concat([Buffer.from([0, jr.length, ref.length, tp.length, ev.length]), jr, ref, tp, ev, pl]), {
    binary: true,
  });
  const bin = await rawWaitFor(ws, (m) => Buffer.isBuffer(m), 5000, "binary broadcast frame");
  assert.equal(
    bin.toString("hex"),
    Buffer.concat([Buffer.from([2, tp.length, ev.length]), tp, ev, pl]).toString("hex"),
    "kind-2 frame: 02 T E topic event payload",
  );
  const reply = await rawWaitFor(ws, (m) => Array.isArray(m) && m[1] === "7", 5000, "reply to binary push");
  assert.equal(reply[0], "1");
  assert.equal(reply[2], topic);
  assert.equal(reply[3], "phx_reply");
  assert.equal(reply[4].status, "ok");
});

test("API broadcast with payload_base64 arrives as an ArrayBuffer at V2 clients", T, async () => {
  const topic = uniqueTopic("room", "b64");
  const sockets = [];
  for (let i = 0; i < 3; i++) sockets.push(await connectSocket(ctx.server));
  const channels = await Promise.all(sockets.map((s) => joinOk(s, topic)));
  const got = channels.map((c) => collect(c, "bin"));
  const bytes = sampleBytes(1000);
  await apiBroadcastOk(ctx.server, { topic, event: "bin", payload_base64: bytes.toString("base64") }, 1);
  await waitUntil(() => got.every((g) => g.length >= 1), 5000, () => `base64 broadcast at every V2 socket (counts ${got.map((g) => g.length)})`);
  await sleep(200);
  got.forEach((g, i) => {
    assert.equal(g.length, 1);
    assert.ok(g[0] instanceof ArrayBuffer, `socket ${i}: payload is an ArrayBuffer`);
    assert.deepEqual(bytesOf(g[0]), Array.from(bytes), `socket ${i}: identical bytes`);
  });
});

test("a V1 subscriber is not broken by a binary broadcast and still gets JSON broadcasts", T, async () => {
  const topic = uniqueTopic("room", "b64-v1");
  const codec = makeV1Codec();
  const v1 = await connectSocket(ctx.server, { vsn: "1.0.0", encode: codec.encode, decode: codec.decode });
  const v2 = await connectSocket(ctx.server);
  const c1 = await joinOk(v1, topic);
  const c2 = await joinOk(v2, topic);
  const bin2 = collect(c2, "bin");
  const json1 = collect(c1, "json");
  await apiBroadcastOk(ctx.server, { topic, event: "bin", payload_base64: "AAEC" }, 1);
  await apiBroadcastOk(ctx.server, { topic, event: "json", payload: { after: true } }, 1);
  await waitUntil(() => bin2.length >= 1 && json1.length >= 1, 5000, "binary at V2 and JSON at V1");
  assert.deepEqual(bytesOf(bin2[0]), [0, 1, 2]);
  assert.deepEqual(json1, [{ after: true }]);
  assert.equal(v1.isConnected(), true);
  assert.equal(v1.rec.opens, 1);
  assert.deepEqual(codec.undecodable, [], "no binary (V2-only) frame was sent to the V1 connection");
});

test("invalid payload_base64 is refused with 400", T, async () => {
  const r = await apiBroadcast(ctx.server, { topic: "room:x", event: "e", payload_base64: "***not base64***" });
  assert.equal(r.status, 400, `got ${r.status} ${r.text}`);
  assert.equal(typeof r.json?.error, "string");
});

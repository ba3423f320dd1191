// 5. One broadcast reaching many sockets spread over both shards.
//    The kernel's SO_REUSEPORT balancing decides which shard accepts a connection;
//    with 12 connections and 2 shards the chance that one shard gets none is 2/4096.

import assert from "node:assert/strict";
import { test } from "node:test";
import { apiBroadcastOk, collect, connectSocket, joinOk, replyOf, sleep, uniqueTopic, waitUntil } from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();
const N = 12;

async function openJoined(topic) {
  const sockets = [];
  for (let i = 0; i < N; i++) sockets.push(await connectSocket(ctx.server));
  const channels = await Promise.all(sockets.map((s) => joinOk(s, topic)));
  return { sockets, channels };
}

test(`a client push reaches all ${N} sockets (both shards) exactly once`, T, async () => {
  const topic = uniqueTopic("room", "fanout");
  const { channels } = await openJoined(topic);
  const got = channels.map((c) => collect(c, "fan"));
  const r = await replyOf(channels[3].push("fan", { from: 3 }), 5000, "push reply");
  assert.deepEqual(r, { status: "ok", response: {} });
  await waitUntil(() => got.every((g) => g.length >= 1), 5000, () => `broadcast at all ${N} sockets (counts ${got.map((g) => g.length)})`);
  await sleep(300);
  got.forEach((g, i) => assert.deepEqual(g, [{ from: 3 }], `socket ${i}`));
});

test(`a stream of pushes from two senders arrives at all ${N} sockets, per-sender order kept`, T, async () => {
  const topic = uniqueTopic("room", "fanout-seq");
  const { channels } = await openJoined(topic);
  const got = channels.map((c) => collect(c, "seq"));
  const M = 25;
  const pushes = [];
  for (let i = 0; i < M; i++) {
    pushes.push(replyOf(channels[0].push("seq", { s: "a", i }), 5000, `push a${i}`));
    pushes.push(replyOf(channels[N - 1].push("seq", { s: "b", i }), 5000, `push b${i}`));
  }
  for (const r of await Promise.all(pushes)) assert.equal(r.status, "ok");
  await waitUntil(() => got.every((g) => g.length >= 2 * M), 5000, () => `${2 * M} broadcasts at every socket (counts ${got.map((g) => g.length)})`);
  await sleep(200);
  got.forEach((g, idx) => {
    assert.equal(g.length, 2 * M, `socket ${idx} count`);
    for (const s of ["a", "b"]) {
      assert.deepEqual(
        g.filter((p) => p.s === s).map((p) => p.i),
        Array.from({ length: M }, (_, i) => i),
        `socket ${idx} order of sender ${s}`,
      );
    }
  });
});

test(`an API broadcast reaches all ${N} sockets exactly once`, T, async () => {
  const topic = uniqueTopic("room", "fanout-api");
  const { channels } = await openJoined(topic);
  const got = channels.map((c) => collect(c, "api"));
  await apiBroadcastOk(ctx.server, { topic, event: "api", payload: { k: "v" } }, 1);
  await waitUntil(() => got.every((g) => g.length >= 1), 5000, () => `broadcast at all ${N} sockets (counts ${got.map((g) => g.length)})`);
  await sleep(300);
  got.forEach((g, i) => assert.deepEqual(g, [{ k: "v" }], `socket ${i}`));
});

// 6. POST /api/broadcast: single and batch bodies, ordering, errors.

import assert from "node:assert/strict";
import { test } from "node:test";
import { apiBroadcast, apiBroadcastOk, collect, connectSocket, joinOk, sleep, uniqueTopic, waitUntil } from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

test("single and batch broadcasts reach every joined socket, in order", T, async () => {
  const topic = uniqueTopic("room", "api");
  const sockets = [];
  for (let i = 0; i < 4; i++) sockets.push(await connectSocket(ctx.server));
  const channels = await Promise.all(sockets.map((s) => joinOk(s, topic)));
  const got = channels.map((c) => {
    const arr = [];
    for (const ev of ["one", "many"]) c.on(ev, (p) => arr.push([ev, p]));
    return arr;
  });

  const single = await apiBroadcastOk(ctx.server, { topic, event: "one", payload: { n: 0 } }, 1);
  assert.deepEqual(single.json, { ok: true, count: 1 });
  assert.match(single.headers.get("content-type") ?? "", /application\/json/);

  const messages = Array.from({ length: 10 }, (_, i) => ({ topic, event: "many", payload: { n: i + 1 } }));
  const batch = await apiBroadcastOk(ctx.server, { messages }, 10);
  assert.deepEqual(batch.json, { ok: true, count: 10 });

  const expected = [["one", { n: 0 }], ...messages.map((m) => ["many", m.payload])];
  await waitUntil(() => got.every((g) => g.length >= expected.length), 5000, () => `11 messages at every socket (got ${JSON.stringify(got)})`);
  await sleep(200);
  got.forEach((g, i) => assert.deepEqual(g, expected, `socket ${i}`));
});

test("a batch may address several topics; each socket gets only its topics", T, async () => {
  const t1 = uniqueTopic("room", "api-a");
  const t2 = uniqueTopic("from", "api-b");
  const s = await connectSocket(ctx.server);
  const c1 = await joinOk(s, t1);
  const c2 = await joinOk(s, t2);
  const g1 = collect(c1, "e");
  const g2 = collect(c2, "e");
  await apiBroadcastOk(
    ctx.server,
    {
      messages: [
        { topic: t1, event: "e", payload: { i: 1 } },
        { topic: t2, event: "e", payload: { i: 2 } },
        { topic: uniqueTopic("room", "nobody"), event: "e", payload: { i: 3 } },
        { topic: t1, event: "e", payload: { i: 4 } },
      ],
    },
    4,
  );
  await waitUntil(() => g1.length >= 2 && g2.length >= 1, 5000, "batch deliveries");
  await sleep(200);
  assert.deepEqual(g1, [{ i: 1 }, { i: 4 }]);
  assert.deepEqual(g2, [{ i: 2 }]);
});

test("a broadcast to a topic nobody joined is accepted", T, async () => {
  await apiBroadcastOk(ctx.server, { topic: uniqueTopic("room", "empty"), event: "e", payload: {} }, 1);
});

async function expect400(body, what) {
  const r = await apiBroadcast(ctx.server, body);
  assert.equal(r.status, 400, `${what}: expected 400, got ${r.status} ${r.text}`);
  assert.ok(r.json && typeof r.json === "object", `${what}: body is JSON (${r.text})`);
  assert.equal(typeof r.json.error, "string", `${what}: JSON has a string "error" field (${r.text})`);
  assert.notEqual(r.json.error, "", `${what}: error is not empty`);
}

test("malformed bodies get 400 with a JSON error field", T, async () => {
  await expect400("this is not json", "invalid JSON");
  await expect400('{"topic":"room:x","event":"e","payload":{}', "truncated JSON");
  await expect400({ event: "e", payload: {} }, "missing topic");
  await expect400({ topic: "room:x", payload: {} }, "missing event");
  await expect400({ topic: 1, event: "e", payload: {} }, "topic not a string");
  await expect400({ messages: "nope" }, "messages not an array");
  await expect400({ messages: [{ topic: "room:x", payload: {} }] }, "batch entry missing event");
  await expect400([1, 2, 3], "array body");
});

test("a non-object JSON payload is refused at publish time (400)", T, async () => {
  // Spec §4.2/§13: push/broadcast payloads must be JSON objects on V2; the publisher gets the error.
  await expect400({ topic: "room:x", event: "e", payload: "a string" }, "string payload");
  await expect400({ topic: "room:x", event: "e", payload: [1, 2] }, "array payload");
});

test("a batch over the limit (1001 > max_batch 1000) is refused with 400 and nothing is delivered", T, async () => {
  const topic = uniqueTopic("room", "toobig");
  const s = await connectSocket(ctx.server);
  const c = await joinOk(s, topic);
  const got = collect(c, "e");
  const messages = Array.from({ length: 1001 }, (_, i) => ({ topic, event: "e", payload: { i } }));
  await expect400({ messages }, "1001 messages");
  await sleep(300);
  assert.equal(got.length, 0, "a refused batch delivers nothing");
  await apiBroadcastOk(ctx.server, { messages: messages.slice(0, 1000) }, 1000);
  await waitUntil(() => got.length >= 1000, 5000, () => `1000 deliveries (got ${got.length})`);
});

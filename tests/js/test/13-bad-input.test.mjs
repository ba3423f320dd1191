// 13. Bad input closes only the offending connection, with the spec's close code.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  apiBroadcastOk,
  collect,
  connectSocket,
  joinOk,
  rawConnect,
  rawWaitClose,
  rawWaitFor,
  sleep,
  uniqueTopic,
  waitUntil,
} from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

async function badClient(topic) {
  const ws = await rawConnect(ctx.server, "?vsn=2.0.0");
  ws.send(JSON.stringify(["1", "1", topic, "phx_join", {}]));
  await rawWaitFor(ws, (m) => Array.isArray(m) && m[1] === "1", 5000, "bad client's join reply");
  return ws;
}

async function assertOthersUnaffected(good, channel, topic, n) {
  const got = collect(channel, `still-${n}`);
  await apiBroadcastOk(ctx.server, { topic, event: `still-${n}`, payload: { n } }, 1);
  await waitUntil(() => got.length >= 1, 5000, "broadcast at the well-behaved client");
  await sleep(100);
  assert.deepEqual(got, [{ n }]);
  assert.equal(good.isConnected(), true);
  assert.equal(good.rec.opens, 1, "the good client was never disconnected");
}

test("invalid JSON closes the connection with 1011; another joined client still receives broadcasts", T, async () => {
  const topic = uniqueTopic("room", "bad");
  const good = await connectSocket(ctx.server);
  const gc = await joinOk(good, topic);
  const bad = await badClient(topic);
  bad.send("{this is not json");
  const close = await rawWaitClose(bad, 5000);
  assert.equal(close.code, 1011);
  assert.equal(
    bad.rec.messages.filter((m) => !Array.isArray(m) || m[1] !== "1").length,
    0,
    "no reply frame to the malformed message",
  );
  await assertOthersUnaffected(good, gc, topic, 1);
});

test("V2 array with fewer than 5 elements closes with 1011", T, async () => {
  const topic = uniqueTopic("room", "short");
  const good = await connectSocket(ctx.server);
  const gc = await joinOk(good, topic);
  const bad = await badClient(topic);
  bad.send(JSON.stringify(["1", "2", topic, "new_msg"]));
  assert.equal((await rawWaitClose(bad, 5000)).code, 1011);
  await assertOthersUnaffected(good, gc, topic, 2);
});

test("a V2 JSON object (not an array) closes with 1011", T, async () => {
  const bad = await rawConnect(ctx.server, "?vsn=2.0.0");
  bad.send(JSON.stringify({ topic: "phoenix", event: "heartbeat", payload: {}, ref: "1" }));
  assert.equal((await rawWaitClose(bad, 5000)).code, 1011);
});

test("a binary frame with an unknown kind closes with 1011", T, async () => {
  const bad = await rawConnect(ctx.server, "?vsn=2.0.0");
  bad.send(Buffer.from([9, 0, 0, 0, 0]), { binary: true });
  assert.equal((await rawWaitClose(bad, 5000)).code, 1011);
});

test("a text frame with invalid UTF-8 closes with 1007", T, async () => {
  const topic = uniqueTopic("room", "utf8");
  const good = await connectSocket(ctx.server);
  const gc = await joinOk(good, topic);
  const bad = await badClient(topic);
  bad.send(Buffer.from([0x5b, 0x22, 0xff, 0xfe, 0x22, 0x5d]), { binary: false });
  assert.equal((await rawWaitClose(bad, 5000)).code, 1007);
  await assertOthersUnaffected(good, gc, topic, 3);
});

test("V2 arrays with extra elements are accepted (extra ignored)", T, async () => {
  const ws = await rawConnect(ctx.server, "?vsn=2.0.0");
  ws.send(JSON.stringify([null, "5", "phoenix", "heartbeat", {}, "extra", 1]));
  const r = await rawWaitFor(ws, (m) => Array.isArray(m) && m[1] === "5", 5000, "heartbeat reply");
  assert.deepEqual(r, [null, "5", "phoenix", "phx_reply", { status: "ok", response: {} }]);
  await sleep(100);
  assert.equal(ws.rec.close, null);
});

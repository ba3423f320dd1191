// 15. The LongPoll transport of the official client: connect, join, push/reply,
// broadcasts (from the API and from WebSocket clients), reconnect after a restart,
// and the fallback when the WebSocket endpoint is turned off.

import assert from "node:assert/strict";
import { test } from "node:test";
import { LongPoll } from "phoenix";
import { apiBroadcastOk, collect, connectSocket, joinOk, replyOf, sleep, uniqueTopic, waitUntil } from "../helpers/client.mjs";
import { SUITE_CONFIG, startServer } from "../helpers/server.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

test("a LongPoll socket connects, joins, pushes and gets its reply", T, async () => {
  const socket = await connectSocket(ctx.server, { transport: LongPoll });
  assert.equal(socket.transport, LongPoll);
  const topic = uniqueTopic("room", "lp");
  const channel = await joinOk(socket, topic);
  const echoed = collect(channel, "msg");
  const reply = await replyOf(channel.push("msg", { body: "over http" }));
  assert.deepEqual(reply, { status: "ok", response: {} });
  await waitUntil(() => echoed.length === 1, 5000, "the broadcast of its own push");
  assert.deepEqual(echoed, [{ body: "over http" }]);
  const denied = await replyOf(socket.channel("room:forbidden").join());
  assert.deepEqual(denied, { status: "error", response: { reason: "unauthorized" } });
});

test("LongPoll and WebSocket clients share topics both ways, in order", T, async () => {
  const topic = uniqueTopic("room", "mixed");
  const lp = await connectSocket(ctx.server, { transport: LongPoll });
  const ws = await connectSocket(ctx.server);
  const lpChannel = await joinOk(lp, topic);
  const wsChannel = await joinOk(ws, topic);
  const atLp = collect(lpChannel, "n");
  const atWs = collect(wsChannel, "n");
  for (let n = 0; n < 20; n++) wsChannel.push("n", { n, from: "ws" });
  for (let n = 0; n < 20; n++) lpChannel.push("n", { n, from: "lp" });
  await apiBroadcastOk(ctx.server, { topic, event: "n", payload: { n: 0, from: "api" } }, 1);
  await waitUntil(() => atLp.length === 41 && atWs.length === 41, 8000, () => `41 each (lp ${atLp.length}, ws ${atWs.length})`);
  for (const got of [atLp, atWs]) {
    for (const from of ["ws", "lp"]) {
      const ns = got.filter((m) => m.from === from).map((m) => m.n);
      assert.deepEqual(ns, [...Array(20).keys()], `order of ${from} messages`);
    }
  }
});

test("a burst of broadcasts between polls is delivered whole", T, async () => {
  const topic = uniqueTopic("room", "burst");
  const lp = await connectSocket(ctx.server, { transport: LongPoll });
  const channel = await joinOk(lp, topic);
  const got = collect(channel, "b");
  const batch = Array.from({ length: 300 }, (_, i) => ({ topic, event: "b", payload: { i } }));
  await apiBroadcastOk(ctx.server, { messages: batch }, 300);
  await waitUntil(() => got.length === 300, 8000, () => `300 broadcasts (got ${got.length})`);
  assert.deepEqual(got.map((m) => m.i), [...Array(300).keys()]);
});

test("after a server restart a LongPoll client gets a new session and rejoins", { timeout: 40_000 }, async () => {
  const topic = uniqueTopic("room", "lp-restart");
  const socket = await connectSocket(ctx.server, { transport: LongPoll, reconnectAfterMs: () => 200, rejoinAfterMs: () => 200 });
  const channel = socket.channel(topic);
  let oks = 0;
  channel.join().receive("ok", () => (oks += 1));
  await waitUntil(() => oks === 1, 5000, "first join");
  const got = collect(channel, "after");
  await ctx.server.restart();
  await waitUntil(() => oks >= 2, 20_000, () => `rejoin (closes ${JSON.stringify(socket.rec.closes.slice(0, 3))})`);
  await apiBroadcastOk(ctx.server, { topic, event: "after", payload: { ok: 1 } }, 1);
  await waitUntil(() => got.length === 1, 5000, "broadcast after the restart");
  assert.deepEqual(got, [{ ok: 1 }]);
});

test("with the WebSocket endpoint off, the client falls back to LongPoll", { timeout: 30_000 }, async () => {
  const server = await startServer({ config: SUITE_CONFIG.replace("[socket]\n", "[socket]\nwebsocket = false\n") });
  try {
    const store = new Map();
    const sessionStorage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v), removeItem: (k) => store.delete(k) };
    const socket = await connectSocket(server, { longPollFallbackMs: 1000, sessionStorage }, 10_000);
    assert.equal(socket.transport, LongPoll, "the socket fell back to LongPoll");
    const topic = uniqueTopic("room", "fallback");
    const channel = await joinOk(socket, topic);
    const got = collect(channel, "hi");
    await apiBroadcastOk(server, { topic, event: "hi", payload: { via: "longpoll" } }, 1);
    await waitUntil(() => got.length === 1, 5000, "broadcast over the fallback");
    await sleep(100);
    assert.deepEqual(got, [{ via: "longpoll" }]);
    assert.equal(store.get("phx:fallback:LongPoll"), "true", "the client remembers the fallback");
    await new Promise((resolve) => socket.disconnect(resolve));
  } finally {
    await server.dispose();
  }
});

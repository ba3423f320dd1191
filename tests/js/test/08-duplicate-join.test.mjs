// 8. Duplicate joins of one topic on one connection.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  apiBroadcastOk,
  collect,
  connectSocket,
  joinOk,
  joinReply,
  rawConnect,
  rawWaitFor,
  sleep,
  uniqueTopic,
  waitUntil,
} from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

test("JS client: a second channel object on the same topic replaces the first", T, async () => {
  const topic = uniqueTopic("room", "dup");
  const socket = await connectSocket(ctx.server);
  const first = await joinOk(socket, topic);
  const firstJoinRef = first.joinRef();
  const got1 = collect(first, "evt");

  const second = socket.channel(topic);
  const got2 = collect(second, "evt");
  // join() makes the client leave `first` (phx_leave with its join_ref), then join again.
  const r = await joinReply(second);
  assert.deepEqual(r, { status: "ok", response: {} });
  await waitUntil(() => first.state === "closed", 5000, "first channel closed by its leave reply");
  assert.notEqual(second.joinRef(), firstJoinRef);

  await apiBroadcastOk(ctx.server, { topic, event: "evt", payload: { n: 1 } }, 1);
  await waitUntil(() => got2.length >= 1, 5000, "broadcast on the second channel");
  await sleep(300);
  assert.deepEqual(got2, [{ n: 1 }]);
  assert.deepEqual(got1, []);
  assert.equal(
    socket.rec.messages.filter((m) => m.topic === topic && m.event === "evt").length,
    1,
    "exactly one broadcast frame on the connection",
  );
});

test("raw V2: two phx_join with different join_refs: both ok, phx_close for the old one, one subscription", T, async () => {
  const topic = uniqueTopic("room", "rawdup");
  const ws = await rawConnect(ctx.server, "?vsn=2.0.0");
  ws.send(JSON.stringify(["1", "1", topic, "phx_join", {}]));
  const r1 = await rawWaitFor(ws, (m) => Array.isArray(m) && m[1] === "1" && m[3] === "phx_reply", 5000, "first join reply");
  assert.deepEqual(r1, ["1", "1", topic, "phx_reply", { status: "ok", response: {} }]);

  ws.send(JSON.stringify(["2", "2", topic, "phx_join", {}]));
  const r2 = await rawWaitFor(ws, (m) => Array.isArray(m) && m[1] === "2" && m[3] === "phx_reply", 5000, "second join reply");
  assert.deepEqual(r2, ["2", "2", topic, "phx_reply", { status: "ok", response: {} }]);
  const close = await rawWaitFor(ws, (m) => Array.isArray(m) && m[3] === "phx_close", 5000, "phx_close for the old join");
  assert.deepEqual(close, ["1", "1", topic, "phx_close", {}]);

  await apiBroadcastOk(ctx.server, { topic, event: "evt", payload: { n: 1 } }, 1);
  await rawWaitFor(ws, (m) => Array.isArray(m) && m[3] === "evt", 5000, "broadcast");
  await sleep(300);
  const evts = ws.rec.messages.filter((m) => Array.isArray(m) && m[3] === "evt");
  assert.deepEqual(evts, [[null, null, topic, "evt", { n: 1 }]], "the broadcast arrives exactly once");
  assert.equal(
    ws.rec.messages.filter((m) => Array.isArray(m) && m[3] === "phx_close").length,
    1,
    "one phx_close only",
  );

  // The new join_ref is the live one: a push with it is relayed, one with the old is dropped.
  ws.send(JSON.stringify(["1", "10", topic, "stale", {}]));
  ws.send(JSON.stringify(["2", "11", topic, "fresh", {}]));
  await rawWaitFor(ws, (m) => Array.isArray(m) && m[1] === "11" && m[3] === "phx_reply", 5000, "reply to the fresh push");
  await sleep(200);
  assert.equal(
    ws.rec.messages.filter((m) => Array.isArray(m) && (m[1] === "10" || m[3] === "stale")).length,
    0,
    "a push carrying the stale join_ref is dropped silently (spec 6.4)",
  );
});

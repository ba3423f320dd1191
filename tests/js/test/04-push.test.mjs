// 4. Client pushes and the per-route client_events policy.

import assert from "node:assert/strict";
import { test } from "node:test";
import { collect, connectSocket, joinOk, replyOf, sleep, uniqueTopic, waitUntil } from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

test("room:* (broadcast): push gets ok, the sender and others receive the broadcast", T, async () => {
  const topic = uniqueTopic("room", "push");
  const sender = await connectSocket(ctx.server);
  const other = await connectSocket(ctx.server);
  const cs = await joinOk(sender, topic);
  const co = await joinOk(other, topic);
  const gotS = collect(cs, "new_msg");
  const gotO = collect(co, "new_msg");
  const r = await replyOf(cs.push("new_msg", { body: "hi" }), 5000, "push reply");
  assert.deepEqual(r, { status: "ok", response: {} });
  await waitUntil(() => gotS.length >= 1 && gotO.length >= 1, 5000, "broadcast at sender and other");
  await sleep(200);
  assert.deepEqual(gotS, [{ body: "hi" }]);
  assert.deepEqual(gotO, [{ body: "hi" }]);
  // Broadcasts carry null join_ref and ref.
  const frame = sender.rec.messages.find((m) => m.event === "new_msg");
  assert.equal(frame.join_ref, null);
  assert.equal(frame.ref, null);
});

test("from:* (broadcast_from): the sender does not get its own broadcast, another socket does", T, async () => {
  const topic = uniqueTopic("from", "push");
  const sender = await connectSocket(ctx.server);
  const other = await connectSocket(ctx.server);
  const cs = await joinOk(sender, topic);
  const co = await joinOk(other, topic);
  const gotS = collect(cs, "new_msg");
  const gotO = collect(co, "new_msg");
  const r = await replyOf(cs.push("new_msg", { body: "hi" }), 5000, "push reply");
  assert.deepEqual(r, { status: "ok", response: {} });
  await waitUntil(() => gotO.length >= 1, 5000, "broadcast at the other socket");
  await sleep(300);
  assert.deepEqual(gotO, [{ body: "hi" }]);
  assert.deepEqual(gotS, [], "sender must not receive its own broadcast_from");
  assert.equal(sender.rec.messages.filter((m) => m.event === "new_msg").length, 0);
});

test("quiet:* (deny): push gets error {reason: unhandled event}, nothing is relayed", T, async () => {
  const topic = uniqueTopic("quiet", "push");
  const sender = await connectSocket(ctx.server);
  const other = await connectSocket(ctx.server);
  const cs = await joinOk(sender, topic);
  const co = await joinOk(other, topic);
  const gotS = collect(cs, "new_msg");
  const gotO = collect(co, "new_msg");
  const pushed = cs.push("new_msg", { body: "hi" });
  const r = await replyOf(pushed, 5000, "push reply");
  assert.deepEqual(r, { status: "error", response: { reason: "unhandled event" } });
  await sleep(300);
  assert.deepEqual(gotS, []);
  assert.deepEqual(gotO, []);
  // The error reply is a normal reply: the channel stays joined and the socket open.
  assert.equal(cs.state, "joined");
  assert.equal(sender.isConnected(), true);
  const frame = sender.rec.messages.find((m) => m.event === "phx_reply" && m.ref === pushed.ref);
  assert.ok(frame, "error reply frame");
  assert.equal(frame.join_ref, cs.joinRef(), "reply carries the channel's join_ref");
});

test("several pushes are answered in order, each with its own ref", T, async () => {
  const topic = uniqueTopic("room", "seq");
  const socket = await connectSocket(ctx.server);
  const ch = await joinOk(socket, topic);
  const got = collect(ch, "seq");
  const replies = await Promise.all(
    Array.from({ length: 20 }, (_, i) => replyOf(ch.push("seq", { i }), 5000, `reply to push ${i}`)),
  );
  for (const r of replies) assert.deepEqual(r, { status: "ok", response: {} });
  await waitUntil(() => got.length >= 20, 5000, "20 broadcasts");
  assert.deepEqual(
    got.map((p) => p.i),
    Array.from({ length: 20 }, (_, i) => i),
  );
});

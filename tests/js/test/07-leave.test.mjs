// 7. Leaving a channel.

import assert from "node:assert/strict";
import { test } from "node:test";
import { apiBroadcastOk, collect, connectSocket, joinOk, replyOf, sleep, uniqueTopic, waitUntil } from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

test("leave gets ok; afterwards broadcasts on the topic reach others but not the leaver", T, async () => {
  const topic = uniqueTopic("room", "leave");
  const leaver = await connectSocket(ctx.server);
  const stayer = await connectSocket(ctx.server);
  const cl = await joinOk(leaver, topic);
  const cs = await joinOk(stayer, topic);
  const joinRef = cl.joinRef();
  const gotL = collect(cl, "after");
  const gotS = collect(cs, "after");

  const leavePush = cl.leave();
  const r = await replyOf(leavePush, 5000, "leave reply");
  assert.deepEqual(r, { status: "ok", response: {} });
  assert.equal(cl.state, "closed");

  // The server follows the leave reply with phx_close for the old join_ref (spec 6.6).
  const close = await waitUntil(
    () => leaver.rec.messages.find((m) => m.topic === topic && m.event === "phx_close"),
    3000,
    "phx_close after leave",
  );
  assert.equal(close.join_ref, joinRef);
  assert.equal(close.ref, joinRef);

  await apiBroadcastOk(ctx.server, { topic, event: "after", payload: { x: 1 } }, 1);
  await waitUntil(() => gotS.length >= 1, 5000, "broadcast at the remaining socket");
  await sleep(300);
  assert.deepEqual(gotS, [{ x: 1 }]);
  assert.deepEqual(gotL, []);
  assert.equal(
    leaver.rec.messages.filter((m) => m.event === "after").length,
    0,
    "no frame for the left topic reaches the leaver's connection",
  );
  assert.equal(leaver.isConnected(), true);
});

test("after leaving, the same socket can join the topic again", T, async () => {
  const topic = uniqueTopic("room", "rejoin");
  const socket = await connectSocket(ctx.server);
  const c1 = await joinOk(socket, topic);
  assert.equal((await replyOf(c1.leave(), 5000, "leave reply")).status, "ok");
  const c2 = await joinOk(socket, topic);
  const got = collect(c2, "again");
  await apiBroadcastOk(ctx.server, { topic, event: "again", payload: {} }, 1);
  await waitUntil(() => got.length >= 1, 5000, "broadcast after rejoin");
  await sleep(200);
  assert.equal(got.length, 1);
});

test("a push to a left topic gets error {reason: unmatched topic}", T, async () => {
  const topic = uniqueTopic("room", "gone");
  const socket = await connectSocket(ctx.server);
  const ch = await joinOk(socket, topic);
  assert.equal((await replyOf(ch.leave(), 5000, "leave reply")).status, "ok");
  // The client refuses to push on a closed channel, so send the frame through the socket.
  const ref = socket.makeRef();
  socket.push({ topic, event: "new_msg", payload: { body: "late" }, ref, join_ref: ch.joinRef() });
  const reply = await waitUntil(
    () => socket.rec.messages.find((m) => m.event === "phx_reply" && m.ref === ref),
    5000,
    "reply to a push on a left topic",
  );
  assert.deepEqual(reply.payload, { status: "error", response: { reason: "unmatched topic" } });
  assert.equal(reply.join_ref, null);
});

// 3. Join outcomes: ok, denied by the route, unmatched topic.

import assert from "node:assert/strict";
import { test } from "node:test";
import { connectSocket, joinReply, uniqueTopic, waitUntil } from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

function replyFrame(socket, topic, ref) {
  return socket.rec.messages.find((m) => m.topic === topic && m.event === "phx_reply" && m.ref === ref);
}

test("join of a public topic: ok with response {}", T, async () => {
  const socket = await connectSocket(ctx.server);
  const topic = uniqueTopic("room", "join");
  const channel = socket.channel(topic);
  const pending = joinReply(channel);
  const joinRef = channel.joinRef();
  const r = await pending;
  assert.deepEqual(r, { status: "ok", response: {} });
  assert.equal(channel.state, "joined");
  const frame = replyFrame(socket, topic, joinRef);
  assert.ok(frame, "join reply frame");
  assert.equal(frame.join_ref, joinRef, "join reply echoes the join_ref");
});

test("join denied on room:forbidden: error {reason: unauthorized}", T, async () => {
  const socket = await connectSocket(ctx.server);
  const channel = socket.channel("room:forbidden");
  const pending = joinReply(channel);
  const joinRef = channel.joinRef();
  const r = await pending;
  assert.deepEqual(r, { status: "error", response: { reason: "unauthorized" } });
  const frame = replyFrame(socket, "room:forbidden", joinRef);
  assert.ok(frame, "join reply frame");
  assert.equal(frame.join_ref, joinRef, "a refused join's reply echoes the join_ref");
});

test("join of an unrouted topic: error {reason: unmatched topic} with null join_ref", T, async () => {
  const socket = await connectSocket(ctx.server);
  const channel = socket.channel("nope:1");
  const pending = joinReply(channel);
  const joinRef = channel.joinRef();
  const r = await pending;
  assert.deepEqual(r, { status: "error", response: { reason: "unmatched topic" } });
  const frame = replyFrame(socket, "nope:1", joinRef);
  assert.ok(frame, "join reply frame");
  assert.equal(frame.join_ref, null, "unmatched-topic reply carries a null join_ref (Phoenix behaviour)");
});

test("a refused join leaves nothing behind: the client retries and is refused again", T, async () => {
  const socket = await connectSocket(ctx.server, { rejoinAfterMs: () => 100 });
  const channel = socket.channel("room:forbidden");
  let errors = 0;
  channel.join().receive("error", () => {
    errors += 1;
  });
  await waitUntil(() => errors >= 2, 5000, "second refused join after the client's rejoin");
  assert.equal(socket.isConnected(), true);
});

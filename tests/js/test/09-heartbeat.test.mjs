// 9. Heartbeats with a short interval.

import assert from "node:assert/strict";
import { test } from "node:test";
import { connectSocket, joinOk, sleep, uniqueTopic } from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

test("heartbeats every 200 ms are answered; the socket stays up without reconnecting", T, async () => {
  const socket = await connectSocket(ctx.server, { heartbeatIntervalMs: 200 });
  await joinOk(socket, uniqueTopic("room", "hb"));
  await sleep(1100);
  const replies = socket.rec.messages.filter(
    (m) => m.topic === "phoenix" && m.event === "phx_reply" && m.payload?.status === "ok",
  );
  assert.ok(replies.length >= 3, `expected >= 3 heartbeat replies in ~1.1 s, got ${replies.length}`);
  for (const r of replies) {
    assert.equal(r.join_ref, null);
    assert.deepEqual(r.payload, { status: "ok", response: {} });
  }
  assert.equal(socket.isConnected(), true);
  assert.equal(socket.rec.opens, 1, "no reconnects");
  assert.deepEqual(socket.rec.closes, []);
  assert.deepEqual(socket.rec.errors, []);
});

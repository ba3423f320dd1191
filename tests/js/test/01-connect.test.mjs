// 1. Connecting with the official client's default (V2) serializer.

import assert from "node:assert/strict";
import { test } from "node:test";
import { connectSocket, makeSocket, waitUntil, withTimeout } from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

test("connects with the default V2 serializer (onOpen fires, isConnected)", T, async () => {
  const socket = makeSocket(ctx.server);
  let opened = 0;
  socket.onOpen(() => {
    opened += 1;
  });
  socket.connect();
  await waitUntil(() => opened === 1, 5000, "socket.onOpen");
  assert.equal(socket.isConnected(), true);
  assert.equal(socket.connectionState(), "open");
  assert.match(socket.endPointURL(), /\/socket\/websocket\?vsn=2\.0\.0$/);
  assert.deepEqual(socket.rec.errors, []);
  assert.deepEqual(socket.rec.closes, []);
});

test("socket.ping (a phoenix heartbeat) is answered", T, async () => {
  const socket = await connectSocket(ctx.server);
  const rtt = await withTimeout(
    new Promise((resolve) => {
      assert.equal(socket.ping(resolve), true);
    }),
    5000,
    "heartbeat reply to socket.ping",
  );
  assert.equal(typeof rtt, "number");
  const reply = socket.rec.messages.find((m) => m.topic === "phoenix" && m.event === "phx_reply");
  assert.ok(reply, "a phx_reply on topic phoenix");
  assert.deepEqual(reply.payload, { status: "ok", response: {} });
  assert.equal(reply.join_ref, null);
});

test("params are sent in the query string and do not disturb the connection", T, async () => {
  const socket = await connectSocket(ctx.server, { params: { token: "a b", user: { id: 1 } } });
  assert.match(socket.endPointURL(), /\?token=a%20b&user%5Bid%5D=1&vsn=2\.0\.0$/);
  assert.equal(socket.isConnected(), true);
});

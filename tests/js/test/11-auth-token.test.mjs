// 11. authToken: Sec-WebSocket-Protocol "phoenix, base64url.bearer.phx.<token>".

import assert from "node:assert/strict";
import { test } from "node:test";
import { connectSocket, joinOk, replyOf, uniqueTopic, upgradeStatus } from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

test("a socket with authToken connects (server selects subprotocol phoenix) and can join", T, async () => {
  const socket = await connectSocket(ctx.server, { authToken: "secret-token" });
  assert.equal(socket.isConnected(), true);
  assert.equal(socket.conn.protocol, "phoenix", "negotiated subprotocol");
  const ch = await joinOk(socket, uniqueTopic("room", "auth"));
  assert.deepEqual(await replyOf(ch.push("new_msg", { body: "x" })), { status: "ok", response: {} });
});

test("raw upgrade offering the auth-token subprotocols is answered 101 with Sec-WebSocket-Protocol: phoenix", T, async () => {
  const r = await upgradeStatus(ctx.server, "/socket/websocket?vsn=2.0.0", {
    "Sec-WebSocket-Protocol": "phoenix, base64url.bearer.phx.c2VjcmV0LXRva2Vu",
  });
  assert.equal(r.status, 101);
  assert.equal(r.headers["sec-websocket-protocol"], "phoenix");
});

test("an upgrade without Sec-WebSocket-Protocol gets no protocol header", T, async () => {
  const r = await upgradeStatus(ctx.server, "/socket/websocket?vsn=2.0.0");
  assert.equal(r.status, 101);
  assert.equal(r.headers["sec-websocket-protocol"], undefined);
});

// 2. The V1 (JSON object) serializer, driven through the official client with custom
//    encode/decode, plus version negotiation checks.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  apiBroadcastOk,
  collect,
  connectSocket,
  joinOk,
  makeV1Codec,
  rawConnect,
  rawWaitFor,
  replyOf,
  sleep,
  uniqueTopic,
  upgradeStatus,
  waitUntil,
} from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer();

const V1_KEYS = ["event", "payload", "ref", "topic"];

function connectV1(server) {
  const codec = makeV1Codec();
  return connectSocket(server, { vsn: "1.0.0", encode: codec.encode, decode: codec.decode }).then((socket) => ({
    socket,
    codec,
  }));
}

test("V1: join, push reply and broadcasts arrive as JSON objects", T, async () => {
  const { socket, codec } = await connectV1(ctx.server);
  assert.match(socket.endPointURL(), /vsn=1\.0\.0$/);
  const topic = uniqueTopic("room", "v1");

  const channel = socket.channel(topic);
  const join = await replyOf(channel.join(), 5000, "V1 join reply");
  assert.deepEqual(join, { status: "ok", response: {} });
  const joinRef = channel.joinRef();
  const joinReplyObj = codec.received.find((o) => o.topic === topic && o.event === "phx_reply");
  assert.deepEqual(joinReplyObj, {
    topic,
    event: "phx_reply",
    payload: { status: "ok", response: {} },
    ref: joinRef,
  });

  const msgs = collect(channel, "new_msg");
  const apiMsgs = collect(channel, "api_msg");
  const push = await replyOf(channel.push("new_msg", { body: "hi" }), 5000, "V1 push reply");
  assert.deepEqual(push, { status: "ok", response: {} });
  await waitUntil(() => msgs.length >= 1, 5000, "V1 broadcast of the client's own push");
  assert.deepEqual(msgs, [{ body: "hi" }]);

  await apiBroadcastOk(ctx.server, { topic, event: "api_msg", payload: { n: 1, s: "é✓" } }, 1);
  await waitUntil(() => apiMsgs.length >= 1, 5000, "V1 API broadcast");
  assert.deepEqual(apiMsgs, [{ n: 1, s: "é✓" }]);

  const bcast = codec.received.find((o) => o.event === "api_msg");
  assert.deepEqual(bcast, { topic, event: "api_msg", payload: { n: 1, s: "é✓" }, ref: null });

  // Every frame a V1 connection gets is an object with exactly topic/event/payload/ref.
  for (const obj of codec.received) {
    assert.deepEqual(Object.keys(obj).sort(), V1_KEYS, `V1 frame ${JSON.stringify(obj)}`);
  }
  assert.deepEqual(codec.undecodable, []);
});

test("V1 and V2 clients on one topic both receive one broadcast", T, async () => {
  const topic = uniqueTopic("room", "mixed");
  const { socket: s1, codec } = await connectV1(ctx.server);
  const s2 = await connectSocket(ctx.server);
  const c1 = await joinOk(s1, topic);
  const c2 = await joinOk(s2, topic);
  const got1 = collect(c1, "mixed");
  const got2 = collect(c2, "mixed");
  await apiBroadcastOk(ctx.server, { topic, event: "mixed", payload: { x: [1, 2, 3] } }, 1);
  await waitUntil(() => got1.length >= 1 && got2.length >= 1, 5000, "broadcast on V1 and V2 sockets");
  await sleep(200);
  assert.deepEqual(got1, [{ x: [1, 2, 3] }]);
  assert.deepEqual(got2, [{ x: [1, 2, 3] }]);
  assert.deepEqual(codec.undecodable, []);
});

test("absent vsn means V1 (raw ws): heartbeat reply is a V1 object", T, async () => {
  const ws = await rawConnect(ctx.server, "");
  ws.send(JSON.stringify({ topic: "phoenix", event: "heartbeat", payload: {}, ref: "1" }));
  const reply = await rawWaitFor(ws, (m) => m.ref === "1", 5000, "V1 heartbeat reply");
  assert.deepEqual(reply, { topic: "phoenix", event: "phx_reply", payload: { status: "ok", response: {} }, ref: "1" });
});

test("vsn negotiation: 2.0.0 and 1.0.0 upgrade, 3.0.0 and garbage are refused with 403", T, async () => {
  assert.equal((await upgradeStatus(ctx.server, "/socket/websocket?vsn=2.0.0")).status, 101);
  assert.equal((await upgradeStatus(ctx.server, "/socket/websocket?vsn=1.0.0")).status, 101);
  assert.equal((await upgradeStatus(ctx.server, "/socket/websocket?vsn=3.0.0")).status, 403);
  assert.equal((await upgradeStatus(ctx.server, "/socket/websocket?vsn=abc")).status, 403);
});

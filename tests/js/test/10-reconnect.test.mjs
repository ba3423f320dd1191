// 10. The server restarts: the client reconnects on its own and rejoins.

import assert from "node:assert/strict";
import { test } from "node:test";
import { apiBroadcastOk, collect, connectSocket, sleep, uniqueTopic, waitUntil } from "../helpers/client.mjs";
import { useServer } from "../helpers/suite.mjs";

const ctx = useServer();

test("after a server restart on the same port the client reconnects and the channel rejoins", { timeout: 40_000 }, async () => {
  const topic = uniqueTopic("room", "restart");
  const socket = await connectSocket(ctx.server, { reconnectAfterMs: () => 200, rejoinAfterMs: () => 200 });
  const channel = socket.channel(topic);
  let oks = 0;
  const joinRefs = [];
  channel.join().receive("ok", () => {
    oks += 1;
    joinRefs.push(channel.joinRef());
  });
  await waitUntil(() => oks === 1, 5000, "first join ok");
  const got = collect(channel, "after_restart");

  const stopped = await ctx.server.restart();
  assert.equal(stopped.code, 0, `SIGTERM: server exits 0 (got ${JSON.stringify(stopped)})`);

  await waitUntil(() => oks >= 2, 15_000, () => `rejoin after restart (closes ${JSON.stringify(socket.rec.closes.slice(0, 5))}, errors ${JSON.stringify(socket.rec.errors.slice(-3))})`);
  assert.ok(socket.rec.opens >= 2, "the socket opened again");
  assert.notEqual(joinRefs[1], joinRefs[0], "the rejoin uses a fresh join_ref");
  assert.equal(socket.rec.closes[0]?.code, 1012, "shutdown closes WebSockets with 1012 (service restart)");

  await apiBroadcastOk(ctx.server, { topic, event: "after_restart", payload: { ok: 1 } }, 1);
  await waitUntil(() => got.length >= 1, 5000, "API broadcast after restart");
  await sleep(200);
  assert.deepEqual(got, [{ ok: 1 }]);
  assert.equal(channel.state, "joined");
});

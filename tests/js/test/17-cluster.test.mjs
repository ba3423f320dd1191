// 17. Two Cinder nodes with a redis-server of the test's own as the bus, driven by
// the official client: clients on different nodes chat, Presence.onSync lists the
// users of both nodes, and a LongPoll client whose requests alternate between the
// nodes (a round-robin balancer without sticky sessions) works.

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, test } from "node:test";
import { LongPoll, Presence } from "phoenix";
import { cleanupClients, connectSocket, joinOk, replyOf, waitUntil } from "../helpers/client.mjs";
import { startRedis } from "../helpers/redis.mjs";
import { startServer } from "../helpers/server.mjs";
import { T } from "../helpers/suite.mjs";

const CONFIG = `[server]
shards = 2
[cluster]
heartbeat_ms = 200
node_timeout_ms = 1500
[socket.longpoll]
secret = "a secret every node shares"
[[channel]]
pattern = "chat:*"
join = "public"
client_events = "broadcast"
[[channel]]
pattern = "lobby:*"
join = "public"
presence = true
presence_key = "user_id"
`;

const ctx = { redis: null, a: null, b: null, balancer: null };

/** A round-robin HTTP balancer over both nodes: request n goes to node n % 2. */
function roundRobin(targets) {
  let next = 0;
  const server = http.createServer((req, res) => {
    const target = targets[next++ % targets.length];
    const upstream = http.request(
      { host: "127.0.0.1", port: target.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(upstream);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

async function clusterNodes(node) {
  const res = await fetch(`${node.httpUrl}/healthz`);
  const health = await res.json();
  return health.cluster?.redis === "up" ? health.cluster.nodes : 0;
}

before(async () => {
  ctx.redis = await startRedis();
  ctx.a = await startServer({ config: CONFIG, extraArgs: ["--cluster-redis", ctx.redis.url, "--node-name", "a"] });
  ctx.b = await startServer({ config: CONFIG, extraArgs: ["--cluster-redis", ctx.redis.url, "--node-name", "b"] });
  const deadline = Date.now() + 10_000;
  while ((await clusterNodes(ctx.a)) !== 2 || (await clusterNodes(ctx.b)) !== 2) {
    if (Date.now() > deadline) throw new Error("the two nodes did not see each other within 10 s");
    await new Promise((r) => setTimeout(r, 50));
  }
  ctx.balancer = await roundRobin([ctx.a, ctx.b]);
});

after(async () => {
  await cleanupClients();
  ctx.balancer?.close();
  await ctx.a?.dispose();
  await ctx.b?.dispose();
  await ctx.redis?.stop();
});

/** Waits until a message pushed on `from` reaches `to` (both joined to `topic`). */
async function untilConnected(from, to, event) {
  const got = [];
  to.on(event, (p) => got.push(p));
  await waitUntil(
    () => {
      if (got.length === 0) from.push(event, { probe: true });
      return got.length > 0;
    },
    5000,
    "the first message across nodes",
  );
}

test("clients on different nodes chat", T, async () => {
  const alice = await connectSocket(ctx.a);
  const bob = await connectSocket(ctx.b);
  const onA = await joinOk(alice, "chat:lobby");
  const onB = await joinOk(bob, "chat:lobby");
  // Subscriptions travel to Redis asynchronously: probe until the path is up.
  await untilConnected(onA, onB, "probe");
  const seenByBob = [];
  const seenByAlice = [];
  onB.on("msg", (p) => seenByBob.push(p.n));
  onA.on("msg", (p) => seenByAlice.push(p.n));
  for (let n = 0; n < 20; n++) onA.push("msg", { n });
  for (let n = 100; n < 110; n++) onB.push("msg", { n });
  const fromAlice = Array.from({ length: 20 }, (_, n) => n);
  const fromBob = Array.from({ length: 10 }, (_, n) => 100 + n);
  await waitUntil(() => seenByBob.length === 30 && seenByAlice.length === 30, 5000, "30 messages on both sides");
  // Each sender's messages arrive in order everywhere.
  for (const seen of [seenByBob, seenByAlice]) {
    assert.deepEqual(seen.filter((n) => n < 100), fromAlice);
    assert.deepEqual(seen.filter((n) => n >= 100), fromBob);
  }
});

test("Presence.onSync lists the users of both nodes", T, async () => {
  const views = [];
  for (const [node, user] of [
    [ctx.a, "ann"],
    [ctx.b, "bob"],
    [ctx.b, "ann"], // a second tab of ann's, on the other node
  ]) {
    const socket = await connectSocket(node);
    const channel = socket.channel("lobby:js", { user_id: user });
    const presence = new Presence(channel);
    const view = { synced: [] };
    presence.onSync(() => {
      view.synced = presence.list((id, { metas }) => `${id}:${metas.length}`).sort();
    });
    const reply = await replyOf(channel.join(), 5000, `join of ${user}`);
    assert.equal(reply.status, "ok");
    views.push(view);
  }
  await waitUntil(
    () => views.every((v) => JSON.stringify(v.synced) === JSON.stringify(["ann:2", "bob:1"])),
    10_000,
    () => `every view to list ann (2 tabs) and bob: ${JSON.stringify(views.map((v) => v.synced))}`,
  );
});

test("a LongPoll client works through a round-robin balancer over both nodes", T, async () => {
  const url = `http://127.0.0.1:${ctx.balancer.address().port}/socket`;
  const lp = await connectSocket(ctx.a, { url, transport: LongPoll });
  const ws = await connectSocket(ctx.b);
  const lpChannel = await joinOk(lp, "chat:lp");
  const wsChannel = await joinOk(ws, "chat:lp");
  await untilConnected(wsChannel, lpChannel, "probe");
  const got = [];
  lpChannel.on("msg", (p) => got.push(p.n));
  for (let n = 0; n < 10; n++) wsChannel.push("msg", { n });
  await waitUntil(() => got.length === 10, 10_000, () => `10 messages over long-poll, got ${got}`);
  assert.deepEqual(got, [...Array(10).keys()]);
  // And back: the long-poll client's pushes reach the WebSocket client.
  const back = [];
  wsChannel.on("back", (p) => back.push(p.n));
  for (let n = 0; n < 5; n++) lpChannel.push("back", { n });
  await waitUntil(() => back.length === 5, 10_000, () => `5 messages from long-poll, got ${back}`);
  assert.deepEqual(back, [0, 1, 2, 3, 4]);
  // The requests did cross: each node forwarded the other's session's requests.
  const forwarded = (await metric(ctx.a, "cinder_longpoll_forwarded_total")) + (await metric(ctx.b, "cinder_longpoll_forwarded_total"));
  assert.ok(forwarded > 0, "requests were forwarded between the nodes");
});

/** A counter summed over shards, from /metrics. */
async function metric(node, name) {
  const text = await (await fetch(`${node.httpUrl}/metrics`)).text();
  return text
    .split("\n")
    .filter((line) => line.startsWith(`${name}{`))
    .reduce((sum, line) => sum + Number(line.split(" ").pop()), 0);
}

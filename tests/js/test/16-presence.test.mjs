// 16. Presence with the official client's `Presence` helper: onSync and list over
// several clients (spread over both shards by the kernel), WebSocket and LongPoll
// alike, two tabs of one user, leaves, presence_update, a client that stops
// answering, and GET /api/presence.

import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";
import { LongPoll, Presence } from "phoenix";
import { connectSocket, rawConnect, replyOf, sleep, uniqueTopic, waitUntil } from "../helpers/client.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const ctx = useServer({
  config: `[server]
shards = 2
[socket]
idle_timeout_ms = 1500
[socket.longpoll]
window_ms = 1000
[[channel]]
pattern = "lobby:*"
join = "public"
presence = true
presence_key = "user_id"
[[channel]]
pattern = "anon:*"
join = "public"
presence = true
`,
});

// Heartbeats well inside the 1.5 s idle timeout this file's server uses. A LongPoll
// client that disconnects just stops polling (the client sends nothing), so its
// session ends 1.5 poll windows later: the window is 1 s here.
const FAST = { heartbeatIntervalMs: 400 };

/** Joins `topic` as `user` and follows its presence; `.names()` lists who is online. */
async function member(topic, user, { transport, meta = {} } = {}) {
  const socket = await connectSocket(ctx.server, transport ? { ...FAST, transport } : FAST);
  const channel = socket.channel(topic, { user_id: user, meta });
  const presence = new Presence(channel);
  let syncs = 0;
  presence.onSync(() => (syncs += 1));
  const reply = await replyOf(channel.join(), 5000, `join of ${user}`);
  assert.equal(reply.status, "ok");
  const view = {
    socket,
    channel,
    presence,
    syncs: () => syncs,
    names: () => presence.list((id) => id).sort(),
    metas: (id) => presence.list((key, { metas }) => (key === id ? metas : null)).filter(Boolean)[0] ?? [],
  };
  return view;
}

function sameNames(views, names, what) {
  const want = [...names].sort();
  return waitUntil(
    () => views.every((v) => JSON.stringify(v.names()) === JSON.stringify(want)),
    6000,
    () => `${what}: want ${JSON.stringify(want)}, got ${JSON.stringify(views.map((v) => v.names()))}`,
  );
}

function getPresence(topic) {
  return new Promise((resolve, reject) => {
    const url = `${ctx.server.httpUrl}/api/presence?topic=${encodeURIComponent(topic)}`;
    http
      .get(url, (res) => {
        let body = "";
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode, body: JSON.parse(body) }));
      })
      .on("error", reject);
  });
}

test("every member syncs to the same list; a leave reaches everyone", T, async () => {
  const topic = uniqueTopic("lobby", "list");
  const users = ["ana", "ben", "cy", "dee", "eve", "fox"];
  const views = [];
  for (const [i, user] of users.entries()) {
    views.push(await member(topic, user, { transport: i % 3 === 2 ? LongPoll : undefined, meta: { n: i } }));
  }
  await sameNames(views, users, "all six");
  assert.ok(views.every((v) => v.syncs() > 0), "onSync fired for everyone");
  assert.deepEqual(views[0].metas("cy").map((m) => m.n), [2], "metas carry the join's meta");
  assert.match(views[0].metas("cy")[0].phx_ref, /^[A-Za-z0-9_-]{16}$/);

  await new Promise((resolve) => views[1].channel.leave().receive("ok", resolve));
  await sameNames(views.filter((_, i) => i !== 1), users.filter((u) => u !== "ben"), "after ben left");
  await new Promise((resolve) => views[2].socket.disconnect(resolve));
  await sameNames([views[0], views[3], views[4], views[5]], ["ana", "dee", "eve", "fox"], "after cy disconnected");

  const api = await getPresence(topic);
  assert.equal(api.status, 200);
  assert.deepEqual(Object.keys(api.body).sort(), ["ana", "dee", "eve", "fox"]);
});

test("two tabs of one user are one key with two metas until both close", T, async () => {
  const topic = uniqueTopic("lobby", "tabs");
  const observer = await member(topic, "watcher");
  const tab1 = await member(topic, "alice", { meta: { tab: 1 } });
  const tab2 = await member(topic, "alice", { transport: LongPoll, meta: { tab: 2 } });
  await waitUntil(() => observer.metas("alice").length === 2, 6000, "alice with two metas");
  assert.deepEqual(observer.metas("alice").map((m) => m.tab).sort(), [1, 2]);
  await new Promise((resolve) => tab1.socket.disconnect(resolve));
  await waitUntil(() => observer.metas("alice").length === 1, 6000, "one tab left");
  assert.deepEqual(observer.names(), ["alice", "watcher"]);
  await new Promise((resolve) => tab2.socket.disconnect(resolve));
  await sameNames([observer], ["watcher"], "both tabs closed");
});

test("presence_update replaces the caller's meta for everyone", T, async () => {
  const topic = uniqueTopic("lobby", "update");
  const a = await member(topic, "ann", { meta: { status: "online" } });
  const b = await member(topic, "bob");
  await sameNames([a, b], ["ann", "bob"], "both present");
  const before = b.metas("ann")[0].phx_ref;
  const reply = await replyOf(a.channel.push("presence_update", { meta: { status: "away" } }));
  assert.deepEqual(reply, { status: "ok", response: {} });
  await waitUntil(() => b.metas("ann")[0]?.status === "away", 5000, "the update");
  const [meta] = b.metas("ann");
  assert.equal(b.metas("ann").length, 1, "the old meta is gone");
  assert.equal(meta.phx_ref_prev, before);
  assert.notEqual(meta.phx_ref, before);
  const bad = await replyOf(a.channel.push("presence_update", { meta: "away" }));
  assert.deepEqual(bad, { status: "error", response: { reason: "meta must be a JSON object" } });
});

test("a client that stops answering disappears once its connection times out", T, async () => {
  const topic = uniqueTopic("lobby", "crash");
  const observer = await member(topic, "watcher");
  // A raw client that joins and then goes silent without closing, as a frozen or
  // crashed browser tab does: no heartbeats, the TCP connection still open.
  const ghost = await rawConnect(ctx.server);
  ghost.send(JSON.stringify(["1", "1", topic, "phx_join", { user_id: "ghost" }]));
  await waitUntil(() => observer.names().includes("ghost"), 5000, "ghost present");
  await waitUntil(() => !observer.names().includes("ghost"), 6000, "ghost gone after the idle timeout");
  await waitUntil(() => ghost.rec.close !== null, 3000, "the server closed the ghost");
  assert.equal(ghost.rec.close.code, 1001);
});

test("without presence_key each connection is its own key; a rejoin pushes a fresh state", T, async () => {
  const topic = uniqueTopic("anon", "keys");
  const a = await member(topic, "ignored");
  const b = await member(topic, "ignored");
  await waitUntil(() => a.names().length === 2 && b.names().length === 2, 5000, "two anonymous keys");
  // A rejoin (new join_ref) gets presence_state again, or the helper would stall.
  await new Promise((resolve) => b.channel.leave().receive("ok", resolve));
  await sleep(100);
  const again = b.socket.channel(topic, {});
  const presence = new Presence(again);
  let synced = false;
  presence.onSync(() => (synced = true));
  assert.equal((await replyOf(again.join())).status, "ok");
  await waitUntil(() => synced && presence.list((id) => id).length === 2, 5000, "sync after the rejoin");
});

test("a joiner's onSync fires once, and the list it sees already holds the joiner", T, async () => {
  for (const transport of [undefined, LongPoll]) {
    const topic = uniqueTopic("lobby", "once");
    const first = await member(topic, "una", { transport });
    const socket = await connectSocket(ctx.server, transport ? { ...FAST, transport } : FAST);
    const channel = socket.channel(topic, { user_id: "vic" });
    const presence = new Presence(channel);
    const seen = [];
    presence.onSync(() => seen.push(presence.list((id) => id).sort()));
    const reply = await replyOf(channel.join(), 5000, "join of vic");
    assert.equal(reply.status, "ok");
    await waitUntil(() => seen.length > 0, 5000, () => "onSync never fired");
    // Anything that would fire a second sync (a state, or a diff after it)
    // arrives within a few loop turns.
    await sleep(transport ? 1200 : 300);
    const how = transport ? "LongPoll" : "WebSocket";
    assert.deepEqual(seen, [["una", "vic"]], `${how}: one sync, with the joiner present`);
    assert.equal(first.syncs() >= 1, true);
    socket.disconnect();
    first.socket.disconnect();
  }
});

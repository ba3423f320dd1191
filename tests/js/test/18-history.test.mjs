// 18. Topic history and recovery with the official client: broadcasts on a history
// route carry their position in the ref slot, a join with `since` gets the missed
// broadcasts exactly once and in order (WebSocket and LongPoll, connections cut from
// outside the client by a TCP proxy), a restarted node answers `recovered: false`,
// and a plain join gets `position` without `recovered`.

import assert from "node:assert/strict";
import { test } from "node:test";
import { LongPoll } from "phoenix";
import { apiBroadcastOk, connectSocket, joinReply, sleep, uniqueTopic, waitUntil } from "../helpers/client.mjs";
import { startProxy } from "../helpers/proxy.mjs";
import { SUITE_CONFIG } from "../helpers/server.mjs";
import { useServer } from "../helpers/suite.mjs";

const HISTORY_ROUTE = `[[channel]]
pattern = "hist:*"
join = "public"
client_events = "broadcast"
history = 100
history_ttl_ms = 300000
`;

const ctx = useServer({ config: SUITE_CONFIG + HISTORY_ROUTE });

const POSITION = /^([a-z][a-z0-9]*):(\d+)$/;
const FAST = { reconnectAfterMs: () => 50, rejoinAfterMs: () => 50 };
const range = (n) => [...Array(n).keys()];

function parsePosition(text) {
  const m = POSITION.exec(text ?? "");
  assert.ok(m, `a position "<epoch>:<offset>" (got ${JSON.stringify(text)})`);
  return { epoch: m[1], offset: Number(m[2]) };
}

/**
 * The recovering app of the brief: channel params re-evaluated at each (re)join, `pos`
 * = ref of the last broadcast handled (or, before any, the plain join's position).
 * rec.joins: one {sent, resp} per ok join reply; rec.replayed: broadcasts handled after
 * a recovered join whose offset is at or before that join's position.
 */
function recoveringChannel(socket, topic) {
  const rec = { pos: null, seen: [], refs: [], joins: [], lastSent: null, boundary: null, replayed: 0 };
  const channel = socket.channel(topic, () => {
    rec.lastSent = rec.pos ? { since: rec.pos } : {};
    return rec.lastSent;
  });
  channel.on("new_msg", (msg, ref) => {
    rec.pos = ref;
    rec.seen.push(msg.n);
    rec.refs.push(ref);
    if (rec.boundary && ref) {
      const p = parsePosition(ref);
      if (p.epoch === rec.boundary.epoch && p.offset <= rec.boundary.offset) rec.replayed += 1;
    }
  });
  channel.join().receive("ok", (resp) => {
    rec.joins.push({ sent: rec.lastSent, resp });
    rec.boundary = resp?.recovered === true ? parsePosition(resp.position) : null;
    if (rec.pos === null && resp?.position) rec.pos = resp.position;
  });
  return { channel, rec };
}

/** Publishes {n} on `topic` through the HTTP API until `state.stop`; resolves with the count. */
async function publishUntilStopped(server, topic, state) {
  let n = 0;
  while (!state.stop) {
    await apiBroadcastOk(server, { topic, event: "new_msg", payload: { n } }, 1);
    n += 1;
    state.published = n;
    await sleep(3);
  }
  return n;
}

function describe(rec, proxy) {
  return (
    `seen ${rec.seen.length} (last ${JSON.stringify(rec.seen.slice(-5))}), ` +
    `joins ${JSON.stringify(rec.joins.map((j) => ({ sent: j.sent, ...j.resp })))}` +
    (proxy ? `, proxy accepted ${proxy.accepted} killed ${proxy.kills}` : "")
  );
}

/**
 * Connects through a proxy, joins a history topic, publishes continuously and cuts the
 * client's connections `cuts` times; then checks every broadcast was handled exactly once
 * and in order, and that every rejoin recovered.
 */
async function recoverAcrossCuts(socketOpts, cuts, name) {
  const server = ctx.server;
  const proxy = await startProxy(server.port);
  const state = { stop: false, published: 0 };
  let publishing = null;
  try {
    const topic = uniqueTopic("hist", name);
    const socket = await connectSocket(server, { url: proxy.socketUrl, ...FAST, ...socketOpts }, 10_000);
    const { channel, rec } = recoveringChannel(socket, topic);
    await waitUntil(() => rec.joins.length === 1, 5000, () => `first join (${describe(rec, proxy)})`);
    assert.deepEqual(rec.joins[0].sent, {}, "the first join has no since");
    assert.equal(rec.joins[0].resp.recovered, undefined, "a plain join has no recovered field");

    publishing = publishUntilStopped(server, topic, state);
    publishing.catch(() => {});

    for (let cut = 1; cut <= cuts; cut++) {
      const seenBefore = rec.seen.length;
      await waitUntil(() => rec.seen.length >= seenBefore + 15, 5000, () => `live broadcasts before cut ${cut} (${describe(rec, proxy)})`);
      const joinsBefore = rec.joins.length;
      const killed = proxy.killAll();
      assert.ok(killed >= 1, `cut ${cut} found a live connection to cut`);
      await waitUntil(() => rec.joins.length > joinsBefore, 8000, () => `rejoin after cut ${cut} (${describe(rec, proxy)})`);
    }
    const seenAfter = rec.seen.length;
    await waitUntil(() => rec.seen.length >= seenAfter + 15, 5000, () => `live broadcasts after the last cut (${describe(rec, proxy)})`);

    state.stop = true;
    const total = await publishing;
    await waitUntil(() => rec.seen.length >= total, 8000, () => `all ${total} broadcasts (${describe(rec, proxy)})`);
    await sleep(200); // a duplicate arriving late would show here

    assert.deepEqual(rec.seen, range(total), "every broadcast handled exactly once, in order");
    const positions = rec.refs.map(parsePosition);
    assert.ok(positions.every((p) => p.epoch === positions[0].epoch), "one epoch throughout");
    for (let i = 1; i < positions.length; i++) {
      assert.equal(positions[i].offset, positions[i - 1].offset + 1, `offsets follow each other at ${i}`);
    }
    assert.ok(rec.joins.length >= cuts + 1, `a rejoin per cut (${describe(rec, proxy)})`);
    for (const [i, join] of rec.joins.entries()) {
      if (i === 0) continue;
      assert.equal(typeof join.sent.since, "string", `rejoin ${i} sent since`);
      assert.equal(join.resp.recovered, true, `rejoin ${i} recovered (${describe(rec, proxy)})`);
      parsePosition(join.resp.position);
    }
    assert.ok(rec.replayed > 0, `some broadcasts came from the history (${describe(rec, proxy)})`);
    assert.ok(proxy.accepted > cuts, "the client reconnected through the proxy");
    assert.equal(channel.state, "joined");
  } finally {
    state.stop = true;
    if (publishing) await publishing.catch(() => {});
    await proxy.close();
  }
}

test("WebSocket: connections cut mid-stream, every broadcast handled exactly once in order", { timeout: 30_000 }, async () => {
  await recoverAcrossCuts({}, 3, "ws-cuts");
});

test("LongPoll: HTTP connections cut mid-stream, every broadcast handled exactly once in order", { timeout: 30_000 }, async () => {
  await recoverAcrossCuts({ transport: LongPoll }, 3, "lp-cuts");
});

test("a plain join gets position without recovered; since replays what came after it", { timeout: 15_000 }, async () => {
  const topic = uniqueTopic("hist", "plain");
  for (let n = 0; n < 3; n++) {
    await apiBroadcastOk(ctx.server, { topic, event: "new_msg", payload: { n } }, 1);
  }
  const socket = await connectSocket(ctx.server);
  const plain = socket.channel(topic, {});
  const got = [];
  plain.on("new_msg", (msg, ref) => got.push({ n: msg.n, ref }));
  const r = await joinReply(plain);
  assert.equal(r.status, "ok");
  assert.ok(!("recovered" in r.response), `no recovered field (got ${JSON.stringify(r.response)})`);
  const at = parsePosition(r.response.position);
  assert.equal(at.offset, 3, "the position counts the three broadcasts before the join");

  await apiBroadcastOk(ctx.server, { topic, event: "new_msg", payload: { n: 3 } }, 1);
  await waitUntil(() => got.length === 1, 5000, "the broadcast after the join");
  assert.deepEqual(got, [{ n: 3, ref: `${at.epoch}:4` }], "nothing replayed; the next ref is the next offset");

  const other = await connectSocket(ctx.server);
  const recovering = other.channel(topic, { since: `${at.epoch}:1` });
  const replayed = [];
  recovering.on("new_msg", (msg, ref) => replayed.push({ n: msg.n, ref }));
  const rr = await joinReply(recovering);
  assert.equal(rr.status, "ok");
  assert.equal(rr.response.recovered, true);
  assert.equal(rr.response.position, `${at.epoch}:4`);
  await waitUntil(() => replayed.length === 3, 5000, () => `three replayed (got ${JSON.stringify(replayed)})`);
  await sleep(100);
  assert.deepEqual(replayed, [
    { n: 1, ref: `${at.epoch}:2` },
    { n: 2, ref: `${at.epoch}:3` },
    { n: 3, ref: `${at.epoch}:4` },
  ]);
});

test("after a restart of the node the rejoin answers recovered: false with a new epoch", { timeout: 40_000 }, async () => {
  const server = ctx.server;
  const topic = uniqueTopic("hist", "restart");
  const socket = await connectSocket(server, FAST);
  const { rec } = recoveringChannel(socket, topic);
  await waitUntil(() => rec.joins.length === 1, 5000, () => `first join (${describe(rec)})`);
  for (let n = 0; n < 5; n++) {
    await apiBroadcastOk(server, { topic, event: "new_msg", payload: { n } }, 1);
  }
  await waitUntil(() => rec.seen.length === 5, 5000, () => `five broadcasts (${describe(rec)})`);
  const before = rec.pos;
  const oldEpoch = parsePosition(before).epoch;

  await server.restart();
  await waitUntil(() => rec.joins.length >= 2, 20_000, () => `rejoin after the restart (${describe(rec)}, closes ${JSON.stringify(socket.rec.closes.slice(0, 3))})`);
  const rejoin = rec.joins[1];
  assert.deepEqual(rejoin.sent, { since: before }, "the rejoin asked for what came after the last broadcast handled");
  assert.equal(rejoin.resp.recovered, false, `cannot recover across a restart (got ${JSON.stringify(rejoin.resp)})`);
  const now = parsePosition(rejoin.resp.position);
  assert.notEqual(now.epoch, oldEpoch, "the restarted node's stream has a new epoch");

  // The app refetches and continues from the new position.
  rec.pos = rejoin.resp.position;
  await apiBroadcastOk(server, { topic, event: "new_msg", payload: { n: 100 } }, 1);
  await waitUntil(() => rec.seen.length === 6, 5000, () => `broadcast after the restart (${describe(rec)})`);
  await sleep(100);
  assert.deepEqual(rec.seen, [0, 1, 2, 3, 4, 100]);
  assert.equal(parsePosition(rec.refs[5]).epoch, now.epoch);
  assert.equal(rec.joins.length, 2, "no further rejoin");
});

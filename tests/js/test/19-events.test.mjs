// 19. Lifecycle events with the official client: a tab that closes (the socket
// drops) produces a `leave` for each of its lifecycle channels and then a
// `disconnect`, delivered to a real HTTP backend with a verifiable signature;
// a user with two tabs is one member: added once, removed with the last tab.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { after, test } from "node:test";
import { connectSocket, joinOk, uniqueTopic, waitUntil } from "../helpers/client.mjs";
import { SUITE_CONFIG } from "../helpers/server.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const SECRET = "js-suite-events-secret";

/** A backend that records every event it is sent, checking each body's signature. */
const received = [];
const badSignatures = [];
const backend = createServer((req, res) => {
  let body = "";
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {
    const expected = "sha256=" + createHmac("sha256", SECRET).update(body).digest("hex");
    if (req.headers["x-cinder-signature"] !== expected) badSignatures.push(req.headers);
    if (req.url === "/hooks/events") received.push(...JSON.parse(body).events);
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
});
await new Promise((resolve) => backend.listen(0, "127.0.0.1", resolve));
after(() => backend.close());

const ctx = useServer({
  config:
    SUITE_CONFIG +
    `[webhook]
url = "http://127.0.0.1:${backend.address().port}/hooks"
secret = "${SECRET}"
events_batch_ms = 20
[[channel]]
pattern = "game:*"
join = "public"
lifecycle = true
[[channel]]
pattern = "party:*"
join = "public"
lifecycle = true
presence = true
presence_key = "name"
`,
});

/** The events about `topic`, as "type key-or-topic", sorted. */
const about = (topic) =>
  received
    .filter((e) => e.topic === topic)
    .map((e) => `${e.type} ${e.key ?? e.topic}`)
    .sort();

test("a closed tab: one leave per lifecycle channel, then one disconnect", T, async () => {
  const socket = await connectSocket(ctx.server);
  const game = uniqueTopic("game", "tab");
  await joinOk(socket, game);
  await joinOk(socket, uniqueTopic("room", "plain")); // no lifecycle on room:*
  socket.disconnect();
  await waitUntil(() => received.length >= 4, 5000, () => `4 events (got ${JSON.stringify(received)})`);
  // The topic was occupied and vacated (by its owner shard, maybe another
  // than the tab's): the tab's own leave comes before its disconnect.
  assert.deepEqual(about(game), [`channel_occupied ${game}`, `channel_vacated ${game}`, `leave ${game}`]);
  const mine = received.filter((e) => e.type === "leave" || e.type === "disconnect");
  const [leave, disconnect] = mine;
  assert.equal(leave.type, "leave");
  assert.equal(leave.topic, game);
  assert.equal(leave.reason, "closed");
  assert.equal(typeof leave.join_ref, "string");
  assert.equal(disconnect.type, "disconnect");
  assert.equal(disconnect.reason, "closed");
  assert.notEqual(leave.id, disconnect.id);
  assert.deepEqual(badSignatures, []);
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(received.length, 4, "nothing for the room:* channel, nothing twice");
});

test("two tabs of one user: one member_added, one member_removed with the last tab", T, async () => {
  const party = uniqueTopic("party", "tabs");
  const first = await connectSocket(ctx.server);
  await joinOk(first, party, { name: "zoe" });
  await waitUntil(() => about(party).length >= 2, 5000, () => `occupied and added (got ${about(party)})`);
  const second = await connectSocket(ctx.server);
  await joinOk(second, party, { name: "zoe" });
  first.disconnect();
  await waitUntil(() => about(party).includes(`leave ${party}`), 5000, () => `the first tab's leave`);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.deepEqual(about(party), [`channel_occupied ${party}`, `leave ${party}`, `member_added zoe`]);
  second.disconnect();
  await waitUntil(() => about(party).length >= 6, 5000, () => `removed and vacated (got ${about(party)})`);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.deepEqual(about(party), [
    `channel_occupied ${party}`,
    `channel_vacated ${party}`,
    `leave ${party}`,
    `leave ${party}`,
    `member_added zoe`,
    `member_removed zoe`,
  ]);
  const added = received.find((e) => e.topic === party && e.type === "member_added");
  assert.equal(typeof added.meta.phx_ref, "string");
  assert.deepEqual(badSignatures, []);
});

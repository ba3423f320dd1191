// 19. Lifecycle events with the official client: a tab that closes (the socket
// drops) produces a `leave` for each of its lifecycle channels and then a
// `disconnect`, delivered to a real HTTP backend with a verifiable signature.

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
`,
});

test("a closed tab: one leave per lifecycle channel, then one disconnect", T, async () => {
  const socket = await connectSocket(ctx.server);
  const game = uniqueTopic("game", "tab");
  await joinOk(socket, game);
  await joinOk(socket, uniqueTopic("room", "plain")); // no lifecycle on room:*
  socket.disconnect();
  await waitUntil(() => received.length >= 2, 5000, () => `2 events (got ${JSON.stringify(received)})`);
  const [leave, disconnect] = received;
  assert.equal(leave.type, "leave");
  assert.equal(leave.topic, game);
  assert.equal(leave.reason, "closed");
  assert.equal(typeof leave.join_ref, "string");
  assert.equal(disconnect.type, "disconnect");
  assert.equal(disconnect.reason, "closed");
  assert.notEqual(leave.id, disconnect.id);
  assert.deepEqual(badSignatures, []);
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(received.length, 2, "nothing for the room:* channel, nothing twice");
});

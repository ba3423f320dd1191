// 14. A secured setup: JWT connect policy (token in params and in the authToken
// subprotocol), private user:{user_id} topics, claims joins, the API key, and forced
// disconnect — driven by the official client.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";
import { LongPoll } from "phoenix";
import { collect, connectSocket, joinOk, joinReply, makeSocket, upgradeStatus, waitUntil } from "../helpers/client.mjs";
import { binaryPath } from "../helpers/server.mjs";
import { T, useServer } from "../helpers/suite.mjs";

const SECRET = "js-suite-secret";
const API_KEY = "js-suite-api-key";

const ctx = useServer({
  config: `[server]
shards = 2
[socket.auth]
mode = "jwt"
secret = "${SECRET}"
[api]
api_key = "${API_KEY}"
[[channel]]
pattern = "user:{user_id}"
join = "public"
[[channel]]
pattern = "team:*"
join = "claims"
client_events = "broadcast"
`,
});

/** A token minted with `cinder token`, as the README shows. */
function token(sub, channels) {
  const args = ["token", "--secret", SECRET, "--sub", sub, "--ttl", "600"];
  if (channels) args.push("--channels", channels);
  return execFileSync(binaryPath(), args, { encoding: "utf8" }).trim();
}

async function api(path, body, key = API_KEY) {
  const headers = { "content-type": "application/json" };
  if (key) headers.authorization = `Bearer ${key}`;
  const res = await fetch(`${ctx.server.httpUrl}${path}`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, json: await res.json().catch(() => undefined) };
}

test("a token in the connect params admits the user to their own private topic only", T, async () => {
  const socket = await connectSocket(ctx.server, { params: { token: token("alice") } });
  const mine = await joinOk(socket, "user:alice");
  const got = collect(mine, "notice");
  const theirs = await joinReply(socket.channel("user:bob"));
  assert.deepEqual(theirs, { status: "error", response: { reason: "unauthorized" } });
  const r = await api("/api/broadcast", { topic: "user:alice", event: "notice", payload: { n: 1 } });
  assert.equal(r.status, 200);
  await waitUntil(() => got.length === 1, 5000, "the private broadcast");
  assert.deepEqual(got[0], { n: 1 });
});

test("a token in the authToken option (auth-token subprotocol) connects", T, async () => {
  const socket = await connectSocket(ctx.server, { authToken: token("bob") });
  assert.equal(socket.conn.protocol, "phoenix");
  await joinOk(socket, "user:bob");
});

test("without a valid token the upgrade is refused with 403 and the client never opens", T, async () => {
  assert.equal((await upgradeStatus(ctx.server, "/socket/websocket?vsn=2.0.0")).status, 403);
  const forged = execFileSync(binaryPath(), ["token", "--secret", "other-secret", "--sub", "eve"], {
    encoding: "utf8",
  }).trim();
  assert.equal((await upgradeStatus(ctx.server, `/socket/websocket?vsn=2.0.0&token=${forged}`)).status, 403);
  const socket = makeSocket(ctx.server, { params: { token: forged } });
  socket.connect();
  await waitUntil(() => socket.rec.errors.length > 0, 5000, "a connection error");
  assert.equal(socket.rec.opens, 0);
  socket.disconnect();
});

test("claims joins follow the token's channels claim, and pushes broadcast within the team", T, async () => {
  const carol = await connectSocket(ctx.server, { params: { token: token("carol", "team:red") } });
  const dave = await connectSocket(ctx.server, { params: { token: token("dave", "team:red,team:blue") } });
  const red = await joinOk(carol, "team:red");
  const daveRed = await joinOk(dave, "team:red");
  const got = collect(daveRed, "shout");
  assert.deepEqual(await joinReply(carol.channel("team:blue")), {
    status: "error",
    response: { reason: "unauthorized" },
  });
  red.push("shout", { from: "carol" });
  await waitUntil(() => got.length === 1, 5000, "the team broadcast");
});

test("the publish API needs the key, and a forced disconnect closes with 1001 and the client reconnects", T, async () => {
  assert.equal((await api("/api/broadcast", { topic: "user:x", event: "e", payload: {} }, null)).status, 401);
  assert.equal((await api("/api/broadcast", { topic: "user:x", event: "e", payload: {} }, "wrong")).status, 401);
  const socket = await connectSocket(ctx.server, {
    params: { token: token("frank") },
    reconnectAfterMs: () => 50,
  });
  await joinOk(socket, "user:frank");
  const r = await api("/api/disconnect", { user_id: "frank" });
  assert.deepEqual(r, { status: 200, json: { ok: true } });
  await waitUntil(() => socket.rec.closes.length > 0, 5000, "the forced close");
  assert.equal(socket.rec.closes[0].code, 1001);
  await waitUntil(() => socket.rec.opens >= 2, 5000, "the client to reconnect");
});

test("LongPoll clients are secured alike: token in params or authToken, forced disconnect ends the session", T, async () => {
  // The token in the params travels in the query string of every request.
  const viaParams = await connectSocket(ctx.server, { transport: LongPoll, params: { token: token("gina") } });
  await joinOk(viaParams, "user:gina");
  assert.deepEqual(await joinReply(viaParams.channel("user:bob")), {
    status: "error",
    response: { reason: "unauthorized" },
  });
  // authToken travels in the X-Phoenix-AuthToken header.
  const viaHeader = await connectSocket(ctx.server, {
    transport: LongPoll,
    authToken: token("hank"),
    reconnectAfterMs: () => 50,
    rejoinAfterMs: () => 50,
  });
  const channel = viaHeader.channel("user:hank");
  let joins = 0;
  channel.join().receive("ok", () => (joins += 1));
  await waitUntil(() => joins === 1, 5000, "hank's join");
  // A forced disconnect ends the session: the client's next poll gets 410,
  // it reconnects with a new session and rejoins.
  const r = await api("/api/disconnect", { user_id: "hank" });
  assert.equal(r.status, 200);
  await waitUntil(() => viaHeader.rec.closes.length > 0, 12_000, "the session to end");
  assert.equal(viaHeader.rec.closes[0].code, 3410, "session_gone");
  await waitUntil(() => joins >= 2, 12_000, "the rejoin on a new session");
  // Without a token a long-poll session is refused.
  const refused = makeSocket(ctx.server, { transport: LongPoll });
  refused.connect();
  await waitUntil(() => refused.rec.errors.length > 0, 5000, "a refusal");
  assert.equal(refused.rec.opens, 0);
  refused.disconnect();
});

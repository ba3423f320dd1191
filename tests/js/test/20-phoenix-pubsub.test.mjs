// 20. Cinder as one more node of a Phoenix app's Redis PubSub, with the official
// client: the real messages a Phoenix 1.7 app published (the fixtures, PUBLISHed
// byte for byte on the app's channel of a redis-server of the test's own) reach a
// client connected to Cinder exactly as Phoenix would send them, binary broadcasts
// included, and nothing else does; a client's broadcast goes out on the app's
// channel as a term Erlang/OTP reads as a Phoenix node's.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { cleanupClients, connectSocket, joinOk, waitUntil } from "../helpers/client.mjs";
import { startRedis } from "../helpers/redis.mjs";
import { JS_ROOT, SUITE_CONFIG, startServer } from "../helpers/server.mjs";
import { T } from "../helpers/suite.mjs";

const CHANNEL = "phx:Elixir.Peer.PubSub.Adapter";
const FIXTURES = path.resolve(JS_ROOT, "../fixtures/phoenix-pubsub-redis");
const fixture = (name) => readFileSync(path.join(FIXTURES, `${name}.bin`));

const ctx = { redis: null, server: null };

before(async () => {
  ctx.redis = await startRedis();
  ctx.server = await startServer({
    config:
      SUITE_CONFIG +
      `[phoenix_pubsub]
redis = "${ctx.redis.url}"
name = "Peer.PubSub"
node_name = "cinder-1"
`,
  });
  await waitUntil(async () => (await health()).phoenix_pubsub?.redis === "up", 10_000, "the bridge to subscribe");
});

after(async () => {
  await cleanupClients();
  await ctx.server?.dispose();
  await ctx.redis?.stop();
});

async function health() {
  return (await fetch(`${ctx.server.httpUrl}/healthz`)).json();
}

/** RESP bulk string of a Buffer. */
const bulk = (buf) => Buffer.concat([Buffer.from(`$${buf.length}\r\n`), buf, Buffer.from("\r\n")]);

/** PUBLISHes `bytes` on the app's channel, as a Phoenix node does. */
function publish(bytes) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: "127.0.0.1", port: ctx.redis.port });
    sock.on("error", reject);
    sock.on("connect", () =>
      sock.write(Buffer.concat([Buffer.from("*3\r\n"), bulk(Buffer.from("PUBLISH")), bulk(Buffer.from(CHANNEL)), bulk(bytes)])),
    );
    sock.once("data", (reply) => {
      sock.destroy();
      reply[0] === 0x3a ? resolve() : reject(new Error(`PUBLISH answered ${reply}`));
    });
  });
}

/** A subscriber of the app's channel; `.messages` collects the payloads. */
function subscribe() {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: "127.0.0.1", port: ctx.redis.port });
    const sub = { messages: [], close: () => sock.destroy() };
    let buf = Buffer.alloc(0);
    sock.on("error", reject);
    sock.on("connect", () => sock.write(`SUBSCRIBE ${CHANNEL}\r\n`));
    sock.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      // Each push: *3, then three bulk strings (or an integer for the
      // subscription count).
      for (;;) {
        const items = [];
        let at = buf.indexOf("\r\n") + 2;
        if (at < 2) return;
        const count = Number(buf.subarray(1, at - 2).toString());
        let complete = true;
        for (let i = 0; i < count; i++) {
          const end = buf.indexOf("\r\n", at);
          if (end < 0) return;
          const head = buf.subarray(at, end).toString();
          if (head[0] === ":") {
            items.push(head.slice(1));
            at = end + 2;
            continue;
          }
          const len = Number(head.slice(1));
          if (buf.length < end + 2 + len + 2) {
            complete = false;
            break;
          }
          items.push(buf.subarray(end + 2, end + 2 + len));
          at = end + 2 + len + 2;
        }
        if (!complete) return;
        buf = buf.subarray(at);
        if (String(items[0]) === "subscribe") resolve(sub);
        else if (String(items[0]) === "message") sub.messages.push(items[2]);
      }
    });
  });
}

test("an app's messages reach the official client as Phoenix would send them", T, async () => {
  const socket = await connectSocket(ctx.server);
  const channel = await joinOk(socket, "room:lobby");
  const got = [];
  for (const event of ["new_msg", "shout_others", "values", "bin"]) {
    channel.on(event, (payload) => {
      const value = payload instanceof ArrayBuffer ? [...new Uint8Array(payload)] : payload;
      got.push([event, value]);
    });
  }
  const names = [
    "captured/http-broadcast",
    "captured/tracker-heartbeat-1",
    "captured/channel-broadcast",
    "captured/binary-broadcast",
    "generated/atom-keys",
    "generated/json-values",
    "generated/compressed",
    "generated/only-other-node",
    "generated/only-cinder",
    "generated/plain-pubsub-message",
    "generated/binary-payload",
    "generated/future-version",
    "captured/broadcast-from", // last: the marker
  ];
  for (const name of names) await publish(fixture(name));
  await waitUntil(() => got.some(([event]) => event === "shout_others"), 5000, () => `the marker (got ${JSON.stringify(got)})`);
  const compress = "compress me ".repeat(40);
  assert.deepEqual(got.slice(0, 7), [
    ["new_msg", { body: "hi", n: 1 }],
    ["new_msg", { body: "hi ws", n: 2 }],
    ["new_msg", [255, 0, 1]],
    ["new_msg", { body: "hi", user: { id: 7, name: "Zoë" } }],
    [
      "values",
      {
        1: "int key",
        atom: "some_atom",
        big: 123456789012345678901234567890, // JSON.parse rounds it, as for Phoenix
        charlist: [97, 98, 99],
        empty: {},
        empty_list: [],
        f: false,
        float: 1.5,
        list: [1, "two", [3.25]],
        neg: -42,
        nil: null,
        t: true,
      },
    ],
    ["new_msg", { body: compress }],
    got[6], // only-cinder: for this node
  ]);
  assert.equal(got[6][0], "new_msg");
  assert.deepEqual(got.slice(7), [
    ["bin", [0, 1, 2, 255]],
    ["shout_others", { o: 1 }],
  ]);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(got.length, 9, "nothing ignored was delivered");
});

test("a client's broadcast reaches the app's channel as a Phoenix node's term", T, async () => {
  const app = await subscribe();
  const socket = await connectSocket(ctx.server);
  const channel = await joinOk(socket, "room:js");
  channel.push("shout", { text: "from the JS client", n: 3 });
  await waitUntil(() => app.messages.length > 0, 5000, "the term on the app's channel");
  app.close();
  const dir = mkdtempSync(path.join(os.tmpdir(), "cinder-js-term-"));
  const file = path.join(dir, "term.bin");
  writeFileSync(file, app.messages[0]);
  const expected =
    "{3, except, 'cinder-1', <<\"room:js\">>, #{'__struct__' => 'Elixir.Phoenix.Socket.Broadcast', " +
    "topic => <<\"room:js\">>, event => <<\"shout\">>, " +
    "payload => #{<<\"text\">> => <<\"from the JS client\">>, <<\"n\">> => 3}}, 'Elixir.Phoenix.Channel.Server'}";
  const erl = spawnSync(
    "erl",
    ["-noshell", "-eval", `{ok, B} = file:read_file("${file}"), io:format("~p~n", [binary_to_term(B) =:= ${expected}]), halt().`],
    { encoding: "utf8" },
  );
  rmSync(dir, { recursive: true, force: true });
  if (erl.error) throw new Error(`this test needs Erlang/OTP's erl (Debian package erlang-base): ${erl.error.message}`);
  assert.equal(erl.stdout.trim(), "true", erl.stderr);
});

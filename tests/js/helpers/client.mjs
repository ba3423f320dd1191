// Client-side helpers: the official `phoenix` Socket over the `ws` transport, raw `ws`
// connections speaking V2 by hand, bounded waits, and the HTTP broadcast API.

import { randomBytes } from "node:crypto";
import http from "node:http";
import { Socket } from "phoenix";
import WebSocket from "ws";

export { Socket, WebSocket };

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Races `promise` against a timer; the error names what was awaited. */
export async function withTimeout(promise, ms, what) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `cond` every 10 ms until it returns truthy; rejects after `ms`. `what` may be a
 * function, evaluated at failure time (so it can describe what was received).
 */
export async function waitUntil(cond, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() >= deadline) {
      const desc = typeof what === "function" ? what() : what;
      throw new Error(`timed out after ${ms} ms waiting for ${desc}`);
    }
    await sleep(10);
  }
}

let topicCounter = 0;
/** A topic unique to this run: `${prefix}:${name}-${n}-${random}`. */
export function uniqueTopic(prefix, name = "t") {
  topicCounter += 1;
  return `${prefix}:${name}-${topicCounter}-${randomBytes(4).toString("hex")}`;
}

// ---------------------------------------------------------------------------
// Registry of everything opened by a test, closed by cleanupClients().

const openSockets = new Set();
const openRaw = new Set();

/** Disconnects every phoenix Socket and raw ws opened since the last cleanup. */
export async function cleanupClients() {
  const waits = [];
  for (const socket of openSockets) {
    waits.push(
      withTimeout(new Promise((resolve) => socket.disconnect(resolve)), 3000, "socket disconnect").catch(() => {}),
    );
  }
  openSockets.clear();
  for (const ws of openRaw) {
    try {
      ws.terminate();
    } catch {
      // ignore
    }
  }
  openRaw.clear();
  await Promise.all(waits);
}

/**
 * Creates a phoenix Socket (ws transport) and attaches a recorder:
 * socket.rec = { messages, opens, closes: [CloseEvent-ish {code, reason}], errors }.
 * Does not connect.
 */
export function makeSocket(server, opts = {}) {
  const { url, ...rest } = opts;
  const socket = new Socket(url ?? server.socketUrl, { transport: WebSocket, ...rest });
  const rec = { messages: [], opens: 0, closes: [], errors: [] };
  socket.onOpen(() => {
    rec.opens += 1;
  });
  socket.onClose((ev) => {
    rec.closes.push({ code: ev?.code, reason: ev?.reason?.toString?.() ?? ev?.reason });
  });
  socket.onError((err) => {
    rec.errors.push(err?.message ?? String(err?.error?.message ?? err?.type ?? err));
  });
  socket.onMessage((msg) => {
    rec.messages.push(msg);
  });
  socket.rec = rec;
  openSockets.add(socket);
  return socket;
}

/** makeSocket + connect, resolved once the socket is open. */
export async function connectSocket(server, opts = {}, timeoutMs = 5000) {
  const socket = makeSocket(server, opts);
  socket.connect();
  await waitUntil(
    () => socket.isConnected() && socket.rec.opens > 0,
    timeoutMs,
    () =>
      `socket to ${opts.url ?? server.socketUrl} to open ` +
      `(errors: ${JSON.stringify(socket.rec.errors.slice(0, 3))}, closes: ${JSON.stringify(socket.rec.closes.slice(0, 3))})`,
  );
  return socket;
}

/**
 * Resolves with {status, response} for the first reply ("ok", "error" or the client's
 * local "timeout") to a Push (a join or a channel push).
 */
export function replyOf(push, ms = 5000, what = "a reply") {
  return withTimeout(
    new Promise((resolve) => {
      push
        .receive("ok", (response) => resolve({ status: "ok", response }))
        .receive("error", (response) => resolve({ status: "error", response }))
        .receive("timeout", () => resolve({ status: "timeout" }));
    }),
    ms,
    what,
  );
}

/** channel.join() and the first reply. */
export function joinReply(channel, ms = 5000) {
  return replyOf(channel.join(), ms, `join reply on ${channel.topic}`);
}

/** Creates a channel, joins it, and requires an ok reply. */
export async function joinOk(socket, topic, params = {}) {
  const channel = socket.channel(topic, params);
  const r = await joinReply(channel);
  if (r.status !== "ok") {
    throw new Error(`join of ${topic} answered ${JSON.stringify(r)}, expected ok`);
  }
  return channel;
}

/** Records every payload of `event` delivered to `channel`. */
export function collect(channel, event) {
  const got = [];
  channel.on(event, (payload) => got.push(payload));
  return got;
}

// ---------------------------------------------------------------------------
// HTTP API

/** POST /api/broadcast with a JS object (JSON-encoded) or a raw string body. */
export async function apiBroadcast(server, body, { contentType = "application/json" } = {}) {
  const res = await fetch(`${server.httpUrl}/api/broadcast`, {
    method: "POST",
    headers: { "content-type": contentType },
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text, headers: res.headers };
}

/** apiBroadcast that requires 200 {"ok":true,"count":expectedCount}. */
export async function apiBroadcastOk(server, body, expectedCount) {
  const r = await apiBroadcast(server, body);
  if (r.status !== 200 || !r.json || r.json.ok !== true || r.json.count !== expectedCount) {
    throw new Error(
      `POST /api/broadcast ${JSON.stringify(body)} answered ${r.status} ${r.text}, ` +
        `expected 200 {"ok":true,"count":${expectedCount}}`,
    );
  }
  return r;
}

// ---------------------------------------------------------------------------
// Raw ws connections (messages typed by hand).

/**
 * Opens a raw ws connection to /socket/websocket + query. rec.messages holds decoded
 * JSON for text frames ({__unparsable: text} if not JSON) and Buffers for binary frames;
 * rec.close is {code, reason} once closed.
 */
export async function rawConnect(server, query = "?vsn=2.0.0", protocols = undefined, timeoutMs = 5000) {
  const ws = new WebSocket(server.websocketUrl + query, protocols);
  openRaw.add(ws);
  const rec = { messages: [], close: null, errors: [] };
  ws.rec = rec;
  ws.on("message", (data, isBinary) => {
    if (isBinary) {
      rec.messages.push(Buffer.from(data));
      return;
    }
    const text = data.toString();
    try {
      rec.messages.push(JSON.parse(text));
    } catch {
      rec.messages.push({ __unparsable: text });
    }
  });
  ws.on("close", (code, reason) => {
    rec.close = { code, reason: reason.toString() };
  });
  ws.on("error", (err) => rec.errors.push(err.message));
  await withTimeout(
    new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("close", () => reject(new Error(`raw ws closed before open: ${JSON.stringify(rec)}`)));
    }),
    timeoutMs,
    "raw ws open",
  );
  return ws;
}

/** Waits for the first raw message (from index `from`) matching `pred`. */
export function rawWaitFor(ws, pred, ms, what, from = 0) {
  return waitUntil(() => ws.rec.messages.slice(from).find(pred), ms, () => `${what} (got ${describeRaw(ws)})`);
}

export function describeRaw(ws) {
  const ms = ws.rec.messages.map((m) => (Buffer.isBuffer(m) ? `<binary ${m.toString("hex")}>` : JSON.stringify(m)));
  return `[${ms.join(", ")}] close=${JSON.stringify(ws.rec.close)}`;
}

/** Waits until the raw connection is closed; resolves with {code, reason}. */
export function rawWaitClose(ws, ms, what = "server to close the connection") {
  return waitUntil(() => ws.rec.close, ms, () => `${what} (got ${describeRaw(ws)})`);
}

/**
 * Sends a WebSocket upgrade request by hand and resolves with the HTTP status
 * (101 when the server upgraded).
 */
export function upgradeStatus(server, pathAndQuery, headers = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = http.request({
        host: "127.0.0.1",
        port: server.port,
        path: pathAndQuery,
        method: "GET",
        agent: false,
        headers: {
          Connection: "Upgrade",
          Upgrade: "websocket",
          "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": randomBytes(16).toString("base64"),
          ...headers,
        },
      });
      req.on("upgrade", (res, socket) => {
        socket.destroy();
        resolve({ status: res.statusCode, headers: res.headers });
      });
      req.on("response", (res) => {
        res.resume();
        resolve({ status: res.statusCode, headers: res.headers });
      });
      req.on("error", reject);
      req.end();
    }),
    5000,
    `upgrade response for ${pathAndQuery}`,
  );
}

// ---------------------------------------------------------------------------
// V1 serializer for the JS client: JSON objects. Client -> server
// {topic,event,payload,ref,join_ref}; server -> client {topic,event,payload,ref}.

export function makeV1Codec() {
  const codec = {
    /** Raw objects the server sent, as parsed. */
    received: [],
    /** Frames a V1 client cannot decode (binary frames, non-objects), kept for assertions. */
    undecodable: [],
    encode(msg, callback) {
      const { topic, event, payload, ref, join_ref } = msg;
      return callback(JSON.stringify({ topic, event, payload, ref, join_ref }));
    },
    decode(raw, callback) {
      if (typeof raw !== "string") {
        codec.undecodable.push(raw);
        return undefined;
      }
      let obj;
      try {
        obj = JSON.parse(raw);
      } catch {
        codec.undecodable.push(raw);
        return undefined;
      }
      if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
        codec.undecodable.push(raw);
        return undefined;
      }
      codec.received.push(obj);
      return callback({ join_ref: null, ref: obj.ref, topic: obj.topic, event: obj.event, payload: obj.payload });
    },
  };
  return codec;
}

/** Bytes of an ArrayBuffer (or Buffer/TypedArray) as a plain array, for deepEqual. */
export function bytesOf(buf) {
  if (buf instanceof ArrayBuffer) return Array.from(new Uint8Array(buf));
  if (ArrayBuffer.isView(buf)) return Array.from(new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength));
  throw new Error(`not binary: ${Object.prototype.toString.call(buf)}`);
}

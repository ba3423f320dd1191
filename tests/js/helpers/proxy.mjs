// A TCP proxy between a client and the server, so a test can cut the client's
// connections from outside the client (as a dropped network path would).
//
// Every accepted connection is piped to 127.0.0.1:<targetPort>. `killAll()` resets
// the client side (RST) and destroys the upstream side of every live pair; the
// proxy keeps accepting, so the client can reconnect through it.

import net from "node:net";

/**
 * Starts a proxy on an OS-assigned port of 127.0.0.1 forwarding to `targetPort`.
 * Resolves with { port, socketUrl, accepted, kills, live, killAll(), close() }.
 */
export async function startProxy(targetPort, { targetHost = "127.0.0.1" } = {}) {
  const pairs = new Set();
  const stats = { accepted: 0, killed: 0 };

  const server = net.createServer((client) => {
    stats.accepted += 1;
    const upstream = net.connect({ host: targetHost, port: targetPort });
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      if (!pairs.delete(pair)) return;
      client.destroy();
      upstream.destroy();
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    client.pipe(upstream);
    upstream.pipe(client);
  });

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port: 0, exclusive: true }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address();

  /** Cuts every live connection; returns how many were cut. */
  function killAll() {
    const live = [...pairs];
    pairs.clear();
    for (const { client, upstream } of live) {
      try {
        client.resetAndDestroy();
      } catch {
        client.destroy();
      }
      upstream.destroy();
    }
    stats.killed += live.length;
    return live.length;
  }

  return {
    port,
    /** Base URL for `new Socket(...)` through the proxy. */
    socketUrl: `ws://127.0.0.1:${port}/socket`,
    get accepted() {
      return stats.accepted;
    },
    get kills() {
      return stats.killed;
    },
    get live() {
      return pairs.size;
    },
    killAll,
    /** Stops accepting and cuts every live connection. */
    close() {
      killAll();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

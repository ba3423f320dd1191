// A redis-server of the test's own on a free port (never the machine's Redis on
// 6379), killed when the test process ends. Fails with a clear message when
// redis-server is not installed.

import { spawn, spawnSync } from "node:child_process";
import net from "node:net";
import { freePort } from "./server.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function redisServerBinary() {
  for (const candidate of ["redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server"]) {
    const probe = spawnSync(candidate, ["--version"], { stdio: "ignore" });
    if (probe.status === 0) return candidate;
  }
  throw new Error(
    "the cluster tests need redis-server (Debian package redis-server; .ci/run installs it) and none was found on PATH",
  );
}

function answersPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    let reply = "";
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.on("connect", () => sock.write("PING\r\n"));
    sock.on("data", (d) => {
      reply += d.toString();
      if (reply.includes("\r\n")) done(reply.startsWith("+PONG"));
    });
    sock.on("error", () => done(false));
  });
}

/** Starts redis-server on a free port; resolves with { url, port, stop() }. */
export async function startRedis() {
  const bin = redisServerBinary();
  const port = await freePort();
  const child = spawn(
    bin,
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
    { stdio: "ignore" },
  );
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // gone
    }
  };
  process.on("exit", kill);
  const deadline = Date.now() + 10_000;
  while (!(await answersPing(port))) {
    if (Date.now() > deadline) {
      kill();
      throw new Error(`redis-server did not answer on port ${port}`);
    }
    await sleep(20);
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    stop: async () => {
      kill();
      await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once("exit", resolve)));
    },
  };
}

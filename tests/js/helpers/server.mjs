// Starts the release-built Cinder binary as a child process for the interop tests.
//
// The binary comes from $CINDER_BIN (resolved against the current directory), or
// ../../target/release/cinder relative to tests/js. Each server gets an OS-assigned
// free port on 127.0.0.1 and the suite's config file (written to a temp directory).

import { spawn } from "node:child_process";
import { accessSync, constants as fsConstants, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

/** tests/js */
export const JS_ROOT = path.resolve(here, "..");

/** The config every test file runs with. */
export const SUITE_CONFIG = `[server]
shards = 2
[socket]
idle_timeout_ms = 60000
[[channel]]
pattern = "room:forbidden"
join = "deny"
[[channel]]
pattern = "room:*"
join = "public"
client_events = "broadcast"
[[channel]]
pattern = "from:*"
join = "public"
client_events = "broadcast_from"
[[channel]]
pattern = "quiet:*"
join = "public"
client_events = "deny"
`;

const READY_TIMEOUT_MS = 15_000;
const STOP_KILL_AFTER_MS = 10_000;
const START_ATTEMPTS = 5;
const LOG_LINES_KEPT = 400;

/** Absolute path of the server binary under test. */
export function binaryPath() {
  const fromEnv = process.env.CINDER_BIN;
  if (fromEnv && fromEnv.trim() !== "") {
    return path.resolve(fromEnv.trim());
  }
  return path.resolve(JS_ROOT, "../../target/release/cinder");
}

function assertBinary(bin) {
  let st;
  try {
    st = statSync(bin);
  } catch {
    throw new Error(
      `server binary not found at ${bin} ` +
        "(build it with `cargo build --release` in the repository root, or set CINDER_BIN to its path)",
    );
  }
  if (!st.isFile()) {
    throw new Error(`server binary not found at ${bin} (path exists but is not a file)`);
  }
  try {
    accessSync(bin, fsConstants.X_OK);
  } catch {
    throw new Error(`server binary at ${bin} is not executable`);
  }
}

// ---------------------------------------------------------------------------
// Child-process bookkeeping: every child we start is killed when this process
// goes away, whatever the reason.

const liveChildren = new Set();

function killAllChildrenSync() {
  for (const child of liveChildren) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
  liveChildren.clear();
}

process.on("exit", killAllChildrenSync);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(sig, () => {
    killAllChildrenSync();
    process.exit(128 + (os.constants.signals[sig] ?? 1));
  });
}

// ---------------------------------------------------------------------------

/** Asks the OS for a free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen({ host: "127.0.0.1", port: 0, exclusive: true }, () => {
      const { port } = srv.address();
      srv.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function tcpAccepts(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    const done = (ok) => {
      sock.removeAllListeners();
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

async function healthzOk(port) {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(1000) });
    await res.text();
    return res.status === 200;
  } catch {
    return false;
  }
}

class CinderServer {
  constructor(bin, configPath, tmpDir, extraArgs) {
    this.bin = bin;
    this.configPath = configPath;
    this.tmpDir = tmpDir;
    this.extraArgs = extraArgs;
    this.port = null;
    this.child = null;
    this.exitInfo = null;
    this.logLines = [];
    this.starts = 0;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Base URL for `new Socket(...)` (the client appends `/websocket`). */
  get socketUrl() {
    return `ws://127.0.0.1:${this.port}/socket`;
  }

  /** Full WebSocket endpoint for raw `ws` connections (append a query string). */
  get websocketUrl() {
    return `ws://127.0.0.1:${this.port}/socket/websocket`;
  }

  /** Last lines of the server's stdout/stderr, for failure messages. */
  logs(n = 60) {
    return this.logLines.slice(-n).join("\n");
  }

  _log(prefix, chunk) {
    const text = chunk.toString();
    for (const line of text.split("\n")) {
      if (line === "") continue;
      this.logLines.push(`${prefix}${line}`);
      if (process.env.CINDER_TEST_LOG) process.stderr.write(`[cinder:${this.port}] ${line}\n`);
    }
    if (this.logLines.length > LOG_LINES_KEPT) this.logLines.splice(0, this.logLines.length - LOG_LINES_KEPT);
  }

  /** Spawns on `port` and waits until /healthz answers 200. Rejects if the child exits first. */
  async _spawnOn(port) {
    this.port = port;
    this.exitInfo = null;
    this.starts += 1;
    const args = [
      "serve",
      "--bind",
      `127.0.0.1:${port}`,
      "--shards",
      "2",
      "--config",
      this.configPath,
      ...this.extraArgs,
    ];
    this._log("# ", `spawn ${this.bin} ${args.join(" ")}`);
    const child = spawn(this.bin, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env } });
    this.child = child;
    liveChildren.add(child);
    child.stdout.on("data", (c) => this._log("", c));
    child.stderr.on("data", (c) => this._log("", c));
    const exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        liveChildren.delete(child);
        this.exitInfo = { code, signal };
        this._log("# ", `exit code=${code} signal=${signal}`);
        resolve(this.exitInfo);
      });
      child.once("error", (err) => {
        liveChildren.delete(child);
        this.exitInfo = { code: null, signal: null, error: err };
        this._log("# ", `spawn error: ${err.message}`);
        resolve(this.exitInfo);
      });
    });
    child.exitedPromise = exited;

    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (this.exitInfo) {
        const e = this.exitInfo;
        throw new Error(
          `cinder exited during startup on port ${port} (code=${e.code} signal=${e.signal}` +
            `${e.error ? ` error=${e.error.message}` : ""})\n--- server log ---\n${this.logs()}`,
        );
      }
      if ((await tcpAccepts(port)) && (await healthzOk(port))) {
        if (this.exitInfo) continue; // someone else answered and our child died: report above
        return;
      }
      await sleep(50);
    }
    await this._terminate(child);
    throw new Error(
      `cinder did not answer GET /healthz with 200 on port ${port} within ${READY_TIMEOUT_MS} ms\n` +
        `--- server log ---\n${this.logs()}`,
    );
  }

  async start() {
    let lastErr;
    for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
      const port = await freePort();
      try {
        await this._spawnOn(port);
        return this;
      } catch (err) {
        lastErr = err;
      }
    }
    throw lastErr;
  }

  async _terminate(child) {
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      return child?.exitedPromise ? child.exitedPromise : { code: child?.exitCode, signal: child?.signalCode };
    }
    try {
      child.kill("SIGTERM");
    } catch {
      // gone
    }
    let killTimer;
    const killed = new Promise((resolve) => {
      killTimer = setTimeout(() => {
        this._log("# ", `no exit ${STOP_KILL_AFTER_MS} ms after SIGTERM: SIGKILL`);
        try {
          child.kill("SIGKILL");
        } catch {
          // gone
        }
        resolve();
      }, STOP_KILL_AFTER_MS);
    });
    const info = await Promise.race([child.exitedPromise, killed.then(() => child.exitedPromise)]);
    clearTimeout(killTimer);
    return info;
  }

  /** SIGTERM, wait for exit (SIGKILL after 10 s). Resolves with {code, signal, killed}. */
  async stop() {
    const child = this.child;
    if (!child) return this.exitInfo;
    const started = Date.now();
    const info = await this._terminate(child);
    return { ...info, killed: info?.signal === "SIGKILL", ms: Date.now() - started };
  }

  /** Stops the server and starts it again on the same port. Resolves with the stop result. */
  async restart() {
    const stopped = await this.stop();
    let lastErr;
    for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
      try {
        await this._spawnOn(this.port);
        return stopped;
      } catch (err) {
        lastErr = err;
        await sleep(200);
      }
    }
    throw lastErr;
  }

  /** Stops the server and removes its temp directory. */
  async dispose() {
    const info = await this.stop();
    try {
      rmSync(this.tmpDir, { recursive: true, force: true });
    } catch {
      // ignore
    }
    return info;
  }
}

/**
 * Starts a server with the suite's config (or `config` text). Throws a clear error when
 * the binary is missing, without waiting.
 */
export async function startServer({ config = SUITE_CONFIG, extraArgs = [] } = {}) {
  const bin = binaryPath();
  assertBinary(bin);
  const tmpDir = mkdtempSync(path.join(os.tmpdir(), "cinder-js-"));
  const configPath = path.join(tmpDir, "cinder.toml");
  writeFileSync(configPath, config);
  const server = new CinderServer(bin, configPath, tmpDir, extraArgs);
  try {
    await server.start();
  } catch (err) {
    await server.dispose();
    throw err;
  }
  return server;
}

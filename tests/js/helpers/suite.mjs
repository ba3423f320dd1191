// Per-file fixture: one Cinder server for the file, clients cleaned up after every test.

import { after, afterEach, before } from "node:test";
import { cleanupClients } from "./client.mjs";
import { startServer } from "./server.mjs";

/**
 * Registers before/after hooks and returns a context whose `.server` is the running
 * server once the `before` hook has completed.
 */
export function useServer(options = {}) {
  const ctx = { server: null };
  before(async () => {
    ctx.server = await startServer(options);
  });
  afterEach(async () => {
    await cleanupClients();
  });
  after(async () => {
    await cleanupClients();
    if (ctx.server) await ctx.server.dispose();
  });
  return ctx;
}

/** Default per-test timeout (ms): a failure never hangs the suite. */
export const T = { timeout: 20_000 };

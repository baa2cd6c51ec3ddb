/**
 * Test harness: real router binaries on local ports, HS256 tokens, and bounded waits on
 * client events (never a fixed sleep standing in for an event).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { type AddressInfo, connect, createServer, type Server } from "node:net";
import path from "node:path";
import { createInterface } from "node:readline";
import { after } from "node:test";
import { fileURLToPath } from "node:url";

import { type ClientEvents, type ClientOptions, PresenceClient } from "../dist/index.js";

/** The `--jwt-secret` of every router the tests start. */
export const SECRET = "js-client-tests-secret-at-least-32-bytes";
/** How long any one expected event may take before the test fails. */
export const WAIT_MS = 15_000;

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
/** The router binary (`cargo build --bins`), or `PRESENCE_ROUTER_BIN`. */
export const ROUTER_BIN = process.env.PRESENCE_ROUTER_BIN ?? path.join(REPO, "target/debug/presence-router");

const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** A router process on 127.0.0.1 with the memory engine; killed when the test file ends. */
export class Router {
  private constructor(
    private child: ChildProcess,
    readonly port: number,
    private readonly args: string[],
  ) {}

  /** Starts a router on `port` (0: any free one) and waits for its listen line. */
  static async start(args: string[] = [], port = 0): Promise<Router> {
    const child = spawn(
      ROUTER_BIN,
      ["--host", "127.0.0.1", "--port", String(port), "--jwt-secret", SECRET, ...args],
      { env: { ...process.env, RUST_LOG: "warn" }, stdio: ["ignore", "pipe", "inherit"] },
    );
    running.add(child);
    child.on("exit", () => running.delete(child));
    const bound = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no listen line from ${ROUTER_BIN} within ${WAIT_MS} ms`)), WAIT_MS);
      child.on("error", (error) => reject(new Error(`cannot start ${ROUTER_BIN} (cargo build --bins): ${error.message}`)));
      child.on("exit", (code) => reject(new Error(`the router exited (${code}) before listening`)));
      createInterface({ input: child.stdout! }).on("line", (line) => {
        const match = /^listening on .*:(\d+)$/.exec(line);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
    });
    const router = new Router(child, bound, args);
    after(() => router.kill());
    return router;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Sends `signal` and waits for the process to exit. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill(signal);
    await bounded(exited, `the router to exit on ${signal}`);
  }

  /** Starts the router again on the same port (after `kill`). */
  async restart(): Promise<Router> {
    return Router.start(this.args, this.port);
  }
}

export type Role = "mobile" | "web" | "dashboard" | "service";

/** An HS256 JWT for `sub`, valid for `ttlSeconds` (negative: expired that long ago). */
export function mint(
  sub: string,
  role: Role,
  { groups, ttlSeconds = 3600, secret = SECRET }: { groups?: string[]; ttlSeconds?: number; secret?: string } = {},
): string {
  const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const claims = { sub, role, exp: Math.floor(Date.now() / 1000) + ttlSeconds, ...(groups ? { groups } : {}) };
  const unsigned = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/** `promise`, or a failure naming `what` after {@link WAIT_MS}. */
export function bounded<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The arguments of the next `event` of `client` for which `accept` holds. */
export function next<E extends keyof ClientEvents>(
  client: PresenceClient,
  event: E,
  accept: (...args: Parameters<ClientEvents[E]>) => boolean = () => true,
): Promise<Parameters<ClientEvents[E]>> {
  let off: () => void = () => {};
  const seen = new Promise<Parameters<ClientEvents[E]>>((resolve) => {
    off = client.on(event, ((...args: Parameters<ClientEvents[E]>) => {
      if (accept(...args)) {
        off();
        resolve(args);
      }
    }) as ClientEvents[E]);
  });
  return bounded(seen, `${String(event)} on ${client.userId}`).finally(off);
}

/**
 * Resolves once `condition` holds: checked now and after each event that changes what the
 * client holds (snapshot, presence, indicator).
 */
export function until(client: PresenceClient, condition: () => boolean, what: string): Promise<void> {
  const offs: (() => void)[] = [];
  const held = new Promise<void>((resolve) => {
    const check = () => condition() && resolve();
    for (const event of ["snapshot", "presence", "indicator"] as const) offs.push(client.on(event, check));
    check();
  });
  return bounded(held, what).finally(() => offs.forEach((off) => off()));
}

/** Options that keep the tests fast: reconnect delays of 50 ms doubling up to 400 ms. */
export const FAST = { reconnect: { initialDelayMs: 50, maxDelayMs: 400 } } satisfies Partial<ClientOptions>;

/** A client that is closed when the test file ends. */
export function client(options: ClientOptions): PresenceClient {
  const created = new PresenceClient({ ...FAST, ...options });
  after(() => created.close());
  return created;
}

/** A connected mobile client of `user` in `groups`. */
export async function mobile(router: Router, user: string, groups: string[], options: Partial<ClientOptions> = {}) {
  const created = client({ url: router.url, token: mint(user, "mobile", { groups }), deviceId: `${user}-phone`, ...options });
  await bounded(created.connect(), `${user} to connect`);
  return created;
}

/** A connected dashboard client (scoped to `groups` when given) with its snapshot read. */
export async function dashboard(router: Router, user: string, groups?: string[], options: Partial<ClientOptions> = {}) {
  const created = client({ url: router.url, token: mint(user, "dashboard", { groups }), ...options });
  const snapshot = next(created, "snapshot");
  await bounded(created.connect(), `${user} to connect`);
  await snapshot;
  return created;
}

/** A GET of the router's HTTP API with a service token; the JSON answer. */
async function api<T>(router: Router, path: string): Promise<T> {
  const response = await fetch(`${router.http}${path}`, {
    headers: { authorization: `Bearer ${mint("probe", "service")}` },
  });
  return (await response.json()) as T;
}

/** The router's HTTP answer for one user. */
export async function presenceOf(router: Router, user: string): Promise<{ status: string; deviceId: string | null }> {
  return (await api<{ user: { status: string; deviceId: string | null } }>(router, `/api/users/${user}/presence`)).user;
}

/** The router's HTTP answer for one group (who is typing, recording, talking there). */
export function groupPresence(router: Router, group: string) {
  return api<{ typingUsers: string[]; recordingUsers: string[]; talkingUsers: string[] }>(router, `/api/groups/${group}/presence`);
}

/**
 * A TCP relay in front of a router that can go silent like a NAT that dropped a flow:
 * after {@link blackhole}, the connections through it stay open but carry nothing either
 * way; connections made later are relayed normally.
 */
export class SilentLink {
  private readonly server: Server;
  private live = new Set<{ silent: boolean }>();

  private constructor(server: Server) {
    this.server = server;
  }

  static async start(router: Router): Promise<SilentLink> {
    const server = createServer();
    const link = new SilentLink(server);
    server.on("connection", (client) => {
      const state = { silent: false };
      link.live.add(state);
      const upstream = connect(router.port, "127.0.0.1");
      client.on("data", (data) => state.silent || upstream.write(data));
      upstream.on("data", (data) => state.silent || client.write(data));
      const end = () => {
        link.live.delete(state);
        client.destroy();
        upstream.destroy();
      };
      client.on("close", end).on("error", end);
      upstream.on("close", end).on("error", end);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    after(() => link.close());
    return link;
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.server.address() as AddressInfo).port}/ws`;
  }

  /** Silences every connection open now. */
  blackhole(): void {
    for (const state of this.live) state.silent = true;
  }

  close(): void {
    this.server.close();
  }
}

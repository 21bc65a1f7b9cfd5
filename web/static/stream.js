// The live stream from the gateway: a WebSocket, or Server-Sent Events when a WebSocket
// cannot be opened at all. Owns reconnecting (close-code table, back-off with jitter,
// resume with ?since=) and the connection state; never renders anything itself.

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 8000;
const PING_EVERY_MS = 20000; // a browser cannot see WebSocket ping frames: ask for a pong
const PONG_WAIT_MS = 10000;
const SSE_SILENCE_MS = 75000; // the gateway sends a comment line at least every 25 s

// README "close code" table: what each code means for reconnecting.
export const CLOSE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  POLICY: 1008,
  TOO_BIG: 1009,
  SHUTTING_DOWN: 1012,
  TRY_AGAIN: 1013,
  UNAUTHORIZED: 4001,
  TOO_MANY_CONNECTIONS: 4002,
  SLOW_CONSUMER: 4008,
  RESUME: 4010,
  RATE_LIMITED: 4029,
};

const jitter = (low, high) => low + Math.random() * (high - low);

// What to do after a connection ended: {retry: false, reason} or {retry: true, delay}.
// `delay` null means "the usual exponential back-off".
function decide(info) {
  if (info.status) {
    // SSE refusals are HTTP errors in the API's shape.
    if (info.status === 401) return { unauthorized: true };
    if (info.status === 403) return { retry: false };
    if (info.status === 429) return { retry: true, delay: jitter(2000, 5000) };
    return { retry: true, delay: null };
  }
  switch (info.code) {
    case CLOSE.UNAUTHORIZED:
      return { unauthorized: true };
    case CLOSE.NORMAL:
    case CLOSE.GOING_AWAY:
    case CLOSE.POLICY:
    case CLOSE.TOO_BIG:
      return { retry: false };
    case CLOSE.SHUTTING_DOWN:
    case CLOSE.SLOW_CONSUMER:
    case CLOSE.RESUME:
      return { retry: true, delay: jitter(0, 300) }; // at once, with since
    case CLOSE.TRY_AGAIN:
      return { retry: true, delay: jitter(2000, 5000) };
    case CLOSE.TOO_MANY_CONNECTIONS:
      return { retry: true, delay: jitter(10000, 20000) };
    case CLOSE.RATE_LIMITED:
      return { retry: true, delay: jitter(2000, 5000) };
    default:
      return { retry: true, delay: null }; // 1006 and friends: the network or the node died
  }
}

class WsConnection {
  constructor(owner, url) {
    this.kind = "websocket";
    this.owner = owner;
    this.opened = false;
    this.done = false;
    try {
      this.ws = new WebSocket(url);
    } catch (error) {
      queueMicrotask(() => this.finish({ code: 0, reason: String(error.message || error) }));
      return;
    }
    this.ws.onopen = () => {
      this.opened = true;
      this.schedulePing();
      owner.opened(this);
    };
    this.ws.onmessage = (event) => {
      clearTimeout(this.pongTimer);
      owner.message(this, event.data);
    };
    this.ws.onclose = (event) => this.finish({ code: event.code, reason: event.reason });
    this.ws.onerror = () => {}; // a close event always follows
  }

  schedulePing() {
    this.pingTimer = setTimeout(() => {
      if (this.done) return;
      try {
        this.ws.send('{"type":"ping"}');
      } catch {
        return this.finish({ code: 1006, reason: "send failed" });
      }
      this.pongTimer = setTimeout(() => this.finish({ code: 1006, reason: "no pong" }), PONG_WAIT_MS);
      this.schedulePing();
    }, PING_EVERY_MS);
  }

  finish(info) {
    if (this.done) return;
    this.close();
    this.owner.closed(this, { ...info, opened: this.opened });
  }

  close() {
    this.done = true;
    clearTimeout(this.pingTimer);
    clearTimeout(this.pongTimer);
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      try {
        this.ws.close(1000);
      } catch {
        /* already closed */
      }
    }
  }
}

// SSE over fetch() rather than EventSource: it lets us read the HTTP status and the
// error body of a refusal (EventSource hides both) and resume with our own ?since=.
class SseConnection {
  constructor(owner, url) {
    this.kind = "sse";
    this.owner = owner;
    this.opened = false;
    this.done = false;
    this.abort = new AbortController();
    this.run(url);
  }

  async run(url) {
    let resp;
    try {
      resp = await fetch(url, {
        signal: this.abort.signal,
        cache: "no-store",
        headers: { Accept: "text/event-stream" },
      });
    } catch (error) {
      return this.finish({ code: 1006, reason: String(error.message || error) });
    }
    if (!resp.ok) {
      let error = null;
      try {
        error = (await resp.json()).error;
      } catch {
        error = null;
      }
      return this.finish({
        status: resp.status,
        code: error && error.code,
        reason: (error && error.message) || `HTTP ${resp.status}`,
      });
    }
    this.opened = true;
    this.watch();
    this.owner.opened(this);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.done) break;
        this.watch();
        buffer += value.replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0 && !this.done) {
          this.block(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      return this.finish({ code: 1006, reason: String(error.message || error) });
    }
    this.finish({ code: 1006, reason: "the stream ended" });
  }

  block(text) {
    let event = "message";
    const data = [];
    for (const line of text.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (name === "data") data.push(value);
      else if (name === "event") event = value;
    }
    if (!data.length) return;
    const payload = data.join("\n");
    if (event === "close") {
      // The gateway's close code travels as a last event before the stream ends.
      let info = { code: 1006, reason: "" };
      try {
        info = JSON.parse(payload);
      } catch {
        /* keep the default */
      }
      this.finish({ code: info.code, reason: info.reason });
      return;
    }
    this.owner.message(this, payload);
  }

  watch() {
    clearTimeout(this.silence);
    this.silence = setTimeout(() => this.finish({ code: 1006, reason: "silent" }), SSE_SILENCE_MS);
  }

  finish(info) {
    if (this.done) return;
    this.close();
    this.owner.closed(this, { ...info, opened: this.opened });
  }

  close() {
    this.done = true;
    clearTimeout(this.silence);
    this.abort.abort();
  }
}

export class LiveStream {
  // options: {url, token, since(): id|null, onEvent(event), onState(state, detail),
  //           onOpen({since, transport}), onUnauthorized(message)}
  constructor(options) {
    this.options = options;
    this.conn = null;
    this.timer = null;
    this.attempt = 0;
    this.stopped = true;
    this.preferSse = false; // set once a WebSocket failed to open but SSE worked
    this.wsWorked = false;
    this.state = "offline";
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => this.goOffline("No network connection.");
  }

  start() {
    this.stopped = false;
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    if (navigator.onLine === false) return this.goOffline("No network connection.");
    this.setState("connecting", "");
    this.connect(this.preferSse);
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    clearTimeout(this.timer);
    this.drop();
    this.setState("offline", "");
  }

  reconnectNow() {
    if (this.stopped || (this.state === "live" && this.conn)) return;
    clearTimeout(this.timer);
    this.attempt = 0;
    if (this.state !== "live") this.setState("reconnecting", "Connecting…");
    this.connect(this.preferSse);
  }

  goOffline(detail) {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.drop();
    this.setState("offline", detail);
  }

  url(kind) {
    const base = this.options.url.replace(/\/+$/, "");
    const params = new URLSearchParams({ access_token: this.options.token });
    const since = this.options.since();
    if (since) params.set("since", since);
    if (kind === "sse") return `${base}/v1/stream/sse?${params}`;
    return `${base.replace(/^http/, "ws")}/v1/stream?${params}`;
  }

  connect(sse, fallback = false) {
    this.drop();
    clearTimeout(this.timer);
    const Kind = sse ? SseConnection : WsConnection;
    const since = this.options.since();
    this.conn = new Kind(this, this.url(sse ? "sse" : "websocket"));
    this.conn.since = since;
    this.conn.fallback = fallback;
  }

  drop() {
    if (this.conn) this.conn.close();
    this.conn = null;
  }

  opened(conn) {
    if (conn !== this.conn) return;
    this.attempt = 0;
    if (conn.kind === "websocket") this.wsWorked = true;
    if (conn.fallback) this.preferSse = true; // WebSocket is blocked here: stay on SSE
    this.setState("live", conn.kind === "sse" ? "SSE" : "WebSocket", conn.kind);
    this.options.onOpen({ since: conn.since, transport: conn.kind });
  }

  message(conn, text) {
    if (conn !== this.conn) return;
    let event;
    try {
      event = JSON.parse(text);
    } catch {
      return;
    }
    if (!event || event.type === "pong") return;
    if (event.type === "reconnect") {
      this.setState("reconnecting", "The server is restarting…");
      return;
    }
    this.options.onEvent(event);
  }

  closed(conn, info) {
    if (conn !== this.conn) return;
    this.conn = null;
    if (this.stopped) return;
    if (navigator.onLine === false) return this.goOffline("No network connection.");
    const noAnswer = !info.opened && (!info.code || info.code === 1006);
    if (conn.kind === "websocket" && noAnswer && !this.wsWorked && !this.preferSse) {
      // The WebSocket never opened (blocked by the browser or a proxy, or the gateway is
      // down) and no close code came from the gateway: try Server-Sent Events first.
      return this.connect(true, true);
    }
    const plan = decide(info);
    if (plan.unauthorized) {
      this.stopped = true;
      this.setState("offline", "Your session has expired; sign in again.");
      this.options.onUnauthorized(info.reason || "Your session has expired; sign in again.");
      return;
    }
    if (!plan.retry) {
      this.setState("offline", `Disconnected (${info.reason || info.code || info.status}).`);
      return;
    }
    let delay = plan.delay;
    if (delay === null || delay === undefined) {
      const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
      delay = jitter(ceiling / 2, ceiling);
      this.attempt += 1;
    }
    this.setState("reconnecting", `Reconnecting in ${Math.ceil(delay / 1000)} s…`);
    this.timer = setTimeout(() => this.connect(this.preferSse), delay);
  }

  setState(state, detail, transport = "") {
    this.state = state;
    this.options.onState(state, detail, transport);
  }
}

// The HTTP API as the client sees it: JSON in, JSON out, every failure an ApiError
// carrying the server's own `error.message`. Knows nothing about the page.

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

const TOKEN_KEY = "feed.session";

export const session = {
  load() {
    try {
      const saved = JSON.parse(localStorage.getItem(TOKEN_KEY) || "null");
      return saved && saved.token && saved.user_id ? saved : null;
    } catch {
      return null;
    }
  },
  save(value) {
    localStorage.setItem(TOKEN_KEY, JSON.stringify(value));
  },
  clear() {
    localStorage.removeItem(TOKEN_KEY);
  },
};

export async function request(method, path, { body, token, query } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.set(key, value);
    }
    const text = params.toString();
    if (text) url += "?" + text;
  }
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = "Bearer " + token;
  let resp;
  try {
    resp = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached; check your connection.");
  }
  if (resp.status === 204) return null;
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const error = data && data.error;
    if (error && error.message) {
      throw new ApiError(resp.status, error.code, error.message, error.field);
    }
    throw new ApiError(resp.status, "http_" + resp.status, `The server answered ${resp.status}.`);
  }
  return data;
}

// One small client per signed-in user: every call carries the token.
export function client(token) {
  const call = (method, path, options = {}) => request(method, path, { ...options, token });
  const enc = encodeURIComponent;
  return {
    // The chronological feed is the server's default: asked for without `algorithm`, so
    // its request stays on the server's fast path (server/http/feed_head.py).
    feed: (cursor, algorithm) =>
      call("GET", "/v1/feed", {
        query: { cursor, limit: 20, algorithm: algorithm === "ranked" ? "ranked" : undefined },
      }),
    post: (id) => call("GET", `/v1/posts/${enc(id)}`),
    createPost: (text, idempotencyKey, mediaIds = []) =>
      call("POST", "/v1/posts", {
        body: mediaIds.length
          ? { text, idempotency_key: idempotencyKey, media_ids: mediaIds }
          : { text, idempotency_key: idempotencyKey },
      }),
    createMedia: (contentType, size) =>
      call("POST", "/v1/media", { body: { content_type: contentType, size } }),
    media: (id) => call("GET", `/v1/media/${enc(id)}`),
    setAltText: (id, altText) =>
      call("PATCH", `/v1/media/${enc(id)}`, { body: { alt_text: altText } }),
    deletePost: (id) => call("DELETE", `/v1/posts/${enc(id)}`),
    like: (id) => call("POST", `/v1/posts/${enc(id)}/like`),
    unlike: (id) => call("DELETE", `/v1/posts/${enc(id)}/like`),
    profile: (handle) => call("GET", `/v1/users/${enc(handle)}`),
    profilePosts: (handle, cursor) =>
      call("GET", `/v1/users/${enc(handle)}/posts`, { query: { cursor } }),
    follow: (userId) => call("POST", `/v1/users/${enc(userId)}/follow`),
    unfollow: (userId) => call("DELETE", `/v1/users/${enc(userId)}/follow`),
    search: (q, cursor) => call("GET", "/v1/search", { query: { q, cursor } }),
    notifications: (cursor) => call("GET", "/v1/notifications", { query: { cursor } }),
    vapidKey: () => call("GET", "/v1/push/vapid-public-key"),
    addDevice: (body) => call("POST", "/v1/devices", { body }),
    deleteDevice: (id) => call("DELETE", `/v1/devices/${enc(id)}`),
  };
}

export const signUp = (handle, password, displayName) =>
  request("POST", "/v1/users", {
    body: displayName ? { handle, password, display_name: displayName } : { handle, password },
  });

export const signIn = (handle, password) =>
  request("POST", "/v1/sessions", { body: { handle, password } });

export const clientConfig = () => request("GET", "/client-config.json");

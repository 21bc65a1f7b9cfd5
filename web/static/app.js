// The web client: session, views (home, profile, notifications, search) routed by the
// URL hash, and the glue between the API, the live stream and the lists in the page.

import { ApiError, client, clientConfig, session, signIn, signUp } from "./api.js";
import { Attachments, MAX_ATTACHMENTS, bindViewer } from "./media.js";
import { NotificationList, PostList, newerThan, notificationText } from "./posts.js";
import { enablePush, forgetDevice } from "./push.js";
import { LiveStream } from "./stream.js";
import { POST_MAX_CHARS, checkPost, validHandle } from "./text.js";

const $ = (id) => document.getElementById(id);
const LIKES_KEY = "feed.likes.";
const MAX_REMEMBERED_LIKES = 2000;
const ALGORITHM_KEY = "feed.algorithm."; // + user id: the tab this person last chose

const app = {
  me: null, // {user_id, handle, token}
  api: null,
  stream: null,
  streamUrl: null,
  since: null, // newest post id the feed or the stream gave us: where a resume starts
  algorithm: "chronological", // the home feed's tab: "ranked" (For you) or "chronological"
  likes: new Set(),
  view: null,
  unread: 0,
};

// -- small helpers ------------------------------------------------------------------

function show(el, visible) {
  el.hidden = !visible;
}

function flash(message) {
  const box = $("flash");
  box.textContent = message;
  show(box, Boolean(message));
}

let announceTimer = null;
let pendingPosts = []; // handles of authors of live posts not announced yet
let pendingOther = [];
// Live updates are announced to screen readers; a burst becomes one short sentence.
function announce(message, postAuthor = null) {
  if (postAuthor) pendingPosts.push(postAuthor);
  else pendingOther.push(message);
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => {
    const parts = [];
    if (pendingPosts.length === 1) parts.push(`New post from @${pendingPosts[0]}`);
    else if (pendingPosts.length > 1) {
      const who = [...new Set(pendingPosts)];
      const names = who.slice(0, 3).map((h) => "@" + h).join(", ");
      const more = who.length > 3 ? ` and ${who.length - 3} more` : "";
      parts.push(`${pendingPosts.length} new posts from ${names}${more}`);
    }
    parts.push(...pendingOther.slice(0, 3));
    if (pendingOther.length > 3) parts.push(`${pendingOther.length - 3} more updates`);
    $("announcer").textContent = parts.join(". ");
    pendingPosts = [];
    pendingOther = [];
  }, 300);
}

function errorText(error) {
  return error instanceof Error ? error.message : String(error);
}

// Runs an API call for a piece of UI: its error goes to `target` (or the banner); an
// expired session signs out.
async function guarded(target, work) {
  try {
    if (target) target.textContent = "";
    return await work();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401 && app.me) {
      signOut(error.message);
      return undefined;
    }
    if (target) target.textContent = errorText(error);
    else flash(errorText(error));
    return undefined;
  }
}

function idempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

// -- likes this browser made (the API's post has no "liked by me") ----------------

function loadLikes() {
  try {
    app.likes = new Set(JSON.parse(localStorage.getItem(LIKES_KEY + app.me.user_id) || "[]"));
  } catch {
    app.likes = new Set();
  }
}

function saveLikes() {
  const ids = [...app.likes].slice(-MAX_REMEMBERED_LIKES);
  localStorage.setItem(LIKES_KEY + app.me.user_id, JSON.stringify(ids));
}

// -- lists ------------------------------------------------------------------------

const listOptions = {
  liked: (id) => app.likes.has(id),
  mine: (post) => Boolean(app.me) && post.author.id === app.me.user_id,
};
const feed = new PostList($("feed"), listOptions);
const profilePosts = new PostList($("profile-list"), listOptions);
const searchPosts = new PostList($("search-list"), listOptions);
const lists = [feed, profilePosts, searchPosts];
const notes = new NotificationList($("notes"));

function everyList(fn) {
  for (const list of lists) fn(list);
}

// A paged list: cursor, has_more, one request at a time, stale pages ignored.
class Pager {
  constructor(fetchPage, onPage, moreButton) {
    this.fetchPage = fetchPage;
    this.onPage = onPage;
    this.more = moreButton;
    this.reset();
  }

  reset() {
    this.cursor = null;
    this.hasMore = true;
    this.loading = false;
    this.generation = (this.generation || 0) + 1;
    show(this.more, false);
  }

  async load(target) {
    if (this.loading || !this.hasMore) return;
    const generation = this.generation;
    this.loading = true;
    const first = this.cursor === null;
    const page = await guarded(target, () => this.fetchPage(this.cursor));
    if (generation !== this.generation) return;
    this.loading = false;
    if (!page) return;
    this.cursor = page.next_cursor;
    this.hasMore = Boolean(page.has_more && page.next_cursor);
    show(this.more, this.hasMore);
    this.onPage(page, first);
  }
}

// -- home feed --------------------------------------------------------------------

function noteSince(id) {
  if (id && newerThan(id, app.since)) app.since = id;
}

// A ranked page keeps the server's order (each page after the last); a chronological one
// is ordered by id. A ranked first page is not newest first: its newest id is searched.
const feedPager = new Pager(
  (cursor) => app.api.feed(cursor, app.algorithm),
  (page, first) => {
    const ranked = app.algorithm === "ranked";
    for (const post of page.posts) feed.add(post, ranked ? "end" : "by-id");
    if (first) for (const post of page.posts) noteSince(post.id);
    if (first) showFallback(ranked && page.algorithm === "chronological");
    show($("feed-empty"), feed.size === 0);
    show($("feed-end"), !feedPager.hasMore && feed.size > 0);
    requestAnimationFrame(loadMoreIfNearEnd);
  },
  $("feed-more"),
);

// Infinite scroll: the next page loads as the end of the feed comes into view (also
// when a page was too short to push the end out of view).
function loadMoreIfNearEnd() {
  if (!app.me || app.view !== "home" || !feed.size || !feedPager.hasMore) return;
  if ($("feed-sentinel").getBoundingClientRect().top < window.innerHeight + 400) {
    feedPager.load(null);
  }
}

async function reloadFeed({ clear }) {
  if (clear) feed.clear();
  feedPager.reset();
  $("feed").setAttribute("aria-busy", "true");
  await feedPager.load(null);
  $("feed").setAttribute("aria-busy", "false");
}

let feedStale = false;

// A ranked request the server answered chronologically (no model, ranking too slow or
// failing): said quietly, the feed is still the feed.
function showFallback(fellBack) {
  const note = $("feed-note");
  note.textContent = fellBack
    ? "Showing the latest posts from people you follow: “For you” is not available right now."
    : "";
  show(note, fellBack);
}

function loadAlgorithm() {
  const saved = localStorage.getItem(ALGORITHM_KEY + app.me.user_id);
  app.algorithm = saved === "ranked" ? "ranked" : "chronological";
  renderTabs();
}

function renderTabs() {
  for (const tab of document.querySelectorAll("#home-view [role=tab]")) {
    const selected = tab.dataset.algorithm === app.algorithm;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1; // one tab stop; arrows move between the tabs
  }
}

async function chooseAlgorithm(algorithm) {
  if (!app.me || algorithm === app.algorithm) return;
  app.algorithm = algorithm;
  localStorage.setItem(ALGORITHM_KEY + app.me.user_id, algorithm);
  renderTabs();
  showFallback(false);
  await reloadFeed({ clear: true });
}

function onTabKey(event) {
  if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
  const tabs = [...document.querySelectorAll("#home-view [role=tab]")];
  const at = tabs.indexOf(event.target);
  const next = tabs[(at + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
  next.focus();
  chooseAlgorithm(next.dataset.algorithm);
}

// Where a post that was not on any page goes: by id in the chronological feed; at the top
// of a ranked one (what arrives live is the newest, whatever its rank would be).
function liveAdd(post) {
  return feed.add(post, app.algorithm === "ranked" ? "top" : "by-id");
}

// -- the live stream ----------------------------------------------------------------

const STATE_TEXT = { connecting: "Connecting", live: "Live", reconnecting: "Reconnecting", offline: "Offline" };

function onStreamState(state, detail, transport = "") {
  document.body.dataset.connection = state;
  $("conn-state").textContent = STATE_TEXT[state] || state;
  $("conn-detail").textContent = detail ? ` · ${detail}` : "";
  document.body.dataset.transport = transport;
  show($("reconnect"), state === "reconnecting" || (state === "offline" && Boolean(app.stream) && !app.stream.stopped));
}

function onStreamEvent(event) {
  if (event.type === "post" && event.data) {
    noteSince(event.id);
    if (liveAdd(event.data)) {
      show($("feed-empty"), false);
      announce("", event.data.author.handle);
    }
  } else if (event.type === "delete") {
    everyList((list) => list.remove(event.id));
  } else if (event.type === "notification" && event.data) {
    addNotification(event.data, true);
  } else if (event.type === "reset") {
    // Too far behind for a replay: start the feed again from its newest page.
    reloadFeed({ clear: true });
  }
}

function onStreamOpen({ since }) {
  flash("");
  // Without a post id to resume from, posts made before this connection are not
  // replayed: merge the newest page instead (duplicates are dropped by id).
  if (!since) reloadFeed({ clear: false });
}

function startStream() {
  if (!app.streamUrl) return;
  app.stream = new LiveStream({
    url: app.streamUrl,
    token: app.me.token,
    since: () => app.since,
    onEvent: onStreamEvent,
    onState: onStreamState,
    onOpen: onStreamOpen,
    onUnauthorized: (message) => signOut(message),
  });
  app.stream.start();
}

// -- notifications ------------------------------------------------------------------

const notesPager = new Pager(
  (cursor) => app.api.notifications(cursor),
  (page) => {
    for (const note of page.notifications) notes.add(note);
    show($("notes-empty"), notes.items.size === 0);
  },
  $("notes-more"),
);

function setUnread(count) {
  app.unread = count;
  $("unread-count").textContent = String(count);
  show($("unread"), count > 0);
}

function addNotification(note, live) {
  if (!notes.add(note)) return;
  show($("notes-empty"), false);
  if (!live) return;
  if (app.view !== "notifications") setUnread(app.unread + 1);
  announce(notificationText(note));
  if (note.post_id && ["like", "reply", "repost"].includes(note.kind)) refreshPost(note.post_id);
}

async function refreshPost(id) {
  if (!lists.some((list) => list.has(id))) return;
  const post = await guarded(null, () => app.api.post(id));
  if (post) everyList((list) => list.setCounts(id, post.counts));
}

// -- actions on posts ---------------------------------------------------------------

async function toggleLike(id, button) {
  const liked = app.likes.has(id);
  button.disabled = true;
  const result = await guarded(null, () => (liked ? app.api.unlike(id) : app.api.like(id)));
  button.disabled = false;
  if (!result) return;
  if (result.liked) app.likes.add(id);
  else app.likes.delete(id);
  saveLikes();
  everyList((list) => {
    list.setLiked(id, result.liked);
    list.setCounts(id, { likes: result.likes });
  });
}

async function deletePost(id) {
  if (!confirm("Delete this post?")) return;
  const done = await guarded(null, async () => {
    await app.api.deletePost(id);
    return true;
  });
  if (done) everyList((list) => list.remove(id));
}

let viewImage = null; // (url, alt): the dialog's opener, bound at start

function onListClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const id = button.closest("li[data-id]").dataset.id;
  if (button.dataset.action === "like") toggleLike(id, button);
  else if (button.dataset.action === "delete") deletePost(id);
  else if (button.dataset.action === "view-media") viewImage(button.dataset.full, button.dataset.alt);
}

// -- compose ------------------------------------------------------------------------

let composeKey = null; // the same key while the same text and images are retried

const attachments = new Attachments({
  list: $("attachments"),
  api: () => app.api,
  onChange: () => {
    composeKey = null;
    updateCounter();
  },
});

function attachFiles(files) {
  $("compose-error").textContent = attachments.add(files); // what was left out, and why
}

// Pasting an image (a screenshot, a copied picture) attaches it.
function onPaste(event) {
  const files = [...(event.clipboardData ? event.clipboardData.files : [])];
  if (files.length === 0) return;
  event.preventDefault();
  attachFiles(files);
}

// The post button waits for every image to be ready; a failed one must be removed.
function mediaProblem() {
  const media = attachments.state();
  if (media.failed) return "Remove the image that could not be attached.";
  if (media.pending) return media.pending === 1 ? "Waiting for the image…" : "Waiting for the images…";
  return "";
}

function updateCounter() {
  const raw = $("compose-text").value;
  const check = checkPost(raw);
  $("compose-count").textContent = String(check.count);
  const counter = $("compose-counter");
  counter.dataset.remaining = String(check.remaining);
  counter.classList.toggle("over", check.remaining < 0);
  counter.classList.toggle("near", check.remaining >= 0 && check.remaining <= 20);
  const media = attachments.state();
  const waiting = media.pending > 0 || media.failed > 0;
  const textProblem = raw.trim() === "" ? "" : check.problem;
  const problem = $("compose-problem");
  problem.textContent = textProblem || mediaProblem();
  problem.classList.toggle("waiting", !textProblem && !media.failed && media.pending > 0);
  $("compose-submit").disabled = !check.ok || waiting;
  $("attach").disabled = media.count >= MAX_ATTACHMENTS;
  return { ...check, ok: check.ok && !waiting };
}

async function submitPost(event) {
  event.preventDefault();
  const check = updateCounter();
  if (!check.ok) {
    $("compose-problem").textContent = check.problem || mediaProblem();
    return;
  }
  composeKey = composeKey || idempotencyKey();
  $("compose-submit").disabled = true;
  const created = await guarded($("compose-error"), async () => {
    await attachments.saveAltTexts();
    return app.api.createPost(check.text, composeKey, attachments.ids());
  });
  if (!created) {
    updateCounter();
    return;
  }
  $("compose-text").value = "";
  attachments.clear();
  composeKey = null;
  updateCounter();
  announce("Posted.");
  // The author's own post is not streamed back to them: read it and show it now.
  const post = await guarded(null, () => app.api.post(created.post_id));
  if (post && liveAdd(post)) show($("feed-empty"), false);
}

// -- profile --------------------------------------------------------------------------

let profile = null;
const profilePager = new Pager(
  (cursor) => app.api.profilePosts(profile.handle, cursor),
  (page) => {
    for (const post of page.posts) profilePosts.add(post);
  },
  $("profile-more"),
);

function renderProfile(p) {
  profile = p;
  $("profile-name").textContent = p.display_name || p.handle;
  $("profile-handle").textContent = "@" + p.handle;
  $("profile-posts").textContent = String(p.counts.posts);
  $("profile-followers").textContent = String(p.counts.followers);
  $("profile-following").textContent = String(p.counts.following);
  const button = $("follow");
  show(button, p.id !== app.me.user_id);
  button.textContent = p.followed_by_me ? `Unfollow @${p.handle}` : `Follow @${p.handle}`;
  button.classList.toggle("secondary", p.followed_by_me);
  button.dataset.following = String(p.followed_by_me);
}

async function showProfile(handle) {
  $("profile-name").textContent = "@" + handle;
  $("profile-handle").textContent = "";
  show($("follow"), false);
  profilePosts.clear();
  profilePager.reset();
  profile = null;
  const p = await guarded($("profile-error"), () => app.api.profile(handle));
  if (!p) return;
  renderProfile(p);
  await profilePager.load($("profile-error"));
}

async function toggleFollow() {
  if (!profile) return;
  const button = $("follow");
  button.disabled = true;
  const following = profile.followed_by_me;
  const result = await guarded($("profile-error"), () =>
    following ? app.api.unfollow(profile.id) : app.api.follow(profile.id),
  );
  button.disabled = false;
  if (!result) return;
  feedStale = true; // the follow backfills (or the unfollow purges) the home feed
  renderProfile({
    ...profile,
    followed_by_me: result.following,
    counts: { ...profile.counts, followers: result.followers },
  });
  announce(result.following ? `You follow @${profile.handle}` : `You unfollowed @${profile.handle}`);
}

// -- search ---------------------------------------------------------------------------

let searchQuery = "";
const searchPager = new Pager(
  (cursor) => app.api.search(searchQuery, cursor),
  (page) => {
    for (const post of page.posts) searchPosts.add(post);
    show($("search-empty"), searchPosts.size === 0);
  },
  $("search-more"),
);

function submitSearch(event) {
  event.preventDefault();
  const q = $("search-q").value.trim();
  if (!q) return;
  const handle = q.startsWith("@") ? q.slice(1) : null;
  if (handle !== null && validHandle(handle)) location.hash = `#/u/${encodeURIComponent(handle)}`;
  else location.hash = `#/search?q=${encodeURIComponent(q)}`;
}

async function runSearch(q) {
  $("search-q").value = q;
  searchQuery = q;
  searchPosts.clear();
  searchPager.reset();
  show($("search-empty"), false);
  if (q) await searchPager.load($("search-error"));
}

// -- routing ----------------------------------------------------------------------------

const VIEWS = ["auth", "home", "profile", "notifications", "search"];

function setView(name) {
  app.view = name;
  for (const view of VIEWS) show($(`${view}-view`), view === name);
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    const current =
      link.dataset.view === name &&
      (name !== "profile" || (profile && app.me && profile.id === app.me.user_id));
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function route() {
  if (!app.me) {
    setView("auth");
    return;
  }
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "u" && parts[1]) {
    setView("profile");
    await showProfile(parts[1]);
    setView("profile");
  } else if (parts[0] === "notifications") {
    setView("notifications");
    setUnread(0);
    if (notesPager.cursor === null && notesPager.hasMore) await notesPager.load(null);
  } else if (parts[0] === "search") {
    setView("search");
    await runSearch(new URLSearchParams(query).get("q") || "");
  } else {
    setView("home");
    if (feedStale) {
      feedStale = false;
      await reloadFeed({ clear: true });
    }
  }
}

// -- session ----------------------------------------------------------------------------

async function enter(me) {
  app.me = me;
  app.api = client(me.token);
  app.since = null;
  loadLikes();
  loadAlgorithm();
  document.body.dataset.signedIn = "true";
  $("me-link").href = `#/u/${encodeURIComponent(me.handle)}`;
  $("me-link").textContent = "Profile";
  const first = reloadFeed({ clear: true });
  route();
  await first;
  if (app.me !== me) return; // signed out meanwhile (an expired token)
  startStream();
  if (!app.streamUrl) onStreamState("offline", "live updates are not configured");
}

function signOut(message) {
  const { api, me } = app;
  if (app.stream) app.stream.stop();
  app.stream = null;
  app.me = null;
  app.api = null;
  app.since = null;
  session.clear();
  if (api && me) forgetDevice(api, me.user_id).catch(() => {});
  for (const list of lists) list.clear();
  attachments.clear();
  showFallback(false);
  notes.items.clear();
  $("notes").replaceChildren();
  for (const pager of [feedPager, notesPager, profilePager, searchPager]) pager.reset();
  setUnread(0);
  document.body.dataset.signedIn = "false";
  onStreamState("offline", "");
  flash(typeof message === "string" ? message : "");
  setView("auth");
}

async function submitAuth(event, kind) {
  event.preventDefault();
  const form = event.target;
  const error = $(`${kind}-error`);
  const handle = form.elements.handle.value.trim();
  const password = form.elements.password.value;
  if (!validHandle(handle)) {
    error.textContent = "A handle is 1–15 letters (A–Z, a–z), digits or underscores.";
    form.elements.handle.focus();
    return;
  }
  if (kind === "sign-up" && password.length < 8) {
    error.textContent = "The password must be at least 8 characters.";
    form.elements.password.focus();
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  const result = await guarded(error, () =>
    kind === "sign-up"
      ? signUp(handle, password, form.elements.display_name.value.trim())
      : signIn(handle, password),
  );
  button.disabled = false;
  if (!result) return;
  const me = { user_id: result.user_id, handle: result.handle || handle, token: result.token };
  session.save(me);
  form.reset();
  flash("");
  if (!location.hash || location.hash === "#/") history.replaceState(null, "", "#/");
  await enter(me);
}

// -- push ---------------------------------------------------------------------------------

async function onEnablePush() {
  const status = $("push-status");
  const button = $("push-enable");
  button.disabled = true;
  status.textContent = "Setting up notifications…";
  status.classList.remove("error");
  try {
    status.textContent = await enablePush(app.api, app.me.user_id);
  } catch (error) {
    status.textContent = errorText(error);
    status.classList.add("error");
  } finally {
    button.disabled = false;
  }
}

function onWorkerMessage(event) {
  const data = event.data || {};
  if (data.type === "push" && app.stream) app.stream.reconnectNow();
  if (data.type === "navigate" && typeof data.url === "string") {
    const url = new URL(data.url, location.href);
    if (url.origin === location.origin) location.href = url.href;
  }
}

// -- start ----------------------------------------------------------------------------------

function bind() {
  $("sign-in").addEventListener("submit", (e) => submitAuth(e, "sign-in"));
  $("sign-up").addEventListener("submit", (e) => submitAuth(e, "sign-up"));
  $("sign-out").addEventListener("click", () => signOut(""));
  $("compose").addEventListener("submit", submitPost);
  $("compose-text").addEventListener("input", () => {
    composeKey = null;
    $("compose-error").textContent = "";
    updateCounter();
  });
  $("compose-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("compose").requestSubmit();
  });
  $("compose-text").addEventListener("paste", onPaste);
  $("attach").addEventListener("click", () => $("compose-files").click());
  $("compose-files").addEventListener("change", (event) => {
    attachFiles([...event.target.files]);
    event.target.value = ""; // the same file can be chosen again after a removal
  });
  for (const tab of document.querySelectorAll("#home-view [role=tab]")) {
    tab.addEventListener("click", () => chooseAlgorithm(tab.dataset.algorithm));
    tab.addEventListener("keydown", onTabKey);
  }
  viewImage = bindViewer($("viewer"));
  $("follow").addEventListener("click", toggleFollow);
  $("search").addEventListener("submit", submitSearch);
  $("push-enable").addEventListener("click", onEnablePush);
  $("reconnect").addEventListener("click", () => app.stream && app.stream.reconnectNow());
  $("feed-more").addEventListener("click", () => feedPager.load(null));
  $("profile-more").addEventListener("click", () => profilePager.load($("profile-error")));
  $("search-more").addEventListener("click", () => searchPager.load($("search-error")));
  $("notes-more").addEventListener("click", () => notesPager.load(null));
  for (const list of ["feed", "profile-list", "search-list"]) {
    $(list).addEventListener("click", onListClick);
  }
  window.addEventListener("hashchange", async () => {
    await route();
    $("main").focus({ preventScroll: true }); // screen readers continue in the new view
  });
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.addEventListener("message", onWorkerMessage);
  }
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadMoreIfNearEnd();
  }, { rootMargin: "400px" }).observe($("feed-sentinel"));
  $("compose-text").maxLength = POST_MAX_CHARS * 8; // generous: the counter is the rule
}

async function main() {
  bind();
  updateCounter();
  try {
    app.streamUrl = (await clientConfig()).stream_url;
  } catch (error) {
    flash(`Live updates are unavailable: ${errorText(error)}`);
  }
  const saved = session.load();
  if (saved) await enter(saved);
  else route();
  document.body.dataset.ready = "true";
}

main();

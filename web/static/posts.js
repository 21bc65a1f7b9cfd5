// Lists of posts and notifications in the page: one element per id (a post that arrives
// twice, from the feed and the stream, is shown once), kept newest first by id. Text is
// always set as text, never parsed as HTML. A post's images are a grid of previews, each
// on its blurhash until the preview has loaded.

import { decode as decodeBlurhash } from "./vendor/blurhash.js";

const MENTION = /(@[A-Za-z0-9_]{1,15})(?![A-Za-z0-9_])/g;

export function newerThan(a, b) {
  return b === null || b === undefined || BigInt(a) > BigInt(b);
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export { el };

export function profileLink(user, className = "author") {
  return el(
    "a",
    { class: className, href: `#/u/${encodeURIComponent(user.handle)}` },
    el("strong", { text: user.display_name || user.handle }),
    " ",
    el("span", { class: "handle", text: "@" + user.handle }),
  );
}

function richText(text) {
  const p = el("p", { class: "text" });
  let last = 0;
  for (const match of text.matchAll(MENTION)) {
    p.append(text.slice(last, match.index));
    const handle = match[1].slice(1);
    p.append(el("a", { href: `#/u/${encodeURIComponent(handle)}`, text: match[1] }));
    last = match.index + match[1].length;
  }
  p.append(text.slice(last));
  return p;
}

export function timeAgo(iso) {
  const then = new Date(iso);
  const seconds = Math.round((Date.now() - then.getTime()) / 1000);
  if (seconds < 45) return "now";
  if (seconds < 3600) return `${Math.round(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)}h`;
  return then.toLocaleDateString();
}

function timeEl(iso) {
  return el("time", { dateTime: iso, title: new Date(iso).toLocaleString(), text: timeAgo(iso) });
}

function likeButton(post, liked) {
  const button = el(
    "button",
    { type: "button", class: "like", "data-action": "like", "aria-pressed": String(liked) },
    el("span", { class: "icon", "aria-hidden": "true", text: liked ? "♥" : "♡" }),
    el("span", { class: "visually-hidden", text: "Like, " }),
    el("span", { class: "likes", text: String(post.counts.likes) }),
    el("span", { class: "visually-hidden", text: post.counts.likes === 1 ? " like" : " likes" }),
  );
  return button;
}

const BLUR_SIZE = 32; // the placeholder is tiny, and stretched by CSS: it is a blur

// The blurhash painted on a small canvas under the image; null when there is none or it
// does not decode (the tile's background colour stands in).
function blurCanvas(media) {
  if (!media.blurhash || !media.width || !media.height) return null;
  const height = Math.max(1, Math.round((BLUR_SIZE * media.height) / media.width));
  let pixels;
  try {
    pixels = decodeBlurhash(media.blurhash, BLUR_SIZE, Math.min(height, BLUR_SIZE * 4));
  } catch {
    return null;
  }
  const canvas = el("canvas", { class: "blur", "aria-hidden": "true" });
  canvas.width = BLUR_SIZE;
  canvas.height = pixels.length / 4 / BLUR_SIZE;
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  image.data.set(pixels);
  context.putImageData(image, 0, 0);
  return canvas;
}

function mediaTile(media, index, count) {
  const img = document.createElement("img");
  // Before src: an image given a src while detached would start loading at once.
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = media.alt_text || "";
  if (media.width && media.height) {
    img.width = media.width;
    img.height = media.height;
  }
  img.src = media.preview_url || media.url;
  const tile = el(
    "button",
    {
      type: "button",
      class: "tile",
      "data-action": "view-media",
      "data-full": media.url || media.preview_url,
      "data-alt": media.alt_text || "",
      // Without alt text the button still needs a name.
      "aria-label": media.alt_text
        ? `View image: ${media.alt_text}`
        : `View image ${index + 1} of ${count}`,
    },
    blurCanvas(media),
    img,
  );
  // The image fades in over its blurhash once it has loaded (a cached one at once).
  if (img.complete && img.naturalWidth) tile.classList.add("loaded");
  else img.addEventListener("load", () => tile.classList.add("loaded"), { once: true });
  if (count === 1 && media.width && media.height) {
    tile.style.aspectRatio = `${media.width} / ${media.height}`;
  }
  return tile;
}

export function mediaGrid(media) {
  if (!Array.isArray(media) || media.length === 0) return null;
  const shown = media.slice(0, 4);
  return el(
    "div",
    { class: `media-grid n${shown.length}` },
    ...shown.map((m, i) => mediaTile(m, i, shown.length)),
  );
}

export function renderPost(post, { liked, mine }) {
  const label = `post-${post.id}`;
  const article = el(
    "article",
    { class: "post", "data-id": post.id, "aria-labelledby": label },
    el(
      "header",
      {},
      el("span", { id: label }, profileLink(post.author)),
      el("span", { class: "sep", "aria-hidden": "true", text: " · " }),
      timeEl(post.created_at),
    ),
    // Why a ranked feed put this post here: quiet, under the author line.
    post.reason ? el("p", { class: "reason", text: post.reason }) : null,
    richText(post.text),
    mediaGrid(post.media),
    el(
      "footer",
      {},
      likeButton(post, liked),
      el("span", { class: "replies", text: `${post.counts.replies} replies` }),
      mine
        ? el("button", { type: "button", class: "link danger", "data-action": "delete", text: "Delete" })
        : null,
    ),
  );
  return el("li", { "data-id": post.id }, article);
}

// One ordered list of posts in the page (home feed, a profile, search results).
export class PostList {
  constructor(ol, options) {
    this.ol = ol;
    this.options = options; // {liked(id) -> bool, mine(post) -> bool}
    this.items = new Map(); // id -> {post, li}
  }

  has(id) {
    return this.items.has(id);
  }

  get size() {
    return this.items.size;
  }

  ids() {
    return [...this.items.keys()];
  }

  newest() {
    let best = null;
    for (const id of this.items.keys()) if (newerThan(id, best)) best = id;
    return best;
  }

  // Adds a post where its id belongs, or, for a ranked feed, at the `top` (live posts) or
  // the `end` (the next ranked page, in the server's order); false when already there.
  add(post, where = "by-id") {
    const existing = this.items.get(post.id);
    if (existing) {
      this.setCounts(post.id, post.counts);
      return false;
    }
    const li = renderPost(post, {
      liked: this.options.liked(post.id),
      mine: this.options.mine(post),
    });
    this.items.set(post.id, { post, li });
    let before = null;
    if (where === "top") before = this.ol.firstElementChild;
    else if (where === "by-id") {
      for (const child of this.ol.children) {
        if (newerThan(post.id, child.dataset.id)) {
          before = child;
          break;
        }
      }
    }
    this.ol.insertBefore(li, before);
    return true;
  }

  remove(id) {
    const item = this.items.get(id);
    if (!item) return;
    item.li.remove();
    this.items.delete(id);
  }

  clear() {
    this.items.clear();
    this.ol.replaceChildren();
  }

  setCounts(id, counts) {
    const item = this.items.get(id);
    if (!item || !counts) return;
    item.post.counts = { ...item.post.counts, ...counts };
    const likes = item.post.counts.likes;
    item.li.querySelector(".likes").textContent = String(likes);
    item.li.querySelector(".like .visually-hidden:last-child").textContent =
      likes === 1 ? " like" : " likes";
    item.li.querySelector(".replies").textContent = `${item.post.counts.replies} replies`;
  }

  setLiked(id, liked) {
    const item = this.items.get(id);
    if (!item) return;
    const button = item.li.querySelector(".like");
    button.setAttribute("aria-pressed", String(liked));
    button.querySelector(".icon").textContent = liked ? "♥" : "♡";
  }
}

const NOTE_TEXT = {
  like: "liked your post",
  reply: "replied to your post",
  repost: "reposted your post",
  mention: "mentioned you",
  follow: "followed you",
};

export function notificationText(note) {
  return `@${note.actor.handle} ${NOTE_TEXT[note.kind] || note.kind}`;
}

export class NotificationList {
  constructor(ol) {
    this.ol = ol;
    this.items = new Map();
  }

  has(id) {
    return this.items.has(id);
  }

  add(note) {
    if (this.items.has(note.id)) return false;
    const li = el(
      "li",
      { class: "note", "data-id": note.id, "data-kind": note.kind },
      profileLink(note.actor),
      " ",
      el("span", { text: NOTE_TEXT[note.kind] || note.kind }),
      el("span", { class: "sep", "aria-hidden": "true", text: " · " }),
      timeEl(note.created_at),
    );
    this.items.set(note.id, li);
    let before = null;
    for (const child of this.ol.children) {
      if (newerThan(note.id, child.dataset.id)) {
        before = child;
        break;
      }
    }
    this.ol.insertBefore(li, before);
    return true;
  }
}

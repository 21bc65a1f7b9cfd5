// Images attached to a post being written: each goes straight to the object store (POST
// /v1/media gives a pre-signed PUT; XMLHttpRequest, because fetch has no upload
// progress), then is polled until the server has processed it (ready or failed, with
// its reason). Also the larger view of a post's image. Never creates the post itself:
// app.js asks `state()` and `ids()`, and calls `saveAltTexts()` before posting.

import { el } from "./posts.js";

export const MAX_ATTACHMENTS = 4; // the API's limit per post
export const MAX_ALT_TEXT = 1500;
const TYPES = new Set(["image/jpeg", "image/png", "image/webp", "image/gif"]);
const PUT_TIMEOUT_MS = 120_000;
// The media worker looks for an upload with a growing back-off (up to 10 s between
// looks), so polling slows down too, and gives up well after the worker would have.
const POLL_FIRST_MS = 400;
const POLL_MAX_MS = 3000;
const PROCESSING_LIMIT_MS = 120_000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The server's reasons read "code: sentence" (server/media_processing.py); people get
// the sentence.
export function readableReason(reason) {
  const match = /^[a-z_]+: (.+)$/s.exec(reason || "");
  return match ? match[1] : reason || "the image could not be processed";
}

function percent(fraction) {
  return Math.max(0, Math.min(100, Math.round(fraction * 100)));
}

// PUT the file to the pre-signed URL with the headers it was signed with (a browser
// sets Content-Length itself and refuses to be told it). `xhr` is the request, so that
// removing the image can abort it.
function putFile(xhr, upload, file, onProgress) {
  return new Promise((resolve, reject) => {
    xhr.open(upload.method || "PUT", upload.url);
    for (const [name, value] of Object.entries(upload.headers || {})) {
      if (name.toLowerCase() !== "content-length") xhr.setRequestHeader(name, value);
    }
    xhr.timeout = PUT_TIMEOUT_MS;
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve();
      else reject(new Error(`the storage refused the upload (HTTP ${xhr.status})`));
    });
    xhr.addEventListener("error", () =>
      reject(new Error("the upload was interrupted; check your connection")),
    );
    xhr.addEventListener("timeout", () => reject(new Error("the upload took too long")));
    xhr.addEventListener("abort", () => reject(new Error("the upload was cancelled")));
    xhr.send(file);
  });
}

let sequence = 0; // unique element ids for each attachment's alt-text field

class Attachment {
  constructor(owner, file) {
    this.owner = owner;
    this.file = file;
    this.id = null; // the media id, once POST /v1/media answered
    this.state = "uploading"; // -> processing -> ready | failed
    this.savedAlt = "";
    this.removed = false;
    this.xhr = new XMLHttpRequest();
    this.preview = URL.createObjectURL(file);
    this.render(++sequence);
  }

  render(n) {
    const name = this.file.name || "pasted image";
    this.thumb = el("img", { class: "thumb", alt: "", src: this.preview });
    this.thumb.addEventListener("error", () => (this.thumb.hidden = true), { once: true });
    this.progress = el("progress", { max: 100, value: 0, "aria-label": `Upload of ${name}` });
    this.status = el("span", { class: "att-status", text: "Uploading…" });
    this.error = el("p", { class: "error att-error", role: "alert" });
    this.alt = el("textarea", {
      id: `alt-${n}`,
      rows: 2,
      maxLength: MAX_ALT_TEXT,
      placeholder: "Describe the image for people who cannot see it",
    });
    this.alt.addEventListener("input", () => this.owner.changed());
    this.removeButton = el("button", {
      type: "button",
      class: "link danger",
      text: "Remove",
      "aria-label": `Remove ${name}`,
    });
    this.removeButton.addEventListener("click", () => this.owner.remove(this));
    this.li = el(
      "li",
      { class: "attachment", "data-state": this.state },
      this.thumb,
      el(
        "div",
        { class: "att-body" },
        el("label", { htmlFor: this.alt.id, text: `Alt text for ${name}` }),
        this.alt,
        el("p", { class: "att-line" }, this.progress, " ", this.status),
        this.error,
      ),
      this.removeButton,
    );
  }

  setState(state, text) {
    if (this.removed) return;
    this.state = state;
    this.li.dataset.state = state;
    this.status.textContent = text;
    this.progress.hidden = state !== "uploading";
    this.owner.changed();
  }

  fail(reason) {
    this.error.textContent = `Not attached: ${reason}`;
    this.setState("failed", "Failed");
  }

  async start(api) {
    try {
      const created = await api.createMedia(this.file.type, this.file.size);
      if (this.removed) return;
      this.id = created.media_id;
      this.li.dataset.mediaId = this.id;
      await putFile(this.xhr, created.upload, this.file, (fraction) => {
        this.progress.value = percent(fraction);
        this.status.textContent = `Uploading ${percent(fraction)}%`;
      });
      if (this.removed) return;
      this.setState("processing", "Processing…");
      await this.waitProcessed(api);
    } catch (error) {
      this.fail(error instanceof Error ? error.message : String(error));
    }
  }

  async waitProcessed(api) {
    const deadline = Date.now() + PROCESSING_LIMIT_MS;
    let wait = POLL_FIRST_MS;
    while (!this.removed) {
      const media = await api.media(this.id);
      if (this.removed) return;
      if (media.status === "ready") {
        this.setState("ready", "Ready");
        return;
      }
      if (media.status === "failed") {
        this.li.dataset.reason = media.reason || "";
        this.fail(readableReason(media.reason));
        return;
      }
      if (Date.now() > deadline) {
        this.fail("the server is still processing it; try again later");
        return;
      }
      await sleep(wait);
      wait = Math.min(POLL_MAX_MS, wait * 1.5);
    }
  }

  dispose() {
    this.removed = true;
    this.xhr.abort(); // nothing happens when it is done or was never sent
    this.li.remove();
    URL.revokeObjectURL(this.preview);
  }
}

export class Attachments {
  // list: the <ul> they are shown in; api(): the signed-in client; onChange(): the
  // compose form re-checks whether it can post.
  constructor({ list, api, onChange }) {
    this.list = list;
    this.api = api;
    this.onChange = onChange;
    this.items = [];
  }

  get size() {
    return this.items.length;
  }

  // Attaches what fits of `files`; returns a sentence about what was left out, or "".
  add(files) {
    const problems = [];
    for (const file of files) {
      if (this.items.length >= MAX_ATTACHMENTS) {
        problems.push(`A post can have at most ${MAX_ATTACHMENTS} images.`);
        break;
      }
      if (!TYPES.has(file.type)) {
        problems.push(`${file.name || "That file"} is not a JPEG, PNG, WebP or GIF image.`);
        continue;
      }
      const item = new Attachment(this, file);
      this.items.push(item);
      this.list.append(item.li);
      item.start(this.api());
    }
    this.changed();
    return problems.join(" ");
  }

  remove(item) {
    item.dispose();
    this.items = this.items.filter((other) => other !== item);
    this.changed();
  }

  clear() {
    for (const item of this.items) item.dispose();
    this.items = [];
    this.changed();
  }

  changed() {
    this.list.hidden = this.items.length === 0;
    this.onChange();
  }

  // {count, pending, failed}: a post waits for pending ones and refuses failed ones.
  state() {
    const pending = this.items.filter((i) => i.state === "uploading" || i.state === "processing");
    const failed = this.items.filter((i) => i.state === "failed");
    return { count: this.items.length, pending: pending.length, failed: failed.length };
  }

  ids() {
    return this.items.map((item) => item.id);
  }

  // Alt text can only be set before the post exists (attached media cannot change), so
  // what was typed is saved first. Throws the API's error; the field is marked.
  async saveAltTexts() {
    const api = this.api();
    for (const item of this.items) {
      const alt = item.alt.value.trim();
      if (alt === item.savedAlt) continue;
      try {
        await api.setAltText(item.id, alt);
      } catch (error) {
        item.alt.setAttribute("aria-invalid", "true");
        item.alt.focus();
        throw error;
      }
      item.alt.removeAttribute("aria-invalid");
      item.savedAlt = alt;
    }
  }
}

// The larger view of a post's image: a modal dialog (Escape closes it, as does a click
// outside the image).
export function bindViewer(dialog) {
  const img = dialog.querySelector("img");
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
  dialog.addEventListener("close", () => img.removeAttribute("src"));
  return (url, alt) => {
    img.alt = alt;
    img.src = url;
    dialog.querySelector(".viewer-alt").textContent = alt;
    dialog.showModal();
  };
}

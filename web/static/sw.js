// The web client's service worker (served at /sw.js, scope /). It only handles push:
// it caches nothing, so the page always comes fresh from the server.
//
// Payloads (JSON, from push/): an alert {"title", "body", "url", "kind"} is shown as is.
// A silent feed push {"kind": "feed"} only says "your feed has new posts": when a window
// of the client is visible it is told (its live stream already shows them) and nothing
// is shown; otherwise one generic "New posts" notification is shown, replacing the
// previous one (tag "feed"), because Chrome requires every push to show something when
// no window is visible (userVisibleOnly).

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function readPayload(event) {
  if (!event.data) return { kind: "feed" };
  try {
    return event.data.json();
  } catch {
    return { kind: "alert", title: "feed", body: event.data.text() };
  }
}

async function visibleWindows() {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  return windows.filter((client) => client.visibilityState === "visible");
}

async function onPush(payload) {
  if (payload.kind === "feed" && !payload.title) {
    const visible = await visibleWindows();
    if (visible.length) {
      for (const client of visible) client.postMessage({ type: "push", kind: "feed" });
      return;
    }
    await self.registration.showNotification("New posts", {
      body: "People you follow posted something new.",
      tag: "feed",
      data: { url: "/#/" },
    });
    return;
  }
  await self.registration.showNotification(payload.title || "feed", {
    body: payload.body || "",
    tag: payload.kind === "feed" ? "feed" : undefined,
    data: { url: payload.url || "/#/notifications" },
  });
}

self.addEventListener("push", (event) => event.waitUntil(onPush(readPayload(event))));

async function openFeed(url) {
  const target = new URL(url || "/", self.location.origin);
  if (target.origin !== self.location.origin) target.href = self.location.origin + "/";
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const client of windows) {
    if (new URL(client.url).origin === target.origin) {
      await client.focus();
      if (client.url === target.href) return;
      try {
        await client.navigate(target.href); // only for windows this worker controls
      } catch {
        client.postMessage({ type: "navigate", url: target.href });
      }
      return;
    }
  }
  await self.clients.openWindow(target.href);
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(openFeed(event.notification.data && event.notification.data.url));
});

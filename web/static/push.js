// "Enable notifications": permission, the service worker at /sw.js (scope /), a push
// subscription with the server's VAPID key, and its registration as a device. Every
// failure becomes an Error whose message can be shown as is.

const DEVICE_KEY = "feed.device";

function keyBytes(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
  const raw = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
  return Uint8Array.from(raw, (ch) => ch.charCodeAt(0));
}

function sameKey(a, b) {
  if (!a) return false;
  const x = new Uint8Array(a);
  return x.length === b.length && x.every((byte, i) => byte === b[i]);
}

export function pushSupported() {
  return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
}

export async function enablePush(api, userId) {
  if (!pushSupported()) {
    throw new Error("This browser cannot receive push notifications.");
  }
  let publicKey;
  try {
    publicKey = (await api.vapidKey()).public_key;
  } catch (error) {
    if (error.status === 404) {
      throw new Error(`Push notifications are not available on this server yet (${error.message}).`);
    }
    throw error;
  }
  const permission = await Notification.requestPermission();
  if (permission !== "granted") {
    throw new Error(
      permission === "denied"
        ? "Notifications are blocked for this site: allow them in the browser's site settings."
        : "Notifications were not allowed.",
    );
  }
  const registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
  await navigator.serviceWorker.ready;
  const key = keyBytes(publicKey);
  let subscription = await registration.pushManager.getSubscription();
  if (subscription && !sameKey(subscription.options.applicationServerKey, key)) {
    await subscription.unsubscribe(); // made for another server key: useless now
    subscription = null;
  }
  if (!subscription) {
    try {
      subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: key,
      });
    } catch (error) {
      throw new Error(`The browser's push service refused to subscribe (${error.message}).`);
    }
  }
  const json = subscription.toJSON();
  const result = await api.addDevice({
    kind: "webpush",
    subscription: { endpoint: json.endpoint, keys: { p256dh: json.keys.p256dh, auth: json.keys.auth } },
  });
  if (result && result.device && result.device.id) {
    localStorage.setItem(DEVICE_KEY, JSON.stringify({ user_id: userId, id: result.device.id }));
  }
  return "Notifications are on for this browser.";
}

// On sign-out: this browser should stop receiving the signed-out user's pushes.
export async function forgetDevice(api, userId) {
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem(DEVICE_KEY) || "null");
  } catch {
    saved = null;
  }
  localStorage.removeItem(DEVICE_KEY);
  if (saved && saved.user_id === userId) {
    try {
      await api.deleteDevice(saved.id);
    } catch {
      /* already gone, or offline: the push worker disables dead devices anyway */
    }
  }
  if ("serviceWorker" in navigator) {
    const registration = await navigator.serviceWorker.getRegistration("/");
    const subscription = registration && (await registration.pushManager.getSubscription());
    if (subscription) await subscription.unsubscribe();
  }
}

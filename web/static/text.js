// Post text rules, counted exactly as server/http/validation.py counts them: CRLF -> LF, NFC,
// trim Python's whitespace set (str.strip()), then length in code points (an emoji
// such as U+1F600 is one character, not two UTF-16 units).

export const POST_MAX_CHARS = 280;
export const HANDLE_PATTERN = "[A-Za-z0-9_]{1,15}";
const HANDLE = new RegExp("^" + HANDLE_PATTERN + "$");

// Python's str.isspace() characters (JavaScript's trim() differs: it strips U+FEFF and
// keeps U+001C-U+001F and U+0085).
const PY_SPACE = "\\t\\n\\v\\f\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a" +
  "\\u2028\\u2029\\u202f\\u205f\\u3000";
const LEADING = new RegExp("^[" + PY_SPACE + "]+");
const TRAILING = new RegExp("[" + PY_SPACE + "]+$");
// Control characters other than newline, and lone surrogates: refused by the server.
const BAD = /[\p{Cc}\p{Cs}]/u;

export function cleanPost(raw) {
  const text = raw.replace(/\r\n/g, "\n").normalize("NFC");
  return text.replace(LEADING, "").replace(TRAILING, "");
}

export function countChars(text) {
  let n = 0;
  for (const _ of text) n++; // iterates code points
  return n;
}

// {count, remaining, ok, problem}: problem is a sentence for the user, or "".
export function checkPost(raw) {
  const text = cleanPost(raw);
  const count = countChars(text);
  const remaining = POST_MAX_CHARS - count;
  let problem = "";
  if (count === 0) problem = "Write something first.";
  else if (remaining < 0) {
    problem = `Too long by ${-remaining} character${remaining === -1 ? "" : "s"}.`;
  } else if ([...text].some((ch) => ch !== "\n" && BAD.test(ch))) {
    problem = "The text contains control characters.";
  }
  return { text, count, remaining, ok: problem === "", problem };
}

export function validHandle(handle) {
  return HANDLE.test(handle);
}

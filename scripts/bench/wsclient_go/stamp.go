//go:build linux

// The few JSON reads the client needs, on the message bytes as they are.

package main

import (
	"bytes"
	"strconv"
)

// stamp finds data.t and data.p (integers) in a message shaped like a live post event,
// {"type": ..., "data": {..., "t": <ns sent>, "p": <phase>}}, by walking the JSON just
// enough: other values are skipped, never decoded. ok is false when the message has no
// such stamp (the message is then skipped) or is not valid JSON as far as read.
// Keys are compared as written: orjson (the publisher, the gateway) never escapes ASCII.
func stamp(msg []byte) (t, p int64, ok bool) {
	i := skipSpace(msg, 0)
	if i >= len(msg) || msg[i] != '{' {
		return 0, 0, false
	}
	end := members(msg, i, func(key []byte, at int) {
		if string(key) != "data" || msg[at] != '{' {
			return
		}
		var hasT, hasP bool
		members(msg, at, func(key []byte, at int) {
			switch string(key) {
			case "t":
				t, hasT = parseInt(msg, at)
			case "p":
				p, hasP = parseInt(msg, at)
			}
		})
		ok = hasT && hasP // a later "data" replaces an earlier one, as in a JSON decoder
	})
	return t, p, ok && end > 0
}

// members calls visit(key, index of the value) for each member of the object at msg[i]
// (a '{'); it returns the index after the object, or -1 if it is malformed.
func members(msg []byte, i int, visit func(key []byte, at int)) int {
	i = skipSpace(msg, i+1)
	if i < len(msg) && msg[i] == '}' {
		return i + 1
	}
	for i < len(msg) && msg[i] == '"' {
		end := skipString(msg, i)
		if end < 0 {
			return -1
		}
		key := msg[i+1 : end-1]
		i = skipSpace(msg, end)
		if i >= len(msg) || msg[i] != ':' {
			return -1
		}
		at := skipSpace(msg, i+1)
		if at >= len(msg) {
			return -1
		}
		visit(key, at)
		if i = skipValue(msg, at); i < 0 {
			return -1
		}
		if i = skipSpace(msg, i); i >= len(msg) {
			return -1
		}
		switch msg[i] {
		case ',':
			i = skipSpace(msg, i+1)
		case '}':
			return i + 1
		default:
			return -1
		}
	}
	return -1
}

// skipValue returns the index after the value at msg[i], or -1.
func skipValue(msg []byte, i int) int {
	switch msg[i] {
	case '"':
		return skipString(msg, i)
	case '{', '[':
		depth := 0
		for i < len(msg) {
			switch msg[i] {
			case '"':
				if i = skipString(msg, i); i < 0 {
					return -1
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return -1
	}
	start := i // number, true, false, null
	for i < len(msg) && !isSpace(msg[i]) && msg[i] != ',' && msg[i] != '}' && msg[i] != ']' {
		i++
	}
	if i == start {
		return -1
	}
	return i
}

// skipString returns the index after the string starting at msg[i] (a '"'), or -1.
// IndexByte (vectorised) finds the candidate quotes: most of a post is its text.
func skipString(msg []byte, i int) int {
	for j := i + 1; ; j++ {
		k := bytes.IndexByte(msg[j:], '"')
		if k < 0 {
			return -1
		}
		j += k
		escapes := 0 // a quote behind an odd number of backslashes is part of the text
		for m := j - 1; m > i && msg[m] == '\\'; m-- {
			escapes++
		}
		if escapes%2 == 0 {
			return j + 1
		}
	}
}

func skipSpace(msg []byte, i int) int {
	for i < len(msg) && isSpace(msg[i]) {
		i++
	}
	return i
}

func isSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\r' || b == '\n' }

// parseInt reads the integer at msg[i]; ok is false for anything else (a float, a
// string, a number beyond int64).
func parseInt(msg []byte, i int) (int64, bool) {
	end := i
	if end < len(msg) && msg[end] == '-' {
		end++
	}
	for end < len(msg) && msg[end] >= '0' && msg[end] <= '9' {
		end++
	}
	if end < len(msg) && (msg[end] == '.' || msg[end] == 'e' || msg[end] == 'E') {
		return 0, false
	}
	v, err := strconv.ParseInt(string(msg[i:end]), 10, 64)
	return v, err == nil
}

//go:build linux

package main

import "testing"

// The token core/auth.py's TokenSigner(SECRET, 24 * 3600).issue(9000000123, now=1700000000.7)
// returns: the gateway refuses any other.
func TestTokenMatchesCoreAuth(t *testing.T) {
	c, err := newClient(plan{
		Host: "127.0.0.1", Source: "127.0.0.1", Secret: "gateway-bench-secret-not-for-production",
		TokenTTL: 24 * 3600, ConnectRate: 1, Concurrency: 1, HandshakeTimeout: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	got := string(c.appendToken(nil, 9000000123, 1700000000))
	want := "eyJzdWIiOiI5MDAwMDAwMTIzIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwODY0MDB9." +
		"aaTgPoBM0OGQ4k4i8bf09S7bH2qXAc7ZKNnWPRprQEE"
	if got != want {
		t.Fatalf("token\n got %s\nwant %s", got, want)
	}
}

func TestStamp(t *testing.T) {
	cases := []struct {
		msg  string
		t, p int64
		ok   bool
	}{
		// scripts/bench/gateway_publisher.py's payload (Template.build(20))
		{`{"type":"post","id":"123","data":{"id":"123","author":{"id":"9000000000","handle":"bench",` +
			`"display_name":"Bench"},"text":"xxxxxxxxxxxxxxxxxxxx","created_at":"2025-01-01T00:00:00.000Z",` +
			`"reply_to":null,"repost_of":null,"media_ids":[],"counts":{"likes":0,"reposts":0,"replies":0},` +
			`"t":1700000000123456789,"p":3}}`, 1700000000123456789, 3, true},
		// look-alikes inside strings and nested objects are not the stamp
		{`{"data": {"text": "\"t\":5,\"p\":6}", "x": {"t": 1, "p": 2}, "t" : -7 , "p":0 } }`, -7, 0, true},
		{`{"t": 1, "p": 2, "data": {"a": [1, {"t": 3}], "b": "]}"}}`, 0, 0, false},
		{`{"type":"hello","data":{"t":1.5,"p":1}}`, 0, 0, false},
		{`{"type":"delete","id":"5"}`, 0, 0, false},
		{`{"data":{"t":1,"p":2}`, 0, 0, false}, // truncated
		{`[1, 2]`, 0, 0, false},
		{``, 0, 0, false},
	}
	for _, tc := range cases {
		ts, p, ok := stamp([]byte(tc.msg))
		if ok != tc.ok || (ok && (ts != tc.t || p != tc.p)) {
			t.Errorf("stamp(%s) = %d, %d, %v; want %d, %d, %v", tc.msg, ts, p, ok, tc.t, tc.p, tc.ok)
		}
	}
}

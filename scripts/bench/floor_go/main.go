// Command floor is the machine's latency floor for scripts/bench/feed_read: an HTTP/1.1
// server that does nothing but answer every request with the same bytes (a real feed
// page, read from a file), on one OS thread like the API server's one event loop. Run
// under the same load generator at the same rate right after a feed run, its tail is
// what this machine (its scheduler, its hypervisor's steal) gives a server that does no
// work at all; a feed p99 can be no better than that.
//
//	floor -addr 127.0.0.1:18090 -body page.json
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18090", "listen address")
	bodyPath := flag.String("body", "", "file whose bytes answer every request")
	flag.Parse()
	if err := run(*addr, *bodyPath); err != nil {
		fmt.Fprintf(os.Stderr, "floor: error: %v\n", err)
		os.Exit(2)
	}
}

func run(addr, bodyPath string) error {
	runtime.GOMAXPROCS(1) // one thread, as the API server runs one event loop per process
	if bodyPath == "" {
		return fmt.Errorf("-body is required")
	}
	body, err := os.ReadFile(bodyPath)
	if err != nil {
		return err
	}
	length := strconv.Itoa(len(body))
	answer := func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{length}
		_, _ = w.Write(body)
	}
	return http.ListenAndServe(addr, http.HandlerFunc(answer))
}

//go:build linux

// Command loadgen is the open-loop HTTP/1.1 load generator of the feed-read benchmark. It
// replaced an aiohttp one that cost 0.2-0.35 ms of CPU per request, taken from the 2 cores
// the system under test runs on.
//
// It reads a JSON plan (file path argument, or stdin) written by scripts/bench/loadgen.py
// and prints one JSON object on stdout with exactly the fields of scripts/bench/loadgen.py's Result.
//
// Scheduling. Requests are scheduled at a fixed rate whatever the responses do, and each
// latency is measured from the request's scheduled send time (no coordinated omission).
// Everything due is queued at once; the delay between a request's scheduled time and its
// queueing is the dispatch lag, reported on its own.
//
// Connections. Up to plan.connections keep-alive connections, opened when needed (like
// aiohttp's pool with limit=connections), each carrying one request at a time (no
// pipelining). A queued request waits for a free connection and keeps its scheduled
// time; one still waiting when its timeout (counted from the scheduled time) runs out
// is a timeout without being sent, as aiohttp's total timeout covers the pool wait too.
// Beyond max_inflight requests (queued or sent) new ones are shed, counted.
//
// Cost. The whole client is one goroutine on one OS thread running its own epoll loop
// over non-blocking sockets, with raw system calls: no goroutine per request or per
// connection, no wake-ups between threads, no per-request logging. On a small VM, the Go
// runtime's own thread hand-offs around blocking calls (netpoller, sysmon) cost more
// than the requests themselves. The loop sleeps in epoll_pwait2 (nanosecond timeout)
// until the next request is due (or, with plan.tick, the next tick), a response arrives
// or a timeout runs out.
//
// Page 2. Warm-up responses are parsed (measured ones are not) and each reader's
// next_cursor remembered; a measured request whose reader has a cursor asks for page 2
// with probability second_page_share.
//
// stderr carries progress lines and two markers the runner reads to account CPU over the
// measured window: "@window start" when the first measured request is dispatched and
// "@window end" when the last one is.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

const (
	maxWait        = 5 * time.Millisecond // longest sleep, so the runtime can always preempt us
	yieldEvery     = 2 * time.Millisecond
	startIn        = 100 * time.Millisecond
	readChunk      = 64 << 10
	sysEpollPwait2 = 441 // same number on every Linux architecture (5.11+)
)

type request struct {
	Path          string `json:"path"`          // e.g. "/v1/feed?limit=20"
	Authorization string `json:"authorization"` // header value; "" sends none
	Kind          string `json:"kind"`          // latency bucket, e.g. "page1"
	Method        string `json:"method"`        // "" is GET
	Body          string `json:"body"`          // sent as application/json when not ""
}

type plan struct {
	BaseURL         string    `json:"base_url"`
	Rate            float64   `json:"rate"`     // offered requests per second
	Warmup          float64   `json:"warmup"`   // seconds sent but not measured
	Duration        float64   `json:"duration"` // seconds measured
	Connections     int       `json:"connections"`
	Timeout         float64   `json:"timeout"`      // seconds, from the scheduled send time
	MaxInflight     int       `json:"max_inflight"` // beyond this the client sheds, counted
	Seed            uint64    `json:"seed"`
	SecondPageShare float64   `json:"second_page_share"`
	Requests        []request `json:"requests"` // each request picks one at random
	ProgressEvery   float64   `json:"progress_every"`
	// Tick: wake at least this long apart (seconds) to send what is due, unless a response
	// wakes the loop first. 0 wakes exactly when each request is due.
	Tick float64 `json:"tick"`
	// SlowAfter: a measured request slower than this (seconds) is also listed in Slow with
	// its scheduled time, so the report can say when the tail happened.
	SlowAfter float64 `json:"slow_after"`
}

// result mirrors scripts/bench/loadgen.py's Result field for field.
type result struct {
	OfferedRate float64              `json:"offered_rate"`
	Duration    float64              `json:"duration"`
	Scheduled   int                  `json:"scheduled"`
	Latencies   map[string][]float64 `json:"latencies"` // kind -> seconds
	Outcomes    map[string]int       `json:"outcomes"`  // "200", "503", "timeout", ...
	Lag         []float64            `json:"lag"`       // dispatch lag of measured requests
	LastDone    float64              `json:"last_done"` // seconds after the window opened
	WarmPages   int                  `json:"warm_pages"`
	WarmPosts   int                  `json:"warm_posts"`
	WarmErrors  int                  `json:"warm_errors"`
	ClientCPU   float64              `json:"client_cpu"`   // user+system seconds, whole run
	WindowStart float64              `json:"window_start"` // Unix time the window opened
	Slow        [][2]float64         `json:"slow"`         // (scheduled s after window start, latency s)
}

type job struct {
	req       int32 // index into plan.Requests
	page2     bool
	measured  bool
	retried   bool
	scheduled time.Duration // since start
	cursor    string
}

type connState uint8

const (
	free       connState = iota // no socket
	connecting                  // non-blocking connect in progress, job attached
	idle                        // open, no request
	busy                        // request written (or being written), reading the response
)

// bodyMode says how the end of a response body is found.
type bodyMode uint8

const (
	noHeaders bodyMode = iota // headers not complete yet
	noBody
	byLength
	chunked
	toEOF
)

type conn struct {
	fd       int
	gen      int32 // tells events of an earlier socket in this slot apart
	state    connState
	served   bool   // has carried a whole exchange (a stale keep-alive is retried once)
	mask     uint32 // epoll events watched
	job      job
	deadline time.Duration
	out      []byte // request being written
	written  int
	in       []byte // response bytes so far
	// response parsing
	mode       bodyMode
	status     int
	closeAfter bool
	bodyStart  int
	end        int // byLength: index one past the body
	chunkAt    int // chunked: where the next chunk-size line starts
	scanned    int // headers: bytes already searched for the blank line
}

type loadgen struct {
	plan        plan
	host        string
	sa          syscall.Sockaddr
	family      int
	start       time.Time
	windowStart time.Duration
	timeout     time.Duration
	epfd        int
	conns       []conn
	idle        []int // idle connection slots, most recently used last
	queue       []job // waiting for a connection, oldest first
	qhead       int
	busyCount   int
	cursors     []string // per request index, learnt in warm-up
	learnt      []int32  // request indexes that have a cursor, for page-2 picks
	rng         *rand.Rand
	res         result
	lastDone    time.Duration
	useEpoll2   bool
	events      []syscall.EpollEvent
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: error: %v\n", err)
		os.Exit(2)
	}
}

func run() error {
	runtime.GOMAXPROCS(1)
	debug.SetGCPercent(400) // few collections: the heap is mostly latency samples
	p, err := readPlan()
	if err != nil {
		return err
	}
	g, err := newLoadgen(p)
	if err != nil {
		return err
	}
	g.loop()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		g.res.ClientCPU = tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
	}
	g.res.LastDone = g.lastDone.Seconds()
	raw, err := json.Marshal(&g.res)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(raw, '\n'))
	return err
}

func readPlan() (plan, error) {
	var p plan
	var raw []byte
	var err error
	if len(os.Args) > 1 && os.Args[1] != "-" {
		raw, err = os.ReadFile(os.Args[1])
	} else {
		raw, err = io.ReadAll(os.Stdin)
	}
	if err != nil {
		return p, fmt.Errorf("reading the plan: %w", err)
	}
	p.Timeout = 10
	p.MaxInflight = 20_000
	p.Seed = 7
	p.ProgressEvery = 5
	p.SlowAfter = 0.010
	if err := json.Unmarshal(raw, &p); err != nil {
		return p, fmt.Errorf("parsing the plan: %w", err)
	}
	switch {
	case p.Rate <= 0:
		return p, errors.New("plan: rate must be > 0")
	case p.Connections < 1:
		return p, errors.New("plan: connections must be >= 1")
	case len(p.Requests) == 0:
		return p, errors.New("plan: no requests")
	case p.MaxInflight < 1 || p.Timeout <= 0 || p.Warmup < 0 || p.Duration <= 0:
		return p, errors.New("plan: max_inflight, timeout and duration must be > 0")
	}
	return p, nil
}

func newLoadgen(p plan) (*loadgen, error) {
	u, err := url.Parse(p.BaseURL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("base_url %q: only http://host[:port] is supported", p.BaseURL)
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	addr, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return nil, err
	}
	g := &loadgen{
		plan:        p,
		host:        u.Host,
		windowStart: seconds(p.Warmup),
		timeout:     seconds(p.Timeout),
		conns:       make([]conn, p.Connections),
		cursors:     make([]string, len(p.Requests)),
		rng:         rand.New(rand.NewPCG(p.Seed, p.Seed^0x9e3779b97f4a7c15)), // load pattern
		useEpoll2:   true,
		events:      make([]syscall.EpollEvent, p.Connections+1),
		res: result{
			OfferedRate: p.Rate,
			Duration:    p.Duration,
			Latencies:   map[string][]float64{},
			Outcomes:    map[string]int{},
			Lag:         make([]float64, 0, int(p.Duration*p.Rate)+1),
			Slow:        [][2]float64{},
		},
	}
	if ip4 := addr.IP.To4(); ip4 != nil {
		sa := &syscall.SockaddrInet4{Port: addr.Port}
		copy(sa.Addr[:], ip4)
		g.sa, g.family = sa, syscall.AF_INET
	} else {
		sa := &syscall.SockaddrInet6{Port: addr.Port}
		copy(sa.Addr[:], addr.IP.To16())
		g.sa, g.family = sa, syscall.AF_INET6
	}
	if g.epfd, err = syscall.EpollCreate1(syscall.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	for i := range g.conns {
		g.conns[i].fd = -1
	}
	return g, nil
}

// loop runs the whole load: dispatch on schedule, send, receive, time out, until every
// request has been scheduled and answered (or failed).
func (g *loadgen) loop() {
	p := g.plan
	total := int((p.Warmup + p.Duration) * p.Rate)
	every := seconds(p.ProgressEvery)
	nextReport := every
	windowOpen := false
	sent := 0
	tick := seconds(p.Tick)
	var lastTick, yielded time.Duration
	g.start = time.Now().Add(startIn)
	g.res.WindowStart = float64(g.start.Add(g.windowStart).UnixNano()) / 1e9
	for {
		now := time.Since(g.start)
		if sent < total {
			due := min(total, int(now.Seconds()*p.Rate)+1)
			if now < 0 {
				due = 0
			}
			for i := sent; i < due; i++ {
				at := seconds(float64(i) / p.Rate)
				measured := at >= g.windowStart
				if measured && !windowOpen {
					windowOpen = true
					os.Stderr.WriteString("@window start\n")
				}
				g.schedule(at, measured)
			}
			sent = due
			if sent == total {
				os.Stderr.WriteString("@window end\n")
			}
		}
		if every > 0 && now >= nextReport {
			nextReport += every
			g.progress(now, sent)
		}
		now = time.Since(g.start)
		g.expire(now)
		g.assign(now)
		if sent == total && g.busyCount == 0 && g.qhead == len(g.queue) {
			break
		}
		if now-yielded >= yieldEvery {
			// Let the runtime schedule (GC, its own goroutines): otherwise it preempts
			// this goroutine with a signal every 10 ms, which costs more.
			runtime.Gosched()
			yielded = now
		}
		wake := now + maxWait
		if sent < total {
			wake = min(wake, max(seconds(float64(sent)/p.Rate), lastTick+tick))
		}
		wake = min(wake, g.nextDeadline())
		lastTick = now
		g.wait(wake - now)
	}
	for i := range g.conns {
		if g.conns[i].state != free {
			g.closeConn(i)
		}
	}
}

// schedule queues one request (or sheds it), recording its dispatch lag.
func (g *loadgen) schedule(at time.Duration, measured bool) {
	p := g.plan
	if measured {
		g.res.Scheduled++
	}
	if g.busyCount+len(g.queue)-g.qhead >= p.MaxInflight {
		g.fail(measured, "shed")
		return
	}
	j := job{req: int32(g.rng.IntN(len(p.Requests))), measured: measured, scheduled: at}
	// Page 2 goes to a reader whose cursor was learnt from a warm-up page 1 (only some
	// readers were seen then), so the share holds whatever the warm-up covered. Warm-up
	// asks for second pages too, once it has cursors: the mix the window measures is then
	// already running when it opens, instead of starting with a burst of second pages.
	if len(g.learnt) > 0 && g.rng.Float64() < p.SecondPageShare {
		j.req = g.learnt[g.rng.IntN(len(g.learnt))]
		j.page2, j.cursor = true, g.cursors[j.req]
	}
	if measured {
		g.res.Lag = append(g.res.Lag, (time.Since(g.start) - at).Seconds())
	}
	g.push(j)
}

func (g *loadgen) push(j job) {
	if g.qhead > 0 && g.qhead == len(g.queue) {
		g.queue, g.qhead = g.queue[:0], 0
	}
	g.queue = append(g.queue, j)
}

// expire fails the queued requests whose timeout ran out while waiting for a connection,
// and the sent ones whose response is late (their connection is closed).
func (g *loadgen) expire(now time.Duration) {
	for g.qhead < len(g.queue) && g.queue[g.qhead].scheduled+g.timeout <= now {
		j := g.queue[g.qhead]
		g.qhead++
		g.fail(j.measured, "timeout")
	}
	for i := range g.conns {
		c := &g.conns[i]
		if (c.state == busy || c.state == connecting) && c.deadline <= now {
			j := c.job
			g.closeConn(i)
			g.fail(j.measured, "timeout")
		}
	}
}

func (g *loadgen) nextDeadline() time.Duration {
	next := time.Duration(1 << 62)
	if g.qhead < len(g.queue) {
		next = g.queue[g.qhead].scheduled + g.timeout
	}
	for i := range g.conns {
		c := &g.conns[i]
		if c.state == busy || c.state == connecting {
			next = min(next, c.deadline)
		}
	}
	return next
}

// nextQueued takes the oldest queued request still within its timeout (failing the
// ones that are not).
func (g *loadgen) nextQueued(now time.Duration) (job, bool) {
	for g.qhead < len(g.queue) {
		j := g.queue[g.qhead]
		g.qhead++
		if j.scheduled+g.timeout > now {
			return j, true
		}
		g.fail(j.measured, "timeout")
	}
	return job{}, false
}

// assign gives queued requests to idle connections, opening new ones up to the limit.
func (g *loadgen) assign(now time.Duration) {
	for g.qhead < len(g.queue) {
		slot := -1
		if n := len(g.idle); n > 0 {
			slot = g.idle[n-1]
			g.idle = g.idle[:n-1]
		} else {
			for i := range g.conns {
				if g.conns[i].state == free {
					slot = i
					break
				}
			}
			if slot < 0 {
				return // every connection is busy
			}
		}
		j, ok := g.nextQueued(now)
		if !ok {
			if g.conns[slot].state == idle {
				g.idle = append(g.idle, slot)
			}
			return
		}
		if g.conns[slot].state == free {
			if err := g.open(slot); err != nil {
				g.fail(j.measured, "connect_error")
				continue
			}
			c := &g.conns[slot]
			c.job, c.deadline, c.state = j, j.scheduled+g.timeout, connecting
			g.busyCount++
			continue
		}
		g.send(slot, j)
	}
}

func (g *loadgen) open(slot int) error {
	fd, err := syscall.Socket(g.family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	if err := syscall.Connect(fd, g.sa); err != nil && err != syscall.EINPROGRESS {
		syscall.Close(fd)
		return err
	}
	c := &g.conns[slot]
	c.gen++
	c.fd, c.served, c.mask = fd, false, syscall.EPOLLIN|syscall.EPOLLOUT|syscall.EPOLLRDHUP
	ev := syscall.EpollEvent{Events: c.mask, Fd: int32(slot), Pad: c.gen}
	if err := syscall.EpollCtl(g.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		syscall.Close(fd)
		c.fd = -1
		return err
	}
	return nil
}

func (g *loadgen) closeConn(slot int) {
	c := &g.conns[slot]
	if c.state == busy || c.state == connecting {
		g.busyCount--
	}
	if c.state == idle {
		for k, s := range g.idle {
			if s == slot {
				g.idle = append(g.idle[:k], g.idle[k+1:]...)
				break
			}
		}
	}
	if c.fd >= 0 {
		syscall.Close(c.fd) // also takes it out of the epoll set
	}
	c.fd, c.state = -1, free
	c.in = c.in[:0]
}

// send writes a request on an open connection.
func (g *loadgen) send(slot int, j job) {
	c := &g.conns[slot]
	if c.state != busy {
		g.busyCount++
	}
	c.state, c.job, c.deadline = busy, j, j.scheduled+g.timeout
	c.out = g.appendRequest(c.out[:0], &j)
	c.written = 0
	c.in = c.in[:0]
	c.mode, c.scanned = noHeaders, 0
	g.writeMore(slot)
}

func (g *loadgen) writeMore(slot int) {
	c := &g.conns[slot]
	for c.written < len(c.out) {
		n, err := rawWrite(c.fd, c.out[c.written:])
		if err == syscall.EAGAIN || err == syscall.EINTR { // finish when it is writable
			g.watch(slot, syscall.EPOLLIN|syscall.EPOLLOUT|syscall.EPOLLRDHUP)
			return
		}
		if err != nil {
			g.broken(slot, err, true)
			return
		}
		c.written += n
	}
	// Written: stop watching for writability (set at connect or after a short write).
	g.watch(slot, syscall.EPOLLIN|syscall.EPOLLRDHUP)
}

func (g *loadgen) watch(slot int, events uint32) {
	c := &g.conns[slot]
	if c.mask == events {
		return
	}
	c.mask = events
	ev := syscall.EpollEvent{Events: events, Fd: int32(slot), Pad: c.gen}
	_ = syscall.EpollCtl(g.epfd, syscall.EPOLL_CTL_MOD, c.fd, &ev)
}

func (g *loadgen) appendRequest(b []byte, j *job) []byte {
	r := &g.plan.Requests[j.req]
	if r.Method == "" {
		b = append(b, "GET "...)
	} else {
		b = append(b, r.Method...)
		b = append(b, ' ')
	}
	b = append(b, r.Path...)
	if j.page2 {
		b = append(b, "&cursor="...)
		b = append(b, url.QueryEscape(j.cursor)...)
	}
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, g.host...)
	if r.Authorization != "" {
		b = append(b, "\r\nAuthorization: "...)
		b = append(b, r.Authorization...)
	}
	if r.Body != "" {
		b = append(b, "\r\nContent-Type: application/json\r\nContent-Length: "...)
		b = strconv.AppendInt(b, int64(len(r.Body)), 10)
	}
	b = append(b, "\r\n\r\n"...)
	return append(b, r.Body...)
}

// wait sleeps in epoll until an event or for d, then handles what arrived.
func (g *loadgen) wait(d time.Duration) {
	d = max(d, 0)
	n, err := g.epollWait(d)
	if err != nil {
		return // EINTR (the runtime's preemption signal): the loop comes back here
	}
	for _, ev := range g.events[:n] {
		slot := int(ev.Fd)
		c := &g.conns[slot]
		if c.gen != ev.Pad || c.state == free {
			continue
		}
		switch c.state {
		case connecting:
			if ev.Events&(syscall.EPOLLOUT|syscall.EPOLLERR|syscall.EPOLLHUP) == 0 {
				continue
			}
			soErr, err := syscall.GetsockoptInt(c.fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
			if err == nil && soErr != 0 {
				err = syscall.Errno(soErr)
			}
			if err != nil {
				j := c.job
				g.closeConn(slot)
				g.fail(j.measured, "connect_error")
				continue
			}
			g.busyCount-- // send counts it again
			c.state = idle
			g.send(slot, c.job)
		case busy:
			if ev.Events&syscall.EPOLLOUT != 0 && c.written < len(c.out) {
				g.writeMore(slot)
				if c.state != busy || c.written < len(c.out) {
					continue
				}
			}
			if ev.Events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
				g.readMore(slot)
			}
		case idle: // the server closed a kept-alive connection (or sent something unasked)
			g.closeConn(slot)
		}
	}
}

func (g *loadgen) epollWait(d time.Duration) (int, error) {
	var r uintptr
	var errno syscall.Errno
	if g.useEpoll2 {
		ts := syscall.NsecToTimespec(int64(d))
		r, _, errno = syscall.RawSyscall6(sysEpollPwait2, uintptr(g.epfd),
			uintptr(unsafe.Pointer(&g.events[0])), uintptr(len(g.events)),
			uintptr(unsafe.Pointer(&ts)), 0, 0)
		if errno == syscall.ENOSYS {
			g.useEpoll2 = false
		}
	}
	if !g.useEpoll2 { // millisecond timeout, rounded up
		ms := (d + time.Millisecond - 1) / time.Millisecond
		r, _, errno = syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(g.epfd),
			uintptr(unsafe.Pointer(&g.events[0])), uintptr(len(g.events)), uintptr(ms), 0, 0)
	}
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

func (g *loadgen) readMore(slot int) {
	c := &g.conns[slot]
	if cap(c.in)-len(c.in) < readChunk/2 {
		grown := make([]byte, len(c.in), 2*cap(c.in)+readChunk)
		copy(grown, c.in)
		c.in = grown
	}
	n, err := rawRead(c.fd, c.in[len(c.in):cap(c.in)])
	if err == syscall.EAGAIN || err == syscall.EINTR { // level-triggered: comes back
		return
	}
	if err != nil {
		g.broken(slot, err, len(c.in) == 0)
		return
	}
	if n == 0 { // EOF
		if c.mode == toEOF {
			g.complete(slot, len(c.in))
			return
		}
		g.broken(slot, io.EOF, len(c.in) == 0)
		return
	}
	c.in = c.in[:len(c.in)+n]
	end, err := c.parse()
	if err != nil {
		j := c.job
		g.closeConn(slot)
		g.fail(j.measured, "bad_response")
		return
	}
	if end > 0 {
		g.complete(slot, end)
	}
}

// broken handles a failed read or write; a kept-alive connection the server had already
// closed (nothing received yet) gets its request sent again once, on a new connection.
func (g *loadgen) broken(slot int, err error, nothingYet bool) {
	c := &g.conns[slot]
	j, reused := c.job, c.served
	g.closeConn(slot)
	stale := errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
	if stale && nothingYet && reused && !j.retried {
		j.retried = true
		g.queue = append(g.queue, job{})
		copy(g.queue[g.qhead+1:], g.queue[g.qhead:])
		g.queue[g.qhead] = j
		return
	}
	if stale {
		g.fail(j.measured, "disconnected")
	} else {
		g.fail(j.measured, "io_error")
	}
}

// complete records a whole response (in[:end]) and hands the connection the next request.
func (g *loadgen) complete(slot int, end int) {
	done := time.Since(g.start)
	c := &g.conns[slot]
	j := c.job
	r := &g.plan.Requests[j.req]
	switch {
	case j.measured:
		g.res.Outcomes[statusText(c.status)]++
		kind := r.Kind
		if j.page2 {
			kind = "page2"
		}
		latency := (done - j.scheduled).Seconds()
		g.res.Latencies[kind] = append(g.res.Latencies[kind], latency)
		if latency > g.plan.SlowAfter {
			g.res.Slow = append(g.res.Slow, [2]float64{(j.scheduled - g.windowStart).Seconds(), latency})
		}
		g.lastDone = max(g.lastDone, done-g.windowStart)
	case c.status != 200:
		g.res.WarmErrors++
	case !j.page2: // a page 2's cursor leads to page 3
		g.learn(j.req, c.body(end))
	}
	if c.closeAfter || end != len(c.in) {
		g.closeConn(slot)
		return
	}
	c.in, c.served = c.in[:0], true
	if next, ok := g.nextQueued(done); ok { // keep the connection busy: next one right away
		g.send(slot, next)
		return
	}
	c.state = idle
	g.busyCount--
	g.idle = append(g.idle, slot)
}

// parse looks at the response bytes so far; it returns the index one past the end of
// the response once it is complete, else 0.
func (c *conn) parse() (int, error) {
	if c.mode == noHeaders {
		from := max(0, c.scanned-3)
		i := bytes.Index(c.in[from:], []byte("\r\n\r\n"))
		if i < 0 {
			c.scanned = len(c.in)
			return 0, nil
		}
		if err := c.parseHeaders(from + i + 4); err != nil {
			return 0, err
		}
	}
	switch c.mode {
	case noBody:
		return c.bodyStart, nil
	case byLength:
		if len(c.in) >= c.end {
			return c.end, nil
		}
	case chunked:
		return c.parseChunks()
	}
	return 0, nil
}

var errBadResponse = errors.New("malformed response")

func (c *conn) parseHeaders(headEnd int) error {
	head := c.in[:headEnd]
	eol := bytes.IndexByte(head, '\n')
	line := head[:eol+1]
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return errBadResponse
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return errBadResponse
	}
	c.status, c.closeAfter = status, line[7] == '0'
	length, isChunked := int64(-1), false
	for rest := head[eol+1:]; len(rest) > 2; {
		eol = bytes.IndexByte(rest, '\n')
		line, rest = rest[:eol+1], rest[eol+1:]
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			return errBadResponse
		}
		name, value := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case asciiEqualFold(name, "content-length"):
			if length, err = strconv.ParseInt(string(value), 10, 64); err != nil || length < 0 {
				return errBadResponse
			}
		case asciiEqualFold(name, "transfer-encoding"):
			isChunked = asciiEqualFold(value, "chunked")
		case asciiEqualFold(name, "connection"):
			if asciiEqualFold(value, "close") {
				c.closeAfter = true
			} else if asciiEqualFold(value, "keep-alive") {
				c.closeAfter = false
			}
		}
	}
	c.bodyStart = headEnd
	switch {
	case status/100 == 1 || status == 204 || status == 304:
		c.mode = noBody
	case isChunked:
		c.mode, c.chunkAt = chunked, headEnd
	case length >= 0:
		c.mode, c.end = byLength, headEnd+int(length)
	default:
		c.mode, c.closeAfter = toEOF, true
	}
	return nil
}

// parseChunks walks the chunks received so far; it returns the end once the last chunk
// and the trailers are in.
func (c *conn) parseChunks() (int, error) {
	for {
		eol := bytes.Index(c.in[c.chunkAt:], []byte("\r\n"))
		if eol < 0 {
			return 0, nil
		}
		sizeText := c.in[c.chunkAt : c.chunkAt+eol]
		if i := bytes.IndexByte(sizeText, ';'); i >= 0 {
			sizeText = sizeText[:i]
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(sizeText)), 16, 64)
		if err != nil || size < 0 {
			return 0, errBadResponse
		}
		data := c.chunkAt + eol + 2
		if size == 0 { // then trailers (usually none) and a blank line
			if bytes.HasPrefix(c.in[data:], []byte("\r\n")) {
				return data + 2, nil
			}
			if i := bytes.Index(c.in[data:], []byte("\r\n\r\n")); i >= 0 {
				return data + i + 4, nil
			}
			return 0, nil
		}
		if len(c.in) < data+int(size)+2 {
			return 0, nil
		}
		c.chunkAt = data + int(size) + 2
	}
}

// body is the response body of in[:end], de-chunked if needed (warm-up responses only).
func (c *conn) body(end int) []byte {
	if c.mode != chunked {
		return c.in[c.bodyStart:end]
	}
	var out []byte
	at := c.bodyStart
	for {
		eol := bytes.Index(c.in[at:end], []byte("\r\n"))
		if eol < 0 {
			return out
		}
		sizeText := c.in[at : at+eol]
		if i := bytes.IndexByte(sizeText, ';'); i >= 0 {
			sizeText = sizeText[:i]
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(sizeText)), 16, 64)
		if err != nil || size <= 0 {
			return out
		}
		out = append(out, c.in[at+eol+2:at+eol+2+int(size)]...)
		at += eol + 2 + int(size) + 2
	}
}

// learn parses a warm-up page: it proves pages are full and gives the reader a page-2
// cursor. A body that is not a feed page (e.g. /healthz) is not counted.
func (g *loadgen) learn(req int32, body []byte) {
	var page struct {
		Posts      []json.RawMessage `json:"posts"`
		NextCursor *string           `json:"next_cursor"`
	}
	if json.Unmarshal(body, &page) != nil {
		return
	}
	g.res.WarmPages++
	g.res.WarmPosts += len(page.Posts)
	if page.NextCursor != nil && *page.NextCursor != "" {
		if g.cursors[req] == "" {
			g.learnt = append(g.learnt, req)
		}
		g.cursors[req] = *page.NextCursor
	}
}

func (g *loadgen) fail(measured bool, what string) {
	if measured {
		g.res.Outcomes[what]++
	} else {
		g.res.WarmErrors++
	}
}

func (g *loadgen) progress(now time.Duration, sent int) {
	phase := "warm-up"
	if now >= g.windowStart {
		phase = "measuring"
	}
	fmt.Fprintf(os.Stderr, "loadgen(go): %4.0f/%.0f s (%s) sent %d at %.0f/s, in flight %d\n",
		now.Seconds(), g.plan.Warmup+g.plan.Duration, phase, sent, g.plan.Rate,
		g.busyCount+len(g.queue)-g.qhead)
}

// Raw system calls on non-blocking sockets: they never block, so the runtime need not
// hand our thread's processor to another thread around them.
func rawRead(fd int, b []byte) (int, error) {
	r, _, errno := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd),
		uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

func rawWrite(fd int, b []byte) (int, error) {
	r, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd),
		uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// statusTexts holds "0".."599", built once so recording a status allocates nothing.
var statusTexts = func() []string {
	t := make([]string, 600)
	for s := range t {
		t[s] = strconv.Itoa(s)
	}
	return t
}()

func statusText(status int) string {
	if status >= 0 && status < len(statusTexts) {
		return statusTexts[status]
	}
	return strconv.Itoa(status)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func tvSeconds(tv syscall.Timeval) float64 {
	return float64(tv.Sec) + float64(tv.Usec)/1e6
}

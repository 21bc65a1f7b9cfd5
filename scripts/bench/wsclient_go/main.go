//go:build linux

// Command wsclient is one client process of the gateway benchmarks; it replaced an asyncio
// client whose protocols cost 55-80% of a core, taken from the 2 cores the gateway under
// test runs on. scripts/bench/gateway_wsclient.py starts it and relays what it prints.
//
// Protocol. The first line of stdin is the JSON plan (see type plan); every later line is
// a command: "report" prints what was received since the last report and forgets it,
// "stop" closes every connection (close 1000), waits briefly for the gateway's close and
// exits. EOF on stdin (the parent is gone) stops too. On stdout, one line each:
//
//	c <connected> <failed> <received> <lost> <pings> <first_ms> <last_ms>
//	r {"phases": {"<p>": {"count", "first_ns", "last_ns", "latency_us"}}, "close_codes": {...}}
//	stopped
//
// The "c" line carries the counters of gateway_wsclient.SLOTS, in that order, at most
// every plan.counter_every seconds and only when one changed: the publisher bounds the
// deliveries in flight by the received count, so it must reach the parent quickly.
// latency_us is base64 of little-endian int64s, one per message, receive time minus the
// message's data.t, in microseconds (floored, as Python's // does).
//
// Behaviour matches gateway_wsclient.py: one connection per plan entry, started at
// connect_rate with at most `concurrency` attempts in flight (an entry keeps its place
// while it waits to retry), each bound to plan.source; a failed attempt (connect error,
// handshake_timeout for the connect and again for the upgrade, anything but a 101 with
// the right Sec-WebSocket-Accept) is retried after 1, 2, 3... s, `retries` times, then
// counted as failed. Server pings get a masked pong with the same payload; a server
// close is recorded by code and answered with the same code; a connection that ends
// other than with close 1000 counts as lost. Each attempt signs a new token exactly as
// core/auth.py's TokenSigner(secret, token_ttl).issue(user_id) does.
//
// Cost. As scripts/bench/loadgen_go: one goroutine on one OS thread running its own epoll
// loop over non-blocking sockets with raw system calls; frames are parsed in the shared
// read buffer and only a partial frame is copied, and each text message is scanned just
// far enough to find data.t and data.p (no JSON decoding into values).
//
// Batching. After a wait that found something to do, the loop naps plan.batch_wait
// before waiting again, so that one wake-up handles whatever arrived on many sockets
// meanwhile: waking for each message (a context switch, paid on both ends of loopback)
// cost more than the message itself. An idle client still wakes at once; a busy one adds
// at most batch_wait to the measured latency.
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
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
	sweepEvery     = 10 * time.Millisecond // attempt deadlines and retries are seconds long
	lingerOnStop   = 500 * time.Millisecond
	readChunk      = 256 << 10
	maxHeader      = 16 << 10 // as gateway_wsclient.MAX_HEADER
	maxFrame       = 16 << 20 // a frame this large is not the gateway's: drop the connection
	keepBuffer     = 4 << 10  // a connection's partial-frame buffer kept between reads
	maxEvents      = 1024
	sysEpollPwait2 = 441 // same number on every Linux architecture (5.11+)
	// IP_BIND_ADDRESS_NO_PORT: bind() picks only the address; the port is chosen at
	// connect() for the whole 4-tuple, so one source address is not limited to one
	// connection per ephemeral port across destinations.
	ipBindAddressNoPort = 24
	wsGUID              = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
	stdinTag            = -1 // epoll data of stdin; connection slots are >= 0
)

// The counters of gateway_wsclient.SLOTS, same order.
const (
	connected = iota
	failed
	received
	lost
	pings
	firstMs
	lastMs
	nSlots
)

var (
	pongEmpty = []byte{0x8a, 0x80, 0, 0, 0, 0}             // masked (all-zero key) empty pong
	close1000 = []byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8} // masked close 1000
)

type plan struct {
	Host   string `json:"host"`
	Port   int    `json:"port"`
	Source string `json:"source"` // loopback address to bind (its own ephemeral ports)
	// One connection per entry of user_ids, or of Python's range(start, stop, step) in
	// user_range (step > 0): a range keeps a 100 000-connection plan small.
	UserIDs          []int64   `json:"user_ids"`
	UserRange        *[3]int64 `json:"user_range"`
	Secret           string    `json:"secret"`
	TokenTTL         int64     `json:"token_ttl"`         // seconds
	ConnectRate      float64   `json:"connect_rate"`      // new connections per second
	Concurrency      int       `json:"concurrency"`       // attempts in flight at once
	Retries          int       `json:"retries"`           // attempts after the first
	HandshakeTimeout float64   `json:"handshake_timeout"` // seconds, connect and upgrade each
	CounterEvery     float64   `json:"counter_every"`     // seconds between "c" lines
	BatchWait        float64   `json:"batch_wait"`        // seconds; see client.wait
}

func (p *plan) entries() int {
	if p.UserRange == nil {
		return len(p.UserIDs)
	}
	start, stop, step := p.UserRange[0], p.UserRange[1], p.UserRange[2]
	return int(max(0, (stop-start+step-1)/step))
}

func (p *plan) userID(entry int) int64 {
	if p.UserRange == nil {
		return p.UserIDs[entry]
	}
	return p.UserRange[0] + int64(entry)*p.UserRange[2]
}

type connState uint8

const (
	free        connState = iota // no socket
	connecting                   // non-blocking connect in progress
	handshaking                  // upgrade request sent (or being sent), waiting for the 101
	open                         // WebSocket frames
	closing                      // our close 1000 sent on stop: waiting for the gateway's end
)

type conn struct {
	fd    int
	gen   int32 // tells events of an earlier socket in this slot apart
	state connState
	mask  uint32 // epoll events watched
	out   []byte // bytes not yet written (the request, pongs, a close)
	in    []byte // a partial response head or frame, kept between reads
	att   *attempt
}

// attempt is one plan entry being connected: it holds a place under plan.concurrency
// from its first try until it is open or has failed for good, retry waits included.
type attempt struct {
	entry  int
	tries  int
	slot   int           // connection slot while connecting or handshaking, -1 while waiting
	at     time.Duration // deadline of this try, or when to try again
	index  int           // in client.attempts
	accept []byte        // expected Sec-WebSocket-Accept
}

type phase struct {
	count   int64
	firstNs int64
	lastNs  int64
	latency []int64    // microseconds
	slow    [][2]int64 // (publish time ns, latency us) of each message over slowUs
}

// slowUs: a message later than this is also reported with its publish time, so the
// benchmark can say when its tail happened (scripts/bench/tail.py). Half the target p99.
const slowUs = 50_000

type client struct {
	plan       plan
	sa         syscall.SockaddrInet4
	src        syscall.SockaddrInet4
	host       string
	tokenKey   [32]byte
	timeout    time.Duration
	epfd       int
	useEpoll2  bool
	events     []syscall.EpollEvent
	readBuf    []byte
	start      time.Time
	conns      []conn
	freeSlots  []int
	attempts   []*attempt
	next       int // next plan entry to start
	total      int
	stopping   bool
	busy       bool // the last wait found something to do
	stopAt     time.Duration
	counters   [nSlots]int64
	shown      [nSlots]int64
	shownAt    time.Duration
	phases     map[int64]*phase
	closeCodes map[int]int64
	stdin      []byte // command bytes not yet a whole line
	rng        *rand.Rand
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "wsclient: error: %v\n", err)
		os.Exit(2)
	}
}

func run() error {
	runtime.GOMAXPROCS(1)
	debug.SetGCPercent(400) // few collections: the heap is mostly latency samples
	p, rest, err := readPlan()
	if err != nil {
		return err
	}
	c, err := newClient(p)
	if err != nil {
		return err
	}
	if err := c.watchStdin(); err != nil {
		return err
	}
	c.stdin = rest
	return c.loop()
}

// readPlan reads stdin (blocking: nothing else to do yet) up to the end of the first line;
// whatever follows it is the start of the commands.
func readPlan() (plan, []byte, error) {
	var p plan
	var buf []byte
	chunk := make([]byte, 64<<10)
	for {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			p.Retries, p.HandshakeTimeout, p.CounterEvery, p.TokenTTL = 3, 30, 0.005, 24*3600
			if err := json.Unmarshal(buf[:i], &p); err != nil {
				return p, nil, fmt.Errorf("parsing the plan: %w", err)
			}
			return p, buf[i+1:], p.check()
		}
		n, err := syscall.Read(0, chunk)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return p, nil, errors.New("stdin ended before the plan")
		}
		buf = append(buf, chunk[:n]...)
	}
}

func (p *plan) check() error {
	switch {
	case p.ConnectRate <= 0 || p.Concurrency < 1:
		return errors.New("plan: connect_rate and concurrency must be > 0")
	case p.UserRange != nil && p.UserRange[2] <= 0:
		return errors.New("plan: user_range step must be > 0")
	case p.HandshakeTimeout <= 0 || p.Retries < 0:
		return errors.New("plan: handshake_timeout must be > 0, retries >= 0")
	}
	return nil
}

func newClient(p plan) (*client, error) {
	dst, src := net.ParseIP(p.Host).To4(), net.ParseIP(p.Source).To4()
	if dst == nil || src == nil {
		return nil, fmt.Errorf("host %q and source %q must be IPv4 addresses", p.Host, p.Source)
	}
	c := &client{
		plan:       p,
		host:       net.JoinHostPort(p.Host, strconv.Itoa(p.Port)),
		tokenKey:   sha256.Sum256([]byte("feed-token-v1:" + p.Secret)),
		timeout:    seconds(p.HandshakeTimeout),
		useEpoll2:  true,
		events:     make([]syscall.EpollEvent, maxEvents),
		readBuf:    make([]byte, readChunk),
		total:      p.entries(),
		phases:     map[int64]*phase{},
		closeCodes: map[int]int64{},
		// Only the Sec-WebSocket-Key comes from here; it need not be unpredictable.
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid()))),
	}
	c.sa.Port = p.Port
	copy(c.sa.Addr[:], dst)
	copy(c.src.Addr[:], src)
	var err error
	if c.epfd, err = syscall.EpollCreate1(syscall.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	return c, nil
}

// watchStdin: commands arrive on stdin while the loop runs; it is watched like the
// sockets (a pipe of our own, so making it non-blocking affects nobody else).
func (c *client) watchStdin() error {
	if err := syscall.SetNonblock(0, true); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: stdinTag}
	if err := syscall.EpollCtl(c.epfd, syscall.EPOLL_CTL_ADD, 0, &ev); err != nil {
		return fmt.Errorf("epoll on stdin (must be a pipe): %w", err)
	}
	return nil
}

// loop connects on schedule, handles frames and commands, until stopped.
func (c *client) loop() error {
	c.start = time.Now()
	var swept, yielded time.Duration
	if err := c.commands(); err != nil { // commands sent together with the plan
		return err
	}
	for {
		now := time.Since(c.start)
		if c.stopping && now >= c.stopAt {
			c.closeAll()
			_ = c.show(now, true) // best effort: the parent may be gone
			return emit([]byte("stopped\n"))
		}
		c.startDue(now)
		if now-swept >= sweepEvery {
			c.sweep(now)
			swept = now
		}
		if err := c.show(now, false); err != nil {
			return err
		}
		if now-yielded >= yieldEvery {
			// Let the runtime schedule (GC, its own goroutines): otherwise it preempts
			// this goroutine with a signal every 10 ms, which costs more.
			runtime.Gosched()
			yielded = now
		}
		wake := now + maxWait
		if !c.stopping && c.next < c.total && len(c.attempts) < c.plan.Concurrency {
			wake = min(wake, c.due(c.next))
		}
		if err := c.wait(wake - now); err != nil {
			return err
		}
	}
}

func (c *client) due(entry int) time.Duration {
	return seconds(float64(entry) / c.plan.ConnectRate)
}

// startDue starts the entries whose time has come, as long as there is room in flight
// (a late entry then starts as soon as a place frees up).
func (c *client) startDue(now time.Duration) {
	for !c.stopping && c.next < c.total && len(c.attempts) < c.plan.Concurrency &&
		c.due(c.next) <= now {
		a := &attempt{entry: c.next, slot: -1, index: len(c.attempts)}
		c.attempts = append(c.attempts, a)
		c.next++
		c.try(a, now)
	}
}

// sweep fails the tries past their deadline and starts the retries that are due.
func (c *client) sweep(now time.Duration) {
	for k := len(c.attempts) - 1; k >= 0; k-- { // backwards: done() moves the last one here
		a := c.attempts[k]
		switch {
		case a.at > now:
		case a.slot >= 0:
			c.retry(a, now)
		default:
			c.try(a, now)
		}
	}
}

// try opens a socket for the attempt and starts a non-blocking connect.
func (c *client) try(a *attempt, now time.Duration) {
	a.tries++
	a.at = now + c.timeout
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		c.retry(a, now)
		return
	}
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1) // as uvloop
	if err := syscall.Bind(fd, &c.src); err != nil {
		syscall.Close(fd)
		c.retry(a, now)
		return
	}
	if err := syscall.Connect(fd, &c.sa); err != nil && err != syscall.EINPROGRESS {
		syscall.Close(fd)
		c.retry(a, now)
		return
	}
	slot := c.slot()
	s := &c.conns[slot]
	s.fd, s.state, s.att, s.mask = fd, connecting, a, syscall.EPOLLIN|syscall.EPOLLOUT|syscall.EPOLLRDHUP
	ev := syscall.EpollEvent{Events: s.mask, Fd: int32(slot), Pad: s.gen}
	if err := syscall.EpollCtl(c.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		c.closeConn(slot)
		c.retry(a, now)
		return
	}
	a.slot = slot
}

// retry ends the attempt's current try (closing its socket) and schedules the next one
// after 1, 2, 3... s, or counts the entry as failed when no try is left.
func (c *client) retry(a *attempt, now time.Duration) {
	if a.slot >= 0 {
		c.closeConn(a.slot)
		a.slot = -1
	}
	if a.tries > c.plan.Retries {
		c.counters[failed]++
		c.done(a)
		return
	}
	a.at = now + time.Duration(a.tries)*time.Second
}

// done takes the attempt out of the in-flight set, freeing its place.
func (c *client) done(a *attempt) {
	last := len(c.attempts) - 1
	c.attempts[a.index] = c.attempts[last]
	c.attempts[a.index].index = a.index
	c.attempts[last] = nil
	c.attempts = c.attempts[:last]
}

func (c *client) slot() int {
	if n := len(c.freeSlots); n > 0 {
		slot := c.freeSlots[n-1]
		c.freeSlots = c.freeSlots[:n-1]
		return slot
	}
	c.conns = append(c.conns, conn{fd: -1})
	return len(c.conns) - 1
}

func (c *client) closeConn(slot int) {
	s := &c.conns[slot]
	if s.state == free {
		return // already closed (a failed write while handling the same read)
	}
	if s.fd >= 0 {
		syscall.Close(s.fd) // also takes it out of the epoll set
	}
	s.fd, s.state, s.att, s.in, s.out = -1, free, nil, nil, nil
	s.gen++
	c.freeSlots = append(c.freeSlots, slot)
}

// wait sleeps in epoll until an event or for d, then handles what arrived.
func (c *client) wait(d time.Duration) error {
	if c.busy && c.plan.BatchWait > 0 && d > 0 {
		nap := min(d, seconds(c.plan.BatchWait))
		ts := syscall.NsecToTimespec(int64(nap))
		syscall.RawSyscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
		d = 0
	}
	n, err := c.epollWait(max(d, 0))
	if err != nil {
		return nil // EINTR (the runtime's preemption signal): the loop comes back here
	}
	c.busy = n > 0
	for _, ev := range c.events[:n] {
		if ev.Fd == stdinTag {
			if err := c.commands(); err != nil {
				return err
			}
			continue
		}
		slot := int(ev.Fd)
		s := &c.conns[slot]
		if s.gen != ev.Pad || s.state == free {
			continue // closed earlier in this batch
		}
		if ev.Events&syscall.EPOLLOUT != 0 {
			if s.state == connecting {
				c.connected(slot)
				continue
			}
			c.flush(slot)
			if s.state == free {
				continue
			}
		}
		if ev.Events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
			if s.state == connecting { // refused: EPOLLERR without EPOLLOUT
				c.connected(slot)
				continue
			}
			c.readMore(slot)
		}
	}
	return nil
}

func (c *client) epollWait(d time.Duration) (int, error) {
	var r uintptr
	var errno syscall.Errno
	if c.useEpoll2 {
		ts := syscall.NsecToTimespec(int64(d))
		r, _, errno = syscall.RawSyscall6(sysEpollPwait2, uintptr(c.epfd),
			uintptr(unsafe.Pointer(&c.events[0])), uintptr(len(c.events)),
			uintptr(unsafe.Pointer(&ts)), 0, 0)
		if errno == syscall.ENOSYS {
			c.useEpoll2 = false
		}
	}
	if !c.useEpoll2 { // millisecond timeout, rounded up
		ms := (d + time.Millisecond - 1) / time.Millisecond
		r, _, errno = syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(c.epfd),
			uintptr(unsafe.Pointer(&c.events[0])), uintptr(len(c.events)), uintptr(ms), 0, 0)
	}
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// connected finishes a non-blocking connect and sends the upgrade request; the upgrade
// gets a handshake_timeout of its own.
func (c *client) connected(slot int) {
	s := &c.conns[slot]
	a := s.att
	now := time.Since(c.start)
	soErr, err := syscall.GetsockoptInt(s.fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
	if err != nil || soErr != 0 {
		c.retry(a, now)
		return
	}
	s.state = handshaking
	a.at = now + c.timeout
	var key [16]byte
	binary.LittleEndian.PutUint64(key[:8], c.rng.Uint64())
	binary.LittleEndian.PutUint64(key[8:], c.rng.Uint64())
	keyText := base64.StdEncoding.EncodeToString(key[:])
	sum := sha1.Sum([]byte(keyText + wsGUID))
	a.accept = base64.StdEncoding.AppendEncode(a.accept[:0], sum[:])
	req := make([]byte, 0, 512)
	req = append(req, "GET /v1/stream?access_token="...)
	req = c.appendToken(req, c.plan.userID(a.entry), time.Now().Unix())
	req = append(req, " HTTP/1.1\r\nHost: "...)
	req = append(req, c.host...)
	req = append(req, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "...)
	req = append(req, keyText...)
	req = append(req, "\r\nSec-WebSocket-Version: 13\r\n\r\n"...)
	c.send(slot, req)
}

// appendToken appends what core/auth.py's TokenSigner.issue returns: base64url (no
// padding) of the claims as orjson writes them, ".", base64url of their HMAC-SHA256 under
// sha256("feed-token-v1:" + secret).
func (c *client) appendToken(b []byte, userID, now int64) []byte {
	claims := fmt.Appendf(nil, `{"sub":"%d","iat":%d,"exp":%d}`, userID, now, now+c.plan.TokenTTL)
	mac := hmac.New(sha256.New, c.tokenKey[:])
	mac.Write(claims)
	b = base64.RawURLEncoding.AppendEncode(b, claims)
	b = append(b, '.')
	return base64.RawURLEncoding.AppendEncode(b, mac.Sum(nil))
}

// send writes now what the socket takes and keeps the rest for when it is writable.
func (c *client) send(slot int, data []byte) {
	s := &c.conns[slot]
	if len(s.out) == 0 {
		n, err := rawWrite(s.fd, data)
		if err != nil && err != syscall.EAGAIN && err != syscall.EINTR {
			c.broken(slot)
			return
		}
		data = data[max(n, 0):]
	}
	if len(data) > 0 {
		s.out = append(s.out, data...)
	}
	c.flush(slot)
}

// flush writes what is left in out and watches for writability only while something is.
func (c *client) flush(slot int) {
	s := &c.conns[slot]
	for len(s.out) > 0 {
		n, err := rawWrite(s.fd, s.out)
		if err == syscall.EAGAIN || err == syscall.EINTR {
			break
		}
		if err != nil {
			c.broken(slot)
			return
		}
		s.out = s.out[n:]
	}
	if len(s.out) == 0 {
		s.out = nil
		c.watch(slot, syscall.EPOLLIN|syscall.EPOLLRDHUP)
	} else {
		c.watch(slot, syscall.EPOLLIN|syscall.EPOLLOUT|syscall.EPOLLRDHUP)
	}
}

func (c *client) watch(slot int, events uint32) {
	s := &c.conns[slot]
	if s.mask == events {
		return
	}
	s.mask = events
	ev := syscall.EpollEvent{Events: events, Fd: int32(slot), Pad: s.gen}
	_ = syscall.EpollCtl(c.epfd, syscall.EPOLL_CTL_MOD, s.fd, &ev)
}

// broken ends a connection that failed or hung up: a handshake is retried, an open
// connection that did not end with close 1000 counts as lost.
func (c *client) broken(slot int) {
	s := &c.conns[slot]
	switch s.state {
	case connecting, handshaking:
		c.retry(s.att, time.Since(c.start))
	case open:
		c.counters[lost]++
		c.closeConn(slot)
	default:
		c.closeConn(slot)
	}
}

// readMore reads what arrived (until the socket is drained or the buffer was not filled)
// and handles it.
func (c *client) readMore(slot int) {
	s := &c.conns[slot]
	gen := s.gen
	for {
		n, err := rawRead(s.fd, c.readBuf)
		if err == syscall.EAGAIN || err == syscall.EINTR { // level-triggered: comes back
			return
		}
		if err != nil || n == 0 {
			c.broken(slot)
			return
		}
		data := c.readBuf[:n]
		switch s.state {
		case handshaking:
			c.handshake(slot, data)
		case open:
			c.received(slot, data, time.Now().UnixNano())
		}
		// closing: what the gateway still sends after our close is not counted
		if n < len(c.readBuf) || s.state == free || s.gen != gen {
			return
		}
	}
}

// handshake collects the response head; a 101 with the expected accept value opens the
// connection, anything else fails the try.
func (c *client) handshake(slot int, data []byte) {
	s := &c.conns[slot]
	s.in = append(s.in, data...)
	end := bytes.Index(s.in, []byte("\r\n\r\n"))
	if end < 0 {
		if len(s.in) > maxHeader {
			c.retry(s.att, time.Since(c.start))
		}
		return
	}
	head := s.in[:end]
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) || !bytes.Contains(head, s.att.accept) {
		c.retry(s.att, time.Since(c.start))
		return
	}
	a := s.att
	rest := s.in[end+4:]
	s.state, s.att, s.in = open, nil, nil
	a.slot = -1 // the socket is the connection's now
	c.done(a)
	c.counters[connected]++
	ms := time.Now().UnixMilli()
	if c.counters[firstMs] == 0 {
		c.counters[firstMs] = ms
	}
	c.counters[lastMs] = ms
	if len(rest) > 0 { // frames sent right behind the 101
		c.received(slot, rest, time.Now().UnixNano())
	}
}

// received parses the frames in data, behind a partial frame kept from the last read.
func (c *client) received(slot int, data []byte, nowNs int64) {
	s := &c.conns[slot]
	buf := data
	if len(s.in) > 0 {
		s.in = append(s.in, data...)
		buf = s.in
	}
	used := c.frames(slot, buf, nowNs)
	if used < 0 || s.state != open {
		return // closed
	}
	// Keep only the partial frame (if any), in a buffer about its size: one large read
	// must not leave every connection holding a large buffer.
	rest := buf[used:]
	switch {
	case len(rest) == 0 && cap(s.in) > keepBuffer:
		s.in = nil
	case len(rest) == 0:
		s.in = s.in[:0]
	case cap(s.in) > 2*len(rest)+keepBuffer: // shrink
		s.in = append([]byte(nil), rest...)
	case len(s.in) > 0: // rest lies inside s.in: move it to the front
		s.in = s.in[:copy(s.in, rest)]
	default: // rest lies in the shared read buffer
		s.in = append(s.in[:0], rest...)
	}
}

// frames handles the whole frames at the start of buf; it returns the bytes used, or -1
// when the connection was closed.
func (c *client) frames(slot int, buf []byte, nowNs int64) int {
	pos := 0
	for len(buf)-pos >= 2 {
		size, head := uint64(buf[pos+1]&0x7f), 2
		switch size {
		case 126:
			if len(buf)-pos < 4 {
				return pos
			}
			size, head = uint64(binary.BigEndian.Uint16(buf[pos+2:])), 4
		case 127:
			if len(buf)-pos < 10 {
				return pos
			}
			size, head = binary.BigEndian.Uint64(buf[pos+2:]), 10
		}
		if size > maxFrame {
			c.broken(slot)
			return -1
		}
		if len(buf)-pos < head+int(size) {
			return pos
		}
		opcode := buf[pos] & 0x0f
		payload := buf[pos+head : pos+head+int(size)]
		pos += head + int(size)
		// The gateway sends whole messages in single unmasked frames, as the Python
		// client assumes too: continuation frames are not reassembled.
		switch opcode {
		case 0x1:
			c.text(payload, nowNs)
		case 0x9:
			c.counters[pings]++
			c.pong(slot, payload)
			if c.conns[slot].state != open {
				return -1 // the pong could not be written: closed
			}
		case 0x8:
			c.closed(slot, payload)
			return -1
		}
	}
	return pos
}

// pong answers a ping with its payload, masked with an all-zero key (client frames must
// be masked; XOR with zero leaves the payload as it is).
func (c *client) pong(slot int, payload []byte) {
	if len(payload) == 0 {
		c.send(slot, pongEmpty)
		return
	}
	frame := make([]byte, 0, 6+len(payload))
	frame = append(frame, 0x8a, 0x80|byte(len(payload)&0x7f), 0, 0, 0, 0)
	c.send(slot, append(frame, payload...))
}

// closed records the gateway's close code (1005: none given) and answers with the same
// code before hanging up (RFC 6455 5.5.1).
func (c *client) closed(slot int, payload []byte) {
	code := 1005
	reply := []byte{0x88, 0x80, 0, 0, 0, 0}
	if len(payload) >= 2 {
		code = int(binary.BigEndian.Uint16(payload))
		reply = []byte{0x88, 0x82, 0, 0, 0, 0, payload[0], payload[1]}
	}
	c.closeCodes[code]++
	if code != 1000 {
		c.counters[lost]++
	}
	_, _ = rawWrite(c.conns[slot].fd, reply) // best effort: the gateway closes anyway
	c.closeConn(slot)
}

// text counts a message and, when it carries data.t and data.p, its latency.
func (c *client) text(msg []byte, nowNs int64) {
	c.counters[received]++
	t, p, ok := stamp(msg)
	if !ok {
		return
	}
	ph := c.phases[p]
	if ph == nil {
		ph = &phase{firstNs: nowNs}
		c.phases[p] = ph
	}
	ph.count++
	ph.lastNs = nowNs
	d := nowNs - t
	us := d / 1000
	if d%1000 < 0 { // floor, like Python's //, for a (clock-skewed) negative latency
		us--
	}
	ph.latency = append(ph.latency, us)
	if us > slowUs {
		ph.slow = append(ph.slow, [2]int64{t, us})
	}
}

// commands reads stdin and obeys each whole line.
func (c *client) commands() error {
	var chunk [4096]byte
	for {
		for {
			i := bytes.IndexByte(c.stdin, '\n')
			if i < 0 {
				break
			}
			line := string(bytes.TrimSpace(c.stdin[:i]))
			c.stdin = c.stdin[i+1:]
			if err := c.command(line); err != nil {
				return err
			}
		}
		n, err := syscall.Read(0, chunk[:])
		if err == syscall.EAGAIN || err == syscall.EINTR {
			return nil
		}
		if err != nil || n == 0 { // the parent is gone: stop, nobody will ask
			_ = syscall.EpollCtl(c.epfd, syscall.EPOLL_CTL_DEL, 0, nil)
			c.stop()
			return nil
		}
		c.stdin = append(c.stdin, chunk[:n]...)
	}
}

func (c *client) command(line string) error {
	switch line {
	case "report":
		if err := c.show(time.Since(c.start), true); err != nil {
			return err
		}
		return c.report()
	case "stop":
		c.stop()
		return nil
	case "":
		return nil
	}
	return fmt.Errorf("unknown command %q", line)
}

// stop abandons the attempts in flight and sends close 1000 on every open connection;
// the loop then lingers so the gateway can answer, and exits.
func (c *client) stop() {
	if c.stopping {
		return
	}
	now := time.Since(c.start)
	c.stopping, c.stopAt = true, now+lingerOnStop
	for _, a := range c.attempts {
		if a.slot >= 0 {
			c.closeConn(a.slot)
		}
	}
	c.attempts = nil
	for slot := range c.conns {
		if c.conns[slot].state == open {
			c.conns[slot].state = closing
			c.send(slot, close1000)
		}
	}
}

func (c *client) closeAll() {
	for slot := range c.conns {
		if c.conns[slot].state != free {
			c.closeConn(slot)
		}
	}
}

// show prints the counters when one changed and the last line is old enough (or now).
func (c *client) show(now time.Duration, force bool) error {
	if c.counters == c.shown || (!force && now-c.shownAt < seconds(c.plan.CounterEvery)) {
		return nil
	}
	c.shown, c.shownAt = c.counters, now
	line := append(make([]byte, 0, 160), 'c')
	for _, v := range c.counters {
		line = append(line, ' ')
		line = strconv.AppendInt(line, v, 10)
	}
	return emit(append(line, '\n'))
}

// report prints the phases received since the last report (and forgets them) and the
// close codes seen so far.
func (c *client) report() error {
	type phaseOut struct {
		Count     int64      `json:"count"`
		FirstNs   int64      `json:"first_ns"`
		LastNs    int64      `json:"last_ns"`
		LatencyUs []byte     `json:"latency_us"` // encoding/json writes []byte as base64
		Slow      [][2]int64 `json:"slow"`
	}
	out := struct {
		Phases     map[string]phaseOut `json:"phases"`
		CloseCodes map[string]int64    `json:"close_codes"`
	}{map[string]phaseOut{}, map[string]int64{}}
	for p, ph := range c.phases {
		raw := make([]byte, 0, 8*len(ph.latency))
		for _, us := range ph.latency {
			raw = binary.LittleEndian.AppendUint64(raw, uint64(us))
		}
		slow := ph.slow
		if slow == nil {
			slow = [][2]int64{}
		}
		out.Phases[strconv.FormatInt(p, 10)] = phaseOut{ph.count, ph.firstNs, ph.lastNs, raw, slow}
	}
	for code, n := range c.closeCodes {
		out.CloseCodes[strconv.Itoa(code)] = n
	}
	c.phases = map[int64]*phase{}
	line, err := json.Marshal(&out)
	if err != nil {
		return err
	}
	return emit(append(append([]byte("r "), line...), '\n'))
}

// emit writes a whole line to stdout (a pipe the parent reads; it may block a moment).
func emit(line []byte) error {
	for len(line) > 0 {
		n, err := syscall.Write(1, line)
		if err == syscall.EINTR || err == syscall.EAGAIN {
			if err == syscall.EAGAIN {
				time.Sleep(time.Millisecond)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("stdout: %w", err)
		}
		line = line[n:]
	}
	return nil
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

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

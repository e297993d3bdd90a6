package dist

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/polyview/polyview/bindings"
)

// JoinConfig says where a rank stands and where the group meets.
type JoinConfig struct {
	Rank, Size int
	// Addr is rank 0's host:port. Rank 0 listens on its port on every
	// interface; the others dial it, retrying until JoinTimeout.
	Addr        string
	JoinTimeout time.Duration // rendezvous; 0 means 5 minutes
	Timeout     time.Duration // each collective; 0 means 10 minutes
}

// Join connects this rank to a group over TCP: every rank dials rank 0,
// which checks that the ranks agree on the group's size, and carries
// every collective (a star: rank 0 combines in rank order and sends the
// result back). It returns when all ranks have joined.
func Join(ctx context.Context, cfg JoinConfig) (*TCPGroup, error) {
	if cfg.Size < 1 || cfg.Rank < 0 || cfg.Rank >= cfg.Size {
		return nil, fmt.Errorf("rank %d of %d: want 0 <= rank < size", cfg.Rank, cfg.Size)
	}
	if cfg.JoinTimeout <= 0 {
		cfg.JoinTimeout = 5 * time.Minute
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Minute
	}
	g := &TCPGroup{cfg: cfg}
	g.hostOps = hostOps{ex: g, rank: cfg.Rank, size: cfg.Size}
	ctx, cancel := context.WithTimeout(ctx, cfg.JoinTimeout)
	defer cancel()
	var err error
	if cfg.Size == 1 {
		return g, nil
	}
	if cfg.Rank == 0 {
		err = g.accept(ctx)
	} else {
		err = g.dial(ctx)
	}
	if err != nil {
		g.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (the group did not form within %v; is every rank "+
				"started, with the same world size and master address %s?)", err,
				cfg.JoinTimeout, cfg.Addr)
		}
		return nil, fmt.Errorf("rank %d joining %s: %w", cfg.Rank, cfg.Addr, err)
	}
	return g, nil
}

// TCPGroup is one rank of a group that meets over TCP.
type TCPGroup struct {
	hostOps
	cfg   JoinConfig
	ln    net.Listener
	peers []net.Conn // rank 0: peers[k] is rank k's connection (peers[0] nil)
	hub   net.Conn   // other ranks: the connection to rank 0
	seq   uint64
	mu    sync.Mutex
	fail  error
}

// Frames: a fixed header, then the payload.
const (
	frameHello byte = iota + 1
	frameWelcome
	frameData
	frameResult
	frameError
	frameBye // a clean exit (seen by NCCL groups' watchdogs)
)

const headerBytes = 32

type header struct {
	kind    byte
	op      op
	seq     uint64
	payload uint64
}

func (h header) encode() []byte {
	b := make([]byte, headerBytes)
	b[0], b[1], b[2] = h.kind, byte(h.op.kind), byte(h.op.dtype)
	binary.LittleEndian.PutUint32(b[4:], uint32(int32(h.op.root)))
	binary.LittleEndian.PutUint64(b[8:], h.seq)
	binary.LittleEndian.PutUint64(b[16:], uint64(h.op.bytes))
	binary.LittleEndian.PutUint64(b[24:], h.payload)
	return b
}

func decodeHeader(b []byte) header {
	return header{kind: b[0],
		op: op{kind: opKind(b[1]), dtype: bindings.DType(b[2]),
			root:  int(int32(binary.LittleEndian.Uint32(b[4:]))),
			bytes: int(binary.LittleEndian.Uint64(b[16:]))},
		seq: binary.LittleEndian.Uint64(b[8:]), payload: binary.LittleEndian.Uint64(b[24:])}
}

// maxPayload bounds what a peer may announce, so a stray connection
// cannot make a rank allocate without limit.
const maxPayload = 1 << 36

func writeFrame(c net.Conn, h header, payload []byte) (int64, error) {
	h.payload = uint64(len(payload))
	if _, err := c.Write(h.encode()); err != nil {
		return 0, err
	}
	n, err := c.Write(payload)
	return int64(n), err
}

func readFrame(c net.Conn) (header, []byte, error) {
	hb := make([]byte, headerBytes)
	if _, err := io.ReadFull(c, hb); err != nil {
		return header{}, nil, err
	}
	h := decodeHeader(hb)
	if h.kind < frameHello || h.kind > frameBye || h.payload > maxPayload {
		return h, nil, fmt.Errorf("malformed frame from %v (not a polyview rank?)",
			c.RemoteAddr())
	}
	p := make([]byte, h.payload)
	if _, err := io.ReadFull(c, p); err != nil {
		return h, nil, err
	}
	return h, p, nil
}

type hello struct {
	Magic string `json:"magic"`
	Rank  int    `json:"rank"`
	Size  int    `json:"size"`
	PID   int    `json:"pid"`
	Host  string `json:"host"`
}

const helloMagic = "polyview-dp-1"

func (g *TCPGroup) accept(ctx context.Context) error {
	_, port, err := net.SplitHostPort(g.cfg.Addr)
	if err != nil {
		return fmt.Errorf("master address %q: %v", g.cfg.Addr, err)
	}
	var lc net.ListenConfig
	if g.ln, err = lc.Listen(ctx, "tcp", ":"+port); err != nil {
		return fmt.Errorf("rank 0 listening on port %s: %w", port, err)
	}
	stop := context.AfterFunc(ctx, func() { g.ln.Close() })
	defer stop()
	g.peers = make([]net.Conn, g.cfg.Size)
	for joined := 1; joined < g.cfg.Size; {
		c, err := g.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%d of %d ranks joined: %w", joined, g.cfg.Size, ctx.Err())
			}
			return err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		h, p, err := readFrame(c)
		var hi hello
		if err == nil && (h.kind != frameHello || json.Unmarshal(p, &hi) != nil ||
			hi.Magic != helloMagic) {
			err = fmt.Errorf("not a polyview rank")
		}
		if err != nil {
			c.Close() // a stray connection: ignore it
			continue
		}
		var why string
		switch {
		case hi.Size != g.cfg.Size:
			why = fmt.Sprintf("rank %d (pid %d on %s) says the world size is %d; rank 0 "+
				"says %d", hi.Rank, hi.PID, hi.Host, hi.Size, g.cfg.Size)
		case hi.Rank <= 0 || hi.Rank >= g.cfg.Size:
			why = fmt.Sprintf("rank %d is out of range for world size %d", hi.Rank, g.cfg.Size)
		case g.peers[hi.Rank] != nil:
			why = fmt.Sprintf("rank %d joined twice (pid %d on %s): check RANK / "+
				"LOCAL_RANK of every process", hi.Rank, hi.PID, hi.Host)
		}
		if why != "" {
			writeFrame(c, header{kind: frameError}, []byte(why))
			c.Close()
			return errors.New(why)
		}
		if _, err := writeFrame(c, header{kind: frameWelcome}, nil); err != nil {
			c.Close()
			continue
		}
		c.SetDeadline(time.Time{})
		g.peers[hi.Rank] = c
		joined++
	}
	g.ln.Close()
	return nil
}

func (g *TCPGroup) dial(ctx context.Context) error {
	host, _ := os.Hostname()
	hi, _ := json.Marshal(hello{Magic: helloMagic, Rank: g.cfg.Rank, Size: g.cfg.Size,
		PID: os.Getpid(), Host: host})
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", g.cfg.Addr)
		if err == nil {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err = writeFrame(c, header{kind: frameHello}, hi); err == nil {
				var h header
				var p []byte
				if h, p, err = readFrame(c); err == nil {
					switch h.kind {
					case frameWelcome:
						c.SetDeadline(time.Time{})
						g.hub = c
						return nil
					case frameError:
						c.Close()
						return fmt.Errorf("rank 0 refused: %s", p)
					}
					err = fmt.Errorf("unexpected frame %d", h.kind)
				}
			}
			c.Close()
			if err != nil && !isRetryable(err) {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// isRetryable: rank 0 is not up yet, or went away mid-handshake (it
// refused a rank and restarted, say).
func isRetryable(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed)
}

// exchange runs one collective.
func (g *TCPGroup) exchange(ctx context.Context, o op, payload []byte) ([]byte, int64, error) {
	g.mu.Lock()
	failed := g.fail
	g.mu.Unlock()
	if failed != nil {
		return nil, 0, failed
	}
	g.seq++
	if g.cfg.Size == 1 {
		res, err := combine(o, [][]byte{payload})
		return res, 0, err
	}
	conns := g.peers
	if g.cfg.Rank != 0 {
		conns = []net.Conn{g.hub}
	}
	// Rank 0 waits Timeout for the others; they wait a little longer for
	// rank 0, so that its account of which rank is late reaches them.
	deadline := time.Now().Add(g.cfg.Timeout)
	if g.cfg.Rank != 0 {
		deadline = deadline.Add(min(g.cfg.Timeout, 5*time.Second))
	}
	for _, c := range conns {
		if c != nil {
			c.SetDeadline(deadline)
		}
	}
	// Cancelling ctx cuts every wait short.
	defer context.AfterFunc(ctx, func() {
		for _, c := range conns {
			if c != nil {
				c.SetDeadline(time.Unix(1, 0))
			}
		}
	})()
	var res []byte
	var sent int64
	var err error
	if g.cfg.Rank == 0 {
		res, sent, err = g.hubExchange(o, payload)
	} else {
		res, sent, err = g.peerExchange(o, payload)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("rank %d: %w", g.cfg.Rank, ctx.Err())
		}
		g.failWith(err)
		return nil, sent, err
	}
	return res, sent, nil
}

// hubExchange (rank 0) collects every rank's frame, combines, and sends
// the result back.
func (g *TCPGroup) hubExchange(o op, payload []byte) ([]byte, int64, error) {
	slots := make([][]byte, g.cfg.Size)
	slots[0] = payload
	errs := make([]error, g.cfg.Size)
	var wg sync.WaitGroup
	for k := 1; k < g.cfg.Size; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, p, err := readFrame(g.peers[k])
			switch {
			case err != nil:
				errs[k] = g.describe(k, o, err)
			case h.kind == frameError:
				errs[k] = fmt.Errorf("rank %d failed: %s", k, p)
			case h.kind != frameData || h.seq != g.seq || h.op != o:
				errs[k] = fmt.Errorf("collective #%d: rank 0 called %v, rank %d called %v "+
					"(its #%d): the ranks diverged", g.seq, o, k, h.op, h.seq)
			default:
				slots[k] = p
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	res, err := combine(o, slots)
	if err != nil {
		return nil, 0, err
	}
	var sent int64
	var mu sync.Mutex
	for k := 1; k < g.cfg.Size; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := writeFrame(g.peers[k], header{kind: frameResult, op: o, seq: g.seq}, res)
			mu.Lock()
			sent += n
			mu.Unlock()
			if err != nil {
				errs[k] = g.describe(k, o, err)
			}
		}()
	}
	wg.Wait()
	return res, sent, errors.Join(errs...)
}

func (g *TCPGroup) peerExchange(o op, payload []byte) ([]byte, int64, error) {
	sent, err := writeFrame(g.hub, header{kind: frameData, op: o, seq: g.seq}, payload)
	if err != nil {
		return nil, sent, g.describe(0, o, err)
	}
	h, p, err := readFrame(g.hub)
	switch {
	case err != nil:
		return nil, sent, g.describe(0, o, err)
	case h.kind == frameError:
		return nil, sent, fmt.Errorf("rank 0 reports: %s", p)
	case h.kind != frameResult || h.seq != g.seq:
		return nil, sent, fmt.Errorf("collective #%d (%v): unexpected frame %d #%d from rank 0",
			g.seq, o, h.kind, h.seq)
	}
	return p, sent, nil
}

// describe turns a connection error with rank k into what happened.
func (g *TCPGroup) describe(k int, o op, err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("rank %d did not complete %v #%d within %v (it hangs, or is far "+
			"behind): %w", k, o.kind, g.seq, g.cfg.Timeout, ErrTimeout)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || isReset(err):
		return fmt.Errorf("rank %d closed its connection during %v #%d: the process died "+
			"or exited", k, o.kind, g.seq)
	}
	return fmt.Errorf("rank %d, %v #%d: %w", k, o.kind, g.seq, err)
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// failWith records err, tells the other ranks (rank 0 tells everyone;
// the others tell rank 0, which passes it on) and closes the connections.
func (g *TCPGroup) failWith(err error) {
	g.mu.Lock()
	if g.fail != nil {
		g.mu.Unlock()
		return
	}
	g.fail = err
	g.mu.Unlock()
	msg := []byte(fmt.Sprintf("rank %d: %v", g.cfg.Rank, err))
	for _, c := range append(g.peers, g.hub) {
		if c != nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			writeFrame(c, header{kind: frameError}, msg)
			c.Close()
		}
	}
}

// Fail marks this rank as failed and tells the others at once.
func (g *TCPGroup) Fail(err error) {
	g.failWith(fmt.Errorf("failed: %w", err))
}

// Timeout is how long a collective waits for the other ranks.
func (g *TCPGroup) Timeout() time.Duration { return g.cfg.Timeout }

// bye tells the other ranks this one is leaving cleanly.
func (g *TCPGroup) bye() {
	for _, c := range append(g.peers, g.hub) {
		if c != nil {
			c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			writeFrame(c, header{kind: frameBye}, nil)
		}
	}
}

// Close leaves the group.
func (g *TCPGroup) Close() error {
	if g.ln != nil {
		g.ln.Close()
	}
	for _, c := range append(g.peers, g.hub) {
		if c != nil {
			c.Close()
		}
	}
	return nil
}

// Addr joins host and port for JoinConfig.Addr.
func Addr(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

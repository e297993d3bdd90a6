package dist

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/polyview/polyview/bindings"
)

// NCCLGroup is one GPU rank of a group whose collectives run in NCCL on
// device memory. The TCP group it was made from stays open beside it as
// a watchdog: a rank that fails says so over TCP and the others abort
// their NCCL communicators at once instead of waiting for the timeout.
type NCCLGroup struct {
	tcp        *TCPGroup
	comm       *bindings.Comm
	rank, size int
	traffic    Traffic

	mu      sync.Mutex
	abortBy error // why the watchdog aborted the communicator
	closing bool
}

// JoinNCCL makes the NCCL communicator of the ranks of tcp, one GPU
// each: rank 0 draws the NCCL unique id and hands it to the others over
// TCP. A collective that does not finish within timeout aborts the
// communicator and fails.
func JoinNCCL(ctx context.Context, tcp *TCPGroup, dev *bindings.Device,
	timeout time.Duration) (*NCCLGroup, error) {
	if !dev.IsCUDA() {
		return nil, fmt.Errorf("NCCL needs a CUDA device, not %s", dev.Name())
	}
	var id []byte
	var err error
	if tcp.Rank() == 0 {
		if id, err = dev.CommUniqueID(); err != nil {
			tcp.Fail(err)
			return nil, err
		}
	} else {
		id = make([]byte, ncclIDBytes)
	}
	if id, err = tcp.broadcastBytes(ctx, id, 0); err != nil {
		return nil, fmt.Errorf("handing out the NCCL id: %w", err)
	}
	comm, err := dev.NewComm(id, tcp.Rank(), tcp.Size(), timeout)
	if err != nil {
		tcp.Fail(err)
		return nil, fmt.Errorf("rank %d: NCCL init: %w", tcp.Rank(), err)
	}
	g := &NCCLGroup{tcp: tcp, comm: comm, rank: tcp.Rank(), size: tcp.Size()}
	g.watch()
	return g, nil
}

// ncclIDBytes is NCCL's unique id size (PV_COMM_ID_BYTES).
const ncclIDBytes = 128

// broadcastBytes sends root's bytes to every rank of a host group.
func (h *hostOps) broadcastBytes(ctx context.Context, b []byte, root int) ([]byte, error) {
	payload := b
	if h.rank != root {
		payload = nil
	}
	return h.run(ctx, op{kind: opBroadcast, dtype: bindings.Float32, root: root,
		bytes: len(b)}, payload)
}

// watch reads the TCP connections until Close: a failure report, or a
// connection lost without goodbye, aborts the NCCL communicator.
func (g *NCCLGroup) watch() {
	conns := g.tcp.peers
	if g.rank != 0 {
		conns = []net.Conn{g.tcp.hub}
	}
	for k, c := range conns {
		if c == nil {
			continue
		}
		c.SetDeadline(time.Time{})
		who := k
		if g.rank != 0 {
			who = 0
		}
		go func() {
			h, p, err := readFrame(c)
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.closing || g.abortBy != nil || (err == nil && h.kind == frameBye) {
				return // a clean exit, or the news is already known (keep its cause)
			}
			if err == nil && h.kind == frameError {
				g.abortBy = fmt.Errorf("rank %d reports: %s", who, p)
			} else {
				g.abortBy = fmt.Errorf("rank %d's connection to the group was lost: the "+
					"process died", who)
			}
			g.comm.Abort()
			if g.rank == 0 {
				// Pass the news on to the other ranks.
				go g.tcp.failWith(g.abortBy)
			}
		}()
	}
}

func (g *NCCLGroup) Rank() int { return g.rank }
func (g *NCCLGroup) Size() int { return g.size }

// call runs one NCCL collective; ctx cancelling it aborts the
// communicator (NCCL cannot cancel one collective alone).
func (g *NCCLGroup) call(ctx context.Context, what string, bytes float64, f func() error) error {
	stop := context.AfterFunc(ctx, func() { g.comm.Abort() })
	err := f()
	stop()
	g.traffic.Calls++
	if err == nil {
		g.traffic.Bytes += int64(bytes)
		return nil
	}
	g.mu.Lock()
	why := g.abortBy
	g.mu.Unlock()
	switch {
	case why != nil:
		err = fmt.Errorf("NCCL %s aborted: %w", what, why)
	case ctx.Err() != nil:
		err = fmt.Errorf("NCCL %s: %w", what, ctx.Err())
	}
	return err
}

// AllGather gathers in NCCL; a ring sends (W-1) local sizes per rank.
func (g *NCCLGroup) AllGather(ctx context.Context, local, out *bindings.Tensor) error {
	return g.call(ctx, "all-gather", float64((g.size-1)*local.Bytes()), func() error {
		return g.comm.AllGather(local, out)
	})
}

// AllReduceSum reduces in NCCL; a ring sends 2 (W-1)/W sizes per rank.
func (g *NCCLGroup) AllReduceSum(ctx context.Context, t *bindings.Tensor) error {
	w := float64(g.size)
	return g.call(ctx, "all-reduce", 2*(w-1)/w*float64(t.Bytes()), func() error {
		return g.comm.AllReduceSum(t)
	})
}

// Broadcast broadcasts in NCCL; a pipelined ring forwards one size per
// rank (all but the last).
func (g *NCCLGroup) Broadcast(ctx context.Context, t *bindings.Tensor, root int) error {
	return g.call(ctx, "broadcast", float64(t.Bytes()), func() error {
		return g.comm.Broadcast(t, root)
	})
}

// Fail aborts this rank's communicator and tells the others over TCP.
func (g *NCCLGroup) Fail(err error) {
	g.comm.Abort()
	g.tcp.Fail(err)
}

// Traffic is what NCCL's ring algorithms send (computed, not counted).
func (g *NCCLGroup) Traffic() Traffic { t := g.traffic; t.Measured = false; return t }

// Close says goodbye over TCP and frees the communicator.
func (g *NCCLGroup) Close() error {
	g.mu.Lock()
	g.closing = true
	g.mu.Unlock()
	g.tcp.bye()
	g.comm.Close()
	return g.tcp.Close()
}

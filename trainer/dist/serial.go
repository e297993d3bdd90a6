package dist

import "sync"

// Serial runs collective calls one at a time, in the order they are
// submitted, on a goroutine of its own. Every rank must issue its
// collectives in the same order; when some are issued from the
// backward pass (gradient buckets, as they become ready) and others from
// the layers (synchronised BN), funnelling both through one Serial keeps
// that order the program's, identical on every rank.
type Serial struct {
	ops  chan serialOp
	done sync.WaitGroup
}

type serialOp struct {
	f   func() error
	res chan error
}

// NewSerial starts the queue's goroutine; Close stops it.
func NewSerial() *Serial {
	s := &Serial{ops: make(chan serialOp, 64)}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		for op := range s.ops {
			op.res <- op.f()
		}
	}()
	return s
}

// Go queues f and returns the channel its error will arrive on.
func (s *Serial) Go(f func() error) <-chan error {
	res := make(chan error, 1)
	s.ops <- serialOp{f: f, res: res}
	return res
}

// Do runs f after everything queued before it and returns its error.
func (s *Serial) Do(f func() error) error { return <-s.Go(f) }

// Close waits for the queued calls and stops the goroutine.
func (s *Serial) Close() {
	close(s.ops)
	s.done.Wait()
}

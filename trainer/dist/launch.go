package dist

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// LaunchConfig describes the ranks one machine runs.
type LaunchConfig struct {
	Program string   // executable each rank runs
	Args    []string // its arguments (without the program)
	Env     []string // base environment (nil: this process's)

	ProcsPerNode int // local ranks, >= 1
	Nodes        int // machines; 0 means 1
	NodeRank     int // this machine's index in [0, Nodes)
	// MasterAddr and MasterPort locate global rank 0 (on node 0). A
	// single-node launch may leave them empty: 127.0.0.1 and a free port.
	MasterAddr string
	MasterPort int

	Stdout, Stderr io.Writer // nil: this process's
	// Grace is how long ranks get to exit (and write their checkpoint)
	// after a signal before they are killed; 0 means 30 s.
	Grace time.Duration
}

// RankError says which rank ended the launch and how.
type RankError struct {
	Rank int
	PID  int
	Err  error
}

func (e *RankError) Error() string {
	return fmt.Sprintf("rank %d (pid %d): %v", e.Rank, e.PID, e.Err)
}

func (e *RankError) Unwrap() error { return e.Err }

// Launch runs ProcsPerNode ranks of Program on this machine, with the
// environment of torchrun (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and waits for them. Rank
// 0's output passes through untouched; every line of the others is
// prefixed with their rank. When a rank fails, the others are stopped
// (SIGTERM, then SIGKILL after Grace) and the first failure is returned.
// Cancelling ctx sends SIGTERM to every rank, so that each writes its
// checkpoint and exits.
func Launch(ctx context.Context, cfg LaunchConfig) error {
	if cfg.ProcsPerNode < 1 {
		return fmt.Errorf("launch: %d processes per node", cfg.ProcsPerNode)
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 1
	}
	if cfg.NodeRank < 0 || cfg.NodeRank >= cfg.Nodes {
		return fmt.Errorf("launch: node rank %d of %d nodes", cfg.NodeRank, cfg.Nodes)
	}
	if cfg.MasterAddr == "" {
		if cfg.Nodes > 1 {
			return errors.New("launch: several nodes need the master address (node 0's host)")
		}
		cfg.MasterAddr = "127.0.0.1"
	}
	if cfg.MasterPort == 0 {
		if cfg.Nodes > 1 {
			return errors.New("launch: several nodes need a master port agreed by all")
		}
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("launch: %w", err)
		}
		cfg.MasterPort = port
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 30 * time.Second
	}
	world := cfg.Nodes * cfg.ProcsPerNode

	type proc struct {
		rank int
		cmd  *exec.Cmd
		done chan struct{}
		err  error
	}
	var outMu sync.Mutex // lines of different ranks never interleave
	procs := make([]*proc, 0, cfg.ProcsPerNode)
	exits := make(chan *proc, cfg.ProcsPerNode)
	var pipes sync.WaitGroup
	for local := 0; local < cfg.ProcsPerNode; local++ {
		rank := cfg.NodeRank*cfg.ProcsPerNode + local
		cmd := exec.Command(cfg.Program, cfg.Args...)
		cmd.Env = append(append([]string(nil), cfg.Env...),
			"RANK="+strconv.Itoa(rank), "WORLD_SIZE="+strconv.Itoa(world),
			"LOCAL_RANK="+strconv.Itoa(local), "LOCAL_WORLD_SIZE="+strconv.Itoa(cfg.ProcsPerNode),
			"MASTER_ADDR="+cfg.MasterAddr, "MASTER_PORT="+strconv.Itoa(cfg.MasterPort),
			"POLYVIEW_LAUNCHED=1")
		prefix := fmt.Sprintf("[rank %d] ", rank)
		var readers []io.Reader
		if rank == 0 {
			// Rank 0 owns the terminal: its progress bar and tables.
			cmd.Stdout, cmd.Stderr = shared(cfg.Stdout, &outMu), shared(cfg.Stderr, &outMu)
		} else {
			for _, pipe := range []func() (io.ReadCloser, error){cmd.StdoutPipe, cmd.StderrPipe} {
				r, err := pipe()
				if err != nil {
					return err
				}
				readers = append(readers, r)
			}
		}
		if err := cmd.Start(); err != nil {
			for _, p := range procs {
				p.cmd.Process.Kill()
			}
			return fmt.Errorf("launch: starting rank %d: %w", rank, err)
		}
		p := &proc{rank: rank, cmd: cmd, done: make(chan struct{})}
		procs = append(procs, p)
		var lines sync.WaitGroup
		for _, rd := range readers {
			lines.Add(1)
			pipes.Add(1)
			go func() {
				defer pipes.Done()
				defer lines.Done()
				prefixLines(rd, cfg.Stderr, prefix, &outMu)
			}()
		}
		go func() {
			lines.Wait() // the pipes must be drained before Wait closes them
			p.err = cmd.Wait()
			close(p.done)
			exits <- p
		}()
	}

	signalAll := func(sig syscall.Signal) {
		for _, p := range procs {
			select {
			case <-p.done:
			default:
				p.cmd.Process.Signal(sig)
			}
		}
	}
	var first error
	stopping, interrupted := false, false
	var kill <-chan time.Time
	ctxDone := ctx.Done()
	for left := len(procs); left > 0; {
		select {
		case p := <-exits:
			left--
			if p.err != nil && first == nil {
				first = &RankError{Rank: p.rank, PID: p.cmd.Process.Pid, Err: p.err}
			}
			if p.err != nil && !stopping {
				stopping = true
				signalAll(syscall.SIGTERM)
				kill = time.After(cfg.Grace)
			}
		case <-ctxDone:
			ctxDone = nil
			if !stopping {
				interrupted = true
				stopping = true
				signalAll(syscall.SIGTERM)
				kill = time.After(cfg.Grace)
			}
		case <-kill:
			signalAll(syscall.SIGKILL)
			kill = nil
		}
	}
	pipes.Wait()
	if interrupted {
		// The ranks were asked to stop (and to write their checkpoint): a
		// non-zero exit is their way of saying the run is not finished.
		if first == nil {
			return fmt.Errorf("launch interrupted: %w", ctx.Err())
		}
		return fmt.Errorf("launch interrupted; the ranks stopped (%w)", first)
	}
	return first
}

// shared returns w for a child's output: a file as it is (the child
// writes to it directly), anything else behind mu, which the other
// ranks' lines take too.
func shared(w io.Writer, mu *sync.Mutex) io.Writer {
	if f, ok := w.(*os.File); ok {
		return f
	}
	return lockedWriter{w: w, mu: mu}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// prefixLines copies r to w a line at a time, each line prefixed.
func prefixLines(r io.Reader, w io.Writer, prefix string, mu *sync.Mutex) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mu.Lock()
		fmt.Fprintf(w, "%s%s\n", prefix, sc.Bytes())
		mu.Unlock()
	}
	io.Copy(io.Discard, r)
}

// freePort asks the kernel for a TCP port nobody listens on.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

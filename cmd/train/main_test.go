package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/polyview/polyview/trainer/checkpoint"
)

// build compiles this command once per test binary.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "train")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// cifarBin writes 96 random CIFAR-10 images (an indexed dataset).
func cifarBin(t *testing.T) string {
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(3))
	b := make([]byte, 96*3073)
	rng.Read(b)
	for i := 0; i < 96; i++ {
		b[i*3073] = byte(i % 10) // the label
	}
	if err := os.WriteFile(filepath.Join(dir, "data_batch_1.bin"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func smallRun(data, out string, steps int) []string {
	return []string{"-device", "cpu", "-threads", "1", "-data", data, "-model", "convnet",
		"-width", "4", "-head", "32,16", "-views", "simclr-cifar", "-view-size", "32",
		"-n", "16", "-m", "3", "-steps", fmt.Sprint(steps), "-warmup", "1", "-knn-every", "0",
		"-progress=false", "-log-every", "1", "-workers", "1", "-out", out}
}

func lastCheckpoint(t *testing.T, out string) map[string]checkpoint.Tensor {
	t.Helper()
	path, err := checkpoint.Latest(out)
	if err != nil {
		t.Fatal(err)
	}
	ts, _, err := checkpoint.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// TestLaunchedRanksEqualOneProcess: -nproc-per-node 2 starts two
// processes that meet over TCP and end where one process with the whole
// batch ends (the tolerance of trainer's TestDataParallelEqualsOneRank).
func TestLaunchedRanksEqualOneProcess(t *testing.T) {
	bin := build(t)
	data := cifarBin(t)
	one, two := t.TempDir(), t.TempDir()
	if out, err := exec.Command(bin, smallRun(data, one, 3)...).CombinedOutput(); err != nil {
		t.Fatalf("one process: %v\n%s", err, out)
	}
	args := append([]string{"-nproc-per-node", "2"}, smallRun(data, two, 3)...)
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("two ranks: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "[rank 1]") {
		t.Errorf("no output of rank 1:\n%s", out)
	}
	a, b := lastCheckpoint(t, one), lastCheckpoint(t, two)
	for name, ta := range a {
		va, _ := ta.Float32()
		vb, _ := b[name].Float32()
		if len(va) != len(vb) {
			t.Fatalf("%s: %d and %d values", name, len(va), len(vb))
		}
		scale := 1e-6
		for _, v := range va {
			scale = math.Max(scale, math.Abs(float64(v)))
		}
		for i := range va {
			if d := math.Abs(float64(va[i]-vb[i])) / scale; d > 1e-5 {
				t.Errorf("%s[%d]: %v and %v", name, i, va[i], vb[i])
				break
			}
		}
	}
	// Only rank 0 wrote: one run's files.
	entries, _ := os.ReadDir(two)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Contains(names, "config.json") || len(names) > 8 {
		t.Errorf("output folder holds %v", names)
	}
}

// TestLostRankStopsTheOthers: two ranks started by hand, as torchrun or
// srun would. Killing rank 1 mid-run makes rank 0 exit within seconds
// with an error naming rank 1 (its connection drops); freezing it
// (SIGSTOP: a hang) makes rank 0 exit once it has waited -dist-timeout,
// naming rank 1 as the rank that did not complete.
func TestLostRankStopsTheOthers(t *testing.T) {
	for _, tc := range []struct {
		sig     syscall.Signal
		timeout string
		want    string
	}{
		{syscall.SIGKILL, "5m", "rank 1 closed its connection"},
		{syscall.SIGSTOP, "8s", "rank 1 did not complete"}, // margin for a loaded CI machine
	} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			lostRank(t, tc.sig, tc.timeout, tc.want)
		})
	}
}

func lostRank(t *testing.T, sig syscall.Signal, timeout, want string) {
	bin := build(t)
	data := cifarBin(t)
	port := freeTestPort(t)
	out := t.TempDir()
	start := func(rank int) (*exec.Cmd, io.Reader) {
		cmd := exec.Command(bin, append(smallRun(data, out, 100000), "-dist-timeout", timeout)...)
		cmd.Env = append(os.Environ(), "RANK="+fmt.Sprint(rank), "WORLD_SIZE=2",
			"MASTER_ADDR=127.0.0.1", "MASTER_PORT="+fmt.Sprint(port))
		r, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd, r
	}
	rank0, err0 := start(0)
	rank1, err1 := start(1)
	go io.Copy(io.Discard, err1)
	// Rank 0 logs every step; act on rank 1 once they are training.
	var log0 bytes.Buffer
	training := make(chan struct{})
	done0 := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(err0)
		seen := false
		for sc.Scan() {
			log0.WriteString(sc.Text() + "\n")
			if !seen && strings.Contains(sc.Text(), "step=3") {
				seen = true
				close(training)
			}
		}
		done0 <- rank0.Wait()
	}()
	select {
	case <-training:
	case err := <-done0:
		t.Fatalf("rank 0 ended before training: %v\n%s", err, tail(log0.String(), 2000))
	case <-time.After(60 * time.Second):
		t.Fatal("no training step within 60 s")
	}
	rank1.Process.Signal(sig)
	hit := time.Now()
	select {
	case err := <-done0:
		if err == nil {
			t.Fatal("rank 0 finished normally")
		}
		if d := time.Since(hit); d > 30*time.Second {
			t.Errorf("rank 0 took %v", d)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("rank 0 still running 60 s after rank 1 got %v", sig)
	}
	if !strings.Contains(log0.String(), want) {
		t.Errorf("rank 0's error does not say %q:\n%s", want, tail(log0.String(), 2000))
	}
}

func freeTestPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestLauncherSignalStopsAllRanksTogether: SIGTERM to the launcher
// reaches every rank; they agree on one step and rank 0 writes that
// step's checkpoint (trainer's TestDataParallelResumeOtherWorld resumes
// such a checkpoint).
func TestLauncherSignalStopsAllRanksTogether(t *testing.T) {
	bin := build(t)
	data := cifarBin(t)
	out := t.TempDir()
	cmd := exec.Command(bin, append([]string{"-nproc-per-node", "2"},
		smallRun(data, out, 100000)...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var log bytes.Buffer
	training := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		seen := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !seen && strings.Contains(sc.Text(), "step=3") {
				seen = true
				close(training)
			}
		}
		done <- cmd.Wait()
	}()
	select {
	case <-training:
	case <-time.After(60 * time.Second):
		t.Fatal("no training step within 60 s")
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the launch did not end 60 s after SIGTERM")
	}
	// Both ranks report the same step; rank 0's checkpoint is that step's.
	steps := map[string]bool{}
	for _, line := range strings.Split(log.String(), "\n") {
		if i := strings.Index(line, "training interrupted at step "); i >= 0 {
			steps[strings.Fields(line[i+len("training interrupted at step "):])[0]] = true
		}
	}
	if len(steps) != 1 || !strings.Contains(log.String(), "[rank 1] train: training interrupted") {
		t.Fatalf("ranks stopped at steps %v:\n%s", steps, tail(log.String(), 3000))
	}
	var step string
	for s := range steps {
		step = strings.TrimSuffix(s, ";")
	}
	path, err := checkpoint.Latest(out)
	if err != nil || !strings.HasSuffix(path, fmt.Sprintf("ckpt-%09s", step)) {
		t.Errorf("latest checkpoint %q (%v), ranks stopped at step %s", path, err, step)
	}
}
